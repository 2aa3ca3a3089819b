"""Training IKDFF: the student decodes the teacher's multi-scale features from the fused embedding.

Loss (reverse distillation, Deng & Li CVPR 2022): the sum over the three
scales of the mean over positions of 1 - cos(teacher, student), against the
full, unmasked teacher features, while the feature-mask generator hides
blocks of the features the fusion sees. Settings are checked before any
image is touched, so a bad `--set` ends in one clear line.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch

from pipelines.checkpoint import PseudoDefectSelector
from pipelines.errors import ModelError
from pipelines.models.base import module_tensors
from pipelines.models.ikdff.model import IKDFFNet, cosine_distance, teacher_taps
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
TEACHER_NORMS = ("standard", "none")  # of the `teacher_norm` setting

PROFILES: dict[str, dict[str, Any]] = {
    # Sized for a 2-core CPU: <= 15 min (training <= 11 min) for 500 images at 256x256.
    "fast": {
        "backbone": "efficientnet-lite0",
        "attention": "on",
        "feature_mask": "on",
        "mask_ratio": 0.3,
        "mask_block_px": 32,
        # none: raw pretrained features, as reverse distillation (measured better on both shared
        # sets: BENCHMARKS, session 7); standard: per-channel standardisation with training statistics
        "teacher_norm": "none",
        "fuse_width": 128,
        "embed": 256,
        "decoder_widths": [32, 64, 128],
        "iterations": 1500,
        "batch": 8,
        "crop_px": 256,
        "lr": 1e-3,
        "weight_decay": 1e-5,
        "blur_sigma_px": 4.0,
        "max_minutes": 11.0,
        "checkpoint_every": 0,  # off: measured neutral to harmful on bsdata/deeppcb (BENCHMARKS.md)
    },
    # For a GPU (or a patient CPU): wider fusion, embedding and decoder, longer.
    "full": {
        "backbone": "efficientnet-lite0",
        "attention": "on",
        "feature_mask": "on",
        "mask_ratio": 0.3,
        "mask_block_px": 32,
        "teacher_norm": "none",
        "fuse_width": 256,
        "embed": 512,
        "decoder_widths": [48, 96, 192],
        "iterations": 20000,
        "batch": 16,
        "crop_px": 256,
        "lr": 5e-4,
        "weight_decay": 1e-5,
        "blur_sigma_px": 4.0,
        "max_minutes": 600.0,
        "checkpoint_every": 0,
    },
}

_ON = {"on", "true", "yes", "1"}
_OFF = {"off", "false", "no", "0"}


def switch(settings: dict[str, Any], key: str) -> bool:
    """An on/off setting (`--set attention=off`) as a bool; a clear error for anything else."""
    value = settings[key]
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _ON:
        return True
    if text in _OFF:
        return False
    raise ModelError(f"setting {key}={value!r}: use {key}=on or {key}=off")


def _positive_int(settings: dict[str, Any], key: str, minimum: int = 1) -> int:
    try:
        value = int(settings[key])
    except (TypeError, ValueError):
        raise ModelError(f"setting {key}={settings[key]!r}: must be a whole number >= {minimum}") from None
    if value < minimum:
        raise ModelError(f"setting {key}={value}: must be >= {minimum}")
    return value


def _int_list(settings: dict[str, Any], key: str, length: int) -> tuple[int, ...]:
    value = settings[key]
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        out = tuple(int(v) for v in items)
    except (TypeError, ValueError):
        raise ModelError(f"setting {key}={value!r}: give {length} whole numbers, e.g. 32,64,128") from None
    if len(out) != length or min(out) < 1:
        raise ModelError(f"setting {key}={value!r}: give {length} whole numbers >= 1 (fine to coarse)")
    return out


def check_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The validated, typed settings; raises ModelError naming the setting and what is allowed."""
    crop = _positive_int(settings, "crop_px", 64)
    if crop % 32:
        raise ModelError(f"setting crop_px={crop}: must be a multiple of 32 (the embedding's stride)")
    ratio = float(settings["mask_ratio"])
    if not 0.0 <= ratio < 1.0:
        raise ModelError(f"setting mask_ratio={ratio}: must be in [0, 1) (share of blocks hidden)")
    block = _positive_int(settings, "mask_block_px", 16)
    if block % 16:
        raise ModelError(f"setting mask_block_px={block}: must be a multiple of 16 (coarsest teacher stride)")
    for key in ("lr", "max_minutes", "blur_sigma_px"):
        if not float(settings[key]) > 0:
            raise ModelError(f"setting {key}={settings[key]}: must be > 0")
    norm = str(settings["teacher_norm"])
    if norm not in TEACHER_NORMS:
        raise ModelError(f"setting teacher_norm={norm!r}: choose one of {', '.join(TEACHER_NORMS)}")
    return {
        "backbone": str(settings["backbone"]),
        "teacher_norm": norm,
        "attention": switch(settings, "attention"),
        "feature_mask": switch(settings, "feature_mask"),
        "mask_ratio": ratio,
        "mask_block_px": block,
        "fuse_width": _positive_int(settings, "fuse_width", 8),
        "embed": _positive_int(settings, "embed", 8),
        "decoder_widths": _int_list(settings, "decoder_widths", 3),
        "iterations": _positive_int(settings, "iterations"),
        "batch": _positive_int(settings, "batch"),
        "crop_px": crop,
        "lr": float(settings["lr"]),
        "weight_decay": float(settings["weight_decay"]),
        "blur_sigma_px": float(settings["blur_sigma_px"]),
        "max_minutes": float(settings["max_minutes"]),
        "checkpoint_every": _positive_int(settings, "checkpoint_every", 0),
        "tile_px": int(settings["tile_px"]),
    }


def distillation_loss(t: list[torch.Tensor], s: list[torch.Tensor]) -> torch.Tensor:
    """Sum over scales of the mean cosine distance (reverse distillation's loss)."""
    loss = torch.zeros(())
    for ft, fs in zip(t, s, strict=True):
        loss = loss + cosine_distance(ft, fs).mean()
    return loss


@torch.no_grad()
def fit_teacher_statistics(net: IKDFFNet, sampler: CropSampler, *, batches: int = 8, batch: int = 8) -> None:
    """Per-channel mean and std of the raw teacher features over random good crops."""
    feats: list[list[torch.Tensor]] = []
    for _ in range(batches):
        feats.append(net.teacher.features(sampler.sample(batch)))
    for i in range(len(net.teacher.channels)):
        f = torch.cat([b[i] for b in feats])
        mean, std = net.teacher.stats(i)
        mean.copy_(f.mean(dim=(0, 2, 3), keepdim=True))
        std.copy_(f.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-4))


def build_net(s: dict[str, Any]) -> IKDFFNet:
    """The network of validated settings `s`, with the pretrained, frozen teacher."""
    from pipelines.backbone import frozen_features

    taps = teacher_taps(s["backbone"])
    net = IKDFFNet(
        backbone=s["backbone"],
        taps=taps,
        fuse_width=s["fuse_width"],
        embed=s["embed"],
        decoder_widths=s["decoder_widths"],
        attention=s["attention"],
        mask_ratio=s["mask_ratio"],
        mask_block_px=s["mask_block_px"],
        feature_mask=s["feature_mask"],
        blur_sigma_px=s["blur_sigma_px"],
    )
    net.teacher.features.load_state_dict(frozen_features(s["backbone"], taps=taps).state_dict())
    for p in net.teacher.parameters():
        p.requires_grad_(False)
    return net


def fit(images: list[np.ndarray], *, settings: dict[str, Any], seed: int, progress: bool) -> Fitted:
    s = check_settings(settings)
    train, held = split_holdout(images, fraction=0.1, seed=seed)
    net = build_net(s)
    sampler = CropSampler(train, crop_px=s["crop_px"], seed=seed)
    net.eval()
    if s["teacher_norm"] == "standard":
        fit_teacher_statistics(net, sampler)  # else the standardisation stays the identity (0, 1)

    params = net.student_parameters()
    opt = torch.optim.AdamW(params, lr=s["lr"], weight_decay=s["weight_decay"])
    iterations = s["iterations"]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i / iterations, 1.0)))
    )
    every = s["checkpoint_every"]
    selector = PseudoDefectSelector(held, crop_px=s["crop_px"], seed=seed) if every else None

    def train_mode() -> None:
        net.train()
        net.teacher.eval()  # frozen, batch-norm statistics included

    def checkpoint(iteration: int) -> None:
        if selector is not None:
            net.eval()
            selector.consider(net, net.raw_map, iteration=iteration)
            train_mode()

    train_mode()
    loop = TrainLoop(
        "training IKDFF", iterations=iterations, progress=progress, every=25,
        deadline=time.monotonic() + 60.0 * s["max_minutes"],
    )  # fmt: skip
    for i in loop:
        x = sampler.sample(s["batch"])
        t, st = net.pair(x)
        loop.step(opt, distillation_loss(t, st), sched)
        if every and (i + 1) % every == 0 and i + 1 < iterations:
            checkpoint(i + 1)
    checkpoint(loop.done)
    net.eval()
    if selector is not None:
        selector.restore_best(net)
        log.info("IKDFF: kept the weights of iteration %s of %d (pseudo-defect score %.3f)",
                 selector.best_iteration, loop.done, selector.best_score)  # fmt: skip

    q = holdout_quantiles(net.raw_map, held, tile_px=s["tile_px"])
    net.norm.q.copy_(torch.from_numpy(q[0]))
    params_out: dict[str, Any] = {
        "backbone": s["backbone"],
        "taps": list(net.teacher.features.taps),
        "fuse_width": s["fuse_width"],
        "embed": s["embed"],
        "decoder_widths": list(s["decoder_widths"]),
        "attention": s["attention"],
        "feature_mask_in_training": s["feature_mask"],
        "teacher_norm": s["teacher_norm"],  # for the record: the stored buffers carry it
        "blur_sigma_px": s["blur_sigma_px"],
    }
    calibration = first_calibration(net, None, held, tile_px=s["tile_px"])
    return Fitted(
        params=params_out,
        tensors=module_tensors(net, "net"),
        info={
            "iterations_done": loop.done,
            "final_loss": loop.final(),
            "held_out": len(held),
            "checkpoint": None if selector is None else selector.info(),
            "map_quantiles": q.tolist(),
            "calibration": calibration,
        },
    )
