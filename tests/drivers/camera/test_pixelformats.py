"""Pixel format conversion: every supported PFNC format against a known image."""

from __future__ import annotations

import numpy as np
import pytest

from drivers.camera.pixelformats import (
    SUPPORTED_PIXEL_FORMATS,
    bayer_mosaic,
    frame_size_bytes,
    to_array,
)
from drivers.errors import CameraError

RNG = np.random.default_rng(7)


def _pack_lsb_first(values: np.ndarray, bits: int) -> bytes:
    """Pack integers into a PFNC "p" bit stream the slow, obvious way."""
    stream = 0
    for i, v in enumerate(values.reshape(-1).tolist()):
        stream |= int(v) << (i * bits)
    n_bytes = (values.size * bits + 7) // 8
    return stream.to_bytes(n_bytes, "little")


def test_mono8_is_a_view_of_the_buffer() -> None:
    img = RNG.integers(0, 256, (6, 10), dtype=np.uint8)
    raw = np.ascontiguousarray(img).reshape(-1)
    out = to_array(raw, width_px=10, height_px=6, pixel_format="Mono8")
    assert out.dtype == np.uint8 and out.shape == (6, 10)
    np.testing.assert_array_equal(out, img)
    assert np.shares_memory(out, raw)


@pytest.mark.parametrize(("fmt", "max_value"), [("Mono10", 1023), ("Mono12", 4095), ("Mono16", 65535)])
def test_mono_16bit_containers_little_endian(fmt: str, max_value: int) -> None:
    img = RNG.integers(0, max_value + 1, (5, 7), dtype=np.uint16)
    raw = img.astype("<u2").tobytes()
    out = to_array(raw, width_px=7, height_px=5, pixel_format=fmt)
    assert out.dtype == np.uint16 and out.shape == (5, 7)
    np.testing.assert_array_equal(out, img)
    # Little-endian: the first byte is the low byte of the first pixel.
    assert raw[0] == img[0, 0] & 0xFF


@pytest.mark.parametrize(("fmt", "bits"), [("Mono10p", 10), ("Mono12p", 12)])
@pytest.mark.parametrize("width", [8, 7])
def test_mono_packed(fmt: str, bits: int, width: int) -> None:
    img = RNG.integers(0, 2**bits, (3, width), dtype=np.uint16)
    img[0, 0] = 2**bits - 1
    raw = _pack_lsb_first(img, bits)
    assert len(raw) == frame_size_bytes(width_px=width, height_px=3, pixel_format=fmt)
    out = to_array(raw, width_px=width, height_px=3, pixel_format=fmt)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, img)


def test_rgb_and_bgr_orders() -> None:
    rgb = RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    out = to_array(rgb.tobytes(), width_px=5, height_px=4, pixel_format="RGB8")
    np.testing.assert_array_equal(out, rgb)
    bgr = rgb[..., ::-1].copy()
    out = to_array(bgr.tobytes(), width_px=5, height_px=4, pixel_format="BGR8")
    np.testing.assert_array_equal(out, rgb)
    rgba = np.concatenate([rgb, np.full((4, 5, 1), 9, np.uint8)], axis=2)
    out = to_array(rgba.tobytes(), width_px=5, height_px=4, pixel_format="RGBa8")
    assert out.shape == (4, 5, 3)
    np.testing.assert_array_equal(out, rgb)
    bgra = np.concatenate([bgr, np.full((4, 5, 1), 9, np.uint8)], axis=2)
    out = to_array(bgra.tobytes(), width_px=5, height_px=4, pixel_format="BGRa8")
    np.testing.assert_array_equal(out, rgb)


def test_padded_lines_are_skipped() -> None:
    img = RNG.integers(0, 256, (3, 4), dtype=np.uint8)
    padded = np.zeros((3, 6), np.uint8)
    padded[:, :4] = img
    padded[:, 4:] = 77
    out = to_array(padded.tobytes(), width_px=4, height_px=3, pixel_format="Mono8", stride_bytes=6)
    np.testing.assert_array_equal(out, img)
    wide = np.zeros((3, 8), np.uint16)
    wide[:, :4] = img
    out16 = to_array(
        wide.astype("<u2").tobytes(), width_px=4, height_px=3, pixel_format="Mono16", stride_bytes=16
    )
    np.testing.assert_array_equal(out16, img)


# Six flat patches, far from each other in every channel, each 16x16 px so the
# demosaic interpolation has a clean interior to check.
PATCHES = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 180, 40), (40, 160, 220), (128, 128, 128)]


def _patch_image() -> np.ndarray:
    img = np.zeros((32, 48, 3), np.uint8)
    for i, colour in enumerate(PATCHES):
        y, x = divmod(i, 3)
        img[y * 16 : (y + 1) * 16, x * 16 : (x + 1) * 16] = colour
    return img


@pytest.mark.parametrize("pattern", ["RG", "GR", "BG", "GB"])
def test_bayer_demosaic_recovers_flat_colours(pattern: str) -> None:
    rgb = _patch_image()
    mosaic = bayer_mosaic(rgb, pattern=pattern)
    out = to_array(mosaic.tobytes(), width_px=48, height_px=32, pixel_format=f"Bayer{pattern}8")
    assert out.shape == (32, 48, 3) and out.dtype == np.uint8
    for i, colour in enumerate(PATCHES):
        y, x = divmod(i, 3)
        interior = out[y * 16 + 4 : (y + 1) * 16 - 4, x * 16 + 4 : (x + 1) * 16 - 4].reshape(-1, 3)
        np.testing.assert_allclose(interior.mean(axis=0), colour, atol=2, err_msg=f"Bayer{pattern}8 {colour}")


def test_bayer_mosaic_layout_matches_genicam_names() -> None:
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 1, 2, 3  # R=1, G=2, B=3 everywhere
    assert bayer_mosaic(rgb, pattern="RG").tolist() == [[1, 2], [2, 3]]
    assert bayer_mosaic(rgb, pattern="GR").tolist() == [[2, 1], [3, 2]]
    assert bayer_mosaic(rgb, pattern="BG").tolist() == [[3, 2], [2, 1]]
    assert bayer_mosaic(rgb, pattern="GB").tolist() == [[2, 3], [1, 2]]


def test_unknown_format_names_the_supported_ones() -> None:
    with pytest.raises(CameraError, match=r"YUV422_8.*Mono8"):
        to_array(b"\0" * 16, width_px=2, height_px=2, pixel_format="YUV422_8")
    assert "BayerRG8" in SUPPORTED_PIXEL_FORMATS


def test_short_buffer_is_a_camera_error() -> None:
    with pytest.raises(CameraError, match="needs 12"):
        to_array(b"\0" * 8, width_px=4, height_px=3, pixel_format="Mono8")
