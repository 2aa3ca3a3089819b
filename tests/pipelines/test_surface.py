"""The surface score: the tile map's interior mean on the image score's scale, fitted on good images
(`calibration.threshold.align_surface`), weighed on defective ones, and judged by the inspector
like the layout's score (NG without a blob)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from calibration.errors import CalibrationError
from calibration.threshold import SURFACE_SHARE, BadImages, GoodImages, align_surface, threshold_for_frr
from drivers.verdict import Result
from pipelines.bundle import Calibration
from pipelines.edges import BANDS_PX, interior_mean
from pipelines.inference import Analysis
from pipelines.inspector import decide
from tests.pipelines.red_channel import red_analyser


def _good(rng: np.random.Generator, *, speck: bool, lift: int = 0) -> np.ndarray:
    """A 150 x 170 textured frame; `speck`: a small bright spot inside (a good part's blemish that
    sets the good tail of the peak); `lift`: grey levels added all over."""
    img = rng.integers(20, 80, (150, 170, 3)).astype(np.int16) + lift
    if speck:
        img[70:73, 80:83] = 150
    return np.clip(img, 0, 255).astype(np.uint8)


def test_interior_mean_is_the_mean_beyond_the_last_edge_band() -> None:
    m = np.random.default_rng(0).random((100, 130)).astype(np.float32)
    y, x = np.mgrid[:100, :130]
    d = np.minimum(np.minimum(y, 99 - y), np.minimum(x, 129 - x))
    assert interior_mean(m, BANDS_PX) == pytest.approx(float(m[d >= 32].mean()), rel=1e-6)
    assert interior_mean(m, (0, 4)) == pytest.approx(float(m[d >= 4].mean()), rel=1e-6)
    assert interior_mean(np.ones((64, 300), np.float32), BANDS_PX) is None  # every row within 32 px


def test_the_alignment_puts_the_means_median_and_small_tail_on_the_scores() -> None:
    rng = np.random.default_rng(1)
    scores, means = rng.normal(1.0, 0.1, 400), rng.normal(0.0, 0.01, 400)
    a = align_surface(scores, means, target_frr=0.02)
    assert a.gain > 0 and a.score_tail_frr == 0.01 and a.mean_tail_frr == pytest.approx(0.02 * SURFACE_SHARE)
    assert a.apply([np.median(means)])[0] == pytest.approx(np.median(scores))
    mean_tail = threshold_for_frr(means, target_frr=0.02 * SURFACE_SHARE).threshold
    assert a.apply([mean_tail])[0] == pytest.approx(threshold_for_frr(scores, target_frr=0.01).threshold)
    # On the good images the surface score alone rejects about the share of the target, not half.
    threshold = threshold_for_frr(scores, target_frr=0.02).threshold
    assert np.mean(a.apply(means) >= threshold) <= 0.02 * SURFACE_SHARE * 2
    with pytest.raises(CalibrationError, match="too few to extrapolate"):
        align_surface(scores[:12], means[:12], target_frr=0.02)
    with pytest.raises(CalibrationError, match="no spread"):
        align_surface(scores, np.zeros(400), target_frr=0.02)
    with pytest.raises(CalibrationError, match="no interior"):
        align_surface(scores[:2], [0.1, float("nan")], target_frr=0.02)


def test_too_few_good_images_leave_the_surface_off_and_say_why() -> None:
    rng = np.random.default_rng(4)
    analyser = red_analyser()
    goods = GoodImages(surface="on")
    for i in range(10):
        goods.add(analyser(_good(rng, speck=i % 2 == 1)))
    fusion = goods.fusion(target_frr=0.1)
    assert fusion.surface is None and fusion.calibration_fields()["surface_gain"] == 0.0
    assert "calibrate with at least 20 good images" in fusion.details()["surface_off"]


def test_a_part_different_all_over_is_caught_by_the_surface_and_judged_ng_without_a_blob() -> None:
    """Defective frames a little brighter all over, no spot: their peak stays below the good
    frames' specks, so only the surface score finds them; the weighing keeps it, and the
    analyser with the calibration's fields scores exactly what calibration predicted."""
    rng = np.random.default_rng(2)
    analyser = red_analyser()
    frames = [_good(rng, speck=i % 2 == 1) for i in range(30)]
    goods, bads, asked_off = GoodImages(), BadImages(), GoodImages(surface="off")
    for f in frames:
        goods.add(analyser(f))
        asked_off.add(analyser(f))
    worn = [_good(rng, speck=False, lift=12) for _ in range(8)]
    for f in worn:
        bads.add(analyser(f))
    off = asked_off.weigh(bads, target_frr=0.1)  # --surface off: never weighed in
    assert off["surface_kept"] is False and not any(o["surface"] for o in off["weighed_options"])
    weighed = goods.weigh(bads, target_frr=0.1)
    by = {(o["edge_gains"], o["surface"]): o["auroc"] for o in weighed["weighed_options"]}
    assert weighed["surface_kept"] is True and weighed["weighed_auroc"] == 1.0
    assert by[(False, False)] < 0.8  # the peak alone does not tell them apart
    fusion = goods.fusion(target_frr=0.1)
    fields = fusion.calibration_fields()
    assert fields["surface_gain"] > 0
    threshold = float(threshold_for_frr(fusion.scores(goods), target_frr=0.1).threshold)
    calibration = Calibration(
        image_threshold=threshold, pixel_threshold=threshold, min_defect_area_px=20, **fields
    )
    analyser.surface = calibration.surface()
    analyser.edge_gains = fusion.edge_gains
    analyser.keep_branch_maps = False  # as the inspector runs
    predicted = fusion.scores(bads)
    for f, expected in zip(worn, predicted, strict=True):
        a = analyser(f)
        assert a.score == pytest.approx(expected, rel=1e-6) and a.surface_score == a.score
        result, defects = decide(a, calibration)
        assert result is Result.NG and not defects  # no blob: the whole surface is the defect
    # Without the surface score the same parts pass: the peak never reaches the threshold.
    analyser.surface = None
    assert all(decide(analyser(f), calibration)[0] is Result.OK for f in worn)
    # Calibrating again measures raw: what the last calibration fitted is switched off.
    analyser.surface, analyser.global_gain = calibration.surface(), 2.0
    analyser.measure_raw()
    raw = analyser(worn[0])
    assert (analyser.surface, analyser.edge_gains, analyser.global_gain) == (None, None, 1.0)
    assert raw.surface_score is None and raw.surface_mean is not None and analyser.keep_branch_maps


def test_the_surface_score_goes_where_it_separates_worse() -> None:
    """Good frames vary a little in overall brightness, two have a faint speck and one comes from
    a much brighter batch; the defects are small bright spots. The peak alone separates them; the
    surface score puts the bright good frame above some defects, so it is dropped."""
    rng = np.random.default_rng(3)
    analyser = red_analyser()
    goods, bads = GoodImages(), BadImages()
    for i in range(30):
        f = (rng.integers(20, 40, (150, 170, 3)) + (40 if i == 7 else (i % 3) * 2)).astype(np.uint8)
        if i in (3, 11):
            f[70:73, 80:83] = 90
        goods.add(analyser(f))
    for _ in range(8):
        f = rng.integers(20, 40, (150, 170, 3)).astype(np.uint8)
        f[60:66, 70:76] = 100 + rng.integers(0, 60)
        bads.add(analyser(f))
    weighed = goods.weigh(bads, target_frr=0.1)
    by = {(o["edge_gains"], o["surface"]): o["auroc"] for o in weighed["weighed_options"]}
    assert weighed["surface_kept"] is False and weighed["weighed_auroc"] == 1.0
    assert all(auroc < 1.0 for (_, surface), auroc in by.items() if surface)
    assert goods.fusion(target_frr=0.1).calibration_fields()["surface_gain"] == 0.0


def test_the_surface_fields_are_validated_and_off_by_default() -> None:
    assert Calibration().surface() is None
    goods = GoodImages()  # "auto": off until defective images weigh it in
    rng = np.random.default_rng(5)
    analyser = red_analyser()
    for _ in range(30):
        goods.add(analyser(_good(rng, speck=False)))
    assert goods.fusion(target_frr=0.1).surface is None
    assert GoodImages(surface="on").surface_mode == "on"
    with pytest.raises(CalibrationError, match="surface 'yes': use one of auto, on, off"):
        GoodImages(surface="yes")
    assert Calibration(surface_gain=2.0, surface_offset=0.5).surface() == (0.5, 2.0)
    with pytest.raises(ValidationError, match="surface_gain"):
        Calibration(surface_gain=-1.0)


def test_decide_counts_the_surface_score_like_the_layouts() -> None:
    flat = np.zeros((40, 40), np.float32)
    cal = Calibration(image_threshold=1.0, pixel_threshold=1.0, min_defect_area_px=5)
    calm = Analysis(0.5, flat, 0.5, None, surface_mean=0.0, surface_score=0.5)
    assert decide(calm, cal)[0] is Result.OK
    rough = Analysis(1.2, flat, 0.5, None, surface_mean=0.3, surface_score=1.2)
    assert decide(rough, cal)[0] is Result.NG
    assert rough.whole_image_scores() == (1.2,) and Analysis(0.5, flat, 0.5, None).whole_image_scores() == ()
