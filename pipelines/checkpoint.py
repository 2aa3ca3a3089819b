"""Checkpoint selection without real defects: keep the weights whose map best
separates artificial defects from good crops of held-out images.

Why: a distillation student can learn, the longer it trains, to reproduce its
teacher on anything, anomalies included (over-imitation). Measured with IKDFF's
fast profile (BENCHMARKS.md, session 3): on the synthetic package-paper set the
score below peaks at iteration 100-200 (0.998) and falls to 0.93 by iteration
790; on bsdata it rises until iteration 800 and then stays flat. The last
weights are not always the best, and which iteration is best depends on the
data.

How: a fixed validation set made only of held-out good images (never the
test set): `n` random crops at the training crop size, and the same crops
with one artificial defect each (`pipelines.pseudo_defects`: blobs, strokes,
displaced patches). Every `checkpoint_every` iterations and at the end, the
raw map of all 2n crops is scored: the mean of the image AUROC (the map's
maximum per crop) and the pixel AUROC (every second pixel). The weights with
the best score are kept (a copy in memory) and restored when training ends;
ties keep the earlier weights. The scores go into the bundle's training info.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from pipelines.metrics import image_auroc, pixel_auroc
from pipelines.pseudo_defects import add_pseudo_defect
from pipelines.training import CropSampler, to_tensor

RawMap = Callable[[torch.Tensor], torch.Tensor]


class PseudoDefectSelector:
    """Scores a model's raw map on pseudo-defects and keeps the best weights seen."""

    def __init__(
        self, held: list[np.ndarray], *, crop_px: int, n: int = 24, seed: int = 0, batch: int = 8
    ) -> None:
        if not held:
            raise ValueError("checkpoint selection needs at least one held-out good image")
        good = CropSampler(held, crop_px=crop_px, seed=seed + 101).sample_uint8(n)
        rng = np.random.default_rng(seed + 202)
        bad, masks = zip(*(add_pseudo_defect(g, rng) for g in good), strict=True)
        self.x = to_tensor(np.concatenate([good, np.stack(bad)]))
        self.labels = np.r_[np.zeros(n, bool), np.ones(n, bool)]
        empty = np.zeros(good.shape[1:3], bool)
        self.masks: list[np.ndarray] = [empty] * n + [np.asarray(m, bool) for m in masks]
        self.batch = batch
        self.best_score = -np.inf
        self.best_iteration: int | None = None
        self._best_state: dict[str, torch.Tensor] | None = None
        self.history: list[tuple[int, float]] = []

    @torch.inference_mode()
    def score(self, raw_map: RawMap) -> float:
        """Mean of image and pixel AUROC of `raw_map` ((B,3,t,t) -> (B,1,t,t)) on the validation set."""
        maps = torch.cat([raw_map(b) for b in self.x.split(self.batch)])[:, 0].float().numpy()
        img = image_auroc(maps.reshape(len(maps), -1).max(axis=1), self.labels)
        pix = pixel_auroc([m[::2, ::2] for m in maps], [m[::2, ::2] for m in self.masks])
        return 0.5 * (img + pix)

    def consider(self, module: torch.nn.Module, raw_map: RawMap, *, iteration: int) -> float:
        """Score the current weights (the caller puts `module` in eval mode) and keep them if best."""
        value = self.score(raw_map)
        self.history.append((iteration, round(value, 4)))
        if value > self.best_score:
            self.best_score = value
            self.best_iteration = iteration
            self._best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        return value

    def restore_best(self, module: torch.nn.Module) -> None:
        """Load the best weights seen into `module` (nothing to do before the first `consider`)."""
        if self._best_state is not None:
            module.load_state_dict(self._best_state)

    def info(self) -> dict[str, Any]:
        """What the bundle records: the selected iteration, its score and every score seen."""
        return {
            "method": "pseudo-defect AUROC on held-out good crops",
            "selected_iteration": self.best_iteration,
            "selected_score": None if self.best_iteration is None else round(float(self.best_score), 4),
            "history": [list(h) for h in self.history],
        }
