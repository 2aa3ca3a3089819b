"""BVPN at inference: the focus and peripheral maps (tile network) and the logical module.

Reading of "Biomimetic Visual Perception Network for Industrial Image Anomaly
Detection" (IEEE T-ASE); see README.md beside this file for the method and
our choices. The tile network holds the frozen pretrained teacher, the focus
student (small receptive field, central vision), the autoencoder (large
receptive field, peripheral vision) and the student head that predicts it;
the maps are normalised with held-out quantiles inside the graph and fused.
The logical module (`logical.py`) and the peripheral summary statistics
(`peripheral.py`) judge the whole image (numpy and OpenCV).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipelines.backbone import LiteFeatures
from pipelines.bundle import BundleMeta
from pipelines.errors import BundleError
from pipelines.models.base import GaussianBlur, GlobalBranch, GlobalResult, load_module_state, upsample_to

TAPS = (4, 10)  # EfficientNet-Lite0: 40 channels at stride 8, 112 at stride 16 (bundles before `taps`)


def _conv(cin: int, cout: int, k: int = 3, s: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2), nn.ReLU(inplace=True))


class Teacher(nn.Module):
    """Pretrained features at stride 8, channel-standardised with training statistics."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, backbone: str, taps: tuple[int, ...] = TAPS) -> None:
        super().__init__()
        self.features = LiteFeatures(backbone, taps=taps)
        self.dim = sum(self.features.channels)
        self.register_buffer("mean", torch.zeros(1, self.dim, 1, 1))
        self.register_buffer("std", torch.ones(1, self.dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        size = f[0].shape[-2:]
        t = torch.cat(
            [f[0]] + [F.interpolate(g, size=size, mode="bilinear", align_corners=False) for g in f[1:]], 1
        )
        return (t - self.mean) / self.std


class FocusStudent(nn.Module):
    """Central vision: a small receptive field at stride 8 (15 + 16 * `convs` px: 31 px with one
    3x3 convolution at stride 8, 79 px with four).

    Outputs 2*dim channels: the teacher's features (focus map) and the
    autoencoder's output (peripheral map), as in EfficientAD's student."""

    def __init__(self, dim: int, width: int, convs: int = 1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            _conv(3, width // 2, 3, 2),
            _conv(width // 2, width, 3, 2),
            _conv(width, 2 * width, 3, 2),
            *[_conv(2 * width, 2 * width, 3) for _ in range(convs)],
            nn.Conv2d(2 * width, 2 * dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PeripheralAE(nn.Module):
    """Peripheral vision: an autoencoder through a stride-32, narrow bottleneck
    (receptive field of several hundred px) that predicts the teacher's features."""

    def __init__(self, dim: int, width: int, latent: int) -> None:
        super().__init__()
        self.enc = nn.Sequential(
            _conv(3, width // 2, 3, 2),
            _conv(width // 2, width, 3, 2),
            _conv(width, width, 3, 2),
            _conv(width, width, 3, 2),
            _conv(width, width, 3, 2),
            _conv(width, latent, 3),
            _conv(latent, latent, 3),
        )
        self.dec = nn.Sequential(
            _conv(latent, width, 3), _conv(width, width, 3), nn.Conv2d(width, dim, 3, 1, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.enc(x)
        z = F.interpolate(z, scale_factor=4.0, mode="bilinear", align_corners=False)
        return self.dec(z)


class BVPNTileNet(nn.Module):
    """(B, 3, t, t) in [0, 1] -> (B, 1, t, t) fused map on the calibrated scale."""

    q: torch.Tensor
    weights: torch.Tensor

    def __init__(
        self,
        *,
        backbone: str,
        width: int,
        ae_width: int,
        latent: int,
        blur_sigma_px: float,
        modules: tuple[str, ...],
        taps: tuple[int, ...] = TAPS,
        student_convs: int = 1,
    ) -> None:
        super().__init__()
        self.teacher = Teacher(backbone, taps)
        dim = self.teacher.dim
        self.dim = dim
        self.student = FocusStudent(dim, width, student_convs)
        self.ae = PeripheralAE(dim, ae_width, latent)
        self.blur = GaussianBlur(blur_sigma_px)
        # rows: focus, peripheral; columns: q_low, q_high of held-out good maps
        self.register_buffer("q", torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
        self.register_buffer(
            "weights", torch.tensor([float("focus" in modules), float("peripheral" in modules)])
        )

    def raw_maps(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 2, t/8, t/8): squared distances of the focus and peripheral predictions."""
        t = self.teacher(x)
        s = self.student(x)
        a = self.ae(x)
        focus = ((s[:, : self.dim] - t) ** 2).mean(1, keepdim=True)
        periph = ((s[:, self.dim :] - a) ** 2).mean(1, keepdim=True)
        return torch.cat([focus, periph], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.raw_maps(x)
        n = (r - self.q[:, 0].view(1, 2, 1, 1)) / (self.q[:, 1] - self.q[:, 0]).view(1, 2, 1, 1)
        w = self.weights.view(1, 2, 1, 1)
        fused = (n * w).sum(1, keepdim=True) / w.sum().clamp_min(1.0)
        return self.blur(upsample_to(fused, x))


def build_tile_net(meta: BundleMeta, tensors: dict[str, np.ndarray]) -> BVPNTileNet:
    p = meta.params
    net = BVPNTileNet(
        backbone=p["backbone"],
        width=int(p["width"]),
        ae_width=int(p["ae_width"]),
        latent=int(p["latent"]),
        blur_sigma_px=float(p["blur_sigma_px"]),
        modules=tuple(p["modules"]),
        taps=tuple(int(t) for t in p.get("taps", TAPS)),
        student_convs=int(p.get("student_convs", 1)),
    )
    load_module_state(net, tensors, "net")
    return net.eval()


@dataclasses.dataclass
class WholeImage(GlobalBranch):
    """BVPN's whole-image judgements together: the logical module and the peripheral summary
    statistics. Each is aligned with the tile score on the held-out images; the larger score
    counts, and the map is the logical module's (the statistics have no place)."""

    branches: tuple[GlobalBranch, ...]

    def __call__(self, rgb: np.ndarray) -> GlobalResult:
        results = [b(rgb) for b in self.branches]
        maps = [r.anomaly_map for r in results if r.anomaly_map is not None]
        anomaly_map = functools.reduce(np.maximum, maps) if maps else None
        return GlobalResult(max(r.score for r in results), anomaly_map)


def whole_image(branches: list[GlobalBranch]) -> GlobalBranch | None:
    """None, the one branch, or both together."""
    return None if not branches else branches[0] if len(branches) == 1 else WholeImage(tuple(branches))


def build_global(meta: BundleMeta, tensors: dict[str, np.ndarray]) -> GlobalBranch | None:
    """The logical module and the peripheral statistics the bundle has (BundleError, one line,
    where its parameters or tensors for them are missing or malformed)."""
    from pipelines.models.bvpn.logical import LogicalModule
    from pipelines.models.bvpn.peripheral import SummaryStatistics

    branches: list[GlobalBranch] = []
    try:
        if "logical" in meta.params["modules"]:
            branches.append(LogicalModule.from_bundle(meta.params["logical"], tensors))
        if "peripheral_stats" in meta.params:  # bundles since session 13
            branches.append(SummaryStatistics.from_bundle(meta.params["peripheral_stats"], tensors))
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(
            f"BVPN bundle {meta.bundle_id}: its whole-image branches are incomplete or malformed "
            f"({type(exc).__name__}: {exc}): use the bundle as training wrote it, or retrain"
        ) from exc
    return whole_image(branches)
