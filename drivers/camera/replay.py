"""Replay a recording as a camera: a folder of images or a video file.

Use it to run the line on recorded parts, to demo without hardware, and in
tests. Frames come at `frame_rate_hz` (or as fast as the consumer takes them
when it is None), once or in a loop. A non-looping source that has run out
raises `EndOfStream` (a `CameraError`), which the acquisition worker treats as
a clean end.

Folders: every .png/.jpg/.jpeg/.bmp/.tif/.tiff below `path` (subfolders too),
in natural order of their relative paths (img2 before img10). 8-bit and 16-bit
images are kept as they are; colour is turned to RGB, alpha dropped.

Truth (ground truth attached to `Frame.truth` when the folder has it):

- MVTec AD layout: `path` is a dataset root holding `test/` and
  `ground_truth/` (then `test/` is replayed), or the `test/` folder, or one
  `test/<defect>/` folder. An image in `test/<defect>/` is defective unless
  `<defect>` is "good"; its mask is `ground_truth/<defect>/<stem>_mask.png`.
- A `masks/` folder inside `path` or beside it (`path/../masks/`): an image
  `<stem>.*` is defective when `masks/<stem>.png` (or `<stem>_mask.png`) exists
  and is not all zero.

Then `truth = {"defective": bool, "defect": str | None, "mask": HxW uint8 or
None, "mask_path": str | None}`. Folders `masks/` and `ground_truth/` are never
replayed as frames. Without either layout `truth` is None.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import Field

from drivers.camera.base import Camera, EndOfStream, Frame, FrameTimeoutError
from drivers.errors import CameraError
from drivers.settings import Settings

__all__ = [
    "IMAGE_SUFFIXES",
    "EndOfStream",
    "FramePacer",
    "ReplayCamera",
    "ReplaySettings",
    "list_images",
    "read_image",
]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg"})
_SKIPPED_DIRS = frozenset({"masks", "ground_truth"})


class ReplaySettings(Settings):
    """A recorded folder of images or a video file played as a camera."""

    type: Literal["replay"] = Field(default="replay", description="Selects the replay camera.")
    path: Path = Field(description="Folder of images (searched recursively) or a video file.")
    frame_rate_hz: float | None = Field(
        default=None,
        gt=0,
        description="Frames per second [Hz]; None delivers frames as fast as they are taken.",
    )
    loop: bool = Field(default=False, description="Start again from the first frame after the last one.")
    color: Literal["auto", "mono", "rgb"] = Field(
        default="auto",
        description="auto keeps each file's channels; mono converts to HxW grey, rgb to HxWx3 RGB.",
    )


def _natural_key(text: str) -> list[Any]:
    """Sort key that orders digit runs by value: frame2 before frame10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def read_image(path: Path, *, color: str = "auto") -> np.ndarray:
    """Read one image file as HxW or HxWx3 RGB, uint8 or uint16.

    `color` is "auto" (as stored), "mono" or "rgb". Raises CameraError naming
    the file if it cannot be read or has an unsupported depth.
    """
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise CameraError(f"cannot read image {path}: {exc.strerror or exc}") from exc
    # imdecode instead of imread: the same path handling on every platform.
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise CameraError(f"cannot decode image {path}: not a readable png/jpg/bmp/tif file")
    if img.dtype not in (np.uint8, np.uint16):
        raise CameraError(
            f"image {path} has {img.dtype} pixels; only 8-bit and 16-bit images can be replayed"
        )
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3:
        code = cv2.COLOR_BGRA2RGB if img.shape[2] == 4 else cv2.COLOR_BGR2RGB
        img = cv2.cvtColor(img, code)
    if color == "mono" and img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    elif color == "rgb" and img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    return img


def _read_mask(path: Path) -> np.ndarray:
    mask = read_image(path, color="mono")
    return np.where(mask > 0, 255, 0).astype(np.uint8)


class FramePacer:
    """Hands out frame due times at `frame_rate_hz` on the monotonic clock
    (None: every frame is due at once). Shared by the simulated sources."""

    def __init__(self, *, frame_rate_hz: float | None) -> None:
        self.frame_rate_hz = frame_rate_hz
        self._next_due_s = time.monotonic()

    def restart(self) -> None:
        """The next frame is due now."""
        self._next_due_s = time.monotonic()

    def wait(self, *, timeout_s: float) -> None:
        """Sleep until the next frame is due; FrameTimeoutError (after sleeping
        `timeout_s`) when it is not due within `timeout_s`."""
        wait_s = self._next_due_s - time.monotonic()
        if wait_s > timeout_s:
            time.sleep(max(timeout_s, 0.0))
            raise FrameTimeoutError(f"no frame within {timeout_s:.3f} s (next due in {wait_s:.3f} s)")
        if wait_s > 0:
            time.sleep(wait_s)

    def delivered(self, *, timestamp_s: float) -> None:
        """Book a frame delivered at `timestamp_s` and schedule the next one."""
        if self.frame_rate_hz is not None:
            # A slow consumer gets the next frame at once but no burst of
            # catch-up frames, as a camera that is read late would behave.
            self._next_due_s = max(self._next_due_s + 1.0 / self.frame_rate_hz, timestamp_s)


class _Truth:
    """Finds ground truth for images of a folder (MVTec layout or a masks/ folder)."""

    def __init__(self, root: Path) -> None:
        self.mvtec_root: Path | None = None
        for candidate in (root, root.parent, root.parent.parent):
            if (candidate / "test").is_dir() and (candidate / "ground_truth").is_dir():
                if root == candidate or root.is_relative_to(candidate / "test"):
                    self.mvtec_root = candidate
                break
        self.masks_dir: Path | None = None
        if self.mvtec_root is None:
            for candidate in (root / "masks", root.parent / "masks"):
                if candidate.is_dir():
                    self.masks_dir = candidate
                    break

    @property
    def known(self) -> bool:
        return self.mvtec_root is not None or self.masks_dir is not None

    def scan_root(self, root: Path) -> Path:
        """The folder whose images are replayed (an MVTec root replays its test/)."""
        return self.mvtec_root / "test" if self.mvtec_root == root else root

    def for_image(self, image: Path) -> dict[str, Any] | None:
        if self.mvtec_root is not None:
            defect = image.parent.name
            mask_path = self.mvtec_root / "ground_truth" / defect / f"{image.stem}_mask.png"
            has_mask = mask_path.is_file()
            return {
                "defective": defect != "good",
                "defect": None if defect == "good" else defect,
                "mask": _read_mask(mask_path) if has_mask else None,
                "mask_path": str(mask_path) if has_mask else None,
            }
        if self.masks_dir is not None:
            for name in (f"{image.stem}.png", f"{image.stem}_mask.png"):
                mask_path = self.masks_dir / name
                if mask_path.is_file():
                    mask = _read_mask(mask_path)
                    defective = bool(mask.any())
                    return {
                        "defective": defective,
                        "defect": "defect" if defective else None,
                        "mask": mask,
                        "mask_path": str(mask_path),
                    }
            return {"defective": False, "defect": None, "mask": None, "mask_path": None}
        return None


def list_images(root: Path) -> list[Path]:
    """Image files below `root`, natural-sorted by relative path, skipping masks/ and ground_truth/."""
    files = [
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not _SKIPPED_DIRS.intersection(p.relative_to(root).parts[:-1])
    ]
    return sorted(files, key=lambda p: _natural_key(p.relative_to(root).as_posix()))


class ReplayCamera(Camera):
    """Plays `settings.path` (image folder or video) as a camera; no threads, no buffers."""

    name = "replay"

    def __init__(self, settings: ReplaySettings) -> None:
        super().__init__()
        self.settings = settings
        self._files: list[Path] = []
        self._truth: _Truth | None = None
        self._scan_root: Path = settings.path
        self._video: cv2.VideoCapture | None = None
        self._index = 0  # position in the source (file index or video frame)
        self._frame_id = 0
        self._pacer = FramePacer(frame_rate_hz=settings.frame_rate_hz)

    @property
    def frame_count(self) -> int | None:
        """Frames in one pass over the source (None for a video that does not say)."""
        if self._video is not None:
            n = int(self._video.get(cv2.CAP_PROP_FRAME_COUNT))
            return n if n > 0 else None
        return len(self._files)

    def open(self) -> None:
        """Check the source and list its frames; CameraError naming the path if unusable."""
        path = self.settings.path
        if not path.exists():
            raise CameraError(f"replay source {path} does not exist: set camera.path to a folder or video")
        if path.is_dir():
            self._truth = _Truth(path)
            self._scan_root = self._truth.scan_root(path)
            self._files = list_images(self._scan_root)
            if not self._files:
                raise CameraError(
                    f"replay folder {path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
                )
        else:
            if path.suffix.lower() not in VIDEO_SUFFIXES:
                raise CameraError(
                    f"replay source {path} is neither a folder nor a video "
                    f"({', '.join(sorted(VIDEO_SUFFIXES))})"
                )
            self._video = cv2.VideoCapture(str(path))
            if not self._video.isOpened():
                self._video.release()
                self._video = None
                raise CameraError(f"cannot open video {path}: not a readable video file")
        self._index = 0
        self.status.state = "open"

    def start(self) -> None:
        """Start delivering frames from the current position."""
        if self.status.state == "closed":
            raise CameraError("replay camera is closed: call open() first")
        self._pacer.restart()
        self.status.state = "streaming"

    def _rewind(self) -> None:
        self._index = 0
        if self._video is not None:
            self._video.set(cv2.CAP_PROP_POS_FRAMES, 0)

    def _read_next(self) -> tuple[np.ndarray, str, dict[str, Any] | None]:
        """The next frame's pixels, part id and truth; EndOfStream past the end."""
        for attempt in range(2):
            if self._video is not None:
                ok, bgr = self._video.read()
                if ok:
                    index = self._index
                    self._index += 1
                    if self.settings.color == "mono":
                        img = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
                    else:
                        img = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                    return img, f"{self.settings.path.stem}#{index:06d}", None
            elif self._index < len(self._files):
                path = self._files[self._index]
                self._index += 1
                img = read_image(path, color=self.settings.color)
                part_id = path.relative_to(self._scan_root).with_suffix("").as_posix()
                truth = self._truth.for_image(path) if self._truth is not None else None
                return img, part_id, truth
            if not self.settings.loop or attempt:
                break
            self._rewind()
        raise EndOfStream(f"end of stream: {self.settings.path} has no more frames (loop is off)")

    def _acquire(self, *, timeout_s: float) -> tuple[Frame, Any]:
        if self.status.state != "streaming":
            raise CameraError(f"replay camera is {self.status.state}: call open() and start() first")
        self._pacer.wait(timeout_s=timeout_s)
        pixels, part_id, truth = self._read_next()
        timestamp_s = time.monotonic()
        self._pacer.delivered(timestamp_s=timestamp_s)
        frame = Frame(
            frame_id=self._frame_id,
            timestamp_s=timestamp_s,
            pixels=pixels,
            part_id=part_id,
            source=f"replay:{self.settings.path}",
            truth=truth,
        )
        self._frame_id += 1
        self.status.frames_delivered += 1
        return frame, None

    def stop(self) -> None:
        """Stop delivering frames; the position is kept for the next start()."""
        if self.status.state == "streaming":
            self.status.state = "open"

    def close(self) -> None:
        """Release the video file. Safe to call twice."""
        if self._video is not None:
            self._video.release()
            self._video = None
        self._files = []
        self.status.state = "closed"
