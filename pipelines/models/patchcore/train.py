"""Training PatchCore: embed good tiles, greedy coreset, map quantiles on held-out images."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pipelines.backbone import frozen_features
from pipelines.models.base import module_tensors, upsample_to
from pipelines.models.patchcore.model import PatchCoreNet
from pipelines.tiling import TilePlan
from pipelines.training import (
    Fitted,
    first_calibration,
    holdout_quantiles,
    split_holdout,
    to_tensor,
    with_margin,
)

log = logging.getLogger(__name__)
FAMILY_VERSION = 1

PROFILES: dict[str, dict[str, Any]] = {
    "fast": {
        "backbone": "efficientnet-lite0",
        "bank_size": 8000,
        "max_patches": 120_000,
        "blur_sigma_px": 4.0,
    },
    "full": {
        "backbone": "efficientnet-lite0",
        "bank_size": 30000,
        "max_patches": 1_000_000,
        "blur_sigma_px": 4.0,
    },
}
TAPS = (4, 10)


def greedy_coreset(
    x: torch.Tensor, *, size: int, seed: int, proj_dim: int = 128, progress: bool = True
) -> torch.Tensor:
    """Indices of a k-center greedy coreset (Sener & Savarese), on a random projection as PatchCore does."""
    n = x.shape[0]
    if size >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(x.shape[1], proj_dim, generator=g) / proj_dim**0.5
    z = x @ proj
    zsq = (z * z).sum(1)
    idx = [int(torch.randint(n, (1,), generator=g))]
    # ||z - c||^2 as a mat-vec: no (n, d) temporary per step, which made this loop memory bound.
    dist = zsq - 2 * (z @ z[idx[0]]) + zsq[idx[0]]
    for _ in tqdm(range(size - 1), desc="coreset", disable=not progress, unit="pt", mininterval=2):
        i = int(dist.argmax())
        idx.append(i)
        torch.minimum(dist, zsq - 2 * (z @ z[i]) + zsq[i], out=dist)
    return torch.tensor(idx)


def fit(images: list[np.ndarray], *, settings: dict[str, Any], seed: int, progress: bool) -> Fitted:
    train, held = split_holdout(images, fraction=0.1, seed=seed)
    tile_px = int(settings["tile_px"])
    features = frozen_features(settings["backbone"], taps=TAPS)
    dim = sum(features.channels)
    net = PatchCoreNet(
        backbone=settings["backbone"],
        taps=TAPS,
        bank_size=1,
        dim=dim,
        blur_sigma_px=float(settings["blur_sigma_px"]),
    )
    net.features.load_state_dict(features.state_dict())
    net.eval()
    # Embeddings of every tile of every training image (the inference tiling, so statistics match).
    per_image = max(1, int(settings["max_patches"]) // max(1, len(train)))
    rng = np.random.default_rng(seed)
    chunks = []
    with torch.inference_mode():
        for img in tqdm(train, desc="embedding", disable=not progress, unit="img"):
            img = with_margin(img)
            plan = TilePlan.for_shape(
                height_px=img.shape[0], width_px=img.shape[1], tile_px=tile_px, overlap_px=0
            )
            e = net.embed(to_tensor(plan.tiles(img)))
            flat = e.permute(0, 2, 3, 1).reshape(-1, dim)
            take = rng.choice(flat.shape[0], size=min(per_image, flat.shape[0]), replace=False)
            chunks.append(flat[torch.from_numpy(take)])
    patches = torch.cat(chunks)
    bank_size = min(int(settings["bank_size"]), patches.shape[0])
    sel = greedy_coreset(patches, size=bank_size, seed=seed, progress=progress)
    bank = patches[sel].contiguous()
    net.bank = bank
    net.bank_sq = (bank * bank).sum(1)
    q = holdout_quantiles(lambda x: net.blur(upsample_to(net.raw_map(x), x)), held, tile_px=tile_px)
    net.norm.q.copy_(torch.from_numpy(q[0]))
    params = {
        "backbone": settings["backbone"],
        "taps": list(TAPS),
        "bank_size": int(bank.shape[0]),
        "dim": dim,
        "blur_sigma_px": float(settings["blur_sigma_px"]),
    }
    calibration = first_calibration(net, None, held, tile_px=tile_px)
    return Fitted(
        params=params,
        tensors=module_tensors(net, "net"),
        info={"patches": int(patches.shape[0]), "held_out": len(held), "calibration": calibration},
    )
