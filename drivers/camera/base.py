"""The camera interface and the Frame that travels through the appliance.

Every camera implementation inherits `Camera`, so none can drift. Frames are
handed out in a `with` block (`with camera.frame(timeout_s=1.0) as frame:`)
that returns the underlying buffer on exit; copy `frame.pixels` if the pixels
must outlive the block (`Frame.detach()`).
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import time
from collections.abc import Iterator
from typing import Any, Self

import numpy as np

from drivers.errors import CameraError


class FrameTimeoutError(CameraError):
    """No frame arrived within `timeout_s`. Normal for a triggered camera that is
    waiting for a part; a consumer counts it apart from real failures."""


class EndOfStream(CameraError):  # noqa: N818 - the name the line and GUI use
    """A finite source (a recording played without looping, a synthetic run of
    N parts) has delivered its last frame; the next `frame()` raises this."""


@dataclasses.dataclass(frozen=True)
class Frame:
    """One acquired image and its identity.

    `pixels` is HxW or HxWxC, uint8 or uint16 (RGB channel order for colour).
    `timestamp_s` is the acquisition time on the `time.monotonic()` clock, so
    deadlines can be measured in the same clock by every stage.
    `truth` carries ground truth when the source knows it (synthetic line,
    labelled replay): {"defective": bool, "mask": np.ndarray | None, ...}.
    """

    frame_id: int
    timestamp_s: float
    pixels: np.ndarray
    part_id: str = ""
    wall_time_s: float = dataclasses.field(default_factory=time.time)
    source: str = ""
    truth: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        px = self.pixels
        if not isinstance(px, np.ndarray):
            raise TypeError("Frame.pixels must be a numpy array")
        if px.ndim not in (2, 3) or (px.ndim == 3 and px.shape[2] not in (1, 3, 4)):
            raise ValueError(f"Frame.pixels must be HxW or HxWxC, got shape {px.shape}")
        if px.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"Frame.pixels must be uint8 or uint16, got {px.dtype}")

    def detach(self) -> Frame:
        """A copy whose pixels no longer share memory with a camera buffer."""
        return dataclasses.replace(self, pixels=np.array(self.pixels, copy=True))


@dataclasses.dataclass
class CameraStatus:
    """What a camera reports about itself; `state` is one of
    "closed", "open", "streaming", "reconnecting", "failed"."""

    state: str = "closed"
    frames_delivered: int = 0
    frames_lost: int = 0
    reconnects: int = 0
    last_error: str = ""


class Camera(abc.ABC):
    """A source of Frames: open, start, frames in `with` blocks, stop, close."""

    name: str = "camera"

    def __init__(self) -> None:
        self.status = CameraStatus()

    @abc.abstractmethod
    def open(self) -> None:
        """Connect to the device (or source) and apply the configured settings."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start acquisition."""

    @abc.abstractmethod
    def _acquire(self, *, timeout_s: float) -> tuple[Frame, Any]:
        """Wait up to `timeout_s` for the next frame; return it and a buffer token
        that `_release` gives back. Raise `FrameTimeoutError` when no frame came in
        time, `EndOfStream` when a finite source is exhausted, and `CameraError`
        on any other failure (device lost, bad data)."""

    def _release(self, token: Any) -> None:  # noqa: B027 - optional hook
        """Give a buffer back to the device (no-op for sources without buffers)."""

    @contextlib.contextmanager
    def frame(self, *, timeout_s: float = 1.0) -> Iterator[Frame]:
        """The next frame, valid inside the `with` block only."""
        frame, token = self._acquire(timeout_s=timeout_s)
        try:
            yield frame
        finally:
            self._release(token)

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop acquisition; buffers are returned."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the device. Safe to call twice."""

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        self.close()
