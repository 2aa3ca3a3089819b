"""Training and inference see frames the same way: the held-out statistics written at training
(map quantiles, the first threshold) describe the scores the inspector gives later.

A mismatch here once put the first threshold at 1.2 while the inspector scored the same good
images at 4.4 (the training cut frames without the inference margin)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipelines.bundle import load_bundle
from pipelines.inspector import Inspector
from pipelines.training import with_margin


def test_held_out_scores_at_training_match_the_inspector(tiny_print_bundle: tuple[Path, Path]) -> None:
    data, bundle_dir = tiny_print_bundle
    bundle = load_bundle(bundle_dir)
    details = bundle.meta.calibration.details
    inspector = Inspector(bundle, backend="torch", threads=1)
    scores = [
        inspector.analyse(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)).score
        for p in sorted((data / "train" / "good").glob("*.png"))
    ]
    # The held-out images are among these; their median and maximum at training lie within what the
    # inspector gives the training images now.
    assert min(scores) - 1e-4 <= details["held_out_score_median"] <= max(scores) + 1e-4
    assert details["held_out_score_max"] <= max(scores) + 1e-4
    # On the calibrated scale good pixels sit mostly below 1: the median pixel of a good image near 0.
    m = inspector.analyse(
        cv2.cvtColor(cv2.imread(str(data / "test" / "good" / "000.png")), cv2.COLOR_BGR2RGB)
    )
    assert abs(float(np.median(m.anomaly_map))) < 0.5


def test_with_margin_reflects_like_inference() -> None:
    img = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)
    padded = with_margin(img, 2)
    assert padded.shape == (9, 10, 3)
    assert np.array_equal(padded[2:7, 2:8], img)
    assert np.array_equal(padded[0, 2:8], img[2]) and np.array_equal(padded[2:7, 0], img[:, 2])
    assert with_margin(img, 0) is img


def test_crops_with_a_reference_come_from_the_same_place() -> None:
    """Golden-reference training: every crop carries the reference frame's crop at its place, also
    where a frame is smaller than a crop (padded alike). The reference is the frame's negative, so
    a crop from the same place is exactly 255 minus the image crop, and from anywhere else is not."""
    from pipelines.training import CropSampler

    frame = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    for crop in (32, 64):  # 64: larger than the frame with its margin on one side
        sampler = CropSampler([frame], crop_px=crop, seed=1, margin_px=8, reference=255 - frame)
        out = sampler.sample_uint8(30)
        assert out.shape == (30, crop, crop, 6)
        np.testing.assert_array_equal(out[..., 3:], 255 - out[..., :3])
        assert len({out[k, 0, 0, 0] for k in range(30)}) > 1  # the places vary
