"""`aoi demo`: the appliance on embedded defaults, nothing to set up.

Writes a synthetic inkjet-print dataset, trains BVPN with the fast profile
(cached under ~/.cache/aoi unless --fresh), calibrates it on held-out good
images and evaluates it, printing the metrics.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from appliance.cli.common import add_progress_flag, print_json


def _cache_dir() -> Path:
    return Path(os.environ.get("AOI_CACHE", Path.home() / ".cache" / "aoi"))


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="run the whole appliance on embedded defaults", description=__doc__)
    p.add_argument("--workdir", default=None, help="where data and the bundle go (default ~/.cache/aoi/demo)")
    p.add_argument("--fresh", action="store_true", help="ignore a cached bundle and retrain")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    add_progress_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from calibration.threshold import threshold_for_frr
    from pipelines.bundle import Calibration, load_bundle, update_meta
    from pipelines.datasets.synth import write_mvtec_dataset
    from pipelines.evaluation import evaluate_dataset
    from pipelines.inspector import Inspector
    from pipelines.training import train_bundle

    work = Path(args.workdir) if args.workdir else _cache_dir() / "demo"
    work.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    data = work / "print-256"
    if not (data / "train" / "good").is_dir():
        write_mvtec_dataset(
            data,
            product="print",
            width_px=256,
            height_px=256,
            n_train=200,
            n_test_good=60,
            n_test_per_defect=10,
            defects=[
                "scratch",
                "spot",
                "ink_streak",
                "smudge",
                "missing",
                "extra",
                "wrong_colour",
                "shifted",
            ],
            seed=7,
            progress=progress,
        )
    calib_good = work / "print-256-calib"
    if not (calib_good / "train" / "good").is_dir():
        write_mvtec_dataset(
            calib_good,
            product="print",
            width_px=256,
            height_px=256,
            n_train=300,
            n_test_good=1,
            n_test_per_defect=0,
            defects=[],
            seed=8,
            progress=progress,
        )
    bundle_dir = work / "bvpn.bundle"
    if args.fresh or not (bundle_dir / "bundle.yaml").is_file():
        train_bundle(
            family="bvpn",
            data=data,
            out=bundle_dir,
            profile="fast",
            seed=0,
            overwrite=True,
            progress=progress,
        )
        bundle = load_bundle(bundle_dir)
        inspector = Inspector(bundle)
        import numpy as np

        from pipelines.data import list_images
        from pipelines.evaluation import analyse_paths

        paths = list_images(calib_good / "train" / "good")
        scores = np.array(
            [a.score for _, a in analyse_paths(inspector, paths, progress=progress, desc="calibrating")]
        )
        result = threshold_for_frr(scores, target_frr=0.01)
        update_meta(
            bundle,
            calibration=Calibration(
                image_threshold=result.threshold,
                pixel_threshold=result.threshold,
                method=result.method,
                details=result.to_dict(),
            ),
        )
    bundle = load_bundle(bundle_dir)
    metrics = evaluate_dataset(Inspector(bundle), data, progress=progress)
    summary = {
        "bundle": str(bundle_dir),
        "data": str(data),
        "training_s": bundle.meta.training.get("duration_s"),
        **metrics,
    }
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        print_json(summary)
    return 0
