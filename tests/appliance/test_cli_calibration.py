"""`aoi calibrate` commissioning steps, run through their own argparse parser on files in tmp:
each writes its artefact and prints one JSON line (or a table); bad input is one clear error."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from appliance.cli.calibration_cmds import add_commands
from calibration.capture import CaptureReference
from calibration.errors import CalibrationError
from calibration.flatfield import FlatField
from calibration.scale import PixelScale
from calibration.template import GoldenTemplate


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="aoi calibrate")
    add_commands(parser.add_subparsers(dest="step", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def _write(path: Path, rgb_or_grey: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = rgb_or_grey if rgb_or_grey.ndim == 2 else cv2.cvtColor(rgb_or_grey, cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), img)
    return path


def _json_line(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out.splitlines()[0])


def _print_like(h: int, w: int, *, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 220, np.uint8)
    for _ in range(40):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        colour = tuple(int(c) for c in rng.integers(0, 180, 3))
        if rng.random() < 0.5:
            cv2.rectangle(
                img, (x, y), (x + int(rng.integers(10, 60)), y + int(rng.integers(10, 60))), colour, -1
            )
        else:
            cv2.circle(img, (x, y), int(rng.integers(5, 40)), colour, -1, cv2.LINE_AA)
    return img


def test_flatfield(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    yy, xx = np.mgrid[0:120, 0:160]
    vignette = 1.0 - 0.3 * ((xx - 80) ** 2 + (yy - 60) ** 2) / (80**2 + 60**2)
    rng = np.random.default_rng(0)
    for i in range(4):
        flat = np.clip(10 + 200 * vignette + rng.normal(0, 1, vignette.shape), 0, 255).astype(np.uint8)
        _write(tmp_path / "flats" / f"f{i}.png", flat)
        _write(tmp_path / "darks" / f"d{i}.png", np.full((120, 160), 10, np.uint8))
    out = tmp_path / "flat.npz"
    assert (
        _run(
            [
                "flatfield",
                "--flats",
                str(tmp_path / "flats"),
                "--darks",
                str(tmp_path / "darks"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    line = _json_line(capsys)
    assert line["step"] == "flatfield" and line["n_flats"] == 4 and line["n_darks"] == 4
    assert 20 < line["falloff_pct"] < 31 and line["warnings"] == []
    assert FlatField.load(out).shape == (120, 160)
    with pytest.raises(CalibrationError, match=r"--flats .*nothere is not a folder"):
        _run(["flatfield", "--flats", str(tmp_path / "nothere"), "--out", str(out)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationError, match="holds no images"):
        _run(["flatfield", "--flats", str(tmp_path / "empty"), "--out", str(out)])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"not a png")
    with pytest.raises(CalibrationError, match=r"x\.png"):
        _run(["flatfield", "--flats", str(tmp_path / "broken"), "--out", str(out)])


def _board(*, square_px: int = 40, pattern: tuple[int, int] = (9, 6)) -> np.ndarray:
    """An axis-aligned board with integer squares and a white margin, lightly blurred."""
    nx, ny = pattern[0] + 1, pattern[1] + 1
    img = np.full((ny * square_px + 120, nx * square_px + 120), 230, np.uint8)
    for j in range(ny):
        for i in range(nx):
            if (i + j) % 2 == 0:
                y, x = 60 + j * square_px, 60 + i * square_px
                img[y : y + square_px, x : x + square_px] = 25
    return cv2.GaussianBlur(img, (0, 0), 1.0)


def test_scale_from_a_checkerboard_and_from_points(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    board = _write(tmp_path / "board.png", _board())
    out = tmp_path / "scale.npz"
    assert (
        _run(
            ["scale", "--checkerboard", str(board), "--square-mm", "5", "--pattern", "9x6", "--out", str(out)]
        )
        == 0
    )
    line = _json_line(capsys)
    assert line["mm_per_px"] == pytest.approx(5.0 / 40.0, rel=0.005)
    assert PixelScale.load(out).mm_per_px == pytest.approx(line["mm_per_px"])

    assert _run(["scale", "--points", "10,20,310,420", "--distance-mm", "50", "--out", str(out)]) == 0
    assert _json_line(capsys)["mm_per_px"] == pytest.approx(0.1)

    with pytest.raises(CalibrationError, match=r"no 7x5 checkerboard found in .*board\.png: check --pattern"):
        _run(
            ["scale", "--checkerboard", str(board), "--square-mm", "5", "--pattern", "7x5", "--out", str(out)]
        )
    with pytest.raises(CalibrationError, match=r"--checkerboard .*missing\.png does not exist"):
        _run(
            [
                "scale",
                "--checkerboard",
                str(tmp_path / "missing.png"),
                "--square-mm",
                "5",
                "--pattern",
                "9x6",
                "--out",
                str(out),
            ]
        )
    with pytest.raises(CalibrationError, match="needs --square-mm"):
        _run(["scale", "--checkerboard", str(board), "--out", str(out)])
    with pytest.raises(CalibrationError, match="is not X1,Y1,X2,Y2"):
        _run(["scale", "--points", "1,2,3", "--distance-mm", "5", "--out", str(out)])
    with pytest.raises(CalibrationError, match=r"must end in \.npz"):
        _run(["scale", "--points", "0,0,100,0", "--distance-mm", "5", "--out", str(tmp_path / "scale.yaml")])


def test_template_with_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    world = _print_like(480, 400, seed=1)
    golden = _write(tmp_path / "golden.png", world[40:440, 40:360])
    for name, (dx, dy) in {"a": (3, -2), "b": (-7, 5)}.items():
        _write(tmp_path / "check" / f"{name}.png", world[40 - dy : 440 - dy, 40 - dx : 360 - dx])
    _write(tmp_path / "check" / "z_other.png", _print_like(400, 320, seed=9))
    out = tmp_path / "golden.npz"
    rc = _run(["template", "--golden", str(golden), "--out", str(out), "--check", str(tmp_path / "check")])
    lines = capsys.readouterr().out.splitlines()
    assert json.loads(lines[0])["check_patches"] >= 4
    assert lines[1].split()[:3] == ["image", "result", "dx_px"]
    a, b, other = lines[2].split(), lines[3].split(), lines[4].split()
    assert (
        a[:2] == ["a.png", "ok"]
        and float(a[2]) == pytest.approx(3, abs=0.3)
        and float(a[3]) == pytest.approx(-2, abs=0.3)
    )
    assert b[:2] == ["b.png", "ok"] and float(b[2]) == pytest.approx(-7, abs=0.3)
    assert other[:2] == ["z_other.png", "FAIL"]
    assert lines[5].startswith("2 of 3 aligned")
    assert rc == 1  # one image failed
    assert GoldenTemplate.load(out).shape == (400, 320, 3)

    # --flatfield corrects every image first; one of another camera size is refused by name.
    flat = FlatField(gain=np.ones((400, 320), np.float32), offset=None).save(tmp_path / "mono_flat.npz")
    with pytest.raises(CalibrationError, match=r"frame shape \(400, 320, 3\) does not match the flat-field"):
        _run(["template", "--golden", str(golden), "--out", str(out), "--flatfield", str(flat)])
    flat = FlatField(gain=np.ones((400, 320, 3), np.float32), offset=None).save(tmp_path / "flat.npz")
    assert _run(["template", "--golden", str(golden), "--out", str(out), "--flatfield", str(flat)]) == 0


def test_roi_draws_the_config_polygons(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frame = _write(tmp_path / "frame.png", _print_like(200, 300, seed=2))
    config = tmp_path / "line.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "camera": {"type": "synthetic"},  # other sections are not this command's business
                "roi": {"include": [[[0, 0], [149, 0], [149, 199], [0, 199]]], "exclude": []},
            }
        )
    )
    out = tmp_path / "roi.png"
    assert _run(["roi", "--config", str(config), "--frame", str(frame), "--out", str(out)]) == 0
    line = _json_line(capsys)
    assert line["inspected_pct"] == pytest.approx(50.0) and line["include_polygons"] == 1
    picture = cv2.imread(str(out))
    assert picture is not None and picture.shape == (200, 300, 3)

    config.write_text(yaml.safe_dump({"roi": {"include": [[[0, 0], [5, 5]]]}}))
    with pytest.raises(CalibrationError, match=r"roi.include\[0\] has 2 points"):
        _run(["roi", "--config", str(config), "--frame", str(frame), "--out", str(out)])
    config.write_text(yaml.safe_dump({"roi": {"polygons": []}}))
    with pytest.raises(CalibrationError, match=r"roi.polygons: Extra inputs are not permitted"):
        _run(["roi", "--config", str(config), "--frame", str(frame), "--out", str(out)])
    config.write_text(yaml.safe_dump({"camera": {}}))
    with pytest.raises(CalibrationError, match="has no `roi:` section"):
        _run(["roi", "--config", str(config), "--frame", str(frame), "--out", str(out)])


def test_capture_reference_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = _print_like(300, 240, seed=3).astype(np.float32)
    rng = np.random.default_rng(4)
    for i in range(3):
        good = np.clip(base + rng.normal(0, 2, base.shape), 0, 255).astype(np.uint8)
        _write(tmp_path / "good" / f"g{i}.png", good)
    _write(tmp_path / "line" / "a_ok.png", np.clip(base + 1, 0, 255).astype(np.uint8))
    _write(tmp_path / "line" / "b_dim.png", (base * 0.8).astype(np.uint8))
    out = tmp_path / "capture.npz"
    config = tmp_path / "line.yaml"
    config.write_text(yaml.safe_dump({"capture": {"focus_tile_px": 48}}))
    assert (
        _run(
            [
                "capture-reference",
                "--frames",
                str(tmp_path / "good"),
                "--out",
                str(out),
                "--config",
                str(config),
            ]
        )
        == 0
    )
    line = _json_line(capsys)
    assert line["n_frames"] == 3 and CaptureReference.load(out).n_frames == 3
    rc = _run(
        [
            "capture-check",
            "--reference",
            str(out),
            "--frames",
            str(tmp_path / "line"),
            "--config",
            str(config),
        ]
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:2] == ["a_ok.png", "ok"]
    assert lines[2].split()[:2] == ["b_dim.png", "FAIL"] and "illumination drift" in lines[2]
    assert rc == 1
    with pytest.raises(CalibrationError, match=r"capture.min_focus_ratio"):
        config.write_text(yaml.safe_dump({"capture": {"min_focus_ratio": 3}}))
        _run(
            [
                "capture-check",
                "--reference",
                str(out),
                "--frames",
                str(tmp_path / "line"),
                "--config",
                str(config),
            ]
        )
    with pytest.raises(CalibrationError, match=r"not found: make it with `aoi calibrate capture-reference"):
        _run(
            [
                "capture-check",
                "--reference",
                str(tmp_path / "nothere.npz"),
                "--frames",
                str(tmp_path / "line"),
            ]
        )
