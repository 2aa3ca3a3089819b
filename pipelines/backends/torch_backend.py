"""The torch backend (CPU here; CUDA with fp16 where available)."""

from __future__ import annotations

import numpy as np

from pipelines.backends.base import Backend
from pipelines.bundle import Bundle
from pipelines.models.registry import inference_module


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, bundle: Bundle, *, threads: int | None = None, device: str = "cpu") -> None:
        super().__init__(bundle, threads=threads)
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = torch.device(device)
        module = inference_module(bundle.meta.family)
        self.net = module.build_tile_net(bundle.meta, bundle.tensors).to(self.device).eval()
        self.half = self.device.type == "cuda"
        if self.half:
            self.net = self.net.half()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device)
            if self.half:
                x = x.half()
            return self.net(x).float().cpu().numpy()

    def describe(self) -> dict[str, str]:
        return {
            "backend": self.name,
            "device": str(self.device),
            "precision": "fp16" if self.half else "fp32",
        }
