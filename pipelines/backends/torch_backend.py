"""The torch backend: the family's own module, eager, on the CPU or a CUDA GPU.

CUDA: fp16 by default (tensor cores; the maps move by ~1e-3 on the
calibrated scale, see the parity tests), pinned host memory and
`cudnn.benchmark` (tile shapes repeat, so the autotuning pays once).
Channels-last memory layout on both devices: measured on the 2-core CPU
at 8 tiles of 256 px, BVPN 1.39 s vs 1.81-2.14 s contiguous, PatchCore
unchanged (its time is the nearest-neighbour matrix product), and on GPUs
it is the layout the fp16 convolution kernels want.
Note `threads` sets torch's process-wide intra-op thread count.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipelines.backends.base import Backend
from pipelines.bundle import Bundle
from pipelines.errors import PipelineError
from pipelines.models.registry import inference_module


def cuda_available() -> bool:
    """True when torch is installed with CUDA and sees a GPU."""
    import torch

    return bool(torch.cuda.is_available())


class TorchBackend(Backend):
    name = "torch"

    def __init__(
        self,
        bundle: Bundle,
        *,
        threads: int | None = None,
        device: str = "auto",
        precision: str | None = None,
        channels_last: bool = True,
    ) -> None:
        """`device`: "auto" (CUDA when available), "cpu" or "cuda[:N]";
        `precision`: "fp32" or "fp16" (default fp16 on CUDA, fp32 on the CPU)."""
        super().__init__(bundle, threads=threads)
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        on_gpu = self.device.type == "cuda"
        if on_gpu and not torch.cuda.is_available():
            raise PipelineError("--backend torch on cuda: torch sees no CUDA GPU (CPU build or no driver)")
        self.precision = precision or ("fp16" if on_gpu else "fp32")
        if self.precision not in ("fp32", "fp16"):
            raise PipelineError(
                f"torch runs fp32 or fp16, not {self.precision!r}: int8 runs on --backend onnxruntime "
                "or tensorrt after 'aoi export --precision int8'"
            )
        if self.precision == "fp16" and not on_gpu:
            raise PipelineError("fp16 on the CPU is slower than fp32 in torch: use fp32 there")
        self.half = self.precision == "fp16"
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        module = inference_module(bundle.meta.family)
        net = module.build_tile_net(bundle.meta, bundle.tensors).to(self.device).eval()
        if self.half:
            net = net.half()
        self.net: Any = net.to(memory_format=self.memory_format)
        if on_gpu:
            torch.backends.cudnn.benchmark = True

    def infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            if self.device.type == "cuda":
                x = x.pin_memory().to(self.device, non_blocking=True)
            if self.half:
                x = x.half()
            x = x.contiguous(memory_format=self.memory_format)
            out: np.ndarray = self.net(x).float().cpu().numpy()
            return out

    def describe(self) -> dict[str, str]:
        device = str(self.device)
        if self.device.type == "cuda":
            device = f"{device} ({self.torch.cuda.get_device_name(self.device)})"
        return {"backend": self.name, "device": device, "precision": self.precision}
