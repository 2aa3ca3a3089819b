"""Training NDP-Net in two phases, on artificial defects (see README.md beside this file).

Phase 1 (encoder, decoder; defect-free crops I_o and their artificial-defect
versions I_ad): 100 * MSE(rec, I_o) + 1 * perceptual(rec, I_o) + 1 * L_def_per,
where rec = decoder(encoder(I_o)), the perceptual loss is the mean L1 between
the first five EfficientNet-Lite activation maps of I_o and rec, and
L_def_per = mean over the five encoder stages of MSE(N(mean_c (Phi(I_o) - Phi(I_ad))^2), M_l),
N dividing each map by its maximum, M_l the mask resized to the stage.

Then the reference tile (the medoid of training tiles in EfficientNet-Lite
feature space) is cut into the RBFRM patch banks with the now frozen encoder.
With `reference=golden` there is no medoid: every crop is drawn together with
the golden frame's crop at the same place (`reference_frame`, a frame aligned
like the training frames), and phase 2 repairs each crop from its own.

Phase 2 (RBAM, decoder, MSDSM; encoder frozen): rec = decoder(RBAM(encoder(I_ad)))
against I_o: 100 * MSE + 1 * perceptual + 1 * feature repair (MSE between the
repaired deep features of I_ad and the features of I_o) + 1 * focal loss of
AM1..AM3 against the mask.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.backbone import LiteFeatures, frozen_features
from pipelines.bundle import REFERENCE_FRAME_KEY
from pipelines.data import read_image
from pipelines.errors import ModelError
from pipelines.models.base import module_tensors
from pipelines.models.ndpnet.defects import SOURCES, DefectMaker
from pipelines.models.ndpnet.model import (
    MAP_PARTS,
    PERCEPTUAL_TAPS,
    RBAM_STAGES,
    REFERENCES,
    net_from_params,
    parse_segmentation,
)
from pipelines.training import (
    CropSampler,
    Fitted,
    TrainLoop,
    first_calibration,
    holdout_quantiles,
    split_holdout,
    to_tensor,
)

log = logging.getLogger(__name__)
FAMILY_VERSION = 1
SWITCHES = ("on", "off")
BUDGETS = ("time", "epochs")

PROFILES: dict[str, dict[str, Any]] = {
    # Sized for a 2-core CPU: at most 20 minutes for 500 tiles of 256x256 (README: what it costs).
    "fast": {
        "backbone": "efficientnet-lite0",
        "width": 16,
        "fusion_channels": 64,
        "rbam": "on",
        "segmentation": "msdsm+pixel+perceptual",  # the paper's MSDSM plus two maps (README)
        "rbam_tau": 0.05,
        "crop_px": 128,
        "batch": 8,
        "budget": "time",
        "phase1_epochs": 3.0,
        "phase2_epochs": 1.5,
        "phase1_share": 0.4,
        "lr": 5e-4,
        "weight_decay": 1e-5,
        "rec_weight": 100.0,
        "per_weight": 1.0,
        "def_per_weight": 1.0,
        "fea_rep_weight": 1.0,
        "seg_weight": 1.0,
        "focal_gamma": 2.0,
        "anomaly_probability": 0.5,
        "anomaly_sources": "procedural,dataset,packaged",
        "reference": "medoid",
        "reference_frame": "",
        "reference_candidates": 48,
        "max_minutes": 15.0,
    },
    # The paper's schedule: 400 + 200 epochs of 256x256 crops, Adam 1e-4 (a GPU's work).
    "full": {
        "backbone": "efficientnet-lite0",
        "width": 32,
        "fusion_channels": 64,
        "rbam": "on",
        "segmentation": "msdsm",
        "rbam_tau": 0.05,
        "crop_px": 256,
        "batch": 8,
        "budget": "epochs",
        "phase1_epochs": 400.0,
        "phase2_epochs": 200.0,
        "phase1_share": 0.4,
        "lr": 1e-4,
        "weight_decay": 1e-5,
        "rec_weight": 100.0,
        "per_weight": 1.0,
        "def_per_weight": 1.0,
        "fea_rep_weight": 1.0,
        "seg_weight": 1.0,
        "focal_gamma": 2.0,
        "anomaly_probability": 0.5,
        "anomaly_sources": "procedural,dataset,packaged",
        "reference": "medoid",
        "reference_frame": "",
        "reference_candidates": 200,
        "max_minutes": 6000.0,
    },
}


def check_settings(settings: dict[str, Any]) -> None:
    """One clear ModelError for a setting that cannot work."""
    for key in ("rbam",):
        if settings[key] not in SWITCHES:
            raise ModelError(f"ndpnet setting {key}={settings[key]!r}: use on or off")
    if settings["budget"] not in BUDGETS:
        raise ModelError(
            f"ndpnet setting budget={settings['budget']!r}: use time (train for max_minutes) "
            "or epochs (phase1_epochs + phase2_epochs, max_minutes as a cap)"
        )
    if not 0.0 < float(settings["phase1_share"]) < 1.0:
        raise ModelError(
            f"ndpnet setting phase1_share={settings['phase1_share']}: a fraction between 0 and 1 "
            "(the share of the time limit for phase 1)"
        )
    try:
        parse_segmentation(settings["segmentation"])
    except ModelError:
        raise ModelError(
            f"ndpnet setting segmentation={settings['segmentation']!r}: "
            f"a '+'-list of {', '.join(MAP_PARTS)}: "
            "msdsm (the paper), pixel (the ablation: squared pixel difference of input and "
            "reconstruction), perception (the encoder's feature difference), perceptual (the "
            "pretrained network's); e.g. msdsm+pixel"
        ) from None
    sources = tuple(s.strip() for s in str(settings["anomaly_sources"]).split(",") if s.strip())
    if not sources or any(s not in SOURCES for s in sources):
        raise ModelError(
            f"ndpnet setting anomaly_sources={settings['anomaly_sources']!r}: "
            f"a comma list from {','.join(SOURCES)}"
        )
    if settings["reference"] not in REFERENCES:
        raise ModelError(
            f"ndpnet setting reference={settings['reference']!r}: use medoid (the paper: one "
            "typical training tile) or golden (the golden frame's tile at each place; needs "
            "reference_frame=PATH)"
        )
    if settings["reference"] == "golden" and not str(settings["reference_frame"]).strip():
        raise ModelError(
            "ndpnet setting reference=golden needs reference_frame=PATH: the golden part's frame "
            "(the golden template's image), aligned like the training frames"
        )
    crop = int(settings["crop_px"])
    if crop % 32 or crop < 64:
        raise ModelError(f"ndpnet setting crop_px={crop}: a multiple of 32, at least 64")
    for key in ("width", "fusion_channels", "batch", "reference_candidates"):
        if int(settings[key]) < 1:
            raise ModelError(f"ndpnet setting {key}={settings[key]}: must be a positive integer")
    for key in ("lr", "rbam_tau", "max_minutes"):
        if not float(settings[key]) > 0:
            raise ModelError(f"ndpnet setting {key}={settings[key]}: must be > 0")
    for key in (
        "phase1_epochs",
        "phase2_epochs",
        "weight_decay",
        "rec_weight",
        "per_weight",
        "def_per_weight",
        "fea_rep_weight",
        "seg_weight",
        "focal_gamma",
    ):
        if float(settings[key]) < 0 or not math.isfinite(float(settings[key])):
            raise ModelError(f"ndpnet setting {key}={settings[key]}: must be >= 0")
    if not 0.0 <= float(settings["anomaly_probability"]) <= 1.0:
        raise ModelError(
            f"ndpnet setting anomaly_probability={settings['anomaly_probability']}: between 0 and 1"
        )


def perceptual_loss(lite: LiteFeatures, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over the first five activation maps of the L1 distance (the paper: VGG-16's)."""
    fa, fb = lite(a), lite(b)
    return torch.stack([(x - y).abs().mean() for x, y in zip(fa, fb, strict=True)]).mean()


def defect_perception_loss(
    fo: list[torch.Tensor], fad: list[torch.Tensor], mask: torch.Tensor
) -> torch.Tensor:
    """L_def_per: mean over layers of MSE(N(mean_c (Phi_l(I_o) - Phi_l(I_ad))^2), mask at layer l).

    N divides each sample's map by its maximum (an all-zero map, a sample
    without defect, stays zero)."""
    losses = []
    for a, b in zip(fo, fad, strict=True):
        d = ((a - b) ** 2).mean(1, keepdim=True)
        n = d / d.flatten(1).amax(1).clamp_min(1e-8).view(-1, 1, 1, 1)
        m = F.interpolate(mask, size=d.shape[-2:], mode="area")
        losses.append(((n - m) ** 2).mean())
    return torch.stack(losses).mean()


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """Binary focal loss (Lin et al.) with soft targets, mean over pixels."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    pt = p * target + (1 - p) * (1 - target)
    return ((1 - pt) ** gamma * bce).mean()


def reference_tile(
    images: list[np.ndarray], lite: LiteFeatures, *, tile_px: int, candidates: int, seed: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """The medoid, in EfficientNet-Lite feature space, of `candidates` random training tiles.

    A tile's descriptor is the channel mean and standard deviation of the
    pretrained features at strides 4 and 8 (texture statistics), standardised
    over the candidates; the medoid minimises the summed distance to the others."""
    sampler = CropSampler(images, crop_px=tile_px, seed=seed + 17)
    tiles = sampler.sample(candidates)
    descs = []
    with torch.no_grad():
        for i in range(0, len(tiles), 8):
            feats = lite(tiles[i : i + 8])
            parts = []
            for f in (feats[2], feats[4]):
                parts += [f.mean((2, 3)), f.std((2, 3))]
            descs.append(torch.cat(parts, 1))
    d = torch.cat(descs)
    d = (d - d.mean(0)) / d.std(0).clamp_min(1e-6) if len(d) > 1 else d
    dist = torch.cdist(d, d).sum(1)
    best = int(dist.argmin())
    img = (tiles[best].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    return img, {"method": "medoid", "candidates": len(tiles), "index": best}


def golden_frame(path: str, images: list[np.ndarray]) -> np.ndarray:
    """The golden frame (HxWx3 uint8 RGB); every training frame must have its size (aligned)."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"ndpnet setting reference_frame={path}: no such file (the golden part's frame)")
    frame = read_image(p)
    h, w = frame.shape[:2]
    for img in images:
        if img.shape[:2] != (h, w):
            raise ModelError(
                f"reference_frame {path} is {w}x{h} but a training frame is {img.shape[1]}x{img.shape[0]}: "
                "golden-reference training needs frames aligned to the golden template (same size)"
            )
    return frame


def _iterations(epochs: float, images: list[np.ndarray], crop_px: int, batch: int) -> int:
    """Iterations for `epochs` passes over the training area in crops of `crop_px` (>= 1 crop per image)."""
    return max(1, math.ceil(epochs * _crops(images, crop_px) / batch)) if epochs > 0 else 0


def _crops(images: list[np.ndarray], crop_px: int) -> int:
    """Crops of `crop_px` in one pass over the training area (>= 1 per image)."""
    return sum(max(1, round(img.shape[0] * img.shape[1] / crop_px**2)) for img in images)


def fit(images: list[np.ndarray], *, settings: dict[str, Any], seed: int, progress: bool) -> Fitted:
    check_settings(settings)
    train, held = split_holdout(images, fraction=0.1, seed=seed)
    tile_px = int(settings["tile_px"])
    crop = int(settings["crop_px"])
    batch = int(settings["batch"])
    params: dict[str, Any] = {
        "width": int(settings["width"]),
        "rbam": settings["rbam"] == "on",
        "segmentation": "+".join(parse_segmentation(settings["segmentation"])),
        "rbam_tau": float(settings["rbam_tau"]),
        "fusion_channels": int(settings["fusion_channels"]),
        "filter_px": 5,
        "reference": settings["reference"],
        "backbone": settings["backbone"],
    }
    golden = None
    if settings["reference"] == "golden":
        golden = golden_frame(str(settings["reference_frame"]), images)
    net = net_from_params(params, tile_px=tile_px)
    lite = frozen_features(settings["backbone"], taps=PERCEPTUAL_TAPS)
    if net.lite is not None:  # the "perceptual" map part: the same pretrained network
        net.lite.load_state_dict(lite.state_dict())
    # Golden mode: every crop comes with the golden frame's crop at the same place (6 channels).
    sampler = CropSampler(train, crop_px=crop, seed=seed, reference=golden)
    sources = tuple(s.strip() for s in str(settings["anomaly_sources"]).split(",") if s.strip())
    maker = DefectMaker(
        train, sources=sources, probability=float(settings["anomaly_probability"]), seed=seed + 1
    )
    w = {
        k: float(settings[k])
        for k in ("rec_weight", "per_weight", "def_per_weight", "fea_rep_weight", "seg_weight")
    }
    gamma = float(settings["focal_gamma"])
    budget_s = 60.0 * float(settings["max_minutes"])
    n1 = _iterations(float(settings["phase1_epochs"]), train, crop, batch)
    n2 = _iterations(float(settings["phase2_epochs"]), train, crop, batch)
    # budget=time (fast profile): each phase trains for its share of max_minutes, however many
    # epochs that is, so a small set is not under-trained; the epochs are the floor we warn
    # below. budget=epochs (full profile): the epochs, with max_minutes as a cap split the same way.
    by_time = settings["budget"] == "time"
    share1 = float(settings["phase1_share"])

    def batch_pair() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(good crops, their artificial-defect versions, masks, golden crops or None)."""
        crops = sampler.sample(batch)
        good, ref = (crops, None) if golden is None else (crops[:, :3].contiguous(), crops[:, 3:])
        bad, masks = maker(good.numpy())
        return good, torch.from_numpy(bad), torch.from_numpy(masks), ref

    def adam(modules: list[torch.nn.Module]) -> torch.optim.Optimizer:
        ps = [p for m in modules for p in m.parameters() if p.requires_grad]
        return torch.optim.Adam(ps, lr=float(settings["lr"]), weight_decay=float(settings["weight_decay"]))

    # Phase 1: encoder with pixel-level defect perception, and the decoder.
    opt = adam([net.encoder, net.decoder])  # the first optimiser imports for seconds: before the clock
    net.train()
    start = time.monotonic()
    loop1 = TrainLoop(
        "NDP-Net phase 1", iterations=None if by_time else n1, deadline=start + budget_s * share1,
        progress=progress, every=20,
    )  # fmt: skip
    for _ in loop1:
        good, bad, masks, _ref = batch_pair()
        feats = net.encoder(torch.cat([good, bad]))
        fo = [f[:batch] for f in feats]
        fad = [f[batch:] for f in feats]
        deep = [fo[i] for i in RBAM_STAGES]
        rec = net.decoder(*deep, good)
        loss = w["rec_weight"] * F.mse_loss(rec, good) + w["per_weight"] * perceptual_loss(lite, rec, good)
        if w["def_per_weight"] > 0:
            loss = loss + w["def_per_weight"] * defect_perception_loss(fo, fad, masks)
        loop1.step(opt, loss)
    phase2_start = time.monotonic()

    # The reference tile, cut into the RBFRM banks by the frozen encoder.
    for p in net.encoder.parameters():
        p.requires_grad_(False)
    net.encoder.eval()
    if golden is None:
        ref, ref_info = reference_tile(
            train, lite, tile_px=tile_px, candidates=int(settings["reference_candidates"]), seed=seed
        )
        net.set_reference(to_tensor(ref[None]))
    else:
        ref_info = {
            "method": "golden",
            "frame": str(settings["reference_frame"]),
            "frame_px": [int(golden.shape[1]), int(golden.shape[0])],
        }

    # Phase 2: RBAM, decoder and MSDSM; the encoder stays frozen (eval mode).
    trainable = [net.decoder, *net.rbam] + ([net.msdsm] if net.msdsm is not None else [])
    opt = adam(trainable)
    for m in trainable:
        m.train()
    loop2 = TrainLoop(
        "NDP-Net phase 2", iterations=None if by_time else n2,
        # The reference search is not charged to phase 2's share.
        deadline=start + budget_s + (time.monotonic() - phase2_start), progress=progress, every=20,
    )  # fmt: skip
    for _ in loop2:
        good, bad, masks, ref_crops = batch_pair()
        with torch.no_grad():
            feats = net.encoder(torch.cat([good, bad]))
            ref_feats = net.reference_features(ref_crops)
        fo = [f[:batch] for f in feats]
        fad = [f[batch:] for f in feats]
        rep = net.repair(fad, ref_feats)
        rec = net.decoder(*rep, bad)
        loss = w["rec_weight"] * F.mse_loss(rec, good) + w["per_weight"] * perceptual_loss(lite, rec, good)
        if net.use_rbam and w["fea_rep_weight"] > 0:
            rep_loss = torch.stack(
                [F.mse_loss(r, fo[i]) for r, i in zip(rep, RBAM_STAGES, strict=True)]
            ).mean()
            loss = loss + w["fea_rep_weight"] * rep_loss
        if net.msdsm is not None and w["seg_weight"] > 0:
            logits = net.seg_logits(fad, rec)
            seg = torch.stack(
                [
                    focal_loss(lg, F.interpolate(masks, size=lg.shape[-2:], mode="area"), gamma)
                    for lg in logits
                ]
            ).sum()
            loss = loss + w["seg_weight"] * seg
        loop2.step(opt, loss)
    crops = _crops(train, crop)
    epochs = [round(loop.done * batch / crops, 2) for loop in (loop1, loop2)]
    floors = [float(settings["phase1_epochs"]), float(settings["phase2_epochs"])]
    for phase, (got, floor) in enumerate(zip(epochs, floors, strict=True), start=1):
        if got < floor:
            log.warning(
                "NDP-Net phase %d trained %.2f epochs, fewer than the profile's %.2f: the time limit "
                "was too short for this data on this machine (--set max_minutes=...)", phase, got, floor
            )  # fmt: skip
    net.eval()
    train_s = time.monotonic() - start

    held_in = held if golden is None else [np.concatenate([img, golden], 2) for img in held]
    q = holdout_quantiles(net.raw_map, held_in, tile_px=tile_px)
    net.set_quantiles(q)
    calibration = first_calibration(net, None, held, tile_px=tile_px, reference_frame=golden)
    tensors = module_tensors(net, "net")
    if golden is not None:
        tensors[REFERENCE_FRAME_KEY] = golden
    return Fitted(
        input_channels=3 if golden is None else 6,
        params=params,
        tensors=tensors,
        info={
            "budget": settings["budget"],
            "phase1_iterations": loop1.done,
            "phase2_iterations": loop2.done,
            "epochs": {"phase1": epochs[0], "phase2": epochs[1], "floor": floors},
            "phase1_final_loss": loop1.final(),
            "phase2_final_loss": loop2.final(),
            "network_training_s": round(train_s, 1),
            "reference": ref_info,
            "held_out": len(held),
            "map_quantiles": q.tolist(),
            "calibration": calibration,
        },
    )
