"""The NG image archive: atomic files, quota oldest-first, full disk never stops the line."""

from __future__ import annotations

import collections
import datetime as dt
import errno
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

import appliance.archive as archive_mod
from appliance.archive import ArchiveSettings, ImageArchive, render_heatmap
from appliance.records import Records, RecordsSettings
from drivers.verdict import Defect, Result, Verdict

Usage = collections.namedtuple("Usage", "total used free")
MIB = 1024 * 1024


def verdict(frame_id: int, result: Result = Result.NG, *, part_id: str = "A1") -> Verdict:
    return Verdict(
        frame_id=frame_id,
        part_id=part_id,
        timestamp_s=time.monotonic(),
        result=result,
        score=1.7,
        defects=(Defect(x=4, y=6, width=10, height=8, area_px=50, peak_score=2.0),),
        wall_time_s=time.time(),
    )


def frame(seed: int = 0, shape: tuple[int, ...] = (48, 64, 3), dtype: type = np.uint8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype)


def amap(shape: tuple[int, int] = (48, 64)) -> np.ndarray:
    m = np.zeros(shape, np.float32)
    m[6:14, 4:14] = 2.0
    return m


def read(path: Path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    image = cv2.imread(str(path), flags)
    assert image is not None, f"{path} is not a readable image"
    return image


def settings(tmp_path: Path, **kw: object) -> ArchiveSettings:
    kw.setdefault("min_free_mb", 0.0)
    return ArchiveSettings(directory=tmp_path / "images", **kw)  # type: ignore[arg-type]


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[ImageArchive]:
    arc = ImageArchive(settings(tmp_path))
    try:
        yield arc
    finally:
        arc.close()


def test_ng_frame_and_heatmap_are_written_under_the_day(archive: ImageArchive, tmp_path: Path) -> None:
    pixels = frame()
    paths = archive.save(verdict(7, part_id="lot 4/17"), pixels, amap())
    assert paths is not None
    image_path, heatmap_path = paths
    day = dt.date.today().isoformat()
    assert image_path == tmp_path / "images" / day / "7_lot_4_17.png"
    assert heatmap_path == tmp_path / "images" / day / "7_lot_4_17_heatmap.png"
    assert archive.wait_idle(timeout_s=10)
    back = cv2.cvtColor(read(image_path, cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(back, pixels)  # lossless, RGB order kept
    heat = read(heatmap_path)
    assert heat.shape == pixels.shape
    assert sorted(p.name for p in image_path.parent.iterdir()) == ["7_lot_4_17.png", "7_lot_4_17_heatmap.png"]
    status = archive.status()
    assert status.saved == 1 and status.skipped == 0 and not status.disk_full and status.alarm == ""
    total = sum(p.stat().st_size for p in image_path.parent.iterdir())
    assert status.size_mb == pytest.approx(total / MIB)


def test_which_frames_are_archived(tmp_path: Path) -> None:
    with ImageArchive(settings(tmp_path, ok_every_n=3)) as arc:
        assert arc.save(verdict(1, Result.OK), frame(), amap()) is None
        assert arc.save(verdict(2, Result.OK), frame(), amap()) is None
        assert arc.save(verdict(3, Result.OK), frame(), amap()) is not None  # every third OK
        uninspected = arc.save(verdict(4, Result.UNINSPECTED), frame(), None)
        assert uninspected is not None and uninspected[1] is None  # no map: no heatmap
        assert arc.wait_idle(timeout_s=10)
        assert uninspected[0].is_file()
    with ImageArchive(settings(tmp_path, archive_uninspected=False, enabled=False)) as arc:
        assert arc.save(verdict(5, Result.UNINSPECTED), frame(), None) is None
        assert arc.save(verdict(6, Result.NG), frame(), amap()) is None


def test_repeated_name_is_not_overwritten(archive: ImageArchive) -> None:
    first = archive.save(verdict(1), frame(1), amap())
    second = archive.save(verdict(1), frame(2), amap())  # frame ids restart after a restart
    assert first is not None and second is not None
    assert second[0].name == "1_A1_1.png" and second[1] is not None and second[1].name == "1_A1_1_heatmap.png"
    assert archive.wait_idle(timeout_s=10)
    assert first[0].is_file() and second[0].is_file()


def test_jpeg_and_16_bit_and_gray_frames(tmp_path: Path) -> None:
    with ImageArchive(settings(tmp_path, format="jpeg")) as arc:
        paths = arc.save(verdict(1), frame(dtype=np.uint16), amap((12, 16)))  # map at a lower resolution
        assert paths is not None and paths[0].suffix == ".jpg"
        assert arc.wait_idle(timeout_s=10)
        assert read(paths[0]).shape == (48, 64, 3)
    with ImageArchive(settings(tmp_path / "png16")) as arc:
        pixels = frame(shape=(48, 64), dtype=np.uint16)
        paths = arc.save(verdict(2), pixels, amap())
        assert paths is not None and arc.wait_idle(timeout_s=10)
        np.testing.assert_array_equal(read(paths[0], cv2.IMREAD_UNCHANGED), pixels)


def test_render_heatmap_scales_with_fixed_range() -> None:
    pixels = np.zeros((40, 50), np.uint8)
    overlay = render_heatmap(pixels, amap((40, 50)), colormap="jet", alpha=1.0, value_min=0.0, value_max=2.0)
    assert overlay.shape == (40, 50, 3) and overlay.dtype == np.uint8
    hot, cold = overlay[10, 8], overlay[30, 40]
    assert hot[2] > 100 and cold[0] > 100  # jet: top value red, bottom value blue (BGR)
    with pytest.raises(ValueError, match="heatmap_max"):
        ArchiveSettings(heatmap_min=2.0, heatmap_max=1.0)


def _old_file(path: Path, size: int, mtime: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)
    os.utime(path, (mtime, mtime))


def test_quota_evicts_oldest_first_with_a_running_total(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "images"
    t = time.time() - 3 * 86400
    _old_file(root / "2020-01-01" / "a.png", 100_000, t)
    _old_file(root / "2020-01-01" / "b.png", 100_000, t + 10)
    _old_file(root / "2020-01-02" / "c.png", 100_000, t + 20)
    _old_file(root / "2020-01-01" / ".tmp-123-x.png", 5_000, t)  # a crash's leftover
    (root / "notes").mkdir()
    (root / "notes" / "keep.txt").write_text("not ours")
    # Quota 0.25 MiB (262 kB), low water 0.95: 300 kB already stored.
    scans = []
    real_scandir = os.scandir

    def counting_scandir(path: object) -> object:
        scans.append(str(path))
        return real_scandir(path)  # type: ignore[call-overload]

    with ImageArchive(settings(tmp_path, quota_mb=0.25, heatmap=False)) as arc:
        paths = arc.save(verdict(1), frame(), None)
        assert paths is not None and arc.wait_idle(timeout_s=10)
        assert not (root / "2020-01-01" / "a.png").exists()  # the oldest file went first
        assert (root / "2020-01-01" / "b.png").exists() and (root / "2020-01-02" / "c.png").exists()
        assert not (root / "2020-01-01" / ".tmp-123-x.png").exists()
        assert paths[0].exists()

        monkeypatch.setattr(os, "scandir", counting_scandir)
        for i in range(2, 6):  # under the quota now: no rescans of the tree
            assert arc.save(verdict(i), frame(i), None) is not None
            assert arc.wait_idle(timeout_s=10)
        monkeypatch.undo()
        assert scans == []

        big = frame(9, shape=(200, 200, 3))  # ~120 kB each: pushes over the quota again
        assert arc.save(verdict(10), big, None) is not None
        assert arc.wait_idle(timeout_s=10)
        assert not (root / "2020-01-01").exists()  # the oldest day went, folder included
        status = arc.status()
        assert status.evicted >= 2
        kept = [p for p in root.rglob("*") if p.is_file() and p.parent.name != "notes"]
        assert status.size_mb == pytest.approx(sum(p.stat().st_size for p in kept) / MIB)
        assert status.size_mb <= 0.25
    assert (root / "notes" / "keep.txt").exists()


def test_full_disk_stops_archiving_but_never_the_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(archive_mod, "_write_file", no_space)
    records = Records(RecordsSettings(path=tmp_path / "records.sqlite3"))
    arc = ImageArchive(settings(tmp_path, free_check_interval_s=60.0))
    try:
        first = verdict(1)
        arc.save(first, frame(), amap())  # queued; its write fails on the worker
        assert arc.wait_idle(timeout_s=10)
        status = arc.status()
        assert status.disk_full and "disk full" in status.alarm and status.skipped_disk_full == 1
        second = verdict(2)
        assert arc.save(second, frame(), amap()) is None  # stopped: not even queued
        assert arc.status().skipped_disk_full == 2
        for v in (first, second):
            records.add_verdict(v, bundle_id="b", bundle_version="1", recipe="r", image_path=None)
        records.raise_alarm("archive", severity="error", message=arc.status().alarm)
        assert records.flush(5.0)
        assert records.counts()["ng"] == 2
        assert records.alarms(active_only=True)[0].message.startswith("image archive disk full")
    finally:
        arc.close()
        records.close()


def test_min_free_space_stops_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    free = {"bytes": 10 * MIB}
    monkeypatch.setattr(
        shutil, "disk_usage", lambda path: Usage(10**12, 10**12 - free["bytes"], free["bytes"])
    )
    with ImageArchive(settings(tmp_path, min_free_mb=500.0, free_check_interval_s=0.0)) as arc:
        assert arc.save(verdict(1), frame(), amap()) is None
        status = arc.status()
        assert status.disk_full and "min_free_mb=500" in status.alarm and status.skipped_disk_full == 1
        assert status.free_mb == pytest.approx(10.0)
        free["bytes"] = 520 * MIB  # above the limit but inside the margin: still stopped
        assert arc.save(verdict(2), frame(), amap()) is None
        free["bytes"] = 2000 * MIB
        assert arc.save(verdict(3), frame(), amap()) is not None
        assert arc.wait_idle(timeout_s=10)
        status = arc.status()
        assert (
            not status.disk_full
            and status.alarm == ""
            and status.saved == 1
            and status.skipped_disk_full == 2
        )


def test_overload_skips_images_and_counts_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    real_write = archive_mod._write_file

    def slow_write(path: Path, data: bytes) -> None:
        release.wait(10)
        real_write(path, data)

    monkeypatch.setattr(archive_mod, "_write_file", slow_write)
    with ImageArchive(settings(tmp_path, queue_size=1, heatmap=False)) as arc:
        results = [arc.save(verdict(i), frame(i), None) for i in range(6)]
        skipped = results.count(None)
        assert skipped >= 4  # one being written, one queued, the rest skipped
        assert arc.status().skipped_overload == skipped
        release.set()
        assert arc.wait_idle(timeout_s=10)
        assert arc.status().saved == 6 - skipped


def test_a_bad_array_is_counted_never_raised(archive: ImageArchive) -> None:
    assert archive.save(verdict(1), np.zeros((4, 4, 2), np.uint8), None) is not None
    assert archive.wait_idle(timeout_s=10)
    status = archive.status()
    assert status.failed == 1 and status.last_error


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux only")
def test_writer_thread_runs_at_a_lower_priority_than_inspection(tmp_path: Path) -> None:
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    for nice, expected in ((19, 19), (5, min(19, mine + 5)), (0, mine)):
        arc = ImageArchive(settings(tmp_path / str(nice), writer_nice=nice))
        try:
            arc.save(verdict(1), frame(), amap())
            assert arc.wait_idle(timeout_s=10.0)  # the writer has run its loop by now
            assert arc.status().saved == 1  # a reniced writer still writes
            thread = arc._worker._thread
            assert thread is not None and thread.native_id is not None
            assert os.getpriority(os.PRIO_PROCESS, thread.native_id) == expected
        finally:
            arc.close()
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine  # the caller is untouched
