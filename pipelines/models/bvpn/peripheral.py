"""BVPN's peripheral summary statistics: how the whole surface looks, against good surfaces.

Peripheral vision does not resolve detail; it sees a region through summary
statistics of its texture (Rosenholtz's texture tiling model; Freeman and
Simoncelli, "Metamers of the ventral stream"), and it is nearly colour-blind.
The peripheral module's autoencoder map sees context a few hundred pixels wide;
this score sees the whole frame: a surface that is rougher, smoother, blurred
or grainier everywhere (wear, a different finish, a worn tool, a dirty lens)
has no single place that stands out, so a map's peak misses it.

Per image, inside a margin (the frame's edge bands, where padding and
vignetting live): the grey image's Laplacian pyramid over `levels` octaves
and, per octave, the band's mean absolute value, its standard deviation
(both log), its kurtosis and the mean absolute horizontal and vertical
differences of the octave's image (log): 5 numbers per octave. Good images
give their mean and spread; the score is the Mahalanobis distance of the
standardised statistics, with a Ledoit-Wolf shrunk covariance (a few hundred
images for 25 statistics). Like the logical module's scores it is put on the
held-out scale (median 0, maximum 1) and aligned with the tile score's
held-out median and maximum (`score_to`), so one image threshold cuts it at
the same point of its good tail.

Cost: about 23 ms on a 1913x2624 frame (cv2, timeit). BENCHMARKS.md,
session 13, has what it adds to bsdata and deeppcb.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from pipelines.models.base import GlobalBranch, GlobalResult

STATS_PER_LEVEL = 5  # log mean |band|, log std band, kurtosis, log mean |dx|, log mean |dy|
EDGE_MARGIN_PX = 32  # the widest edge band (pipelines.edges.BANDS_PX)
MIN_LEVEL_PX = 8  # the coarsest octave keeps at least this many pixels on its short side
_EPS = 1e-4


def interior(rgb: np.ndarray) -> np.ndarray:
    """The grey image (float32) inside the edge margin: 32 px, or an eighth of a small frame's side."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb
    m = min(EDGE_MARGIN_PX, min(grey.shape[:2]) // 8)
    inner = grey[m : grey.shape[0] - m, m : grey.shape[1] - m] if m else grey
    return np.ascontiguousarray(inner, dtype=np.float32)


def held_out_scale(tile_scores: np.ndarray) -> np.ndarray:
    """`score_to` of a whole-image branch whose score is on the held-out scale (median 0, maximum
    1): the held-out tile scores' median and maximum (a little above the median if they agree)."""
    med, top = float(np.median(tile_scores)), float(np.max(tile_scores))
    return np.array([med, max(top, med + 1e-3)])


def levels_for(height_px: int, width_px: int, *, most: int = 5) -> int:
    """Octaves a frame of this size supports (its interior's short side halves each octave)."""
    side = min(height_px, width_px) - 2 * min(EDGE_MARGIN_PX, min(height_px, width_px) // 8)
    n = 1
    while n < most and side >> n >= MIN_LEVEL_PX:
        n += 1
    return n


def summary_features(rgb: np.ndarray, levels: int) -> np.ndarray:
    """The image's `levels * STATS_PER_LEVEL` texture statistics (float64)."""
    cur = interior(rgb)
    out: list[float] = []
    for _ in range(levels):
        h, w = cur.shape
        if min(h, w) >= 2:
            down = cv2.pyrDown(cur)
            band = cv2.subtract(cur, cv2.pyrUp(down, dstsize=(w, h)))
        else:  # a frame too small for this octave: no detail left
            down, band = cur, np.zeros_like(cur)
        n = band.size
        _, sd = cv2.meanStdDev(band)
        m2, s2 = cv2.meanStdDev(cv2.multiply(band, band))
        e2, e4 = float(m2[0, 0]), float(s2[0, 0]) ** 2 + float(m2[0, 0]) ** 2
        dx = cv2.norm(cur[:, 1:], cur[:, :-1], cv2.NORM_L1) / max(h * (w - 1), 1) if w > 1 else 0.0
        dy = cv2.norm(cur[1:], cur[:-1], cv2.NORM_L1) / max((h - 1) * w, 1) if h > 1 else 0.0
        out += [
            np.log(cv2.norm(band, cv2.NORM_L1) / n + _EPS),
            np.log(float(sd[0, 0]) + _EPS),
            e4 / max(e2 * e2, 1e-8),
            np.log(dx + _EPS),
            np.log(dy + _EPS),
        ]
        cur = down
    return np.array(out, dtype=np.float64)


def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, float]:
    """(covariance shrunk towards a scaled identity, shrinkage), Ledoit and Wolf (2004)."""
    n, p = x.shape
    xc = x - x.mean(0)
    s = xc.T @ xc / n
    mu = float(np.trace(s)) / p
    d2 = float(((s - mu * np.eye(p)) ** 2).sum())
    if d2 <= 0.0:
        return mu * np.eye(p), 1.0
    sq = xc**2
    b2 = float((sq.T @ sq).sum() / n - (s**2).sum()) / n  # mean over samples of ||x x^T - S||^2, / n
    a = min(max(b2, 0.0), d2) / d2
    return a * mu * np.eye(p) + (1 - a) * s, a


@dataclasses.dataclass
class SummaryStatistics(GlobalBranch):
    levels: int
    mean: np.ndarray  # (F,) good images' statistics
    scale: np.ndarray  # (F,) their spread (the standardisation)
    precision: np.ndarray  # (F, F) inverse of the shrunk covariance of the standardised statistics
    score_q: np.ndarray  # (2,) distance: held-out median and maximum
    score_to: np.ndarray = dataclasses.field(default_factory=lambda: np.array([0.0, 1.0]))
    shrinkage: float = 0.0

    def distance(self, rgb: np.ndarray) -> float:
        d = (summary_features(rgb, self.levels) - self.mean) / self.scale
        return float(np.sqrt(max(float(d @ self.precision @ d), 0.0)))

    def unit_score(self, rgb: np.ndarray) -> float:
        """The distance on the held-out scale: median 0, maximum 1."""
        lo, hi = float(self.score_q[0]), float(self.score_q[1])
        return (self.distance(rgb) - lo) / max(hi - lo, 1e-6)

    def __call__(self, rgb: np.ndarray) -> GlobalResult:
        lo, hi = float(self.score_to[0]), float(self.score_to[1])
        return GlobalResult(lo + self.unit_score(rgb) * (hi - lo), None)

    def align_to(self, tile_scores: np.ndarray) -> None:
        """Held-out median -> the tile score's held-out median, maximum -> maximum."""
        self.score_to = held_out_scale(tile_scores)

    def to_bundle(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        params = {"levels": self.levels, "shrinkage": round(self.shrinkage, 6)}
        tensors = {
            "stats.mean": self.mean.astype(np.float32),
            "stats.scale": self.scale.astype(np.float32),
            "stats.precision": self.precision.astype(np.float32),
            "stats.score_q": self.score_q.astype(np.float32),
            "stats.score_to": np.asarray(self.score_to, np.float32),
        }
        return params, tensors

    @classmethod
    def from_bundle(cls, params: dict[str, Any], tensors: dict[str, np.ndarray]) -> SummaryStatistics:
        f64 = {k: np.asarray(tensors[f"stats.{k}"], np.float64) for k in ("mean", "scale", "precision")}
        return cls(
            levels=int(params["levels"]),
            score_q=np.asarray(tensors["stats.score_q"], np.float64),
            score_to=np.asarray(tensors["stats.score_to"], np.float64),
            shrinkage=float(params.get("shrinkage", 0.0)),
            **f64,
        )


def fit_summary_statistics(
    train: Sequence[np.ndarray], held: Sequence[np.ndarray], *, most_levels: int = 5
) -> SummaryStatistics:
    """Good images' statistics from `train`; the held-out scale from `held` (at least one image)."""
    if not held or len(train) < 2:
        from pipelines.errors import ModelError

        raise ModelError(
            "peripheral statistics need 2 training and 1 held-out good image;"
            f" got {len(train)} and {len(held)}"
        )
    h = min(img.shape[0] for img in train)
    w = min(img.shape[1] for img in train)
    levels = levels_for(h, w, most=most_levels)
    x = np.stack([summary_features(img, levels) for img in train])
    mean = x.mean(0)
    scale = np.maximum(x.std(0), 1e-3 * np.maximum(np.abs(mean), 1.0))  # a statistic that never varies
    cov, shrinkage = ledoit_wolf((x - mean) / scale)
    branch = SummaryStatistics(
        levels=levels,
        mean=mean,
        scale=scale,
        precision=np.linalg.inv(cov),
        score_q=np.array([0.0, 1.0]),
        shrinkage=shrinkage,
    )
    d = np.array([branch.distance(img) for img in held])
    branch.score_q = np.array([float(np.median(d)), max(float(d.max()), float(np.median(d)) + 1e-3)])
    return branch
