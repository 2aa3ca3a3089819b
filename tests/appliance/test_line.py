"""The line runner: one verdict per frame, counters, pause/resume, threshold, bundle switch, stop, events."""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest

from appliance.archive import ArchiveSettings, ImageArchive
from appliance.config import LineSettings, parse_config
from appliance.errors import ConfigError
from appliance.line import EventHub, Line, LineError, _Display, open_line, reason_key
from appliance.records import Records, RecordsReader, RecordsSettings
from calibration.capture import CaptureMonitor, CaptureSettings
from calibration.errors import CalibrationError
from drivers.camera.synthetic import SyntheticCamera
from drivers.io.log import LogOutput, LogOutputSettings
from drivers.verdict import Result
from pipelines.bundle import load_bundle, update_meta
from pipelines.errors import BundleError
from pipelines.inspector import Inspector
from tests.appliance.doubles import ThresholdInspectorForTests, synthetic_camera, wait_until


def camera(*, parts: int | None, rate_hz: float | None = 200.0) -> SyntheticCamera:
    cam = synthetic_camera(parts=parts, rate_hz=rate_hz)
    cam.open()
    return cam


def build_line(
    tmp_path: Path,
    inspector: ThresholdInspectorForTests,
    *,
    parts: int | None = 40,
    rate_hz: float | None = 200.0,
    queue_size: int = 4,
    deadline_ms: float = 5000.0,
    outputs: Iterable[LogOutput] = (),
    factory: Callable[[Path], ThresholdInspectorForTests] | None = None,
) -> Line:
    records = Records(RecordsSettings(path=tmp_path / "records.sqlite3", flush_interval_ms=10))
    archive = ImageArchive(ArchiveSettings(directory=tmp_path / "images", min_free_mb=0, quota_mb=0))
    return Line(
        camera=camera(parts=parts, rate_hz=rate_hz),
        inspector=inspector,
        records=records,
        outputs=list(outputs),
        archive=archive,
        deadline_ms=deadline_ms,
        queue_size=queue_size,
        settings=LineSettings(stop_timeout_s=5.0, display_every_n=5),
        inspector_factory=factory,
    )


def recorded(tmp_path: Path) -> list[tuple[int, str, str]]:
    rows = RecordsReader(tmp_path / "records.sqlite3").iter_verdicts()
    return sorted((r.frame_id, r.verdict, r.reason) for r in rows)


def test_every_frame_gets_exactly_one_verdict(tmp_path: Path) -> None:
    output = LogOutput(
        LogOutputSettings(pulse_ms=1, pulse_gap_ms=1, heartbeat_period_ms=0, max_age_ms=60_000)
    )
    line = build_line(tmp_path, ThresholdInspectorForTests(), parts=40, outputs=[output])
    line.start()
    assert line.wait_ended(timeout_s=30)
    final = line.stop()
    rows = recorded(tmp_path)
    assert [r[0] for r in rows] == list(range(40))
    assert final.frames == final.acquired == 40
    assert final.ok + final.ng + final.uninspected == 40
    assert sum(final.uninspected_by_reason.values()) == final.uninspected
    # The test double knows the truth, so nothing inspected is missed or falsely rejected.
    truth = final.truth or {}
    assert truth["frames"] == 40 and truth.get("missed_defects", 0) == 0
    assert truth.get("false_rejects", 0) == truth.get("false_rejects_uninspected", 0)
    out = final.outputs[0]
    assert out["delivered"] + out["undelivered"] == 40
    ng_rows = RecordsReader(tmp_path / "records.sqlite3").query_verdicts(result=Result.NG, limit=None)
    archived = [r for r in ng_rows if r.image_path]
    assert archived and all(Path(r.image_path).is_file() for r in archived)
    # An NG frame goes unarchived only when the writer was busy (a loaded machine), and is counted.
    assert final.archive is not None and len(ng_rows) - len(archived) <= final.archive["skipped_overload"]
    assert final.state == "stopped" and not final.worker_alive
    assert final.latency_ms_p50 is not None and final.overhead_ms_p50 is not None


def test_line_from_config_with_the_real_inspector(tmp_path: Path, tiny_bundle: Path) -> None:
    config = parse_config(
        {
            "camera": {
                "type": "synthetic",
                "product": "print",
                "width_px": 64,
                "height_px": 64,
                "frame_rate_hz": 20,
                "parts": 12,
                "seed": 3,
            },
            "inspection": {
                "bundle": str(tiny_bundle),
                "backend": "torch",
                "threads": 1,
                "deadline_ms": 5000,
                "image_threshold": 0.5,
            },
            "outputs": [{"type": "log", "pulse_ms": 2, "pulse_gap_ms": 1}],
            "data_dir": str(tmp_path / "var"),
            "archive": {"min_free_mb": 0},
            "control": {"enabled": False},
        }
    )
    line = open_line(config)
    assert line.image_threshold == 0.5
    line.start()
    assert line.wait_ended(timeout_s=60)
    final = line.stop()
    path = tmp_path / "var" / "records" / "aoi-records.sqlite3"
    ids = sorted(r.frame_id for r in RecordsReader(path).iter_verdicts())
    assert ids == list(range(12)) and final.frames == 12
    assert final.inspect_ms_p50 is not None and final.overhead_ms_p50 is not None
    # The line's own work per frame is small next to the model's.
    assert final.overhead_ms_p50 < max(20.0, final.inspect_ms_p50)
    assert final.bundle_id.startswith("patchcore-")


def test_pause_and_resume_are_recorded_and_audited(tmp_path: Path) -> None:
    line = build_line(tmp_path, ThresholdInspectorForTests(), parts=None, rate_hz=100.0)
    line.start()
    try:
        wait_until(lambda: line.status().frames >= 5, timeout_s=10, what="first verdicts")
        line.pause(user="alice")
        assert line.paused and line.status().state == "paused"
        before = line.status().uninspected_by_reason.get("paused", 0)
        wait_until(
            lambda: line.status().uninspected_by_reason.get("paused", 0) >= before + 5,
            timeout_s=10,
            what="paused",
        )
        line.resume(user="alice")
        resumed_at = line.status().frames
        wait_until(lambda: line.status().frames >= resumed_at + 5, timeout_s=10, what="frames after resume")
    finally:
        final = line.stop()
    rows = recorded(tmp_path)
    assert len(rows) == final.frames == final.acquired
    paused = [r for r in rows if r[2] == "paused"]
    assert paused and all(r[1] == "UNINSPECTED" for r in paused)
    actions = RecordsReader(tmp_path / "records.sqlite3").actions()
    assert [(a.action, a.user) for a in reversed(actions)] == [("pause", "alice"), ("resume", "alice")]


def test_threshold_change_takes_effect_and_is_audited(tmp_path: Path) -> None:
    inspector = ThresholdInspectorForTests(image_threshold=1.0)
    line = build_line(tmp_path, inspector, parts=None, rate_hz=100.0)
    line.start()
    try:
        wait_until(lambda: line.status().ng >= 1, timeout_s=20, what="a first NG")
        previous = line.set_threshold(2.0, user="bob", role="engineer")
        assert previous == 1.0 and line.image_threshold == 2.0
        ng_then = line.status().ng
        frames_then = line.status().frames
        wait_until(lambda: line.status().frames >= frames_then + 30, timeout_s=10, what="frames after change")
        # At most the frame in flight during the change may still be NG.
        assert line.status().ng <= ng_then + 1
        for bad in (-1.0, math.nan, 0.0):
            with pytest.raises(LineError):
                line.set_threshold(bad, user="bob")
    finally:
        line.stop()
    action = RecordsReader(tmp_path / "records.sqlite3").actions()[0]
    assert action.action == "set_threshold" and action.user == "bob" and action.role == "engineer"
    assert action.details["image_threshold"] == 2.0 and action.details["previous"] == 1.0
    assert inspector.bundle.path == Path("threshold-double")  # in memory only: nothing written


def test_switch_bundle_swaps_between_frames_and_keeps_the_old_on_failure(tmp_path: Path) -> None:
    def factory(path: Path) -> ThresholdInspectorForTests:
        if path.name == "missing":
            raise BundleError(f"bundle {path} does not exist")
        return ThresholdInspectorForTests(name=path.name)

    line = build_line(
        tmp_path, ThresholdInspectorForTests(name="first"), parts=None, rate_hz=100.0, factory=factory
    )
    line.start()
    try:
        wait_until(lambda: line.status().frames >= 3, timeout_s=10, what="first verdicts")
        with pytest.raises(BundleError):
            line.switch_bundle(tmp_path / "missing", user="carol")
        assert line.bundle_id.startswith("first-")
        new_id = line.switch_bundle(tmp_path / "second", user="carol")
        assert new_id.startswith("second-") and line.status().bundle_id == new_id
        at_switch = line.status().frames
        wait_until(lambda: line.status().frames >= at_switch + 3, timeout_s=10, what="frames after switch")
    finally:
        line.stop()
    reader = RecordsReader(tmp_path / "records.sqlite3")
    ids = {r.bundle_id.split("-")[0] for r in reader.iter_verdicts()}
    assert ids == {"first", "second"}
    actions = [a.action for a in reversed(reader.actions())]
    assert actions == ["switch_bundle_failed", "switch_bundle"]


def test_stop_gives_queued_frames_a_shutdown_verdict(tmp_path: Path) -> None:
    line = build_line(
        tmp_path, ThresholdInspectorForTests(delay_s=0.15), parts=None, rate_hz=100.0, queue_size=3
    )
    line.start()
    wait_until(lambda: line.status().queue_depth >= 3, timeout_s=10, what="a full queue")
    final = line.stop()
    rows = recorded(tmp_path)
    assert [r[0] for r in rows] == list(range(final.acquired))
    reasons = final.uninspected_by_reason
    assert reasons.get("shutdown", 0) >= 1 and reasons.get("queue full", 0) >= 1
    assert final.max_queue_depth <= 3


def test_event_hub_is_bounded_and_tells_lagging_readers() -> None:
    hub = EventHub(capacity=16, display_keep=2)
    cursor = hub.subscribe()
    pixels = np.zeros((8, 8, 3), np.uint8)
    for i in range(40):
        hub.publish("verdict", {"frame_id": i}, _Display(pixels=pixels, anomaly_map=None, boxes=()))
    events, cursor, missed = hub.read(cursor, timeout_s=0)
    assert missed == 24 and len(events) == 16 and events[-1].data["frame_id"] == 39
    assert [e.has_display for e in events] == [False] * 14 + [True, True]
    images = events[-1].display_images()
    assert images is not None and set(images) == {"image_jpeg_b64"}
    started = time.monotonic()
    assert hub.read(cursor, timeout_s=0.05) == ([], cursor, 0)
    assert time.monotonic() - started >= 0.04
    hub.close()
    hub.unsubscribe()
    assert hub.stats()["kept"] == 16 and hub.stats()["subscribers"] == 0


def test_reason_categories() -> None:
    assert reason_key("inspection took 812 ms > deadline 500 ms") == "inspection too slow"
    assert reason_key("inspection failed: RuntimeError: boom") == "inspection failed"
    assert reason_key("alignment failed: residual 3.2 px") == "alignment failed"
    assert reason_key("queue full") == "queue full"


def _capture_monitor(action: str) -> CaptureMonitor:
    """Capture checks that every synthetic print fails: its paper is far above a 5% saturation level."""
    settings = CaptureSettings(
        enabled=True,
        saturation_level=0.05,
        dark_level=0.0,
        max_saturated_fraction=0.0,
        focus_grid=1,
        focus_tile_px=32,
        alarm_after_frames=2,
        action=action,
    )
    return CaptureMonitor(settings)


@pytest.mark.parametrize("action", ["alarm", "reject"])
def test_capture_checks_raise_a_line_alarm_and_reject_only_when_told(tmp_path: Path, action: str) -> None:
    line = build_line(tmp_path, ThresholdInspectorForTests(), parts=None, rate_hz=50.0)
    line.capture = _capture_monitor(action)
    line.start()
    wait_until(lambda: any(a.startswith("capture") for a in line.status().alarms), timeout_s=10, what="alarm")
    status = line.status()
    final = line.stop()
    assert status.capture is not None and status.capture["failed"] >= 2
    assert "overexposed" in status.capture["last"]["problems"][0]
    reasons = {r[2] for r in recorded(tmp_path) if r[1] == "UNINSPECTED"} - {"shutdown"}
    if action == "reject":
        assert final.ok == final.ng == 0 and final.uninspected_by_reason.get("capture check failed", 0) >= 2
        assert reasons and all(r.startswith("capture check failed: overexposed") for r in reasons)
    else:
        assert final.ok + final.ng >= 2 and "capture check failed" not in final.uninspected_by_reason
    alarms = [a for a in RecordsReader(tmp_path / "records.sqlite3").alarms() if a.source == "capture"]
    assert len(alarms) == 1 and alarms[0].severity == ("error" if action == "reject" else "warning")


def test_line_config_wires_flatfield_roi_scale_and_capture(tmp_path: Path, tiny_bundle: Path) -> None:
    from calibration.capture import CaptureReference
    from calibration.flatfield import FlatField

    flat = FlatField(gain=np.full((64, 64, 3), 1.0, np.float32), offset=None).save(tmp_path / "ff.npz")
    reference = CaptureReference(focus=50.0, brightness=0.7, n_frames=3, frame_shape=(64, 64, 3))
    ref_path = reference.save(tmp_path / "capture.npz")
    raw = {
        "camera": {"type": "synthetic", "product": "print", "width_px": 64, "height_px": 64,
                   "frame_rate_hz": 20, "parts": 6, "seed": 3},
        # queue_size 8 holds all 6 parts: a slow first inspection on a loaded machine overflows nothing.
        "inspection": {"bundle": str(tiny_bundle), "backend": "torch", "threads": 1, "deadline_ms": 5000,
                       "queue_size": 8},
        "data_dir": str(tmp_path / "var"),
        "archive": {"enabled": False},
        "control": {"enabled": False},
        "flatfield": {"enabled": True, "path": str(flat)},
        "roi": {"exclude": [[[0, 0], [32, 0], [32, 64], [0, 64]]]},
        "scale": {"mm_per_px": 0.2},
        "capture": {"enabled": True, "reference_path": str(ref_path), "focus_grid": 1, "focus_tile_px": 32},
    }  # fmt: skip
    line = open_line(parse_config(raw))
    try:
        inspector = line._inspector
        assert isinstance(inspector, Inspector) and inspector.mm_per_px == 0.2
        pre = inspector.preprocessor
        assert pre is not None and pre.flatfield is not None and pre.roi is not None and pre.template is None
        assert line.capture is not None and line.capture.reference == reference
        line.start()
        assert line.wait_ended(timeout_s=60)
    finally:
        final = line.stop()
    assert final.frames == 6 and final.capture is not None and final.capture["checked"] == 6
    # The reference is made up, so every frame drifts from it (the alarm needs 3 in a row).
    assert any("illumination drift" in p for p in final.capture["last"]["problems"])


def test_line_config_refuses_bad_calibration_files_and_an_area_without_scale(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    raw = {
        "camera": {"type": "synthetic", "product": "print", "width_px": 64, "height_px": 64, "parts": 1},
        "inspection": {"bundle": str(tiny_bundle), "backend": "torch", "threads": 1},
        "data_dir": str(tmp_path / "var"),
        "control": {"enabled": False},
    }
    with pytest.raises(ConfigError, match=r"flatfield\.path is not set"):
        parse_config({**raw, "flatfield": {"enabled": True}})
    with pytest.raises(CalibrationError, match="not found"):
        open_line(parse_config({**raw, "flatfield": {"enabled": True, "path": str(tmp_path / "no.npz")}}))
    bundle = load_bundle(tiny_bundle)
    area_bundle = tmp_path / "area-bundle"
    shutil.copytree(tiny_bundle, area_bundle)
    update_meta(
        load_bundle(area_bundle),
        calibration=bundle.meta.calibration.model_copy(update={"min_defect_area_mm2": 0.5}),
    )
    with pytest.raises(ConfigError, match="min_defect_area_mm2 but the config has no pixel scale"):
        open_line(parse_config({**raw, "inspection": {**raw["inspection"], "bundle": str(area_bundle)}}))
    assert not (tmp_path / "var" / "records").exists() or not list((tmp_path / "var").rglob("*.partial"))


@pytest.fixture(scope="module")
def tiny_bundle(tiny_print_bundle: tuple[Path, Path]) -> Path:
    """The session's tiny PatchCore bundle (64 px tiles); tests that change a bundle copy it first."""
    return tiny_print_bundle[1]
