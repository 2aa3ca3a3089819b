"""`aoi calibrate --bundle B --good DIR [--bad DIR --masks DIR]`: image and pixel thresholds and
minimum defect areas land in the bundle; mistakes get one line and leave the bundle untouched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

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
