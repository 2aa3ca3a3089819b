"""Test doubles and helpers shared by the line, fault, control, service and GUI tests.

`ThresholdInspectorForTests` stands in for `pipelines.inspector.Inspector`
(same `inspect(frame)` contract) so that every verdict is known from the
synthetic frame's ground truth: raw score 1.5 for a defective part, 0.5 for
a good one, divided by the image threshold (the calibrated scale).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from drivers.camera.base import Frame
from drivers.camera.synthetic import SyntheticCamera, SyntheticSettings
from drivers.verdict import Defect, Result, Verdict
from pipelines.bundle import Bundle, BundleMeta, Calibration


def wait_until(predicate: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    """Poll `predicate` every 10 ms; AssertionError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


def synthetic_camera(*, parts: int | None = None, rate_hz: float | None = 100.0) -> SyntheticCamera:
    """The tests' line: 64x64 prints, 30% defective, seed 3 (not opened)."""
    return SyntheticCamera(
        SyntheticSettings(
            product="print", width_px=64, height_px=64, frame_rate_hz=rate_hz, parts=parts, seed=3,
            defect_rate=0.3,
        )
    )  # fmt: skip


class ThresholdInspectorForTests:
    """Scores from the frame's ground truth. Options: `delay_s` (a slow model), `fail_every`
    (every n-th frame raises), and `hang` (an Event: while it is clear, inspecting a line frame,
    frame_id >= 0, blocks up to 30 s, a hung model; set by default)."""

    def __init__(
        self,
        *,
        image_threshold: float = 1.0,
        name: str = "threshold-double",
        delay_s: float = 0.0,
        fail_every: int = 0,
    ) -> None:
        calibration = Calibration(image_threshold=image_threshold)
        self.bundle = Bundle(Path(name), BundleMeta(family=name, created="test", calibration=calibration))
        self.delay_s = delay_s
        self.fail_every = fail_every
        self.hang = threading.Event()
        self.hang.set()

    @property
    def calibration(self) -> Calibration:
        return self.bundle.meta.calibration

    def raw_score(self, frame: Frame) -> float:
        return 1.5 if (frame.truth or {}).get("defective") else 0.5

    def defects(self, frame: Frame, raw: float) -> tuple[Defect, ...]:
        return ()

    def anomaly_map(self, frame: Frame, raw: float) -> np.ndarray:
        return np.full(frame.pixels.shape[:2], raw, np.float32)

    def inspect(self, frame: Frame) -> Verdict:
        if frame.frame_id >= 0 and not self.hang.is_set():
            self.hang.wait(30)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_every and frame.frame_id % self.fail_every == 0:
            raise RuntimeError("boom")
        raw = self.raw_score(frame)
        threshold = self.calibration.image_threshold
        return Verdict(
            frame_id=frame.frame_id,
            part_id=frame.part_id,
            timestamp_s=frame.timestamp_s,
            result=Result.NG if raw >= threshold else Result.OK,
            score=raw / threshold,
            defects=self.defects(frame, raw),
            latency_ms=(time.monotonic() - frame.timestamp_s) * 1000.0,
            bundle_id=self.bundle.meta.bundle_id,
            wall_time_s=frame.wall_time_s,
            anomaly_map=self.anomaly_map(frame, raw),
            truth=frame.truth,
        )
