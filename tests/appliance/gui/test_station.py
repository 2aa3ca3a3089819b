"""The operator station offscreen with real Qt widgets: verdict events drive the banner, counters,
trend and gallery; alarms stay until acknowledged (and the acknowledgement is recorded); the
engineer role refuses actions while locked; attach mode works against a real control endpoint."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from PySide6 import QtWidgets

from appliance.cli import main
from appliance.config import parse_config
from appliance.errors import ConfigError
from appliance.gui.pin import hash_pin, parse_pin_hash, verify_pin
from appliance.gui.settings import GuiSettings
from appliance.gui.stream import (
    Action,
    EventBuffer,
    HttpSource,
    LineSource,
    Source,
    StreamEvent,
    read_token,
)
from appliance.gui.window import StationWindow
from appliance.records import RecordsReader
from tests.appliance.doubles import wait_until
from tests.appliance.gui.conftest import PIN, PIN_HASH, TOKEN

pytestmark = pytest.mark.timeout(60)


class ScriptedSource(Source):
    """A source whose events the test puts into the station's buffer itself (no line behind it):
    its status is a fixed answer and its actions are only written down."""

    description = "scripted"

    def __init__(self, status: dict[str, Any] | None = None) -> None:
        super().__init__(status_interval_s=0.05)
        self.answer = status or {}
        self.performed: list[Action] = []

    def _read_events(self, buffer: EventBuffer, stop: threading.Event) -> None:
        buffer.put(StreamEvent("link", {"connected": True, "reason": "scripted"}))
        stop.wait()

    def status(self) -> dict[str, Any]:
        return dict(self.answer)

    def _perform(self, action: Action) -> dict[str, Any]:
        self.performed.append(action)
        return {}


def verdict(seq: int, result: str, *, score: float, image: bool = True, **extra: Any) -> StreamEvent:
    rgb = np.full((40, 30, 3), 90, np.uint8)
    data = {
        "frame_id": seq,
        "part_id": f"P{seq:06d}",
        "verdict": result,
        "score": score,
        "defects": extra.pop("defects", []),
        "latency_ms": 12.0,
        "frame_px": [60, 80],
        "seq": seq,
        "verdict_no": seq,
        **extra,
    }
    return StreamEvent("verdict", data, seq=seq, image=rgb if image else None, overlay=rgb if image else None)


def test_verdict_events_drive_banner_counters_trend_and_gallery(qtbot: Any, station_for: Callable) -> None:
    source = ScriptedSource()
    window: StationWindow = station_for(source)
    defect = {"x": 10, "y": 20, "width": 30, "height": 10, "area_px": 300, "area_mm2": 3.0, "peak_score": 1.7}
    events = [
        verdict(1, "OK", score=0.4),
        verdict(2, "NG", score=1.6, defects=[defect]),
        verdict(3, "OK", score=0.5, image=False),
        verdict(4, "UNINSPECTED", score=float("nan"), image=False, reason="queue full"),
        verdict(5, "NG", score=1.2),
    ]
    for event in events:
        window.buffer.put(event)
    qtbot.waitUntil(lambda: window.counters.value("total") == "5", timeout=5000)
    assert window.counters.value("ng") == "2"
    assert window.counters.value("uninspected") == "1"
    assert window.counters.value("yield") == "40.0 %"
    assert window.banner.text() == "\u2716 NG" and "P000005" in window.banner.detail.text()
    assert len(window.gallery.buttons) == 2 and window.gallery.buttons[0].text().startswith("NG P000005")
    assert len(window.model.trend) == 4  # the UNINSPECTED part has no score
    window.buffer.put(verdict(6, "UNINSPECTED", score=float("nan"), image=False, reason="paused"))
    qtbot.waitUntil(lambda: window.banner.text() == "? UNINSPECTED", timeout=5000)
    assert "paused" in window.banner.detail.text()
    # Tap the older NG part: the inspection screen shows its defect in mm.
    window.gallery.buttons[1].click()
    assert window.current_page() == "inspect"
    assert window.defect_table.rowCount() == 1
    cells = [window.defect_table.item(0, col) for col in range(4)]
    assert [c.text() if c is not None else None for c in cells[1:3]] == ["3.0 x 1.0 mm", "3.00 mm\u00b2"]
    window.show_page("main")
    # The gallery keeps the last `gallery_size` (5) NG parts.
    for seq in range(7, 15):
        window.buffer.put(verdict(seq, "NG", score=1.5))
    qtbot.waitUntil(lambda: window.counters.value("ng") == "10", timeout=5000)
    assert len(window.gallery.buttons) == 5 and len(window.model.gallery) == 5


def test_counters_resync_from_the_line_after_a_gap(qtbot: Any, station_for: Callable) -> None:
    status = {"ok": 90, "ng": 8, "uninspected": 2, "state": "running"}
    source = ScriptedSource(status)
    window: StationWindow = station_for(source)
    qtbot.waitUntil(lambda: window.counters.value("total") == "100", timeout=5000)
    window.buffer.put(verdict(100, "OK", score=0.3))  # already in the status: not counted twice
    qtbot.waitUntil(lambda: window.model.counters_final, timeout=5000)
    assert window.counters.value("total") == "100"
    window.buffer.put(verdict(101, "NG", score=1.3))
    qtbot.waitUntil(lambda: window.counters.value("total") == "101", timeout=5000)
    assert window.counters.value("ng") == "9"
    # New shift (an engineer function): the counters start from zero, the line's totals go on.
    assert not window.request_new_shift() and window.counters.value("total") == "101"
    assert window.unlock(PIN) and window.request_new_shift()
    assert window.counters.value("total") == "0" and window.counters.value("yield") == "\u2013"


def test_buffer_drops_display_frames_never_verdicts() -> None:
    buffer = EventBuffer(ng_keep=3)
    image = np.zeros((8, 8, 3), np.uint8)
    for seq in range(1, 101):
        result = "NG" if seq % 10 == 0 else "OK"
        buffer.put(StreamEvent("verdict", {"verdict": result}, seq=seq, image=image, overlay=image))
    for _ in range(5):
        buffer.put(StreamEvent("status", {"frames": 1}))
    events = buffer.take()
    verdicts = [e for e in events if e.kind == "verdict"]
    assert [e.seq for e in verdicts] == list(range(1, 101))
    assert sum(e.kind == "status" for e in events) == 1
    with_images = [e.seq for e in verdicts if e.image is not None]
    assert with_images == [80, 90, 99, 100]  # the newest OK image and the last 3 NG images
    assert buffer.display_dropped == 96 and all(e.display_dropped for e in verdicts if e.image is None)


def test_alarm_banner_stays_until_acknowledged_and_is_recorded(
    qtbot: Any, station_for: Callable, line_factory: Callable, tmp_path: Path
) -> None:
    # An inspection slower than the deadline: frames become UNINSPECTED and the line raises an alarm.
    line = line_factory(rate_hz=20.0, delay_s=0.06, deadline_ms=30.0)
    window: StationWindow = station_for(LineSource(line, status_interval_s=0.2))
    qtbot.waitUntil(lambda: not window.alarm_banner.isHidden(), timeout=10_000)
    assert "inspection" in window.alarm_banner.label.text()
    assert window.model.banner_alarms[0].active
    qtbot.waitUntil(lambda: window.lights.lights["model"].level == "warn", timeout=5000)
    window.lights.buttons["model"].click()
    assert "UNINSPECTED" in window.lights.reason.text()
    # Nothing acknowledges it but a person: the banner is still there a while later.
    qtbot.wait(600)
    assert not window.alarm_banner.isHidden()
    window.alarm_banner.button.click()
    qtbot.waitUntil(lambda: window.alarm_banner.isHidden(), timeout=10_000)
    line.records.flush()
    reader = RecordsReader(tmp_path / "records.sqlite3")
    alarm = next(a for a in reader.alarms() if a.source == "inspection")
    assert alarm.acknowledged_by == "bench-1" and alarm.acknowledged_at is not None
    acks = [a for a in reader.actions() if a.action == "acknowledge_alarm"]
    assert acks and acks[0].user == "bench-1" and acks[0].role == "operator"
    assert acks[0].details["source"] == "inspection"


def test_locked_role_refuses_threshold_change(
    qtbot: Any, station_for: Callable, line_factory: Callable, tmp_path: Path
) -> None:
    line = line_factory()
    window: StationWindow = station_for(LineSource(line, status_interval_s=0.2))
    window.show_page("engineer")
    assert not window.threshold_button.isEnabled() and window.pin_pad.isVisibleTo(window)
    assert not window.request_threshold(2.0)
    assert "refused" in window.message_label.text() and "locked" in window.message_label.text()
    for key in "1111":
        window.pin_pad.press(key)
    window.pin_pad.press("OK")
    assert not window.engineer and window.message_label.text() == "wrong PIN"
    qtbot.wait(300)
    assert line.image_threshold == 1.0
    line.records.flush()
    assert [a.action for a in RecordsReader(tmp_path / "records.sqlite3").actions()] == []
    # With the PIN the same change goes through and is audit-logged as the engineer.
    for key in PIN:
        window.pin_pad.press(key)
    window.pin_pad.press("OK")
    assert window.engineer and window.threshold_button.isEnabled()
    window.threshold_spin.setValue(2.0)
    window.threshold_button.click()
    wait_until(lambda: line.image_threshold == 2.0, timeout_s=5, what="the new threshold")
    qtbot.waitUntil(lambda: window.model.threshold == 2.0, timeout=5000)
    assert "threshold 2" in window.line_label.text()
    window.lock()
    assert not window.threshold_button.isEnabled() and not window.toggle_pause()
    line.records.flush()
    actions = RecordsReader(tmp_path / "records.sqlite3").actions()
    assert [(a.action, a.user, a.role) for a in actions] == [("set_threshold", "bench-1", "engineer")]


def test_attach_mode_over_the_control_endpoint(
    qtbot: Any, station_for: Callable, line_factory: Callable, control_for: Callable, tmp_path: Path
) -> None:
    line = line_factory(parts=40, rate_hz=40.0)
    control = control_for(line)
    source = HttpSource(control.url, token=TOKEN, status_interval_s=0.2)
    window: StationWindow = station_for(source)
    qtbot.waitUntil(lambda: window.frame_view.part is not None, timeout=10_000)
    assert window.frame_view.image.image is not None and window.frame_view.overlay.image is not None
    assert line.wait_ended(timeout_s=20)
    final = line.status()
    # Counters agree with the line's whatever the station missed before it attached.
    try:
        qtbot.waitUntil(lambda: window.counters.value("total") == str(final.frames), timeout=10_000)
    except Exception:
        m = window.model
        raise AssertionError(f"station counted {m.raw}, the line {final.frames} verdicts") from None
    assert window.counters.value("ng") == str(final.ng)
    assert window.lights.lights["camera"].level != "unknown"
    assert window.unlock(PIN)
    window.toggle_pause()
    qtbot.waitUntil(lambda: "pause: done" in window.message_label.text(), timeout=5000)
    line.records.flush()
    actions = RecordsReader(tmp_path / "records.sqlite3").actions()
    assert [(a.action, a.user, a.role) for a in actions] == [("pause", "bench-1", "engineer")]
    # Acknowledging over HTTP reaches the line (nothing to acknowledge here) ...
    assert source.submit(Action("acknowledge", "bench-1", "operator", None))
    qtbot.waitUntil(lambda: "acknowledge: done" in window.message_label.text(), timeout=5000)
    # ... and a bad source is refused with the endpoint's reason.
    assert source.submit(Action("acknowledge", "bench-1", "operator", 7))
    qtbot.waitUntil(lambda: "must name an alarm source" in window.message_label.text(), timeout=5000)
    # A wrong token is a clear message, not a crash.
    bad = HttpSource(control.url, token="wrong-token-wrong-token", status_interval_s=0.2)
    other: StationWindow = station_for(bad)
    qtbot.waitUntil(lambda: "refused the token" in other.message_label.text(), timeout=5000)
    assert other.model.state == "disconnected"


@pytest.mark.parametrize("size", [(1280, 800), (1920, 1080)])
def test_touch_targets_and_layout_at_both_sizes(
    qtbot: Any, station_for: Callable, size: tuple[int, int]
) -> None:
    window: StationWindow = station_for(ScriptedSource(), GuiSettings(width_px=size[0], height_px=size[1]))
    window.show()
    qtbot.waitExposed(window)
    window.buffer.put(verdict(1, "NG", score=1.4))
    qtbot.waitUntil(lambda: window.banner.text() == "\u2716 NG", timeout=5000)
    assert (window.width(), window.height()) == size
    for page in ("main", "engineer"):
        window.show_page(page)
        QtWidgets.QApplication.processEvents()
        buttons = [b for b in window.findChildren(QtWidgets.QAbstractButton) if b.isVisible()]
        assert buttons
        small = [(b.text(), b.height()) for b in buttons if b.height() < 48 or b.width() < 48]
        assert small == []
    # The verdict is large: letters of about a tenth of the screen height.
    assert window.banner.verdict.fontMetrics().height() >= size[1] // 8


def test_pin_hash_round_trip_and_bad_config() -> None:
    assert verify_pin(PIN, PIN_HASH) and not verify_pin("1357", PIN_HASH)
    assert not verify_pin(PIN, None)
    assert hash_pin(PIN) != PIN_HASH  # salted
    assert PIN not in PIN_HASH and parse_pin_hash(PIN_HASH)[0] >= 2**14
    with pytest.raises(ValueError, match="4 or more digits"):
        hash_pin("12a")
    with pytest.raises(ValidationError, match="scrypt"):
        GuiSettings(engineer_pin_hash="plain-text-pin")
    camera = {"type": "synthetic"}
    with pytest.raises(ConfigError, match=r"gui\.kiosk"):
        parse_config({"camera": camera, "inspection": {"bundle": "b"}, "gui": {"kiosk": "sometimes"}})
    with pytest.raises(ConfigError, match=r"gui\.pin: unknown key"):
        parse_config({"camera": camera, "inspection": {"bundle": "b"}, "gui": {"pin": "1234"}})


def test_cli_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["gui"]) == 2
    assert "--attach" in capsys.readouterr().err
    monkeypatch.delenv("AOI_CONTROL_TOKEN", raising=False)
    assert main(["gui", "--attach", "http://127.0.0.1:9", "--token-file", str(tmp_path / "none")]) == 2
    assert "control token file" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="http://HOST:PORT"):
        HttpSource("ftp://x", token=TOKEN)
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(ConfigError, match="fewer than 16"):
        read_token(token=None, token_file=tmp_path / "short")
    monkeypatch.setattr("sys.stdin", _Stdin("2468\n"))
    assert main(["gui", "--hash-pin"]) == 0
    printed = capsys.readouterr().out.strip()
    assert verify_pin("2468", printed)


class _Stdin:
    def __init__(self, text: str) -> None:
        self.text = text

    def isatty(self) -> bool:
        return False

    def readline(self) -> str:
        return self.text


def test_counters_follow_a_restarted_service_and_idle_engineer_locks(
    qtbot: Any, station_for: Callable
) -> None:
    source = ScriptedSource({"ok": 40, "ng": 5, "uninspected": 5})
    window: StationWindow = station_for(
        source, GuiSettings(engineer_pin_hash=PIN_HASH, engineer_timeout_s=0.3)
    )
    qtbot.waitUntil(lambda: window.counters.value("total") == "50", timeout=5000)
    # The service restarts: the stream drops, comes back, and the sequence begins again.
    source.answer = {"ok": 2, "ng": 1, "uninspected": 0}
    window.buffer.put(StreamEvent("link", {"connected": False, "reason": "connection refused"}))
    window.buffer.put(StreamEvent("link", {"connected": True, "reason": "scripted"}))
    window.buffer.put(verdict(4, "NG", score=1.4, image=False))
    qtbot.waitUntil(lambda: window.counters.value("total") == "4", timeout=5000)
    assert window.counters.value("ng") == "2"
    assert window.unlock(PIN) and window.engineer
    qtbot.waitUntil(lambda: not window.engineer, timeout=5000)
    assert not window.threshold_button.isEnabled() and window.current_page() == "main"


def test_inspection_view_loads_the_full_resolution_frame(
    qtbot: Any, station_for: Callable, line_factory: Callable
) -> None:
    line = line_factory(rate_hz=40.0)
    window: StationWindow = station_for(LineSource(line, status_interval_s=0.2))
    qtbot.waitUntil(lambda: len(window.model.gallery) >= 1, timeout=10_000)
    assert window.model.gallery[0].image is not None and window.model.gallery[0].image.shape[:2] == (32, 24)
    assert window.inspect(0) and window.current_page() == "inspect"
    try:
        qtbot.waitUntil(lambda: "full resolution 96x128" in window.inspect_resolution.text(), timeout=10_000)
    except Exception:
        raise AssertionError(f"not loaded: {list(window.model.messages)}") from None
    view = window.inspect_view
    assert view.part is not None and view.part.image is not None and view.part.image.shape == (128, 96, 3)
    assert view.overlay.isVisible() and view.part.overlay is not None
    # Boxes are drawn in full-resolution pixels now: the defect's box covers its mask's bounding box.
    defect = view.part.data["defects"][0]
    rect = view._box_items[0].rect()  # type: ignore[attr-defined]
    assert (rect.x(), rect.width()) == (defect["x"], defect["width"])


def test_station_survives_thousands_of_redraws(qtbot: Any, station_for: Callable) -> None:
    """PySide6 6.12 on CPython 3.11 drops a reference to None or True per Qt call and aborts the
    interpreter ('none_dealloc') long before the end (setup.cfg excludes it): None's count must hold."""
    none_before = sys.getrefcount(None)
    window: StationWindow = station_for(ScriptedSource())
    window.show()
    app = QtWidgets.QApplication.instance()
    assert app is not None
    for seq in range(1, 601):
        window.buffer.put(verdict(seq, "NG" if seq % 7 == 0 else "OK", score=1.2 if seq % 7 == 0 else 0.4))
        app.processEvents()
    qtbot.waitUntil(lambda: window.counters.value("total") == "600", timeout=10_000)
    assert window.drains >= 400 and window.frame_view.shown >= 400
    assert sys.getrefcount(None) >= none_before - 50 or sys.version_info >= (3, 12)
