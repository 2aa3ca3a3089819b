"""Threshold calibration: hand examples, the FRR promise on fresh images, and input validation."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from scipy import stats

from calibration.errors import CalibrationError
from calibration.threshold import (
    BranchAlignment,
    FrrMethod,
    PixelSamples,
    ThresholdResult,
    align_branches,
    align_parts,
    clopper_pearson_upper,
    fuse,
    images_needed,
    pixel_threshold_f1,
    pixel_threshold_for_fpr,
    sample_map_pixels,
    threshold_cost,
    threshold_f1,
    threshold_for_frr,
)
from drivers.errors import ApplianceError
from pipelines.metrics import f1_max


def test_images_needed_is_the_smallest_zero_reject_sample() -> None:
    # ln(0.05) / ln(1 - p): 2994.2 -> 2995, 298.07 -> 299, 58.4 -> 59 (the rule of three, about 3/p).
    assert images_needed(0.001) == 2995
    assert images_needed(0.01) == 299
    assert images_needed(0.05) == 59
    for target in (0.001, 0.01, 0.05, 0.2):
        n = images_needed(target)
        assert clopper_pearson_upper(0, n) <= target < clopper_pearson_upper(0, n - 1)


def test_clopper_pearson_upper_matches_the_closed_form_and_the_beta_quantile() -> None:
    assert clopper_pearson_upper(0, 300) == pytest.approx(1 - 0.05 ** (1 / 300))
    assert clopper_pearson_upper(20, 2000, confidence=0.99) == pytest.approx(stats.beta.ppf(0.99, 21, 1980))
    assert clopper_pearson_upper(5, 5) == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_a_one_percent_threshold_gives_one_percent_within_the_stated_bound_on_fresh_images(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 2000
    result = threshold_for_frr(rng.gamma(2.0, 1.0, size=n), target_frr=0.01)
    assert result.supported
    assert result.expected_frr <= 0.01
    fresh = rng.gamma(2.0, 1.0, size=200_000)
    fresh_frr = float(np.mean(fresh >= result.threshold))
    assert 0.0 <= fresh_frr <= result.frr_upper_bound
    # The true rate of a threshold at an order statistic of n scores varies by
    # about sqrt(p(1-p)/n); the fresh sample adds its own binomial noise.
    spread = 3 * math.sqrt(0.01 * 0.99 / n) + 3 * math.sqrt(0.01 * 0.99 / fresh.size)
    assert abs(fresh_frr - 0.01) <= spread


def test_quantile_threshold_sits_between_order_statistics_by_hand() -> None:
    scores = np.arange(1.0, 101.0)  # 1..100
    result = threshold_for_frr(scores, target_frr=0.05, method="quantile")
    # floor(0.05 * 100) = 5 scores may be rejected: 96..100; the threshold sits midway 95 | 96.
    assert result.threshold == 95.5
    assert result.expected_frr == 0.05
    assert result.frr_upper_bound == pytest.approx(stats.beta.ppf(0.95, 6, 95))


def test_quantile_threshold_never_rejects_more_than_allowed_on_ties() -> None:
    scores = np.r_[np.arange(1.0, 96.0), [97.0] * 5]  # 95 distinct, then five tied at 97
    result = threshold_for_frr(scores, target_frr=0.04, method="quantile")
    # Four may be rejected but the top five are tied: rejecting any rejects all five,
    # so the threshold must sit above them.
    assert result.expected_frr == 0.0
    assert result.threshold > 97.0


def test_too_few_images_extrapolates_and_says_how_many_are_needed() -> None:
    rng = np.random.default_rng(11)
    result = threshold_for_frr(rng.exponential(1.0, size=50), target_frr=0.001)
    assert not result.supported
    assert result.n_good == 50
    assert "50 good images" in result.message
    assert "2995 images would be needed" in result.message
    assert "extrapolated" in result.message
    assert result.frr_upper_bound == pytest.approx(1 - 0.05 ** (1 / 50))


@pytest.mark.parametrize(
    ("method", "draw", "isf"),
    [
        ("exponential-tail", lambda rng, n: rng.exponential(1.0, size=n), lambda p: -math.log(p)),
        ("gaussian-tail", lambda rng, n: rng.normal(0.0, 1.0, size=n), lambda p: stats.norm.isf(p)),
    ],
)
def test_tail_models_land_near_the_true_quantile(
    method: FrrMethod,
    draw: Callable[[np.random.Generator, int], np.ndarray],
    isf: Callable[[float], float],
) -> None:
    rng = np.random.default_rng(12)
    result = threshold_for_frr(draw(rng, 500), target_frr=0.001, method=method)
    true_threshold = isf(0.001)  # 6.9 for Exp(1), 3.09 for N(0, 1)
    assert result.threshold == pytest.approx(true_threshold, rel=0.2)
    fresh_frr = float(np.mean(draw(rng, 400_000) >= result.threshold))
    assert 0.0002 < fresh_frr < 0.005


def test_auto_picks_the_quantile_when_the_data_reaches_the_target() -> None:
    rng = np.random.default_rng(13)
    scores = rng.normal(size=1000)
    assert threshold_for_frr(scores, target_frr=0.01) == threshold_for_frr(
        scores, target_frr=0.01, method="quantile"
    )
    assert threshold_for_frr(scores, target_frr=0.0005) == threshold_for_frr(
        scores, target_frr=0.0005, method="exponential-tail"
    )


def test_message_rounds_the_bound_up() -> None:
    result = threshold_for_frr(np.linspace(0.0, 1.0, 300), target_frr=0.001, method="quantile")
    # 0 of 300 rejected: the bound is 1 - 0.05^(1/300) = 0.994%, stated as "below 1.0%".
    assert "with 300 good images, 0 rejected, the false-reject rate is below 1.0% with 95% confidence" in (
        result.message
    )


def test_f1_threshold_by_hand() -> None:
    good = [0.1, 0.2, 0.3, 0.6]
    bad = [0.5, 0.7, 0.8]
    # Reject score >= t; F1 = 2TP / (2TP + FP + FN), 3 defective:
    #   reject >= 0.8: TP1 FP0 -> 2/5 = 0.4    reject >= 0.5: TP3 FP1 -> 6/7 = 0.857
    #   reject >= 0.7: TP2 FP0 -> 4/5 = 0.8    reject >= 0.3: TP3 FP2 -> 6/8 = 0.75
    #   reject >= 0.6: TP2 FP1 -> 4/6 = 0.667
    # Best: reject >= 0.5, with the threshold midway between 0.3 and 0.5.
    result = threshold_f1(good, bad)
    assert result.threshold == pytest.approx(0.4)
    assert result.method == "f1"
    assert result.expected_frr == 0.25
    assert (result.n_good, result.n_bad) == (4, 3)
    assert "rejects 1 good and misses 0 defective" in result.message
    assert f1_max(good + bad, [0] * 4 + [1] * 3)[0] == pytest.approx(6 / 7)


def test_cost_threshold_by_hand_moves_up_when_false_rejects_cost_more() -> None:
    good = [0.1, 0.2, 0.3, 0.6]
    bad = [0.5, 0.7, 0.8]
    # Defect rate from the sample, 3/7: cost = c_fr * (4/7) * FR/4 + c_md * (3/7) * miss/3
    # = (c_fr * FR + c_md * miss) / 7.
    # Equal costs: reject >= 0.7 (FR0, miss1) and >= 0.5 (FR1, miss0) both cost 1/7;
    # the tie goes to the higher threshold, midway 0.6 | 0.7.
    equal = threshold_cost(good, bad, cost_false_reject=1.0, cost_missed_defect=1.0)
    assert equal.threshold == pytest.approx(0.65)
    # A missed defect 10x dearer: >= 0.5 costs 1/7, >= 0.7 costs 10/7 -> 0.4.
    cheap_fr = threshold_cost(good, bad, cost_false_reject=1.0, cost_missed_defect=10.0)
    assert cheap_fr.threshold == pytest.approx(0.4)
    # A false reject 10x dearer: >= 0.7 costs 1/7, >= 0.5 costs 10/7 -> 0.65.
    dear_fr = threshold_cost(good, bad, cost_false_reject=10.0, cost_missed_defect=1.0)
    assert dear_fr.threshold == pytest.approx(0.65)
    assert dear_fr.threshold > cheap_fr.threshold
    assert dear_fr.expected_frr < cheap_fr.expected_frr


def test_cost_threshold_rises_with_the_false_reject_cost_on_overlapping_scores() -> None:
    rng = np.random.default_rng(14)
    good, bad = rng.normal(0.0, 1.0, 2000), rng.normal(2.0, 1.0, 300)
    thresholds = [
        threshold_cost(good, bad, cost_false_reject=c, cost_missed_defect=1.0).threshold
        for c in (0.3, 1, 3, 10)
    ]
    assert thresholds == sorted(thresholds)
    assert thresholds[0] < thresholds[-1]
    # A rarer defect on the line also makes false rejects weigh more.
    assert (
        threshold_cost(good, bad, cost_false_reject=1, cost_missed_defect=1, defect_rate=0.01).threshold
        > thresholds[1]
    )


def test_result_to_dict_has_every_field() -> None:
    result = threshold_for_frr(np.arange(200.0), target_frr=0.05)
    as_dict = result.to_dict()
    assert as_dict["method"] == "target_frr"
    assert as_dict["target_frr"] == 0.05
    assert ThresholdResult(**as_dict) == result


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: threshold_for_frr([], target_frr=0.01), ["no good scores", "at least one"]),
        (lambda: threshold_for_frr([0.1, float("nan"), 0.3], target_frr=0.01), ["NaN", "index 1"]),
        (lambda: threshold_for_frr([0.1, float("inf")], target_frr=0.01), ["infinite"]),
        (lambda: threshold_for_frr(np.arange(100.0), target_frr=0.0), ["target_frr", "fraction"]),
        (lambda: threshold_for_frr(np.arange(100.0), target_frr=0.5), ["target_frr", "(0, 0.5)"]),
        (lambda: threshold_for_frr(np.arange(100.0), target_frr=1.0), ["target_frr", "0.01 for 1%"]),
        (lambda: threshold_for_frr(np.arange(100.0), target_frr=-0.1), ["target_frr"]),
        (lambda: threshold_for_frr(np.arange(100.0), target_frr=float("nan")), ["target_frr"]),
        (lambda: threshold_for_frr(np.arange(100.0), target_frr=0.01, confidence=1.0), ["confidence"]),
        (
            lambda: threshold_for_frr(np.arange(100.0), target_frr=0.01, method="magic"),  # type: ignore[arg-type]
            ["magic", "quantile"],
        ),
        (lambda: threshold_for_frr(np.arange(10.0), target_frr=0.01), ["only 10 good scores", "at least 20"]),
        (lambda: threshold_f1([0.1], []), ["no defective scores"]),
        (
            lambda: threshold_cost([0.1], [0.9], cost_false_reject=0, cost_missed_defect=1),
            ["cost_false_reject"],
        ),
        (
            lambda: threshold_cost([0.1], [0.9], cost_false_reject=1, cost_missed_defect=1, defect_rate=2.0),
            ["defect_rate"],
        ),
        (lambda: images_needed(0.0), ["target_frr"]),
    ],
)
def test_bad_input_raises_a_calibration_error_naming_the_thing(
    call: Callable[[], object], words: list[str]
) -> None:
    with pytest.raises(CalibrationError) as info:
        call()
    assert isinstance(info.value, ApplianceError)
    for word in words:
        assert word in str(info.value)


def test_pixel_threshold_for_a_target_share_of_good_pixels_holds_on_fresh_maps() -> None:
    rng = np.random.default_rng(4)
    maps = [rng.gamma(2.0, 0.2, size=(300, 400)).astype(np.float32) for _ in range(6)]
    samples = np.concatenate([sample_map_pixels(m, max_samples=20_000)[0] for m in maps])
    assert samples.size == 6 * 100 * 134  # every 3rd pixel each way: ceil(sqrt(120000 / 20000))
    threshold = pixel_threshold_for_fpr(samples, target_fpr=0.001)
    fresh = rng.gamma(2.0, 0.2, size=(2000, 1000))
    assert np.mean(fresh >= threshold) == pytest.approx(0.001, rel=0.25)
    assert np.mean(samples >= threshold) <= 0.001
    with pytest.raises(CalibrationError, match="too few"):
        pixel_threshold_for_fpr(samples[:500], target_fpr=0.001)
    with pytest.raises(CalibrationError, match="between 0 and 1"):
        pixel_threshold_for_fpr(samples, target_fpr=1.5)


def test_pixel_f1_threshold_separates_masked_defects() -> None:
    rng = np.random.default_rng(5)
    amap = rng.normal(0.5, 0.1, size=(200, 200)).astype(np.float32)
    mask = np.zeros((200, 200), np.uint8)
    mask[50:80, 60:100] = 255
    amap[mask > 0] += 1.0
    values, labels = sample_map_pixels(amap, mask, max_samples=10_000)
    assert labels is not None and labels.mean() == pytest.approx(mask.astype(bool).mean(), rel=0.05)
    threshold, f1 = pixel_threshold_f1(values, labels)
    assert 0.8 < threshold < 1.2 and f1 > 0.98
    with pytest.raises(CalibrationError, match="does not match"):
        sample_map_pixels(amap, mask[:100])
    with pytest.raises(CalibrationError, match="no defective pixel"):
        pixel_threshold_f1(values, np.zeros_like(labels))


def test_branch_alignment_puts_both_good_tails_at_one_threshold() -> None:
    """A tight tile branch and a heavy-tailed global branch: unaligned, the global tail alone sets
    the threshold; aligned, each branch rejects about half the target of good parts."""
    rng = np.random.default_rng(0)
    n, target = 4000, 0.02
    tile = rng.normal(1.0, 0.05, n)
    glob = rng.exponential(1.0, n) + 0.3
    t0 = threshold_for_frr(np.maximum(tile, glob), target_frr=target).threshold
    assert np.mean(tile >= t0) == 0.0  # the tile branch could as well not exist
    a = align_branches(tile, glob, target_frr=target)
    assert a.method == "tail on tail" and a.gain > 0
    aligned = fuse([(float(t), float(g)) for t, g in zip(tile, glob, strict=True)], a)
    assert aligned == pytest.approx(np.maximum(tile, a.gain * glob))
    thr = threshold_for_frr(aligned, target_frr=target).threshold
    by_tile, by_global = np.mean(tile >= thr), np.mean(a.apply(glob) >= thr)
    assert 0.006 <= by_tile <= 0.014 and 0.006 <= by_global <= 0.014, (by_tile, by_global)


def test_branch_alignment_falls_back_to_medians_and_skips_single_branch_models() -> None:
    a = align_branches([1.0, 1.1, 1.2], [3.0, 4.0, 9.0], target_frr=0.01)
    assert a.gain == pytest.approx(1.1 / 4.0) and a.method.startswith("medians")
    assert align_branches([1.0] * 30, [-1.0] * 30, target_frr=0.1).gain == 1.0
    assert align_parts([(1.0, float("-inf"))] * 30, target_frr=0.01) is None
    assert fuse([(1.5, float("-inf"))], None).tolist() == [1.5]
    with pytest.raises(CalibrationError, match="one of each"):
        align_branches([1.0, 2.0], [1.0], target_frr=0.01)


def test_pixel_samples_fuse_the_branches_with_the_chosen_gain() -> None:
    tile = np.zeros((8, 8), np.float32)
    tile[1, 1] = 2.0
    glob = np.zeros((8, 8), np.float32)
    glob[4, 4] = 4.0
    samples = PixelSamples()
    samples.add(np.maximum(tile, glob), (tile, glob), mask=glob > 0)
    samples.add(tile, None)
    a = BranchAlignment(0.25, 1.0, 4.0, 0.01, "tail on tail")
    fused, single = samples.values(a)
    assert sorted(fused[fused > 0].tolist()) == [1.0, 2.0] and single.max() == 2.0
    assert samples.values(None)[0].max() == 4.0
    assert [lab.sum() for lab in samples.labels()] == [1]
