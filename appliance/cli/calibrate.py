"""`aoi calibrate`: thresholds from data (default), and the commissioning steps.

`aoi calibrate --bundle B --good DIR [--bad DIR]` (or `aoi calibrate threshold ...`)
sets the image and pixel thresholds in the bundle: from good images only it
aims at a target false-reject rate and says what the number of images
supports; with defective images too it picks the F1-optimal threshold (or a
cost-weighted one).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util

import numpy as np

from appliance.cli.common import add_progress_flag, existing_dir, print_json


def _threshold_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", required=True, help="model bundle directory (updated atomically)")
    p.add_argument("--good", required=True, help="folder of good images (not used in training)")
    p.add_argument("--bad", default=None, help="folder of defective images (optional): F1-optimal threshold")
    p.add_argument(
        "--target-frr", type=float, default=0.001, help="target false-reject rate (fraction, e.g. 0.001)"
    )
    p.add_argument(
        "--confidence", type=float, default=0.95, help="confidence of the stated FRR bound (fraction)"
    )
    p.add_argument(
        "--cost",
        default=None,
        metavar="FR:MISS",
        help="with --bad: cost of a false reject and of a missed defect",
    )
    p.add_argument(
        "--min-defect-area", type=int, default=None, help="blobs smaller than this never make NG (px)"
    )
    p.add_argument("--backend", default="auto", help="inference backend")
    add_progress_flag(p)
    p.set_defaults(func=run_threshold)


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="set thresholds; flat-field, scale, template, ROI", description=__doc__)
    steps = p.add_subparsers(dest="step", metavar="STEP")
    t = steps.add_parser("threshold", help="thresholds from good (and bad) images")
    _threshold_args(t)
    if importlib.util.find_spec("appliance.cli.calibration_cmds") is not None:
        importlib.import_module("appliance.cli.calibration_cmds").add_commands(steps)
    # `aoi calibrate --bundle ...` without a step means `threshold`.
    _threshold_args(p)
    for action in p._actions:
        if action.dest in ("bundle", "good"):
            action.required = False
    p.set_defaults(func=run_threshold)


def run_threshold(args: argparse.Namespace) -> int:
    from appliance.errors import ConfigError
    from calibration.threshold import threshold_cost, threshold_f1, threshold_for_frr
    from pipelines.bundle import Calibration, load_bundle, update_meta
    from pipelines.data import list_images
    from pipelines.evaluation import analyse_paths
    from pipelines.inspector import Inspector

    if not args.bundle or not args.good:
        raise ConfigError(
            "aoi calibrate needs --bundle and --good (or a step: threshold, flatfield, scale, ...)"
        )
    bundle = load_bundle(args.bundle)
    inspector = Inspector(bundle, backend=args.backend)
    good_paths = list_images(existing_dir(args.good, what="--good"))
    if not good_paths:
        raise ConfigError(f"--good {args.good} contains no images")
    progress = not args.no_progress
    good = np.array(
        [a.score for _, a in analyse_paths(inspector, good_paths, progress=progress, desc="good images")]
    )
    if args.bad:
        bad_paths = list_images(existing_dir(args.bad, what="--bad"))
        if not bad_paths:
            raise ConfigError(f"--bad {args.bad} contains no images")
        bad = np.array(
            [a.score for _, a in analyse_paths(inspector, bad_paths, progress=progress, desc="bad images")]
        )
        if args.cost:
            try:
                fr, miss = (float(x) for x in args.cost.split(":"))
            except ValueError:
                raise ConfigError(f"--cost {args.cost!r} must be FR:MISS, e.g. 1:20") from None
            result = threshold_cost(
                good, bad, cost_false_reject=fr, cost_missed_defect=miss, confidence=args.confidence
            )
        else:
            result = threshold_f1(good, bad, confidence=args.confidence)
    else:
        result = threshold_for_frr(good, target_frr=args.target_frr, confidence=args.confidence)
    old = bundle.meta.calibration
    calibration = Calibration(
        image_threshold=float(result.threshold),
        pixel_threshold=float(result.threshold),
        min_defect_area_px=args.min_defect_area
        if args.min_defect_area is not None
        else old.min_defect_area_px,
        method=result.method,
        details={**result.to_dict(), "good": str(args.good), "bad": str(args.bad) if args.bad else None},
    )
    update_meta(bundle, calibration=calibration)
    if not result.supported:
        print(f"warning: {result.message}")
    print_json(result.to_dict())
    return 0
