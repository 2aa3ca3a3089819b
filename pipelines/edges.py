"""Edge gains: the tile map's scale by distance from the frame's edge, fitted on good images.

Every family's map is normalised so that good pixels reach 1 at their 99.9th
percentile, pooled over the whole frame. Near the frame's edge the networks see
mirrored content (the reflect margin) and structures cut by the edge, and there the
good pixels' tail can be much heavier: on deeppcb two thirds of the good images
peak within 16 px of the edge (BENCHMARKS.md, session 8). One threshold then
rejects good parts for their edge alone.

The fix is calibration's, not the network's: the frame is cut into rings by
distance d from its nearest edge (d = 0 on the outermost row and column), in bands
starting at `BANDS_PX` (the last band is the interior), and on the calibration's
good images each band's 99.9th-percentile value is compared with the interior's.
A band whose tail is heavier gets the gain interior / band (< 1); a band no
louder than the interior keeps gain 1, so an edge is never made more sensitive
than the good images say. A band with too few good pixels for its tail
(`MIN_VALUES`) keeps gain 1 too. The gains apply to the tile map after stitching,
in every inference mode, before it is fused with a whole-image branch; thresholds
are then set on the scaled map. A defect on the edge still shows, at the edge's
own noise level. Defective images, where calibration has them, decide whether the
gains stay (`calibration.threshold.GoodImages.weigh`): on bsdata the
defective images differ from the good ones all over, the edge included, and one
family's detection lived on the edge (BENCHMARKS.md, sessions 9 to 11).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

BANDS_PX = (0, 1, 2, 4, 8, 16, 32)  # lower bounds of the distance bands; the last is the interior
QUANTILE = 0.999  # the tail compared between a band and the interior
MIN_VALUES = 10_000  # good pixels a band needs for its tail (ten beyond the 99.9th percentile)
SAMPLES_PER_BAND = 20_000  # at most this many pixels of one band of one image are kept


def check_bands(bands_px: Sequence[int]) -> None:
    """Bands start at 0 and increase strictly."""
    if not bands_px or bands_px[0] != 0 or any(b <= a for a, b in itertools.pairwise(bands_px)):
        raise ValueError(
            f"edge bands {list(bands_px)} must start at 0 and increase strictly, e.g. {list(BANDS_PX)}"
        )


def band_slices(height_px: int, width_px: int, lo: int, hi: int | None) -> list[tuple[slice, slice]]:
    """The pixels at distance lo <= d < hi from the frame's edge (hi None: d >= lo) as
    disjoint rectangles (rows, columns) of an (height_px, width_px) map."""
    h, w = height_px, width_px
    if h - 2 * lo <= 0 or w - 2 * lo <= 0:
        return []
    outer = (slice(lo, h - lo), slice(lo, w - lo))
    if hi is None or h - 2 * hi <= 0 or w - 2 * hi <= 0:
        return [outer]
    return [
        (slice(lo, hi), slice(lo, w - lo)),
        (slice(h - hi, h - lo), slice(lo, w - lo)),
        (slice(hi, h - hi), slice(lo, hi)),
        (slice(hi, h - hi), slice(w - hi, w - lo)),
    ]


def _bands(shape: tuple[int, ...], bands_px: Sequence[int]) -> list[list[tuple[slice, slice]]]:
    h, w = shape[:2]
    ends: list[int | None] = [*bands_px[1:], None]
    return [band_slices(h, w, lo, hi) for lo, hi in zip(bands_px, ends, strict=True)]


def apply_gains(anomaly_map: np.ndarray, gains: Sequence[float], bands_px: Sequence[int]) -> np.ndarray:
    """`anomaly_map` with each band multiplied by its gain, in place (returned for chaining)."""
    for gain, rects in zip(gains, _bands(anomaly_map.shape, bands_px), strict=True):
        if gain != 1.0:
            for rows, cols in rects:
                anomaly_map[rows, cols] *= np.float32(gain)
    return anomaly_map


def _band_parts(tile_map: np.ndarray, bands_px: Sequence[int]) -> list[list[np.ndarray]]:
    """Per band, the map's non-empty rectangles of it (views)."""
    return [
        [p for p in (tile_map[rows, cols] for rows, cols in rects) if p.size]
        for rects in _bands(tile_map.shape, bands_px)
    ]


def _maxima(band_parts: list[list[np.ndarray]]) -> np.ndarray:
    return np.array([max(float(p.max()) for p in parts) if parts else -np.inf for parts in band_parts])


def band_maxima(tile_map: np.ndarray, bands_px: Sequence[int]) -> np.ndarray:
    """Per band, the map's maximum (-inf for an empty band): with `scaled_max`, the map's
    maximum under any gains."""
    return _maxima(_band_parts(tile_map, bands_px))


def interior_mean(tile_map: np.ndarray, bands_px: Sequence[int]) -> float | None:
    """The map's mean over its last band (the interior, where the edge gains are 1): the surface
    score's raw value (`pipelines.inference.TiledAnalyser`); None where the frame has no interior."""
    h, w = tile_map.shape[:2]
    rects = band_slices(h, w, bands_px[-1], None)  # one rectangle, or none in a frame too small
    return float(tile_map[rects[0]].mean()) if rects else None


def scaled_max(band_max: np.ndarray, gains: Sequence[float] | None) -> float:
    """The maximum of a map after `apply_gains`, from its per-band maxima (`EdgeFit.add`)."""
    g = np.ones(len(band_max)) if gains is None else np.asarray(gains, dtype=np.float64)
    return float(np.max(band_max * g))


class EdgeFit:
    """Collects the tile maps of good images band by band and fits the gains (module docstring)."""

    def __init__(self, bands_px: Sequence[int] = BANDS_PX, *, seed: int = 0) -> None:
        check_bands(bands_px)
        self.bands_px = tuple(int(b) for b in bands_px)
        self._values: list[list[np.ndarray]] = [[] for _ in self.bands_px]
        self._counts = np.zeros(len(self.bands_px), dtype=np.int64)
        self._rng = np.random.default_rng(seed)

    def add(self, tile_map: np.ndarray) -> np.ndarray:
        """Take one good image's tile map; returns its per-band maxima (-inf for an empty band)."""
        band_parts = _band_parts(tile_map, self.bands_px)
        for k, parts in enumerate(band_parts):
            n = sum(p.size for p in parts)
            if n == 0:
                continue
            self._counts[k] += n
            if n <= SAMPLES_PER_BAND:
                self._values[k].append(np.concatenate([p.ravel() for p in parts]))
            else:  # an even random sample over the band's rectangles, in proportion to their sizes
                sizes = np.array([p.size for p in parts])
                take = np.bincount(
                    self._rng.choice(len(parts), size=SAMPLES_PER_BAND, p=sizes / n), minlength=len(parts)
                )
                for p, m in zip(parts, take, strict=True):
                    if m:
                        ys = self._rng.integers(0, p.shape[0], m)
                        xs = self._rng.integers(0, p.shape[1], m)
                        self._values[k].append(p[ys, xs])
        return _maxima(band_parts)

    def tails(self) -> list[float | None]:
        """Per band, the good pixels' `QUANTILE` value, or None with fewer than `MIN_VALUES` pixels."""
        return [
            float(np.quantile(np.concatenate(v), QUANTILE)) if c >= MIN_VALUES else None
            for v, c in zip(self._values, self._counts, strict=True)
        ]

    def gains(self) -> tuple[float, ...] | None:
        """Per band, min(1, interior tail / band tail); None when the interior has too few pixels
        or a tail at or below zero (no scale to compare with)."""
        tails = self.tails()
        inner = tails[-1]
        if inner is None or not inner > 0:
            return None
        return tuple(
            1.0 if t is None or t <= inner or not math.isfinite(t) else round(inner / t, 6) for t in tails
        )

    def details(self) -> dict[str, object]:
        """What the gains came from, for the bundle's calibration details."""
        return {
            "edge_bands_px": list(self.bands_px),
            "edge_tails": [None if t is None else round(t, 6) for t in self.tails()],
            "edge_pixels": [int(c) for c in self._counts],
            "edge_quantile": QUANTILE,
        }
