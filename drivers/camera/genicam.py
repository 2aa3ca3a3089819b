"""GenICam cameras through harvesters and one GenTL producer (.cti).

Any GenTL producer works: a vendor's GigE Vision or USB3 Vision producer, or
the `viky.cti` simulator shipped in the `genicam` wheel (used by the tests).
Only the producer named in `cti_path` is loaded; producers listed in
`GENICAM_GENTL64_PATH` are never added, so discovery touches no other
transport layer than the one configured.

Settings are applied by their standard GenICam (SFNC) feature names, in an
order that real cameras accept: PixelFormat, Width/Height (after the offsets
are zeroed), OffsetX/OffsetY, ExposureTime (ExposureAuto off), Gain (GainAuto
off), AcquisitionFrameRate (AcquisitionFrameRateEnable on), the trigger
(TriggerSelector, TriggerMode, TriggerSource, TriggerActivation), then the
free-form `features` in their order. A feature the camera lacks gives a
CameraError naming it and the closest names the camera has; a value it refuses
gives a CameraError with the allowed range or entries.

Frames: `with camera.frame(timeout_s=...) as frame:` fetches one harvesters
buffer; `frame.pixels` is a read-only view of that buffer's memory for most
pixel formats (Mono8/10/12/16, RGB8, BGR8; see `pixelformats`) and is only
valid inside the block. The buffer is queued back to the producer when the
block exits. Call `frame.detach()` inside the block to keep a copy.

Loss and reconnection: `loss_after_failures` failed fetches in a row (errors
from the producer), a destroyed acquirer, or a free-running camera silent for
`lost_after_s` mean the camera is gone (a slow free-running camera is not
lost for a few short `frame()` timeouts). A triggered camera is probed once a
second while it waits, since silence is normal there. A lost camera reports
`status.state == "reconnecting"` and each later `frame()` call tries to open
it again, waiting `reconnect_initial_s`, doubled after every failed try up to
`reconnect_max_s` (`reconnect_max_attempts` > 0 gives up: state "failed").
Calls in between raise CameraError within their timeout (never hang, never
crash the caller); `status.reconnects` counts successful reconnections and
`reconnect_attempts` all tries. A timeout raises `FrameTimeoutError`. Values
written with `set_feature` at run time are written again after a reconnect.
"""

from __future__ import annotations

import difflib
import logging
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from drivers.camera.base import Camera, Frame, FrameTimeoutError
from drivers.camera.pixelformats import format_info, to_array
from drivers.errors import CameraError
from drivers.settings import Settings

_log = logging.getLogger(__name__)

FeatureValue = str | int | float | bool


class GenICamSettings(Settings):
    """A GenICam camera reached through one GenTL producer."""

    type: Literal["genicam"] = Field(
        default="genicam", description="Selects the GenICam (harvesters) camera."
    )
    cti_path: Path = Field(description="The GenTL producer (.cti file) of the camera's vendor or transport.")
    serial_number: str | None = Field(default=None, description="Pick the camera with this serial number.")
    user_defined_name: str | None = Field(
        default=None, description="Pick the camera with this user-defined name."
    )
    device_index: int = Field(
        default=0,
        ge=0,
        description="Pick the n-th camera the producer lists (when no serial or name is given).",
    )
    exposure_us: float | None = Field(
        default=None, gt=0, description="ExposureTime [µs]; None leaves the camera's."
    )
    gain_db: float | None = Field(default=None, description="Gain [dB]; None leaves the camera's.")
    width_px: int | None = Field(default=None, gt=0, description="Width of the region of interest [px].")
    height_px: int | None = Field(default=None, gt=0, description="Height of the region of interest [px].")
    offset_x_px: int | None = Field(default=None, ge=0, description="OffsetX of the region of interest [px].")
    offset_y_px: int | None = Field(default=None, ge=0, description="OffsetY of the region of interest [px].")
    pixel_format: str | None = Field(
        default=None, description="PFNC PixelFormat, e.g. Mono8, Mono12, BayerRG8, RGB8."
    )
    frame_rate_hz: float | None = Field(
        default=None, gt=0, description="AcquisitionFrameRate [Hz] when free-running."
    )
    trigger_mode: Literal["free_run", "software", "hardware"] = Field(
        default="free_run",
        description="free_run: TriggerMode Off; software: each frame() fires TriggerSoftware; "
        "hardware: frames on trigger_source edges.",
    )
    trigger_selector: str = Field(
        default="FrameStart", description="TriggerSelector the trigger settings apply to."
    )
    trigger_source: str = Field(
        default="Line1", description="TriggerSource for hardware triggering, e.g. Line1."
    )
    trigger_activation: str | None = Field(
        default="RisingEdge",
        description="TriggerActivation for hardware triggering; None leaves the camera's.",
    )
    features: dict[str, FeatureValue] = Field(
        default_factory=dict, description="Further GenICam features by name, applied last, in order."
    )
    num_buffers: int = Field(default=4, ge=1, description="Buffers announced to the producer.")
    loss_after_failures: int = Field(
        default=3, ge=1, description="Failed fetches in a row after which the camera counts as lost."
    )
    lost_after_s: float = Field(
        default=5.0, gt=0, description="A free-running camera silent this long counts as lost [s]."
    )
    reconnect_initial_s: float = Field(
        default=0.5, gt=0, description="Wait before the first reconnect try [s]."
    )
    reconnect_max_s: float = Field(
        default=30.0, gt=0, description="Longest wait between reconnect tries [s]."
    )
    reconnect_max_attempts: int = Field(
        default=0,
        ge=0,
        description="Reconnect tries before the camera is given up ('failed'); 0 tries forever.",
    )

    @model_validator(mode="after")
    def _verify(self) -> GenICamSettings:
        verify_one_device_selector(self)
        verify_reconnect_waits(self)
        return self


def verify_one_device_selector(settings: GenICamSettings) -> None:
    """A camera is picked by serial number or by user-defined name, not both."""
    if settings.serial_number is not None and settings.user_defined_name is not None:
        raise ValueError(
            "camera: give serial_number or user_defined_name, not both "
            f"(got {settings.serial_number!r} and {settings.user_defined_name!r})"
        )


def verify_reconnect_waits(settings: GenICamSettings) -> None:
    """The first reconnect wait may not exceed the longest one."""
    if settings.reconnect_initial_s > settings.reconnect_max_s:
        raise ValueError(
            f"camera: reconnect_initial_s ({settings.reconnect_initial_s}) is longer than "
            f"reconnect_max_s ({settings.reconnect_max_s})"
        )


def _import_harvester() -> Any:
    """The harvesters Harvester class, or a CameraError saying how to install it."""
    try:
        from harvesters.core import Harvester
    except ImportError as exc:
        raise CameraError(
            f"GenICam cameras need the 'harvesters' and 'genicam' packages ({exc}): "
            "install them with pip install '.[camera]'"
        ) from exc
    return Harvester


def _short(exc: BaseException) -> str:
    """A GenApi/GenTL message without the C++ exception name, file and line."""
    text = str(exc).strip() or type(exc).__name__
    text = re.sub(r"\s*:\s*\w*Exception thrown.*$", "", text, flags=re.DOTALL)
    return re.sub(r"\s*\(file '.*$", "", text, flags=re.DOTALL).strip()


def _open_harvester(cti_path: Path) -> Any:
    """A Harvester that has loaded only `cti_path` and listed its devices."""
    if not cti_path.is_file():
        raise CameraError(
            f"GenTL producer {cti_path} not found: set camera.cti_path to the vendor's .cti file"
        )
    harvester = _import_harvester()()
    try:
        harvester.add_file(str(cti_path))
        harvester.update()
    except BaseException:
        _teardown(harvester, None)
        raise
    return harvester


def _device_dict(index: int, info: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"index": index}
    for key in ("id_", "vendor", "model", "serial_number", "user_defined_name", "tl_type", "display_name"):
        try:
            out[key.rstrip("_")] = getattr(info, key)
        except Exception:  # a producer may not implement every info field
            out[key.rstrip("_")] = None
    return out


def list_devices(*, cti_path: Path) -> list[dict[str, Any]]:
    """The cameras that the producer `cti_path` sees: index, id, vendor, model,
    serial_number, user_defined_name, tl_type, display_name."""
    harvester = _open_harvester(cti_path)
    try:
        return [_device_dict(i, info) for i, info in enumerate(harvester.device_info_list)]
    finally:
        harvester.reset()


class GenICamCamera(Camera):
    """One GenICam device through harvesters; see the module docstring."""

    name = "genicam"

    def __init__(self, settings: GenICamSettings) -> None:
        super().__init__()
        self.settings = settings
        self.reconnect_attempts = 0
        self._harvester: Any = None
        self._ia: Any = None
        self._device: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._want_streaming = False
        self._failures = 0
        self._frame_id = 0
        self._last_block_id: int | None = None
        self._next_reconnect_s = 0.0
        self._reconnect_wait_s = settings.reconnect_initial_s
        self._last_probe_s = 0.0
        self._last_frame_s = 0.0  # monotonic time of the last frame (or of the start)
        self._runtime_features: dict[str, FeatureValue] = {}

    # -- connection ---------------------------------------------------------

    @property
    def device(self) -> dict[str, Any]:
        """What the producer says about the opened device (vendor, model, serial...)."""
        return dict(self._device)

    def _select(self, harvester: Any) -> int:
        s = self.settings
        infos = harvester.device_info_list
        if not infos:
            raise CameraError(
                f"no camera found by GenTL producer {s.cti_path}: check cabling, power and network"
            )
        listing = ", ".join(
            f"#{i} {d.get('model')} serial={d.get('serial_number')} name={d.get('user_defined_name')}"
            for i, d in ((i, _device_dict(i, info)) for i, info in enumerate(infos))
        )
        for key, wanted in (("serial_number", s.serial_number), ("user_defined_name", s.user_defined_name)):
            if wanted is None:
                continue
            for i, info in enumerate(infos):
                if _device_dict(i, info).get(key) == wanted:
                    return i
            raise CameraError(f"no camera with {key}={wanted!r} on {s.cti_path}; found: {listing}")
        if s.device_index >= len(infos):
            raise CameraError(f"camera index {s.device_index} not found on {s.cti_path}; found: {listing}")
        return s.device_index

    def _connect(self) -> None:
        """Load the producer, open the selected device and apply the settings."""
        harvester = _open_harvester(self.settings.cti_path)
        ia = None
        try:
            index = self._select(harvester)
            self._device = _device_dict(index, harvester.device_info_list[index])
            # harvesters installs its own SIGINT handler (which destroys the
            # acquirer instead of raising KeyboardInterrupt) when created on
            # the main thread; keep the appliance's Ctrl-C behaviour.
            on_main = threading.current_thread() is threading.main_thread()
            previous = signal.getsignal(signal.SIGINT) if on_main else None
            try:
                ia = harvester.create(index)
            finally:
                if on_main:
                    signal.signal(signal.SIGINT, previous)
            ia.num_buffers = self.settings.num_buffers
            # Wait for buffer events in 20 ms steps instead of harvesters' 1 ms
            # busy polling; fetch timeouts are still honoured to that step.
            ia.timeout_period_on_update_event_data_call = 20
            self._register_incomplete_counter(ia)
            self._harvester, self._ia = harvester, ia
            self._configure()
        except BaseException:
            self._harvester, self._ia = None, None
            _teardown(harvester, ia)
            raise
        self._last_block_id = None

    def _register_incomplete_counter(self, ia: Any) -> None:
        from harvesters.core import Callback, ImageAcquirer

        camera = self

        class _CountIncomplete(Callback):
            def emit(self, context: object | None = None) -> None:
                camera.status.frames_lost += 1

        ia.add_callback(ImageAcquirer.Events.INCOMPLETE_BUFFER, _CountIncomplete())

    def open(self) -> None:
        """Open the configured device and apply the settings; CameraError if impossible."""
        with self._lock:
            if self._ia is not None:
                return
            try:
                self._connect()
            except CameraError as exc:
                self.status.last_error = str(exc)
                raise
            except Exception as exc:
                self.status.last_error = _short(exc)
                raise CameraError(
                    f"cannot open camera #{self.settings.device_index} on {self.settings.cti_path}: "
                    f"{_short(exc)}"
                ) from exc
            self._failures = 0
            self.status.state = "open"

    def start(self) -> None:
        """Start streaming (announces and queues the buffers)."""
        with self._lock:
            if self._ia is None:
                raise CameraError("camera is not open: call open() first")
            try:
                self._ia.start()
            except Exception as exc:
                raise CameraError(
                    f"camera {self._label()} refused to start acquisition: {_short(exc)}"
                ) from exc
            self._want_streaming = True
            self._failures = 0
            self._last_frame_s = time.monotonic()
            self._last_block_id = None
            self.status.state = "streaming"

    def stop(self) -> None:
        """Stop streaming; every buffer goes back to the producer."""
        with self._lock:
            self._want_streaming = False
            if self._ia is not None:
                try:
                    self._ia.stop()
                except Exception as exc:  # a vanished device cannot be stopped; nothing to return
                    _log.warning("camera %s: stop failed: %s", self._label(), _short(exc))
                self.status.state = "open"
            elif self.status.state in ("reconnecting", "streaming"):
                self.status.state = "closed"

    def close(self) -> None:
        """Release the device and the producer. Safe to call twice."""
        with self._lock:
            self._want_streaming = False
            harvester, ia = self._harvester, self._ia
            self._harvester, self._ia = None, None
            _teardown(harvester, ia)
            self.status.state = "closed"

    def _label(self) -> str:
        d = self._device
        if d:
            return f"{d.get('model')} (serial {d.get('serial_number')})"
        return f"#{self.settings.device_index} on {self.settings.cti_path.name}"

    # -- features -----------------------------------------------------------

    def _node_map(self) -> Any:
        if self._ia is None:
            raise CameraError("camera is not open: call open() first")
        return self._ia.remote_device.node_map

    def feature_names(self) -> list[str]:
        """Every feature name in the camera's node map (sorted)."""
        with self._lock:
            nm = self._node_map()
            try:
                names = [n.node.name for n in nm._get_nodes()]
            except Exception:  # older genicam bindings: the node map lists its nodes in dir()
                names = [n for n in dir(nm) if n[:1].isupper()]
            return sorted(set(names))

    def _node(self, name: str) -> Any:
        nm = self._node_map()
        try:
            return getattr(nm, name)
        except Exception:  # AttributeError or a GenApi LogicalErrorException
            close = difflib.get_close_matches(name, self.feature_names(), n=5, cutoff=0.5)
            hint = f"; close names it has: {', '.join(close)}" if close else ""
            raise CameraError(f"camera {self._label()} has no feature {name!r}{hint}") from None

    def has_feature(self, name: str) -> bool:
        """Whether the camera's node map holds `name` and it is implemented."""
        from genicam import genapi

        with self._lock:
            try:
                node = getattr(self._node_map(), name)
                return bool(node.node.get_access_mode() != genapi.EAccessMode.NI)
            except Exception:
                return False

    def get_feature(self, name: str) -> Any:
        """The current value of feature `name` (enumerations as their symbolic name)."""
        with self._lock:
            node = self._node(name)
            try:
                return node.value
            except Exception as exc:
                raise CameraError(f"camera {self._label()}: cannot read {name}: {_short(exc)}") from exc

    def _allowed(self, node: Any) -> str:
        from genicam import genapi

        kind = node.node.principal_interface_type
        try:
            if kind in (genapi.EInterfaceType.intfIInteger, genapi.EInterfaceType.intfIFloat):
                text = f"allowed {node.min} .. {node.max}"
                if kind == genapi.EInterfaceType.intfIInteger and node.inc > 1:
                    text += f" in steps of {node.inc}"
                return text
            if kind == genapi.EInterfaceType.intfIEnumeration:
                names = [
                    e.symbolic
                    for e in node.entries
                    if e.node.get_access_mode() not in (genapi.EAccessMode.NI, genapi.EAccessMode.NA)
                ]
                return f"allowed: {', '.join(names)}"
        except Exception:  # the limits themselves may be unreadable right now
            return "allowed values unknown"
        return ""

    def set_feature(self, name: str, value: FeatureValue) -> None:
        """Write feature `name`; a command is executed when `value` is True.

        The value is written again after a reconnection (after the settings).
        CameraError names the feature when the camera lacks it, it is not
        writable now, or the camera refuses the value (with what it allows).
        """
        with self._lock:
            is_command = self._write_feature(name, value)
            if not is_command:
                self._runtime_features.pop(name, None)
                self._runtime_features[name] = value

    def _write_feature(self, name: str, value: FeatureValue) -> bool:
        """Write one feature (see `set_feature`); True when it was a command."""
        from genicam import genapi

        with self._lock:
            node = self._node(name)
            access = node.node.get_access_mode()
            kind = node.node.principal_interface_type
            if access not in (genapi.EAccessMode.RW, genapi.EAccessMode.WO):
                state = {genapi.EAccessMode.RO: "read-only", genapi.EAccessMode.NA: "not available now"}.get(
                    access, "not implemented"
                )
                raise CameraError(
                    f"camera {self._label()}: feature {name} is {state}, cannot set it to {value!r}"
                )
            try:
                if kind == genapi.EInterfaceType.intfICommand:
                    if value is not True:
                        raise CameraError(
                            f"camera {self._label()}: {name} is a command; set it to true to run it"
                        )
                    node.execute()
                    return True
                elif kind == genapi.EInterfaceType.intfIBoolean:
                    if not isinstance(value, bool):
                        raise CameraError(
                            f"camera {self._label()}: {name} takes true or false, got {value!r}"
                        )
                    node.value = value
                elif kind == genapi.EInterfaceType.intfIInteger:
                    if isinstance(value, bool) or not float(value).is_integer():
                        raise CameraError(f"camera {self._label()}: {name} takes an integer, got {value!r}")
                    node.value = int(value)
                elif kind == genapi.EInterfaceType.intfIFloat:
                    node.value = float(value)
                elif kind in (genapi.EInterfaceType.intfIEnumeration, genapi.EInterfaceType.intfIString):
                    node.value = str(value)
                else:
                    node.from_string(str(value))
            except CameraError:
                raise
            except (ValueError, TypeError) as exc:
                raise CameraError(
                    f"camera {self._label()}: {name}={value!r} is not a valid value: {exc}"
                ) from exc
            except Exception as exc:
                allowed = self._allowed(node)
                raise CameraError(
                    f"camera {self._label()} refused {name}={value!r}"
                    + (f" ({allowed})" if allowed else "")
                    + f": {_short(exc)}"
                ) from exc
            return False

    def _set_if_present(self, name: str, value: FeatureValue) -> None:
        if self.has_feature(name):
            self._write_feature(name, value)

    def _configure(self) -> None:
        """Apply the settings in an order cameras accept (see the module docstring)."""
        s = self.settings
        if self.has_feature("AcquisitionMode"):
            try:
                self._write_feature("AcquisitionMode", "Continuous")
            except CameraError as exc:  # single-frame-only devices still stream with repeated starts
                _log.info("camera %s: %s", self._label(), exc)
        if s.pixel_format is not None:
            self._write_feature("PixelFormat", s.pixel_format)
        # Zero the offsets first so a larger width/height fits the sensor.
        if s.offset_x_px is not None:
            self._write_feature("OffsetX", 0)
        if s.offset_y_px is not None:
            self._write_feature("OffsetY", 0)
        if s.width_px is not None:
            self._write_feature("Width", s.width_px)
        if s.height_px is not None:
            self._write_feature("Height", s.height_px)
        if s.offset_x_px is not None:
            self._write_feature("OffsetX", s.offset_x_px)
        if s.offset_y_px is not None:
            self._write_feature("OffsetY", s.offset_y_px)
        if s.exposure_us is not None:
            self._set_if_present("ExposureAuto", "Off")
            self._write_feature("ExposureTime", s.exposure_us)
        if s.gain_db is not None:
            self._set_if_present("GainAuto", "Off")
            self._write_feature("Gain", s.gain_db)
        if s.frame_rate_hz is not None:
            self._set_if_present("AcquisitionFrameRateEnable", True)
            self._write_feature("AcquisitionFrameRate", s.frame_rate_hz)
        self._configure_trigger()
        for name, value in s.features.items():
            self._write_feature(name, value)
        # Values set at run time (GUI, tuning) survive a reconnection.
        for name, value in self._runtime_features.items():
            self._write_feature(name, value)

    def _configure_trigger(self) -> None:
        s = self.settings
        if s.trigger_mode == "free_run":
            # A camera without triggering is free-running already.
            if self.has_feature("TriggerMode"):
                self._set_if_present("TriggerSelector", s.trigger_selector)
                self._write_feature("TriggerMode", "Off")
            return
        self._set_if_present("TriggerSelector", s.trigger_selector)
        # Sources and activation can only change while triggering is off.
        self._write_feature("TriggerMode", "Off")
        if s.trigger_mode == "software":
            self._write_feature("TriggerSource", "Software")
            if not self.has_feature("TriggerSoftware"):
                raise CameraError(
                    f"camera {self._label()} has no TriggerSoftware command for software triggering"
                )
        else:
            self._write_feature("TriggerSource", s.trigger_source)
            if s.trigger_activation is not None:
                self._write_feature("TriggerActivation", s.trigger_activation)
        self._write_feature("TriggerMode", "On")

    def trigger(self) -> None:
        """Fire TriggerSoftware once (software triggering fires it in every `frame()` call)."""
        self.set_feature("TriggerSoftware", True)

    # -- frames -------------------------------------------------------------

    def _acquire(self, *, timeout_s: float) -> tuple[Frame, Any]:
        with self._lock:
            if self.status.state == "failed":
                raise CameraError(f"camera {self._label()} was given up: {self.status.last_error}")
            if self.status.state == "reconnecting":
                self._reconnect(timeout_s=timeout_s)
            if self.status.state != "streaming" or self._ia is None:
                raise CameraError(
                    f"camera {self._label()} is {self.status.state}: call open() and start() first"
                )
            ia = self._ia
            triggered = self.settings.trigger_mode != "free_run"
            try:
                if not ia.is_valid():
                    raise CameraError("the image acquirer was destroyed underneath (device gone)")
                if self.settings.trigger_mode == "software":
                    ia.remote_device.node_map.TriggerSoftware.execute()
                buffer = self._fetch(ia, timeout_s=timeout_s)
            except Exception as exc:
                lost = self._failure(f"fetch failed: {_short(exc)}", immediate=not ia.is_valid())
                raise CameraError(
                    f"camera {self._label()}: fetch failed ({_short(exc)})"
                    + ("; reconnecting" if lost else "")
                ) from exc
            if buffer is None:
                if triggered:
                    self._probe_alive()
                    raise FrameTimeoutError(f"camera {self._label()}: no trigger within {timeout_s:.3f} s")
                silent_s = time.monotonic() - self._last_frame_s
                lost = silent_s >= self.settings.lost_after_s and self._failure(
                    f"no frame for {silent_s:.1f} s", immediate=True
                )
                raise FrameTimeoutError(
                    f"camera {self._label()}: no frame within {timeout_s:.3f} s"
                    + ("; reconnecting" if lost else "")
                )
            try:
                frame = self._to_frame(buffer)
            except Exception as exc:
                _queue_quietly(buffer)
                if isinstance(exc, CameraError):
                    raise
                raise CameraError(f"camera {self._label()}: unusable buffer: {_short(exc)}") from exc
            self._failures = 0
            self._last_frame_s = time.monotonic()
            self.status.frames_delivered += 1
            return frame, buffer

    def _release(self, token: Any) -> None:
        with self._lock:
            _queue_quietly(token)

    def _fetch(self, ia: Any, *, timeout_s: float) -> Any:
        """A complete buffer, or None when none came within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            # try_fetch waits forever for a timeout <= 0.
            buffer = ia.try_fetch(timeout=max(remaining, 0.001))
            if buffer is not None or remaining <= 0:
                return buffer  # None also when incomplete buffers were all there was

    def _to_frame(self, buffer: Any) -> Frame:
        payload = buffer.payload
        components = getattr(payload, "components", None) if payload is not None else None
        if not components:
            raise CameraError(
                f"camera {self._label()} delivered a buffer without an image (payload {payload!r})"
            )
        component = components[0]
        pixel_format = component.data_format
        width, height = int(component.width), int(component.height)
        info = format_info(pixel_format)
        padding = int(component.x_padding)
        stride = None
        if padding and info.kind != "mono_packed":
            stride = width * info.bits_per_pixel // 8 + padding
        raw = np.frombuffer(buffer.module.raw_buffer, dtype=np.uint8, offset=int(component.data_offset))
        pixels = to_array(
            raw, width_px=width, height_px=height, pixel_format=pixel_format, stride_bytes=stride
        )
        timestamp_s = time.monotonic()
        self._count_gaps(buffer)
        frame = Frame(
            frame_id=self._frame_id,
            timestamp_s=timestamp_s,
            pixels=pixels,
            part_id=f"P{self._frame_id:06d}",
            source=f"genicam:{self._device.get('serial_number') or self._device.get('id')}",
        )
        self._frame_id += 1
        return frame

    def _count_gaps(self, buffer: Any) -> None:
        """Count frames the device sent that never arrived, from gaps in its block ids."""
        try:
            block_id = int(buffer.module.frame_id)
        except Exception:  # producers without block ids
            return
        last = self._last_block_id
        # Block ids restart at a wrap or after a restart: no loss is counted then.
        if last is not None and block_id > last + 1:
            self.status.frames_lost += block_id - last - 1
        self._last_block_id = block_id

    # -- loss and reconnection ------------------------------------------------

    def _failure(self, reason: str, *, immediate: bool = False) -> bool:
        """Count a failed fetch; True when it turned the camera 'reconnecting'."""
        self._failures += 1
        self.status.last_error = reason
        if not immediate and self._failures < self.settings.loss_after_failures:
            return False
        _log.warning("camera %s lost (%s): reconnecting", self._label(), reason)
        harvester, ia = self._harvester, self._ia
        self._harvester, self._ia = None, None
        _teardown(harvester, ia)
        self.status.state = "reconnecting"
        self._reconnect_wait_s = self.settings.reconnect_initial_s
        self._next_reconnect_s = time.monotonic() + self._reconnect_wait_s
        return True

    def _probe_alive(self) -> None:
        """On a triggered camera, a quiet line is normal: once a second, read a
        feature from the device itself to notice a camera that has gone."""
        now = time.monotonic()
        if now - self._last_probe_s < 1.0 or self._ia is None:
            return
        self._last_probe_s = now
        try:
            nm = self._ia.remote_device.node_map
            nm._invalidate_nodes()  # force a real read instead of GenApi's cache
            _ = nm.Width.value
        except Exception as exc:
            self._failure(f"device does not answer: {_short(exc)}", immediate=not self._ia.is_valid())

    def _reconnect(self, *, timeout_s: float) -> None:
        """One reconnect try if it is due (waiting at most `timeout_s` for it);
        raises CameraError while the camera is still away."""
        wait_s = self._next_reconnect_s - time.monotonic()
        if wait_s > 0:
            time.sleep(min(wait_s, max(timeout_s, 0.0)))
            if self._next_reconnect_s - time.monotonic() > 0:
                raise CameraError(
                    f"camera {self._label()} lost ({self.status.last_error}); reconnecting, "
                    f"next try in {self._next_reconnect_s - time.monotonic():.1f} s"
                )
        self.reconnect_attempts += 1
        try:
            self._connect()
            if self._want_streaming:
                self._ia.start()
        except Exception as exc:
            harvester, ia = self._harvester, self._ia
            self._harvester, self._ia = None, None
            _teardown(harvester, ia)
            self.status.last_error = f"reconnect failed: {_short(exc)}"
            limit = self.settings.reconnect_max_attempts
            if limit and self.reconnect_attempts >= limit:
                self.status.state = "failed"
                raise CameraError(
                    f"camera {self._label()} did not come back after {self.reconnect_attempts} tries: "
                    f"{_short(exc)}"
                ) from exc
            self._reconnect_wait_s = min(self._reconnect_wait_s * 2, self.settings.reconnect_max_s)
            self._next_reconnect_s = time.monotonic() + self._reconnect_wait_s
            raise CameraError(
                f"camera {self._label()} still lost ({_short(exc)}); "
                f"next try in {self._reconnect_wait_s:.1f} s"
            ) from exc
        _log.info("camera %s reconnected after %d tries", self._label(), self.reconnect_attempts)
        self.status.reconnects += 1
        self._failures = 0
        self._last_frame_s = time.monotonic()
        self._reconnect_wait_s = self.settings.reconnect_initial_s
        self.status.state = "streaming" if self._want_streaming else "open"


def _queue_quietly(buffer: Any) -> None:
    """Give a buffer back; a device that has gone has no queue to take it."""
    if buffer is None:
        return
    try:
        buffer.queue()
    except Exception as exc:
        _log.debug("buffer could not be queued back: %s", _short(exc))


def _teardown(harvester: Any, ia: Any) -> None:
    """Destroy an acquirer and reset its harvester, whatever state they are in."""
    if ia is not None:
        try:
            ia.destroy()
        except Exception as exc:
            _log.debug("image acquirer destroy failed: %s", _short(exc))
    if harvester is not None:
        try:
            harvester.reset()
        except Exception as exc:
            _log.debug("harvester reset failed: %s", _short(exc))
