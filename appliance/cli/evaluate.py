"""`aoi eval`: image AUROC, pixel AUROC, AUPRO@0.3 and F1-max on a test set, as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from appliance.cli.common import add_mode_flag, add_progress_flag, existing_dir, print_json


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="metrics on an MVTec-layout test set (JSON)", description=__doc__)
    p.add_argument("--bundle", required=True, help="model bundle directory")
    p.add_argument("--data", required=True, help="MVTec-layout folder with test/ and ground_truth/")
    p.add_argument("--backend", default="auto", help="inference backend")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for inference")
    p.add_argument("--limit", type=int, default=None, help="evaluate at most N test images (evenly spread)")
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    add_mode_flag(p)
    add_progress_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipelines.bundle import load_bundle
    from pipelines.evaluation import evaluate_dataset
    from pipelines.inspector import Inspector

    root = existing_dir(args.data, what="--data")
    bundle = load_bundle(args.bundle)
    inspector = Inspector(bundle, backend=args.backend, threads=args.threads, mode=args.mode)
    result = evaluate_dataset(inspector, root, progress=not args.no_progress, limit=args.limit)
    result = {"bundle": str(bundle.path), "family": bundle.meta.family, "data": str(root), **result}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    print_json(result)
    return 0
