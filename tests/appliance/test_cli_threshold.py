"""`aoi calibrate --bundle B --good DIR [--bad DIR --masks DIR]`: image and pixel thresholds and
minimum defect areas land in the bundle; mistakes get one line and leave the bundle untouched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from appliance.cli import main
from pipelines.bundle import load_bundle


@pytest.fixture
def bundle(tiny_print_bundle: tuple[Path, Path], tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_print_bundle[1], copy)
    return copy


def _last_json(capsys: pytest.CaptureFixture[str]) -> dict:
    out = capsys.readouterr().out
    return json.loads(out[out.index("{") :])


def test_good_only_sets_a_pixel_threshold_at_the_pixel_fpr_capped_at_the_image_threshold(
    tiny_print_bundle: tuple[Path, Path], bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tiny_print_bundle[0]
    argv = ["calibrate", "--bundle", str(bundle), "--good", str(data / "test" / "good"), "--no-progress"]
    assert main([*argv, "--target-frr", "0.05", "--pixel-fpr", "0.01", "--min-defect-area-mm2", "0.4"]) == 0
    out = _last_json(capsys)
    cal = load_bundle(bundle).meta.calibration
    assert out["pixel_method"] == "pixel_fpr" and cal.details["pixel_fpr"] == 0.01
    assert cal.pixel_threshold == pytest.approx(out["pixel_threshold"])
    assert cal.pixel_threshold <= cal.image_threshold
    assert cal.min_defect_area_mm2 == 0.4 and cal.min_defect_area_px == 0
    # A stricter pixel rate gives a higher pixel threshold (unless both are capped).
    assert main([*argv, "--target-frr", "0.05", "--pixel-fpr", "0.001"]) == 0
    stricter = load_bundle(bundle).meta.calibration
    assert stricter.pixel_threshold >= cal.pixel_threshold
    assert stricter.min_defect_area_mm2 == 0.4  # kept when not given again


def test_masks_give_the_pixel_f1_threshold(
    tiny_print_bundle: tuple[Path, Path], bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tiny_print_bundle[0]
    code = main(
        [
            "calibrate", "--bundle", str(bundle), "--good", str(data / "test" / "good"),
            "--bad", str(data / "test" / "spot"), "--masks", str(data / "ground_truth" / "spot"),
            "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    out = _last_json(capsys)
    cal = load_bundle(bundle).meta.calibration
    assert out["pixel_method"] == "pixel_f1" and 0.0 < out["pixel_f1"] <= 1.0
    assert cal.method == "f1" and cal.details["masks"].endswith("spot")
    assert (
        cal.pixel_threshold == pytest.approx(out["pixel_threshold"])
        and cal.pixel_threshold <= cal.image_threshold
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--masks", "{data}/ground_truth/spot"], "--masks are the masks of the --bad images"),
        (["--bad", "{data}/test/spot", "--masks", "{data}"], "has no mask for"),
        (["--pixel-fpr", "2"], "--pixel-fpr 2.0 must be a fraction"),
        (["--min-defect-area-mm2", "-1"], "--min-defect-area-mm2 -1.0 must be zero or a positive area"),
    ],
)
def test_mistakes_get_one_line_and_leave_the_bundle_alone(
    tiny_print_bundle: tuple[Path, Path],
    bundle: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    data = tiny_print_bundle[0]
    before = (bundle / "bundle.yaml").read_bytes()
    argv = ["calibrate", "--bundle", str(bundle), "--good", str(data / "test" / "good"), "--no-progress"]
    assert main([*argv, *(a.format(data=data) for a in extra)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert (bundle / "bundle.yaml").read_bytes() == before


def test_the_calibration_mode_is_recorded_and_a_mismatch_is_warned(
    tiny_print_bundle: tuple[Path, Path],
    bundle: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whole, halo and auto give one map and blended tiles another: thresholds made in one kind
    are flagged when the inspector runs in the other."""
    from pipelines.inspector import Inspector

    data = tiny_print_bundle[0]
    argv = ["calibrate", "--bundle", str(bundle), "--good", str(data / "test" / "good"), "--no-progress"]
    assert main([*argv, "--target-frr", "0.05", "--mode", "halo"]) == 0
    b = load_bundle(bundle)
    assert b.meta.calibration.inference_mode == "whole"
    assert "calibrated in" not in caplog.text  # calibrating anew does not warn about the old mode
    with caplog.at_level("WARNING", logger="pipelines.inspector"):
        Inspector(b, backend="torch", mode="whole")
        assert not caplog.records
        Inspector(b, backend="torch")
    assert "calibrated in whole mode but inference runs in tiles mode" in caplog.text
    assert "aoi calibrate --mode tiles" in caplog.text


def test_edge_gains_scale_a_hot_frame_edge_and_the_threshold_holds_for_the_inspector(
    tiny_print_bundle: tuple[Path, Path], bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Good frames whose outer 2 px are dark (a frame edge the training never saw): calibration
    scales those bands down to the interior's tail, and its FRR is what the inspector then gives."""
    import cv2

    from pipelines.inspector import Inspector

    data = tiny_print_bundle[0]
    good = tmp_path / "good"
    good.mkdir()
    sources = sorted((data / "test" / "good").glob("*.png"))
    for i, src in enumerate(sources):
        img = np.tile(cv2.imread(str(src)), (3, 3, 1))  # 192 x 192: an interior 32 px from the edge
        img[:2], img[-2:], img[:, :2], img[:, -2:] = 0, 0, 0, 0
        cv2.imwrite(str(good / f"{i:03d}.png"), img)
    argv = ["calibrate", "--bundle", str(bundle), "--good", str(good), "--no-progress", "--target-frr", "0.1"]
    assert main([*argv, "--no-edge-gains", "--surface", "off"]) == 0
    plain = load_bundle(bundle).meta.calibration
    assert plain.edge_gains == [] and plain.details["edge_fitted"] is False
    assert plain.surface_gain == 0.0 and plain.details["surface_alignment"] is None
    capsys.readouterr()
    assert main(argv) == 0
    out = _last_json(capsys)
    b = load_bundle(bundle)
    cal = b.meta.calibration
    assert cal.edge_gains == out["edge_gains"] and len(cal.edge_gains) == len(cal.edge_bands_px)
    assert cal.edge_gains[0] < 0.9 and cal.edge_gains[1] < 0.9 and cal.edge_gains[-1] == 1.0
    assert cal.details["edge_tails"][0] > cal.details["edge_tails"][-1]
    assert cal.image_threshold < plain.image_threshold  # the edge no longer sets the threshold
    assert out["surface_gain"] == cal.surface_gain == 0.0  # "auto" without --bad: off
    # With the surface score on too, one pass predicted the scaled and fused scores: the inspector
    # rejects exactly the share calibration said.
    capsys.readouterr()
    assert main([*argv, "--surface", "on"]) == 0
    out = _last_json(capsys)
    b = load_bundle(bundle)
    cal = b.meta.calibration
    assert out["surface_gain"] == cal.surface_gain > 0 and out["surface_offset"] == cal.surface_offset
    assert cal.details["surface_alignment"]["gain"] == cal.surface_gain and cal.edge_gains[0] < 0.9
    inspector = Inspector(b, backend="torch")
    scores = [inspector.analyse(cv2.imread(str(p))[:, :, ::-1]).score for p in sorted(good.iterdir())]
    rejected = sum(s >= cal.image_threshold for s in scores)
    assert rejected == round(out["expected_frr"] * len(scores))
    # With defective images (a dark square inside) the gains are weighed on them, and the bundle
    # says which way and why: gains kept exactly when they separate at least as well.
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in sorted(good.iterdir())[:6]:
        img = cv2.imread(str(p))
        img[80:100, 90:110] = 0
        cv2.imwrite(str(bad / p.name), img)
    capsys.readouterr()
    assert main([*argv, "--bad", str(bad)]) == 0
    out = _last_json(capsys)
    cal = load_bundle(bundle).meta.calibration
    best = max(out["weighed_options"], key=lambda o: o["auroc"])  # the first of equals: the default
    kept = best["edge_gains"]
    assert out["weighed_auroc"] == best["auroc"] and len(out["weighed_options"]) == 4
    assert out["edge_gains_kept"] is kept and cal.details["edge_gains_kept"] is kept
    assert out["surface_kept"] is best["surface"] and (cal.surface_gain > 0) is best["surface"]
    assert bool(cal.edge_gains) is kept and out["method"] == "f1"
