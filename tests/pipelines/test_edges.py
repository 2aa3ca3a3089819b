"""Edge gains (`pipelines/edges.py`): the bands of distance from the frame's edge, the fit on good
images, and that calibration's one pass over the good images predicts exactly what the analyser
gives once the gains are set."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from calibration.threshold import BadImages, GoodImages, PixelSamples, sample_map_pixels
from pipelines.bundle import Calibration
from pipelines.edges import (
    BANDS_PX,
    MIN_VALUES,
    EdgeFit,
    apply_gains,
    band_maxima,
    band_slices,
    check_bands,
    scaled_max,
)
from pipelines.training import first_calibration
from tests.pipelines.red_channel import red_analyser


def _band_index(h: int, w: int, bands: tuple[int, ...]) -> np.ndarray:
    y, x = np.arange(h)[:, None], np.arange(w)[None, :]
    d = np.minimum(np.minimum(y, h - 1 - y), np.minimum(x, w - 1 - x))
    return np.searchsorted(np.asarray(bands), d, side="right") - 1


@pytest.mark.parametrize("shape", [(64, 64), (70, 33), (5, 9), (1, 40), (100, 161)])
def test_band_rectangles_partition_the_frame_by_distance_from_its_edge(shape: tuple[int, int]) -> None:
    h, w = shape
    truth = _band_index(h, w, BANDS_PX)
    seen = np.full((h, w), -1)
    ends = [*BANDS_PX[1:], None]
    for k, (lo, hi) in enumerate(zip(BANDS_PX, ends, strict=True)):
        for rows, cols in band_slices(h, w, lo, hi):
            assert (seen[rows, cols] == -1).all(), "bands overlap"
            seen[rows, cols] = k
    assert (seen == truth).all()


def test_gains_scale_each_band_and_the_band_maxima_predict_the_scaled_maximum() -> None:
    rng = np.random.default_rng(0)
    m = rng.random((90, 120)).astype(np.float32)
    gains = (0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    scaled = apply_gains(m.copy(), gains, BANDS_PX)
    band = _band_index(90, 120, BANDS_PX)
    np.testing.assert_allclose(scaled, m * np.asarray(gains, np.float32)[band], rtol=1e-6)
    fit = EdgeFit()
    band_max = fit.add(m)
    assert band_max.tolist() == pytest.approx([float(m[band == k].max()) for k in range(len(BANDS_PX))])
    assert scaled_max(band_max, gains) == pytest.approx(float(scaled.max()))
    assert scaled_max(band_max, None) == pytest.approx(float(m.max()))


def test_the_fit_scales_hot_bands_down_to_the_interior_and_leaves_the_rest() -> None:
    rng = np.random.default_rng(1)
    fit = EdgeFit()
    hot = _band_index(200, 240, BANDS_PX) < 2  # the outer two rings (bands 0 and 1)
    for _ in range(12):
        m = rng.exponential(1.0, (200, 240)).astype(np.float32)
        m[hot] *= 3.0  # run three times hotter
        fit.add(m)
    gains = fit.gains()
    assert gains is not None and len(gains) == len(BANDS_PX)
    assert gains[0] == pytest.approx(1 / 3, rel=0.15) and gains[1] == pytest.approx(1 / 3, rel=0.15)
    assert all(g == 1.0 for g in gains[2:]), "bands no hotter than the interior keep gain 1"
    assert fit.details()["edge_pixels"][0] == 12 * 2 * (200 + 240 - 2)


def test_too_few_pixels_give_no_gains() -> None:
    fit = EdgeFit()
    fit.add(np.ones((64, 64), np.float32))  # no interior at all: every pixel lies within 32 px
    assert fit.gains() is None
    fit = EdgeFit()
    for _ in range(2):  # an interior, but band 0 has 2 * 2 * (160 + 160 - 2) < MIN_VALUES pixels
        m = np.ones((160, 160), np.float32)
        m[0] = 5.0
        fit.add(m)
    assert MIN_VALUES > 2 * 2 * 318
    assert fit.gains() == (1.0,) * len(BANDS_PX)


def test_bands_and_gains_are_validated() -> None:
    with pytest.raises(ValueError, match="start at 0 and increase strictly"):
        check_bands([1, 2])
    with pytest.raises(ValidationError, match="one per band"):
        Calibration(edge_gains=[0.5, 1.0])
    with pytest.raises(ValidationError, match=r"must lie in \(0, 1\]"):
        Calibration(edge_gains=[0.0, 1, 1, 1, 1, 1, 1])
    with pytest.raises(ValidationError, match="increase strictly"):
        Calibration(edge_bands_px=[0, 4, 4])
    assert Calibration().edge_gains == [] and Calibration().edge_bands_px == list(BANDS_PX)


def test_pixel_samples_scale_the_tile_samples_by_their_band() -> None:
    m = np.ones((40, 50), np.float32)
    samples = PixelSamples()
    samples.add(m, None, bands_px=(0, 1, 10))
    samples.add(m, None)  # no bands: left as it is (a bad image, already scaled)
    scaled, plain = samples.values(None, (0.5, 0.8, 1.0))
    band = _band_index(40, 50, (0, 1, 10)).ravel()  # 40 x 50 is sampled at stride 1
    np.testing.assert_allclose(scaled, np.array([0.5, 0.8, 1.0], np.float32)[band])
    assert (plain == 1.0).all()


def _frame(rng: np.random.Generator) -> np.ndarray:
    """A 160 x 176 RGB frame whose outer 3 px are much brighter than its inside."""
    img = rng.integers(0, 90, (160, 176, 3)).astype(np.uint8)
    img[:3] = rng.integers(0, 250, (3, 176, 3))
    img[-3:] = rng.integers(0, 250, (3, 176, 3))
    img[:, :3] = rng.integers(0, 250, (160, 3, 3))
    img[:, -3:] = rng.integers(0, 250, (160, 3, 3))
    return img


def test_one_pass_over_good_images_predicts_the_analyser_with_the_fitted_gains() -> None:
    """Calibration measures the good images once, without gains, and predicts their scores and
    sampled pixels with the gains it then fits; the analyser with those gains must agree."""
    analyser = red_analyser()
    rng = np.random.default_rng(2)
    frames = [_frame(rng) for _ in range(20)]
    goods = GoodImages(surface="on")
    for f in frames:
        goods.add(analyser(f))
    gains = goods.edge_gains()
    assert gains is not None
    assert gains[0] < 0.6 and gains[1] < 0.6 and gains[2] < 0.6, gains  # the bright 3 px
    assert gains[3:] == (1.0,) * (len(BANDS_PX) - 3)
    fusion = goods.fusion(target_frr=0.05)
    assert fusion.edge_gains == gains and fusion.alignment is None and fusion.surface is not None
    fields = fusion.calibration_fields()
    analyser.edge_gains = gains
    analyser.surface = (fields["surface_offset"], fields["surface_gain"])
    predicted = fusion.scores(goods)
    pixels = goods.pixel_values(fusion)
    surface_set = 0
    for f, (tile_score, branch), score, px in zip(
        frames, goods.parts_under(goods.edge_gains()), predicted, pixels, strict=True
    ):
        a = analyser(f)
        assert branch == float("-inf")
        assert a.tile_score == pytest.approx(tile_score, rel=1e-6)
        assert a.score == pytest.approx(score, rel=1e-6)
        surface_set += a.surface_score is not None and a.surface_score > a.tile_score
        np.testing.assert_allclose(px, sample_map_pixels(a.anomaly_map)[0], rtol=1e-6)
    assert surface_set  # the surface score set some good frames' scores, as predicted
    off = GoodImages(edges=False)
    off.add(analyser(frames[0]))
    assert off.edge_gains() is None and off.edge_details()["edge_fitted"] is False


def test_band_maxima_are_the_fits_per_band_maxima() -> None:
    m = np.random.default_rng(3).random((70, 90)).astype(np.float32)
    assert band_maxima(m, BANDS_PX).tolist() == EdgeFit().add(m).tolist()
    tiny = band_maxima(np.ones((5, 9), np.float32), BANDS_PX)  # bands beyond the middle are empty
    assert tiny[:3].tolist() == [1.0, 1.0, 1.0] and np.isneginf(tiny[3:]).all()


def _weighed(bad_frames: list[np.ndarray]) -> tuple[GoodImages, dict[str, object]]:
    """Good frames with a bright 3-px edge (gains fitted well below 1 there), half of them with a
    small bright speck inside; the bad frames weighed against them."""
    analyser = red_analyser()
    rng = np.random.default_rng(5)
    goods = GoodImages()
    for i in range(20):
        f = _frame(rng)
        if i % 2:
            f[80:83, 80:83] = 120
        goods.add(analyser(f))
    bads = BadImages()
    for f in bad_frames:
        bads.add(analyser(f))
    return goods, goods.weigh(bads, target_frr=0.05)


def _auroc(weighed: dict[str, object], *, gains: bool, surface: bool) -> float:
    """The weighed image AUROC of one option (edge gains on or off, surface score on or off)."""
    rows = weighed["weighed_options"]
    assert isinstance(rows, list)
    (row,) = [r for r in rows if r["edge_gains"] is gains and r["surface"] is surface]
    return float(row["auroc"])


def test_defective_images_keep_the_edge_gains_when_they_separate_better() -> None:
    rng = np.random.default_rng(6)
    bad = []
    for _ in range(6):  # a defect inside: the gains take the good edges' noise away from it
        f = _frame(rng)
        f[60:65, 90:95] = 200
        bad.append(f)
    goods, weighed = _weighed(bad)
    assert weighed["edge_gains_kept"] is True
    for surface in (True, False):
        assert _auroc(weighed, gains=True, surface=surface) == 1.0
        assert _auroc(weighed, gains=False, surface=surface) < 1.0
    assert _auroc(weighed, gains=False, surface=False) < 0.9
    gains = goods.edge_gains()
    assert gains is not None and gains[0] < 0.6
    assert goods.edge_details()["edge_gains_kept"] is True


def test_defective_images_drop_the_edge_gains_when_their_signal_is_at_the_edge() -> None:
    """Defective frames that differ from good ones only at the edge (brighter than any good edge):
    scaled down with the edge, they fall below the good frames' specks, so the gains go."""
    rng = np.random.default_rng(7)
    bad = []
    for _ in range(6):
        f = _frame(rng)
        f[:3], f[-3:], f[:, :3], f[:, -3:] = 255, 255, 255, 255
        bad.append(f)
    goods, weighed = _weighed(bad)
    assert weighed["edge_gains_kept"] is False
    for surface in (True, False):
        assert _auroc(weighed, gains=False, surface=surface) == 1.0
        assert _auroc(weighed, gains=True, surface=surface) < 0.9
    assert goods.edge_gains() is None
    assert all(
        t == float(m.max())
        for (t, _), m in zip(goods.parts_under(goods.edge_gains()), goods._band_max, strict=True)
    )
    assert goods.edge_details()["weighed_options"] == weighed["weighed_options"]


class _RedNet(torch.nn.Module):
    """A "network" whose map is the red channel (as `red_analyser`), for the training-side fit."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1].clone()


def test_training_fits_the_gains_on_held_out_frames_and_says_how_to_check_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rng = np.random.default_rng(8)
    held = [_frame(rng) for _ in range(20)]
    with caplog.at_level(logging.INFO, logger="pipelines.training"):
        cal = first_calibration(_RedNet(), None, held, tile_px=64, overlap_px=16)
    goods = GoodImages()
    analyser = red_analyser()
    for f in held:
        goods.add(analyser(f))
    assert cal["edge_gains"] == pytest.approx(list(goods.edge_gains() or ()))
    assert cal["edge_gains"][0] < 0.6 and cal["edge_bands_px"] == list(BANDS_PX)
    hint = [r.getMessage() for r in caplog.records if "edge gains" in r.getMessage()]
    assert len(hint) == 1 and "aoi calibrate" in hint[0] and "--bad" in hint[0] and "20 held-out" in hint[0]
    calm = [
        np.full((160, 176, 3), 40, np.uint8) + rng.integers(0, 30, (160, 176, 3)).astype(np.uint8)
        for _ in range(20)
    ]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pipelines.training"):
        flat = first_calibration(_RedNet(), None, calm, tile_px=64, overlap_px=16)
    assert not [r for r in caplog.records if "edge gains" in r.getMessage()]
    assert all(g == 1.0 for g in flat["edge_gains"])  # none fitted (empty) or all 1: no scaling
