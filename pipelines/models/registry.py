"""The explicit list of model families and how to reach their code."""

from __future__ import annotations

import importlib
from types import ModuleType

from pipelines.errors import ModelError

# family -> (inference module, training module)
FAMILIES: dict[str, tuple[str, str]] = {
    "atst": ("pipelines.models.atst.model", "pipelines.models.atst.train"),
    "bvpn": ("pipelines.models.bvpn.model", "pipelines.models.bvpn.train"),
    "distrec": ("pipelines.models.distrec.model", "pipelines.models.distrec.train"),
    "ikdff": ("pipelines.models.ikdff.model", "pipelines.models.ikdff.train"),
    "ndpnet": ("pipelines.models.ndpnet.model", "pipelines.models.ndpnet.train"),
    "patchcore": ("pipelines.models.patchcore.model", "pipelines.models.patchcore.train"),
}


def _module(family: str, which: int) -> ModuleType:
    if family not in FAMILIES:
        raise ModelError(f"unknown model family {family!r}: choose one of {', '.join(sorted(FAMILIES))}")
    return importlib.import_module(FAMILIES[family][which])


def inference_module(family: str) -> ModuleType:
    return _module(family, 0)


def training_module(family: str) -> ModuleType:
    return _module(family, 1)
