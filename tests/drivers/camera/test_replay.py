"""Replay camera: folders (8/16 bit, colour), videos, pacing, looping, truth."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from drivers.camera.base import FrameTimeoutError
from drivers.camera.replay import EndOfStream, ReplayCamera, ReplaySettings
from drivers.errors import CameraError


def _write(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 else img
    assert cv2.imwrite(str(path), out)


def _drain(cam: ReplayCamera, limit: int = 100) -> list:
    frames = []
    for _ in range(limit):
        try:
            with cam.frame(timeout_s=1.0) as frame:
                frames.append(frame.detach())
        except EndOfStream:
            return frames
    raise AssertionError("stream did not end")


def test_folder_natural_order_depths_and_colour(tmp_path: Path) -> None:
    _write(tmp_path / "img10.png", np.full((4, 6), 10, np.uint8))
    _write(tmp_path / "img2.png", np.full((4, 6), 2, np.uint8))
    _write(tmp_path / "img3.tif", np.full((4, 6), 3000, np.uint16))
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0] = 200  # pure red: checks the BGR -> RGB turn
    _write(tmp_path / "img4.bmp", rgb)
    with ReplayCamera(ReplaySettings(path=tmp_path)) as cam:
        cam.start()
        frames = _drain(cam)
        assert cam.status.frames_delivered == 4
    assert [f.part_id for f in frames] == ["img2", "img3", "img4", "img10"]
    assert frames[0].pixels.dtype == np.uint8 and frames[0].pixels.shape == (4, 6)
    assert frames[1].pixels.dtype == np.uint16 and int(frames[1].pixels[0, 0]) == 3000
    assert frames[2].pixels.shape == (4, 6, 3) and frames[2].pixels[0, 0].tolist() == [200, 0, 0]
    assert [f.frame_id for f in frames] == [0, 1, 2, 3]
    assert frames[0].truth is None
    assert cam.status.state == "closed"


def test_end_of_stream_then_loop(tmp_path: Path) -> None:
    for i in range(3):
        _write(tmp_path / f"{i:03d}.png", np.full((2, 2), i, np.uint8))
    cam = ReplayCamera(ReplaySettings(path=tmp_path, loop=True, color="rgb"))
    cam.open()
    cam.start()
    values = []
    for _ in range(7):
        with cam.frame(timeout_s=1.0) as frame:
            assert frame.pixels.shape == (2, 2, 3)
            values.append(int(frame.pixels[0, 0, 0]))
    cam.close()
    assert values == [0, 1, 2, 0, 1, 2, 0]
    assert issubclass(EndOfStream, CameraError)


def test_frame_rate_pacing_and_timeout(tmp_path: Path) -> None:
    for i in range(4):
        _write(tmp_path / f"{i}.png", np.zeros((2, 2), np.uint8))
    cam = ReplayCamera(ReplaySettings(path=tmp_path, frame_rate_hz=20.0))
    cam.open()
    t0 = time.monotonic()
    cam.start()
    stamps = []
    for _ in range(4):
        with cam.frame(timeout_s=1.0) as frame:
            stamps.append(frame.timestamp_s)
    assert time.monotonic() - t0 >= 0.15  # three periods of 50 ms
    # Frames are due on a fixed 50 ms grid from start (a late frame does not
    # shift the grid), so frame i is never handed out before t0 + i periods;
    # gaps between two stamps may be shorter when the earlier one was late.
    assert all(stamp >= t0 + i * 0.05 for i, stamp in enumerate(stamps))
    assert all(b > a for a, b in itertools.pairwise(stamps))
    cam.close()

    slow = ReplayCamera(ReplaySettings(path=tmp_path, frame_rate_hz=2.0))
    slow.open()
    slow.start()
    with slow.frame(timeout_s=1.0):
        pass
    with pytest.raises(FrameTimeoutError), slow.frame(timeout_s=0.05):
        pass
    slow.close()


def test_masks_folder_beside_images(tmp_path: Path) -> None:
    images, masks = tmp_path / "images", tmp_path / "masks"
    _write(images / "a.png", np.zeros((8, 8), np.uint8))
    _write(images / "b.png", np.zeros((8, 8), np.uint8))
    _write(images / "c.png", np.zeros((8, 8), np.uint8))
    mask = np.zeros((8, 8), np.uint8)
    mask[2:4, 2:4] = 255
    _write(masks / "b.png", mask)
    _write(masks / "c_mask.png", np.zeros((8, 8), np.uint8))
    with ReplayCamera(ReplaySettings(path=images)) as cam:
        cam.start()
        frames = _drain(cam)
    truth = {f.part_id: f.truth for f in frames}
    assert truth["a"] == {"defective": False, "defect": None, "mask": None, "mask_path": None}
    assert truth["b"] is not None and truth["b"]["defective"] is True
    assert int(truth["b"]["mask"].sum()) == 4 * 255
    assert truth["c"] is not None and truth["c"]["defective"] is False


def test_mvtec_layout(tmp_path: Path) -> None:
    root = tmp_path / "bottle"
    _write(root / "train" / "good" / "000.png", np.zeros((8, 8), np.uint8))
    _write(root / "test" / "good" / "000.png", np.zeros((8, 8), np.uint8))
    _write(root / "test" / "crack" / "000.png", np.zeros((8, 8), np.uint8))
    mask = np.zeros((8, 8), np.uint8)
    mask[0, 0] = 255
    _write(root / "ground_truth" / "crack" / "000_mask.png", mask)
    with ReplayCamera(ReplaySettings(path=root)) as cam:
        cam.start()
        frames = _drain(cam)
    # The root replays test/ only, and never the masks.
    assert [f.part_id for f in frames] == ["crack/000", "good/000"]
    crack, good = (f.truth for f in frames)
    assert crack is not None and crack["defective"] and crack["defect"] == "crack"
    assert crack["mask"][0, 0] == 255 and crack["mask_path"].endswith("000_mask.png")
    assert good is not None and not good["defective"] and good["mask"] is None

    with ReplayCamera(ReplaySettings(path=root / "test" / "crack")) as cam:
        cam.start()
        (frame,) = _drain(cam)
    assert frame.truth is not None and frame.truth["defect"] == "crack"


def test_video_file(tmp_path: Path) -> None:
    path = tmp_path / "line.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (32, 24))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG video")
    for i in range(5):
        img = np.zeros((24, 32, 3), np.uint8)
        img[..., 2] = 40 * i  # red in BGR
        writer.write(img)
    writer.release()
    with ReplayCamera(ReplaySettings(path=path)) as cam:
        assert cam.frame_count == 5
        cam.start()
        frames = _drain(cam)
    assert len(frames) == 5
    assert frames[0].pixels.shape == (24, 32, 3)
    assert frames[4].pixels[..., 0].mean() > 140 > frames[4].pixels[..., 2].mean()
    assert frames[3].part_id == "line#000003"


def test_errors_name_the_source(tmp_path: Path) -> None:
    with pytest.raises(CameraError, match="does not exist"):
        ReplayCamera(ReplaySettings(path=tmp_path / "nope")).open()
    with pytest.raises(CameraError, match="no images"):
        ReplayCamera(ReplaySettings(path=tmp_path)).open()
    _write(tmp_path / "a.png", np.zeros((2, 2), np.uint8))
    cam = ReplayCamera(ReplaySettings(path=tmp_path))
    cam.open()
    with pytest.raises(CameraError, match="start"), cam.frame(timeout_s=0.1):
        pass
    cam.close()
    cam.close()
    (tmp_path / "broken.png").write_bytes(b"not a png")
    cam = ReplayCamera(ReplaySettings(path=tmp_path))
    cam.open()
    cam.start()
    with cam.frame(timeout_s=0.1):
        pass
    with pytest.raises(CameraError, match=r"broken\.png"), cam.frame(timeout_s=0.1):
        pass
    cam.close()


def test_registry_builds_cameras_lazily(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from pydantic import TypeAdapter

    from drivers.camera.registry import CAMERAS, CameraSettings, create_camera

    assert set(CAMERAS) == {"genicam", "replay", "synthetic"}
    settings = TypeAdapter(CameraSettings).validate_python({"type": "replay", "path": str(tmp_path)})
    assert isinstance(create_camera(settings), ReplayCamera)
    with pytest.raises(ValueError, match="frame_rate"):
        TypeAdapter(CameraSettings).validate_python({"type": "replay", "path": "x", "frame_rate": 3})

    # Without harvesters, only the GenICam choice breaks, naming package and extra.
    monkeypatch.setitem(sys.modules, "harvesters", None)  # None in sys.modules: ImportError
    monkeypatch.setitem(sys.modules, "harvesters.core", None)
    genicam_settings = TypeAdapter(CameraSettings).validate_python({"type": "genicam", "cti_path": "/x.cti"})
    with pytest.raises(CameraError, match=r"'harvesters'.*pip install '\.\[camera\]'"):
        create_camera(genicam_settings)
