"""Pixel scale: a rendered checkerboard at a known mm/px is recovered within 0.5%, from one view
and from several (with the lens fit); two points; areas; save/load; clear errors."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from calibration.errors import CalibrationError
from calibration.scale import PixelScale, ScaleSettings, find_checkerboard, parse_pattern

MM_PER_PX = 0.0734
SQUARE_MM = 5.0
PATTERN = (9, 6)


@functools.lru_cache(maxsize=8)
def render_checkerboard(
    *,
    size_px: tuple[int, int] = (860, 640),
    mm_per_px: float = MM_PER_PX,
    square_mm: float = SQUARE_MM,
    pattern: tuple[int, int] = PATTERN,
    angle_deg: float = 2.0,
    centre_px: tuple[float, float] | None = None,
    blur_px: float = 1.0,
    noise: float = 3.0,
    seed: int = 0,
) -> np.ndarray:
    """A board of (cols+1)x(rows+1) squares with a white margin, 3x3 supersampled, blurred and noisy."""
    w, h = size_px
    cx, cy = centre_px if centre_px is not None else (w / 2, h / 2)
    ss = 3
    xs = ((np.arange(w * ss, dtype=np.float64) + 0.5) / ss - cx)[None, :]
    ys = ((np.arange(h * ss, dtype=np.float64) + 0.5) / ss - cy)[:, None]
    a = math.radians(angle_deg)
    nx, ny = pattern[0] + 1, pattern[1] + 1
    # Board squares, origin at the board's corner.
    k = mm_per_px / square_mm
    iu = np.floor(xs * (k * math.cos(a)) + ys * (k * math.sin(a)) + nx / 2)
    iv = np.floor(xs * (-k * math.sin(a)) + ys * (k * math.cos(a)) + ny / 2)
    black = (iu >= 0) & (iu < nx) & (iv >= 0) & (iv < ny) & ((iu + iv) % 2 == 0)
    fine = np.where(black, np.float32(30.0), np.float32(220.0))
    img = cv2.resize(fine, (w, h), interpolation=cv2.INTER_AREA)
    if blur_px > 0:
        img = cv2.GaussianBlur(img, (0, 0), blur_px)
    noisy = np.asarray(img, dtype=np.float32) + np.random.default_rng(seed).normal(0.0, noise, size=img.shape)
    out = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    out.flags.writeable = False  # cached: shared between tests
    return out


def test_single_view_recovers_the_scale_within_half_a_percent() -> None:
    img = render_checkerboard()
    scale = PixelScale.from_checkerboard([img], square_mm=SQUARE_MM, pattern=PATTERN)
    error_pct = 100.0 * abs(scale.mm_per_px / MM_PER_PX - 1.0)
    assert error_pct < 0.5, f"scale error {error_pct:.3f}%"
    assert scale.method == "checkerboard" and scale.n_views == 1
    assert scale.residual_px is not None and scale.residual_px < 0.3
    assert scale.anisotropy_pct is not None and scale.anisotropy_pct < 0.5
    assert scale.camera_matrix is None
    assert scale.warnings() == []


def test_rgb_and_16_bit_views_work_too() -> None:
    img = render_checkerboard(angle_deg=-4.0, seed=1)
    rgb = np.repeat(img[..., None], 3, axis=2)
    scale = PixelScale.from_checkerboard([rgb], square_mm=SQUARE_MM, pattern=PATTERN)
    assert abs(scale.mm_per_px / MM_PER_PX - 1.0) < 0.005
    corners16 = find_checkerboard(img.astype(np.uint16) * 16, pattern=PATTERN)
    assert corners16.shape == (54, 2)


def test_several_views_fit_the_lens_and_still_recover_the_scale() -> None:
    views = [
        render_checkerboard(centre_px=c, angle_deg=a, seed=i)
        for i, (c, a) in enumerate((((400, 300), 1.0), ((460, 340), -3.0), ((430, 320), 5.0)))
    ]
    scale = PixelScale.from_checkerboard(views, square_mm=SQUARE_MM, pattern=PATTERN)
    assert scale.n_views == 3 and scale.camera_matrix is not None and scale.dist_coeffs is not None
    assert abs(scale.mm_per_px / MM_PER_PX - 1.0) < 0.005
    assert scale.reprojection_error_px is not None and scale.reprojection_error_px < 0.3
    # No distortion was rendered: undistorting barely moves anything.
    assert np.abs(scale.undistort(views[0]).astype(int) - views[0]).mean() < 2.0


def test_lens_distortion_is_fitted_from_several_views() -> None:
    # Barrel distortion (k1 -0.25 at f 900 px): a single view misreads the scale and warns.
    w, h = 860, 640
    k = np.array([[900.0, 0.0, w / 2], [0.0, 900.0, h / 2], [0.0, 0.0, 1.0]])
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1).reshape(-1, 1, 2)
    src = cv2.undistortPoints(grid, k, np.array([-0.25, 0.05, 0.0, 0.0, 0.0]), P=k).reshape(h, w, 2)
    mm_per_px = 1.2 * MM_PER_PX
    views = [
        cv2.remap(
            np.array(render_checkerboard(centre_px=c, angle_deg=a, seed=i, mm_per_px=mm_per_px)),
            np.ascontiguousarray(src[..., 0]),
            np.ascontiguousarray(src[..., 1]),
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        for i, (c, a) in enumerate((((380, 290), 1.0), ((480, 350), -3.0), ((430, 320), 5.0)))
    ]
    one = PixelScale.from_checkerboard(views[:1], square_mm=SQUARE_MM, pattern=PATTERN)
    assert abs(one.mm_per_px / mm_per_px - 1.0) > 0.005
    assert any("corner residual" in w for w in one.warnings())
    three = PixelScale.from_checkerboard(views, square_mm=SQUARE_MM, pattern=PATTERN)
    assert abs(three.mm_per_px / mm_per_px - 1.0) < 0.005
    assert three.residual_px is not None and three.residual_px < 0.2
    assert three.dist_coeffs is not None and three.dist_coeffs[0] < -0.05  # barrel found


def test_a_tilted_camera_raises_the_residual_warning() -> None:
    img = render_checkerboard(blur_px=0.8)
    h, w = img.shape
    # Strong perspective: the far edge of the board 20% narrower.
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32)
    dst = np.array([[0.1 * w, 0], [0.9 * w, 0], [w, h], [0, h]], dtype=np.float32)
    tilted = cv2.warpPerspective(img, cv2.getPerspectiveTransform(src, dst), (w, h), borderValue=220)
    scale = PixelScale.from_checkerboard([tilted], square_mm=SQUARE_MM, pattern=PATTERN)
    assert any("corner residual" in w for w in scale.warnings())


def test_two_points_and_areas() -> None:
    scale = PixelScale.from_points(p1_px=(100.0, 200.0), p2_px=(1100.0, 200.0), distance_mm=73.4)
    assert scale.mm_per_px == pytest.approx(0.0734)
    assert scale.area_mm2(1000) == pytest.approx(1000 * 0.0734**2)
    assert scale.length_mm(10) == pytest.approx(0.734)
    assert scale.uncertainty_pct == pytest.approx(100 * math.sqrt(2) * 0.5 / 1000)
    with pytest.raises(CalibrationError, match="far apart"):
        PixelScale.from_points(p1_px=(5.0, 5.0), p2_px=(5.2, 5.0), distance_mm=1.0)
    with pytest.raises(CalibrationError, match="positive length"):
        PixelScale.from_points(p1_px=(0.0, 0.0), p2_px=(100.0, 0.0), distance_mm=-1.0)


def test_save_load_round_trip(tmp_path: Path) -> None:
    views = [
        render_checkerboard(centre_px=(420 + 10 * i, 310 + 10 * i), angle_deg=2.0 * i, seed=i)
        for i in range(3)
    ]
    scale = PixelScale.from_checkerboard(views, square_mm=SQUARE_MM, pattern=PATTERN)
    back = PixelScale.load(scale.save(tmp_path / "scale.npz"))
    assert back.to_dict() == scale.to_dict()
    assert back.camera_matrix is not None and scale.camera_matrix is not None
    np.testing.assert_array_equal(back.camera_matrix, scale.camera_matrix)
    pts = PixelScale.from_points(p1_px=(0.0, 0.0), p2_px=(300.0, 400.0), distance_mm=50.0)
    assert PixelScale.load(pts.save(tmp_path / "points.npz")).mm_per_px == pytest.approx(0.1)


def test_missing_board_and_bad_patterns_say_what_to_check() -> None:
    blank = np.full((300, 400), 128, np.uint8)
    with pytest.raises(CalibrationError, match=r"no 9x6 checkerboard found in board\.png: check --pattern"):
        PixelScale.from_checkerboard([blank], square_mm=5.0, pattern=(9, 6), names=["board.png"])
    assert parse_pattern("9x6") == (9, 6)
    for bad in ("9-6", "6x6", "2x5"):
        with pytest.raises(CalibrationError, match="pattern"):
            parse_pattern(bad)
    with pytest.raises(CalibrationError, match="differ in size"):
        PixelScale.from_checkerboard([blank, blank[:200]], square_mm=5.0, pattern=(9, 6))


def test_settings_keep_one_source_of_scale() -> None:
    with pytest.raises(ValueError, match="both set"):
        ScaleSettings(path=Path("s.npz"), mm_per_px=0.1)
    assert PixelScale.from_settings(ScaleSettings()) is None
    manual = PixelScale.from_settings(ScaleSettings(mm_per_px=0.05))
    assert manual is not None and manual.method == "manual" and manual.area_mm2(4) == pytest.approx(0.01)
