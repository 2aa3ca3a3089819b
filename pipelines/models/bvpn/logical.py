"""BVPN's logical module: clustering-based segmentation judged by its components.

Whole image, not tiles: logical anomalies (a missing, extra, recoloured or
moved element) look normal locally and only show in the layout. The image is
reduced to `work_px` on its long side (a layout judgement, not a defect
search: the structural modules see full resolution), converted to CIELAB and
each pixel is assigned to one of K colour classes learnt from good images
(k-means). Per class we measure the area fraction, the number of connected
components, the mean colour and the centroid; the image score is the largest
z-score of these against the good images. Where all good images share one
size (registered products) we also keep the per-pixel class frequency of good
images, and the map marks pixels whose class is rare at that place.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import cv2
import numpy as np

from pipelines.models.base import GlobalBranch, GlobalResult

STATS_PER_CLASS = 7  # area, components, L, a, b, cx, cy


def _work_image(rgb: np.ndarray, work_px: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    scale = work_px / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (3, 3), 0)
    return cv2.cvtColor(small, cv2.COLOR_RGB2LAB).astype(np.float32)


@dataclasses.dataclass
class LogicalModule(GlobalBranch):
    work_px: int
    centroids: np.ndarray  # (K, 3) Lab
    min_component_px: int
    stat_mean: np.ndarray  # (K * 7,)
    stat_scale: np.ndarray  # (K * 7,)
    score_q: np.ndarray  # (2,) raw score quantiles on held-out good images
    layout: np.ndarray | None = None  # (K, h, w) class frequency of good images
    map_q: np.ndarray | None = None  # (2,)

    # -- the measurements ----------------------------------------------------
    def labels(self, lab: np.ndarray) -> np.ndarray:
        flat = lab.reshape(-1, 3)
        d = (
            (flat * flat).sum(1, keepdims=True)
            - 2 * flat @ self.centroids.T
            + (self.centroids**2).sum(1)[None]
        )
        return d.argmin(1).reshape(lab.shape[:2]).astype(np.int32)

    def stats(self, labels: np.ndarray, lab: np.ndarray) -> np.ndarray:
        h, w = labels.shape
        k = len(self.centroids)
        out = np.zeros((k, STATS_PER_CLASS), np.float64)
        ys, xs = np.mgrid[0:h, 0:w]
        for c in range(k):
            m = labels == c
            area = int(m.sum())
            n, _, st, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)
            comps = int((st[1:, cv2.CC_STAT_AREA] >= self.min_component_px).sum()) if n > 1 else 0
            if area:
                col = lab[m].mean(0)
                cy, cx = ys[m].mean() / h, xs[m].mean() / w
            else:
                col, cy, cx = self.centroids[c], 0.5, 0.5
            out[c] = [area / (h * w), comps, *col, cx, cy]
        return out.reshape(-1)

    def raw(self, rgb: np.ndarray) -> tuple[float, np.ndarray | None, np.ndarray]:
        lab = _work_image(rgb, self.work_px)
        labels = self.labels(lab)
        z = np.abs(self.stats(labels, lab) - self.stat_mean) / self.stat_scale
        score = float(np.sort(z)[-2:].mean())  # two largest: robust to one noisy statistic
        rare = None
        if self.layout is not None and self.layout.shape[1:] == labels.shape:
            freq = np.take_along_axis(self.layout, labels[None], axis=0)[0]
            rare = cv2.GaussianBlur((1.0 - freq).astype(np.float32), (5, 5), 0)
        return score, rare, labels

    def __call__(self, rgb: np.ndarray) -> GlobalResult:
        raw_score, rare, _ = self.raw(rgb)
        score = float((raw_score - self.score_q[0]) / max(self.score_q[1] - self.score_q[0], 1e-6))
        h, w = rgb.shape[:2]
        if rare is None or self.map_q is None:
            return GlobalResult(score, np.zeros((h, w), np.float32))
        m = (rare - self.map_q[0]) / max(float(self.map_q[1] - self.map_q[0]), 1e-6)
        # The map only speaks where the layout statistics say the image is unusual.
        m = m * float(np.clip(score, 0.0, 1.0))
        return GlobalResult(score, cv2.resize(m.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR))

    def layout_consistency(self) -> float:
        """Mean over pixels of the most frequent class's share in good images: near 1
        for registered products (prints), low for free textures; 0 without a layout."""
        return float(self.layout.max(0).mean()) if self.layout is not None else 0.0

    # -- persistence ---------------------------------------------------------
    def to_bundle(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        params = {
            "work_px": self.work_px,
            "min_component_px": self.min_component_px,
            "layout": self.layout is not None,
        }
        tensors = {
            "logical.centroids": self.centroids.astype(np.float32),
            "logical.stat_mean": self.stat_mean.astype(np.float32),
            "logical.stat_scale": self.stat_scale.astype(np.float32),
            "logical.score_q": self.score_q.astype(np.float32),
        }
        if self.layout is not None and self.map_q is not None:
            tensors["logical.layout"] = self.layout.astype(np.float32)
            tensors["logical.map_q"] = self.map_q.astype(np.float32)
        return params, tensors

    @classmethod
    def from_bundle(cls, params: dict[str, Any], tensors: dict[str, np.ndarray]) -> LogicalModule:
        return cls(
            work_px=int(params["work_px"]),
            centroids=tensors["logical.centroids"].astype(np.float32),
            min_component_px=int(params["min_component_px"]),
            stat_mean=tensors["logical.stat_mean"].astype(np.float64),
            stat_scale=tensors["logical.stat_scale"].astype(np.float64),
            score_q=tensors["logical.score_q"].astype(np.float64),
            layout=tensors.get("logical.layout"),
            map_q=tensors.get("logical.map_q"),
        )


def fit_logical(
    train: list[np.ndarray],
    held: list[np.ndarray],
    *,
    work_px: int,
    classes: int,
    min_component_px: int,
    seed: int,
) -> LogicalModule:
    """Learn the colour classes, the good statistics and the layout from good images."""
    labs = [_work_image(img, work_px) for img in train]
    rng = np.random.default_rng(seed)
    pix = np.concatenate([lab.reshape(-1, 3)[rng.choice(lab.shape[0] * lab.shape[1], 2000)] for lab in labs])
    cv2.setRNGSeed(seed)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 50, 0.1)
    _, _, centers = cv2.kmeans(  # type: ignore[call-overload]
        pix.astype(np.float32), classes, None, criteria, 3, cv2.KMEANS_PP_CENTERS
    )
    centers = centers[np.argsort(centers[:, 0])]  # by lightness, so classes have a stable order
    module = LogicalModule(
        work_px=work_px,
        centroids=centers.astype(np.float32),
        min_component_px=min_component_px,
        stat_mean=np.zeros(classes * STATS_PER_CLASS),
        stat_scale=np.ones(classes * STATS_PER_CLASS),
        score_q=np.array([0.0, 1.0]),
    )
    labels = [module.labels(lab) for lab in labs]
    s = np.stack([module.stats(lbl, lab) for lbl, lab in zip(labels, labs, strict=True)])
    module.stat_mean = s.mean(0)
    # A floor on the spread: a statistic that never varies over good images
    # (e.g. always exactly 3 logos) must still give a finite, large z-score.
    floor = 0.02 * np.abs(module.stat_mean) + np.tile([2e-3, 0.3, 1.0, 1.0, 1.0, 5e-3, 5e-3], classes)
    module.stat_scale = np.maximum(s.std(0), floor)
    if len({lbl.shape for lbl in labels}) == 1:
        onehot = np.stack([np.eye(classes, dtype=np.float32)[lbl].transpose(2, 0, 1) for lbl in labels])
        layout = onehot.mean(0)
        layout = np.stack([cv2.GaussianBlur(ch, (5, 5), 0) for ch in layout])
        module.layout = layout / layout.sum(0, keepdims=True).clip(1e-6)
    raws = [module.raw(img) for img in held]
    scores = np.array([r[0] for r in raws])
    module.score_q = np.array([np.median(scores), max(scores.max(), np.median(scores) + 1e-3)])
    if module.layout is not None and all(r[1] is not None for r in raws):
        vals = np.concatenate([r[1].ravel() for r in raws if r[1] is not None])
        module.map_q = np.quantile(vals, [0.5, 0.999])
    return module
