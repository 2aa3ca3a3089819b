"""Backend names -> implementations, imported lazily so a missing runtime breaks only its choice."""

from __future__ import annotations

import importlib

from pipelines.backends.base import Backend
from pipelines.bundle import Bundle
from pipelines.errors import PipelineError

BACKENDS: dict[str, tuple[str, str, str]] = {
    # name: (module, class, pip extra)
    "torch": ("pipelines.backends.torch_backend", "TorchBackend", "torch"),
}


def create_backend(name: str, bundle: Bundle, *, threads: int | None = None) -> Backend:
    if name == "auto":
        name = "torch"
    if name not in BACKENDS:
        raise PipelineError(f"unknown backend {name!r}: choose one of auto, {', '.join(BACKENDS)}")
    module_name, cls, extra = BACKENDS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PipelineError(f"backend {name} needs {exc.name}: pip install '.[{extra}]'") from exc
    backend: Backend = getattr(module, cls)(bundle, threads=threads)
    return backend
