"""Flat-field: a known vignette and dark offset are removed within 2%; shapes, dtypes and the
artefact store (atomic .npz + YAML sidecar, checked on load) behave."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from calibration.errors import CalibrationError
from calibration.flatfield import FlatField, FlatFieldSettings
from calibration.store import load_artefact, save_artefact, sidecar_path

H, W = 360, 480


def _vignette(*, strength: float, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    """Radial fall-off 1 - strength * (r / r_corner)^2: 1 at the centre."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    r2 = ((xx - shape[1] / 2) ** 2 + (yy - shape[0] / 2) ** 2) / ((shape[1] / 2) ** 2 + (shape[0] / 2) ** 2)
    return 1.0 - strength * r2


def _dark_pattern(rng: np.random.Generator, *, level: float, shape: tuple[int, ...]) -> np.ndarray:
    """A dark offset with fixed-pattern noise, as a real sensor has."""
    return level + rng.uniform(-2.0, 2.0, shape)


def _capture(expected: np.ndarray, rng: np.random.Generator, *, noise: float, dtype: type) -> np.ndarray:
    top = np.iinfo(dtype).max
    return np.clip(np.rint(expected + rng.normal(0.0, noise, expected.shape)), 0, top).astype(dtype)


def test_vignetted_frame_is_corrected_within_2_percent_everywhere() -> None:
    rng = np.random.default_rng(1)
    vignette = _vignette(strength=0.4)
    dark = _dark_pattern(rng, level=16.0, shape=(H, W))
    flats = [_capture(dark + 200.0 * vignette, rng, noise=2.0, dtype=np.uint8) for _ in range(32)]
    darks = [_capture(dark, rng, noise=1.0, dtype=np.uint8) for _ in range(32)]
    ff = FlatField.from_captures(flats=flats, darks=darks)
    assert 35.0 < ff.stats["falloff_pct"] <= 40.0  # 40% at the very corner, smoothed over 1/32 blocks

    # A uniform grey target at another light level: flat after correction, at the level the flat's
    # mean fall-off gives it (160 * mean(vignette)); 8-bit rounding alone is up to ~0.9% there.
    grey = _capture(dark + 160.0 * vignette, rng, noise=0.0, dtype=np.uint8)
    out = ff.apply(grey)
    assert out.dtype == np.uint8 and out.shape == grey.shape
    level = 160.0 * vignette.mean()
    uniform_error = np.abs(out.astype(np.float64) - level) / level
    assert uniform_error.max() < 0.02, f"max non-uniformity {100 * uniform_error.max():.2f}%"
    before = np.abs(grey.astype(np.float64) - np.median(grey)) / np.median(grey)
    assert before.max() > 0.25  # the raw frame really was vignetted


def test_vignetted_scene_is_corrected_within_2_percent_everywhere() -> None:
    # 12-bit data in a 16-bit container, so that rounding does not hide the correction's own error.
    rng = np.random.default_rng(4)
    vignette = _vignette(strength=0.4)
    dark = 16.0 * _dark_pattern(rng, level=16.0, shape=(H, W))
    flats = [_capture(dark + 3200.0 * vignette, rng, noise=40.0, dtype=np.uint16) for _ in range(32)]
    darks = [_capture(dark, rng, noise=16.0, dtype=np.uint16) for _ in range(32)]
    ff = FlatField.from_captures(flats=flats, darks=darks)
    yy, xx = np.mgrid[0:H, 0:W]
    scene = 16.0 * (100.0 + 100.0 * (((xx // 24) + (yy // 24)) % 2) + 30.0 * np.sin(xx / 17.0))
    out = ff.apply(_capture(dark + scene * vignette, rng, noise=0.0, dtype=np.uint16)).astype(np.float64)
    expected = scene * vignette.mean()
    scene_error = np.abs(out - expected) / expected
    assert scene_error.max() < 0.02, f"max scene error {100 * scene_error.max():.2f}%"


def test_rgb16_per_channel_vignette_without_darks() -> None:
    rng = np.random.default_rng(2)
    falloff = np.stack([_vignette(strength=s) for s in (0.2, 0.3, 0.5)], axis=-1)
    flats = [_capture(40000.0 * falloff, rng, noise=50.0, dtype=np.uint16) for _ in range(8)]
    ff = FlatField.from_captures(flats=flats, darks=None)
    assert ff.offset is None and ff.shape == (H, W, 3)
    frame = _capture(30000.0 * falloff, rng, noise=0.0, dtype=np.uint16)
    out = ff.apply(frame)
    assert out.dtype == np.uint16
    for c in range(3):
        level = float(np.median(out[..., c]))
        assert np.abs(out[..., c] / level - 1.0).max() < 0.02
    # Channel means are kept (no white balancing by the flat-field).
    np.testing.assert_allclose(out.mean(axis=(0, 1)), frame.mean(axis=(0, 1)), rtol=0.01)


def test_smoothing_keeps_dust_on_the_flat_target_out_of_the_correction() -> None:
    vignette = _vignette(strength=0.3)
    flat = 200.0 * vignette
    for x, y in ((100, 80), (300, 200), (420, 330)):
        flat[y - 3 : y + 4, x - 3 : x + 4] *= 0.7  # dust specks on the target, not on the product
    flat_u8 = np.rint(flat).astype(np.uint8)
    grey = np.rint(150.0 * vignette).astype(np.uint8)
    sharp = FlatField.from_captures(flats=[flat_u8], darks=None).apply(grey).astype(np.float64)
    smooth = (
        FlatField.from_captures(flats=[flat_u8], darks=None, settings=FlatFieldSettings(smooth_px=12.0))
        .apply(grey)
        .astype(np.float64)
    )
    level = 150.0 * vignette.mean()
    assert sharp[80, 100] > 1.3 * level  # per-pixel gain stamps the speck onto every frame
    assert np.abs(smooth / level - 1.0).max() < 0.05  # smoothed: only a faint halo of the speck


def test_apply_saturates_instead_of_wrapping() -> None:
    ff = FlatField(gain=np.full((4, 4), 2.0, np.float32), offset=np.full((4, 4), 10.0, np.float32))
    img = np.array([[5, 100, 200, 255]] * 4, dtype=np.uint8)
    np.testing.assert_array_equal(ff.apply(img)[0], [0, 180, 255, 255])
    np.testing.assert_allclose(ff.apply(img.astype(np.float32))[0], [-10.0, 180.0, 380.0, 490.0])
    # HxWx1 frames (a mono camera's Frame may carry a channel axis) keep their shape.
    ff1 = FlatField(gain=np.full((4, 4, 1), 2.0, np.float32), offset=np.full((4, 4, 1), 10.0, np.float32))
    out1 = ff1.apply(img[..., None])
    assert out1.shape == (4, 4, 1) and out1[0, :, 0].tolist() == [0, 180, 255, 255]


def test_dead_pixels_are_left_alone_and_gain_is_capped() -> None:
    flat = np.full((20, 20), 200, np.uint8)
    flat[3, 4] = 0  # dead pixel: no signal, cannot be corrected
    flat[10, 10] = 20  # very dim: capped at max_gain
    ff = FlatField.from_captures(flats=[flat], darks=None, settings=FlatFieldSettings(max_gain=3.0))
    assert ff.gain[3, 4] == pytest.approx(1.0)
    assert ff.gain[10, 10] == pytest.approx(3.0)
    assert ff.stats["uncorrectable_fraction"] == pytest.approx(1 / 400)


def test_shape_mismatch_names_both_shapes() -> None:
    ff = FlatField.from_captures(flats=[np.full((10, 12), 100, np.uint8)], darks=None)
    with pytest.raises(CalibrationError, match=r"\(10, 12, 3\).*\(10, 12\)"):
        ff.apply(np.zeros((10, 12, 3), np.uint8))
    with pytest.raises(CalibrationError, match=r"\(10, 12\).*\(8, 12\)"):
        FlatField.from_captures(flats=[np.full((8, 12), 100, np.uint8)], darks=[np.zeros((10, 12), np.uint8)])
    with pytest.raises(CalibrationError, match=r"frame 1 has shape \(9, 12\)"):
        FlatField.from_captures(
            flats=[np.full((8, 12), 100, np.uint8), np.full((9, 12), 100, np.uint8)], darks=None
        )


def test_bad_captures_are_refused_with_the_fix() -> None:
    with pytest.raises(CalibrationError, match="no flat frames"):
        FlatField.from_captures(flats=[], darks=None)
    with pytest.raises(CalibrationError, match="saturated"):
        FlatField.from_captures(flats=[np.full((8, 8), 255, np.uint8)], darks=None)
    with pytest.raises(CalibrationError, match="not brighter than the darks"):
        FlatField.from_captures(flats=[np.full((8, 8), 10, np.uint8)], darks=[np.full((8, 8), 12, np.uint8)])


def test_save_load_round_trip_writes_npz_and_sidecar(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    flats = [_capture(100.0 * _vignette(strength=0.3, shape=(30, 40)), rng, noise=1.0, dtype=np.uint8)]
    darks = [np.full((30, 40), 5, np.uint8)]
    ff = FlatField.from_captures(flats=flats, darks=darks)
    path = ff.save(tmp_path / "flat.npz")
    meta = yaml.safe_load(sidecar_path(path).read_text())
    assert meta["kind"] == "flatfield" and meta["stats"]["n_flats"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    back = FlatField.load(path)
    np.testing.assert_array_equal(back.gain, ff.gain)
    assert back.offset is not None and ff.offset is not None
    np.testing.assert_array_equal(back.offset, ff.offset)
    img = flats[0]
    np.testing.assert_array_equal(back.apply(img), ff.apply(img))


def test_store_refuses_wrong_kind_tampering_missing_files_and_pickles(tmp_path: Path) -> None:
    path = save_artefact(tmp_path / "a.npz", kind="flatfield", arrays={"gain": np.ones((2, 2))}, meta={})
    with pytest.raises(CalibrationError, match="holds a 'flatfield' calibration, not 'pixel_scale'"):
        load_artefact(path, kind="pixel_scale")
    with pytest.raises(CalibrationError, match=r"missing\.npz not found: make it with `aoi calibrate scale"):
        load_artefact(tmp_path / "missing.npz", kind="pixel_scale")
    with pytest.raises(CalibrationError, match=r"must end in \.npz"):
        save_artefact(tmp_path / "a.yaml", kind="flatfield", arrays={}, meta={})
    with pytest.raises(CalibrationError, match="not a plain numeric array"):
        save_artefact(
            tmp_path / "b.npz", kind="flatfield", arrays={"x": np.array([{}], dtype=object)}, meta={}
        )
    # An .npz from another run (or edited) no longer matches its sidecar.
    np.savez(path, gain=np.zeros((2, 2)))
    with pytest.raises(CalibrationError, match="checksum differs"):
        load_artefact(path, kind="flatfield")
    sidecar_path(path).unlink()
    with pytest.raises(CalibrationError, match=r"has no sidecar a\.yaml"):
        load_artefact(path, kind="flatfield")


def test_settings_are_strict_and_documented() -> None:
    with pytest.raises(ValueError, match=r"flatfield\.path is not set"):
        FlatFieldSettings(enabled=True)
    with pytest.raises(ValueError, match="extra"):
        FlatFieldSettings(gain_limit=3)  # type: ignore[call-arg]
    for name, field in FlatFieldSettings.model_fields.items():
        assert field.description, name
