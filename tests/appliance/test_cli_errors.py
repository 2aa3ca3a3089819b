"""A person's mistakes end with one clear line, a non-zero exit and no traceback."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from appliance.cli import main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def _one_line(err: str, *words: str) -> None:
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, err


def test_missing_data_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(
        capsys, "train", "--model", "bvpn", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "b")
    )
    assert code == 2
    _one_line(err, "nope", "does not exist")
    assert not (tmp_path / "b").exists()


def test_empty_train_good(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "d" / "train" / "good").mkdir(parents=True)
    code, err = _run(
        capsys, "train", "--model", "patchcore", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "b")
    )
    assert code == 2
    _one_line(err, "train/good", "no images")


def test_unreadable_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "d" / "train" / "good"
    good.mkdir(parents=True)
    for i in range(6):
        cv2.imwrite(str(good / f"{i}.png"), np.full((64, 64, 3), 128, np.uint8))
    (good / "broken.png").write_bytes(b"\x89PNG not really")
    code, err = _run(
        capsys,
        "train",
        "--model",
        "patchcore",
        "--data",
        str(tmp_path / "d"),
        "--out",
        str(tmp_path / "b"),
        "--no-progress",
    )
    assert code == 2
    _one_line(err, "broken.png", "cannot be read")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("kind", ["missing", "foreign", "corrupt"])
def test_bad_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    bundle = tmp_path / "b"
    if kind == "foreign":
        bundle.mkdir()
        (bundle / "bundle.yaml").write_text("model: yolo\n")
    elif kind == "corrupt":
        bundle.mkdir()
        (bundle / "bundle.yaml").write_text("format: aoi-bundle\nformat_version: 1\nfamily: [\n")
    images = tmp_path / "imgs"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.zeros((64, 64, 3), np.uint8))
    code, err = _run(
        capsys, "predict", "--bundle", str(bundle), "--input", str(images), "--out", str(tmp_path / "o")
    )
    assert code == 2
    _one_line(err, str(bundle))


def test_config_with_misspelt_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "line.yaml"
    cfg.write_text("camera:\n  type: synthetic\ninspection:\n  bundle: b\n  dedline_ms: 300\n")
    code, err = _run(capsys, "config", "validate", str(cfg))
    assert code == 2
    _one_line(err, "inspection.dedline_ms", "unknown key")


def test_config_with_bad_value_names_allowed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "line.yaml"
    cfg.write_text("camera:\n  type: webcam\ninspection:\n  bundle: b\n")
    code, err = _run(capsys, "config", "validate", str(cfg))
    assert code == 2
    _one_line(err, "camera", "webcam")


def test_valid_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "line.yaml"
    cfg.write_text("camera:\n  type: synthetic\ninspection:\n  bundle: b\n  deadline_ms: 300\n")
    assert main(["config", "validate", str(cfg)]) == 0
    assert "valid" in capsys.readouterr().out
