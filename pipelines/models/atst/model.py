"""ATST at inference: EMA-normalised pretrained teacher, asymmetric CoT student, fused multi-scale map.

Reading of Kong et al., "Asymmetric Teacher-Student Network Model for
Industrial Image Anomaly Detection" (Computer Science 51(11A), 2024); see
README.md beside this file for the method and our choices. The tile network
holds the frozen EfficientNet-Lite teacher with an EMA normalisation layer on
each of its three feature scales, the student (residual blocks whose 3x3
convolutions are CoT blocks, or plain convolutions for the ablation), and the
per-scale map quantiles; the scales' maps are normalised, upsampled, fused
and smoothed inside the graph.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipelines.backbone import LiteFeatures
from pipelines.bundle import BundleMeta
from pipelines.models.atst.cot import ResidualBlock, conv_bn_relu
from pipelines.models.base import GaussianBlur, GlobalBranch, load_module_state, upsample_to

# EfficientNet-Lite0 blocks 2, 4, 10: 24 ch at stride 4, 40 at stride 8, 112 at stride 16.
TAPS = (2, 4, 10)
TEACHER_NORMS = ("ema", "static", "none")


class EMANorm(nn.Module):
    """Per-channel standardisation with exponential-moving-average statistics (EMAN, Cai et al. 2021).

    The forward always normalises with the running statistics, never with the
    batch's own (EMAN's point: a sample's target does not depend on its batch).
    In training mode with `mode="ema"` each forward first folds the batch's
    channel mean and variance into the running ones:
    running <- momentum * running + (1 - momentum) * batch. In eval mode, and
    for `mode="static"` (set once before training) or `"none"` (identity: zero
    mean, unit variance), the statistics never change; they are buffers, so the
    exported graph carries them as constants.
    """

    mean: torch.Tensor
    var: torch.Tensor
    updates: torch.Tensor

    def __init__(
        self, channels: int, *, mode: str = "ema", momentum: float = 0.99, eps: float = 1e-5
    ) -> None:
        super().__init__()
        if mode not in TEACHER_NORMS:
            raise ValueError(f"teacher normalisation {mode!r}: choose one of {TEACHER_NORMS}")
        self.mode = mode
        self.momentum = momentum
        self.eps = eps
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("var", torch.ones(channels))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, f: torch.Tensor) -> None:
        """Fold the batch statistics of `f` (B, C, H, W) into the running ones (the first batch sets them)."""
        m = f.mean(dim=(0, 2, 3))
        v = f.var(dim=(0, 2, 3), unbiased=False)
        a = self.momentum if int(self.updates) > 0 else 0.0
        self.mean.mul_(a).add_((1 - a) * m)
        self.var.mul_(a).add_((1 - a) * v)
        self.updates += 1

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        if self.training and self.mode == "ema":
            self.update(f)
        if self.mode == "none":
            return f
        c = f.shape[1]
        return (f - self.mean.view(1, c, 1, 1)) / (self.var.view(1, c, 1, 1) + self.eps).sqrt()


class Teacher(nn.Module):
    """Frozen pretrained EfficientNet-Lite, an EMA normalisation layer on each tapped scale."""

    def __init__(self, backbone: str, *, norm: str, momentum: float) -> None:
        super().__init__()
        self.features = LiteFeatures(backbone, taps=TAPS)
        self.channels = self.features.channels
        self.strides = self.features.strides
        self.norms = nn.ModuleList(EMANorm(c, mode=norm, momentum=momentum) for c in self.channels)

    def train(self, mode: bool = True) -> Teacher:
        # Only the EMA layers follow the mode: the backbone's BatchNorms keep their pretrained statistics.
        super().train(mode)
        self.features.eval()
        return self

    def ema_layers(self) -> list[EMANorm]:
        return [n for n in self.norms if isinstance(n, EMANorm)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [n(f) for n, f in zip(self.norms, self.features(x), strict=True)]


class Student(nn.Module):
    """Trained from scratch: a ResNet-like pyramid at strides 4, 8, 16 predicting the teacher's scales.

    Stage widths w, 2w, 4w with `depth` residual blocks each (CoT or 3x3
    convolution in the middle, `kind`), and a 1x1 head per stage onto the
    teacher's channels."""

    def __init__(
        self, *, width: int, depth: int, kind: str, kernel: int, out_channels: tuple[int, ...]
    ) -> None:
        super().__init__()
        widths = (width, 2 * width, 4 * width)
        self.stem = nn.Sequential(conv_bn_relu(3, width // 2, 3, 2), conv_bn_relu(width // 2, width, 3, 2))
        self.stages = nn.ModuleList()
        self.heads = nn.ModuleList()
        for i, (w, c) in enumerate(zip(widths, out_channels, strict=True)):
            down: list[nn.Module] = [] if i == 0 else [conv_bn_relu(widths[i - 1], w, 3, 2)]
            blocks = [ResidualBlock(w, kind=kind, kernel=kernel) for _ in range(depth)]
            self.stages.append(nn.Sequential(*down, *blocks))
            self.heads.append(nn.Conv2d(w, c, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.stem(x * 2.0 - 1.0)
        outs = []
        for stage, head in zip(self.stages, self.heads, strict=True):
            h = stage(h)
            outs.append(head(h))
        return outs


def scale_distance(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """(B, 1, h, w): 1 - cosine similarity of teacher and student feature vectors per position."""
    return 1.0 - F.cosine_similarity(t, s, dim=1, eps=1e-6).unsqueeze(1)


class ATSTTileNet(nn.Module):
    """(B, 3, t, t) in [0, 1] -> (B, 1, t, t) fused map on the calibrated scale."""

    q: torch.Tensor
    weights: torch.Tensor

    def __init__(
        self,
        *,
        backbone: str,
        student: str,
        teacher_norm: str,
        ema_momentum: float,
        width: int,
        depth: int,
        cot_kernel: int,
        blur_sigma_px: float,
    ) -> None:
        super().__init__()
        self.teacher = Teacher(backbone, norm=teacher_norm, momentum=ema_momentum)
        self.student = Student(
            width=width, depth=depth, kind=student, kernel=cot_kernel, out_channels=self.teacher.channels
        )
        n = len(TAPS)
        self.blur = GaussianBlur(blur_sigma_px)
        # rows: scales (stride 4, 8, 16); columns: q_low, q_high of held-out good maps
        self.register_buffer("q", torch.tensor([[0.0, 1.0]] * n))
        self.register_buffer("weights", torch.ones(n))

    def distances(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per scale, (B, 1, t/stride, t/stride) teacher-student distances (the training loss's terms)."""
        return [scale_distance(t, s) for t, s in zip(self.teacher(x), self.student(x), strict=True)]

    def raw_maps(self, x: torch.Tensor) -> torch.Tensor:
        """(B, scales, t, t): each scale's distance upsampled to the tile."""
        return torch.cat([upsample_to(d, x) for d in self.distances(x)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.raw_maps(x)
        n = r.shape[1]
        m = (r - self.q[:, 0].view(1, n, 1, 1)) / (self.q[:, 1] - self.q[:, 0]).view(1, n, 1, 1)
        w = self.weights.view(1, n, 1, 1)
        fused = (m * w).sum(1, keepdim=True) / w.sum().clamp_min(1e-6)
        return self.blur(fused)


def net_from_params(p: dict[str, Any]) -> ATSTTileNet:
    """The untrained network described by a bundle's (or a profile's) parameters."""
    return ATSTTileNet(
        backbone=str(p["backbone"]),
        student=str(p["student"]),
        teacher_norm=str(p["teacher_norm"]),
        ema_momentum=float(p["ema_momentum"]),
        width=int(p["width"]),
        depth=int(p["depth"]),
        cot_kernel=int(p["cot_kernel"]),
        blur_sigma_px=float(p["blur_sigma_px"]),
    )


def build_tile_net(meta: BundleMeta, tensors: dict[str, np.ndarray]) -> ATSTTileNet:
    net = net_from_params(meta.params)
    load_module_state(net, tensors, "net")
    return net.eval()


def build_global(meta: BundleMeta, tensors: dict[str, np.ndarray]) -> GlobalBranch | None:
    return None
