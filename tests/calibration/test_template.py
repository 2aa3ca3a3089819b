"""Golden-template alignment: a printed part shifted and turned by a known amount is brought back
within 0.5 px and 0.1 deg; something else fails with a reason instead of raising."""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from calibration.errors import CalibrationError
from calibration.template import GoldenTemplate, TemplateSettings

H, W = 880, 640  # the 2624x1913 portrait frame's aspect, smaller for speed
MARGIN = 120


@functools.lru_cache(maxsize=4)
def render_world(*, seed: int, height_px: int = H, width_px: int = W, margin_px: int = MARGIN) -> np.ndarray:
    """An inkjet-print-like RGB page (blocks, discs, lines and lot numbers on paper), with a margin
    around the frame so that a shifted or turned frame never runs out of print."""
    rng = np.random.default_rng(seed)
    hh, ww = height_px + 2 * margin_px, width_px + 2 * margin_px
    img = np.full((hh, ww, 3), 235, np.uint8)
    s = max(hh, ww) / 1000.0
    for _ in range(70):
        x, y = int(rng.integers(0, ww)), int(rng.integers(0, hh))
        colour = tuple(int(c) for c in rng.integers(0, 200, 3))
        kind = int(rng.integers(0, 4))
        if kind == 0:
            size = (int(rng.integers(20, 150) * s), int(rng.integers(20, 150) * s))
            cv2.rectangle(img, (x, y), (x + size[0], y + size[1]), colour, -1)
        elif kind == 1:
            cv2.circle(img, (x, y), int(rng.integers(10, 80) * s), colour, -1, cv2.LINE_AA)
        elif kind == 2:
            end = (int(rng.integers(0, ww)), int(rng.integers(0, hh)))
            cv2.line(img, (x, y), end, colour, max(1, int(3 * s)), cv2.LINE_AA)
        else:
            text = f"LOT {int(rng.integers(0, 9999)):04d}"
            cv2.putText(
                img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 1.2 * s, colour, max(1, int(2 * s)), cv2.LINE_AA
            )
    img.flags.writeable = False
    return img


def capture(
    world: np.ndarray,
    *,
    dx: float = 0.0,
    dy: float = 0.0,
    angle_deg: float = 0.0,
    noise: float = 3.0,
    seed: int = 0,
) -> np.ndarray:
    """The frame a camera sees when the part is shifted by (dx, dy) and turned counter-clockwise by
    angle_deg about the frame centre: frame(W(x)) = golden(x), W = rotation about the centre + shift."""
    h, w = world.shape[0] - 2 * MARGIN, world.shape[1] - 2 * MARGIN
    centre = ((w - 1) / 2.0, (h - 1) / 2.0)
    fwd = np.vstack([cv2.getRotationMatrix2D(centre, angle_deg, 1.0), [0.0, 0.0, 1.0]])
    fwd[:2, 2] += (dx, dy)
    # frame px -> golden px (inverse of W) -> world px (+ margin).
    inv = np.linalg.inv(fwd)[:2]
    inv[:, 2] += MARGIN
    frame = cv2.warpAffine(world, inv, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    rng = np.random.default_rng(seed)
    noisy = np.asarray(frame, dtype=np.float32) + rng.normal(0.0, noise, size=frame.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=1)
def golden() -> GoldenTemplate:
    return GoldenTemplate.create(capture(render_world(seed=0), seed=100))


@pytest.mark.parametrize(
    ("dx", "dy", "angle_deg"),
    [(13.4, -7.8, 1.7), (-41.25, 25.6, -3.35), (0.3, 0.2, 0.05)],
)
def test_shift_and_rotation_are_recovered(dx: float, dy: float, angle_deg: float) -> None:
    world = render_world(seed=0)
    frame = capture(world, dx=dx, dy=dy, angle_deg=angle_deg, seed=1)
    result = golden().align(frame)
    assert result.ok, result.reason
    shift_error = math.hypot(result.shift_px[0] - dx, result.shift_px[1] - dy)
    rotation_error = abs(result.rotation_deg - angle_deg)
    assert shift_error < 0.5, f"shift {result.shift_px} vs ({dx}, {dy})"
    assert rotation_error < 0.1, f"rotation {result.rotation_deg} vs {angle_deg}"
    assert result.residual_px < 0.5
    assert result.correlation > 0.9
    # The aligned frame is the template's geometry: it matches the golden part inside the borders.
    assert result.aligned is not None and result.aligned.shape == frame.shape
    target = capture(world, noise=0.0)
    inner = (slice(60, H - 60), slice(60, W - 60))
    diff = np.abs(result.aligned[inner].astype(np.int16) - target[inner]).mean()
    raw = np.abs(frame[inner].astype(np.int16) - target[inner]).mean()
    assert diff < 6.0
    if math.hypot(dx, dy) > 5.0:
        assert raw > 10.0  # and it did not before


def test_grey_and_16_bit_frames_align() -> None:
    world = render_world(seed=0)
    grey16 = cv2.cvtColor(capture(world, dx=5.5, dy=-3.0, angle_deg=1.0, seed=2), cv2.COLOR_RGB2GRAY)
    grey16 = grey16.astype(np.uint16) * 257
    template = GoldenTemplate.create(
        cv2.cvtColor(capture(world, seed=3), cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257
    )
    result = template.align(grey16)
    assert result.ok, result.reason
    assert result.aligned is not None and result.aligned.dtype == np.uint16 and result.aligned.ndim == 2
    assert abs(result.shift_px[0] - 5.5) < 0.5 and abs(result.rotation_deg - 1.0) < 0.1
    with_axis = template.align(grey16[..., None])  # HxWx1 stays HxWx1
    assert with_axis.ok and with_axis.aligned is not None and with_axis.aligned.shape == (H, W, 1)


def test_something_else_fails_with_a_reason() -> None:
    for seed in (7, 8):
        result = golden().align(capture(render_world(seed=seed), seed=4))
        assert not result.ok and result.aligned is None
        assert result.reason.startswith("no match with the template (coarse correlation 0.0"), result.reason
    blank = golden().align(np.full((H, W, 3), 128, np.uint8))
    assert not blank.ok and blank.reason.startswith("no match")
    # With the coarse gate open, ECC's correlation (or its failing to converge) still refuses it.
    lax = GoldenTemplate(
        grey=golden().grey,
        frame_shape=golden().shape,
        patches=golden().patches,
        downscale=golden().downscale,
        ecc_scale=golden().ecc_scale,
        settings=TemplateSettings(min_match=0.0),
    )
    result = lax.align(capture(render_world(seed=7), seed=4))
    assert not result.ok
    assert any(
        k in result.reason for k in ("correlation", "did not converge", "residual", "position", "rotation")
    )


def test_limits_turn_a_good_alignment_into_a_reasoned_failure() -> None:
    frame = capture(render_world(seed=0), dx=40.0, dy=30.0, angle_deg=2.0, seed=5)
    tight = GoldenTemplate(
        grey=golden().grey,
        frame_shape=golden().shape,
        patches=golden().patches,
        downscale=golden().downscale,
        ecc_scale=golden().ecc_scale,
        settings=TemplateSettings(max_shift_px=20.0),
    )
    result = tight.align(frame)
    assert not result.ok and re.search(r"out of position: shift 5\d px > 20 px limit", result.reason)
    wrong_size = golden().align(np.zeros((100, 80, 3), np.uint8))
    assert not wrong_size.ok and "80x100 px does not match the template's 640x880 px" in wrong_size.reason


def test_save_load_round_trip(tmp_path: Path) -> None:
    path = golden().save(tmp_path / "golden.npz")
    back = GoldenTemplate.load(path, settings=TemplateSettings(max_residual_px=1.0))
    assert back.shape == (H, W, 3) and back.settings.max_residual_px == 1.0
    frame = capture(render_world(seed=0), dx=-9.0, dy=4.0, angle_deg=-0.7, seed=6)
    a, b = golden().align(frame), back.align(frame)
    assert a.ok and b.ok
    assert a.shift_px == pytest.approx(b.shift_px) and a.rotation_deg == pytest.approx(b.rotation_deg)


def test_a_blank_golden_frame_is_refused() -> None:
    with pytest.raises(CalibrationError, match="too little texture"):
        GoldenTemplate.create(np.full((400, 300), 200, np.uint8))
    with pytest.raises(CalibrationError, match="downscale"):
        GoldenTemplate.create(capture(render_world(seed=0)), downscale=0.5, ecc_scale=0.25)
