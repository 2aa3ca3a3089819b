"""The Contextual Transformer (CoT) block and the student's residual blocks.

CoT (Li et al., "Contextual Transformer Networks for Visual Recognition",
TPAMI 2022) replaces a 3x3 convolution: a grouped k x k convolution gives the
static context (keys), the keys concatenated with the input give, through two
1x1 convolutions, a k x k attention per position and channel group, which
weighs the values (1x1 projection) over each position's k x k neighbourhood
(the dynamic context); the two contexts are fused by a radix-2 split
attention (global pooling, softmax over the two).

The local aggregation is written with standard operators only, so it exports
to ONNX and TensorRT: a fixed one-hot depthwise convolution gathers each
position's k x k neighbours ("unfold"), a reshape groups the channels that
share a weight set, and a multiply-sum applies the attention. The original
normalises the attention logits with GroupNorm over the whole map; we use a
softmax over the k x k window instead, which keeps the weights local (a
tile's map then does not depend on statistics of the whole tile).
"""

from __future__ import annotations

import torch
from torch import nn

STUDENT_KINDS = ("cot", "conv")


def conv_bn_relu(cin: int, cout: int, k: int = 3, s: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def window_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over dim 2 written out: onnxruntime's Softmax on a middle axis of a 5-D tensor
    transposes around it and took 15% of the network's time; these ops run in place."""
    e = torch.exp(logits - logits.amax(dim=2, keepdim=True))
    return e / e.sum(dim=2, keepdim=True)


class LocalAggregation(nn.Module):
    """out[c] = sum over the k x k window of attn[group(c), j] * v[c] shifted by offset j."""

    onehot: torch.Tensor

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.channels = channels
        self.kernel = kernel
        kk = kernel * kernel
        eye = torch.eye(kk).view(kk, 1, kernel, kernel)
        # (C * kk, 1, k, k): channel c's j-th output is its neighbour at offset j (zero-padded border).
        self.register_buffer("onehot", eye.repeat(channels, 1, 1, 1), persistent=False)

    def forward(self, v: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """v: (B, C, H, W); attn: (B, G, k*k, H, W), normalised over k*k."""
        b, c, h, w = v.shape
        g = attn.shape[1]
        kk = self.kernel * self.kernel
        nb = nn.functional.conv2d(v, self.onehot, padding=self.kernel // 2, groups=self.channels)
        nb = nb.view(b, g, c // g, kk, h, w)
        return (nb * attn.unsqueeze(2)).sum(3).view(b, c, h, w)


class CoTBlock(nn.Module):
    """(B, C, H, W) -> (B, C, H, W): static context (keys) + attention-weighted values."""

    def __init__(self, channels: int, *, kernel: int = 3, share_planes: int = 8, key_groups: int = 4) -> None:
        super().__init__()
        if channels % share_planes or channels % key_groups:
            raise ValueError(f"CoT channels {channels} must be divisible by {share_planes} and {key_groups}")
        self.kernel = kernel
        self.heads = channels // share_planes
        self.key = conv_bn_relu(channels, channels, kernel, groups=key_groups)
        self.value = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels))
        mid = max(channels // 2, 8)
        self.attention = nn.Sequential(
            nn.Conv2d(2 * channels, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, self.heads * kernel * kernel, 1),
        )
        self.aggregate = LocalAggregation(channels, kernel)
        self.post = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        squeeze = max(channels // 4, 8)
        self.fuse = nn.Sequential(
            nn.Conv2d(channels, squeeze, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(squeeze, 2 * channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        k = self.key(x)
        v = self.value(x)
        logits = self.attention(torch.cat([k, x], 1))
        attn = window_softmax(logits.view(b, self.heads, self.kernel * self.kernel, h, w))
        dyn = self.post(self.aggregate(v, attn))
        gap = (dyn + k).mean(dim=(2, 3), keepdim=True)
        a = self.fuse(gap).view(b, 2, c, 1, 1).softmax(1)
        return dyn * a[:, 0] + k * a[:, 1]


class ResidualBlock(nn.Module):
    """Bottleneck residual block: 1x1 -> CoT or 3x3 convolution -> 1x1, plus the identity."""

    def __init__(self, channels: int, *, kind: str, kernel: int = 3) -> None:
        super().__init__()
        if kind not in STUDENT_KINDS:
            raise ValueError(f"student kind {kind!r}: choose one of {STUDENT_KINDS}")
        self.reduce = conv_bn_relu(channels, channels, 1)
        self.mix: nn.Module = (
            CoTBlock(channels, kernel=kernel) if kind == "cot" else conv_bn_relu(channels, channels, kernel)
        )
        self.expand = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.expand(self.mix(self.reduce(x))))
