"""The appliance's configuration: YAML validated into typed models at load time.

Each section's model lives next to its implementation (cameras, outputs,
records, calibration); this module composes them. Unknown keys are errors,
and an error names the key path, the bad value and what is allowed.
Cross-field rules are small named `verify_*` validators.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, ValidationError, model_validator

from appliance.errors import ConfigError
from drivers.camera.registry import CameraSettings
from drivers.io.gpio import GpioOutputSettings
from drivers.io.log import LogOutputSettings
from drivers.io.modbus import ModbusOutputSettings
from drivers.io.opcua import OpcUaOutputSettings
from drivers.io.s7 import S7OutputSettings
from drivers.settings import Settings

OutputConfig = Annotated[
    ModbusOutputSettings | S7OutputSettings | OpcUaOutputSettings | GpioOutputSettings | LogOutputSettings,
    Field(discriminator="type"),
]


class InspectionSettings(Settings):
    bundle: Path = Field(description="model bundle directory written by 'aoi train'")
    backend: str = Field(default="auto", description="inference backend: auto, torch, onnxruntime, tensorrt")
    threads: int | None = Field(
        default=None, ge=1, description="CPU threads for inference (default: all cores)"
    )
    batch_size: int = Field(default=8, ge=1, le=256, description="tiles per inference batch")
    deadline_ms: float = Field(
        default=2000.0,
        gt=0,
        description="decision deadline from acquisition (ms); later frames are UNINSPECTED",
    )
    queue_size: int = Field(default=4, ge=1, le=1024, description="frames waiting for inspection (bounded)")
    image_threshold: float | None = Field(
        default=None,
        gt=0,
        description="override the bundle's calibrated image threshold (calibrated score units)",
    )
    mm_per_px: float | None = Field(default=None, gt=0, description="pixel scale for defect sizes (mm/px)")


class AppConfig(Settings):
    camera: CameraSettings = Field(
        description="where frames come from; `type:` picks genicam, replay or synthetic"
    )
    inspection: InspectionSettings = Field(description="the model and how it runs")
    outputs: list[OutputConfig] = Field(
        default_factory=list, description="PLC/IO outputs that receive verdicts"
    )
    data_dir: Path = Field(default=Path("var"), description="records database and image archive directory")

    @model_validator(mode="after")
    def verify_deadline_covers_queue(self) -> AppConfig:
        if self.inspection.queue_size > 64 and self.inspection.deadline_ms < 100:
            raise ValueError(
                "inspection.queue_size > 64 with deadline_ms < 100 would reject nearly every frame"
            )
        return self


def _describe(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err["loc"] if not str(x).startswith("function-after"))
    value = err.get("input")
    shown = repr(value) if not isinstance(value, dict) else "{...}"
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown key (value {shown}); check the spelling against 'aoi config validate --help'"
    ctx = err.get("ctx") or {}
    allowed = f"; allowed: {ctx['expected']}" if "expected" in ctx else ""
    return f"{loc}: {err['msg']} (got {shown}){allowed}"


def parse_config(raw: Any, *, source: str = "config") -> AppConfig:
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: the top level must be a mapping of sections (camera, inspection, outputs)"
        )
    try:
        return AppConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from exc


def load_config(path: str | Path) -> AppConfig:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{p}: not valid YAML{where}") from exc
    return parse_config(raw, source=str(p))
