"""Capture checks: good frames pass; a blurred frame fails focus, an overexposed one exposure, and
a 20% darker one is flagged as illumination drift; the reference saves and loads."""

from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np
import pytest

from calibration.capture import CaptureReference, CaptureSettings, check, measure
from calibration.errors import CalibrationError

H, W = 600, 440


@functools.lru_cache(maxsize=1)
def _print() -> np.ndarray:
    """A printed RGB part: coloured blocks, discs and text on paper, mid-grey on average."""
    rng = np.random.default_rng(0)
    img = np.full((H, W, 3), 190, np.uint8)
    for _ in range(60):
        x, y = int(rng.integers(0, W)), int(rng.integers(0, H))
        colour = tuple(int(c) for c in rng.integers(30, 200, 3))
        if rng.random() < 0.5:
            cv2.rectangle(
                img, (x, y), (x + int(rng.integers(10, 80)), y + int(rng.integers(10, 80))), colour, -1
            )
        else:
            cv2.putText(img, "AOI 1234", (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.7, colour, 2, cv2.LINE_AA)
    img.flags.writeable = False
    return img


def _frame(*, seed: int, gain: float = 1.0, blur_px: float = 0.0) -> np.ndarray:
    img = np.asarray(_print(), dtype=np.float32)
    if blur_px > 0:
        img = np.asarray(cv2.GaussianBlur(img, (0, 0), blur_px), dtype=np.float32)
    noise = np.random.default_rng(seed).normal(0.0, 2.0, size=img.shape)
    return np.clip(np.rint(img * gain + noise), 0, 255).astype(np.uint8)


SETTINGS = CaptureSettings(focus_tile_px=96)


@functools.lru_cache(maxsize=1)
def _reference() -> CaptureReference:
    return CaptureReference.from_frames([_frame(seed=i) for i in range(4)], settings=SETTINGS)


def test_good_frames_pass() -> None:
    report = check(_frame(seed=10), _reference(), SETTINGS)
    assert report.ok, report.problems
    assert report.focus_ratio == pytest.approx(1.0, abs=0.1)
    assert report.brightness_drift_pct is not None and abs(report.brightness_drift_pct) < 1.0
    assert report.saturated_fraction == 0.0 and report.dark_fraction < 0.05


def test_a_blurred_frame_fails_focus() -> None:
    report = check(_frame(seed=11, blur_px=2.0), _reference(), SETTINGS)
    assert not report.ok
    assert report.focus_ratio is not None and report.focus_ratio < 0.3
    assert len(report.problems) == 1 and report.problems[0].startswith("out of focus")


def test_an_overexposed_frame_fails_exposure() -> None:
    report = check(_frame(seed=12, gain=1.6), _reference(), SETTINGS)
    assert not report.ok
    assert report.saturated_fraction > 0.3
    assert any(p.startswith("overexposed") for p in report.problems)


def test_a_20_percent_darker_frame_flags_drift() -> None:
    report = check(_frame(seed=13, gain=0.8), _reference(), SETTINGS)
    assert report.brightness_drift_pct == pytest.approx(-20.0, abs=1.0)
    assert not report.ok
    assert any("illumination drift: 20" in p and "darker" in p for p in report.problems), report.problems
    # Focus is relative to contrast too, but a 20% dimmer part is not called out of focus.
    assert not any(p.startswith("out of focus") for p in report.problems)


def test_an_underexposed_frame_and_no_reference() -> None:
    report = check(_frame(seed=14, gain=0.02), None, SETTINGS)
    assert report.brightness_drift_pct is None and report.focus_ratio is None
    assert any(p.startswith("underexposed") for p in report.problems)
    blurred = check(_frame(seed=15, blur_px=3.0), None, CaptureSettings(focus_tile_px=96, min_focus=50.0))
    assert any(p.startswith("out of focus") for p in blurred.problems)


def test_twelve_bit_frames_use_their_own_full_scale() -> None:
    frame12 = _frame(seed=16).astype(np.uint16) * 16  # 12-bit data in 16-bit words
    as_16 = measure(frame12, CaptureSettings(focus_tile_px=96))
    as_12 = measure(frame12, CaptureSettings(focus_tile_px=96, bit_depth=12))
    eight = measure(_frame(seed=16), SETTINGS)
    assert as_12.brightness == pytest.approx(eight.brightness, rel=0.01)
    assert as_12.focus == pytest.approx(eight.focus, rel=0.03)  # grey conversion rounds differently
    assert as_16.brightness == pytest.approx(as_12.brightness * 4095 / 65535, rel=1e-6)  # read as a dim frame


def test_reference_round_trip_and_errors(tmp_path: Path) -> None:
    ref = _reference()
    back = CaptureReference.load(ref.save(tmp_path / "capture.npz"))
    assert back == ref
    with pytest.raises(CalibrationError, match="no reference frames"):
        CaptureReference.from_frames([])
    with pytest.raises(CalibrationError, match="blank"):
        CaptureReference.from_frames([np.zeros((100, 100), np.uint8)])
    with pytest.raises(ValueError, match="dark_level"):
        CaptureSettings(dark_level=0.5, saturation_level=0.4)


def test_monitor_debounces_the_alarm_and_clears_it_after_as_many_good_frames() -> None:
    from calibration.capture import CaptureMonitor

    settings = SETTINGS.model_copy(update={"enabled": True, "alarm_after_frames": 3})
    monitor = CaptureMonitor(settings, _reference())
    dark = _frame(seed=20, gain=0.7)
    for i in range(2):
        report = monitor.observe(dark)
        assert report is not None and not report.ok
        assert monitor.alarm is None, f"raised after {i + 1} failing frames"
    monitor.observe(dark)
    assert monitor.alarm is not None and "illumination drift" in monitor.alarm
    assert not monitor.rejects(monitor.observe(dark))  # action "alarm": frames are still inspected
    for _ in range(2):
        monitor.observe(_frame(seed=21))
        assert monitor.alarm is not None
    monitor.observe(_frame(seed=22))
    assert monitor.alarm is None
    status = monitor.status()
    assert status["checked"] == 7 and status["failed"] == 4 and status["last"]["ok"]


def test_monitor_checks_every_nth_frame_and_rejects_when_told() -> None:
    from calibration.capture import CaptureMonitor

    settings = SETTINGS.model_copy(update={"every_n_frames": 3, "action": "reject", "alarm_after_frames": 1})
    monitor = CaptureMonitor(settings, _reference())
    blurred = _frame(seed=30, blur_px=3.0)
    reports = [monitor.observe(blurred) for _ in range(7)]
    assert [r is not None for r in reports] == [True, False, False, True, False, False, True]
    assert monitor.rejects(reports[0]) and not monitor.rejects(None)
    assert monitor.alarm is not None and "out of focus" in monitor.alarm
    assert monitor.status()["checked"] == 3


def test_monitor_from_settings_is_none_when_disabled_and_loads_the_reference(tmp_path: Path) -> None:
    from calibration.capture import CaptureMonitor

    assert CaptureMonitor.from_settings(CaptureSettings()) is None
    path = _reference().save(tmp_path / "capture.npz")
    monitor = CaptureMonitor.from_settings(CaptureSettings(enabled=True, reference_path=path))
    assert monitor is not None and monitor.reference == _reference()
    with pytest.raises(CalibrationError, match="not found"):
        CaptureMonitor.from_settings(CaptureSettings(enabled=True, reference_path=tmp_path / "missing.npz"))
