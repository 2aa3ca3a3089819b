"""Evaluation metrics against hand-computed cases and a brute-force AUPRO."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage, stats

from pipelines.metrics import aupro, evaluate, f1_max, image_auroc, pixel_auroc


def _brute_force_aupro(maps: list[np.ndarray], masks: list[np.ndarray], fpr_limit: float) -> float:
    """The MVTec definition, literally: one curve point per distinct score, trapezoids, cut at the limit."""
    regions = []
    for i, m in enumerate(masks):
        labels, n = ndimage.label(m, structure=np.ones((3, 3)))
        regions += [(i, labels == k) for k in range(1, n + 1)]
    n_neg = sum(int((~m).sum()) for m in masks)
    fprs, pros = [0.0], [0.0]
    for t in np.unique(np.concatenate([a.ravel() for a in maps]))[::-1]:
        fprs.append(sum(int(((a >= t) & ~m).sum()) for a, m in zip(maps, masks, strict=True)) / n_neg)
        pros.append(float(np.mean([(maps[i][r] >= t).mean() for i, r in regions])))
    f, p = np.array(fprs), np.array(pros)
    keep = f <= fpr_limit
    f_cut = np.r_[f[keep], fpr_limit]
    p_cut = np.r_[p[keep], np.interp(fpr_limit, f, p)]
    return float(np.trapezoid(p_cut, f_cut)) / fpr_limit


# --- image AUROC -------------------------------------------------------------------------------


def test_image_auroc_perfect_reversed_and_all_ties() -> None:
    labels = np.array([0, 0, 0, 1, 1])
    assert image_auroc([0.1, 0.2, 0.3, 0.8, 0.9], labels) == 1.0
    assert image_auroc([0.9, 0.8, 0.7, 0.2, 0.1], labels) == 0.0
    assert image_auroc([0.5] * 5, labels) == 0.5


def test_image_auroc_three_against_three_by_hand() -> None:
    good = [0.1, 0.4, 0.35]
    defective = [0.8, 0.4, 0.3]
    # Count, over the 3 x 3 (defective, good) pairs, 1 when the defective scores
    # higher and 1/2 on a tie:
    #   0.8 beats 0.1, 0.4, 0.35            -> 3
    #   0.4 beats 0.1 and 0.35, ties 0.4    -> 2.5
    #   0.3 beats 0.1 only                  -> 1
    # AUROC = (3 + 2.5 + 1) / 9 = 6.5 / 9 = 13 / 18.
    auc = image_auroc(good + defective, [0, 0, 0, 1, 1, 1])
    assert auc == pytest.approx(13 / 18, abs=1e-15)


def test_image_auroc_matches_rank_sum_formula_with_ties() -> None:
    rng = np.random.default_rng(3)
    scores = np.round(rng.random(500), 2)  # many ties
    labels = rng.random(500) < 0.3
    ranks = stats.rankdata(scores)  # average ranks for ties
    n1, n0 = int(labels.sum()), int((~labels).sum())
    expected = (ranks[labels].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)
    assert image_auroc(scores, labels) == pytest.approx(expected, abs=1e-12)
    # Either branch of the sort-and-search (fewer positives or fewer negatives) gives the same.
    assert image_auroc(-scores, ~labels) == pytest.approx(expected, abs=1e-12)


def test_image_auroc_rejects_one_class_and_bad_input() -> None:
    with pytest.raises(ValueError, match="defective"):
        image_auroc([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="NaN"):
        image_auroc([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="one label per score"):
        image_auroc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="0 \\(good\\) or 1"):
        image_auroc([0.1, 0.2], [0, 2])


# --- pixel AUROC -------------------------------------------------------------------------------


def _random_set(seed: int, n: int = 5) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    """Maps of different sizes, 0-255 masks with a few blobs, one good image with a None mask."""
    rng = np.random.default_rng(seed)
    maps: list[np.ndarray] = []
    masks: list[np.ndarray | None] = []
    for i in range(n):
        h, w = rng.integers(20, 48, size=2)
        yy, xx = np.mgrid[:h, :w]
        mask = np.zeros((h, w), dtype=np.uint8)
        for _ in range(rng.integers(1, 4)):
            cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(2, 7)
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 255
        maps.append((rng.random((h, w)) + 0.6 * (mask > 0) * rng.random((h, w))).astype(np.float32))
        masks.append(None if i == 0 else mask)
    return maps, masks


def test_pixel_auroc_equals_image_auroc_of_the_flattened_pixels() -> None:
    maps, masks = _random_set(0)
    flat_scores = np.concatenate([a.ravel() for a in maps])
    flat_labels = np.concatenate(
        [np.zeros(a.size, bool) if m is None else (m.ravel() > 0) for a, m in zip(maps, masks, strict=True)]
    )
    assert pixel_auroc(maps, masks) == pytest.approx(image_auroc(flat_scores, flat_labels), abs=1e-12)


def test_pixel_auroc_accepts_bool_01_and_0_255_masks_alike() -> None:
    maps, masks = _random_set(1)
    as_bool = [None if m is None else m > 0 for m in masks]
    as_01 = [None if m is None else (m > 0).astype(np.uint8) for m in masks]
    as_float = [None if m is None else (m > 0).astype(np.float32) for m in masks]
    ref = pixel_auroc(maps, masks)
    assert pixel_auroc(maps, as_bool) == ref
    assert pixel_auroc(maps, as_01) == ref
    assert pixel_auroc(maps, as_float) == ref


def test_pixel_auroc_subsamples_deterministically_above_max_pixels() -> None:
    maps, masks = _random_set(2, n=8)
    exact = pixel_auroc(maps, masks)
    total = sum(a.size for a in maps)
    sub = pixel_auroc(maps, masks, max_pixels=total // 3)
    assert sub == pixel_auroc(maps, masks, max_pixels=total // 3)  # same seed, same answer
    assert sub == pytest.approx(exact, abs=0.02)
    assert sub != exact  # it really did subsample


def test_pixel_auroc_rejects_mismatched_shapes_and_missing_classes() -> None:
    maps, masks = _random_set(3)
    with pytest.raises(ValueError, match="must match"):
        pixel_auroc([maps[1]], [np.zeros((3, 3), bool)])
    with pytest.raises(ValueError, match="defect"):
        pixel_auroc(maps[:1], [None])
    with pytest.raises(ValueError, match="one mask"):
        pixel_auroc(maps, masks[:2])


# --- AUPRO -------------------------------------------------------------------------------------


def test_aupro_of_a_perfect_map_is_one() -> None:
    maps, masks = _random_set(4)
    perfect = [
        np.zeros(a.shape) if m is None else (m > 0) + 0.01 * a for a, m in zip(maps, masks, strict=True)
    ]
    assert aupro(perfect, masks) == pytest.approx(1.0, abs=1e-12)
    assert aupro(perfect, masks, fpr_limit=1.0) == pytest.approx(1.0, abs=1e-12)


def test_aupro_two_regions_one_found_at_once_one_only_after_the_limit_is_one_half() -> None:
    mask = np.zeros((10, 10), dtype=bool)
    mask[1:3, 1:3] = True  # region A, 4 px
    mask[6:8, 6:8] = True  # region B, 4 px, not touching A even diagonally
    scores = np.zeros((10, 10))
    scores[~mask] = np.arange(1, 93)  # 92 good pixels with distinct scores 1..92
    scores[1:3, 1:3] = 100.0  # A: above every good pixel
    scores[6:8, 6:8] = 46.5  # B: flagged only once half the good pixels are
    # For 0 < FPR < 0.5 exactly A is found: PRO = 1/2 on the whole range up to
    # 0.3, so the area is 0.3 * 1/2 and the normalised AUPRO is 1/2.
    assert aupro([scores], [mask], fpr_limit=0.3) == pytest.approx(0.5, abs=1e-12)


def test_aupro_of_a_random_map_is_about_fpr_limit_over_two() -> None:
    rng = np.random.default_rng(5)
    maps, masks = [], []
    for _ in range(20):
        mask = np.zeros((64, 64), dtype=bool)
        for _ in range(3):
            y, x = rng.integers(0, 54, size=2)
            mask[y : y + rng.integers(4, 10), x : x + rng.integers(4, 10)] = True
        maps.append(rng.random((64, 64)))
        masks.append(mask)
    # Random scores flag every region at the rate they flag good pixels, so
    # PRO ~ FPR and the normalised area up to 0.3 is 0.3 / 2 = 0.15.
    assert aupro(maps, masks, fpr_limit=0.3) == pytest.approx(0.15, abs=0.01)


def test_aupro_is_invariant_to_a_monotone_transformation_of_the_map() -> None:
    maps, masks = _random_set(6)
    transformed = [np.exp(3.0 * a.astype(np.float64)) - 7.0 for a in maps]
    assert aupro(transformed, masks) == pytest.approx(aupro(maps, masks), abs=1e-12)


@pytest.mark.parametrize("seed", range(12))
def test_aupro_matches_brute_force_on_small_random_masks(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    maps, masks = [], []
    for _ in range(int(rng.integers(1, 4))):
        h, w = rng.integers(4, 14, size=2)
        mask = rng.random((h, w)) < rng.uniform(0.05, 0.35)
        # Rounded scores tie good and defect pixels, which the exact sweep must handle.
        maps.append(np.round(rng.random((h, w)) + 0.5 * mask * rng.random(), 1))
        masks.append(mask)
    if not any(m.any() for m in masks):
        masks[0][0, 0] = True
    for fpr_limit in (0.05, 0.3, 0.123, 1.0):
        expected = _brute_force_aupro(maps, masks, fpr_limit)
        assert aupro(maps, masks, fpr_limit=fpr_limit) == pytest.approx(expected, abs=1e-10)


def test_aupro_stays_exact_when_the_sampled_cut_estimate_is_too_high(monkeypatch: pytest.MonkeyPatch) -> None:
    import pipelines.metrics as metrics

    maps, masks = _random_set(9)
    expected = aupro(maps, masks)
    # An estimate above every score gathers no good pixels; the second pass must take them all.
    monkeypatch.setattr(metrics, "_top_k_value", lambda values, k: values.max() + 1.0)
    assert aupro(maps, masks) == pytest.approx(expected, abs=1e-12)


def test_aupro_rejects_masks_without_regions_and_bad_limits() -> None:
    maps, masks = _random_set(7)
    with pytest.raises(ValueError, match="defect region"):
        aupro(maps[:1], [None])
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(maps, masks, fpr_limit=0.0)
    with pytest.raises(ValueError, match="NaN"):
        aupro([np.full((4, 4), np.nan)], [np.ones((4, 4), bool)])


# --- F1 and evaluate ---------------------------------------------------------------------------


def test_f1_max_by_hand() -> None:
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    labels = [1, 0, 1, 1, 0, 0]
    # Flag score >= t; F1 = 2TP / (2TP + FP + FN), 3 defective in all:
    #   t=0.9: TP1 FP0 FN2 -> 2/4 = 0.5      t=0.6: TP3 FP1 FN0 -> 6/7 = 0.857
    #   t=0.8: TP1 FP1 FN2 -> 2/5 = 0.4      t=0.5: TP3 FP2 FN0 -> 6/8 = 0.75
    #   t=0.7: TP2 FP1 FN1 -> 4/6 = 0.667    t=0.4: TP3 FP3 FN0 -> 6/9 = 0.667
    f1, threshold = f1_max(scores, labels)
    assert f1 == pytest.approx(6 / 7)
    assert threshold == 0.6


def test_f1_max_counts_tied_scores_together() -> None:
    # One threshold flags both tied 0.5s: TP1 FP1 FN0 -> 2/3; above them nothing is flagged.
    assert f1_max([0.5, 0.5, 0.1], [1, 0, 0]) == (pytest.approx(2 / 3), 0.5)


def test_evaluate_reports_every_metric_and_skips_unannotated_defects() -> None:
    maps, masks = _random_set(8, n=6)
    labels = np.array([0, 1, 1, 1, 1, 1])
    scores = np.array([a.max() for a in maps])
    masks_with_gap = [*masks[:5], None]  # the last defective image is not annotated
    out = evaluate(scores, labels, maps, masks_with_gap, fpr_limit=0.3)
    assert set(out) == {
        "image_auroc",
        "pixel_auroc",
        "aupro",
        "f1_max",
        "f1_threshold",
        "n_images",
        "n_defective",
        "n_pixel_images",
    }
    assert out["n_images"] == 6
    assert out["n_defective"] == 5
    assert out["n_pixel_images"] == 5
    assert out["image_auroc"] == image_auroc(scores, labels)
    assert out["pixel_auroc"] == pixel_auroc(maps[:5], masks[:5])
    assert out["aupro"] == aupro(maps[:5], masks[:5], fpr_limit=0.3)
    assert (out["f1_max"], out["f1_threshold"]) == f1_max(scores, labels)


def test_evaluate_without_maps_gives_image_metrics_only() -> None:
    out = evaluate([0.1, 0.9], [0, 1], None, None)
    assert out["image_auroc"] == 1.0
    assert out["pixel_auroc"] is None
    assert out["aupro"] is None
