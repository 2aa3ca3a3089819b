"""Acquisition worker: bounded queue, exact overflow accounting, clean ends."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import numpy as np
import pytest

from drivers.camera.acquisition import AcquisitionWorker
from drivers.camera.base import Camera, EndOfStream, Frame, FrameTimeoutError
from drivers.camera.synthetic import SyntheticCamera, SyntheticSettings
from drivers.errors import CameraError


def _synthetic(**kw: Any) -> Camera:
    base: dict[str, Any] = {"width_px": 128, "height_px": 96, "seed": 3, "defect_rate": 0.2}
    base.update(kw)
    cam = SyntheticCamera(SyntheticSettings.model_validate(base))
    cam.open()
    return cam


class ScriptedCamera(Camera):
    """Plays a script: "frame", "timeout", "error", "bug", "fail", then end of stream."""

    name = "scripted"

    def __init__(self, script: list[str]) -> None:
        super().__init__()
        self.script = list(script)
        self.next_id = 0
        self.released = 0
        self.stopped = 0

    def open(self) -> None:
        self.status.state = "open"

    def start(self) -> None:
        self.status.state = "streaming"

    def _acquire(self, *, timeout_s: float) -> tuple[Frame, Any]:
        if not self.script:
            raise EndOfStream("script over")
        step = self.script.pop(0)
        if step == "timeout":
            raise FrameTimeoutError("nothing")
        if step == "error":
            raise CameraError("cable pulled")
        if step == "bug":
            raise RuntimeError("a bug in a driver")
        if step == "fail":
            self.status.state = "failed"
            raise CameraError("given up")
        frame = Frame(frame_id=self.next_id, timestamp_s=time.monotonic(), pixels=np.zeros((4, 4), np.uint8))
        self.next_id += 1
        return frame, "token"

    def _release(self, token: Any) -> None:
        self.released += 1

    def stop(self) -> None:
        self.stopped += 1
        self.status.state = "open"

    def close(self) -> None:
        self.status.state = "closed"


def test_slow_consumer_every_frame_queued_or_overflowed() -> None:
    camera = _synthetic(parts=60)
    overflowed: list[Frame] = []
    worker = AcquisitionWorker(
        camera, queue_size=3, on_overflow=lambda frame, reason: overflowed.append(frame), error_backoff_s=0.01
    )
    consumed: list[Frame] = []
    depths: list[int] = []
    worker.start()
    try:
        while not worker.drained:
            depths.append(worker.queue.qsize())
            frame = worker.get(timeout_s=0.05)
            if frame is not None:
                consumed.append(frame)
                time.sleep(0.02)  # inspection is slower than the line
    finally:
        assert worker.stop(timeout_s=5.0)
        camera.close()
    status = worker.status()
    assert status.end_reason == "end of stream" and status.ended and not status.running
    assert status.acquired == 60
    assert status.queued + status.overflowed == status.acquired
    assert status.queued == len(consumed) and status.overflowed == len(overflowed) > 0
    ids = [f.frame_id for f in consumed] + [f.frame_id for f in overflowed]
    assert sorted(ids) == list(range(60))  # none lost, none twice
    assert max(depths) <= 3 and status.max_queue_depth <= 3 and status.queue_size == 3
    # Frames on the queue are copies that own their pixels.
    assert consumed[0].pixels.flags.owndata or consumed[0].pixels.base is None
    assert consumed[0].truth is not None and "mask" in consumed[0].truth


def test_stop_joins_the_thread_and_stops_the_camera() -> None:
    camera = _synthetic(frame_rate_hz=50.0)
    worker = AcquisitionWorker(camera, queue_size=2, on_overflow=lambda frame, reason: None)
    worker.start()
    assert camera.status.state == "streaming"
    time.sleep(0.2)
    assert worker.stop(timeout_s=3.0)
    assert not worker.running and worker.ended.is_set()
    assert worker.status().end_reason == "stopped"
    assert camera.status.state == "open"
    camera.close()
    with pytest.raises(RuntimeError, match="started already"):
        worker.start()


def test_camera_trouble_is_counted_not_raised() -> None:
    camera = ScriptedCamera(["frame", "timeout", "error", "error", "bug", "frame", "frame", "frame"])
    camera.open()
    calls: list[tuple[int, str]] = []

    def on_overflow(frame: Frame, reason: str) -> None:
        calls.append((frame.frame_id, reason))
        raise ValueError("handler trouble must not stop the worker")

    worker = AcquisitionWorker(camera, queue_size=1, on_overflow=on_overflow, error_backoff_s=0.01)
    worker.start()
    assert worker.ended.wait(5.0)
    assert worker.stop(timeout_s=2.0)
    status = worker.status()
    assert status.end_reason == "end of stream"
    assert status.timeouts == 1 and status.camera_errors == 3
    assert "RuntimeError" in status.last_error
    assert status.acquired == 4 and status.queued == 1 and status.overflowed == 3
    assert status.overflow_handler_errors == 3
    assert calls == [(1, "queue full"), (2, "queue full"), (3, "queue full")]
    assert camera.released == 4  # every buffer went back
    assert camera.stopped == 1


def test_failed_camera_ends_the_worker() -> None:
    camera = ScriptedCamera(["frame", "fail", "frame"])
    camera.open()
    worker = AcquisitionWorker(camera, queue_size=4, on_overflow=lambda frame, reason: None)
    worker.start()
    assert worker.ended.wait(5.0)
    worker.stop(timeout_s=2.0)
    status = worker.status()
    assert status.end_reason == "camera failed" and status.camera_state == "open"
    assert status.acquired == 1 and worker.get(timeout_s=0.0) is not None
    assert worker.drained


def test_no_thread_left_when_never_started() -> None:
    before = threading.active_count()
    worker = AcquisitionWorker(ScriptedCamera([]), queue_size=1, on_overflow=lambda frame, reason: None)
    assert worker.stop(timeout_s=0.1)
    assert threading.active_count() == before
    with pytest.raises(ValueError, match="queue_size"):
        AcquisitionWorker(ScriptedCamera([]), queue_size=0, on_overflow=lambda frame, reason: None)


def test_a_bug_in_the_worker_is_reported() -> None:
    class BrokenQueue(queue.Queue[Frame]):
        def put_nowait(self, item: Frame) -> None:
            raise RuntimeError("broken queue")

    camera = ScriptedCamera(["frame", "frame"])
    camera.open()
    worker = AcquisitionWorker(camera, queue_size=1, on_overflow=lambda frame, reason: None)
    worker.queue = BrokenQueue(maxsize=1)
    worker.start()
    assert worker.ended.wait(5.0)
    assert worker.stop(timeout_s=2.0)
    assert isinstance(worker.error, RuntimeError)
    assert worker.status().end_reason == "crashed: RuntimeError: broken queue"
