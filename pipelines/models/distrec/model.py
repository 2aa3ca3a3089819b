"""DistRec at inference: attention encoder, reconstruction decoder, patch-similarity map.

Reading of Luo and Zhang, "A Method for Image Anomaly Detection Based on
Distillation and Reconstruction", Sensors 23(22):9281, 2023; see README.md
beside this file for the method and our choices. The teachers shape the
encoder in training through its distillation heads. The tile network holds
the encoder (with its CBAM-like attention block), the distillation heads
(used by the cosine scoring), the decoder, the patch-similarity scoring
(with the raw teachers for its `perceptual` part), the blur and the
held-out quantiles, so the exported graph gives the same numbers as torch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipelines.backbone import LiteFeatures
from pipelines.bundle import BundleMeta
from pipelines.errors import ModelError
from pipelines.models.base import (
    GaussianBlur,
    GlobalBranch,
    QuantileNorm,
    channel_norm,
    cosine_distance,
    gaussian_kernel1d,
    load_module_state,
    set_channel_quantiles,
    upsample_to,
)

# teacher backbone -> taps (stride 8 and stride 16) whose outputs are distilled
TEACHER_TAPS: dict[str, tuple[int, int]] = {
    "efficientnet-lite0": (4, 10),  # 40 + 112 channels
    "efficientnet-lite1": (6, 14),  # 40 + 112 channels
}
TEACHER_SETS: dict[str, tuple[str, ...]] = {
    "dual": ("efficientnet-lite0", "efficientnet-lite1"),
    "single": ("efficientnet-lite0",),
}
TEACHER_DIM = 152  # channels per teacher (both taps, concatenated)
# The parts a `scoring` may add ("ssim+perceptual"), in channel order. ssim, cosine and perceptual
# are patch similarities (pixel space, the distilled encoder's space, the teachers' space); pixel
# is the ablation baseline.
SCORINGS = ("ssim", "cosine", "pixel", "perceptual")
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


def parse_scoring(scoring: str) -> tuple[str, ...]:
    """The parts of a `scoring` setting ("ssim+perceptual" -> ("ssim", "perceptual")), in channel order."""
    parts = [p.strip() for p in str(scoring).split("+")]
    if any(p not in SCORINGS for p in parts) or len(set(parts)) != len(parts):
        raise ModelError(
            f"DistRec scoring {scoring!r} is unknown: a '+'-list of distinct parts from {', '.join(SCORINGS)}"
            " (for example ssim or ssim+perceptual)"
        )
    return tuple(p for p in SCORINGS if p in parts)


class TeacherTaps(nn.Module):
    """The frozen pretrained teachers, raw (not standardised): every tap of every teacher.

    In the tile network only for the `perceptual` scoring, so its weights travel in the bundle."""

    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__()
        self.nets = nn.ModuleList([LiteFeatures(n, taps=TEACHER_TAPS[n]) for n in names])
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> TeacherTaps:
        return super().train(False)  # frozen: the batch norms keep the pretrained statistics

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [f for net in self.nets for f in net(x)]


def _conv(cin: int, cout: int, k: int = 3, s: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2), nn.ReLU(inplace=True))


class CBAM(nn.Module):
    """Channel then spatial attention (Woo et al., ECCV 2018), as in the paper's encoder.

    Channel: a shared two-layer MLP (1x1 convolutions) on the spatial mean and
    maximum, summed, sigmoid. Spatial: a 7x7 convolution on the channel mean
    and maximum, sigmoid. Both gates multiply the features."""

    def __init__(self, channels: int, *, reduction: int = 8, kernel_px: int = 7) -> None:
        super().__init__()
        hidden = max(4, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1)
        )
        self.spatial = nn.Conv2d(2, 1, kernel_px, 1, kernel_px // 2)

    def channel_gate(self, x: torch.Tensor) -> torch.Tensor:
        avg = x.mean(dim=(2, 3), keepdim=True)
        mx = x.amax(dim=(2, 3), keepdim=True)
        return torch.sigmoid(self.mlp(avg) + self.mlp(mx))

    def spatial_gate(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], 1)
        return torch.sigmoid(self.spatial(s))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.channel_gate(x)
        return x * self.spatial_gate(x)


class Encoder(nn.Module):
    """RGB in [0, 1] -> features at stride 8 (2*width channels), attention at the end."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            _conv(3, width // 2, 3, 2),
            _conv(width // 2, width, 3, 2),
            _conv(width, 2 * width, 3, 2),
            _conv(2 * width, 2 * width, 3),
            _conv(2 * width, 2 * width, 3),
        )
        self.attention = CBAM(2 * width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(self.net((x - 0.5) / 0.5))


class Decoder(nn.Module):
    """Stride-8 features -> narrow bottleneck -> RGB reconstruction in [0, 1] at full size."""

    def __init__(self, width: int, latent: int) -> None:
        super().__init__()
        self.bottleneck = _conv(2 * width, latent, 1)
        # Narrow at full resolution: that stage dominates the cost on a CPU.
        self.up = nn.ModuleList([_conv(latent, 2 * width), _conv(2 * width, width), _conv(width, width // 4)])
        self.out = nn.Sequential(_conv(width // 4, width // 4), nn.Conv2d(width // 4, 3, 3, 1, 1))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        h = self.bottleneck(f)
        for layer in self.up:  # three x2 steps: stride 8 -> 1
            h = F.interpolate(layer(h), scale_factor=2.0, mode="bilinear", align_corners=False)
        return torch.sigmoid(self.out(h))


class LocalSSIM(nn.Module):
    """Per-pixel SSIM of two RGB images over a Gaussian window (replicate borders), mean over channels."""

    k: torch.Tensor

    def __init__(self, sigma_px: float = 1.5) -> None:
        super().__init__()
        k = gaussian_kernel1d(sigma_px)
        self.pad = len(k) // 2
        # A fixed 3-channel depthwise kernel (RGB only): a static weight shape exports to ONNX.
        self.register_buffer("k", torch.outer(k, k)[None, None].repeat(3, 1, 1, 1), persistent=False)

    def _mean(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pad
        return F.conv2d(F.pad(x, (p, p, p, p), mode="replicate"), self.k, groups=3)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        mu_a, mu_b = self._mean(a), self._mean(b)
        var_a = self._mean(a * a) - mu_a * mu_a
        var_b = self._mean(b * b) - mu_b * mu_b
        cov = self._mean(a * b) - mu_a * mu_b
        num = (2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)
        den = (mu_a * mu_a + mu_b * mu_b + SSIM_C1) * (var_a + var_b + SSIM_C2)
        return (num / den).mean(dim=1, keepdim=True)


def cosine_patch_distance(fa: torch.Tensor, fb: torch.Tensor, *, patch: int = 3) -> torch.Tensor:
    """1 - cosine similarity of local feature patches (patch x patch mean), (B, 1, h, w); 0 where equal."""
    pa = F.avg_pool2d(fa, patch, 1, patch // 2, count_include_pad=False)
    pb = F.avg_pool2d(fb, patch, 1, patch // 2, count_include_pad=False)
    dot = (pa * pb).sum(1, keepdim=True)
    norm = (pa * pa).sum(1, keepdim=True).sqrt() * (pb * pb).sum(1, keepdim=True).sqrt()
    return (1.0 - dot / norm.clamp_min(1e-8)).clamp_min(0.0)


class DistRecNet(nn.Module):
    """(B, 3, t, t) in [0, 1] -> (B, 1, t, t) map on the calibrated scale."""

    def __init__(
        self,
        *,
        width: int,
        latent: int,
        head_dim: int,
        scoring: str,
        blur_sigma_px: float,
        ssim_sigma_px: float,
        teachers: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.parts = parse_scoring(scoring)
        if width < 8 or width % 4:
            raise ModelError(f"DistRec width {width} must be a multiple of 4, at least 8")
        if latent < 1 or head_dim < 1:
            raise ModelError(f"DistRec latent ({latent}) and head_dim ({head_dim}) must be at least 1")
        if "perceptual" in self.parts and not teachers:
            raise ModelError("DistRec scoring 'perceptual' needs the teachers' names")
        self.scoring = "+".join(self.parts)
        self.encoder = Encoder(width)
        # 1x1 heads map the encoder's features to the (concatenated, standardised) teachers.
        self.heads = nn.Conv2d(2 * width, head_dim, 1)
        self.decoder = Decoder(width, latent)
        self.ssim = LocalSSIM(ssim_sigma_px)
        self.teachers = TeacherTaps(teachers) if "perceptual" in self.parts else None
        self.blur = GaussianBlur(blur_sigma_px)
        # One held-out scale per part: the first is `norm`, the others `norm_<part>`.
        self.norm = QuantileNorm()
        for part in self.parts[1:]:
            self.add_module(f"norm_{part}", QuantileNorm())

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    def part_map(
        self, part: str, x: torch.Tensor, r: torch.Tensor, fx: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, 1, t, t) raw dissimilarity of input and reconstruction by one part (0 where identical);
        `fx`: the encoder's features of `x` where already computed."""
        if part == "ssim":
            return upsample_to((1.0 - self.ssim(x, r)).clamp_min(0.0), x)
        if part == "cosine":
            fx = self.encoder(x) if fx is None else fx
            return upsample_to(cosine_patch_distance(self.heads(fx), self.heads(self.encoder(r))), x)
        if part == "perceptual":
            # The teachers' taps on a shared (cosine) scale, averaged: one channel, one held-out scale.
            assert self.teachers is not None
            pairs = zip(self.teachers(x), self.teachers(r), strict=True)
            return torch.stack([upsample_to(cosine_distance(a, b), x) for a, b in pairs]).mean(0)
        return ((x - r) ** 2).mean(dim=1, keepdim=True)

    def dissimilarity(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """(B, C, t, t) raw dissimilarities, one channel per part of the scoring."""
        return torch.cat([self.part_map(part, x, r) for part in self.parts], 1)

    def raw_map(self, x: torch.Tensor) -> torch.Tensor:
        """Smoothed, not yet calibrated maps, one channel per part (the held-out quantiles are taken here)."""
        fx = self.encoder(x)
        r = self.decoder(fx)
        return torch.cat([self.blur(self.part_map(part, x, r, fx)) for part in self.parts], 1)

    def set_quantiles(self, q: np.ndarray) -> None:
        """Every part's held-out scale from (C, 2) quantiles (`holdout_quantiles`)."""
        set_channel_quantiles(self, self.parts, q, what="scoring parts")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.raw_map(x)
        scaled = [channel_norm(self, self.parts, i)(m[:, i : i + 1]) for i in range(len(self.parts))]
        return scaled[0] if len(scaled) == 1 else torch.stack(scaled).sum(0)


def build_tile_net(meta: BundleMeta, tensors: dict[str, np.ndarray]) -> DistRecNet:
    p = meta.params
    net = DistRecNet(
        width=int(p["width"]),
        latent=int(p["latent"]),
        head_dim=int(p["head_dim"]),
        scoring=str(p["scoring"]),
        blur_sigma_px=float(p["blur_sigma_px"]),
        ssim_sigma_px=float(p["ssim_sigma_px"]),
        teachers=tuple(p["teachers"]),
    )
    load_module_state(net, tensors, "net")
    return net.eval()


def build_global(meta: BundleMeta, tensors: dict[str, np.ndarray]) -> GlobalBranch | None:
    return None
