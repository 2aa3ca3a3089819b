"""BVPN's peripheral summary statistics: a surface that differs all over, with no place that stands out."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from appliance.cli import main
from pipelines.inference import TiledAnalyser
from pipelines.models.base import GlobalBranch, GlobalResult
from pipelines.models.bvpn.model import WholeImage, build_global, whole_image
from pipelines.models.bvpn.peripheral import (
    STATS_PER_LEVEL,
    SummaryStatistics,
    fit_summary_statistics,
    ledoit_wolf,
    levels_for,
    summary_features,
)


def surface(seed: int, *, grain: float = 12.0, size: int = 160) -> np.ndarray:
    """A machined-looking grey surface: smooth shading plus fine grain of amplitude `grain`."""
    rng = np.random.default_rng(seed)
    x = np.mgrid[0:size, 0:size][1] / size
    base = 120 + 30 * np.sin(2 * np.pi * (x * rng.uniform(0.5, 1.5) + rng.uniform()))
    fine = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), 0.8)
    img = base + grain * fine / fine.std() + rng.normal(0, 1.0, (size, size))
    return np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


@pytest.fixture(scope="module")
def fitted() -> SummaryStatistics:
    return fit_summary_statistics([surface(s) for s in range(40)], [surface(s) for s in range(40, 50)])


def test_a_rougher_surface_is_beyond_every_good_one_and_a_good_one_is_not(fitted: SummaryStatistics) -> None:
    good = [fitted.unit_score(surface(s)) for s in range(100, 120)]
    rough = [fitted.unit_score(surface(s, grain=20.0)) for s in range(100, 120)]
    smooth = [fitted.unit_score(surface(s, grain=6.0)) for s in range(100, 120)]
    # held-out scale: median 0, maximum 1; unseen good surfaces stay near it
    assert np.median(good) < 0.5 and np.mean(np.array(good) > 1.0) <= 0.15
    assert min(rough) > max(good) and min(smooth) > max(good)


def test_a_sharp_local_defect_shows_in_the_band_tails(fitted: SummaryStatistics) -> None:
    """The kurtosis of a band sees a few pixels far out of its good spread: a spot is unlike every
    good surface too (the tile map says where it is)."""
    img = surface(200)
    spotted = img.copy()
    cv2.circle(spotted, (80, 80), 3, (20, 20, 20), -1)
    assert fitted.unit_score(img) < 1.0 < fitted.unit_score(spotted)


def test_features_and_levels() -> None:
    img = surface(0, size=200)
    assert levels_for(200, 200) == 5  # 200 - 2 * 25 = 150 px: 150 / 16 = 9 px at the 5th octave
    assert levels_for(64, 64) == 3  # 64 - 2 * 8 = 48 px: 12 px at the 3rd, 6 at a 4th (< 8)
    f = summary_features(img, 5)
    assert f.shape == (5 * STATS_PER_LEVEL,) and np.isfinite(f).all()
    # grey and colour frames of the same grey give the same statistics; a tiny frame still gives numbers
    assert np.allclose(summary_features(img[..., 0], 5), f)
    assert np.isfinite(summary_features(surface(1, size=6), 5)).all()


def test_ledoit_wolf_matches_the_formula_and_is_invertible_with_few_samples() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 5)) @ rng.normal(size=(5, 5))
    cov, a = ledoit_wolf(x)
    n, p = x.shape
    xc = x - x.mean(0)
    s = xc.T @ xc / n
    mu = np.trace(s) / p
    d2 = ((s - mu * np.eye(p)) ** 2).sum()
    b2 = sum(((np.outer(v, v) - s) ** 2).sum() for v in xc) / n**2
    expect = min(b2, d2) / d2
    assert a == pytest.approx(expect, rel=1e-9)
    assert np.allclose(cov, expect * mu * np.eye(p) + (1 - expect) * s)
    few, shrink = ledoit_wolf(rng.normal(size=(4, 25)))  # fewer images than statistics
    assert 0 < shrink <= 1 and np.linalg.eigvalsh(few).min() > 0


def test_bundle_round_trip_keeps_the_score(fitted: SummaryStatistics) -> None:
    fitted.align_to(np.array([0.2, 0.5, 0.9]))
    params, tensors = fitted.to_bundle()
    back = SummaryStatistics.from_bundle(params, tensors)
    img = surface(300, grain=18.0)
    assert back(img).score == pytest.approx(fitted(img).score, rel=1e-5)
    assert back(img).anomaly_map is None
    # the held-out median and maximum land on the tile score's
    lo, hi = fitted.score_q
    assert fitted.score_to.tolist() == [0.5, 0.9]
    assert lo < hi


def test_fit_needs_images() -> None:
    from pipelines.errors import ModelError

    with pytest.raises(ModelError, match="2 training and 1 held-out"):
        fit_summary_statistics([surface(0)], [surface(1)])


class _Constant(GlobalBranch):
    def __init__(self, score: float, with_map: bool) -> None:
        self.score, self.with_map = score, with_map

    def __call__(self, rgb: np.ndarray) -> GlobalResult:
        m = np.full(rgb.shape[:2], self.score / 2, np.float32) if self.with_map else None
        return GlobalResult(self.score, m)


def test_whole_image_takes_the_larger_score_and_the_map_there_is() -> None:
    rgb = surface(0, size=32)
    assert whole_image([]) is None
    one = _Constant(1.0, False)
    assert whole_image([one]) is one
    both = whole_image([_Constant(0.4, True), _Constant(1.5, False)])
    assert isinstance(both, WholeImage)
    r = both(rgb)
    assert r.score == 1.5 and r.anomaly_map is not None and float(r.anomaly_map.max()) == pytest.approx(0.2)
    assert WholeImage((_Constant(0.3, False), _Constant(0.7, False)))(rgb).anomaly_map is None


def test_a_branch_without_a_map_leaves_the_tile_map_as_it_is() -> None:
    tile = np.linspace(-1.0, 0.8, 64 * 64, dtype=np.float32).reshape(1, 1, 64, 64)

    def infer(x: np.ndarray) -> np.ndarray:
        return np.repeat(tile, len(x), axis=0)

    rgb = surface(0, size=64)
    plain = TiledAnalyser(infer, tile_px=64, overlap_px=0)(rgb)
    for score, expect in ((0.5, 0.8), (2.0, 2.0)):
        a = TiledAnalyser(infer, tile_px=64, overlap_px=0, global_branch=_Constant(score, False))(rgb)
        np.testing.assert_array_equal(a.anomaly_map, plain.anomaly_map)  # negatives are not lifted to 0
        assert a.score == pytest.approx(expect) and a.global_score == score and a.global_map_max is None
        assert a.fusion_parts() == (pytest.approx(0.8), score)
        assert a.whole_image_scores() == (score,)


def test_training_fits_the_statistics_and_the_switch_drops_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines.bundle import load_bundle
    from pipelines.datasets.synth import write_mvtec_dataset
    from pipelines.inspector import Inspector
    from tests.pipelines.test_bvpn import TINY

    data = tmp_path / "paper"
    write_mvtec_dataset(
        data, product="paper", width_px=96, height_px=96, n_train=14, n_test_good=2,
        n_test_per_defect=1, defects=["spot"], seed=5, progress=False,
    )  # fmt: skip
    argv = ["train", "--model", "bvpn", "--data", str(data), "--no-progress", *TINY]
    assert main([*argv, "--out", str(tmp_path / "on")]) == 0
    on = load_bundle(tmp_path / "on")
    info = on.meta.training["peripheral_stats"]
    assert info["used"] and info["levels"] == on.meta.params["peripheral_stats"]["levels"]
    branch = build_global(on.meta, on.tensors)
    stats = branch if isinstance(branch, SummaryStatistics) else None
    if isinstance(branch, WholeImage):  # with the logical module (a registered product)
        stats = next(b for b in branch.branches if isinstance(b, SummaryStatistics))
    assert stats is not None and stats.score_to.tolist() == pytest.approx(info["score_to"], abs=1e-4)
    # the inspector judges with it: its score is the analysis's global score (gain 1 at training)
    insp = Inspector(on, backend="torch")
    img = cv2.cvtColor(cv2.imread(str(next((data / "test" / "good").iterdir()))), cv2.COLOR_BGR2RGB)
    a = insp.analyse(img)
    assert a.global_score is not None and a.global_score >= stats(img).score - 1e-6

    # a bundle whose statistics are incomplete: one line naming it, exit 2, no traceback
    from pipelines.errors import BundleError

    with pytest.raises(BundleError, match="whole-image branches are incomplete"):
        build_global(on.meta, {k: v for k, v in on.tensors.items() if k != "stats.precision"})
    meta = yaml.safe_load((tmp_path / "on" / "bundle.yaml").read_text())
    del meta["params"]["peripheral_stats"]["levels"]
    (tmp_path / "on" / "bundle.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    capsys.readouterr()
    predict = ["predict", "--bundle", str(tmp_path / "on"), "--input", str(data / "test" / "good")]
    assert main([*predict, "--out", str(tmp_path / "pred"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "whole-image branches are incomplete" in err[0] and "Traceback" not in err[0]

    assert main([*argv, "--out", str(tmp_path / "off"), "--set", "peripheral_stats=false"]) == 0
    off = load_bundle(tmp_path / "off")
    assert "peripheral_stats" not in off.meta.params and not off.meta.training["peripheral_stats"]["used"]
    assert "stats.precision" not in off.tensors


def test_whole_image_branches_are_aligned_with_the_tile_scores_under_the_edge_gains() -> None:
    """The inspector compares a branch's score with the tile score after the edge gains, so the
    first calibration hands the branches the gained held-out tile scores (not the raw maxima)
    before they score the images, in its one pass of the network."""
    import torch

    from calibration.threshold import GoodImages
    from pipelines.training import MARGIN_PX, first_calibration
    from tests.pipelines.test_edges import _frame

    class Red(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :1].clone()

    rng = np.random.default_rng(4)
    held = [_frame(rng) for _ in range(20)]
    branch = _Constant(0.0, False)
    handed: list[np.ndarray] = []

    def align(scores: np.ndarray) -> None:
        handed.append(scores)
        branch.score = float(np.max(scores)) + 0.5  # aligned: above every good tile score

    cal = first_calibration(Red(), branch, held, tile_px=64, align_branch=align)
    (scores,) = handed
    raw = np.array([f[..., 0].max() / 255 for f in held])
    inside = np.array([f[3:-3, 3:-3, 0].max() / 255 for f in held])
    assert (scores < raw - 0.1).all() and (scores >= inside - 1e-6).all()
    analyser = TiledAnalyser(lambda x: x[:, :1].copy(), tile_px=64, overlap_px=32, margin_px=MARGIN_PX)
    analyser.measure_raw()
    goods = GoodImages(pixels=False)
    for f in held:
        goods.add(analyser(f))
    analyser.edge_gains = goods.edge_gains()
    np.testing.assert_allclose(scores, [analyser(f).tile_score for f in held], rtol=1e-6)
    # the branch scored the images after its alignment: its score set the threshold
    assert cal["image_threshold"] == pytest.approx(branch.score)
