"""The one inference path: tile a frame, infer tiles in batches, stitch, fuse.

`TiledAnalyser` is used by training (held-out statistics), `aoi predict`,
`aoi eval`, `aoi calibrate` and the line's inspector alike, whatever the
backend: the backend only maps a float batch (N, 3, t, t) to maps (N, 1, t, t).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from pipelines.models.base import GlobalBranch
from pipelines.tiling import TilePlan, batches

InferFn = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Analysis:
    """The model's view of one image: calibrated score and map at the image's resolution."""

    score: float
    anomaly_map: np.ndarray
    tile_score: float
    global_score: float | None


@functools.lru_cache(maxsize=16)
def _plan(height_px: int, width_px: int, tile_px: int, overlap_px: int) -> TilePlan:
    return TilePlan.for_shape(height_px=height_px, width_px=width_px, tile_px=tile_px, overlap_px=overlap_px)


class TiledAnalyser:
    """Frame (HxWx3 uint8 RGB) -> Analysis, through tiles of `tile_px`."""

    def __init__(
        self,
        infer: InferFn,
        *,
        tile_px: int,
        overlap_px: int,
        batch_size: int = 8,
        input_scale: float = 1 / 255,
        global_branch: GlobalBranch | None = None,
        margin_px: int = 0,
    ) -> None:
        self.infer = infer
        self.margin_px = margin_px
        self.tile_px = tile_px
        self.overlap_px = overlap_px
        self.batch_size = batch_size
        self.input_scale = np.float32(input_scale)
        self.global_branch = global_branch

    def plan(self, height_px: int, width_px: int) -> TilePlan:
        return _plan(height_px, width_px, self.tile_px, self.overlap_px)

    def tile_map(self, rgb: np.ndarray) -> np.ndarray:
        """The stitched tile-model map (calibrated scale) at the image's resolution.

        The frame is reflect-padded by `margin_px` first and the map cropped back:
        a tile's outer edge (zero padding inside the networks, no neighbour to
        blend with) then never lies on the frame's edge, where it caused false
        peaks on good images."""
        h, w = rgb.shape[:2]
        m = self.margin_px
        if m:
            rgb = np.pad(rgb, ((m, m), (m, m), (0, 0)), mode="reflect")
        plan = self.plan(rgb.shape[0], rgb.shape[1])
        tiles = plan.tiles(rgb)
        outs = []
        for batch in batches(tiles, batch_size=self.batch_size):
            x = np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32) * self.input_scale
            outs.append(np.asarray(self.infer(x), dtype=np.float32)[:, 0])
        stitched = plan.stitch(np.concatenate(outs))
        return stitched[m : m + h, m : m + w] if m else stitched

    def __call__(self, rgb: np.ndarray) -> Analysis:
        tile = self.tile_map(rgb)
        tile_score = float(tile.max())
        if self.global_branch is None:
            return Analysis(tile_score, tile, tile_score, None)
        g = self.global_branch(rgb)
        fused = np.maximum(tile, g.anomaly_map)
        return Analysis(max(float(fused.max()), g.score), fused, tile_score, g.score)


def torch_infer(net: Any) -> InferFn:
    """An InferFn running a torch module in inference mode on the CPU (training-time use)."""
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(x)).numpy()

    return run


def resize_map(m: np.ndarray, *, height_px: int, width_px: int) -> np.ndarray:
    """Bilinear resize of a float map to (height_px, width_px)."""
    if m.shape == (height_px, width_px):
        return m
    return cv2.resize(m.astype(np.float32), (width_px, height_px), interpolation=cv2.INTER_LINEAR)
