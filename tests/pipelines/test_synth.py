"""Synthetic dataset and recording writers: layout, truth, atomicity, refusals."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from drivers.camera.scene import SceneRenderer, draw_defect
from drivers.errors import ApplianceError
from pipelines.datasets import synth
from pipelines.datasets.synth import SynthError, write_line_recording, write_mvtec_dataset

SIZE: dict[str, Any] = {"width_px": 96, "height_px": 80}


def _read(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    return img


def _no_leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def test_mvtec_layout(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    summary = write_mvtec_dataset(
        out,
        product="print",
        n_train=3,
        n_test_good=2,
        n_test_per_defect=2,
        defects=["spot", "missing"],
        seed=2,
        progress=False,
        **SIZE,
    )
    assert summary["counts"] == {"train/good": 3, "test/good": 2, "test/spot": 2, "test/missing": 2}
    assert summary["images"] == 9
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert names == [
        "ground_truth/missing/000_mask.png",
        "ground_truth/missing/001_mask.png",
        "ground_truth/spot/000_mask.png",
        "ground_truth/spot/001_mask.png",
        "synth.json",
        "test/good/000.png",
        "test/good/001.png",
        "test/missing/000.png",
        "test/missing/001.png",
        "test/spot/000.png",
        "test/spot/001.png",
        "train/good/000.png",
        "train/good/001.png",
        "train/good/002.png",
    ]
    img = _read(out / "train/good/000.png")
    assert img.shape == (80, 96, 3) and img.dtype == np.uint8
    # Written as RGB -> BGR, so reading back and converting gives the render.
    expected = SceneRenderer(product="print", seed=2, **SIZE).render(0).image
    np.testing.assert_array_equal(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), expected)
    mask = _read(out / "ground_truth/spot/001_mask.png")
    assert mask.shape == (80, 96) and set(np.unique(mask)) <= {0, 255} and mask.any()
    meta = json.loads((out / "synth.json").read_text())
    assert meta["product"] == "print" and meta["seed"] == 2 and meta["counts"] == summary["counts"]
    assert _no_leftovers(tmp_path) == []


def test_test_split_does_not_depend_on_train_count(tmp_path: Path) -> None:
    kw: dict[str, Any] = {
        "product": "paper",
        "n_test_good": 1,
        "n_test_per_defect": 1,
        "defects": ["hole"],
        "progress": False,
    }
    write_mvtec_dataset(tmp_path / "a", n_train=1, **kw, **SIZE)
    write_mvtec_dataset(tmp_path / "b", n_train=4, **kw, **SIZE)
    for rel in ("test/good/000.png", "test/hole/000.png", "ground_truth/hole/000_mask.png"):
        np.testing.assert_array_equal(_read(tmp_path / "a" / rel), _read(tmp_path / "b" / rel))


def test_line_recording(tmp_path: Path) -> None:
    out = tmp_path / "rec"
    kinds = ("scratch", "wrong_colour")
    summary = write_line_recording(
        out, product="print", n_frames=10, defect_rate=0.5, defects=kinds, seed=9, progress=False, **SIZE
    )
    rows = list(csv.DictReader((out / "truth.csv").open()))
    assert [r["frame"] for r in rows] == [f"frames/{i:06d}.png" for i in range(10)]
    for i, row in enumerate(rows):
        defect = draw_defect(seed=9, index=i, defect_rate=0.5, defects=kinds)
        assert row["defective"] == str(int(defect is not None)) and row["defect"] == (defect or "")
        assert (out / row["frame"]).is_file()
        mask_path = out / "masks" / f"{i:06d}_mask.png"
        assert mask_path.is_file() == (defect is not None)
        if defect is not None:
            assert _read(mask_path).any()
    assert summary["frames"] == 10 and summary["defective"] == sum(r["defective"] == "1" for r in rows)
    assert sum(summary["counts"].values()) == 10


@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_interrupted_write_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    real = cv2.imwrite
    calls = {"n": 0}

    def flaky(path: str, img: np.ndarray, params: list[int] | None = None) -> bool:
        calls["n"] += 1
        if calls["n"] == 4:
            raise exc
        return real(path, img, params or [])

    monkeypatch.setattr(synth.cv2, "imwrite", flaky)
    out = tmp_path / "ds"
    with pytest.raises(type(exc)):
        write_mvtec_dataset(
            out,
            product="paper",
            n_train=5,
            n_test_good=1,
            n_test_per_defect=1,
            defects=["spot"],
            progress=False,
            **SIZE,
        )
    assert calls["n"] == 4
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_failed_png_write_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synth.cv2, "imwrite", lambda *a, **k: False)
    with pytest.raises(SynthError, match="could not write"):
        write_line_recording(
            tmp_path / "rec", product="paper", n_frames=2, defect_rate=0.0, defects=[], progress=False, **SIZE
        )
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_is_refused_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    kw: dict[str, Any] = {
        "product": "paper",
        "n_frames": 2,
        "defect_rate": 0.0,
        "defects": [],
        "progress": False,
        **SIZE,
    }
    with pytest.raises(SynthError, match=r"not empty.*--overwrite"):
        write_line_recording(out, **kw)
    assert (out / "keep.txt").read_text() == "mine"
    write_line_recording(out, overwrite=True, **kw)
    assert not (out / "keep.txt").exists() and (out / "truth.csv").is_file()
    assert _no_leftovers(tmp_path) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    write_line_recording(empty, **kw)  # an empty folder is fine
    assert (empty / "frames" / "000001.png").is_file()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(SynthError, match="not a folder"):
        write_line_recording(a_file, **kw)


def test_stale_partial_of_a_dead_writer_is_removed(tmp_path: Path) -> None:
    stale = tmp_path / "ds.partial-99999999"  # above any pid_max: that writer is gone
    (stale / "train").mkdir(parents=True)
    unrelated = tmp_path / "other.partial-99999999"
    unrelated.mkdir()
    write_line_recording(
        tmp_path / "ds", product="paper", n_frames=1, defect_rate=0.0, defects=[], progress=False, **SIZE
    )
    assert not stale.exists() and unrelated.exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"product": "paper", "defects": ["missing"]}, "logical.*print"),
        ({"product": "print", "defects": ["dent"]}, "unknown defect 'dent'"),
        ({"product": "print", "defects": ["spot", "spot"]}, "twice"),
        ({"product": "wood", "defects": []}, "unknown product"),
        ({"product": "paper", "defects": [], "n_train": -1}, "n_train"),
        ({"product": "paper", "defects": [], "width_px": 10}, "width_px"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {
        "n_train": 1,
        "n_test_good": 1,
        "n_test_per_defect": 1,
        "progress": False,
        **SIZE,
        **kwargs,
    }
    with pytest.raises(ApplianceError, match=match):
        write_mvtec_dataset(tmp_path / "ds", **args)
    assert list(tmp_path.iterdir()) == []


def test_recording_rate_checks(tmp_path: Path) -> None:
    kw: dict[str, Any] = {"product": "paper", "n_frames": 1, "progress": False, **SIZE}
    with pytest.raises(SynthError, match="defect_rate"):
        write_line_recording(tmp_path / "r", defect_rate=1.5, defects=["spot"], **kw)
    with pytest.raises(SynthError, match="no defect kinds"):
        write_line_recording(tmp_path / "r", defect_rate=0.5, defects=[], **kw)
