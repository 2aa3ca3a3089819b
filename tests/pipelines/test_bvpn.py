"""BVPN end to end on a tiny synthetic print line, and its logical module on layout defects."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from appliance.cli import main
from drivers.camera.scene import LOGICAL_DEFECTS as LOGICAL
from drivers.camera.scene import SceneRenderer
from pipelines.datasets.synth import write_mvtec_dataset
from pipelines.metrics import image_auroc
from pipelines.models.bvpn.logical import fit_logical

TINY = [
    "--set", "iterations=15", "--set", "batch=2", "--set", "crop_px=64", "--set", "width=16",
    "--set", "ae_width=16", "--set", "latent=16", "--tile", "64", "--overlap", "16",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_print(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "print"
    write_mvtec_dataset(
        root, product="print", width_px=128, height_px=128, n_train=14, n_test_good=4,
        n_test_per_defect=2, defects=["spot", "missing"], seed=3, progress=False,
    )  # fmt: skip
    return root


def test_train_predict_eval_through_the_cli(
    tiny_print: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "bvpn.bundle"
    assert (
        main(
            [
                "train",
                "--model",
                "bvpn",
                "--data",
                str(tiny_print),
                "--out",
                str(bundle),
                "--no-progress",
                *TINY,
            ]
        )
        == 0
    )
    assert (bundle / "bundle.yaml").is_file() and (bundle / "weights.safetensors").is_file()
    # A frame of an odd size, not a multiple of the tile: the map comes back at its resolution.
    inputs = tmp_path / "in" / "sub"
    inputs.mkdir(parents=True)
    frame = SceneRenderer(product="print", width_px=100, height_px=77, seed=3).render(0).image
    cv2.imwrite(str(inputs / "odd.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    assert (
        main(
            [
                "predict",
                "--bundle",
                str(bundle),
                "--input",
                str(tmp_path / "in"),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    with open(out / "scores.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["path"] == "sub/odd.png"
    assert rows[0]["verdict"] in ("OK", "NG")
    m = np.load(out / "maps" / "sub" / "odd.npy")
    assert m.shape == (77, 100) and m.dtype == np.float32 and np.isfinite(m).all()
    capsys.readouterr()
    assert main(["eval", "--bundle", str(bundle), "--data", str(tiny_print), "--no-progress"]) == 0
    report = capsys.readouterr().out
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max"):
        assert key in report


def test_auto_weights_the_tile_modules_by_their_pseudo_defect_auroc(tiny_print: Path, tmp_path: Path) -> None:
    from pipelines.bundle import load_bundle

    bundle = tmp_path / "b"
    argv = ["train", "--model", "bvpn", "--data", str(tiny_print), "--out", str(bundle), "--no-progress"]
    assert main([*argv, *TINY]) == 0
    b = load_bundle(bundle)
    info = b.meta.training["tile_modules"]
    assert info["method"].startswith("auto")
    aurocs = [info["pseudo_auroc"]["focus"], info["pseudo_auroc"]["peripheral"]]
    weights = b.tensors["net.weights"].tolist()
    assert weights == pytest.approx(info["weights"], abs=1e-4) and max(weights) == pytest.approx(1.0)
    if max(aurocs) <= 0.5:  # neither module beats chance (15 iterations): both keep weight 1
        assert weights == [1.0, 1.0]
        return
    # The better module has weight 1; a module no better than chance has weight 0.
    best = int(np.argmax(aurocs))
    assert weights[best] == pytest.approx(1.0)
    for a, w in zip(aurocs, weights, strict=True):
        assert (w == 0.0) == (a <= 0.5)


def test_ablation_switch_is_honoured(tiny_print: Path, tmp_path: Path) -> None:
    from pipelines.bundle import load_bundle

    bundle = tmp_path / "b"
    argv = ["train", "--model", "bvpn", "--data", str(tiny_print), "--out", str(bundle), "--no-progress"]
    assert main([*argv, *TINY, "--modules", "focus"]) == 0
    meta = load_bundle(bundle).meta
    assert meta.params["modules"] == ["focus"]
    assert "logical" not in meta.params


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ("taps=10", "taps=\\[10\\]: .*first at stride 8 \\(blocks 3-4\\)"),  # stride 16 first
        ("taps=3,99", "taps=\\[3, 99\\]: blocks of efficientnet-lite0 \\(0-15\\)"),
        ("student_convs=0", "student_convs=0: at least 1"),
    ],
)
def test_bad_teacher_or_student_is_one_line(
    tiny_print: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], setting: str, words: str
) -> None:
    import re

    out = tmp_path / "b"
    argv = ["train", "--model", "bvpn", "--data", str(tiny_print), "--out", str(out), "--no-progress"]
    assert main([*argv, *TINY, "--set", setting]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(words, err[0]), err
    assert not out.exists()


def test_logical_module_sees_layout_defects() -> None:
    r = SceneRenderer(product="print", width_px=256, height_px=256, seed=11)
    good = [r.render(i).image for i in range(40)]
    module = fit_logical(good[:30], good[30:36], work_px=96, classes=6, min_component_px=3, seed=0)
    good_scores = [module(r.render(i).image).score for i in range(100, 112)]
    bad_scores = {d: [module(r.render(i, defect=d).image).score for i in range(200, 206)] for d in LOGICAL}
    for d, bad in bad_scores.items():
        auroc = image_auroc(np.r_[good_scores, bad], np.r_[np.zeros(len(good_scores)), np.ones(len(bad))])
        assert auroc >= 0.9, (d, auroc)


def test_shifted_elements_need_the_out_of_place_score() -> None:
    """A shifted element keeps every count and colour: the statistics alone miss it."""
    r = SceneRenderer(product="print", width_px=256, height_px=256, seed=11)
    good = [r.render(i).image for i in range(40)]
    module = fit_logical(good[:30], good[30:36], work_px=96, classes=6, min_component_px=3, seed=0)
    assert module.blob_q is not None
    labels = np.r_[np.zeros(12), np.ones(6)]
    imgs = [r.render(i).image for i in range(100, 112)] + [
        r.render(i, defect="shifted").image for i in range(200, 206)
    ]
    with_area = image_auroc(np.array([module(img).score for img in imgs]), labels)
    module.blob_q = None
    stats_only = image_auroc(np.array([module(img).score for img in imgs]), labels)
    assert with_area >= 0.9 and stats_only < 0.75, (with_area, stats_only)


def test_logical_score_is_aligned_with_the_tile_scale_and_survives_the_bundle() -> None:
    from pipelines.models.bvpn.logical import LogicalModule

    r = SceneRenderer(product="print", width_px=128, height_px=128, seed=5)
    imgs = [r.render(i).image for i in range(26)]
    module = fit_logical(imgs[:20], imgs[20:], work_px=64, classes=5, min_component_px=3, seed=0)
    units = np.array([module.unit_score(*module.parts(img)[:2]) for img in imgs[20:]])
    before = np.array([module(img).score for img in imgs[20:]])
    assert before == pytest.approx(units)  # unaligned: the held-out scale itself
    module.align_to(np.array([0.2, 0.4, 0.5, 1.6]))
    assert module.score_to.tolist() == pytest.approx([0.45, 1.6])
    after = np.array([module(img).score for img in imgs[20:]])
    assert after == pytest.approx(0.45 + units * (1.6 - 0.45))
    params, tensors = module.to_bundle()
    again = LogicalModule.from_bundle(params, tensors)
    assert again.rare_tau == module.rare_tau and again.blob_q is not None
    assert np.array([again(img).score for img in imgs[20:]]) == pytest.approx(after, rel=1e-5)


def test_layout_consistency_tells_registered_prints_from_free_textures() -> None:
    values = {}
    for product in ("print", "paper"):
        r = SceneRenderer(product=product, width_px=256, height_px=256, seed=21)
        imgs = [r.render(i).image for i in range(24)]
        m = fit_logical(imgs[:20], imgs[20:], work_px=128, classes=6, min_component_px=4, seed=0)
        values[product] = m.layout_consistency()
    assert values["print"] >= 0.78 > values["paper"]


def test_calibrate_aligns_the_logical_branch_with_the_tile_branch(
    tiny_print: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from pipelines.bundle import load_bundle
    from pipelines.data import read_image
    from pipelines.inspector import Inspector

    bundle = tmp_path / "b"
    argv = ["train", "--model", "bvpn", "--data", str(tiny_print), "--out", str(bundle), "--no-progress"]
    assert main([*argv, *TINY, "--modules", "focus,peripheral,logical"]) == 0
    good = tmp_path / "good"
    good.mkdir()
    scene = SceneRenderer(product="print", width_px=128, height_px=128, seed=3)
    for i in range(40):
        cv2.imwrite(str(good / f"{i:03d}.png"), cv2.cvtColor(scene.render(500 + i).image, cv2.COLOR_RGB2BGR))
    capsys.readouterr()
    calibrate = ["calibrate", "--bundle", str(bundle), "--good", str(good), "--target-frr", "0.05"]
    assert main([*calibrate, "--no-progress"]) == 0
    out = capsys.readouterr().out
    out = json.loads(out[out.index("{") :])
    cal = load_bundle(bundle).meta.calibration
    assert cal.details["branch_alignment"]["method"] == "tail on tail"
    assert cal.global_gain != 1.0 and cal.global_gain == pytest.approx(out["global_gain"])
    # The inspector applies what calibrate measured: on the calibration images it rejects exactly
    # the share calibrate reported, and neither branch alone rejects more than half the target.
    insp = Inspector(load_bundle(bundle), backend="torch", threads=1)
    analyses = [insp.analyse(read_image(p)) for p in sorted(good.glob("*.png"))]
    threshold = cal.image_threshold
    assert np.mean([a.score >= threshold for a in analyses]) == pytest.approx(out["expected_frr"])
    for part in ("tile_score", "global_score"):
        assert sum(getattr(a, part) >= threshold for a in analyses) <= 1  # 40 x 0.05 / 2
