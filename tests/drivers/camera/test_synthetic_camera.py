"""Synthetic line camera: frames with truth, deterministic defects, pacing, end."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from drivers.camera.base import EndOfStream, Frame
from drivers.camera.synthetic import SyntheticCamera, SyntheticSettings
from drivers.errors import CameraError

W, H = 160, 120


def _camera(**kw: Any) -> SyntheticCamera:
    base: dict[str, Any] = {"width_px": W, "height_px": H, "seed": 5}
    base.update(kw)
    return SyntheticCamera(SyntheticSettings.model_validate(base))


def _grab(cam: SyntheticCamera, n: int) -> list[Frame]:
    frames = []
    for _ in range(n):
        with cam.frame(timeout_s=5.0) as frame:
            frames.append(frame.detach())
    return frames


@pytest.mark.parametrize("product", ["paper", "print"])
def test_frames_carry_pixels_and_truth(product: str) -> None:
    with _camera(product=product, defect_rate=0.5) as cam:
        cam.start()
        frames = _grab(cam, 6)
    for i, frame in enumerate(frames):
        assert frame.pixels.shape == (H, W, 3) and frame.pixels.dtype == np.uint8
        assert frame.frame_id == i and frame.part_id == f"P{i:06d}"
        truth = frame.truth
        assert truth is not None and set(truth) >= {"defective", "defect", "mask"}
        assert truth["mask"].shape == (H, W) and truth["mask"].dtype == np.uint8
        assert truth["defective"] == (truth["defect"] is not None)
        if not truth["defective"]:
            assert not truth["mask"].any()
    assert cam.status.frames_delivered == 6


def test_defects_are_deterministic_by_seed() -> None:
    with _camera(defect_rate=0.5) as a, _camera(defect_rate=0.5) as b:
        a.start()
        b.start()
        fa, fb = _grab(a, 5), _grab(b, 5)
    for x, y in zip(fa, fb, strict=True):
        assert x.truth is not None and y.truth is not None
        assert x.truth["defect"] == y.truth["defect"]
        np.testing.assert_array_equal(x.pixels, y.pixels)
    cam = _camera(defect_rate=0.3)
    cam.open()
    draws = [cam.defect_for(i) for i in range(3000)]
    assert draws == [cam.defect_for(i) for i in range(3000)]
    rate = sum(d is not None for d in draws) / len(draws)
    assert 0.26 < rate < 0.34
    assert {d for d in draws if d is not None} <= set(cam.defects)
    other = _camera(defect_rate=0.3, seed=6)
    other.open()
    assert [other.defect_for(i) for i in range(3000)] != draws
    cam.close()
    other.close()


def test_defect_list_rate_one_and_zero() -> None:
    from drivers.camera.scene import LOGICAL_DEFECTS, STRUCTURAL_DEFECTS

    for product, kind in (("paper", STRUCTURAL_DEFECTS[0]), ("print", LOGICAL_DEFECTS[0])):
        with _camera(product=product, defect_rate=1.0, defects=[kind]) as cam:
            cam.start()
            for frame in _grab(cam, 2):
                assert frame.truth is not None
                assert frame.truth["defective"] and frame.truth["defect"] == kind
                assert frame.truth["mask"].any()
    with _camera(defect_rate=0.0) as cam:
        cam.start()
        assert all(f.truth is not None and not f.truth["defective"] for f in _grab(cam, 3))


def test_mono8_and_end_of_stream() -> None:
    with _camera(pixel_format="mono8", parts=2) as cam:
        cam.start()
        frames = _grab(cam, 2)
        assert frames[0].pixels.shape == (H, W) and frames[0].pixels.dtype == np.uint8
        with pytest.raises(EndOfStream, match="2 parts"), cam.frame(timeout_s=1.0):
            pass


def test_frame_rate_pacing() -> None:
    with _camera(frame_rate_hz=25.0) as cam:
        cam.start()
        stamps = [f.timestamp_s for f in _grab(cam, 4)]
    assert all(b - a >= 0.035 for a, b in itertools.pairwise(stamps))


def test_bad_settings() -> None:
    with pytest.raises(CameraError, match="unknown synthetic defect"):
        _camera(defects=["no-such-defect"]).open()
    with pytest.raises(CameraError, match="for product 'paper': 'missing'; use any of scratch"):
        _camera(product="paper", defects=["missing"]).open()
    with pytest.raises(CameraError, match=r"synthetic camera: .*width_px"):
        _camera(width_px=99999).open()
    with pytest.raises(ValueError, match="defect_rate"):
        _camera(defect_rate=1.5)
    with pytest.raises(ValueError, match="empty"):
        _camera(defects=[])
    cam = _camera()
    with pytest.raises(CameraError, match="open"), cam.frame(timeout_s=0.1):
        pass
    cam.close()


def test_prerendered_parts_cycle_with_their_own_truth() -> None:
    with _camera(defect_rate=0.5) as live:
        live.start()
        rendered = _grab(live, 3)
    with _camera(defect_rate=0.5, prerender=3) as cam:
        cam.start()
        frames = []
        for _ in range(7):
            with cam.frame(timeout_s=5.0) as frame:
                with pytest.raises(ValueError, match="read-only"):
                    frame.pixels[0, 0, 0] = 1  # the cached part cannot be damaged by a consumer
                frames.append(frame.detach())
    assert [f.frame_id for f in frames] == list(range(7))
    assert [f.part_id for f in frames] == [f"P{i:06d}" for i in range(7)]
    for i, frame in enumerate(frames):
        source = rendered[i % 3]
        np.testing.assert_array_equal(frame.pixels, source.pixels)
        assert frame.truth is not None and source.truth is not None
        assert frame.truth["defect"] == source.truth["defect"]
        np.testing.assert_array_equal(frame.truth["mask"], source.truth["mask"])
    frames[0].pixels[0, 0, 0] ^= 1  # a detached frame is the consumer's own copy


def test_prerender_is_bounded() -> None:
    with pytest.raises(ValueError, match="prerender"):
        SyntheticSettings.model_validate({"prerender": 65})
