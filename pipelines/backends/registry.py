"""Backend names -> implementations, imported lazily so a missing runtime breaks only its choice.

`auto` takes the fastest backend that this machine and this bundle can run,
in the order TensorRT (GPU, needs the bundle's ONNX graph), torch on CUDA,
onnxruntime on the CPU (needs the bundle's ONNX graph), torch on the CPU.
The probes only look for installed packages and NVIDIA device files before
importing anything heavy, so a CPU machine never pays for importing torch to
learn it has no GPU.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
from pathlib import Path
from typing import Any

from pipelines.backends.base import Backend
from pipelines.bundle import Bundle
from pipelines.errors import PipelineError

log = logging.getLogger(__name__)

BACKENDS: dict[str, tuple[str, str, str]] = {
    # name: (module, class, pip extra)
    "torch": ("pipelines.backends.torch_backend", "TorchBackend", "torch"),
    "onnxruntime": ("pipelines.backends.onnxruntime_backend", "OnnxRuntimeBackend", "onnx"),
    "tensorrt": ("pipelines.backends.tensorrt_backend", "TensorRTBackend", "tensorrt"),
}

# Files that exist where an NVIDIA driver is loaded (desktop/server GPUs, Jetson).
NVIDIA_MARKERS = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/etc/nv_tegra_release")


@dataclasses.dataclass(frozen=True)
class Choice:
    """What `auto` picked and why."""

    name: str
    options: dict[str, Any]
    reason: str


def installed(module: str) -> bool:
    """True when `module` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def nvidia_gpu_present() -> bool:
    return any(Path(p).exists() for p in NVIDIA_MARKERS)


def _torch_cuda() -> bool:
    if not installed("torch"):
        return False
    from pipelines.backends.torch_backend import cuda_available

    return cuda_available()


def _has_onnx(bundle: Bundle) -> bool:
    from pipelines.export import onnx_record

    return onnx_record(bundle, "fp32") is not None


def choose_auto(bundle: Bundle) -> Choice:
    """The backend `auto` means for this bundle on this machine."""
    gpu = nvidia_gpu_present()
    if gpu and installed("tensorrt") and installed("cuda.bindings") and _has_onnx(bundle):
        return Choice("tensorrt", {}, "TensorRT and an NVIDIA GPU are present and the bundle has model.onnx")
    if gpu and _torch_cuda():
        return Choice("torch", {"device": "cuda"}, "torch sees a CUDA GPU")
    if installed("onnxruntime") and _has_onnx(bundle):
        return Choice("onnxruntime", {}, "no GPU; onnxruntime is installed and the bundle has model.onnx")
    if not installed("torch"):
        raise PipelineError(
            f"no backend can run {bundle.path}: export it ('aoi export --bundle {bundle.path} "
            "--format onnx' where torch is installed) or pip install '.[torch]'"
        )
    return Choice("torch", {"device": "cpu"}, "no GPU and no usable model.onnx: torch on the CPU")


def create_backend(
    name: str,
    bundle: Bundle,
    *,
    threads: int | None = None,
    precision: str | None = None,
    batch_size: int = 8,
) -> Backend:
    """The backend `name` ("auto" or one of BACKENDS) loaded with `bundle`.

    `precision` (fp32, fp16, int8) defaults to each backend's own; `batch_size`
    (tiles per inference call) shapes TensorRT's optimization profile."""
    options: dict[str, Any] = {}
    if name == "auto":
        choice = choose_auto(bundle)
        log.info("backend auto -> %s (%s)", choice.name, choice.reason)
        name, options = choice.name, dict(choice.options)
    if name not in BACKENDS:
        raise PipelineError(f"unknown backend {name!r}: choose one of auto, {', '.join(BACKENDS)}")
    if precision is not None:
        options["precision"] = precision
    if name == "tensorrt":
        options["batch_size"] = batch_size
    module_name, cls, extra = BACKENDS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PipelineError(f"backend {name} needs {exc.name}: pip install '.[{extra}]'") from exc
    try:
        backend: Backend = getattr(module, cls)(bundle, threads=threads, **options)
    except ImportError as exc:
        # The runtime itself is imported inside the backend, so a missing one surfaces here.
        raise PipelineError(f"backend {name} needs {exc.name}: pip install '.[{extra}]'") from exc
    return backend
