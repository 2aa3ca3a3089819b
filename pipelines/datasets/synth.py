"""Synthetic datasets and line recordings, rendered by `drivers.camera.scene`.

Two layouts, both written atomically (into `<out>.partial-<pid>` beside the
target, renamed into place at the end, removed on any failure or interrupt):

MVTec AD (`write_mvtec_dataset`), what `aoi train` and `aoi eval` read::

    out/train/good/000.png
    out/test/good/000.png
    out/test/<defect>/000.png
    out/ground_truth/<defect>/000_mask.png      (0/255)
    out/synth.json                              (how it was made)

Every image is a distinct part of the same product design (seed). The test
parts come from index ranges of their own (`TEST_GOOD_BASE`, and one range per
defect kind), so the test set stays the same when the number of training
images or the defect list changes.

Line recording (`write_line_recording`), what the replay camera plays back::

    out/frames/000000.png
    out/masks/000000_mask.png                   (defective frames only)
    out/truth.csv                               (frame,defective,defect)
    out/synth.json

Frame `i` is part `i`, and whether it is defective is the synthetic camera's
draw (`drivers.camera.scene.draw_defect`), so a recording equals a live
synthetic run with the same seed, defect rate and defect list. In truth.csv,
`frame` is the frame's path relative to `out`, `defective` is 0 or 1 and
`defect` is empty for a good frame.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import json
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from drivers.camera.scene import (
    LOGICAL_DEFECTS,
    PRODUCTS,
    STRUCTURAL_DEFECTS,
    SceneRenderer,
    allowed_defects,
    draw_defect,
)
from pipelines.errors import PipelineError

# Part-index ranges of the test splits (train uses 0..n_train-1).
TEST_GOOD_BASE = 1_000_000
TEST_DEFECT_BASE = 2_000_000  # + 1_000_000 * (position of the kind in the known defects)
_KNOWN_DEFECTS = STRUCTURAL_DEFECTS + LOGICAL_DEFECTS
# Level 1, Huffman coding only, after the SUB filter: on these noisy frames that is
# 2-3x faster than plain level 1 and the files come out smaller (8 MB for 1913x2624).
_PNG_FLAGS = [
    cv2.IMWRITE_PNG_COMPRESSION,
    1,
    cv2.IMWRITE_PNG_STRATEGY,
    cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
    cv2.IMWRITE_PNG_FILTER,
    cv2.IMWRITE_PNG_FILTER_SUB,
]


class SynthError(PipelineError):
    """A synthetic dataset cannot be written: bad arguments or an unusable output folder."""


def write_mvtec_dataset(
    out_dir: Path,
    *,
    product: str,
    width_px: int,
    height_px: int,
    n_train: int,
    n_test_good: int,
    n_test_per_defect: int,
    defects: Sequence[str],
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write an MVTec-AD-layout dataset of `product`; returns a summary with the
    image count per split (`counts`, e.g. {"train/good": 200, "test/spot": 20})."""
    kinds = _check_defects(product, defects)
    for name, n in (
        ("n_train", n_train),
        ("n_test_good", n_test_good),
        ("n_test_per_defect", n_test_per_defect),
    ):
        _check_count(name, n)
    if n_train + n_test_good + n_test_per_defect * len(kinds) == 0:
        raise SynthError("nothing to write: every image count is 0")
    renderer = _renderer(product, width_px, height_px, seed)
    plan: list[tuple[str, int, str | None, int]] = []  # split, part index, defect, number in split
    plan += [("train/good", i, None, i) for i in range(n_train)]
    plan += [("test/good", TEST_GOOD_BASE + i, None, i) for i in range(n_test_good)]
    for kind in kinds:
        base = TEST_DEFECT_BASE + 1_000_000 * _KNOWN_DEFECTS.index(kind)
        plan += [(f"test/{kind}", base + i, kind, i) for i in range(n_test_per_defect)]
    counts = {split: 0 for split in dict.fromkeys(p[0] for p in plan)}
    digits = {split: max(3, len(str(sum(1 for p in plan if p[0] == split) - 1))) for split in counts}
    started = time.monotonic()
    with _atomic_dir(Path(out_dir), overwrite=overwrite) as tmp:
        for split in counts:
            (tmp / split).mkdir(parents=True)
        for kind in kinds:
            if n_test_per_defect:
                (tmp / "ground_truth" / kind).mkdir(parents=True)
        bar = tqdm(plan, desc=f"synth {product} (mvtec)", unit="img", disable=not progress, leave=False)
        with contextlib.closing(bar):
            for split, index, defect, number in bar:
                out = renderer.render(index, defect=defect)
                stem = f"{number:0{digits[split]}d}"
                _write_png(tmp / split / f"{stem}.png", out.image)
                if defect is not None:
                    _write_png(tmp / "ground_truth" / defect / f"{stem}_mask.png", out.mask)
                counts[split] += 1
        summary = _summary("mvtec", Path(out_dir), renderer, kinds, counts, started)
        summary["index_ranges"] = {
            "train/good": [0, n_train],
            "test/good": [TEST_GOOD_BASE, TEST_GOOD_BASE + n_test_good],
            **{
                f"test/{k}": [
                    TEST_DEFECT_BASE + 1_000_000 * _KNOWN_DEFECTS.index(k),
                    TEST_DEFECT_BASE + 1_000_000 * _KNOWN_DEFECTS.index(k) + n_test_per_defect,
                ]
                for k in kinds
            },
        }
        _write_json(tmp / "synth.json", summary)
    return summary


def write_line_recording(
    out_dir: Path,
    *,
    product: str,
    width_px: int,
    height_px: int,
    n_frames: int,
    defect_rate: float,
    defects: Sequence[str],
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a line recording of `n_frames` parts (frames, masks, truth.csv);
    returns a summary with the frame count per defect kind (`counts`, "good" included)."""
    kinds = _check_defects(product, defects)
    _check_count("n_frames", n_frames)
    if n_frames == 0:
        raise SynthError("nothing to write: n_frames is 0")
    if not isinstance(defect_rate, int | float) or not 0.0 <= float(defect_rate) <= 1.0:
        raise SynthError(f"defect_rate {defect_rate!r} must be a fraction from 0 to 1")
    if defect_rate > 0 and not kinds:
        raise SynthError("defect_rate is above 0 but no defect kinds are listed")
    renderer = _renderer(product, width_px, height_px, seed)
    counts: dict[str, int] = {"good": 0, **{k: 0 for k in kinds}}
    started = time.monotonic()
    with _atomic_dir(Path(out_dir), overwrite=overwrite) as tmp:
        (tmp / "frames").mkdir()
        (tmp / "masks").mkdir()
        bar = tqdm(
            range(n_frames),
            desc=f"synth {product} (recording)",
            unit="frame",
            disable=not progress,
            leave=False,
        )
        with contextlib.closing(bar), (tmp / "truth.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["frame", "defective", "defect"])
            for i in bar:
                defect = draw_defect(seed=seed, index=i, defect_rate=float(defect_rate), defects=kinds)
                out = renderer.render(i, defect=defect)
                _write_png(tmp / "frames" / f"{i:06d}.png", out.image)
                if defect is not None:
                    _write_png(tmp / "masks" / f"{i:06d}_mask.png", out.mask)
                writer.writerow([f"frames/{i:06d}.png", int(defect is not None), defect or ""])
                counts[defect or "good"] += 1
        summary = _summary("recording", Path(out_dir), renderer, kinds, counts, started)
        summary["frames"] = n_frames
        summary["defective"] = n_frames - counts["good"]
        summary["defect_rate"] = float(defect_rate)
        _write_json(tmp / "synth.json", summary)
    return summary


# --------------------------------------------------------------------------- helpers


def _check_defects(product: str, defects: Sequence[str]) -> tuple[str, ...]:
    if product not in PRODUCTS:
        raise SynthError(f"unknown product {product!r}: use one of {', '.join(PRODUCTS)}")
    if isinstance(defects, str):  # a lone string would be read letter by letter
        defects = [defects]
    allowed = allowed_defects(product)
    kinds = tuple(defects)
    for kind in kinds:
        if kind in allowed:
            continue
        if kind in LOGICAL_DEFECTS:
            raise SynthError(
                f"defect {kind!r} is a logical (layout) defect and needs product 'print': "
                f"for {product!r} use any of {', '.join(allowed)}"
            )
        raise SynthError(f"unknown defect {kind!r} for {product!r}: use any of {', '.join(allowed)}")
    repeated = sorted({k for k in kinds if kinds.count(k) > 1})
    if repeated:
        raise SynthError(f"defect(s) listed twice: {', '.join(repeated)}")
    return kinds


def _check_count(name: str, n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise SynthError(f"{name} must be a whole number 0 or more, got {n!r}")


def _renderer(product: str, width_px: int, height_px: int, seed: int) -> SceneRenderer:
    # SceneError is an ApplianceError too; it names the bad size or seed.
    return SceneRenderer(product=product, width_px=width_px, height_px=height_px, seed=seed)


def _write_png(path: Path, pixels: np.ndarray) -> None:
    """Write RGB (HxWx3) or grey (HxW) pixels as PNG; a failed write is an error, not a skip."""
    img = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR) if pixels.ndim == 3 else pixels
    try:
        ok = cv2.imwrite(str(path), img, _PNG_FLAGS)
    except cv2.error as exc:
        raise SynthError(f"could not write {path}: {exc}") from exc
    if not ok:
        raise SynthError(f"could not write {path}: check free space and permissions")


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _summary(
    layout: str,
    out_dir: Path,
    renderer: SceneRenderer,
    kinds: tuple[str, ...],
    counts: dict[str, int],
    started: float,
) -> dict[str, Any]:
    return {
        "layout": layout,
        "out_dir": str(out_dir),
        "generator": "drivers.camera.scene.SceneRenderer",
        "product": renderer.product,
        "paper_grade": renderer.paper_grade,
        "width_px": renderer.width_px,
        "height_px": renderer.height_px,
        "seed": renderer.seed,
        "defects": list(kinds),
        "counts": dict(counts),
        "images": sum(counts.values()),
        "seconds": round(time.monotonic() - started, 3),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


_LEFTOVER = re.compile(r"^(?P<name>.+)\.(?:partial|old)-(?P<pid>\d+)$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove_leftovers(out_dir: Path) -> None:
    """Remove `<out>.partial-<pid>` / `<out>.old-<pid>` folders of writers that
    died without cleaning up (killed, power cut); a live writer's are kept."""
    if not out_dir.parent.is_dir():
        return
    for entry in out_dir.parent.iterdir():
        match = _LEFTOVER.match(entry.name)
        if (
            match
            and match["name"] == out_dir.name
            and entry.is_dir()
            and not entry.is_symlink()
            and not _pid_alive(int(match["pid"]))
        ):
            shutil.rmtree(entry, ignore_errors=True)


@contextlib.contextmanager
def _atomic_dir(out_dir: Path, *, overwrite: bool) -> Iterator[Path]:
    """A scratch folder beside `out_dir` that becomes `out_dir` when the block
    ends normally and vanishes when it raises (KeyboardInterrupt included)."""
    out_dir = Path(os.path.abspath(out_dir))
    if out_dir.is_symlink():
        raise SynthError(f"output folder {out_dir} is a symbolic link: give the real path")
    if out_dir.exists():
        if not out_dir.is_dir():
            raise SynthError(f"output {out_dir} exists and is not a folder: choose another --out")
        if any(out_dir.iterdir()) and not overwrite:
            raise SynthError(
                f"output folder {out_dir} exists and is not empty: choose another --out or pass --overwrite"
            )
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SynthError(f"cannot create the parent folder of {out_dir}: {exc.strerror}") from exc
    _remove_leftovers(out_dir)
    pid = os.getpid()
    tmp = out_dir.with_name(f"{out_dir.name}.partial-{pid}")
    old = out_dir.with_name(f"{out_dir.name}.old-{pid}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
    except OSError as exc:
        raise SynthError(f"cannot write into {out_dir.parent}: {exc.strerror}") from exc
    try:
        yield tmp
        if out_dir.exists():
            # rename() cannot replace a non-empty folder: move the old one aside first.
            os.rename(out_dir, old)
            try:
                os.rename(tmp, out_dir)
            except BaseException:
                os.rename(old, out_dir)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
