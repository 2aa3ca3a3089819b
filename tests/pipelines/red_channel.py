"""A tiled analyser whose "network" map is the frame's red channel (in [0, 1]): maps that tests
can draw directly into frames (edge gains, surface score)."""

from __future__ import annotations

import numpy as np

from pipelines.inference import TiledAnalyser


def red_analyser() -> TiledAnalyser:
    """Tiles of 64 px, overlap 16, frame margin 16; measuring raw, as calibration does."""

    def red(x: np.ndarray) -> np.ndarray:
        return x[:, :1].copy()

    analyser = TiledAnalyser(red, tile_px=64, overlap_px=16, margin_px=16)
    analyser.measure_raw()
    return analyser
