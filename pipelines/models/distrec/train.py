"""Training DistRec: dual-teacher distillation into the encoder, jointly with reconstruction.

Per iteration, on a batch of random crops of good images:
- distillation: MSE between the encoder's 1x1 heads and the frozen teachers'
  channel-standardised features (EfficientNet-Lite0 and -Lite1, both taps,
  concatenated), computed on the clean crop;
- reconstruction: L1 + (1 - SSIM) between the decoder's output and the clean crop.
With probability `corrupt_prob` a crop's input carries a pasted rectangle
from another crop (our addition, see README.md): the encoder must still give
the teachers' features of the clean crop and the decoder the clean pixels, so
what does not belong is not reconstructed.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch

from pipelines.backbone import frozen_features
from pipelines.errors import ModelError
from pipelines.models.base import module_tensors
from pipelines.models.distrec.model import (
    SCORINGS,
    TEACHER_DIM,
    TEACHER_SETS,
    TEACHER_TAPS,
    DistRecNet,
    parse_scoring,
)
from pipelines.training import (
    CropSampler,
    Fitted,
    TrainLoop,
    first_calibration,
    holdout_quantiles,
    split_holdout,
)

log = logging.getLogger(__name__)
FAMILY_VERSION = 1

PROFILES: dict[str, dict[str, Any]] = {
    # Sized for a 2-core CPU: <= 15 min in all for 500 images at 256x256.
    "fast": {
        "teachers": "dual",
        # measured (BENCHMARKS.md, session 8): bsdata 0.852 / 0.888 against ssim alone 0.900 / 0.740
        "scoring": "ssim+perceptual",
        "width": 64,
        "latent": 32,
        # 3000 with the 13-min stop (BENCHMARKS.md, sessions 9 to 11): deeppcb 0.814 / 0.925 -> 0.903 / 0.938
        # against 1500 (bsdata 0.852 / 0.888 -> 0.782 / 0.890 and, seed 1, 0.818 / 0.888); on the
        # 2-core CPU the stop ends deeppcb's run near 1900 iterations
        "iterations": 3000,
        "batch": 8,
        "crop_px": 128,
        "lr": 1e-3,
        "weight_decay": 1e-5,
        "distill_weight": 1.0,
        "corrupt_prob": 0.5,
        "blur_sigma_px": 4.0,
        "ssim_sigma_px": 1.5,
        "max_minutes": 13.0,
    },
    # For a GPU (or a patient CPU): wider, full-size crops, longer.
    "full": {
        "teachers": "dual",
        "scoring": "ssim+perceptual",
        "width": 96,
        "latent": 48,
        "iterations": 20000,
        "batch": 16,
        "crop_px": 256,
        "lr": 5e-4,
        "weight_decay": 1e-5,
        "distill_weight": 1.0,
        "corrupt_prob": 0.5,
        "blur_sigma_px": 4.0,
        "ssim_sigma_px": 1.5,
        "max_minutes": 600.0,
    },
}


def check_settings(settings: dict[str, Any]) -> None:
    """One clear ModelError for a setting out of range (names the key, the value and what is allowed)."""

    def bad(key: str, allowed: str) -> ModelError:
        return ModelError(f"DistRec setting {key}={settings[key]!r} is invalid: {allowed}")

    if settings["teachers"] not in TEACHER_SETS:
        raise bad("teachers", f"choose one of {', '.join(TEACHER_SETS)}")
    try:
        parse_scoring(settings["scoring"])
    except ModelError as err:
        raise bad("scoring", f"a '+'-list of distinct parts from {', '.join(SCORINGS)}") from err
    if int(settings["width"]) < 8 or int(settings["width"]) % 4:
        raise bad("width", "a multiple of 4, at least 8")
    for key in ("latent", "iterations", "batch"):
        if int(settings[key]) < 1:
            raise bad(key, "at least 1")
    if int(settings["crop_px"]) < 64 or int(settings["crop_px"]) % 32:
        raise bad("crop_px", "a multiple of 32, at least 64")
    if not 0.0 <= float(settings["corrupt_prob"]) <= 1.0:
        raise bad("corrupt_prob", "between 0 and 1")
    for key in ("lr", "blur_sigma_px", "ssim_sigma_px", "max_minutes"):
        if not float(settings[key]) > 0:
            raise bad(key, "greater than 0")
    for key in ("weight_decay", "distill_weight"):
        if float(settings[key]) < 0:
            raise bad(key, "0 or more")


class Teachers(torch.nn.Module):
    """The frozen pretrained teachers: both taps of each, at stride 8, standardised, concatenated."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__()
        self.nets = torch.nn.ModuleList([frozen_features(n, taps=TEACHER_TAPS[n]) for n in names])
        self.dim = TEACHER_DIM * len(names)
        self.register_buffer("mean", torch.zeros(1, self.dim, 1, 1))
        self.register_buffer("std", torch.ones(1, self.dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        for net in self.nets:
            f = net(x)
            size = f[0].shape[-2:]
            parts.append(f[0])
            parts += [torch.nn.functional.interpolate(g, size=size, mode="bilinear") for g in f[1:]]
        return (torch.cat(parts, 1) - self.mean) / self.std


def paste_corruption(x: torch.Tensor, *, prob: float, gen: torch.Generator) -> torch.Tensor:
    """A copy of `x` where a share `prob` of the crops carries a rectangle pasted from another crop."""
    b, _, h, w = x.shape
    out = x.clone()
    if b < 2 or prob <= 0:
        return out
    donor = x.roll(1, dims=0)
    for i in range(b):
        if float(torch.rand(1, generator=gen)) >= prob:
            continue
        rh = int(torch.randint(h // 16, h // 3 + 1, (1,), generator=gen))
        rw = int(torch.randint(w // 16, w // 3 + 1, (1,), generator=gen))
        y = int(torch.randint(0, h - rh + 1, (1,), generator=gen))
        xx = int(torch.randint(0, w - rw + 1, (1,), generator=gen))
        sy = int(torch.randint(0, h - rh + 1, (1,), generator=gen))
        sx = int(torch.randint(0, w - rw + 1, (1,), generator=gen))
        out[i, :, y : y + rh, xx : xx + rw] = donor[i, :, sy : sy + rh, sx : sx + rw]
    return out


def fit(images: list[np.ndarray], *, settings: dict[str, Any], seed: int, progress: bool) -> Fitted:
    check_settings(settings)
    train, held = split_holdout(images, fraction=0.1, seed=seed)
    tile_px = int(settings["tile_px"])
    names = TEACHER_SETS[settings["teachers"]]
    teachers = Teachers(names)
    net = DistRecNet(
        width=int(settings["width"]),
        latent=int(settings["latent"]),
        head_dim=teachers.dim,
        scoring=settings["scoring"],
        blur_sigma_px=float(settings["blur_sigma_px"]),
        ssim_sigma_px=float(settings["ssim_sigma_px"]),
        teachers=names,
    )
    if net.teachers is not None:  # the "perceptual" scoring: the same pretrained teachers, raw, shared
        net.teachers.nets = teachers.nets
    sampler = CropSampler(train, crop_px=int(settings["crop_px"]), seed=seed)
    gen = torch.Generator().manual_seed(seed)

    with torch.inference_mode():  # teacher channel statistics over random crops
        feats = torch.cat([teachers(sampler.sample(8)) for _ in range(8)])
    teachers.mean.copy_(feats.mean(dim=(0, 2, 3), keepdim=True))
    teachers.std.copy_(feats.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-4))
    del feats

    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=float(settings["lr"]), weight_decay=float(settings["weight_decay"]))
    iterations = int(settings["iterations"])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i / iterations, 1.0)))
    )
    distill_w = float(settings["distill_weight"])
    corrupt = float(settings["corrupt_prob"])
    net.train()
    loop = TrainLoop(
        "training DistRec", iterations=iterations, progress=progress,
        deadline=time.monotonic() + 60.0 * float(settings["max_minutes"]),
    )  # fmt: skip
    for _ in loop:
        clean = sampler.sample(int(settings["batch"]))
        x = paste_corruption(clean, prob=corrupt, gen=gen)
        with torch.no_grad():
            t = teachers(clean)
        f = net.encoder(x)
        loss_distill = ((net.heads(f) - t) ** 2).mean()
        r = net.decoder(f)
        loss_recon = (r - clean).abs().mean() + (1.0 - net.ssim(r, clean)).mean()
        loop.step(opt, distill_w * loss_distill + loss_recon, sched, distill=loss_distill, recon=loss_recon)
    net.eval()

    q = holdout_quantiles(net.raw_map, held, tile_px=tile_px)
    net.set_quantiles(q)
    out_params: dict[str, Any] = {
        "teachers": list(names),
        "width": int(settings["width"]),
        "latent": int(settings["latent"]),
        "head_dim": teachers.dim,
        "scoring": net.scoring,
        "blur_sigma_px": float(settings["blur_sigma_px"]),
        "ssim_sigma_px": float(settings["ssim_sigma_px"]),
    }
    calibration = first_calibration(net, None, held, tile_px=tile_px)
    return Fitted(
        params=out_params,
        tensors=module_tensors(net, "net"),
        info={
            "iterations_done": loop.done,
            "final_distill_loss": loop.final("distill"),
            "final_recon_loss": loop.final("recon"),
            "held_out": len(held),
            "map_quantiles": q.tolist(),
            "calibration": calibration,
        },
    )
