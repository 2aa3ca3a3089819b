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
images (the layout): a pixel whose class almost never appears at that place in
good images (frequency < `rare_tau`) is out of place, and the area of the
largest connected patch of such pixels is a second score. It sees a shifted
element (same counts, same colours, wrong place), which the statistics barely
do. Each score is put on the held-out scale (median 0, maximum 1) and the
larger one counts; the map marks the out-of-place pixels.

`score_to` aligns that scale with the tile map's: held-out median -> the tile
score's held-out median, held-out maximum -> the tile score's held-out maximum.
One image threshold then cuts both branches at the same point of their good
tails, and neither branch's heavier tail sets it for the other.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import cv2
import numpy as np

from pipelines.models.base import GlobalBranch, GlobalResult
from pipelines.models.bvpn.peripheral import held_out_scale

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
    score_q: np.ndarray  # (2,) statistics score: median and maximum on held-out good images
    layout: np.ndarray | None = None  # (K, h, w) class frequency of good images
    map_q: np.ndarray | None = None  # (2,)
    rare_tau: float = 0.005  # a class rarer than this at a place is out of place there
    blob_q: np.ndarray | None = None  # (2,) out-of-place area (px): held-out median and maximum
    score_to: np.ndarray = dataclasses.field(default_factory=lambda: np.array([0.0, 1.0]))

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

    def parts(self, rgb: np.ndarray) -> tuple[float, float, np.ndarray | None]:
        """(statistics z-score, largest out-of-place area in work pixels, out-of-place map).

        The area and the map need the layout and a frame of the training size; else 0 and None."""
        lab = _work_image(rgb, self.work_px)
        labels = self.labels(lab)
        z = np.abs(self.stats(labels, lab) - self.stat_mean) / self.stat_scale
        stat = float(np.sort(z)[-2:].mean())  # two largest: robust to one noisy statistic
        if self.layout is None or self.layout.shape[1:] != labels.shape:
            return stat, 0.0, None
        freq = np.take_along_axis(self.layout, labels[None], axis=0)[0]
        out_of_place = (freq < self.rare_tau).astype(np.uint8)
        n, _, st, _ = cv2.connectedComponentsWithStats(out_of_place, connectivity=8)
        area = float(st[1:, cv2.CC_STAT_AREA].max()) if n > 1 else 0.0
        rare = cv2.GaussianBlur((1.0 - freq).astype(np.float32), (5, 5), 0)
        return stat, area, rare

    def unit_score(self, stat: float, area: float) -> float:
        """The larger of the two scores, each on its held-out scale (median 0, maximum 1)."""
        s = (stat - self.score_q[0]) / max(float(self.score_q[1] - self.score_q[0]), 1e-6)
        if self.blob_q is None:
            return float(s)
        b = (area - self.blob_q[0]) / max(float(self.blob_q[1] - self.blob_q[0]), 1e-6)
        return float(max(s, b))

    def __call__(self, rgb: np.ndarray) -> GlobalResult:
        stat, area, rare = self.parts(rgb)
        unit = self.unit_score(stat, area)
        lo, hi = float(self.score_to[0]), float(self.score_to[1])
        score = lo + unit * (hi - lo)
        h, w = rgb.shape[:2]
        if rare is None or self.map_q is None:
            return GlobalResult(score, np.zeros((h, w), np.float32))
        m = (rare - self.map_q[0]) / max(float(self.map_q[1] - self.map_q[0]), 1e-6)
        # The map only speaks where the layout statistics say the image is unusual.
        m = m * float(np.clip(unit, 0.0, 1.0)) * hi
        return GlobalResult(score, cv2.resize(m.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR))

    def align_to(self, tile_scores: np.ndarray) -> None:
        """Put the score on the tile score's held-out scale (see the module docstring)."""
        self.score_to = held_out_scale(tile_scores)

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
            "rare_tau": self.rare_tau,
        }
        tensors = {
            "logical.centroids": self.centroids.astype(np.float32),
            "logical.stat_mean": self.stat_mean.astype(np.float32),
            "logical.stat_scale": self.stat_scale.astype(np.float32),
            "logical.score_q": self.score_q.astype(np.float32),
            "logical.score_to": np.asarray(self.score_to, np.float32),
        }
        if self.blob_q is not None:
            tensors["logical.blob_q"] = self.blob_q.astype(np.float32)
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
            rare_tau=float(params.get("rare_tau", 0.005)),
            blob_q=_f64(tensors.get("logical.blob_q")),
            score_to=_f64(tensors.get("logical.score_to", np.array([0.0, 1.0]))),
        )


def _f64(a: np.ndarray | None) -> Any:
    return None if a is None else np.asarray(a, np.float64)


def fit_logical(
    train: list[np.ndarray],
    held: list[np.ndarray],
    *,
    work_px: int,
    classes: int,
    min_component_px: int,
    seed: int,
    rare_tau: float = 0.005,
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
        rare_tau=rare_tau,
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
    parts = [module.parts(img) for img in held]
    stats = np.array([p[0] for p in parts])
    module.score_q = np.array([np.median(stats), max(stats.max(), np.median(stats) + 1e-3)])
    if module.layout is not None and all(p[2] is not None for p in parts):
        areas = np.array([p[1] for p in parts])
        # Floor: a perfectly registered line has no out-of-place pixels at all on good
        # images; a few stray pixels must not then count as a full-scale anomaly.
        floor = max(4.0 * min_component_px, 1e-3 * module.layout[0].size)
        module.blob_q = np.array([np.median(areas), max(areas.max(), np.median(areas) + floor)])
        vals = np.concatenate([p[2].ravel() for p in parts if p[2] is not None])
        module.map_q = np.quantile(vals, [0.5, 0.999])
    return module
