"""`aoi train`: train a model family on train/good and write a bundle."""

from __future__ import annotations

import argparse
from pathlib import Path

from appliance.cli.common import add_progress_flag
from appliance.errors import ConfigError
from pipelines.models.registry import FAMILIES


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="train a model family on good images", description=__doc__)
    p.add_argument("--model", required=True, choices=sorted(FAMILIES), help="model family")
    p.add_argument("--data", required=True, help="MVTec-layout folder; training uses DATA/train/good")
    p.add_argument("--out", required=True, help="bundle directory to write (atomically)")
    p.add_argument("--profile", default="fast", help="fast (2-core CPU, minutes) or full (GPU)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed and data give the same bundle")
    p.add_argument("--limit", type=int, default=None, help="use at most N training images (evenly spread)")
    p.add_argument("--tile", type=int, default=256, help="inference tile side (px, multiple of 32)")
    p.add_argument("--overlap", type=int, default=32, help="minimum tile overlap (px)")
    p.add_argument(
        "--modules",
        default=None,
        help="BVPN only: comma list of focus,peripheral,logical (ablation); default all",
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a profile setting"
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads for training (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    add_progress_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from pipelines.training import train_bundle

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides: dict[str, object] = {}
    for item in args.set:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} must be KEY=VALUE")
        k, v = item.split("=", 1)
        overrides[k] = v
    if args.modules is not None:
        if args.model != "bvpn":
            raise ConfigError("--modules applies to --model bvpn only")
        overrides["modules"] = [m.strip() for m in args.modules.split(",") if m.strip()]
    if args.limit is not None and args.limit < 5:
        raise ConfigError(f"--limit {args.limit}: at least 5 training images are needed")
    out = train_bundle(
        family=args.model,
        data=Path(args.data),
        out=Path(args.out),
        profile=args.profile,
        seed=args.seed,
        overrides=overrides,
        limit=args.limit,
        tile_px=args.tile,
        overlap_px=args.overlap,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(f"bundle written: {out}")
    return 0
