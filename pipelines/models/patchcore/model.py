"""PatchCore at inference: locally aggregated backbone patches, nearest neighbour in a coreset.

The memory bank, the map quantiles and the blur are buffers of the module, so
the exported graph carries them. The nearest-neighbour search is written as
a matrix product (||a||^2 - 2ab + ||b||^2), which exports and runs everywhere.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipelines.backbone import LiteFeatures
from pipelines.bundle import BundleMeta
from pipelines.models.base import GaussianBlur, GlobalBranch, QuantileNorm, load_module_state, upsample_to


class PatchCoreNet(nn.Module):
    bank: torch.Tensor
    bank_sq: torch.Tensor

    def __init__(
        self, *, backbone: str, taps: tuple[int, ...], bank_size: int, dim: int, blur_sigma_px: float
    ):
        super().__init__()
        self.features = LiteFeatures(backbone, taps=taps)
        self.register_buffer("bank", torch.zeros(bank_size, dim))
        self.register_buffer("bank_sq", torch.zeros(bank_size))
        self.norm = QuantileNorm()
        self.blur = GaussianBlur(blur_sigma_px)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.features(x)
        size = feats[0].shape[-2:]
        up = [feats[0]] + [
            F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in feats[1:]
        ]
        e = torch.cat(up, dim=1)
        return F.avg_pool2d(e, kernel_size=3, stride=1, padding=1, count_include_pad=False)

    def raw_map(self, x: torch.Tensor) -> torch.Tensor:
        e = self.embed(x)
        b, d, h, w = e.shape
        flat = e.permute(0, 2, 3, 1).reshape(-1, d)
        d2 = (flat * flat).sum(1, keepdim=True) - 2 * flat @ self.bank.T + self.bank_sq[None, :]
        dist = d2.min(dim=1).values.clamp_min(0).sqrt()
        return dist.reshape(b, 1, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blur(upsample_to(self.raw_map(x), x)))


def build_tile_net(meta: BundleMeta, tensors: dict[str, np.ndarray]) -> PatchCoreNet:
    p = meta.params
    net = PatchCoreNet(
        backbone=p["backbone"],
        taps=tuple(p["taps"]),
        bank_size=int(p["bank_size"]),
        dim=int(p["dim"]),
        blur_sigma_px=float(p["blur_sigma_px"]),
    )
    load_module_state(net, tensors, "net")
    return net.eval()


def build_global(meta: BundleMeta, tensors: dict[str, np.ndarray]) -> GlobalBranch | None:
    return None
