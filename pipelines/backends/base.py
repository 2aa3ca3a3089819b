"""The backend interface: load a bundle's tile network, infer batches, describe itself.

Every backend inherits `Backend`, so none can drift: each maps a float32 batch
(N, 3, t, t) in [0, 1] to maps (N, 1, t, t) on the calibrated scale, and the
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
        """(N, 3, t, t) float32 in [0, 1] -> (N, 1, t, t) float32 calibrated maps."""

    def warm_up(self, *, batch_size: int = 1) -> None:
        t = self.bundle.meta.tiles.tile_px
        self.infer(np.zeros((batch_size, 3, t, t), np.float32))

    @abc.abstractmethod
    def describe(self) -> dict[str, str]:
        """{"backend", "device", "precision"}."""
