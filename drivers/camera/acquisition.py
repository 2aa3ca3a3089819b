"""The acquisition worker: one thread from the camera to a bounded queue.

The thread takes each frame inside the camera's `with` block, copies it out
(`Frame.detach()`, so the camera buffer goes back at once) and puts the copy
on a bounded `queue.Queue`. A full queue never blocks the camera and never
drops a frame silently: `on_overflow(frame, "queue full")` is called instead
(the line records the part as UNINSPECTED and rejects it). Hence, at any
time, `acquired == queued + overflowed` exactly, and memory is bounded by
`queue_size` frames.

Camera trouble never escapes the thread: timeouts, errors and reconnections
are counted in `status()`; `EndOfStream` and a camera that has been given up
end the worker cleanly and set `ended`. A consumer loops on
`get(timeout_s=...)` until `drained`.

`Worker` is the small thread abstraction (start, stop with a join timeout,
one `run_once` step at a time), so a GUI can run the same step from its own
thread or timer instead of this one.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import os
import queue
import sys
import threading
from collections.abc import Callable

from drivers.camera.base import Camera, EndOfStream, Frame, FrameTimeoutError
from drivers.errors import CameraError

_log = logging.getLogger(__name__)

OverflowHandler = Callable[[Frame, str], None]


class Worker(abc.ABC):
    """A loop of `run_once()` steps on its own thread, stopped by an event.

    `run_once` returns False when the work is over (the thread then ends by
    itself). `stop(timeout_s=...)` asks the loop to end and joins the thread.
    """

    thread_name = "worker"
    # Linux nice increment of this thread (0: as the process). Background
    # workers that burn CPU (image encoding) yield it to inspection this way.
    nice = 0

    def __init__(self) -> None:
        self._stop_event = threading.Event()
        self.ended = threading.Event()
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    @abc.abstractmethod
    def run_once(self) -> bool:
        """One step of work; False when there is nothing more to do."""

    def _on_start(self) -> None:  # noqa: B027 - optional hook
        """Called on the caller's thread before the loop starts."""

    def _on_end(self) -> None:  # noqa: B027 - optional hook
        """Called on the worker's thread after the loop ended."""

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        """Whether stop() has been asked for."""
        return self._stop_event.is_set()

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is not None:
            raise RuntimeError(f"{self.thread_name} worker was started already")
        self._on_start()
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        if self.nice:
            lower_thread_priority(self.nice, what=self.thread_name)
        try:
            while not self._stop_event.is_set():
                if not self.run_once():
                    break
        except BaseException as exc:
            # Never let a bug pass silently: the owner sees it in `error`.
            self.error = exc
            _log.exception("%s worker crashed", self.thread_name)
        finally:
            try:
                self._on_end()
            finally:
                self.ended.set()

    def stop(self, *, timeout_s: float = 5.0) -> bool:
        """Ask the loop to end and wait up to `timeout_s`; True if the thread ended."""
        self._stop_event.set()
        thread = self._thread
        if thread is None:
            self.ended.set()
            return True
        if thread is not threading.current_thread():
            thread.join(timeout_s)
        if thread.is_alive():
            _log.warning("%s worker did not end within %.1f s", self.thread_name, timeout_s)
            return False
        return True

    def wait_stopping(self, seconds: float) -> bool:
        """Sleep up to `seconds`, waking early (True) when stop() is asked for."""
        return self._stop_event.wait(seconds)


def lower_thread_priority(nice: int, *, what: str) -> bool:
    """Raise the calling thread's nice value by `nice` (Linux schedules threads
    one by one; elsewhere this would renice the whole process, so it does
    nothing). An unprivileged process may always lower its own priority; a
    refusal is logged, never raised. True when the thread was reniced."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return False
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + nice))
    except OSError as exc:
        _log.warning("%s thread: could not lower its priority by %d: %s", what, nice, exc)
        return False
    return True


@dataclasses.dataclass(frozen=True)
class AcquisitionStatus:
    """A snapshot of the worker's counters. `acquired == queued + overflowed`."""

    running: bool
    ended: bool
    end_reason: str  # "", "stopped", "end of stream", "camera failed", "crashed: ..."
    acquired: int
    queued: int
    overflowed: int
    timeouts: int
    camera_errors: int
    reconnects: int
    overflow_handler_errors: int
    queue_depth: int
    queue_size: int
    max_queue_depth: int
    camera_state: str
    last_error: str


class AcquisitionWorker(Worker):
    """Camera -> detached Frames -> bounded queue, on one thread.

    The worker starts the camera (if it is not streaming) in `start()` and
    stops it after its thread has ended in `stop()`; opening and closing the
    camera stay with the owner.
    """

    thread_name = "acquisition"

    def __init__(
        self,
        camera: Camera,
        *,
        queue_size: int,
        on_overflow: OverflowHandler,
        frame_timeout_s: float = 0.5,
        error_backoff_s: float = 0.1,
    ) -> None:
        super().__init__()
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        self.camera = camera
        self.queue: queue.Queue[Frame] = queue.Queue(maxsize=queue_size)
        self.on_overflow = on_overflow
        self.frame_timeout_s = frame_timeout_s
        self.error_backoff_s = error_backoff_s
        self._lock = threading.Lock()
        self._acquired = 0
        self._queued = 0
        self._overflowed = 0
        self._timeouts = 0
        self._camera_errors = 0
        self._handler_errors = 0
        self._max_depth = 0
        self._last_error = ""
        self._end_reason = ""

    def _on_start(self) -> None:
        if self.camera.status.state != "streaming":
            self.camera.start()

    def _on_end(self) -> None:
        with self._lock:
            if self.error is not None:
                self._end_reason = f"crashed: {type(self.error).__name__}: {self.error}"
            elif not self._end_reason:
                self._end_reason = "stopped"

    def stop(self, *, timeout_s: float = 5.0) -> bool:
        """End the thread (waiting up to `timeout_s`), then stop the camera."""
        joined = super().stop(timeout_s=timeout_s)
        if joined:
            try:
                self.camera.stop()
            except Exception as exc:  # a camera that is gone cannot be stopped; nothing is lost
                _log.warning("camera stop failed: %s", exc)
        return joined

    def _error(self, message: str) -> None:
        with self._lock:
            repeated = message == self._last_error
            self._camera_errors += 1
            self._last_error = message
        # A camera that stays away would otherwise log the same line forever.
        _log.log(logging.DEBUG if repeated else logging.WARNING, "acquisition: %s", message)

    def run_once(self) -> bool:
        """Take one frame and queue it (or hand it to on_overflow); False at the end."""
        try:
            with self.camera.frame(timeout_s=self.frame_timeout_s) as frame:
                detached = frame.detach()
        except EndOfStream:
            with self._lock:
                self._end_reason = "end of stream"
            return False
        except FrameTimeoutError:
            with self._lock:
                self._timeouts += 1
            return True
        except CameraError as exc:
            self._error(str(exc))
            if self.camera.status.state == "failed":
                with self._lock:
                    self._end_reason = "camera failed"
                return False
            self.wait_stopping(self.error_backoff_s)
            return True
        except Exception as exc:
            _log.exception("acquisition: unexpected camera error")
            self._error(f"{type(exc).__name__}: {exc}")
            self.wait_stopping(self.error_backoff_s)
            return True

        with self._lock:
            self._acquired += 1
        try:
            self.queue.put_nowait(detached)
        except queue.Full:
            with self._lock:
                self._overflowed += 1
            try:
                self.on_overflow(detached, "queue full")
            except Exception:
                _log.exception("acquisition: on_overflow handler failed for frame %d", detached.frame_id)
                with self._lock:
                    self._handler_errors += 1
        else:
            with self._lock:
                self._queued += 1
                self._max_depth = max(self._max_depth, self.queue.qsize())
        return True

    def get(self, *, timeout_s: float) -> Frame | None:
        """The next queued frame, or None when none came within `timeout_s` or the
        worker has ended and the queue is empty (see `drained`)."""
        try:
            return self.queue.get(timeout=timeout_s) if timeout_s > 0 else self.queue.get_nowait()
        except queue.Empty:
            return None

    @property
    def drained(self) -> bool:
        """The worker has ended and every queued frame has been taken."""
        return self.ended.is_set() and self.queue.empty()

    def status(self) -> AcquisitionStatus:
        """A consistent snapshot of the counters."""
        cam = self.camera.status
        with self._lock:
            return AcquisitionStatus(
                running=self.running,
                ended=self.ended.is_set(),
                end_reason=self._end_reason,
                acquired=self._acquired,
                queued=self._queued,
                overflowed=self._overflowed,
                timeouts=self._timeouts,
                camera_errors=self._camera_errors,
                reconnects=cam.reconnects,
                overflow_handler_errors=self._handler_errors,
                queue_depth=self.queue.qsize(),
                queue_size=self.queue.maxsize,
                max_queue_depth=self._max_depth,
                camera_state=cam.state,
                last_error=self._last_error,
            )
