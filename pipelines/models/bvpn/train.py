"""Training BVPN: focus student, peripheral autoencoder and its student head, logical module.

Losses (EfficientAD-style, our reading of BVPN's distillation):
- focus: hard-mined MSE between the student's first half and the teacher
  (only the hardest 0.1% of feature elements count, so the student does not
  learn to imitate the teacher everywhere and anomalies stay visible);
- peripheral: MSE between the autoencoder and the teacher, and between the
  student's second half and the (detached) autoencoder output; then the
  whole-image summary statistics of good images (`peripheral.py`), no gradient.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch

from pipelines.backbone import frozen_features
from pipelines.models.base import GlobalBranch, module_tensors
from pipelines.models.bvpn.logical import LogicalModule, fit_logical
from pipelines.models.bvpn.model import BVPNTileNet, whole_image
from pipelines.models.bvpn.peripheral import SummaryStatistics, fit_summary_statistics
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
MODULES = ("focus", "peripheral", "logical", "auto")

PROFILES: dict[str, dict[str, Any]] = {
    # Sized for a 2-core CPU: <= 10 min for 500 images at 256x256.
    "fast": {
        "backbone": "efficientnet-lite0",
        # teacher blocks 3 and 4 (stride 8, receptive fields 35 and 67 px) and a student with four
        # 3x3 convolutions at stride 8 (79 px): it can see what it must predict (BENCHMARKS, session 7)
        "taps": [3, 4],
        "student_convs": 4,
        "width": 64,
        "ae_width": 64,
        "latent": 64,
        "iterations": 3000,
        "batch": 8,
        "crop_px": 128,
        "lr": 1e-3,
        "weight_decay": 1e-5,
        "hard_quantile": 0.999,
        "blur_sigma_px": 4.0,
        "modules": ["auto"],
        "logical_work_px": 128,
        "logical_classes": 6,
        "logical_min_component_px": 4,
        "logical_min_consistency": 0.78,
        "logical_rare_tau": 0.005,
        # the peripheral module's whole-image texture statistics (peripheral.py); false: the
        # autoencoder map alone (the ablation)
        "peripheral_stats": True,
        "max_minutes": 9.0,
    },
    # For a GPU (or a patient CPU): wider networks, full-size crops, longer.
    "full": {
        "backbone": "efficientnet-lite0",
        "taps": [3, 4],
        "student_convs": 4,
        "width": 128,
        "ae_width": 96,
        "latent": 64,
        "iterations": 20000,
        "batch": 16,
        "crop_px": 256,
        "lr": 5e-4,
        "weight_decay": 1e-5,
        "hard_quantile": 0.999,
        "blur_sigma_px": 4.0,
        "modules": ["auto"],
        "logical_work_px": 192,
        "logical_classes": 8,
        "logical_min_component_px": 4,
        "logical_min_consistency": 0.78,
        "logical_rare_tau": 0.005,
        # the peripheral module's whole-image texture statistics (peripheral.py); false: the
        # autoencoder map alone (the ablation)
        "peripheral_stats": True,
        "max_minutes": 600.0,
    },
}


def fit(images: list[np.ndarray], *, settings: dict[str, Any], seed: int, progress: bool) -> Fitted:
    modules = tuple(settings["modules"])
    auto = "auto" in modules
    if auto:
        # auto: focus and peripheral always; logical only for registered products (decided below).
        modules = ("focus", "peripheral", "logical")
    unknown = set(modules) - set(MODULES)
    if unknown or not ({"focus", "peripheral"} & set(modules)):
        from pipelines.errors import ModelError

        raise ModelError(f"BVPN modules must include focus or peripheral, from {MODULES}; got {modules}")
    taps = check_teacher(settings)
    train, held = split_holdout(images, fraction=0.1, seed=seed)
    tile_px = int(settings["tile_px"])
    net = BVPNTileNet(
        backbone=settings["backbone"],
        width=int(settings["width"]),
        ae_width=int(settings["ae_width"]),
        latent=int(settings["latent"]),
        blur_sigma_px=float(settings["blur_sigma_px"]),
        modules=modules,
        taps=taps,
        student_convs=int(settings["student_convs"]),
    )
    teacher_feats = frozen_features(settings["backbone"], taps=taps)
    net.teacher.features.load_state_dict(teacher_feats.state_dict())
    net.teacher.eval()
    for p in net.teacher.parameters():
        p.requires_grad_(False)
    crop = int(settings["crop_px"])
    sampler = CropSampler(train, crop_px=crop, seed=seed)

    # Teacher channel statistics over random crops.
    with torch.inference_mode():
        feats = torch.cat([net.teacher(sampler.sample(8)) for _ in range(8)])
    net.teacher.mean.copy_(feats.mean(dim=(0, 2, 3), keepdim=True))
    net.teacher.std.copy_(feats.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-4))
    del feats

    params = list(net.student.parameters()) + list(net.ae.parameters())
    opt = torch.optim.AdamW(params, lr=float(settings["lr"]), weight_decay=float(settings["weight_decay"]))
    iterations = int(settings["iterations"])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i / iterations, 1.0)))
    )
    hard_q = float(settings["hard_quantile"])
    dim = net.dim
    net.student.train()
    net.ae.train()
    loop = TrainLoop(
        "training BVPN", iterations=iterations, progress=progress,
        deadline=time.monotonic() + 60.0 * float(settings["max_minutes"]),
    )  # fmt: skip
    for _ in loop:
        x = sampler.sample(int(settings["batch"]))
        with torch.no_grad():
            t = net.teacher(x)
        s = net.student(x)
        a = net.ae(x)
        d = (s[:, :dim] - t) ** 2
        thr = torch.quantile(d.detach().flatten()[:: max(1, d.numel() // 500_000)], hard_q)
        loss_focus = d[d >= thr].mean()
        loss_ae = ((a - t) ** 2).mean()
        loss_stae = ((s[:, dim:] - a.detach()) ** 2).mean()
        loop.step(opt, loss_focus + loss_ae + loss_stae, sched)
    net.eval()

    q = holdout_quantiles(net.raw_maps, held, tile_px=tile_px)
    net.q.copy_(torch.from_numpy(q))

    out_params: dict[str, Any] = {
        "backbone": settings["backbone"],
        "width": int(settings["width"]),
        "ae_width": int(settings["ae_width"]),
        "latent": int(settings["latent"]),
        "blur_sigma_px": float(settings["blur_sigma_px"]),
        "modules": list(modules),
        "taps": list(taps),
        "student_convs": int(settings["student_convs"]),
    }
    tensors = module_tensors(net, "net")
    logical = None
    if "logical" in modules:
        logical = fit_logical(
            train,
            held,
            work_px=int(settings["logical_work_px"]),
            classes=int(settings["logical_classes"]),
            min_component_px=int(settings["logical_min_component_px"]),
            seed=seed,
            rare_tau=float(settings["logical_rare_tau"]),
        )
        consistency = logical.layout_consistency()
        if auto and consistency < float(settings["logical_min_consistency"]):
            log.info(
                "layout consistency %.3f < %.2f: not a registered product, logical module off",
                consistency,
                float(settings["logical_min_consistency"]),
            )
            logical = None
            modules = tuple(m for m in modules if m != "logical")
            out_params["modules"] = list(modules)
        logical_info: dict[str, Any] = {
            "layout_consistency": round(consistency, 4),
            "auto": auto,
            "used": logical is not None,
        }
    else:
        logical_info = {"used": False}
    enabled = torch.tensor([float("focus" in modules), float("peripheral" in modules)])
    net.weights.copy_(enabled)
    weighting: dict[str, Any] = {"method": "enabled modules, equal weights"}
    if auto and float(enabled.sum()) > 1:
        weights, aurocs = tile_module_weights(net, held, tile_px=tile_px, seed=seed)
        net.weights.copy_(weights)
        weighting = {
            "method": "auto: pseudo-defect AUROC on held-out good images",
            "pseudo_auroc": {"focus": round(aurocs[0], 4), "peripheral": round(aurocs[1], 4)},
            "weights": [round(float(v), 4) for v in weights],
        }
        log.info("tile module weights %s from pseudo-defect AUROC %s", weighting["weights"], aurocs)
    tensors = {**tensors, **module_tensors(net, "net")}
    stats = None
    stats_info: dict[str, Any] = {"used": False}
    if "peripheral" in modules and bool(settings["peripheral_stats"]):
        stats = fit_summary_statistics(train, held)
        stats_info = {
            "used": True,
            "levels": stats.levels,
            "shrinkage": round(stats.shrinkage, 4),
            "held_out_distance": [round(float(v), 4) for v in stats.score_q],
        }
    aligned: list[tuple[str, LogicalModule | SummaryStatistics, dict[str, Any]]] = []
    if logical is not None:
        aligned.append(("logical", logical, logical_info))
    if stats is not None:
        aligned.append(("peripheral_stats", stats, stats_info))

    def align(tile_scores: np.ndarray) -> None:  # each on the held-out tile scores' scale
        for _, branch, _ in aligned:
            branch.align_to(tile_scores)

    branches: list[GlobalBranch] = [branch for _, branch, _ in aligned]
    calibration = first_calibration(net, whole_image(branches), held, tile_px=tile_px, align_branch=align)
    for key, branch, branch_info in aligned:
        branch_info["score_to"] = [round(float(v), 4) for v in branch.score_to]
        branch_params, branch_tensors = branch.to_bundle()
        out_params[key] = branch_params
        tensors.update(branch_tensors)
    return Fitted(
        params=out_params,
        tensors=tensors,
        info={
            "iterations_done": loop.done,
            "final_loss": loop.final(),
            "held_out": len(held),
            "map_quantiles": q.tolist(),
            "logical": logical_info,
            "peripheral_stats": stats_info,
            "tile_modules": weighting,
            "calibration": calibration,
        },
    )


def check_teacher(settings: dict[str, Any]) -> tuple[int, ...]:
    """The teacher's blocks (`taps`), checked with `student_convs`; one ModelError naming the setting.

    The focus student predicts at stride 8, so the first tap must be at stride 8 (later ones may be
    coarser: they are upsampled to it)."""
    from pipelines.backbone import block_strides
    from pipelines.errors import ModelError

    strides = block_strides(str(settings["backbone"]))
    taps = tuple(sorted({int(t) for t in settings["taps"]}))
    if not taps or taps[0] < 0 or taps[-1] >= len(strides) or strides[taps[0]] != 8:
        at8 = [i for i, s in enumerate(strides) if s == 8]
        raise ModelError(
            f"setting taps={list(settings['taps'])}: blocks of {settings['backbone']} (0-{len(strides) - 1}),"
            f" the first at stride 8 (blocks {at8[0]}-{at8[-1]}), e.g. taps=3,4"
        )
    if int(settings["student_convs"]) < 1:
        raise ModelError(f"setting student_convs={settings['student_convs']}: at least 1 (3x3 at stride 8)")
    return taps


def tile_module_weights(
    net: BVPNTileNet, held: list[np.ndarray], *, tile_px: int, seed: int, per_image: int = 2
) -> tuple[torch.Tensor, list[float]]:
    """Weights of the focus and peripheral maps from how well each separates artificial defects
    (`pipelines.pseudo_defects`) from the held-out good images: weight = AUROC - 0.5 (0 when a
    map does no better than chance), scaled so the best module has weight 1.

    Which module sees a product's defects depends on the product (fine print: the focus
    module; textured surfaces: often the peripheral one), and a module that cannot see them
    only adds noise to the mean of the maps."""
    from pipelines.inference import TiledAnalyser, torch_infer
    from pipelines.metrics import image_auroc
    from pipelines.pseudo_defects import add_pseudo_defect
    from pipelines.training import MARGIN_PX

    rng = np.random.default_rng(seed + 7919)
    defective = [add_pseudo_defect(img, rng)[0] for img in held for _ in range(per_image)]
    saved = net.weights.clone()
    aurocs = []
    try:
        for one_hot in ([1.0, 0.0], [0.0, 1.0]):
            net.weights.copy_(torch.tensor(one_hot))
            analyse = TiledAnalyser(torch_infer(net), tile_px=tile_px, overlap_px=0, margin_px=MARGIN_PX)
            good = [analyse(img).tile_score for img in held]
            bad = [analyse(img).tile_score for img in defective]
            aurocs.append(image_auroc(np.r_[good, bad], np.r_[np.zeros(len(good)), np.ones(len(bad))]))
    finally:
        net.weights.copy_(saved)
    gain = torch.tensor([max(0.0, a - 0.5) for a in aurocs])
    if float(gain.max()) <= 0.0:
        return saved, aurocs
    return gain / gain.max(), aurocs
