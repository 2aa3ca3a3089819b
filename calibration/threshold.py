"""Decision thresholds from data, with an honest statement of what the data supports.

Scores are image anomaly scores (higher = more anomalous); a part is rejected
when its score is >= the threshold. Three ways to choose:

- `threshold_for_frr`: aim at a target false-reject rate (FRR) using good
  images only. With enough images the threshold is the empirical quantile; with
  too few for the target it is extrapolated from a model of the upper tail and
  flagged as not supported.
- `threshold_f1`: the best F1 on good and defective images.
- `threshold_cost`: the least expected cost of false rejects and missed defects.

The pixel threshold (which pixels of an anomaly map make up a defect blob, and
so its box and area) is set separately, from sampled map values
(`sample_map_pixels`): `pixel_threshold_for_fpr` from good images only (a
target share of good pixels above it), `pixel_threshold_f1` from defective
images with ground-truth masks (the best pixel F1). `aoi calibrate` caps it at
the image threshold, so every NG part shows at least the region of its peak.

Every result carries the Clopper-Pearson upper confidence bound on the true
FRR given how many good images were at or above the threshold, and one
sentence saying what that means, for the operator and the bundle.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import stats

from calibration.errors import CalibrationError
from pipelines.edges import BANDS_PX, EdgeFit, band_maxima, scaled_max
from pipelines.metrics import image_auroc

__all__ = [
    "MIN_TAIL_SCORES",
    "SURFACE_MODES",
    "SURFACE_SHARE",
    "BadImages",
    "FrrMethod",
    "Fusion",
    "GoodImages",
    "ThresholdResult",
    "align_surface",
    "clopper_pearson_upper",
    "images_needed",
    "pixel_threshold_f1",
    "pixel_threshold_for_fpr",
    "sample_map_pixels",
    "threshold_cost",
    "threshold_f1",
    "threshold_for_frr",
]

FrrMethod = Literal["auto", "quantile", "exponential-tail", "gaussian-tail"]
_FRR_METHODS: tuple[str, ...] = ("auto", "quantile", "exponential-tail", "gaussian-tail")

# A tail fit from fewer scores is guesswork; below this, ask for more images.
MIN_TAIL_SCORES = 20
# The exponential tail is fitted to the excesses of the top 10% of scores, but
# never fewer than this many, so that its scale is not set by two or three values.
_MIN_EXCEEDANCES = 10
MAX_PIXEL_SAMPLES = 65_536  # pixels sampled per map for the pixel threshold (`sample_map_pixels`)
SURFACE_SHARE = 0.1  # the surface score's share of the false-reject target (`align_surface`)
SURFACE_MODES = ("auto", "on", "off")  # `GoodImages`: weighed by defective images, always, never


@dataclasses.dataclass(frozen=True)
class ThresholdResult:
    """A calibrated threshold and what the data behind it supports."""

    threshold: float
    method: str  # "target_frr" | "f1" | "cost"
    n_good: int
    n_bad: int
    target_frr: float | None
    expected_frr: float  # fraction of the given good scores >= threshold
    frr_upper_bound: float  # Clopper-Pearson one-sided upper bound on the true FRR, at `confidence`
    confidence: float
    supported: bool  # False when n_good cannot support target_frr at `confidence`
    message: str  # one sentence for the operator

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready fields (for `bundle.yaml` and `aoi calibrate`)."""
        return dataclasses.asdict(self)


def clopper_pearson_upper(n_rejected: int, n: int, *, confidence: float = 0.95) -> float:
    """One-sided upper confidence bound on a rate after `n_rejected` events in `n` trials."""
    _check_confidence(confidence)
    if n <= 0 or not 0 <= n_rejected <= n:
        raise CalibrationError(f"a rate bound needs 0 <= rejected <= n and n > 0; got {n_rejected} of {n}")
    if n_rejected == n:
        return 1.0
    return float(stats.beta.ppf(confidence, n_rejected + 1, n - n_rejected))


def images_needed(target_frr: float, *, confidence: float = 0.95) -> int:
    """Fewest good images that, with none rejected, bound the FRR at or below `target_frr`.

    Zero rejects in n images bound the rate by 1 - (1 - confidence)^(1/n), so
    n = ln(1 - confidence) / ln(1 - target); for 95% that is the rule of three,
    about 3 / target.
    """
    _check_confidence(confidence)
    if not 0.0 < target_frr < 1.0:
        raise CalibrationError(f"target_frr {target_frr!r} is outside (0, 1): give the rate as a fraction")
    n = max(1, math.ceil(math.log1p(-confidence) / math.log1p(-target_frr)))
    # The closed form can be off by one in floating point; settle it on the bound itself.
    while n > 1 and _zero_reject_bound(n - 1, confidence) <= target_frr:
        n -= 1
    while _zero_reject_bound(n, confidence) > target_frr:
        n += 1
    return n


def threshold_for_frr(
    good_scores: npt.ArrayLike,
    *,
    target_frr: float,
    confidence: float = 0.95,
    method: FrrMethod = "auto",
) -> ThresholdResult:
    """Threshold at which about `target_frr` of good parts are rejected.

    Methods:
    - "quantile": the empirical (1 - target_frr) quantile: at most
      floor(target_frr * n) good scores are >= the threshold, which sits
      midway between the neighbouring distinct scores.
    - "exponential-tail": peaks over threshold with a generalised Pareto tail
      of shape 0: the top 10% of scores (at least 10) above the next score u
      are fitted with an exponential of mean excess `scale`, and the threshold
      is u + scale * ln(p_u / target_frr), p_u the fraction of scores above u.
      Right for exponential-like tails (gamma, log-normal-ish scores),
      conservative (a higher threshold) for Gaussian ones.
    - "gaussian-tail": mean + std * z(1 - target_frr) of all scores; right only
      when the scores are close to normal, optimistic for heavier tails.
    - "auto" (default): "quantile" when n * target_frr >= 1, that is when at
      least one good score can lie above the threshold, else "exponential-tail".

    `supported` is False when even zero rejects among these n images would
    not bound the FRR below the target; the message then says how many images
    would. The threshold is still returned, as the best estimate.
    """
    scores = _scores(good_scores, "good scores", "good")
    _check_target(target_frr)
    _check_confidence(confidence)
    if method not in _FRR_METHODS:
        raise CalibrationError(
            f"unknown FRR threshold method {method!r}: use one of {', '.join(_FRR_METHODS)}"
        )
    n = scores.size
    if method == "auto":
        method = "quantile" if n * target_frr >= 1.0 - 1e-9 else "exponential-tail"
    if method != "quantile" and n < MIN_TAIL_SCORES:
        raise CalibrationError(
            f"only {n} good scores, too few to extrapolate a threshold for "
            f"{_pct_plain(target_frr)} false rejects: "
            f"calibrate with at least {MIN_TAIL_SCORES} good images "
            f"({images_needed(target_frr, confidence=confidence)} to support the target directly)"
        )

    s_desc = np.sort(scores)[::-1]
    if method == "quantile":
        threshold = _quantile_threshold(s_desc, math.floor(target_frr * n + 1e-9))
        how = "at the empirical quantile"
    elif method == "exponential-tail":
        threshold = _exponential_tail_threshold(s_desc, target_frr)
        how = "extrapolated from an exponential fit to the upper tail"
    else:
        threshold = _gaussian_threshold(scores, target_frr)
        how = "extrapolated from a Gaussian fit to all scores"

    n_rejected = int(np.count_nonzero(scores >= threshold))
    bound = clopper_pearson_upper(n_rejected, n, confidence=confidence)
    needed = images_needed(target_frr, confidence=confidence)
    supported = n >= needed
    message = (
        f"with {n} good images, {n_rejected} rejected, the false-reject rate is below "
        f"{_pct_up(bound)} with {_pct_plain(confidence)} confidence "
        f"(target {_pct_plain(target_frr)}, threshold {how})"
    )
    if not supported:
        message += f"; {needed} images would be needed to support {_pct_plain(target_frr)}"
    return ThresholdResult(
        threshold=threshold,
        method="target_frr",
        n_good=n,
        n_bad=0,
        target_frr=float(target_frr),
        expected_frr=n_rejected / n,
        frr_upper_bound=bound,
        confidence=float(confidence),
        supported=supported,
        message=message,
    )


@dataclasses.dataclass(frozen=True)
class BranchAlignment:
    """The gain for a whole-image branch's score and map; see `align_branches`."""

    gain: float
    tile_tail: float
    global_tail: float
    tail_frr: float
    method: str

    def apply(self, global_scores: npt.ArrayLike) -> np.ndarray:
        return self.gain * np.asarray(global_scores, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def align_branches(
    tile_scores: npt.ArrayLike, global_scores: npt.ArrayLike, *, target_frr: float
) -> BranchAlignment:
    """Put a whole-image branch's good-part scores on the tile branch's scale, tail on tail.

    The image score is the larger of the two branches' scores, so one threshold cuts
    both; if one branch's good tail is heavier, it alone sets the threshold and the
    other branch's defects must clear a bar set by noise they do not share. Here the
    global scores are scaled so that their threshold for `target_frr / 2` false rejects
    (`threshold_for_frr`) lands on the tile scores' one: each branch then rejects about
    half the target of good parts at the common threshold. A gain, not an affine map,
    so the branch's map (zero where nothing is wrong) scales with its score. Too few
    images to estimate a tail: the medians are matched instead."""
    t = _scores(tile_scores, "tile scores", "good")
    g = _scores(global_scores, "global scores", "good")
    if t.size != g.size:
        raise CalibrationError(f"{t.size} tile scores but {g.size} global scores: one of each per good image")
    half = target_frr / 2
    try:
        tt = threshold_for_frr(t, target_frr=half).threshold
        tg = threshold_for_frr(g, target_frr=half).threshold
        method = "tail on tail"
    except CalibrationError:
        tt, tg = float(np.median(t)), float(np.median(g))
        method = "medians (too few images for a tail)"
    if tt <= 0 or tg <= 0:
        return BranchAlignment(1.0, tt, tg, half, "none (a tail at or below zero)")
    return BranchAlignment(tt / tg, tt, tg, half, method)


Parts = tuple[float, float]  # one image: (tile score, global branch's max of score and map, or -inf)


def align_parts(good: list[Parts], *, target_frr: float) -> BranchAlignment | None:
    """`align_branches` on the good images' parts; None without a global branch (all -inf)."""
    if not good or not all(math.isfinite(g) for _, g in good):
        return None
    return align_branches([t for t, _ in good], [g for _, g in good], target_frr=target_frr)


def fuse(parts: list[Parts], alignment: BranchAlignment | None) -> np.ndarray:
    """Image scores as the inspector computes them with `alignment`: max(tile, gain * global),
    the gain 1 without one (and the tile score alone without a branch, whose part is -inf)."""
    tiles = np.array([t for t, _ in parts], dtype=np.float64)
    branch = np.array([g for _, g in parts], dtype=np.float64)
    return np.maximum(tiles, branch if alignment is None else alignment.apply(branch))


@dataclasses.dataclass(frozen=True)
class SurfaceAlignment:
    """The surface score's map from the tile map's interior mean: offset + gain * mean."""

    offset: float
    gain: float
    score_median: float
    score_tail: float  # the image scores' tail for `score_tail_frr` (a fraction)
    mean_median: float
    mean_tail: float  # the interior means' tail for `mean_tail_frr`, put on `score_tail`
    score_tail_frr: float
    mean_tail_frr: float

    def apply(self, means: npt.ArrayLike) -> np.ndarray:
        return self.offset + self.gain * np.asarray(means, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def align_surface(
    image_scores: npt.ArrayLike,
    interior_means: npt.ArrayLike,
    *,
    target_frr: float,
    share: float = SURFACE_SHARE,
) -> SurfaceAlignment:
    """Put the good images' interior means on their image scores' scale, median on median and
    tail on tail: the means' tail for `target_frr * share` (`threshold_for_frr`) lands on the
    scores' tail for `target_frr / 2` (the peak's, as in `align_branches`). The surface score
    then rejects about `share` of the target of these good parts at the common threshold, so it
    fires only on surfaces beyond their spread; good parts whose surface these images did not
    show are rejected all the same (deeppcb, BENCHMARKS.md session 12), which is why `GoodImages`
    leaves it off unless defective images weigh it in. Affine, not a gain: a map normalised to
    good pixels has its mean near zero, where a gain alone has no scale.

    Raises CalibrationError, saying why, where it cannot be placed: too few images for the
    tails, means without spread, or a frame without interior."""
    t = _scores(image_scores, "image scores", "good")
    m = np.asarray(interior_means, dtype=np.float64).ravel()
    if m.size != t.size:
        raise CalibrationError(f"{t.size} image scores but {m.size} interior means: one of each per image")
    if not np.isfinite(m).all():
        raise CalibrationError("a frame has no interior (all of it within the edge bands): no surface score")
    tt = threshold_for_frr(t, target_frr=target_frr / 2).threshold
    tm = threshold_for_frr(m, target_frr=target_frr * share).threshold
    mt, mm = float(np.median(t)), float(np.median(m))
    gain = (tt - mt) / (tm - mm) if tm > mm and tt > mt else math.nan
    if not (math.isfinite(gain) and gain > 0):
        raise CalibrationError("the good images' interior means have no spread: no scale for a surface score")
    return SurfaceAlignment(mt - gain * mm, gain, mt, tt, mm, tm, target_frr / 2, target_frr * share)


@dataclasses.dataclass(frozen=True)
class Fusion:
    """How calibration has the inspector make an image's score: the edge gains on the tile map,
    the whole-image branch's gain (`align_branches`) and the surface score (`align_surface`)."""

    edge_gains: tuple[float, ...] | None
    alignment: BranchAlignment | None
    surface: SurfaceAlignment | None
    surface_note: str = ""  # why the surface score is off, where it was asked for

    def scores(self, images: _MeasuredImages) -> np.ndarray:
        """The image scores the inspector will give these images (measured as `_MeasuredImages`)."""
        scores = fuse(images.parts_under(self.edge_gains), self.alignment)
        if self.surface is None:
            return scores
        return np.maximum(scores, self.surface.apply(images.interior_means()))

    def calibration_fields(self) -> dict[str, Any]:
        """The `pipelines.bundle.Calibration` fields it sets."""
        return {
            "global_gain": self.alignment.gain if self.alignment is not None else 1.0,
            "edge_gains": list(self.edge_gains or ()),
            "surface_gain": self.surface.gain if self.surface is not None else 0.0,
            "surface_offset": self.surface.offset if self.surface is not None else 0.0,
        }

    def details(self) -> dict[str, Any]:
        return {
            "branch_alignment": self.alignment.to_dict() if self.alignment is not None else None,
            "surface_alignment": self.surface.to_dict() if self.surface is not None else None,
            **({"surface_off": self.surface_note} if self.surface_note else {}),
        }


class PixelSamples:
    """Pixel samples (`sample_map_pixels`) of images whose map may have two branches,
    kept apart so that they can be fused with a gain chosen after all images are seen;
    with `bands_px`, the tile map's samples keep their edge band too, so that edge gains
    chosen afterwards (`pipelines.edges`) can scale them."""

    def __init__(self) -> None:
        self._tile: list[np.ndarray] = []
        self._global: list[np.ndarray | None] = []
        self._labels: list[np.ndarray | None] = []
        self._bands: list[np.ndarray | None] = []

    def add(
        self,
        anomaly_map: np.ndarray,
        branch_maps: tuple[np.ndarray, np.ndarray | None] | None,
        mask: np.ndarray | None = None,
        *,
        bands_px: tuple[int, ...] | None = None,
    ) -> None:
        tile = anomaly_map if branch_maps is None else branch_maps[0]
        values, labels = sample_map_pixels(tile, mask)
        self._tile.append(values)
        g = None if branch_maps is None else branch_maps[1]
        self._global.append(None if g is None else sample_map_pixels(g)[0])
        self._labels.append(labels)
        self._bands.append(None if bands_px is None else sampled_bands(tile.shape, bands_px))

    def values(
        self, alignment: BranchAlignment | None, edge_gains: tuple[float, ...] | None = None
    ) -> list[np.ndarray]:
        """Per image, the fused map's sampled values with the alignment's gain (and the edge
        gains on the tile map's samples that kept their band)."""
        gain = alignment.gain if alignment is not None else 1.0
        out = []
        for t, g, b in zip(self._tile, self._global, self._bands, strict=True):
            if b is not None and edge_gains is not None:
                t = t * np.asarray(edge_gains, dtype=np.float32)[b]
            out.append(t if g is None else np.maximum(t, gain * g))
        return out

    def labels(self) -> list[np.ndarray]:
        return [lab for lab in self._labels if lab is not None]


class _MeasuredImages:
    """Analyses measured with the whole-image branch's gain at 1, without edge gains and without
    the surface score: per image the tile map's per-band maxima, the branch's part and the
    tile map's interior mean, from which the scores the inspector gives under any edge gains,
    branch gain and surface score follow (`Fusion.scores`)."""

    def __init__(self, bands_px: tuple[int, ...]) -> None:
        self.bands_px = tuple(bands_px)
        self._band_max: list[np.ndarray] = []
        self._global: list[float] = []
        self._interior: list[float] = []

    def __len__(self) -> int:
        return len(self._band_max)

    def _measure(self, analysis: Any) -> np.ndarray:
        """Keep the analysis's branch part and interior mean; returns its tile map, whose band
        maxima the caller keeps."""
        self._global.append(analysis.fusion_parts()[1])
        self._interior.append(math.nan if analysis.surface_mean is None else analysis.surface_mean)
        return analysis.anomaly_map if analysis.branch_maps is None else analysis.branch_maps[0]

    def parts_under(self, edge_gains: tuple[float, ...] | None) -> list[Parts]:
        """Per image (tile score, branch part) as the inspector will see them with `edge_gains`."""
        return [(scaled_max(m, edge_gains), g) for m, g in zip(self._band_max, self._global, strict=True)]

    def interior_means(self) -> np.ndarray:
        """Per image the tile map's interior mean (NaN for a frame without interior)."""
        return np.array(self._interior, dtype=np.float64)

    def set_branch_parts(self, parts: Sequence[float]) -> None:
        """Per image the whole-image branch's part (`pipelines.inference.branch_part`, gain 1), for
        images measured by an analyser without the branch (training aligns the branch with the
        tile scores these images give, then scores it)."""
        if len(parts) != len(self):
            raise CalibrationError(f"{len(parts)} branch parts for {len(self)} images: one per image")
        self._global = [float(g) for g in parts]


class GoodImages(_MeasuredImages):
    """The good images' analyses as calibration needs them (`_MeasuredImages`), so that the
    edge gains, the branch's gain and the surface score can be chosen after all images are
    seen, and sampled map pixels (`pixels`). `edges`: fit edge gains (`pipelines.edges`), else
    none. `surface` (`SURFACE_MODES`): "on" scores the surface too (`align_surface`), "off"
    never, "auto" only where defective images say it separates better (`weigh`)."""

    def __init__(
        self,
        *,
        edges: bool = True,
        surface: str = "auto",
        pixels: bool = True,
        bands_px: tuple[int, ...] = BANDS_PX,
    ):
        if surface not in SURFACE_MODES:
            raise CalibrationError(f"surface {surface!r}: use one of {', '.join(SURFACE_MODES)}")
        self.edge_fit = EdgeFit(bands_px)
        super().__init__(self.edge_fit.bands_px)
        self.fit_edges = edges
        self.surface_mode = surface
        self.use_surface = surface == "on"
        self.pixels = PixelSamples() if pixels else None
        self._gains: tuple[float, ...] | None = None
        self._fitted = False
        self._weighed: dict[str, Any] = {}

    def add(self, analysis: Any) -> None:
        """One good image's `pipelines.inference.Analysis` (made with `keep_branch_maps`)."""
        self._band_max.append(self.edge_fit.add(self._measure(analysis)))
        if self.pixels is not None:
            self.pixels.add(analysis.anomaly_map, analysis.branch_maps, bands_px=self.bands_px)
        self._fitted = False

    def edge_gains(self) -> tuple[float, ...] | None:
        """The fitted edge gains; None when off or when no band needed scaling (all gains 1)."""
        if not self._fitted:
            gains = self.edge_fit.gains() if self.fit_edges else None
            self._gains = gains if gains is not None and any(g < 1.0 for g in gains) else None
            self._fitted = True
        return self._gains

    def fusion(
        self,
        *,
        target_frr: float,
        edge_gains: tuple[float, ...] | Literal["fitted"] | None = "fitted",
        surface: bool | None = None,
        align: bool = True,
    ) -> Fusion:
        """The fusion for these good images: the edge gains (the fitted ones by default), the
        whole-image branch aligned with the tile map (`align`; else its gain stays 1) and the
        surface score aligned with both (`surface`, by default `self.use_surface`)."""
        gains = self.edge_gains() if edge_gains == "fitted" else edge_gains
        parts = self.parts_under(gains)
        alignment = align_parts(parts, target_frr=target_frr) if align else None
        on = self.use_surface if surface is None else surface
        if not on:
            return Fusion(gains, alignment, None)
        try:
            placed = align_surface(fuse(parts, alignment), self.interior_means(), target_frr=target_frr)
        except CalibrationError as exc:
            return Fusion(gains, alignment, None, str(exc))
        return Fusion(gains, alignment, placed)

    def weigh(self, bad: BadImages, *, target_frr: float) -> dict[str, Any]:
        """Keep the fitted edge gains only where they separate these good images from the
        defective ones at least as well as leaving them out, and (surface "auto") the surface
        score only where it separates them better than leaving it out: image AUROC of the scores
        the inspector would give, the branch and the surface aligned for each option; a tie keeps
        the gains and leaves the surface out. A line whose defective parts show first at the
        frame's edge, or differ from good ones over the whole frame (edge included), can lose by
        the gains; one whose defects are small and local can lose by the surface score."""
        gains = self.edge_gains()
        options = [
            (g, s)
            for g in ([gains, None] if gains is not None else [None])
            for s in {"on": [True], "off": [False], "auto": [False, True]}[self.surface_mode]
        ]
        labels = np.r_[np.zeros(len(self)), np.ones(len(bad))]
        table: list[dict[str, Any]] = []
        best, best_fusion, best_auroc = options[0], None, -1.0
        for g, s in options:
            f = self.fusion(target_frr=target_frr, edge_gains=g, surface=s)
            kind = (g is not None, f.surface is not None)
            if any((r["edge_gains"], r["surface"]) == kind for r in table):
                continue  # the surface asked for but not placed: the same as without
            auroc = round(image_auroc(np.concatenate([f.scores(self), f.scores(bad)]), labels), 6)
            table.append({"edge_gains": kind[0], "surface": kind[1], "auroc": auroc})
            if auroc > best_auroc:
                best, best_fusion, best_auroc = (g, s), f, auroc
        assert best_fusion is not None  # the first option always enters the table
        self._gains, self.use_surface = best
        self._fitted = True
        self._weighed = {
            "edge_gains_kept": best[0] is not None,
            "surface_kept": best_fusion.surface is not None,
            "weighed_auroc": best_auroc,
            "weighed_options": table,
        }
        return self._weighed

    def pixel_values(self, fusion: Fusion) -> list[np.ndarray]:
        if self.pixels is None:
            raise CalibrationError("these good images were kept without pixel samples")
        return self.pixels.values(fusion.alignment, fusion.edge_gains)

    def edge_details(self) -> dict[str, Any]:
        return {**self.edge_fit.details(), "edge_fitted": self.fit_edges, **self._weighed}


class BadImages(_MeasuredImages):
    """Defective images' analyses (`_MeasuredImages`), so that their scores under any fusion
    follow; with masks, sampled map pixels with their labels (`pixels`)."""

    def __init__(self, *, bands_px: tuple[int, ...] = BANDS_PX) -> None:
        super().__init__(bands_px)
        self.pixels = PixelSamples()

    def add(self, analysis: Any, mask: np.ndarray | None = None) -> None:
        """One defective image's `Analysis` (made with `keep_branch_maps`, without edge gains)."""
        self._band_max.append(band_maxima(self._measure(analysis), self.bands_px))
        if mask is not None:
            self.pixels.add(analysis.anomaly_map, analysis.branch_maps, mask, bands_px=self.bands_px)


def threshold_f1(
    good_scores: npt.ArrayLike, bad_scores: npt.ArrayLike, *, confidence: float = 0.95
) -> ThresholdResult:
    """Threshold with the best F1 (defective = positive) on good and defective images.

    The threshold sits midway between neighbouring distinct scores; among equal
    F1 the highest threshold (fewest rejects) wins. `supported` is always True:
    there is no target rate to support; the message states the FRR bound.
    """
    good = _scores(good_scores, "good scores", "good")
    bad = _scores(bad_scores, "defective scores", "defective")
    _check_confidence(confidence)
    thresholds, n_fr, n_hit = _cut_points(good, bad)
    f1 = 2.0 * n_hit / (n_hit + n_fr + bad.size)
    best = int(np.argmax(f1))
    summary = f"the F1-best threshold (F1 {f1[best]:.3f})"
    return _two_class_result(good, bad, float(thresholds[best]), "f1", summary, confidence)


def threshold_cost(
    good_scores: npt.ArrayLike,
    bad_scores: npt.ArrayLike,
    *,
    cost_false_reject: float,
    cost_missed_defect: float,
    defect_rate: float | None = None,
    confidence: float = 0.95,
) -> ThresholdResult:
    """Threshold with the least expected cost per part.

    Cost per part = cost_false_reject * (1 - defect_rate) * FRR
    + cost_missed_defect * defect_rate * miss rate, with the rates measured on
    the given scores. `defect_rate` is the fraction of defective parts on the
    line; when None it is taken from the sample (n_bad / (n_good + n_bad)),
    which is right only if the images were collected in line proportions.
    Among equal costs the highest threshold (fewest rejects) wins.
    """
    good = _scores(good_scores, "good scores", "good")
    bad = _scores(bad_scores, "defective scores", "defective")
    _check_confidence(confidence)
    for name, value in (("cost_false_reject", cost_false_reject), ("cost_missed_defect", cost_missed_defect)):
        if not (isinstance(value, numbers.Real) and math.isfinite(value) and value > 0):
            raise CalibrationError(
                f"{name} is {value!r}: give a positive finite cost (any unit, both the same)"
            )
    rate = bad.size / (good.size + bad.size) if defect_rate is None else defect_rate
    if not 0.0 < rate < 1.0:
        raise CalibrationError(
            f"defect_rate {defect_rate!r} is outside (0, 1): give it as a fraction, e.g. 0.02"
        )
    thresholds, n_fr, n_hit = _cut_points(good, bad)
    cost = (
        cost_false_reject * (1 - rate) * n_fr / good.size
        + cost_missed_defect * rate * (bad.size - n_hit) / bad.size
    )
    best = int(np.argmin(cost))
    summary = (
        f"the least-cost threshold (false reject {cost_false_reject:g}, missed defect "
        f"{cost_missed_defect:g}, defect rate {_pct_plain(rate)}, {cost[best]:.3g} per part)"
    )
    return _two_class_result(good, bad, float(thresholds[best]), "cost", summary, confidence)


def _two_class_result(
    good: np.ndarray, bad: np.ndarray, threshold: float, method: str, summary: str, confidence: float
) -> ThresholdResult:
    n_rejected = int(np.count_nonzero(good >= threshold))
    n_missed = int(np.count_nonzero(bad < threshold))
    bound = clopper_pearson_upper(n_rejected, good.size, confidence=confidence)
    message = (
        f"with {good.size} good and {bad.size} defective images, {summary} rejects {n_rejected} good "
        f"and misses {n_missed} defective; the false-reject rate is below {_pct_up(bound)} "
        f"with {_pct_plain(confidence)} confidence"
    )
    return ThresholdResult(
        threshold=threshold,
        method=method,
        n_good=int(good.size),
        n_bad=int(bad.size),
        target_frr=None,
        expected_frr=n_rejected / good.size,
        frr_upper_bound=bound,
        confidence=float(confidence),
        supported=True,
        message=message,
    )


def _cut_points(good: np.ndarray, bad: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct way to split the pooled scores, highest threshold first.

    Returns thresholds and, for each, how many good and defective scores are
    >= it. The first threshold rejects nothing; each next one also rejects the
    next distinct score, and lies midway between it and the score above.
    """
    values = np.unique(np.concatenate([good, bad]))  # ascending
    above = np.nextafter(values[-1], np.inf)
    cuts = np.empty(values.size + 1)
    cuts[0] = above
    desc = values[::-1]
    hi, lo = desc[:-1], desc[1:]
    mid = lo + (hi - lo) / 2.0
    cuts[1:-1] = np.where((lo < mid) & (mid <= hi), mid, hi)  # in (lo, hi], as `_between`
    cuts[-1] = values[0]
    good_sorted, bad_sorted = np.sort(good), np.sort(bad)
    flagged = np.r_[above, desc]  # the lowest score each cut rejects; cuts[0] rejects none
    n_fr = good.size - np.asarray(np.searchsorted(good_sorted, flagged, side="left"))
    n_hit = bad.size - np.asarray(np.searchsorted(bad_sorted, flagged, side="left"))
    return cuts, n_fr, n_hit


def _quantile_threshold(s_desc: np.ndarray, max_rejects: int) -> float:
    """Highest-FRR threshold with at most `max_rejects` scores at or above it."""
    values = np.unique(s_desc)  # ascending
    n_at_or_above = s_desc.size - np.searchsorted(s_desc[::-1], values, side="left")
    ok = np.flatnonzero(n_at_or_above <= max_rejects)
    if ok.size == 0:
        return float(np.nextafter(values[-1], np.inf))
    j = int(ok[0])  # the lowest distinct score that may still be rejected
    return float(values[j]) if j == 0 else _between(float(values[j - 1]), float(values[j]))


def _exponential_tail_threshold(s_desc: np.ndarray, target_frr: float) -> float:
    n = s_desc.size
    n_tail = min(n - 1, max(_MIN_EXCEEDANCES, math.ceil(0.1 * n), math.ceil(2 * target_frr * n)))
    u = float(s_desc[n_tail])
    scale = float(np.mean(s_desc[:n_tail] - u))
    if scale <= 0.0:
        # The top scores are all tied: there is no spread to extrapolate from.
        return float(np.nextafter(s_desc[0], np.inf))
    return u + scale * math.log((n_tail / n) / target_frr)


def _gaussian_threshold(scores: np.ndarray, target_frr: float) -> float:
    std = float(np.std(scores, ddof=1))
    if std <= 0.0:
        return float(np.nextafter(scores.max(), np.inf))
    return float(np.mean(scores)) + std * float(stats.norm.isf(target_frr))


def _between(lo: float, hi: float) -> float:
    """A threshold in (lo, hi]: rejects hi, keeps lo; midway unless they are adjacent floats."""
    mid = lo + (hi - lo) / 2.0
    return float(mid) if lo < mid <= hi else float(hi)


def _zero_reject_bound(n: int, confidence: float) -> float:
    return -math.expm1(math.log1p(-confidence) / n)


def _scores(values: npt.ArrayLike, name: str, kind: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CalibrationError(
            f"{name} are not numbers ({exc}): pass one numeric score per {kind} image"
        ) from None
    if arr.ndim != 1:
        raise CalibrationError(f"{name} have shape {arr.shape}: pass a flat list, one score per {kind} image")
    if arr.size == 0:
        raise CalibrationError(f"no {name} given: calibrate with at least one {kind} image")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise CalibrationError(
            f"{bad.size} of {arr.size} {name} are NaN or infinite (first at index {int(bad[0])}): "
            f"check the model's output for those images and calibrate again"
        )
    return arr


def _check_target(target_frr: float) -> None:
    if not (isinstance(target_frr, numbers.Real) and 0.0 < target_frr < 0.5):
        raise CalibrationError(
            f"target_frr {target_frr!r} is outside (0, 0.5): give the false-reject rate as a fraction, "
            f"e.g. 0.01 for 1%"
        )


def _check_confidence(confidence: float) -> None:
    if not (isinstance(confidence, numbers.Real) and 0.0 < confidence < 1.0):
        raise CalibrationError(
            f"confidence {confidence!r} is outside (0, 1): give it as a fraction, e.g. 0.95"
        )


def _pct_plain(x: float) -> str:
    """A rate as a short percentage: 0.01 -> '1%', 0.001 -> '0.1%', 0.995 -> '99.5%'."""
    return f"{100 * x:.3g}%"


def _pct_up(x: float) -> str:
    """An upper bound as a percentage rounded up, so the statement stays true: 0.00994 -> '1.0%'."""
    p = 100.0 * x
    if p <= 0.0:
        return "0%"
    decimals = 1 if p >= 1.0 else 1 - math.floor(math.log10(p))
    up = math.ceil(p * 10**decimals - 1e-9) / 10**decimals
    if up >= 1.0:
        decimals = 1
    return f"{min(up, 100.0):.{decimals}f}%"


def sample_map_pixels(
    anomaly_map: np.ndarray, mask: np.ndarray | None = None, *, max_samples: int = MAX_PIXEL_SAMPLES
) -> tuple[np.ndarray, np.ndarray | None]:
    """An even, deterministic sample of a map's values (and of its mask, same pixels).

    Every k-th pixel in each direction, k chosen so at most about `max_samples`
    remain: defective and good pixels are sampled at the same rate, so pixel
    F1 on the sample estimates pixel F1 on the images."""
    if anomaly_map.ndim != 2:
        raise CalibrationError(f"an anomaly map must be HxW, got shape {anomaly_map.shape}")
    if mask is not None and mask.shape[:2] != anomaly_map.shape:
        raise CalibrationError(
            f"mask of shape {mask.shape[:2]} does not match its image's map {anomaly_map.shape}: "
            f"give the masks of exactly these images, at their size"
        )
    h, w = anomaly_map.shape
    k = _sample_stride(h, w, max_samples)
    values = np.ascontiguousarray(anomaly_map[::k, ::k], dtype=np.float32).ravel()
    labels = None if mask is None else (np.asarray(mask)[::k, ::k] > 0).ravel()
    return values, labels


def _sample_stride(h: int, w: int, max_samples: int) -> int:
    """Every k-th pixel in each direction leaves at most about `max_samples` of an h x w map."""
    return max(1, math.ceil(math.sqrt(h * w / max(1, max_samples))))


def sampled_bands(shape: tuple[int, ...], bands_px: tuple[int, ...]) -> np.ndarray:
    """The edge band (`pipelines.edges`) of each pixel that `sample_map_pixels` takes of a map."""
    h, w = shape[:2]
    k = _sample_stride(h, w, MAX_PIXEL_SAMPLES)
    ys, xs = np.arange(0, h, k), np.arange(0, w, k)
    d = np.minimum(np.minimum(ys, h - 1 - ys)[:, None], np.minimum(xs, w - 1 - xs)[None, :])
    return (np.searchsorted(np.asarray(bands_px), d, side="right") - 1).ravel()


def pixel_threshold_for_fpr(good_pixels: npt.ArrayLike, *, target_fpr: float) -> float:
    """The map value above which about `target_fpr` of good pixels lie (the empirical quantile)."""
    values = _scores(np.asarray(good_pixels, dtype=np.float64).ravel(), "good pixel values", "good")
    if not (0.0 < target_fpr < 1.0):
        raise CalibrationError(
            f"pixel false-positive rate {target_fpr!r} must be a fraction between 0 and 1, e.g. 0.001"
        )
    if values.size * target_fpr < 1.0:
        raise CalibrationError(
            f"{values.size} good pixel samples are too few for a pixel false-positive rate of "
            f"{_pct_plain(target_fpr)}: give more good images or a larger rate"
        )
    return _quantile_threshold(np.sort(values)[::-1], math.floor(target_fpr * values.size + 1e-9))


def pixel_threshold_f1(values: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[float, float]:
    """The map value with the best pixel F1 (defective = positive): (threshold, F1)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    if v.size != y.size:
        raise CalibrationError(f"{v.size} pixel values but {y.size} labels: they must pair up")
    bad, good = v[y], v[~y]
    if bad.size == 0:
        raise CalibrationError(
            "the masks mark no defective pixel: give the ground-truth masks of the defective images"
        )
    if good.size == 0:
        raise CalibrationError(
            "the masks mark every pixel defective: check the masks (0 = good, >0 = defect)"
        )
    good = _scores(good, "good pixel values", "good")
    bad = _scores(bad, "defective pixel values", "defective")
    thresholds, n_fp, n_tp = _cut_points(good, bad)
    f1 = 2.0 * n_tp / (n_tp + n_fp + bad.size)
    best = int(np.argmax(f1))
    return float(thresholds[best]), float(f1[best])
