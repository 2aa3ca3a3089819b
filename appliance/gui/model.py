"""What the station shows, derived from the line's events and status (Qt-free).

`StationModel.apply(event)` folds one `StreamEvent` into the counters, the
last verdict, the score trend, the NG gallery, the alarms and the status
lights, and says which parts of the screen changed. The widgets only draw it.

Counters: every verdict event counts once. The line's own counters
(``GET /status``) are the truth after a connect or a gap: the model then
takes them, and adds the verdicts it had already counted that the status did
not include yet (by the verdict's number, `verdict_no`, which is its place in
the status's `frames`), so nothing is counted twice or lost.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from typing import Any

import numpy as np

from appliance.gui.stream import StreamEvent

LIGHTS = ("camera", "model", "plc", "records")
LIGHT_TITLES = {"camera": "Camera", "model": "Model", "plc": "PLC", "records": "Records"}


@dataclasses.dataclass
class Counters:
    """Verdicts of the shift (since the line started, or since `new_shift`)."""

    ok: int = 0
    ng: int = 0
    uninspected: int = 0

    @property
    def total(self) -> int:
        return self.ok + self.ng + self.uninspected

    @property
    def yield_pct(self) -> float | None:
        """Share of parts that passed (OK / all verdicts), in %; None before the first part."""
        return None if self.total == 0 else 100.0 * self.ok / self.total

    def add(self, verdict: str, n: int = 1) -> None:
        if verdict == "OK":
            self.ok += n
        elif verdict == "NG":
            self.ng += n
        else:
            self.uninspected += n

    def minus(self, other: Counters) -> Counters:
        return Counters(
            max(0, self.ok - other.ok),
            max(0, self.ng - other.ng),
            max(0, self.uninspected - other.uninspected),
        )


@dataclasses.dataclass
class Part:
    """One verdict with its display images (when it had them)."""

    data: dict[str, Any]
    image: np.ndarray | None = None
    overlay: np.ndarray | None = None

    @property
    def verdict(self) -> str:
        return str(self.data.get("verdict", "UNINSPECTED"))

    @property
    def title(self) -> str:
        return f"{self.data.get('part_id') or '#' + str(self.data.get('frame_id', '?'))}"


@dataclasses.dataclass
class AlarmEntry:
    source: str
    severity: str
    message: str
    raised_wall_s: float
    active: bool = True
    acknowledged: bool = False


@dataclasses.dataclass(frozen=True)
class Light:
    """One status light: `level` ok, warn, bad or unknown; `reason` shown on tap."""

    level: str
    text: str
    reason: str


def defect_label(defect: dict[str, Any]) -> str:
    """'2.4 x 1.1 mm' when the defect has a size in mm (a calibrated scale), else '24 x 11 px'."""
    w, h = int(defect.get("width", 0)), int(defect.get("height", 0))
    area_px, area_mm2 = defect.get("area_px") or 0, defect.get("area_mm2")
    if area_mm2 and area_px:
        mm_per_px = math.sqrt(float(area_mm2) / float(area_px))
        return f"{w * mm_per_px:.1f} x {h * mm_per_px:.1f} mm"
    return f"{w} x {h} px"


class StationModel:
    """The state of the station screen; `apply` returns the names of the parts that changed."""

    def __init__(self, *, gallery_size: int = 12, trend_points: int = 600) -> None:
        self.raw = Counters()  # since the line started
        self.baseline = Counters()  # at the start of the shift
        self.shift_started_wall_s = time.time()
        self.last: Part | None = None
        self.live: Part | None = None  # the newest part that had a display image
        self.full_res: Part | None = None  # the archived full-resolution image of the inspected part
        self.trend: collections.deque[tuple[int, float, str]] = collections.deque(maxlen=trend_points)
        self.gallery: collections.deque[Part] = collections.deque(maxlen=gallery_size)
        self.alarms: dict[str, AlarmEntry] = {}
        self.status: dict[str, Any] = {}
        self.connected = False
        self.link_reason = "connecting"
        self.ended = False
        self.messages: collections.deque[tuple[float, str, bool]] = collections.deque(maxlen=50)
        self.display_dropped = 0  # display images that never reached the screen
        self.verdicts_seen = 0
        self._resync = True
        self._synced_no = 0
        self._stream_first: int | None = None  # verdict_no of this stream's first verdict
        self._recent: collections.deque[tuple[int, str]] = collections.deque(
            maxlen=5000
        )  # (verdict_no, verdict)
        self._trend_no = 0

    # --------------------------------------------------------------- derived values

    @property
    def counters(self) -> Counters:
        return self.raw.minus(self.baseline)

    @property
    def counters_final(self) -> bool:
        """False while the counters wait for a status that covers this stream's start."""
        return not self._resync

    @property
    def state(self) -> str:
        if self.ended:
            return "stopped"
        if not self.connected:
            return "disconnected"
        if self.status.get("paused"):
            return "paused"
        return str(self.status.get("state", "running"))

    @property
    def threshold(self) -> float | None:
        value = self.status.get("image_threshold")
        return None if value is None else float(value)

    @property
    def banner_alarms(self) -> list[AlarmEntry]:
        """Alarms not acknowledged yet (still active or already cleared), newest first."""
        pending = [a for a in self.alarms.values() if not a.acknowledged]
        return sorted(pending, key=lambda a: a.raised_wall_s, reverse=True)

    def new_shift(self) -> None:
        """Counters start again from zero (the line's own totals go on)."""
        self.baseline = dataclasses.replace(self.raw)
        self.shift_started_wall_s = time.time()

    def lights(self) -> dict[str, Light]:
        """Camera, model, PLC and records lights from the last status."""
        s = self.status
        if not s or not self.connected:
            why = self.link_reason if not self.connected else "no status yet"
            return {name: Light("unknown", "?", why) for name in LIGHTS}
        cam = s.get("camera") or {}
        state = str(cam.get("state", "?"))
        cam_level = {"streaming": "ok", "open": "warn", "reconnecting": "warn"}.get(state, "bad")
        cam_reason = (
            f"{cam.get('name', 'camera')}: {state}; {cam.get('acquired', 0)} frames, "
            f"{cam.get('overflowed', 0)} queue overflows, {cam.get('errors', 0)} errors"
            + (f"; last error: {cam['last_error']}" if cam.get("last_error") else "")
            + (f"; ended: {cam['end_reason']}" if cam.get("ended") else "")
        )
        alarms = " ".join(str(a) for a in s.get("alarms") or [])
        model_level = "ok"
        model_reason = f"bundle {s.get('bundle_id', '?')}, threshold {s.get('image_threshold', '?')}"
        if s.get("inspect_ms_p50") is not None:
            model_reason += f", inspection p50 {s['inspect_ms_p50']:.0f} ms"
        if not s.get("worker_alive", True):
            model_level, model_reason = "bad", f"inspection stopped: {s.get('worker_error') or 'ended'}"
        elif "UNINSPECTED" in alarms:
            model_level, model_reason = "warn", alarms
        elif s.get("paused"):
            model_level, model_reason = "warn", "paused: every part is UNINSPECTED and rejected"
        outputs = s.get("outputs") or []
        if not outputs:
            plc = Light("unknown", "none", "no PLC output configured")
        else:
            bad = [o for o in outputs if o.get("alarm") or not o.get("connected")]
            reason = "; ".join(
                f"{o.get('name')}: {'connected' if o.get('connected') else 'NOT connected'}, "
                f"{o.get('delivered', 0)} delivered, {o.get('undelivered', 0)} undelivered"
                + (f", {o['alarm']}" if o.get("alarm") else "")
                for o in outputs
            )
            plc = Light("bad" if bad else "ok", "lost" if bad else "OK", reason)
        rec = s.get("records") or {}
        rec_bad = not rec.get("running", False) or rec.get("lost", 0)
        rec_warn = rec.get("write_errors", 0) or any(
            "disk" in str(a) or "archive" in str(a) for a in s.get("alarms") or []
        )
        rec_reason = (
            f"{rec.get('written', 0)} written, {rec.get('queued', 0)} queued, {rec.get('lost', 0)} lost, "
            f"{rec.get('write_errors', 0)} write errors"
            + (f"; last error: {rec['last_error']}" if rec.get("last_error") else "")
        )
        arch = s.get("archive") or {}
        if arch.get("alarm"):
            rec_reason += f"; archive: {arch['alarm']}"
        rec_level = "bad" if rec_bad else "warn" if rec_warn or arch.get("alarm") else "ok"
        words = {"ok": "OK", "warn": "CHECK", "bad": "FAULT", "unknown": "?"}
        return {
            "camera": Light(cam_level, words[cam_level], cam_reason),
            "model": Light(model_level, words[model_level], model_reason),
            "plc": plc,
            "records": Light(rec_level, words[rec_level], rec_reason),
        }

    # --------------------------------------------------------------- events

    def apply(self, event: StreamEvent) -> set[str]:
        handler = getattr(self, f"_on_{event.kind}", None)
        return set() if handler is None else handler(event)

    def _on_verdict(self, event: StreamEvent) -> set[str]:
        data = event.data
        verdict = str(data.get("verdict", "UNINSPECTED"))
        self.verdicts_seen += 1
        changed = {"verdict", "counters", "trend"}
        number = int(data.get("verdict_no") or 0)
        if number and self._stream_first is None:
            self._stream_first = number
        if not number or number > self._synced_no:
            self.raw.add(verdict)
            if number:
                self._recent.append((number, verdict))
        part = Part(data, event.image, event.overlay)
        self.last = part
        if event.display_dropped:
            self.display_dropped += 1
        if event.image is not None:
            self.live = part
            changed.add("live")
        if verdict == "NG" and event.image is not None:
            self.gallery.appendleft(part)
            changed.add("gallery")
        score = data.get("score")
        if isinstance(score, int | float) and math.isfinite(score):
            self._trend_no += 1
            self.trend.append((self._trend_no, float(score), verdict))
        return changed

    def _on_status(self, event: StreamEvent) -> set[str]:
        self.status = event.data
        changed = {"status", "lights", "stats"}
        if self._resync and all(k in event.data for k in ("ok", "ng", "uninspected")):
            d = event.data
            self.raw = Counters(int(d["ok"]), int(d["ng"]), int(d["uninspected"]))
            covered = self.raw.total  # verdicts 1..covered are in these counters
            for number, verdict in self._recent:
                if number > covered:
                    self.raw.add(verdict)
            # Final only when the status covers every event before this stream's first one (a status
            # taken before the stream began would miss those in between); until then provisional.
            if self._stream_first is not None and covered >= self._stream_first - 1:
                self._synced_no = max(self._synced_no, covered)
                self._resync = False
            changed.add("counters")
        # Alarms active on the line that this station has not heard raised (it attached later).
        active = {str(m) for m in event.data.get("alarms") or []}
        for key, alarm in list(self.alarms.items()):
            if key.startswith("line:") and alarm.message not in active:
                alarm.active = False
                if alarm.acknowledged:
                    del self.alarms[key]
        for message in event.data.get("alarms") or []:
            if not any(a.message == message and a.active for a in self.alarms.values()):
                source = f"line:{message[:40]}"
                self.alarms.setdefault(source, AlarmEntry(source, "warning", str(message), time.time()))
                changed.add("alarms")
        return changed

    def _on_gap(self, event: StreamEvent) -> set[str]:
        self._resync = True
        self.note(f"{event.data.get('missed', '?')} events missed; counters resync from the line")
        return {"messages"}

    def _on_alarm(self, event: StreamEvent) -> set[str]:
        d = event.data
        source, severity = str(d.get("source", "?")), str(d.get("severity", "warning"))
        if severity == "acknowledged":
            for alarm in list(self.alarms.values()):
                if source in ("*", alarm.source):
                    alarm.acknowledged = True
                    if not alarm.active:
                        del self.alarms[alarm.source]
        elif severity == "cleared":
            cleared = self.alarms.get(source)
            if cleared is not None:
                cleared.active = False
                if cleared.acknowledged:
                    del self.alarms[source]
        else:
            message = str(d.get("message", ""))
            # The status poll may have shown it first under a provisional name.
            for key in [k for k, a in self.alarms.items() if k.startswith("line:") and a.message == message]:
                del self.alarms[key]
            self.alarms[source] = AlarmEntry(source, severity, message, time.time())
        return {"alarms", "lights"}

    def _on_state(self, event: StreamEvent) -> set[str]:
        self.status = {**self.status, **event.data}
        if event.data.get("state") in ("stopping", "stopped"):
            self.ended = event.data.get("state") == "stopped"
        return {"status", "stats", "lights"}

    def _on_link(self, event: StreamEvent) -> set[str]:
        connected = bool(event.data.get("connected"))
        if connected and not self.connected:
            # A new stream (maybe from a restarted service, whose sequence began again): the next
            # status is the truth, plus what this stream delivers after it.
            self._resync = True
            self._recent.clear()
            self._synced_no = 0
            self._stream_first = None
        self.connected, self.link_reason = connected, str(event.data.get("reason", ""))
        if not connected:
            self.note(f"not connected: {self.link_reason}", error=True)
        return {"status", "lights", "stats"}

    def _on_end(self, event: StreamEvent) -> set[str]:
        self.ended = True
        self.note("the line stopped")
        return {"status", "stats", "lights"}

    def _on_full_resolution(self, event: StreamEvent) -> set[str]:
        reason = event.data.get("reason")
        if reason or event.image is None:
            self.note(f"full resolution: {reason or 'not available'}")
            return {"messages"}
        part = dict(event.data.get("part") or {})
        self.full_res = Part(part, event.image, event.overlay)
        return {"full_res"}

    def _on_action(self, event: StreamEvent) -> set[str]:
        d = event.data
        if d.get("ok"):
            self.note(f"{d.get('action')}: done")
        else:
            self.note(f"{d.get('action')} refused: {d.get('error')}", error=True)
        return {"messages"}

    def note(self, text: str, *, error: bool = False) -> None:
        self.messages.append((time.time(), text, error))
