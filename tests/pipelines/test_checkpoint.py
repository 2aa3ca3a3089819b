"""Checkpoint selection by pseudo-defects: the score tells a seeing map from a blind one, and the
best weights seen are the ones restored."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.checkpoint import PseudoDefectSelector


def _good_images(n: int = 4, size: int = 96) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    base = np.full((size, size, 3), (180, 170, 150), np.float32)
    return [np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8) for _ in range(n)]


def _deviation_map(x: torch.Tensor) -> torch.Tensor:
    """A map that sees anything unlike the crop's median colour: what a working model does here."""
    med = x.flatten(2).median(dim=2).values[..., None, None]
    return (x - med).abs().sum(dim=1, keepdim=True)


def _blind_map(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(x[:, :1])


def test_a_seeing_map_scores_high_and_a_blind_one_at_chance() -> None:
    sel = PseudoDefectSelector(_good_images(), crop_px=64, n=16, seed=3)
    assert sel.x.shape == (32, 3, 64, 64)
    assert sum(m.any() for m in sel.masks) == 16  # every second half crop carries a defect
    assert sel.score(_deviation_map) > 0.85
    assert sel.score(_blind_map) == pytest.approx(0.5)
    # Fixed by the seed: the same crops and defects, the same score.
    again = PseudoDefectSelector(_good_images(), crop_px=64, n=16, seed=3)
    assert torch.equal(again.x, sel.x)


def test_the_best_weights_are_restored_and_ties_keep_the_earlier() -> None:
    sel = PseudoDefectSelector(_good_images(), crop_px=64, n=8, seed=1)
    module = torch.nn.Linear(2, 1)
    for iteration, (weight, raw_map) in enumerate(
        [(1.0, _blind_map), (2.0, _deviation_map), (3.0, _blind_map), (4.0, _deviation_map)], start=1
    ):
        with torch.no_grad():
            module.weight.fill_(weight)
        sel.consider(module, raw_map, iteration=iteration * 10)
    sel.restore_best(module)
    assert module.weight.detach()[0, 0].item() == 2.0  # iteration 20 was best; 40 only tied it
    info = sel.info()
    assert info["selected_iteration"] == 20 and [h[0] for h in info["history"]] == [10, 20, 30, 40]
    assert info["selected_score"] == max(h[1] for h in info["history"])


def test_no_held_out_images_is_an_error() -> None:
    with pytest.raises(ValueError, match="held-out"):
        PseudoDefectSelector([], crop_px=64)
