"""NDP-Net at inference: encoder, reference-based attention, decoder, multi-scale segmentation.

Reading of Luo, Yao, Yu, "Normal Reference Attention and Defective Feature
Perception Network for Surface Defect Detection" (IEEE); see README.md beside
this file. One tile goes through:

1. a five-stage convolutional encoder (strides 2, 4, 8, 16, 32);
2. the reference-based attention module (RBAM) on the three deepest stages:
   every KxK patch of the input's features is replaced by the softmax(cosine)
   weighted sum of the KxK patches of a fixed defect-free reference image's
   features (RBFRM, K = 2 and K = 4), and an SKNet-style fusion blends the two
   repaired maps with the original one;
3. a decoder that reconstructs the tile from the repaired features only;
4. the multi-scale defect segmentation module (MSDSM): input and reconstruction
   through the first three encoder stages, concatenated per scale, three heads;
   map = 0.2*AM1 + 0.2*up(AM2) + 0.6*up(AM3), 5x5 mean and 5x5 median filters;
5. quantile normalisation with held-out good tiles (`QuantileNorm`).

`reference` picks where the RBFRM's reference comes from: "medoid" (the paper:
one fixed defect-free tile, its patches stored as banks in the bundle) or
"golden" (golden-template alignment: every tile is repaired from the golden
frame's tile at the same place; the network's input then has 6 channels, the
tile and its golden tile, and the RBFRM cuts the banks per sample in the graph).

`segmentation` picks the map, a "+"-list of parts, each filtered and put on
its own held-out scale, then summed: "msdsm" (the paper), "pixel" (Table VI's
ablation: the squared pixel difference of input and reconstruction),
"perception" (the encoder's defect perception: per stage of the MSDSM's three,
the channel mean of the squared difference between the encoder features of
the input and of its reconstruction, each stage on its own scale, averaged;
phase 1's L_def_per trains exactly these differences to mark defects) and
"perceptual" (the perceptual loss's pretrained network: the mean over its
five taps of the cosine distance between the features of input and
reconstruction; one channel, so one filter pass: the filters cost about as
much as the network per channel). The segmentation heads find the defects the
artificial ones taught them, the other parts whatever the reconstruction could
not repair.

Every step is written with ONNX-exportable operators (the RBFRM as a strided
convolution and its transpose, the 5x5 median as a sorting network of minima and
maxima over 25 shifted copies) so
the exported graph gives the torch numbers for tiles and whole frames alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipelines.backbone import LiteFeatures
from pipelines.bundle import BundleMeta
from pipelines.errors import ModelError
from pipelines.models.base import (
    GlobalBranch,
    QuantileNorm,
    channel_norm,
    cosine_distance,
    load_module_state,
    set_channel_quantiles,
    upsample_to,
)

STRIDES = (2, 4, 8, 16, 32)  # of the five encoder stages
WIDTH_FACTORS = (1, 2, 3, 4, 6)  # stage channels = width * factor
RBAM_STAGES = (2, 3, 4)  # the three deepest stages (0-based)
SEG_STAGES = (0, 1, 2)  # MSDSM: the first three stages
FUSION_WEIGHTS = (0.2, 0.2, 0.6)  # AM1, AM2, AM3
MAP_PARTS = ("msdsm", "pixel", "perception", "perceptual")  # of `segmentation`, in channel order
PERCEPTUAL_TAPS = (0, 1, 2, 3, 4)  # EfficientNet-Lite0's first five blocks (strides 2, 4, 4, 8, 8)


def parse_segmentation(segmentation: str) -> tuple[str, ...]:
    """The parts of a `segmentation` setting ("msdsm+pixel" -> ("msdsm", "pixel")), in channel order."""
    parts = [p.strip() for p in str(segmentation).split("+")]
    if not parts or any(p not in MAP_PARTS for p in parts) or len(set(parts)) != len(parts):
        raise ModelError(
            f"segmentation {segmentation!r}: a '+'-list of distinct parts from {', '.join(MAP_PARTS)} "
            "(e.g. msdsm, msdsm+pixel, msdsm+pixel+perception)"
        )
    return tuple(p for p in MAP_PARTS if p in parts)


def map_channels(parts: tuple[str, ...]) -> list[str]:
    """The raw map's channels for these parts: one per part, one per MSDSM stage for "perception"."""
    names: list[str] = []
    for part in parts:
        names += [f"perception{i}" for i in SEG_STAGES] if part == "perception" else [part]
    return names


def part_channels(part: str) -> int:
    """Raw channels of one map part."""
    return len(SEG_STAGES) if part == "perception" else 1


def stage_channels(width: int) -> tuple[int, ...]:
    return tuple(width * f for f in WIDTH_FACTORS)


def _conv_bn(cin: int, cout: int, k: int = 3, s: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class Encoder(nn.Module):
    """Five stages, each a stride-2 convolution and a 3x3 convolution (BN, ReLU)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        chans = stage_channels(width)
        cin = 3
        stages = []
        for c in chans:
            stages.append(nn.Sequential(_conv_bn(cin, c, 3, 2), _conv_bn(c, c, 3, 1)))
            cin = c
        self.stages = nn.ModuleList(stages)
        self.channels = chans

    def forward(self, x: torch.Tensor, depth: int = 5) -> list[torch.Tensor]:
        """The outputs of the first `depth` stages."""
        outs: list[torch.Tensor] = []
        h = x
        for stage in self.stages[:depth]:
            h = stage(h)
            outs.append(h)
        return outs


def patch_bank(features: torch.Tensor, k: int) -> torch.Tensor:
    """Non-overlapping KxK patches of (1, C, h, w) features as (N, C, K, K).

    The features are zero-padded by K-1 on the bottom and right, the same
    padding `RBFRM` gives its input, so sides that are not multiples of K
    keep their last, partial patch."""
    rows, _, _ = _patch_rows(features, k)
    return rows[0].reshape(-1, features.shape[1], k, k).contiguous()


class RBFRM(nn.Module):
    """Reference-based feature repair: each KxK input patch becomes the softmax(cos / tau)
    weighted sum of the reference's KxK patches.

    Written as a stride-K convolution with the unit-norm reference patches
    (cosine numerators), a softmax over the reference patches, and a stride-K
    transposed convolution with the raw patches (the weighted sum), which
    exports to ONNX and accepts any input size."""

    bank: torch.Tensor
    bank_unit: torch.Tensor

    def __init__(self, channels: int, k: int, n_patches: int, tau: float) -> None:
        super().__init__()
        if tau <= 0:
            raise ModelError(f"rbam_tau {tau} must be > 0 (the softmax temperature of the cosine similarity)")
        self.k = k
        self.inv_tau = 1.0 / tau
        self.register_buffer("bank", torch.zeros(n_patches, channels, k, k))
        self.register_buffer("bank_unit", torch.zeros(n_patches, channels, k, k))

    def set_reference(self, ref_features: torch.Tensor) -> None:
        bank = patch_bank(ref_features, self.k)
        if bank.shape != self.bank.shape:
            raise ModelError(
                f"reference features give {tuple(bank.shape)} patches, expected {tuple(self.bank.shape)}"
            )
        norm = bank.flatten(1).norm(dim=1).clamp_min(1e-6).view(-1, 1, 1, 1)
        self.bank.copy_(bank)
        self.bank_unit.copy_(bank / norm)

    def attention(self, f: torch.Tensor) -> torch.Tensor:
        """(B, N_ref, ceil(h/K), ceil(w/K)) softmax weights of the reference patches."""
        k = self.k
        p = F.pad(f, (0, k - 1, 0, k - 1))
        dots = F.conv2d(p, self.bank_unit, stride=k)
        sq = (p * p).sum(1, keepdim=True)
        norms = (F.avg_pool2d(sq, k, stride=k) * float(k * k)).clamp_min(1e-12).sqrt()
        return torch.softmax(dots / norms * self.inv_tau, dim=1)

    def forward(self, f: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        """`ref`: (B, C, h', w') features of a reference per sample (golden mode); None uses the
        stored bank."""
        if ref is not None:
            return self.paired(f, ref)
        a = self.attention(f)
        out = F.conv_transpose2d(a, self.bank, stride=self.k)
        return out[:, :, : f.shape[2], : f.shape[3]]

    def paired(self, f: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """The same repair with each sample's own bank, cut from `ref` in the graph: patches as
        rows (reshapes, which export to ONNX), cosine by batched matmul, softmax, weighted sum."""
        k = self.k
        p, hk, wk = _patch_rows(f, k)
        r, _, _ = _patch_rows(ref, k)
        r_unit = r / r.norm(dim=2, keepdim=True).clamp_min(1e-6)
        dots = torch.bmm(p, r_unit.transpose(1, 2)) / p.norm(dim=2, keepdim=True).clamp_min(1e-6)
        out = torch.bmm(torch.softmax(dots * self.inv_tau, dim=2), r)  # (B, L, C*k*k)
        c = int(f.shape[1])
        out = out.reshape(-1, hk, wk, c, k, k).permute(0, 3, 1, 4, 2, 5).reshape(-1, c, hk * k, wk * k)
        return out[:, :, : f.shape[2], : f.shape[3]]


def _patch_rows(f: torch.Tensor, k: int) -> tuple[torch.Tensor, int, int]:
    """(B, C, h, w) -> (B, ceil(h/k)*ceil(w/k), C*k*k) non-overlapping KxK patches as rows (C, ky, kx
    order), zero-padded on the bottom and right: the stored banks and the per-sample ones alike."""
    # Python ints, so an exported graph holds constants (golden mode runs fixed-size tiles only).
    c, h, w = (int(v) for v in f.shape[1:])
    hk, wk = -(-h // k), -(-w // k)
    p = F.pad(f, (0, wk * k - w, 0, hk * k - h))
    rows = p.reshape(-1, c, hk, k, wk, k).permute(0, 2, 4, 1, 3, 5).reshape(-1, hk * wk, c * k * k)
    return rows, hk, wk


class RBAM(nn.Module):
    """RBFRM at K=2 and K=4 and the original features, blended by SKNet-style spatial attention:
    sum the three branches, 5x5 conv to `fusion_channels`, three 5x5 attention maps, softmax
    across the branches."""

    def __init__(self, channels: int, n2: int, n4: int, *, tau: float, fusion_channels: int) -> None:
        super().__init__()
        self.rbfrm2 = RBFRM(channels, 2, n2, tau)
        self.rbfrm4 = RBFRM(channels, 4, n4, tau)
        self.squeeze = nn.Sequential(
            nn.Conv2d(channels, fusion_channels, 5, 1, 2, bias=False),
            nn.BatchNorm2d(fusion_channels),
            nn.ReLU(inplace=True),
        )
        self.select = nn.Conv2d(fusion_channels, 3, 5, 1, 2)

    def set_reference(self, ref_features: torch.Tensor) -> None:
        self.rbfrm2.set_reference(ref_features)
        self.rbfrm4.set_reference(ref_features)

    def forward(self, f: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        u2 = self.rbfrm2(f, ref)
        u4 = self.rbfrm4(f, ref)
        a = torch.softmax(self.select(self.squeeze(f + u2 + u4)), dim=1)
        return a[:, 0:1] * f + a[:, 1:2] * u2 + a[:, 2:3] * u4


class Decoder(nn.Module):
    """Reconstruction from the three deepest (repaired) feature maps only, so no raw
    shallow feature can carry a defect around the repair."""

    def __init__(self, width: int) -> None:
        super().__init__()
        c = stage_channels(width)
        self.up5 = _conv_bn(c[4], c[3])
        self.up4 = _conv_bn(2 * c[3], c[2])
        self.up3 = _conv_bn(2 * c[2], c[1])
        self.up2 = _conv_bn(c[1], c[0])
        self.up1 = _conv_bn(c[0], c[0])
        self.out = nn.Conv2d(c[0], 3, 3, 1, 1)

    @staticmethod
    def _up(h: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.interpolate(h, size=like.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, f3: torch.Tensor, f4: torch.Tensor, f5: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = self._up(self.up5(f5), f4)
        h = self._up(self.up4(torch.cat([h, f4], 1)), f3)
        h = self.up3(torch.cat([h, f3], 1))
        h = F.interpolate(h, scale_factor=2.0, mode="bilinear", align_corners=False)
        h = F.interpolate(self.up2(h), scale_factor=2.0, mode="bilinear", align_corners=False)
        h = self._up(self.up1(h), x)
        return torch.sigmoid(self.out(h))


class SegHead(nn.Module):
    def __init__(self, cin: int, mid: int) -> None:
        super().__init__()
        self.net = nn.Sequential(_conv_bn(cin, mid), nn.Conv2d(mid, 1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MSDSM(nn.Module):
    """Three segmentation heads on [input features, reconstruction features] of the first three
    stages; returns the logits AM1..AM3 (strides 2, 4, 8)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        c = stage_channels(width)
        self.heads = nn.ModuleList([SegHead(2 * c[i], c[i]) for i in SEG_STAGES])

    def forward(self, fx: list[torch.Tensor], fr: list[torch.Tensor]) -> list[torch.Tensor]:
        return [head(torch.cat([a, b], 1)) for head, a, b in zip(self.heads, fx, fr, strict=True)]


def fuse_maps(logits: list[torch.Tensor]) -> torch.Tensor:
    """0.2*AM1 + 0.2*up(AM2) + 0.6*up(AM3) of the sigmoid maps, at AM1's resolution."""
    p = [torch.sigmoid(m) for m in logits]
    size = p[0].shape[-2:]
    up = [p[0]] + [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in p[1:]]
    return FUSION_WEIGHTS[0] * up[0] + FUSION_WEIGHTS[1] * up[1] + FUSION_WEIGHTS[2] * up[2]


def _neighbours(m: torch.Tensor, k: int) -> list[torch.Tensor]:
    """(B, 1, H, W) -> k*k maps (B, 1, H, W): each pixel's neighbours, row by row (replicate borders)."""
    r = k // 2
    p = F.pad(m, (r, r, r, r), mode="replicate")
    h, w = m.shape[2], m.shape[3]
    return [p[:, :, dy : dy + h, dx : dx + w] for dy in range(k) for dx in range(k)]


def _shifted(m: torch.Tensor, k: int) -> torch.Tensor:
    """(B, 1, H, W) -> (B, k*k, H, W): the k*k neighbours of each pixel (replicate borders)."""
    return torch.cat(_neighbours(m, k), 1)


class MeanFilter(nn.Module):
    """k x k box filter with replicate borders."""

    def __init__(self, k: int = 5) -> None:
        super().__init__()
        self.k = k

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        r = self.k // 2
        return F.avg_pool2d(F.pad(m, (r, r, r, r), mode="replicate"), self.k, stride=1)


# The median of 25 values by 99 compare-exchanges (Paeth's network, as in N. Devillard, "Fast median
# search: an ANSI C implementation", 1998): the middle wire (12) holds the median at the end.
# fmt: off
MEDIAN25_NETWORK = (
    (0, 1), (3, 4), (2, 4), (2, 3), (6, 7), (5, 7), (5, 6), (9, 10), (8, 10), (8, 9), (12, 13),
    (11, 13), (11, 12), (15, 16), (14, 16), (14, 15), (18, 19), (17, 19), (17, 18), (21, 22),
    (20, 22), (20, 21), (23, 24), (2, 5), (3, 6), (0, 6), (0, 3), (4, 7), (1, 7), (1, 4), (11, 14),
    (8, 14), (8, 11), (12, 15), (9, 15), (9, 12), (13, 16), (10, 16), (10, 13), (20, 23), (17, 23),
    (17, 20), (21, 24), (18, 24), (18, 21), (19, 22), (8, 17), (9, 18), (0, 18), (0, 9), (10, 19),
    (1, 19), (1, 10), (11, 20), (2, 20), (2, 11), (12, 21), (3, 21), (3, 12), (13, 22), (4, 22),
    (4, 13), (14, 23), (5, 23), (5, 14), (15, 24), (6, 24), (6, 15), (7, 16), (7, 19), (13, 21),
    (15, 23), (7, 13), (7, 15), (1, 9), (3, 11), (5, 17), (11, 17), (9, 17), (4, 10), (6, 12),
    (7, 14), (4, 6), (4, 7), (12, 14), (10, 14), (6, 7), (10, 12), (6, 10), (6, 17), (12, 17),
    (7, 17), (7, 10), (12, 18), (7, 12), (10, 18), (12, 20), (10, 20), (10, 12),
)
# fmt: on


def _median_plan(network: tuple[tuple[int, int], ...], out: int) -> list[tuple[int, int, bool, bool]]:
    """The compare-exchanges that reach wire `out`, each with which of its min and max is used later."""
    live, plan = {out}, []
    for a, b in reversed(network):
        if a in live or b in live:
            plan.append((a, b, a in live, b in live))
            live |= {a, b}
    return plan[::-1]


MEDIAN25_PLAN = _median_plan(MEDIAN25_NETWORK, 12)  # 99 compare-exchanges, 174 elementwise min/max


class MedianFilter(nn.Module):
    """k x k median with replicate borders (exports to ONNX). For k = 5 a sorting network of
    elementwise minima and maxima over the 25 shifted copies (exact; 6 to 8 times faster than TopK
    on the CPU, in torch and onnxruntime alike); other k: the middle of the k*k neighbours by TopK."""

    def __init__(self, k: int = 5) -> None:
        super().__init__()
        self.k = k

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        if m.shape[1] > 1:  # each channel on its own
            return torch.cat([self(m[:, c : c + 1]) for c in range(m.shape[1])], 1)
        if self.k == 5:
            v: list[torch.Tensor | None] = list(_neighbours(m, 5))
            for a, b, need_min, need_max in MEDIAN25_PLAN:
                va, vb = v[a], v[b]
                assert va is not None and vb is not None
                v[a] = torch.minimum(va, vb) if need_min else None
                v[b] = torch.maximum(va, vb) if need_max else None
            out = v[12]
            assert out is not None
            return out
        n = self.k * self.k
        top = torch.topk(_shifted(m, self.k), n // 2 + 1, dim=1).values
        return top[:, n // 2 : n // 2 + 1]


REFERENCES = ("medoid", "golden")


class NDPNet(nn.Module):
    """(B, 3, t, t) in [0, 1] -> (B, 1, t, t) anomaly map on the calibrated scale; with
    reference="golden", (B, 6, t, t): the tile, then the golden frame's tile at its place."""

    ref_image: torch.Tensor

    def __init__(
        self,
        *,
        width: int,
        tile_px: int,
        rbam: bool,
        segmentation: str,
        rbam_tau: float,
        fusion_channels: int,
        filter_px: int = 5,
        reference: str = "medoid",
        backbone: str = "efficientnet-lite0",
    ) -> None:
        super().__init__()
        if reference not in REFERENCES:
            raise ModelError(f"reference {reference!r}: choose one of {', '.join(REFERENCES)}")
        self.golden = reference == "golden"
        self.parts = parse_segmentation(segmentation)
        self.width = width
        self.tile_px = tile_px
        self.use_rbam = rbam
        self.segmentation = "+".join(self.parts)
        self.encoder = Encoder(width)
        chans = self.encoder.channels
        self.rbam = nn.ModuleList()
        if rbam:
            for i in RBAM_STAGES:
                side = -(-tile_px // STRIDES[i])  # features of a tile-sized reference
                n2, n4 = (-(-side // 2)) ** 2, (-(-side // 4)) ** 2
                self.rbam.append(RBAM(chans[i], n2, n4, tau=rbam_tau, fusion_channels=fusion_channels))
        self.decoder = Decoder(width)
        self.msdsm = MSDSM(width) if "msdsm" in self.parts else None
        # "perceptual": the perceptual loss's frozen pretrained network travels in the bundle.
        self.lite = LiteFeatures(backbone, taps=PERCEPTUAL_TAPS) if "perceptual" in self.parts else None
        if self.lite is not None:
            self.lite.requires_grad_(False)
        self.mean_filter = MeanFilter(filter_px)
        self.median_filter = MedianFilter(filter_px)
        # One held-out scale per raw channel: the first is `norm`, the others `norm_<channel>`
        # (so "msdsm+pixel" has norm and norm_pixel).
        self.channels = map_channels(self.parts)
        self.norm = QuantileNorm()
        for name in self.channels[1:]:
            self.add_module(f"norm_{name}", QuantileNorm())
        self.register_buffer("ref_image", torch.zeros(1, 3, tile_px, tile_px))

    def train(self, mode: bool = True) -> NDPNet:
        super().train(mode)
        if self.lite is not None:
            self.lite.eval()  # frozen: its batch norms keep the pretrained statistics
        return self

    def set_reference(self, ref_image: torch.Tensor) -> None:
        """Store the reference tile and cut its (frozen-encoder) features into the RBFRM banks."""
        if tuple(ref_image.shape) != (1, 3, self.tile_px, self.tile_px):
            raise ModelError(f"reference image must be (1, 3, {self.tile_px}, {self.tile_px})")
        self.ref_image.copy_(ref_image)
        if not self.use_rbam:
            return
        was_training = self.encoder.training
        self.encoder.eval()
        with torch.no_grad():
            feats = self.encoder(ref_image)
        self.encoder.train(was_training)
        for module, i in zip(self.rbam, RBAM_STAGES, strict=True):
            assert isinstance(module, RBAM)
            module.set_reference(feats[i])

    def repair(
        self, feats: list[torch.Tensor], ref_feats: list[torch.Tensor] | None = None
    ) -> list[torch.Tensor]:
        """The three deepest stages after the RBAM (unchanged without it); `ref_feats`: the
        encoder features of each sample's golden tile (golden mode)."""
        deep = [feats[i] for i in RBAM_STAGES]
        if not self.use_rbam:
            return deep
        refs = [ref_feats[i] for i in RBAM_STAGES] if ref_feats is not None else [None] * len(deep)
        return [m(f, r) for m, f, r in zip(self.rbam, deep, refs, strict=True)]

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(tiles, golden tiles or None) of a network input."""
        if not self.golden:
            return x, None
        if x.shape[1] != 6:
            raise ModelError(
                f"golden-reference NDP-Net takes 6 channels (tile, golden tile), got {x.shape[1]}"
            )
        return x[:, :3], x[:, 3:]

    def reference_features(self, ref: torch.Tensor | None) -> list[torch.Tensor] | None:
        """The golden tiles through the encoder, up to the deepest RBAM stage (None: medoid mode)."""
        if ref is None or not self.use_rbam:
            return None
        return self.encoder(ref)

    def reconstruct(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """(encoder features of the tile, repaired deep features, reconstruction) of a network input."""
        x, ref = self.split(x)
        feats = self.encoder(x)
        r3, r4, r5 = self.repair(feats, self.reference_features(ref))
        return feats, [r3, r4, r5], self.decoder(r3, r4, r5, x)

    def seg_logits(
        self, feats: list[torch.Tensor], rec: torch.Tensor, rec_feats: list[torch.Tensor] | None = None
    ) -> list[torch.Tensor]:
        assert self.msdsm is not None
        fr = self.encoder(rec, depth=len(SEG_STAGES)) if rec_feats is None else rec_feats
        return self.msdsm([feats[i] for i in SEG_STAGES], fr)

    def raw_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, t, t) filtered maps before the quantile normalisation, one channel per entry
        of `self.channels` (the MSDSM map, the pixel difference, the perception stages, the
        perceptual distance)."""
        feats, _, rec = self.reconstruct(x)
        x = x[:, :3]
        needs_fr = "msdsm" in self.parts or "perception" in self.parts
        fr = self.encoder(rec, depth=len(SEG_STAGES)) if needs_fr else []
        maps = []
        if self.msdsm is not None:
            maps.append(upsample_to(fuse_maps(self.seg_logits(feats, rec, fr)), x))
        if "pixel" in self.parts:
            maps.append(((x - rec) ** 2).mean(1, keepdim=True))
        if "perception" in self.parts:
            maps += [upsample_to(((feats[i] - fr[i]) ** 2).mean(1, keepdim=True), x) for i in SEG_STAGES]
        if self.lite is not None:
            # The taps' distances share a scale (cosine), so they are averaged before the filters.
            pairs = zip(self.lite(x), self.lite(rec), strict=True)
            maps.append(torch.stack([upsample_to(cosine_distance(a, b), x) for a, b in pairs]).mean(0))
        m = maps[0] if len(maps) == 1 else torch.cat(maps, 1)
        return self.median_filter(self.mean_filter(m))

    def channel_norm(self, index: int) -> QuantileNorm:
        """The held-out scale of raw channel `index`."""
        return channel_norm(self, self.channels, index)

    def set_quantiles(self, q: np.ndarray) -> None:
        """Set every channel's held-out scale from (C, 2) quantiles (`holdout_quantiles`)."""
        set_channel_quantiles(self, self.channels, q, what="channels")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.raw_map(x)
        out: torch.Tensor | None = None
        c = 0
        for part in self.parts:
            n = part_channels(part)
            scaled = [self.channel_norm(c + k)(m[:, c + k : c + k + 1]) for k in range(n)]
            part_map = scaled[0] if n == 1 else torch.stack(scaled).mean(0)
            out = part_map if out is None else out + part_map
            c += n
        assert out is not None
        return out


def net_from_params(params: dict[str, Any], *, tile_px: int) -> NDPNet:
    """The network of a bundle's `params` (untrained)."""
    return NDPNet(
        width=int(params["width"]),
        tile_px=tile_px,
        rbam=bool(params["rbam"]),
        segmentation=str(params["segmentation"]),
        rbam_tau=float(params["rbam_tau"]),
        fusion_channels=int(params["fusion_channels"]),
        filter_px=int(params.get("filter_px", 5)),
        reference=str(params.get("reference", "medoid")),
        backbone=str(params.get("backbone", "efficientnet-lite0")),
    )


def build_tile_net(meta: BundleMeta, tensors: dict[str, np.ndarray]) -> NDPNet:
    net = net_from_params(meta.params, tile_px=meta.tiles.tile_px)
    load_module_state(net, tensors, "net")
    return net.eval()


def build_global(meta: BundleMeta, tensors: dict[str, np.ndarray]) -> GlobalBranch | None:
    return None
