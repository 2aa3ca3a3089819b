"""Tiling any frame into fixed-size tiles and stitching maps back seamlessly.

Frames are never squashed: a 1913x2624 frame is cut at its native resolution
into `tile_px` squares that overlap by at least `overlap_px`; tiles are spread
evenly so the last one ends exactly at the border (no padding for frames at
least one tile large; smaller sides are reflect-padded). Stitching blends the
overlaps with a raised-cosine window that ramps only towards a neighbouring
tile, and divides by the accumulated weight: a constant map stitches to the
same constant and maps cropped from one full map stitch back exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator

import numpy as np


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    step = tile - overlap
    n = math.ceil((length - overlap) / step)
    n = max(n, 2)
    # Spread evenly: first at 0, last at length - tile.
    span = length - tile
    return [round(i * span / (n - 1)) for i in range(n)]


def _ramp_weights(length: int, starts: list[int], tile: int, index: int) -> np.ndarray:
    """1D weight of tile `index`: 1 inside, a raised-cosine ramp where it overlaps a neighbour."""
    w = np.ones(tile, dtype=np.float64)
    s = starts[index]
    if index > 0:
        prev_end = starts[index - 1] + tile
        ov = prev_end - s
        if ov > 0:
            t = (np.arange(ov) + 0.5) / ov
            w[:ov] = 0.5 - 0.5 * np.cos(np.pi * t)
    if index < len(starts) - 1:
        ov = s + tile - starts[index + 1]
        if ov > 0:
            t = (np.arange(ov) + 0.5) / ov
            w[tile - ov :] = np.minimum(w[tile - ov :], 0.5 + 0.5 * np.cos(np.pi * t))
    return np.maximum(w, 1e-3)


@dataclasses.dataclass(frozen=True)
class TilePlan:
    """Where the tiles of a `height_px` x `width_px` frame lie."""

    height_px: int
    width_px: int
    tile_px: int
    overlap_px: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @classmethod
    def for_shape(cls, *, height_px: int, width_px: int, tile_px: int, overlap_px: int) -> TilePlan:
        if tile_px <= 0 or not 0 <= overlap_px < tile_px:
            raise ValueError(f"need 0 <= overlap_px < tile_px, got tile {tile_px}, overlap {overlap_px}")
        ys = _starts(max(height_px, tile_px), tile_px, overlap_px)
        xs = _starts(max(width_px, tile_px), tile_px, overlap_px)
        return cls(height_px, width_px, tile_px, overlap_px, tuple(ys), tuple(xs))

    @property
    def padded_shape(self) -> tuple[int, int]:
        return max(self.height_px, self.tile_px), max(self.width_px, self.tile_px)

    @property
    def count(self) -> int:
        return len(self.ys) * len(self.xs)

    def positions(self) -> list[tuple[int, int]]:
        return [(y, x) for y in self.ys for x in self.xs]

    def _pad(self, image: np.ndarray) -> np.ndarray:
        ph, pw = self.padded_shape
        if (ph, pw) == image.shape[:2]:
            return image
        pad = [(0, ph - image.shape[0]), (0, pw - image.shape[1])] + [(0, 0)] * (image.ndim - 2)
        return np.pad(image, pad, mode="reflect" if min(image.shape[:2]) > 1 else "edge")

    def tiles(self, image: np.ndarray) -> np.ndarray:
        """(N, tile, tile[, C]) views copied into one array, in `positions()` order."""
        img = self.padded(image)
        t = self.tile_px
        return np.stack([img[y : y + t, x : x + t] for y, x in self.positions()])

    def padded(self, image: np.ndarray) -> np.ndarray:
        """The image, padded as the tiles see it (itself for frames at least one tile large)."""
        if image.shape[:2] != (self.height_px, self.width_px):
            raise ValueError(f"plan is for {self.height_px}x{self.width_px}, image is {image.shape[:2]}")
        return self._pad(image)

    def weights(self) -> np.ndarray:
        """(N, tile, tile) blending weights, in `positions()` order (read-only, computed once per plan)."""
        return self._blend[0]

    @functools.cached_property
    def _blend(self) -> tuple[np.ndarray, np.ndarray]:
        """(weights, 1 / accumulated weight over the padded frame), both float32 and read-only.
        Plans are cached per frame shape by the analyser, so a line pays for this once."""
        ph, pw = self.padded_shape
        wy = [_ramp_weights(ph, list(self.ys), self.tile_px, i) for i in range(len(self.ys))]
        wx = [_ramp_weights(pw, list(self.xs), self.tile_px, i) for i in range(len(self.xs))]
        weights = np.stack([np.outer(a, b) for a in wy for b in wx])
        norm = np.zeros((ph, pw), np.float64)
        t = self.tile_px
        for (y, x), w in zip(self.positions(), weights, strict=True):
            norm[y : y + t, x : x + t] += w
        weights = weights.astype(np.float32)
        inv_norm = (1.0 / norm).astype(np.float32)
        weights.flags.writeable = False
        inv_norm.flags.writeable = False
        return weights, inv_norm

    def stitch(self, maps: np.ndarray) -> np.ndarray:
        """Blend (N, tile, tile) maps into one float32 (height, width) map."""
        if maps.shape != (self.count, self.tile_px, self.tile_px):
            raise ValueError(
                f"expected maps of shape {(self.count, self.tile_px, self.tile_px)}, got {maps.shape}"
            )
        weights, inv_norm = self._blend
        ph, pw = self.padded_shape
        acc = np.zeros((ph, pw), np.float32)
        t = self.tile_px
        weighted = maps.astype(np.float32, copy=False) * weights
        for (y, x), m in zip(self.positions(), weighted, strict=True):
            acc[y : y + t, x : x + t] += m
        h, w = self.height_px, self.width_px
        return acc[:h, :w] * inv_norm[:h, :w]


def batches(array: np.ndarray, *, batch_size: int) -> Iterator[np.ndarray]:
    """Consecutive slices of at most `batch_size` along the first axis."""
    for i in range(0, len(array), batch_size):
        yield array[i : i + batch_size]
