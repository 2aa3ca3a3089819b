"""What every model family provides at inference, and the pieces they share.

A family module (`pipelines.models.<name>.model`) exposes:
- `build_tile_net(meta, tensors) -> nn.Module`: (B, 3, t, t) float RGB in [0, 1]
  -> (B, 1, t, t) anomaly map on the calibrated scale. Everything the map
  needs (input normalisation, feature statistics, map quantiles) is inside
  the module, so an exported graph gives the same numbers.
- `build_global(meta, tensors) -> GlobalBranch | None`: an optional whole-image
  branch in numpy (BVPN's logical module) shared by every backend.
Training lives in `pipelines.models.<name>.train` and is never imported here.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipelines.errors import ModelError


@dataclasses.dataclass(frozen=True)
class GlobalResult:
    score: float  # calibrated image score of the branch (1.0 ~ unusual)
    # float32 HxW, calibrated scale, at the image's resolution; None: a judgement of the whole
    # image with no place in it (BVPN's peripheral statistics), which leaves the tile map as it is
    anomaly_map: np.ndarray | None


class GlobalBranch(abc.ABC):
    """A whole-image judgement that tiles cannot make (layout, counts, colours)."""

    @abc.abstractmethod
    def __call__(self, rgb: np.ndarray) -> GlobalResult: ...


class QuantileNorm(nn.Module):
    """Maps raw scores to the calibrated scale: (m - q_low) / (q_high - q_low).

    q_low/q_high are quantiles of the raw map over held-out good images, so a
    good pixel is mostly below 1 and the scale is comparable across modules.
    """

    q: torch.Tensor

    def __init__(self, q_low: float = 0.0, q_high: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("q", torch.tensor([q_low, q_high], dtype=torch.float32))

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        return (m - self.q[0]) / (self.q[1] - self.q[0]).clamp_min(1e-8)


def gaussian_kernel1d(sigma_px: float) -> torch.Tensor:
    radius = max(1, round(3 * sigma_px))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma_px) ** 2)
    return k / k.sum()


class GaussianBlur(nn.Module):
    """Separable Gaussian smoothing of a (B, 1, H, W) map with replicate borders."""

    kx: torch.Tensor
    ky: torch.Tensor

    def __init__(self, sigma_px: float) -> None:
        super().__init__()
        k = gaussian_kernel1d(sigma_px)
        self.pad = len(k) // 2
        self.register_buffer("kx", k.view(1, 1, 1, -1), persistent=False)
        self.register_buffer("ky", k.view(1, 1, -1, 1), persistent=False)

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        m = F.conv2d(F.pad(m, (self.pad, self.pad, 0, 0), mode="replicate"), self.kx)
        return F.conv2d(F.pad(m, (0, 0, self.pad, self.pad), mode="replicate"), self.ky)


def upsample_to(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Bilinear upsampling of a map to the spatial size of the input `x`."""
    return F.interpolate(m, size=x.shape[-2:], mode="bilinear", align_corners=False)


def load_module_state(module: nn.Module, tensors: dict[str, np.ndarray], prefix: str) -> None:
    """Load the `prefix.`-named tensors of a bundle into `module` (strict)."""
    state = {
        k[len(prefix) + 1 :]: torch.from_numpy(v.copy())
        for k, v in tensors.items()
        if k.startswith(prefix + ".")
    }
    module.load_state_dict(state, strict=True)


def module_tensors(module: nn.Module, prefix: str) -> dict[str, np.ndarray]:
    """A module's state as numpy arrays named `prefix.<key>` for the bundle."""
    return {f"{prefix}.{k}": v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, 1, h, w) 1 - cosine similarity over channels, as half the squared distance of the unit
    vectors: no cancellation where the two nearly agree (1 - dot would lose the small difference
    in float32, and the held-out scale would magnify it). Plain ONNX operators."""
    an = a / (a * a).sum(1, keepdim=True).sqrt().clamp_min(1e-8)
    bn = b / (b * b).sum(1, keepdim=True).sqrt().clamp_min(1e-8)
    return 0.5 * ((an - bn) ** 2).sum(1, keepdim=True)


def channel_norm(module: nn.Module, names: Sequence[str], index: int) -> QuantileNorm:
    """The held-out scale of raw map channel `index` of a multi-channel map: the module's `norm` for
    the first channel, `norm_<name>` for the others."""
    norm = module.norm if index == 0 else getattr(module, f"norm_{names[index]}")
    assert isinstance(norm, QuantileNorm)
    return norm


def set_channel_quantiles(module: nn.Module, names: Sequence[str], q: np.ndarray, *, what: str) -> None:
    """Set every channel's held-out scale from (C, 2) quantiles (`holdout_quantiles`); `what` names
    the channels in the error."""
    if q.shape != (len(names), 2):
        raise ModelError(f"{q.shape[0]} map quantiles for {len(names)} {what}")
    for i in range(len(names)):
        channel_norm(module, names, i).q.copy_(torch.from_numpy(np.asarray(q[i], np.float32)))
