"""IKDFF at inference: reverse distillation with attention fusion (the tile network).

Our reading of "anomaly detection and localisation by feature fusion through
inverse knowledge distillation" (abstract only; see README.md beside this
file): a frozen pretrained encoder (the teacher) gives multi-scale features;
an attention module fuses them into one map, a one-class bottleneck squeezes
it to a compact embedding, and a decoder (the student) must rebuild the
teacher's features at every scale from that embedding alone. The map is the
sum over scales of the upsampled cosine distance between teacher and student.
The feature-mask generator is a training-time module: in eval mode (every
inference and export) it is the identity, so it is part of the network but
never of the exported numbers.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipelines.backbone import LiteFeatures, block_strides
from pipelines.bundle import BundleMeta
from pipelines.errors import ModelError
from pipelines.models.base import GaussianBlur, GlobalBranch, QuantileNorm, load_module_state

SCALES_STRIDE = (4, 8, 16)  # teacher scales, as ResNet layer1-3 in reverse distillation
EMBED_STRIDE = 32  # the one-class bottleneck sits one octave below the coarsest scale
EPS = 1e-6


def teacher_taps(backbone: str) -> tuple[int, ...]:
    """The last block index of `backbone` at each stride of SCALES_STRIDE (the deepest feature there)."""
    taps: list[int] = []
    last = {stride: i for i, stride in enumerate(block_strides(backbone))}
    for want in SCALES_STRIDE:
        if want not in last:
            raise ModelError(f"backbone {backbone!r} has no block at stride {want}")
        taps.append(last[want])
    return tuple(taps)


def _conv(cin: int, cout: int, k: int = 3, s: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2), nn.GELU())


class Residual(nn.Module):
    """Two 3x3 convolutions with an identity shortcut (the unit of bottleneck and decoder)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(width, width), nn.Conv2d(width, width, 3, 1, 1))
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class Teacher(nn.Module):
    """Frozen EfficientNet-Lite features at strides 4, 8, 16, with a per-channel standardisation.

    The standardisation's buffers hold training statistics with `teacher_norm=standard`
    and stay the identity (mean 0, std 1: raw features, the default) otherwise."""

    mean0: torch.Tensor

    def __init__(self, backbone: str, taps: tuple[int, ...]) -> None:
        super().__init__()
        self.features = LiteFeatures(backbone, taps=taps)
        self.channels = tuple(self.features.channels)
        for i, c in enumerate(self.channels):
            self.register_buffer(f"mean{i}", torch.zeros(1, c, 1, 1))
            self.register_buffer(f"std{i}", torch.ones(1, c, 1, 1))

    def stats(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        mean = getattr(self, f"mean{i}")
        std = getattr(self, f"std{i}")
        return mean, std

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, f in enumerate(self.features(x)):
            mean, std = self.stats(i)
            out.append((f - mean) / std)
        return out


class FeatureMaskGenerator(nn.Module):
    """Training only: hides random square blocks of the teacher features from the student's input.

    A keep/drop mask is drawn on a grid of `block_px` cells (the same cells at
    every scale, so a hidden region is hidden everywhere) with `ratio` of the
    cells dropped; dropped positions take a learned per-scale mask token. The
    decoder still has to rebuild the full, unmasked teacher features, so it
    must infer the hidden content from its context instead of copying
    neighbouring (redundant) positions. In eval mode, or when disabled, the
    features pass unchanged."""

    def __init__(
        self, channels: tuple[int, ...], *, ratio: float, block_px: int, enabled: bool = True
    ) -> None:
        super().__init__()
        if not 0.0 <= ratio < 1.0:
            raise ModelError(f"mask_ratio {ratio} must be in [0, 1): the share of blocks hidden in training")
        if block_px < 16 or block_px % 16:
            raise ModelError(
                f"mask_block_px {block_px} must be a multiple of 16 (the coarsest teacher stride)"
            )
        self.ratio = float(ratio)
        self.block_px = int(block_px)
        self.enabled = bool(enabled)
        self.tokens = nn.ParameterList([nn.Parameter(torch.zeros(1, c, 1, 1)) for c in channels])

    def active(self) -> bool:
        return self.training and self.enabled and self.ratio > 0.0

    def draw(self, batch: int, height_px: int, width_px: int, device: torch.device) -> torch.Tensor:
        """(B, 1, gh, gw) float mask, 1 = keep, on the `block_px` grid covering the input."""
        gh = max(1, -(-height_px // self.block_px))
        gw = max(1, -(-width_px // self.block_px))
        return (torch.rand(batch, 1, gh, gw, device=device) >= self.ratio).float()

    def forward(self, feats: list[torch.Tensor], input_hw: tuple[int, int]) -> list[torch.Tensor]:
        if not self.active():
            return feats
        keep = self.draw(feats[0].shape[0], input_hw[0], input_hw[1], feats[0].device)
        out = []
        for f, token in zip(feats, self.tokens, strict=True):
            # Nearest upsampling of the cell grid to this scale, cropped to the feature's size.
            rep = max(1, self.block_px * f.shape[-1] // input_hw[1])
            k = keep.repeat_interleave(rep, dim=2).repeat_interleave(rep, dim=3)
            k = k[..., : f.shape[-2], : f.shape[-1]]
            out.append(f * k + token * (1.0 - k))
        return out


class AttentionFusion(nn.Module):
    """Fuses the teacher's scales into one stride-16 map.

    Every scale is brought to stride 16 and `width` channels by strided
    convolutions. With attention on, each output position takes a softmax
    weighting of the scales made of a channel term (selective-kernel style:
    global context of the summed scales -> per-scale, per-channel logits) and
    a spatial term (a 1x1 convolution of the stacked scales -> per-scale,
    per-position logits), so the embedding can keep the fine scale where detail
    matters and the coarse one elsewhere. With attention off (the ablation), the
    scales are concatenated and mixed by a 1x1 convolution, as reverse
    distillation's multi-scale feature fusion does."""

    def __init__(self, channels: tuple[int, ...], strides: tuple[int, ...], *, width: int, attention: bool):
        super().__init__()
        self.attention = bool(attention)
        self.n = len(channels)
        self.width = width
        target = max(strides)
        aligns = []
        for c, s in zip(channels, strides, strict=True):
            layers: list[nn.Module] = []
            cin = c
            while s < target:
                layers.append(_conv(cin, width, 3, 2))
                cin = width
                s *= 2
            layers.append(_conv(cin, width, 1))
            aligns.append(nn.Sequential(*layers))
        self.align = nn.ModuleList(aligns)
        if self.attention:
            hidden = max(8, width // 4)
            self.squeeze = nn.Sequential(nn.Linear(width, hidden), nn.GELU())
            self.channel_logits = nn.Linear(hidden, self.n * width)
            self.spatial_logits = nn.Conv2d(self.n * width, self.n, 1)
            self.proj = _conv(width, width, 1)
        else:
            self.proj = _conv(self.n * width, width, 1)

    def weights(self, aligned: list[torch.Tensor]) -> torch.Tensor:
        """(B, n, width, h, w) softmax weights over the scales (attention on only)."""
        b, _, h, w = aligned[0].shape
        u = aligned[0]
        for a in aligned[1:]:
            u = u + a
        z = self.squeeze(u.mean(dim=(2, 3)))
        ch = self.channel_logits(z).view(b, self.n, self.width, 1, 1)
        sp = self.spatial_logits(torch.cat(aligned, 1)).view(b, self.n, 1, h, w)
        return torch.softmax(ch + sp, dim=1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        aligned = [m(f) for m, f in zip(self.align, feats, strict=True)]
        if not self.attention:
            return self.proj(torch.cat(aligned, 1))
        a = self.weights(aligned)
        fused = (torch.stack(aligned, 1) * a).sum(1)
        return self.proj(fused)


class Bottleneck(nn.Module):
    """One-class embedding: stride 16 -> 32, `embed` channels, a residual block."""

    def __init__(self, width: int, embed: int) -> None:
        super().__init__()
        self.down = _conv(width, embed, 3, 2)
        self.res = Residual(embed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res(self.down(x))


class Decoder(nn.Module):
    """The student: from the stride-32 embedding back up to every teacher scale, coarse to fine.

    Each stage doubles the resolution with a 2x2 transposed convolution (as
    reverse distillation's decoder), refines with a residual block, and a 1x1
    head predicts the teacher's channels at that scale. No skip connection
    from the encoder: the embedding is the only way through."""

    def __init__(self, channels: tuple[int, ...], *, embed: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        # widths / channels are given fine-to-coarse; the decoder runs coarse-to-fine.
        ups, refines, heads = [], [], []
        cin = embed
        for c, w in zip(reversed(channels), reversed(widths), strict=True):
            ups.append(nn.Sequential(nn.ConvTranspose2d(cin, w, 2, 2), nn.GELU()))
            refines.append(Residual(w))
            heads.append(nn.Conv2d(w, c, 1))
            cin = w
        self.ups = nn.ModuleList(ups)
        self.refines = nn.ModuleList(refines)
        self.heads = nn.ModuleList(heads)

    def forward(self, z: torch.Tensor) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        h = z
        for up, refine, head in zip(self.ups, self.refines, self.heads, strict=True):
            h = refine(up(h))
            out.append(head(h))
        return out[::-1]  # fine-to-coarse, as the teacher


def cosine_distance(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """(B, 1, h, w) 1 - cos(t, s) over channels (written out: exports everywhere)."""
    dot = (t * s).sum(1, keepdim=True)
    nt = (t * t).sum(1, keepdim=True)
    ns = (s * s).sum(1, keepdim=True)
    return 1.0 - dot / (nt * ns).clamp_min(EPS * EPS).sqrt()


class IKDFFNet(nn.Module):
    """(B, 3, t, t) in [0, 1] -> (B, 1, t, t) anomaly map on the calibrated scale."""

    def __init__(
        self,
        *,
        backbone: str,
        taps: tuple[int, ...],
        fuse_width: int,
        embed: int,
        decoder_widths: tuple[int, ...],
        attention: bool,
        mask_ratio: float = 0.0,
        mask_block_px: int = 32,
        feature_mask: bool = False,
        blur_sigma_px: float = 4.0,
    ) -> None:
        super().__init__()
        self.teacher = Teacher(backbone, taps)
        channels = self.teacher.channels
        strides = tuple(self.teacher.features.strides)
        if strides != SCALES_STRIDE:
            raise ModelError(f"teacher taps {taps} of {backbone} give strides {strides}, not {SCALES_STRIDE}")
        if len(decoder_widths) != len(channels):
            raise ModelError(
                f"decoder_widths needs {len(channels)} values (one per scale), got {decoder_widths}"
            )
        self.mask = FeatureMaskGenerator(
            channels, ratio=mask_ratio, block_px=mask_block_px, enabled=feature_mask
        )
        self.fusion = AttentionFusion(channels, strides, width=fuse_width, attention=attention)
        self.bottleneck = Bottleneck(fuse_width, embed)
        self.decoder = Decoder(channels, embed=embed, widths=decoder_widths)
        self.blur = GaussianBlur(blur_sigma_px)
        self.norm = QuantileNorm()

    def student_parameters(self) -> list[nn.Parameter]:
        """Everything trained: mask tokens, fusion, bottleneck, decoder (the teacher is frozen)."""
        mods = (self.mask, self.fusion, self.bottleneck, self.decoder)
        return [p for m in mods for p in m.parameters()]

    def pair(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(teacher features, student features), fine to coarse."""
        t = self.teacher(x)
        t_in = self.mask([f.detach() for f in t], (x.shape[-2], x.shape[-1]))
        s = self.decoder(self.bottleneck(self.fusion(t_in)))
        return t, s

    def raw_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, t, t) sum over scales of the upsampled cosine distance, smoothed (before quantiles)."""
        t, s = self.pair(x)
        size = x.shape[-2:]
        total = torch.zeros_like(x[:, :1])
        for ft, fs in zip(t, s, strict=True):
            d = cosine_distance(ft, fs)
            total = total + F.interpolate(d, size=size, mode="bilinear", align_corners=False)
        return self.blur(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.raw_map(x))


def build_tile_net(meta: BundleMeta, tensors: dict[str, np.ndarray]) -> IKDFFNet:
    p = meta.params
    net = IKDFFNet(
        backbone=p["backbone"],
        taps=tuple(int(t) for t in p["taps"]),
        fuse_width=int(p["fuse_width"]),
        embed=int(p["embed"]),
        decoder_widths=tuple(int(w) for w in p["decoder_widths"]),
        attention=bool(p["attention"]),
        blur_sigma_px=float(p["blur_sigma_px"]),
    )
    # The mask tokens travel in the bundle too (a few hundred numbers) so the load stays strict.
    load_module_state(net, tensors, "net")
    return net.eval()


def build_global(meta: BundleMeta, tensors: dict[str, np.ndarray]) -> GlobalBranch | None:
    return None
