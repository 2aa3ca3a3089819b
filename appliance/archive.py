"""The NG image archive: rejected frames and their heatmaps on disk, within a quota.

`ImageArchive.save(verdict, frame_pixels, anomaly_map)` is called by the line
for every verdict. It decides on the caller's thread whether the frame is
archived (NG and UNINSPECTED always, every `ok_every_n`-th OK frame if asked),
reserves the paths ``directory/YYYY-MM-DD/<frame_id>_<part_id>.png`` and
``..._heatmap.png`` (local date of acquisition; a repeated name, as after a
restart resets frame ids, gets ``_1``, ``_2``, ...) and returns them at once,
for the records. A worker thread encodes and writes the files; should that
write fail later, the recorded path names no file and the failure is counted.

Why a worker: a 1913x2624 RGB frame takes about 0.55 s to encode as PNG at
compression 1 on a 2-core x86 (about 20 ms as JPEG), and the heatmap overlay
another 0.1 s to draw; no inspection thread can afford that, and on a small
CPU even a background thread doing it slows inspection down, so the writer
runs at a lower priority (`writer_nice`, Linux) and takes what inspection
leaves. The queue is
bounded (`queue_size` frames, each kept by reference, not copied: the caller
must not modify the arrays afterwards); a full queue skips the image and
counts it (`skipped_overload`). Images may be skipped under overload, records
never: the verdict is recorded either way, with no image path.

Each file is written to a hidden temporary name and moved into place with
`os.replace`, so a reader never sees half an image; temporaries left by a
crash are deleted at the next start.

The quota is kept oldest-first by file time: the worker keeps a running total
of the archive's size (one scan of the tree at start, then bookkeeping) and,
once over `quota_mb`, deletes the oldest files, oldest day first, down to
`quota_low_water` of the quota, so eviction runs in bursts rather than at
every frame. Empty day folders are removed. Only ``YYYY-MM-DD`` folders are
touched: anything else in `directory` is left alone.

A full disk never raises into the caller and never stops the records: when a
write fails with ENOSPC (or EDQUOT), or the filesystem's free space is below
`min_free_mb`, archiving stops (`save` returns None and counts the frame in
`skipped_disk_full`), `status().disk_full` is set and `status().alarm` carries
one line for the GUI and the records' alarms. Archiving resumes by itself once
free space is back above `min_free_mb` (plus a small margin, so a disk at the
edge does not flap).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import errno
import logging
import os
import queue
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydantic import Field, model_validator

from drivers.camera.acquisition import Worker
from drivers.settings import Settings
from drivers.verdict import Result, Verdict

log = logging.getLogger(__name__)

MIB = 1024 * 1024
# Free space above min_free_mb needed before archiving resumes, so it does not flap at the edge.
_RESUME_MARGIN_BYTES = 64 * MIB
_DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TMP_PREFIX = ".tmp-"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

COLORMAPS: dict[str, int] = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "inferno": cv2.COLORMAP_INFERNO,
    "magma": cv2.COLORMAP_MAGMA,
    "plasma": cv2.COLORMAP_PLASMA,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "hot": cv2.COLORMAP_HOT,
}
Colormap = Literal["jet", "turbo", "inferno", "magma", "plasma", "viridis", "hot"]


class ArchiveSettings(Settings):
    """Where rejected frames are kept, how big the archive may grow, and how heatmaps look."""

    enabled: bool = Field(
        default=True, description="Archive images at all (the records are kept either way)."
    )
    directory: Path = Field(
        default=Path("records/images"),
        description="Folder of the archive (path); one YYYY-MM-DD folder per day is made in it.",
    )
    quota_mb: float = Field(
        default=20480.0,
        ge=0.0,
        description="Largest total size of the archive (MiB); the oldest images are deleted beyond it. "
        "0: no quota.",
    )
    quota_low_water: float = Field(
        default=0.95,
        gt=0.0,
        le=1.0,
        description="Eviction deletes down to this fraction of the quota (fraction), so it runs in bursts.",
    )
    min_free_mb: float = Field(
        default=1024.0,
        ge=0.0,
        description="Stop archiving while the filesystem's free space is below this (MiB).",
    )
    free_check_interval_s: float = Field(
        default=1.0,
        ge=0.0,
        description="How often save() asks the filesystem for its free space at most (s).",
    )
    format: Literal["png", "jpeg"] = Field(
        default="png",
        description="File format of frames and heatmaps: png (lossless, keeps 16 bit; ~25x slower to "
        "write) or jpeg (8 bit, lossy, small).",
    )
    png_compression: int = Field(
        default=1, ge=0, le=9, description="PNG zlib level (0-9): 1 is fast, higher is smaller and slower."
    )
    jpeg_quality: int = Field(default=90, ge=1, le=100, description="JPEG quality (1-100).")
    heatmap: bool = Field(
        default=True, description="Also write the anomaly map as a colour overlay on the frame."
    )
    heatmap_colormap: Colormap = Field(default="jet", description="Colormap of the heatmap overlay.")
    heatmap_alpha: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Opacity of the colormapped map over the frame (fraction)."
    )
    heatmap_min: float = Field(
        default=0.0,
        description="Anomaly-map value drawn at the bottom of the colormap (calibrated score, 1.0 = "
        "threshold); fixed, so colours mean the same in every image.",
    )
    heatmap_max: float = Field(
        default=2.0,
        description="Anomaly-map value drawn at the top of the colormap (calibrated score, 1.0 = threshold).",
    )
    draw_defects: bool = Field(default=True, description="Draw each defect's bounding box on the heatmap.")
    archive_uninspected: bool = Field(
        default=True, description="Archive UNINSPECTED frames too (they are rejected without a decision)."
    )
    ok_every_n: int = Field(
        default=0,
        ge=0,
        description="Also archive every n-th OK frame (count), e.g. for retraining and audits; 0: none.",
    )
    queue_size: int = Field(
        default=4,
        ge=1,
        description="Frames waiting for the writer thread at most (count); each holds its pixels and "
        "anomaly map in memory (about 35 MB at 1913x2624).",
    )
    writer_nice: int = Field(
        default=19,
        ge=0,
        le=19,
        description="Linux nice increment of the writer thread (0-19): encoding yields the CPU to "
        "inspection, and under sustained overload images are skipped (counted), not frames; 0: "
        "same priority as inspection.",
    )

    @model_validator(mode="after")
    def _verify(self) -> ArchiveSettings:
        verify_heatmap_range(self)
        return self


def verify_heatmap_range(settings: ArchiveSettings) -> None:
    """The colormap needs a non-empty range of map values."""
    if not settings.heatmap_max > settings.heatmap_min:
        raise ValueError(
            f"archive.heatmap_max ({settings.heatmap_max}) must be greater than "
            f"archive.heatmap_min ({settings.heatmap_min})"
        )


@dataclasses.dataclass(frozen=True)
class ArchiveStatus:
    """A snapshot of the archive's state and counters."""

    directory: str
    running: bool
    disk_full: bool
    alarm: str  # one line for the GUI and the records' alarms; "" while all is well
    saved: int  # frames written (with their heatmap)
    skipped_disk_full: int
    skipped_overload: int
    skipped_shutdown: int
    failed: int  # frames whose write failed for another reason than a full disk
    evicted: int  # files deleted to keep the quota
    queued: int
    size_mb: float  # MiB
    quota_mb: float  # MiB
    free_mb: float  # MiB, at the last check; NaN before the first
    last_error: str

    @property
    def skipped(self) -> int:
        """Frames that should have been archived and were not."""
        return self.skipped_disk_full + self.skipped_overload + self.skipped_shutdown + self.failed


@dataclasses.dataclass
class _Job:
    verdict: Verdict
    pixels: np.ndarray
    anomaly_map: np.ndarray | None
    image_path: Path
    heatmap_path: Path | None


def _write_file(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically: a temporary beside it, then os.replace."""
    tmp = path.with_name(f"{_TMP_PREFIX}{os.getpid()}-{path.name}")
    try:
        with tmp.open("wb") as file:
            file.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _bgr8(pixels: np.ndarray) -> np.ndarray:
    """The frame as 8-bit BGR (for drawing)."""
    px = pixels[..., 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels
    if px.dtype == np.uint16:
        px = (px >> 8).astype(np.uint8)
    if px.ndim == 2:
        return cv2.cvtColor(px, cv2.COLOR_GRAY2BGR)
    if px.shape[2] == 4:
        return cv2.cvtColor(px, cv2.COLOR_RGBA2BGR)
    return cv2.cvtColor(px, cv2.COLOR_RGB2BGR)


def _for_encoder(pixels: np.ndarray, *, keep_16bit: bool) -> np.ndarray:
    """The frame in OpenCV's channel order; 16 bit kept for PNG, reduced to 8 for JPEG."""
    px = pixels[..., 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels
    if px.dtype == np.uint16 and not keep_16bit:
        px = (px >> 8).astype(np.uint8)
    if px.ndim == 3:
        px = cv2.cvtColor(px, cv2.COLOR_RGBA2BGRA if px.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    return np.ascontiguousarray(px)


def render_heatmap(
    pixels: np.ndarray,
    anomaly_map: np.ndarray,
    *,
    colormap: Colormap = "jet",
    alpha: float = 0.5,
    value_min: float = 0.0,
    value_max: float = 2.0,
    defects: tuple[tuple[int, int, int, int], ...] = (),
) -> np.ndarray:
    """The anomaly map colormapped over the frame, as 8-bit BGR at the frame's size.

    Map values are scaled from [value_min, value_max] (fixed, not per image, so
    a clean part looks clean); the map is resized to the frame if it differs.
    `defects` are (x, y, width, height) boxes drawn on top.
    """
    base = _bgr8(pixels)
    amap = np.asarray(anomaly_map, dtype=np.float32)
    if amap.ndim == 3:
        amap = amap[..., 0]
    amap = np.nan_to_num(amap, nan=value_min, posinf=value_max, neginf=value_min)
    height, width = base.shape[:2]
    if amap.shape != (height, width):
        amap = np.asarray(cv2.resize(amap, (width, height), interpolation=cv2.INTER_LINEAR), dtype=np.float32)
    scaled = (amap - value_min) * (255.0 / (value_max - value_min))
    levels = np.clip(scaled, 0.0, 255.0).astype(np.uint8)
    colored = cv2.applyColorMap(levels, COLORMAPS[colormap])
    overlay = cv2.addWeighted(base, 1.0 - alpha, colored, alpha, 0.0)
    thickness = max(2, round(min(height, width) / 500))
    for x, y, w, h in defects:
        cv2.rectangle(overlay, (x, y), (x + w - 1, y + h - 1), (255, 255, 255), thickness)
    return overlay


def _safe(part_id: str) -> str:
    """A part id usable in a file name on any filesystem."""
    return _UNSAFE.sub("_", part_id).strip("._")[:64] or "-"


class _ArchiveWorker(Worker):
    thread_name = "image-archive"

    def __init__(self, archive: ImageArchive) -> None:
        super().__init__()
        self._archive = archive
        self.nice = archive.settings.writer_nice

    def run_once(self) -> bool:
        return self._archive._worker_step(self)

    def _on_end(self) -> None:
        self._archive._worker_end()


class ImageArchive:
    """Rejected frames and heatmaps on disk, written by one worker thread, within a quota."""

    def __init__(self, settings: ArchiveSettings) -> None:
        self.settings = settings
        self.directory = settings.directory
        self._queue: queue.Queue[_Job] = queue.Queue(maxsize=settings.queue_size)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0  # jobs queued or being written
        self._reserved: set[Path] = set()
        self._counters = collections.Counter[str]()
        self._disk_full = False
        self._resume_free_bytes = 0.0  # free space needed before archiving resumes
        self._alarm = ""
        self._last_error = ""
        self._free_bytes = float("nan")
        self._next_free_check_s = 0.0
        self._ok_seen = 0
        self._closed = False
        # Sizes by day folder name, kept by the worker; the tree is scanned once, at start.
        self._day_bytes: dict[str, int] = {}
        self._total_bytes = 0
        self._scanned = False
        self._worker = _ArchiveWorker(self)
        if settings.enabled:
            self._worker.start()

    # ------------------------------------------------------------------ the caller's side

    def save(
        self, verdict: Verdict, frame_pixels: np.ndarray, anomaly_map: np.ndarray | None
    ) -> tuple[Path, Path | None] | None:
        """Queue the frame (and its heatmap) for writing; the paths it will have, or None if skipped.

        Never raises: a full disk, an overloaded writer or a bad array is
        counted and logged, and the line goes on.
        """
        try:
            if not self._wanted(verdict) or self._closed:
                return None
            if self._check_disk_full():
                with self._lock:
                    self._counters["skipped_disk_full"] += 1
                return None
            with_heatmap = self.settings.heatmap and anomaly_map is not None
            image_path, heatmap_path = self._reserve(verdict, with_heatmap=with_heatmap)
            job = _Job(verdict, frame_pixels, anomaly_map, image_path, heatmap_path)
            with self._lock:
                self._in_flight += 1
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                self._job_done(job)
                with self._lock:
                    self._counters["skipped_overload"] += 1
                    n = self._counters["skipped_overload"]
                if n == 1 or n % 100 == 0:
                    log.warning("image archive: writer busy, %d frames not archived so far", n)
                return None
            return image_path, heatmap_path
        except Exception as exc:  # archiving is best effort: it must never stop a verdict
            log.exception("image archive: frame %s not archived", verdict.frame_id)
            with self._lock:
                self._counters["failed"] += 1
                self._last_error = f"{type(exc).__name__}: {exc}"
            return None

    def _wanted(self, verdict: Verdict) -> bool:
        if not self.settings.enabled:
            return False
        if verdict.result is Result.NG:
            return True
        if verdict.result is Result.UNINSPECTED:
            return self.settings.archive_uninspected
        if self.settings.ok_every_n <= 0:
            return False
        with self._lock:
            self._ok_seen += 1
            return self._ok_seen % self.settings.ok_every_n == 0

    def _check_disk_full(self) -> bool:
        """Whether archiving is stopped for lack of space; asks the filesystem every free_check_interval_s."""
        now = time.monotonic()
        if now < self._next_free_check_s:
            return self._disk_full
        self._next_free_check_s = now + self.settings.free_check_interval_s
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(self.directory).free
        except OSError as exc:
            log.debug("image archive: free space of %s unknown (%s)", self.directory, exc)
            return self._disk_full
        min_free = self.settings.min_free_mb * MIB
        with self._lock:
            self._free_bytes = float(free)
            was_full = self._disk_full
            resume_at = max(min_free + _RESUME_MARGIN_BYTES, self._resume_free_bytes)
        if free < min_free:
            self._set_disk_full(
                f"free space {free / MIB:.0f} MiB below min_free_mb={self.settings.min_free_mb:g}",
                free_bytes=free,
            )
        elif was_full and free >= resume_at:
            with self._lock:
                self._disk_full = False
                self._alarm = ""
            log.info(
                "image archive: %s has %.0f MiB free again; archiving resumes", self.directory, free / MIB
            )
        return self._disk_full

    def _set_disk_full(self, why: str, *, free_bytes: float) -> None:
        """Stop archiving until `_RESUME_MARGIN_BYTES` more than `free_bytes` is free."""
        with self._lock:
            was_full, self._disk_full = self._disk_full, True
            self._resume_free_bytes = free_bytes + _RESUME_MARGIN_BYTES
            self._alarm = f"image archive disk full: {self.directory} ({why}); images are not archived"
        if not was_full:
            log.error("%s; free disk space or lower archive.quota_mb", self._alarm)

    def _reserve(self, verdict: Verdict, *, with_heatmap: bool) -> tuple[Path, Path | None]:
        wall = verdict.wall_time_s or time.time()
        day = dt.datetime.fromtimestamp(wall).strftime("%Y-%m-%d")
        stem = f"{verdict.frame_id}_{_safe(verdict.part_id)}"
        ext = ".png" if self.settings.format == "png" else ".jpg"
        folder = self.directory / day
        with self._lock:
            n = 0
            while True:
                name = stem if n == 0 else f"{stem}_{n}"
                image = folder / f"{name}{ext}"
                heatmap = folder / f"{name}_heatmap{ext}"
                if image not in self._reserved and not image.exists():
                    break
                n += 1
            self._reserved.add(image)
        return image, (heatmap if with_heatmap else None)

    def _job_done(self, job: _Job) -> None:
        with self._idle:
            self._reserved.discard(job.image_path)
            self._in_flight -= 1
            self._idle.notify_all()

    def wait_idle(self, *, timeout_s: float) -> bool:
        """Wait until every queued frame is written (or failed); False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def close(self, *, timeout_s: float = 10.0) -> bool:
        """Write what is queued (up to `timeout_s`), then stop the worker; False if it did not end.

        Frames still queued at the deadline are counted in `skipped_shutdown`.
        """
        self._closed = True
        self.wait_idle(timeout_s=timeout_s)
        return self._worker.stop(timeout_s=max(1.0, timeout_s))

    def __enter__(self) -> ImageArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def status(self) -> ArchiveStatus:
        with self._lock:
            c = self._counters
            return ArchiveStatus(
                directory=str(self.directory),
                running=self._worker.running,
                disk_full=self._disk_full,
                alarm=self._alarm,
                saved=c["saved"],
                skipped_disk_full=c["skipped_disk_full"],
                skipped_overload=c["skipped_overload"],
                skipped_shutdown=c["skipped_shutdown"],
                failed=c["failed"],
                evicted=c["evicted"],
                queued=self._queue.qsize(),
                size_mb=self._total_bytes / MIB,
                quota_mb=self.settings.quota_mb,
                free_mb=self._free_bytes / MIB,
                last_error=self._last_error,
            )

    # ------------------------------------------------------------------ the worker's side

    def _worker_step(self, worker: Worker) -> bool:
        if not self._scanned:
            self._scan()
        try:
            job = self._queue.get(timeout=0.1)
        except queue.Empty:
            return True
        try:
            self._write(job)
            self._enforce_quota()
        finally:
            # Only now is the job done: wait_idle() then also covers the quota it may have broken.
            self._job_done(job)
        return True

    def _worker_end(self) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            with self._lock:
                self._counters["skipped_shutdown"] += 1
            self._job_done(job)

    def _encode(self, bgr: np.ndarray) -> bytes:
        """`bgr` in OpenCV's channel order, as the configured file format."""
        if self.settings.format == "png":
            ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, self.settings.png_compression])
        else:
            ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, self.settings.jpeg_quality])
        if not ok:
            raise ValueError(
                f"OpenCV could not encode a {bgr.shape} {bgr.dtype} image as {self.settings.format}"
            )
        return buf.tobytes()

    def _write(self, job: _Job) -> None:
        """Encode and write one frame and its heatmap; failures are counted, never raised."""
        if self._disk_full:
            with self._lock:
                self._counters["skipped_disk_full"] += 1
            return
        written: list[Path] = []
        try:
            job.image_path.parent.mkdir(parents=True, exist_ok=True)
            data = self._encode(_for_encoder(job.pixels, keep_16bit=self.settings.format == "png"))
            _write_file(job.image_path, data)
            written.append(job.image_path)
            self._account(job.image_path, len(data))
            if job.heatmap_path is not None and job.anomaly_map is not None:
                s = self.settings
                overlay = render_heatmap(
                    job.pixels,
                    job.anomaly_map,
                    colormap=s.heatmap_colormap,
                    alpha=s.heatmap_alpha,
                    value_min=s.heatmap_min,
                    value_max=s.heatmap_max,
                    defects=tuple((d.x, d.y, d.width, d.height) for d in job.verdict.defects)
                    if s.draw_defects
                    else (),
                )
                data = self._encode(overlay)
                _write_file(job.heatmap_path, data)
                written.append(job.heatmap_path)
                self._account(job.heatmap_path, len(data))
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                # Free space may still look plentiful (reserved blocks, a user quota): resume
                # only once clearly more is free than now, or the alarm would flap every second.
                try:
                    free = float(shutil.disk_usage(self.directory).free)
                except OSError:
                    free = 0.0
                self._set_disk_full(os.strerror(exc.errno), free_bytes=free)
                with self._lock:
                    self._counters["skipped_disk_full"] += 1
            else:
                self._failed(job, exc)
            return
        except Exception as exc:  # a bad array must not end the worker
            self._failed(job, exc)
            return
        with self._lock:
            self._counters["saved"] += 1

    def _failed(self, job: _Job, exc: BaseException) -> None:
        with self._lock:
            self._counters["failed"] += 1
            self._last_error = f"{type(exc).__name__}: {exc}"
            n = self._counters["failed"]
        if n == 1 or n % 100 == 0:
            log.error("image archive: %s not written (%s); %d failures so far", job.image_path, exc, n)

    def _account(self, path: Path, size: int) -> None:
        day = path.parent.name
        with self._lock:
            self._day_bytes[day] = self._day_bytes.get(day, 0) + size
            self._total_bytes += size

    def _scan(self) -> None:
        """Size the existing archive once and delete temporaries a crash left behind."""
        self._scanned = True
        day_bytes: dict[str, int] = {}
        try:
            days = [e for e in os.scandir(self.directory) if e.is_dir() and _DAY_RE.match(e.name)]
        except FileNotFoundError:
            days = []
        except OSError as exc:
            log.warning(
                "image archive: %s cannot be listed (%s); its size counts from zero", self.directory, exc
            )
            days = []
        for day in days:
            total = 0
            try:
                for entry in os.scandir(day.path):
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    if entry.name.startswith(_TMP_PREFIX):
                        Path(entry.path).unlink(missing_ok=True)
                        continue
                    total += entry.stat().st_size
            except OSError as exc:
                log.warning("image archive: %s cannot be listed (%s)", day.path, exc)
            day_bytes[day.name] = total
        with self._lock:
            self._day_bytes = day_bytes
            self._total_bytes = sum(day_bytes.values())
        log.debug("image archive: %s holds %.1f MiB", self.directory, self._total_bytes / MIB)

    def _enforce_quota(self) -> None:
        """Delete the oldest files, oldest day first, until the archive is below the low-water mark."""
        quota = self.settings.quota_mb * MIB
        if quota <= 0 or self._total_bytes <= quota:
            return
        target = quota * self.settings.quota_low_water
        evicted = 0
        for day in sorted(self._day_bytes):
            if self._total_bytes <= target:
                break
            folder = self.directory / day
            try:
                entries = [e for e in os.scandir(folder) if e.is_file(follow_symlinks=False)]
                files = sorted((e.stat().st_mtime, e.name, e.stat().st_size) for e in entries)
            except OSError as exc:
                log.warning("image archive: %s cannot be listed (%s)", folder, exc)
                files = []
            for _, name, size in files:
                if self._total_bytes <= target:
                    break
                try:
                    (folder / name).unlink()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.warning("image archive: %s cannot be deleted (%s)", folder / name, exc)
                    continue
                evicted += 1
                with self._lock:
                    self._day_bytes[day] -= size
                    self._total_bytes -= size
            try:
                folder.rmdir()  # succeeds only once the day is empty
            except FileNotFoundError:
                pass
            except OSError:
                continue
            with self._lock:
                self._total_bytes -= self._day_bytes.pop(day, 0)
        with self._lock:
            self._counters["evicted"] += evicted
        log.info(
            "image archive: quota %.0f MiB reached; %d oldest files deleted, %.0f MiB kept",
            self.settings.quota_mb,
            evicted,
            self._total_bytes / MIB,
        )
