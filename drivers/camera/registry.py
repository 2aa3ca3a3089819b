"""Camera types by name: the explicit registry, the factory and the settings union.

`CAMERAS` maps a config `type:` to (module, class); `create_camera(settings)`
imports that module only then, so a missing optional library (harvesters for
GenICam) breaks only that choice, with a message naming the package and the
pip extra. `CameraSettings` is the tagged union `appliance.config` composes.
"""

from __future__ import annotations

import importlib
from typing import Annotated

from pydantic import Field

from drivers.camera.base import Camera
from drivers.camera.genicam import GenICamSettings
from drivers.camera.replay import ReplaySettings
from drivers.camera.synthetic import SyntheticSettings
from drivers.errors import CameraError

# type name -> (module, class). Settings modules import no optional library;
# implementations import theirs when a camera is opened.
CAMERAS: dict[str, tuple[str, str]] = {
    "genicam": ("drivers.camera.genicam", "GenICamCamera"),
    "replay": ("drivers.camera.replay", "ReplayCamera"),
    "synthetic": ("drivers.camera.synthetic", "SyntheticCamera"),
}

# Optional libraries each type needs, with the pip extra that brings them.
_NEEDS: dict[str, tuple[tuple[str, ...], str]] = {
    "genicam": (("harvesters", "genicam"), "camera"),
}

CameraSettings = Annotated[
    GenICamSettings | ReplaySettings | SyntheticSettings,
    Field(discriminator="type"),
]


def _check_dependencies(type_name: str) -> None:
    packages, extra = _NEEDS.get(type_name, ((), ""))
    for package in packages:
        try:
            importlib.import_module(package)
        except ImportError as exc:
            raise CameraError(
                f"camera type {type_name!r} needs the {package!r} package ({exc}): "
                f"install it with pip install '.[{extra}]'"
            ) from exc


def create_camera(settings: GenICamSettings | ReplaySettings | SyntheticSettings) -> Camera:
    """The camera that `settings.type` names, built (not opened) from `settings`."""
    type_name = settings.type
    if type_name not in CAMERAS:
        raise CameraError(f"unknown camera type {type_name!r}: use one of {', '.join(CAMERAS)}")
    _check_dependencies(type_name)
    module_name, class_name = CAMERAS[type_name]
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name)
    camera: Camera = cls(settings)
    return camera
