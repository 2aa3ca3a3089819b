"""The line runner: camera -> bounded queue -> inspection worker -> outputs, records, archive, events.

One `Line` wires the parts of a running appliance together::

    camera thread (AcquisitionWorker) --Frame--> bounded queue
        --> inspection worker: deadline check -> inspector.inspect(frame) -> deadline check
        --> outputs (publish never blocks), image archive (NG/UNINSPECTED), records,
            event stream (GUI, control endpoint), counters

Rules that hold for every frame:

- **Exactly one verdict**: OK, NG or UNINSPECTED. NG and UNINSPECTED are
  rejected (fail-safe). UNINSPECTED carries its reason:
  ``queue full`` (the acquisition queue overflowed; decided at once, on the
  camera thread), ``deadline missed before inspection`` (the frame waited past
  `deadline_ms` from its acquisition time), ``inspection took X ms > deadline
  Y ms`` (the decision came too late to be trusted by the ejector),
  ``inspection failed: <exception>`` (the worker logs it and goes on),
  ``paused`` (see below), ``shutdown`` (still queued when the line stopped), or
  the inspector's own reason (``alignment failed: ...``). Each is counted in
  `status().uninspected_by_reason` under its category.
- **Order**: a frame that overflows the queue is decided at once, so its
  verdict may reach the outputs before those of earlier frames still queued;
  every verdict carries its frame id and part id for the PLC to match.
- **Bounded memory**: the acquisition queue holds `queue_size` frames, each
  output and the records their own bounded queues, the image archive a few
  frames, and the event stream a ring of `events_capacity` small events of
  which only the newest `display_keep` keep (downsampled) display images.
  A consumer that lags loses display images first and then, past the ring,
  whole events (it is told how many); verdicts themselves are never dropped:
  the records and the outputs do not depend on any consumer.
- **Pause**: the camera keeps running and every paused part is recorded as
  UNINSPECTED ``paused`` and rejected: a part that was not inspected must not
  pass, and the records show exactly what was not inspected and when.
- **Threshold**: `set_threshold()` replaces the image threshold in memory
  (the bundle on disk is untouched), between two inspections, and writes an
  operator action to the audit log.
- **Bundle switch**: `switch_bundle()` loads and warms up the new inspector on
  the caller's thread while the line keeps inspecting with the old one, then
  swaps them between two frames; a failed load leaves the old one running.
  An operator threshold belongs to the model it was set for: the new bundle
  runs on its own calibrated threshold.
- **Stop**: the camera thread ends, the frame in inspection is finished (or,
  after `stop_timeout_s`, given UNINSPECTED ``shutdown``), every frame still
  queued gets UNINSPECTED ``shutdown``, the outputs send what they hold, the
  archive writes what it holds, the records commit everything; no thread is
  left.

Overhead: for every inspected frame the worker measures the time it spends
outside `inspector.inspect` (deadline checks, routing to outputs, archive
path reservation, records and events); `status()` reports it as
`overhead_ms_p50/p99` next to `inspect_ms_p50/p99`.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from appliance.archive import ImageArchive, render_heatmap
from appliance.errors import ConfigError, RecordsError
from drivers.camera.acquisition import AcquisitionWorker, Worker
from drivers.camera.base import Camera, Frame
from drivers.errors import ApplianceError
from drivers.io.base import Output
from drivers.verdict import Result, Verdict

if TYPE_CHECKING:
    from appliance.config import AppConfig, LineSettings
    from appliance.records import Records, Severity
    from calibration.capture import CaptureMonitor
    from pipelines.bundle import Bundle, Calibration

log = logging.getLogger(__name__)

REASON_QUEUE_FULL = "queue full"
REASON_LATE = "deadline missed before inspection"
REASON_PAUSED = "paused"
REASON_SHUTDOWN = "shutdown"
# Categories of UNINSPECTED that say the line cannot keep up or the model is failing.
_TROUBLE = ("queue full", "deadline missed before inspection", "inspection too slow", "inspection failed")
# An inspection alarm stays raised until this long without a new UNINSPECTED frame.
_INSPECTION_ALARM_HOLD_S = 10.0
_FPS_SPAN_S = 10.0


class LineError(ApplianceError):
    """The line cannot do what was asked (an unknown bundle, a bad threshold, a stopped line)."""


class FrameInspector(Protocol):
    """What the line needs from an inspector: `pipelines.inspector.Inspector` and test doubles."""

    @property
    def bundle(self) -> Bundle: ...

    @property
    def calibration(self) -> Calibration: ...

    def inspect(self, frame: Frame) -> Verdict: ...


InspectorFactory = Callable[[Path], FrameInspector]


def reason_key(reason: str) -> str:
    """The counter category of an UNINSPECTED reason (the reason without its numbers and details)."""
    if reason.startswith("inspection took"):
        return "inspection too slow"
    if reason.startswith("inspection failed"):
        return "inspection failed"
    return reason.split(":", 1)[0].strip() or "unknown"


def set_image_threshold(inspector: FrameInspector, value: float) -> float:
    """Replace the inspector's image threshold in memory (one assignment); returns the previous one."""
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise LineError(f"image threshold must be a positive number, got {value!r}")
    meta = inspector.bundle.meta
    previous = float(meta.calibration.image_threshold)
    meta.calibration = meta.calibration.model_copy(update={"image_threshold": float(value)})
    return previous


def bundle_identity(inspector: FrameInspector) -> tuple[str, str]:
    """(bundle id, bundle version) for the records."""
    meta = inspector.bundle.meta
    return meta.bundle_id, f"{meta.family}/{meta.family_version}"


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 4)


def _percentile(values: Sequence[float], q: float) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return round(float(np.percentile(finite, q)), 3) if finite else None


# --------------------------------------------------------------------------- events


@dataclasses.dataclass
class _Display:
    """Downsampled pixels and map of one frame, encoded for display only when a consumer asks."""

    pixels: np.ndarray
    anomaly_map: np.ndarray | None
    boxes: tuple[tuple[int, int, int, int], ...]
    encoded: dict[str, str] | None = None


def _decimate(array: np.ndarray, *, max_px: int) -> np.ndarray:
    """A small copy for display by striding (about 0.1 ms, cheap enough for the inspection thread)."""
    step = max(1, math.ceil(max(array.shape[:2]) / max_px))
    return np.ascontiguousarray(array[::step, ::step])


def _display_bgr(pixels: np.ndarray) -> np.ndarray:
    """8-bit BGR of a grey, RGB or RGBA frame, 8 or 16 bit."""
    import cv2

    px = pixels[..., 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels
    if px.dtype == np.uint16:
        px = (px >> 8).astype(np.uint8)
    if px.ndim == 2:
        return np.asarray(cv2.cvtColor(px, cv2.COLOR_GRAY2BGR))
    code = cv2.COLOR_RGBA2BGR if px.shape[2] == 4 else cv2.COLOR_RGB2BGR
    return np.asarray(cv2.cvtColor(px, code))


def _jpeg_b64(bgr: np.ndarray) -> str:
    import cv2

    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 80])
    if not ok:
        raise ValueError(f"display image {bgr.shape} could not be encoded")
    return base64.b64encode(buf.tobytes()).decode("ascii")


@dataclasses.dataclass
class LineEvent:
    """One event of the stream: `kind` "verdict", "alarm" or "state"; `data` is JSON-safe.

    `had_display`: display images were attached when it was published (they may
    have been released since, once newer events took their place)."""

    seq: int
    kind: str
    data: dict[str, Any]
    _display: _Display | None = dataclasses.field(default=None, repr=False)
    had_display: bool = False

    @property
    def has_display(self) -> bool:
        return self._display is not None

    def display_images(self) -> dict[str, str] | None:
        """{"image_jpeg_b64", "heatmap_jpeg_b64"?} for this event, encoded once and shared; None
        when it has none (never had, or dropped because consumers lagged)."""
        display = self._display
        if display is None:
            return None
        if display.encoded is None:
            encoded = {"image_jpeg_b64": _jpeg_b64(_display_bgr(display.pixels))}
            if display.anomaly_map is not None:
                overlay = render_heatmap(display.pixels, display.anomaly_map, defects=display.boxes)
                encoded["heatmap_jpeg_b64"] = _jpeg_b64(overlay)
            display.encoded = encoded
        return display.encoded


class EventHub:
    """A bounded ring of line events with any number of readers, each at its own cursor.

    `publish` never blocks and never waits for a reader. Only the newest
    `display_keep` events keep their display images; a reader further behind
    than the ring learns how many events it missed.
    """

    def __init__(self, *, capacity: int, display_keep: int) -> None:
        self.capacity = capacity
        self.display_keep = display_keep
        self._ring: collections.deque[LineEvent] = collections.deque(maxlen=capacity)
        self._cond = threading.Condition()
        self._seq = 0
        self._closed = False
        self._subscribers = 0
        self._display_released = 0

    @property
    def last_seq(self) -> int:
        """Sequence number of the newest event (0 before the first)."""
        with self._cond:
            return self._seq

    @property
    def subscribers(self) -> int:
        with self._cond:
            return self._subscribers

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    def subscribe(self) -> int:
        """Register a reader; returns the cursor from which it sees new events."""
        with self._cond:
            self._subscribers += 1
            return self._seq

    def unsubscribe(self) -> None:
        with self._cond:
            self._subscribers = max(0, self._subscribers - 1)

    def publish(self, kind: str, data: dict[str, Any], display: _Display | None = None) -> None:
        """Append an event; drops the display images of the event that leaves the display window."""
        with self._cond:
            if self._closed:
                return
            self._seq += 1
            self._ring.append(LineEvent(self._seq, kind, data, display, had_display=display is not None))
            if len(self._ring) > self.display_keep:
                old = self._ring[-self.display_keep - 1]
                if old._display is not None:
                    old._display = None
                    self._display_released += 1
            self._cond.notify_all()

    def read(
        self, cursor: int, *, timeout_s: float, max_events: int = 256
    ) -> tuple[list[LineEvent], int, int]:
        """Events after `cursor` (waiting up to `timeout_s` for one): (events, new cursor, missed)."""
        with self._cond:
            if self._seq <= cursor and not self._closed:
                self._cond.wait_for(lambda: self._seq > cursor or self._closed, timeout=timeout_s)
            if not self._ring:
                return [], max(cursor, self._seq), 0
            first = self._ring[0].seq
            missed = max(0, first - cursor - 1)
            start = max(0, cursor + 1 - first)
            events = list(itertools.islice(self._ring, start, start + max_events))
        new_cursor = events[-1].seq if events else max(cursor, first - 1)
        return events, new_cursor, missed

    def close(self) -> None:
        """Wake every reader; no more events are accepted."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {
                "published": self._seq,
                "kept": len(self._ring),
                "capacity": self.capacity,
                "subscribers": self._subscribers,
                "display_released": self._display_released,
            }


# --------------------------------------------------------------------------- status


@dataclasses.dataclass(frozen=True)
class Health:
    """Whether the line is really working, for the service watchdog."""

    ok: bool
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class LineStatus:
    """A snapshot of the line's counters and the state of its parts (see `to_dict`)."""

    state: str  # "created", "running", "paused", "ended", "stopping", "stopped"
    frames: int  # verdicts given (every acquired frame gets exactly one)
    acquired: int
    ok: int
    ng: int
    uninspected: int
    uninspected_by_reason: dict[str, int]
    latency_ms_p50: float | None
    latency_ms_p99: float | None
    inspect_ms_p50: float | None
    inspect_ms_p99: float | None
    overhead_ms_p50: float | None
    overhead_ms_p99: float | None
    queue_wait_ms_p50: float | None
    fps: float | None
    queue_depth: int
    queue_size: int
    max_queue_depth: int
    deadline_ms: float
    bundle_id: str
    image_threshold: float
    recipe: str
    truth: dict[str, int] | None
    camera: dict[str, Any]
    outputs: list[dict[str, Any]]
    records: dict[str, Any]
    archive: dict[str, Any] | None
    capture: dict[str, Any] | None  # the capture checks (focus, exposure, drift); None when off
    events: dict[str, int]
    alarms: list[str]
    worker_alive: bool
    worker_error: str  # the exception that ended the inspection worker (a bug); "" otherwise
    progress_age_s: float | None
    records_failed: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Window:
    """The last `size` values of a measurement."""

    def __init__(self, size: int) -> None:
        self.values: collections.deque[float] = collections.deque(maxlen=size)

    def add(self, value: float) -> None:
        self.values.append(value)


# --------------------------------------------------------------------------- the line


class _InspectionWorker(Worker):
    thread_name = "inspection"

    def __init__(self, line: Line) -> None:
        super().__init__()
        self._line = line

    def run_once(self) -> bool:
        return self._line._inspect_step()

    def _on_end(self) -> None:
        self._line._worker_ended()


class Line:
    """A running line: start(), status(), pause()/resume(), set_threshold(), switch_bundle(), stop().

    The line owns what it is given: `stop()` closes the outputs, the archive,
    the records and the camera. The camera must be open; `start()` starts it.
    """

    def __init__(
        self,
        *,
        camera: Camera,
        inspector: FrameInspector,
        records: Records,
        outputs: Sequence[Output] = (),
        archive: ImageArchive | None = None,
        deadline_ms: float,
        queue_size: int,
        settings: LineSettings | None = None,
        inspector_factory: InspectorFactory | None = None,
        capture: CaptureMonitor | None = None,
    ) -> None:
        from appliance.config import LineSettings

        if deadline_ms <= 0:
            raise LineError(f"deadline_ms must be positive, got {deadline_ms}")
        self.settings = settings or LineSettings()
        self.camera = camera
        self.outputs = list(outputs)
        self.records = records
        self.archive = archive
        self.deadline_ms = float(deadline_ms)
        self.inspector_factory = inspector_factory
        self.capture = capture
        self.events = EventHub(
            capacity=self.settings.events_capacity, display_keep=self.settings.display_keep
        )
        self._inspector = inspector
        self._bundle_id, self._bundle_version = bundle_identity(inspector)
        self._versions = {self._bundle_id: self._bundle_version}
        self._acq = AcquisitionWorker(
            camera,
            queue_size=queue_size,
            on_overflow=self._on_overflow,
            frame_timeout_s=self.settings.frame_timeout_s,
        )
        self._worker = _InspectionWorker(self)
        self._lock = threading.Lock()  # counters, state, the frame in flight
        self._inspect_lock = threading.Lock()  # held while inspecting: swaps happen between frames
        self._switch_lock = threading.Lock()  # one bundle load at a time
        self._state = "created"
        self._paused = False
        self._in_flight: Frame | None = None
        self._last_shape: tuple[tuple[int, ...], np.dtype[Any]] | None = None
        self._progress_s: float | None = None
        window = self.settings.stats_window
        self._latency = _Window(window)
        self._inspect_ms = _Window(window)
        self._overhead_ms = _Window(window)
        self._queue_wait_ms = _Window(window)
        self._decided_at: collections.deque[float] = collections.deque(maxlen=window)
        self._counts = collections.Counter[str]()
        self._reasons = collections.Counter[str]()
        self._truth = collections.Counter[str]()
        self._records_failed = 0
        self._failures_logged = 0
        self._verdict_no = 0
        self._alarms: dict[str, str] = {}
        self._next_alarm_poll_s = 0.0
        self._trouble_since_poll: set[str] = set()
        self._trouble_last_s = -math.inf
        self._camera_errors_seen = 0
        self._acquired_at_error = 0
        self.ended = threading.Event()  # the worker ended by itself (end of stream, camera failed)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Connect the outputs and start the inspection and acquisition threads."""
        with self._lock:
            if self._state != "created":
                raise LineError(f"the line was started already (state {self._state})")
            self._state = "running"
        try:
            for output in self.outputs:
                connected = output.connect()
                log.info(
                    "output %s: %s", output.name, "connected" if connected else "not connected yet, retrying"
                )
            self._progress_s = time.monotonic()
            self._worker.start()
            self._acq.start()
        except Exception:
            # stop() closes what was opened; the inspection worker must not outlive a failed start.
            self._worker.stop(timeout_s=self.settings.stop_timeout_s)
            with self._lock:
                self._state = "created"
            raise
        self._publish_state()
        log.info(
            "line running: bundle %s, threshold %.4g, deadline %.0f ms, queue %d",
            self._bundle_id,
            self.image_threshold,
            self.deadline_ms,
            self._acq.queue.maxsize,
        )

    def stop(self, *, timeout_s: float | None = None) -> LineStatus:
        """Stop gracefully (see the module docstring) and close every part; returns the final status."""
        wait_s = self.settings.stop_timeout_s if timeout_s is None else timeout_s
        with self._lock:
            if self._state in ("stopping", "stopped"):
                return self.status()
            started = self._state != "created"
            self._state = "stopping"
        self._publish_state()
        if started:
            # The frame in inspection is finished first; the camera keeps delivering meanwhile
            # and its frames get verdicts (queued ones below, overflowing ones at once).
            if not self._worker.stop(timeout_s=wait_s):
                log.error("inspection did not finish within %.1f s; its frame is UNINSPECTED", wait_s)
            self._acq.stop(timeout_s=wait_s)
            self._give_up_in_flight()
            self._drain(REASON_SHUTDOWN)
        for output in self.outputs:
            try:
                output.close(timeout_s=wait_s)
            except Exception:
                log.exception("output %s did not close cleanly", output.name)
        if self.archive is not None:
            self.archive.close(timeout_s=wait_s)
        self._close_records()
        try:
            self.camera.close()
        except Exception as exc:  # a camera that is gone cannot be closed; nothing is lost
            log.warning("camera close failed: %s", exc)
        self.events.close()
        with self._lock:
            self._state = "stopped"
        final = self.status()
        log.info(
            "line stopped: %d frames, %d OK, %d NG, %d UNINSPECTED %s",
            final.frames,
            final.ok,
            final.ng,
            final.uninspected,
            dict(final.uninspected_by_reason),
        )
        return final

    def _close_records(self) -> None:
        with self._lock:
            sources = list(self._alarms)
        for source in sources:
            self._clear_alarm(source)
        if not self.records.close():
            log.error("records writer did not finish within its close timeout; see the log for LOST records")

    def wait_ended(self, *, timeout_s: float) -> bool:
        """Wait until the worker has ended by itself (finite source over, camera failed)."""
        return self.ended.wait(timeout_s)

    def __enter__(self) -> Line:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ operator actions

    @property
    def paused(self) -> bool:
        with self._lock:
            return self._paused

    @property
    def image_threshold(self) -> float:
        return float(self._inspector.calibration.image_threshold)

    @property
    def bundle_id(self) -> str:
        return self._bundle_id

    def pause(self, *, user: str, role: str = "operator") -> None:
        """Stop inspecting: parts are recorded UNINSPECTED "paused" and rejected until resume()."""
        self._set_paused(True, user=user, role=role)

    def resume(self, *, user: str, role: str = "operator") -> None:
        """Inspect again from the next frame."""
        self._set_paused(False, user=user, role=role)

    def _set_paused(self, paused: bool, *, user: str, role: str) -> None:
        with self._lock:
            if self._state in ("stopping", "stopped"):
                raise LineError(f"the line is {self._state}; it cannot be paused or resumed")
            changed = self._paused != paused
            self._paused = paused
            if self._state in ("running", "paused"):
                self._state = "paused" if paused else "running"
        action = "pause" if paused else "resume"
        self._audit(user, role, action, {"changed": changed})
        log.info("line %s by %s (%s)", "paused" if paused else "resumed", user, role)
        self._publish_state()

    def set_threshold(self, image_threshold: float, *, user: str, role: str = "operator") -> float:
        """Set the image threshold in memory, between two frames; audit-logged. Returns the previous one."""
        with self._inspect_lock:
            previous = set_image_threshold(self._inspector, image_threshold)
        self._audit(
            user,
            role,
            "set_threshold",
            {"image_threshold": float(image_threshold), "previous": previous, "bundle_id": self._bundle_id},
        )
        log.info("image threshold %.4g -> %.4g by %s (%s)", previous, image_threshold, user, role)
        self._publish_state()
        return previous

    def switch_bundle(self, path: Path | str, *, user: str, role: str = "operator") -> str:
        """Load the bundle at `path` off the hot path, warm it up, swap it in between two frames.

        Returns the new bundle id; raises `LineError` (or the loader's error) and
        keeps the old inspector when the new one cannot be loaded.
        """
        if self.inspector_factory is None:
            raise LineError("this line was built without an inspector factory; it cannot switch bundles")
        path = Path(path)
        with self._switch_lock:
            started = time.monotonic()
            try:
                new = self.inspector_factory(path)
                self._warm_up(new)
            except Exception as exc:
                self._audit(user, role, "switch_bundle_failed", {"path": str(path), "error": str(exc)})
                if isinstance(exc, ApplianceError):
                    raise
                raise LineError(f"bundle {path} cannot be used: {type(exc).__name__}: {exc}") from exc
            new_id, new_version = bundle_identity(new)
            with self._inspect_lock:
                old_id = self._bundle_id
                self._inspector = new
                with self._lock:
                    self._bundle_id, self._bundle_version = new_id, new_version
                    self._versions[new_id] = new_version
        self._audit(
            user,
            role,
            "switch_bundle",
            {"path": str(path), "from": old_id, "to": new_id, "load_s": round(time.monotonic() - started, 3)},
        )
        log.info("bundle %s -> %s (%s) by %s (%s)", old_id, new_id, path, user, role)
        self._publish_state()
        return new_id

    def _warm_up(self, inspector: FrameInspector) -> None:
        """One inference on a blank frame of the line's frame size (or a small one before the first frame)."""
        if not self.settings.warmup:
            return
        shape = self._last_shape
        pixels = np.zeros(shape[0], shape[1]) if shape is not None else np.zeros((64, 64, 3), np.uint8)
        warm_up(inspector, pixels)

    def acknowledge_alarms(self, source: str | None = None, *, user: str, role: str = "operator") -> int:
        """Acknowledge every unacknowledged alarm of `source` (all sources when None) in the records,
        each audit-logged; an "alarm" event with severity "acknowledged" tells every station."""
        self.records.flush()
        done = 0
        for alarm in self.records.alarms(limit=1000):
            if alarm.acknowledged_at is None and source in (None, alarm.source):
                done += self.records.acknowledge_alarm(alarm.id, user=user, role=role)
        log.info("%d alarm(s) of %s acknowledged by %s (%s)", done, source or "every source", user, role)
        self.events.publish(
            "alarm", {"source": source or "*", "severity": "acknowledged", "message": "", "user": user}
        )
        return done

    def _audit(self, user: str, role: str, action: str, details: dict[str, Any]) -> None:
        try:
            self.records.record_action(user or "unknown", role or "operator", action, details)
        except RecordsError as exc:
            log.error("operator action %s by %s not recorded: %s", action, user, exc)

    # ------------------------------------------------------------------ the inspection worker

    def _inspect_step(self) -> bool:
        now = time.monotonic()
        self._progress_s = now
        if now >= self._next_alarm_poll_s:
            self._next_alarm_poll_s = now + 0.5
            self._poll_alarms(now)
        frame = self._acq.get(timeout_s=0.1)
        if frame is None:
            return not self._acq.drained
        t_got = time.monotonic()
        with self._lock:
            self._in_flight = frame
            paused = self._paused
        self._last_shape = (frame.pixels.shape, frame.pixels.dtype)
        waited_ms = (t_got - frame.timestamp_s) * 1000.0
        inspect_ms = math.nan
        capture_failed = ""
        if self.capture is not None and not paused:
            report = self.capture.observe(frame.pixels)
            if self.capture.rejects(report) and report is not None:
                capture_failed = "capture check failed: " + "; ".join(report.problems)
        if paused:
            verdict = self._uninspected(frame, REASON_PAUSED)
        elif waited_ms > self.deadline_ms:
            verdict = self._uninspected(frame, REASON_LATE)
        elif capture_failed:
            verdict = self._uninspected(frame, capture_failed)
        else:
            with self._inspect_lock:
                inspector = self._inspector
                t0 = time.monotonic()
                try:
                    verdict = inspector.inspect(frame)
                except Exception as exc:
                    verdict = self._uninspected(frame, f"inspection failed: {type(exc).__name__}: {exc}")
                    self._log_failure(frame, exc)
                inspect_ms = (time.monotonic() - t0) * 1000.0
            latency_ms = (time.monotonic() - frame.timestamp_s) * 1000.0
            if verdict.result is not Result.UNINSPECTED and latency_ms > self.deadline_ms:
                verdict = dataclasses.replace(
                    verdict,
                    result=Result.UNINSPECTED,
                    reason=f"inspection took {latency_ms:.0f} ms > deadline {self.deadline_ms:.0f} ms",
                )
            verdict = dataclasses.replace(
                verdict,
                latency_ms=latency_ms,
                truth=verdict.truth if verdict.truth is not None else frame.truth,
            )
        with self._lock:
            if self._in_flight is not frame:
                return True  # stop() gave up on this frame and has given it its verdict already
            self._in_flight = None
        self._queue_wait_ms.add(waited_ms)
        self._finish(frame, verdict, inspect_ms=inspect_ms, t_got=t_got)
        self._progress_s = time.monotonic()
        return True

    def _log_failure(self, frame: Frame, exc: BaseException) -> None:
        self._failures_logged += 1
        n = self._failures_logged
        if n <= 3 or n % 100 == 0:
            log.error(
                "inspection of frame %d failed (%d so far): %s: %s",
                frame.frame_id,
                n,
                type(exc).__name__,
                exc,
                exc_info=n == 1,
            )

    def _worker_ended(self) -> None:
        with self._lock:
            if self._state in ("running", "paused"):
                self._state = "ended"
        if not self._worker.stopping:
            reason = self._acq.status().end_reason or "ended"
            level = logging.INFO if reason == "end of stream" else logging.ERROR
            log.log(level, "inspection ended: camera %s", reason)
            self.ended.set()
            self._publish_state()

    def _on_overflow(self, frame: Frame, reason: str) -> None:
        """On the camera thread: a frame the queue could not take is decided at once."""
        self._finish(frame, self._uninspected(frame, reason), inspect_ms=math.nan, t_got=None)

    def _give_up_in_flight(self) -> None:
        with self._lock:
            frame, self._in_flight = self._in_flight, None
        if frame is not None:
            self._finish(frame, self._uninspected(frame, REASON_SHUTDOWN), inspect_ms=math.nan, t_got=None)

    def _drain(self, reason: str) -> int:
        n = 0
        while (frame := self._acq.get(timeout_s=0)) is not None:
            self._finish(frame, self._uninspected(frame, reason), inspect_ms=math.nan, t_got=None)
            n += 1
        if n:
            log.warning("%d queued frame(s) given UNINSPECTED %r", n, reason)
        return n

    def _uninspected(self, frame: Frame, reason: str) -> Verdict:
        return Verdict(
            frame_id=frame.frame_id,
            part_id=frame.part_id,
            timestamp_s=frame.timestamp_s,
            result=Result.UNINSPECTED,
            latency_ms=(time.monotonic() - frame.timestamp_s) * 1000.0,
            reason=reason,
            bundle_id=self._bundle_id,
            wall_time_s=frame.wall_time_s,
            truth=frame.truth,
        )

    def _finish(self, frame: Frame, verdict: Verdict, *, inspect_ms: float, t_got: float | None) -> None:
        """Route one verdict to the outputs, archive, records, counters and events (any thread)."""
        for output in self.outputs:
            try:
                output.publish(verdict)
            except Exception:  # publish() is documented never to raise; a bug must not cost the verdict
                log.exception("output %s refused verdict %d", output.name, verdict.frame_id)
        image_path = heatmap_path = None
        if self.archive is not None:
            saved = self.archive.save(verdict, frame.pixels, verdict.anomaly_map)
            if saved is not None:
                image_path, heatmap_path = saved
        bundle_id = verdict.bundle_id or self._bundle_id
        try:
            self.records.add_verdict(
                verdict,
                bundle_id=bundle_id,
                bundle_version=self._versions.get(bundle_id, ""),
                recipe=self.settings.recipe,
                image_path=image_path,
                heatmap_path=heatmap_path,
            )
            records_ok = True
        except RecordsError as exc:
            records_ok = False
            log.error("verdict of frame %d not recorded: %s", verdict.frame_id, exc)
        now = time.monotonic()
        with self._lock:
            self._verdict_no += 1
            number = self._verdict_no
            self._counts[verdict.result.value] += 1
            if not records_ok:
                self._records_failed += 1
            if verdict.result is Result.UNINSPECTED:
                key = reason_key(verdict.reason)
                self._reasons[key] += 1
                if key in _TROUBLE:
                    self._trouble_since_poll.add(key)
                    self._trouble_last_s = now
            truth = frame.truth
            if truth is not None and "defective" in truth:
                defective = bool(truth["defective"])
                self._truth["frames"] += 1
                if defective:
                    self._truth["defective"] += 1
                    if verdict.result is Result.OK:
                        self._truth["missed_defects"] += 1
                elif verdict.reject:
                    self._truth["false_rejects"] += 1
                    if verdict.result is Result.UNINSPECTED:
                        self._truth["false_rejects_uninspected"] += 1
            if t_got is not None:
                self._latency.add(verdict.latency_ms)
                self._decided_at.append(now)
                if math.isfinite(inspect_ms):
                    self._inspect_ms.add(inspect_ms)
                    self._overhead_ms.add((now - t_got) * 1000.0 - inspect_ms)
        self._publish_verdict(frame, verdict, number=number, inspect_ms=inspect_ms)

    def _publish_verdict(self, frame: Frame, verdict: Verdict, *, number: int, inspect_ms: float) -> None:
        truth = frame.truth or {}
        data: dict[str, Any] = {
            "frame_id": verdict.frame_id,
            "part_id": verdict.part_id,
            "verdict": verdict.result.value,
            "score": _finite(verdict.score),
            "reason": verdict.reason,
            "defects": [{**d.to_dict(), "peak_score": _finite(d.peak_score)} for d in verdict.defects[:32]],
            "latency_ms": _finite(verdict.latency_ms),
            "inspect_ms": _finite(inspect_ms),
            "wall_time_s": verdict.wall_time_s or frame.wall_time_s,
            "bundle_id": verdict.bundle_id or self._bundle_id,
            "frame_px": [int(frame.pixels.shape[1]), int(frame.pixels.shape[0])],
            "verdict_no": number,  # this verdict's place in status().frames, for exact client counters
            "truth_defective": bool(truth["defective"]) if "defective" in truth else None,
            "truth_defect": truth.get("defect"),
        }
        display = None
        every = self.settings.display_every_n
        wanted = verdict.result is Result.NG or (every > 0 and number % every == 0)
        if wanted and self.events.subscribers > 0:
            max_px = self.settings.display_max_px
            amap = verdict.anomaly_map
            step = max(1, math.ceil(max(frame.pixels.shape[:2]) / max_px))
            display = _Display(
                pixels=_decimate(frame.pixels, max_px=max_px),
                anomaly_map=None if amap is None else _decimate(amap, max_px=max_px),
                boxes=tuple(
                    (d.x // step, d.y // step, max(1, d.width // step), max(1, d.height // step))
                    for d in verdict.defects[:32]
                ),
            )
        self.events.publish("verdict", data, display)

    def _publish_state(self) -> None:
        with self._lock:
            state, paused = self._state, self._paused
        self.events.publish(
            "state",
            {
                "state": state,
                "paused": paused,
                "bundle_id": self._bundle_id,
                "image_threshold": self.image_threshold,
            },
        )

    # ------------------------------------------------------------------ alarms

    def _poll_alarms(self, now: float) -> None:
        """Turn the parts' states into alarms in the records (raised once, cleared when gone)."""
        wanted: dict[str, tuple[Severity, str]] = {}
        acq = self._acq.status()
        if acq.camera_errors > self._camera_errors_seen:
            self._camera_errors_seen = acq.camera_errors
            self._acquired_at_error = acq.acquired
        camera_trouble = acq.camera_state in ("reconnecting", "failed") or acq.end_reason == "camera failed"
        if camera_trouble or (acq.camera_errors and acq.acquired == self._acquired_at_error):
            wanted["camera"] = ("error", f"camera: {acq.last_error or acq.camera_state}")
        for output in self.outputs:
            alarm = output.status().alarm
            if alarm:
                wanted[f"output:{output.name}"] = ("error", alarm)
        if self.archive is not None:
            alarm = self.archive.status().alarm
            if alarm:
                wanted["archive"] = ("warning", alarm)
        capture_alarm = None if self.capture is None else self.capture.alarm
        if self.capture is not None and capture_alarm:
            severity: Severity = "error" if self.capture.settings.action == "reject" else "warning"
            wanted["capture"] = (severity, capture_alarm)
        with self._lock:
            recent = now - self._trouble_last_s < _INSPECTION_ALARM_HOLD_S
            if not recent:
                self._trouble_since_poll.clear()
            kinds = sorted(self._trouble_since_poll)
        if recent and kinds:
            wanted["inspection"] = ("warning", f"frames are UNINSPECTED and rejected: {', '.join(kinds)}")
        for source, (severity, message) in wanted.items():
            with self._lock:
                changed = self._alarms.get(source) != message
                self._alarms[source] = message
            if changed:
                log.warning("alarm %s: %s", source, message)
                try:
                    self.records.raise_alarm(source, severity=severity, message=message)
                except RecordsError as exc:
                    log.error("alarm %s not recorded: %s", source, exc)
                self.events.publish("alarm", {"source": source, "severity": severity, "message": message})
        with self._lock:
            gone = [s for s in self._alarms if s not in wanted]
        for source in gone:
            self._clear_alarm(source)

    def _clear_alarm(self, source: str) -> None:
        with self._lock:
            message = self._alarms.pop(source, None)
        if message is None:
            return
        log.info("alarm %s cleared", source)
        try:
            self.records.clear_alarm(source)
        except RecordsError as exc:
            log.error("alarm %s not cleared in the records: %s", source, exc)
        self.events.publish("alarm", {"source": source, "severity": "cleared", "message": ""})

    # ------------------------------------------------------------------ status and health

    def health(self, *, stall_s: float) -> Health:
        """Healthy: running, the inspection worker alive and making progress, the records writer alive."""
        with self._lock:
            state = self._state
        if state not in ("running", "paused"):
            return Health(False, f"line is {state}")
        if not self._worker.running:
            error = self._worker.error
            return Health(False, f"inspection worker stopped{f': {error}' if error else ''}")
        progress = self._progress_s
        if progress is not None and time.monotonic() - progress > stall_s:
            return Health(
                False, f"inspection worker made no progress for {time.monotonic() - progress:.1f} s"
            )
        if not self.records.status().running:
            return Health(False, "records writer stopped")
        acq = self._acq.status()
        if acq.ended and acq.end_reason not in ("", "stopped", "end of stream"):
            return Health(False, f"camera {acq.end_reason}")
        return Health(True)

    def status(self) -> LineStatus:
        """A consistent snapshot of the counters and the parts' states."""
        acq = self._acq.status()
        now = time.monotonic()
        with self._lock:
            counts = dict(self._counts)
            reasons = dict(self._reasons)
            truth = dict(self._truth) if self._truth else None
            decided = [t for t in self._decided_at if now - t <= _FPS_SPAN_S]
            latency = list(self._latency.values)
            inspect = list(self._inspect_ms.values)
            overhead = list(self._overhead_ms.values)
            waited = list(self._queue_wait_ms.values)
            state = self._state
            records_failed = self._records_failed
            alarms = list(self._alarms.values())
        fps = None
        if len(decided) >= 2 and decided[-1] > decided[0]:
            fps = round((len(decided) - 1) / (decided[-1] - decided[0]), 2)
        ok, ng, un = counts.get("OK", 0), counts.get("NG", 0), counts.get("UNINSPECTED", 0)
        rec = self.records.status()
        progress = self._progress_s
        return LineStatus(
            state=state,
            frames=ok + ng + un,
            acquired=acq.acquired,
            ok=ok,
            ng=ng,
            uninspected=un,
            uninspected_by_reason=reasons,
            latency_ms_p50=_percentile(latency, 50),
            latency_ms_p99=_percentile(latency, 99),
            inspect_ms_p50=_percentile(inspect, 50),
            inspect_ms_p99=_percentile(inspect, 99),
            overhead_ms_p50=_percentile(overhead, 50),
            overhead_ms_p99=_percentile(overhead, 99),
            queue_wait_ms_p50=_percentile(waited, 50),
            fps=fps,
            queue_depth=acq.queue_depth,
            queue_size=acq.queue_size,
            max_queue_depth=acq.max_queue_depth,
            deadline_ms=self.deadline_ms,
            bundle_id=self._bundle_id,
            image_threshold=self.image_threshold,
            recipe=self.settings.recipe,
            truth=truth,
            camera={
                "name": self.camera.name,
                "state": acq.camera_state,
                "acquired": acq.acquired,
                "overflowed": acq.overflowed,
                "timeouts": acq.timeouts,
                "errors": acq.camera_errors,
                "reconnects": acq.reconnects,
                "ended": acq.ended,
                "end_reason": acq.end_reason,
                "last_error": acq.last_error,
            },
            outputs=[{"name": o.name, **dataclasses.asdict(o.status())} for o in self.outputs],
            records={
                "path": rec.path,
                "running": rec.running,
                "queued": rec.queued,
                "written": rec.written + rec.written_sync,
                "lost": rec.lost,
                "write_errors": rec.write_errors,
                "last_error": rec.last_error,
            },
            archive=None if self.archive is None else dataclasses.asdict(self.archive.status()),
            capture=None if self.capture is None else self.capture.status(),
            events=self.events.stats(),
            alarms=alarms,
            worker_alive=self._worker.running,
            worker_error="" if self._worker.error is None else repr(self._worker.error),
            progress_age_s=None if progress is None else round(now - progress, 3),
            records_failed=records_failed,
        )


# --------------------------------------------------------------------------- building a line


def warm_up(inspector: FrameInspector, pixels: np.ndarray) -> None:
    """One inspection of `pixels` that is not recorded (first-call initialisation off the line)."""
    inspector.inspect(Frame(frame_id=-1, timestamp_s=time.monotonic(), pixels=pixels, part_id="warm-up"))


def inspector_factory_for(config: AppConfig) -> InspectorFactory:
    """A function that loads a bundle into an `Inspector` with the configured backend and threads,
    and the preprocessing (flat-field, undistortion, alignment, ROI) and pixel scale of `config`.

    The calibration files are read once, here, so a bad path fails at start-up."""
    from calibration.scale import PixelScale
    from pipelines.preprocess import Preprocessor

    inspection = config.inspection
    scale = PixelScale.from_settings(config.scale)
    preprocessor = Preprocessor.from_settings(
        flatfield=config.flatfield,
        template=config.template,
        roi=config.roi,
        scale=scale,
        undistort=config.scale.undistort,
    )

    def load(path: Path) -> FrameInspector:
        from pipelines.bundle import load_bundle
        from pipelines.inspector import Inspector

        inspector = Inspector(
            load_bundle(path),
            backend=inspection.backend,
            threads=inspection.threads,
            batch_size=inspection.batch_size,
            preprocessor=preprocessor,
            mode=inspection.mode,
        )
        inspector.mm_per_px = scale.mm_per_px if scale is not None else None
        verify_min_area_has_scale(inspector, path)
        return inspector

    return load


def verify_min_area_has_scale(inspector: FrameInspector, path: Path) -> None:
    """A minimum defect area in mm^2 needs a pixel scale to become pixels."""
    if inspector.calibration.min_defect_area_mm2 and getattr(inspector, "mm_per_px", None) is None:
        raise ConfigError(
            f"bundle {path} sets min_defect_area_mm2 but the config has no pixel scale: add a `scale:` "
            f"section (path from `aoi calibrate scale`, or mm_per_px)"
        )


def open_line(
    config: AppConfig,
    *,
    inspector_factory: InspectorFactory | None = None,
    camera: Camera | None = None,
    on_step: Callable[[str], object] | None = None,
) -> Line:
    """Open the records, archive, outputs, model and camera of `config` and build the (unstarted) line.

    `on_step` hears what is being opened (for STATUS= lines). Anything that
    fails closes what was opened before and raises its one-line error.
    """
    from appliance.records import Records
    from calibration.capture import CaptureMonitor
    from drivers.camera.registry import create_camera
    from drivers.io.registry import create_output

    def step(text: str) -> None:
        log.info("%s", text)
        if on_step is not None:
            on_step(text)

    closers: list[Callable[[], Any]] = []
    try:
        step("opening records")
        records = Records(config.records_settings())
        closers.append(records.close)
        archive = None
        if config.archive.enabled:
            archive = ImageArchive(config.archive_settings())
            closers.append(archive.close)
        outputs = [create_output(o) for o in config.outputs]
        for output in outputs:
            closers.append(output.close)
        capture = CaptureMonitor.from_settings(config.capture)
        step(f"loading model {config.inspection.bundle}")
        factory = inspector_factory or inspector_factory_for(config)
        inspector = factory(config.inspection.bundle)
        if config.inspection.image_threshold is not None:
            set_image_threshold(inspector, config.inspection.image_threshold)
        if config.line.warmup:
            warm_up(inspector, np.zeros((64, 64, 3), np.uint8))
        step(f"opening camera {config.camera.type}")
        cam = camera or create_camera(config.camera)
        cam.open()
        closers.append(cam.close)
        return Line(
            camera=cam,
            inspector=inspector,
            records=records,
            outputs=outputs,
            archive=archive,
            deadline_ms=config.inspection.deadline_ms,
            queue_size=config.inspection.queue_size,
            settings=config.line,
            inspector_factory=factory,
            capture=capture,
        )
    except BaseException:
        for close in reversed(closers):
            try:
                close()
            except Exception:
                log.exception("closing after a failed start")
        raise
