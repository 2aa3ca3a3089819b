"""The appliance's configuration: YAML validated into typed models at load time.

Each section's model lives next to its implementation (cameras, outputs,
records, archive); this module composes them and adds the sections of the
line itself (`line`, `control`, `service`). Unknown keys are errors, and an
error names the key path, the bad value and what is allowed. Cross-field
rules are small named `verify_*` functions.

Relative paths: `records.path`, `archive.directory` and `control.token_file`
are taken relative to `data_dir`; `data_dir` and `inspection.bundle` relative
to the working directory of the process (the systemd unit sets it).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from appliance.archive import ArchiveSettings
from appliance.errors import ConfigError
from appliance.gui.settings import GuiSettings
from appliance.records import RecordsSettings
from calibration.capture import CaptureSettings
from calibration.flatfield import FlatFieldSettings
from calibration.roi import RoiSettings
from calibration.scale import ScaleSettings
from calibration.template import TemplateSettings
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

LOOPBACK_NAMES = ("localhost",)


class InspectionSettings(Settings):
    """The model bundle, how it runs, and the decision deadline."""

    bundle: Path = Field(description="model bundle directory written by 'aoi train'")
    backend: str = Field(default="auto", description="inference backend: auto, torch, onnxruntime, tensorrt")
    threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads for inference (count; default: all cores). On a small CPU leave one "
        "core to the camera, outputs and records: other threads stall a full thread team",
    )
    batch_size: int = Field(default=8, ge=1, le=256, description="tiles per inference batch")
    mode: Literal["tiles", "whole", "halo", "auto"] = Field(
        default="tiles",
        description="inference mode: tiles (blended, the default), whole (one pass, most memory), halo "
        "(the whole frame's map with bounded memory) or auto (whole if it fits in half the free memory, "
        "else halo); calibrate the bundle in the same kind ('aoi calibrate --mode')",
    )
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


class LineSettings(Settings):
    """How the line runner works between the camera, the inspector and the outputs."""

    recipe: str = Field(default="", description="recipe name written with every verdict (text)")
    frame_timeout_s: float = Field(
        default=0.5, gt=0, le=60, description="longest wait for one frame from the camera (s)"
    )
    stats_window: int = Field(
        default=1000,
        ge=10,
        le=100_000,
        description="verdicts over which latency percentiles and the frame rate are computed (count)",
    )
    warmup: bool = Field(
        default=True,
        description="run one inference on a blank frame before the line is ready, so the first "
        "part does not pay for lazy initialisation",
    )
    events_capacity: int = Field(
        default=1024,
        ge=16,
        le=100_000,
        description="verdict events kept for GUI/control consumers (count); a consumer further "
        "behind is told how many it missed (the records keep them all)",
    )
    display_every_n: int = Field(
        default=10,
        ge=0,
        description="attach a downsampled frame and heatmap to every n-th verdict event (count; "
        "NG verdicts always get one); 0: only NG",
    )
    display_keep: int = Field(
        default=16,
        ge=1,
        le=1024,
        description="newest events that keep their display images in memory (count); older ones "
        "lose them, so a lagging consumer drops display data first",
    )
    display_max_px: int = Field(
        default=320, ge=32, le=4096, description="longest side of a display image (px)"
    )
    stop_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="how long stopping waits for the frame in inspection, the outputs, the image "
        "archive and the records each (s)",
    )


class ControlSettings(Settings):
    """The local HTTP control and event endpoint (status, SSE events, pause, threshold, bundle)."""

    enabled: bool = Field(default=True, description="serve the control endpoint")
    host: str = Field(
        default="127.0.0.1",
        description="address to bind: an IP address or 'localhost'; non-loopback needs allow_remote",
    )
    port: int = Field(default=8750, ge=0, le=65535, description="TCP port (0: any free port)")
    allow_remote: bool = Field(
        default=False,
        description="allow a non-loopback bind address (the token then crosses the network in the "
        "clear: put a TLS proxy in front)",
    )
    token: str | None = Field(
        default=None,
        min_length=16,
        description="bearer token clients must send (text, 16+ characters); unset: read or create token_file",
    )
    token_file: Path = Field(
        default=Path("control.token"),
        description="file holding the token (path, relative to data_dir); created with mode 0600 "
        "when missing",
    )
    max_clients: int = Field(
        default=8, ge=1, le=256, description="concurrent event-stream clients at most (count)"
    )
    keepalive_s: float = Field(
        default=15.0, gt=0, le=300, description="comment line sent to an idle event stream every (s)"
    )
    lag_events: int = Field(
        default=8,
        ge=0,
        description="a client more than this many events behind gets them without display images (count)",
    )

    @model_validator(mode="after")
    def _verify(self) -> ControlSettings:
        verify_control_bind(self)
        return self


def is_loopback(host: str) -> bool:
    """Whether `host` (an IP literal or 'localhost') is a loopback address."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def verify_control_bind(settings: ControlSettings) -> None:
    """A non-loopback bind needs `allow_remote: true`; a host name other than localhost is refused."""
    if is_loopback(settings.host):
        return
    try:
        ipaddress.ip_address(settings.host)
    except ValueError:
        raise ValueError(
            f"control.host {settings.host!r} is not an IP address: use 127.0.0.1, ::1, localhost "
            "or an interface address"
        ) from None
    if not settings.allow_remote:
        raise ValueError(
            f"control.host {settings.host!r} is not a loopback address: the control endpoint is "
            "local by default; set control.allow_remote: true to expose it"
        )


class ServiceSettings(Settings):
    """The headless service: watchdog and status reporting to systemd."""

    stall_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="the line counts as hung (no watchdog pings) when the inspection worker has "
        "not made progress for this long (s)",
    )
    status_interval_s: float = Field(
        default=5.0, gt=0, le=3600, description="period of STATUS= lines to systemd and the log (s)"
    )


class AppConfig(Settings):
    """The whole appliance configuration (one YAML file)."""

    camera: CameraSettings = Field(
        description="where frames come from; `type:` picks genicam, replay or synthetic"
    )
    inspection: InspectionSettings = Field(description="the model and how it runs")
    outputs: list[OutputConfig] = Field(
        default_factory=list, description="PLC/IO outputs that receive verdicts"
    )
    data_dir: Path = Field(default=Path("var"), description="records database and image archive directory")
    records: RecordsSettings = Field(
        default_factory=RecordsSettings, description="the records database (path relative to data_dir)"
    )
    archive: ArchiveSettings = Field(
        default_factory=ArchiveSettings,
        description="the NG image archive (directory relative to data_dir)",
    )
    flatfield: FlatFieldSettings = Field(
        default_factory=FlatFieldSettings, description="flat-field and dark-frame correction of every frame"
    )
    scale: ScaleSettings = Field(
        default_factory=ScaleSettings, description="pixel scale (defect sizes in mm) and lens undistortion"
    )
    template: TemplateSettings = Field(
        default_factory=TemplateSettings, description="alignment of every frame to the golden template"
    )
    roi: RoiSettings = Field(
        default_factory=RoiSettings, description="regions of interest: pixels outside never count"
    )
    capture: CaptureSettings = Field(
        default_factory=CaptureSettings, description="capture checks (focus, exposure, drift) as line alarms"
    )
    line: LineSettings = Field(default_factory=LineSettings, description="the line runner")
    control: ControlSettings = Field(
        default_factory=ControlSettings, description="the local control and event endpoint"
    )
    service: ServiceSettings = Field(
        default_factory=ServiceSettings, description="the headless service (systemd)"
    )
    gui: GuiSettings = Field(
        default_factory=GuiSettings, description="the operator station 'aoi gui' (PIN hash, kiosk, sizes)"
    )

    @model_validator(mode="after")
    def verify_deadline_covers_queue(self) -> AppConfig:
        if self.inspection.queue_size > 64 and self.inspection.deadline_ms < 100:
            raise ValueError(
                "inspection.queue_size > 64 with deadline_ms < 100 would reject nearly every frame"
            )
        verify_stall_exceeds_deadline(self)
        return self

    def in_data_dir(self, path: Path) -> Path:
        """`path` as is when absolute, else under `data_dir`."""
        return path if path.is_absolute() else self.data_dir / path

    def records_settings(self) -> RecordsSettings:
        """The records section with its path resolved against `data_dir`."""
        return self.records.model_copy(update={"path": self.in_data_dir(self.records.path)})

    def archive_settings(self) -> ArchiveSettings:
        """The archive section with its directory resolved against `data_dir`."""
        return self.archive.model_copy(update={"directory": self.in_data_dir(self.archive.directory)})


def verify_stall_exceeds_deadline(config: AppConfig) -> None:
    """The watchdog must not call a line hung while one frame may still legitimately be inspected."""
    if config.service.stall_s * 1000.0 <= config.inspection.deadline_ms:
        raise ValueError(
            f"service.stall_s ({config.service.stall_s:g} s) must exceed inspection.deadline_ms "
            f"({config.inspection.deadline_ms:g} ms), or a slow frame would count as a hung line"
        )


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
    """Validate a mapping (parsed YAML) into an `AppConfig`; `ConfigError` names the key."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: the top level must be a mapping of sections (camera, inspection, outputs)"
        )
    try:
        return AppConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from exc


def load_config(path: str | Path) -> AppConfig:
    """Read and validate a YAML configuration file."""
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
