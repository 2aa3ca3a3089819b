"""Scoring folders and datasets with the inspector, for predict, eval and calibrate."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipelines.data import read_image, read_mask, test_samples
from pipelines.inference import Analysis
from pipelines.inspector import Inspector
from pipelines.metrics import evaluate


def analyse_paths(
    inspector: Inspector, paths: list[Path], *, progress: bool, desc: str
) -> Iterator[tuple[Path, Analysis]]:
    for p in tqdm(paths, desc=desc, disable=not progress, unit="img"):
        yield p, inspector.analyse(read_image(p))


def evaluate_dataset(
    inspector: Inspector, root: Path, *, progress: bool = True, limit: int | None = None
) -> dict[str, Any]:
    """Image AUROC, pixel AUROC, AUPRO@0.3 and F1-max on root/test (MVTec layout)."""
    samples = test_samples(root)
    if limit is not None and limit < len(samples):
        idx = np.linspace(0, len(samples) - 1, limit).round().astype(int)
        samples = [samples[i] for i in idx]
    scores, labels, maps, masks = [], [], [], []
    start = time.monotonic()
    for s in tqdm(samples, desc="evaluating", disable=not progress, unit="img"):
        img = read_image(s.path)
        a = inspector.analyse(img)
        scores.append(a.score)
        labels.append(s.label)
        maps.append(a.anomaly_map.astype(np.float16))  # halves memory; metrics are rank-based
        masks.append(read_mask(s.mask_path, shape=img.shape[:2]) if s.mask_path is not None else None)
    seconds = time.monotonic() - start
    full_maps = [m.astype(np.float32) for m in maps]
    result: dict[str, Any] = evaluate(np.array(scores), np.array(labels), full_maps, masks)
    result["seconds_per_image"] = round(seconds / len(samples), 4)
    threshold = inspector.calibration.image_threshold
    pred = np.array(scores) >= threshold
    lab = np.array(labels).astype(bool)
    result["at_calibrated_threshold"] = {
        "threshold": threshold,
        "false_reject_rate": float(pred[~lab].mean()) if (~lab).any() else None,
        "miss_rate": float((~pred[lab]).mean()) if lab.any() else None,
    }
    return result
