"""The backend interface: load a bundle's tile network, infer batches, describe itself.

Every backend inherits `Backend`, so none can drift: each maps a float32 batch
(N, C, t, t) in [0, 1] (C = `input_channels` of the bundle, 3 = RGB) to maps (N, 1, t, t)
on the calibrated scale, and the
rest of the inference path (tiling, stitching, global branch, decision) is
shared in `pipelines.inference` and `pipelines.inspector`.
"""

from __future__ import annotations

import abc

import numpy as np

from pipelines.bundle import Bundle


class Backend(abc.ABC):
    name: str = "backend"

    def __init__(self, bundle: Bundle, *, threads: int | None = None) -> None:
        self.bundle = bundle
        self.threads = threads

    @abc.abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, t, t) float32 in [0, 1] -> (N, 1, t, t) float32 calibrated maps (C: the
        bundle's `input_channels`)."""

    def warm_up(self, *, batch_size: int = 1) -> None:
        t = self.bundle.meta.tiles.tile_px
        c = self.bundle.meta.input_channels
        self.infer(np.zeros((batch_size, c, t, t), np.float32))

    @abc.abstractmethod
    def describe(self) -> dict[str, str]:
        """{"backend", "device", "precision"}."""
