"""`aoi predict`: score every image under a folder; scores.csv and full-resolution maps."""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

import numpy as np

from appliance.cli.common import add_mode_flag, add_progress_flag, existing_dir
from appliance.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="score images: OUT/scores.csv and OUT/maps/*.npy", description=__doc__)
    p.add_argument("--bundle", required=True, help="model bundle directory")
    p.add_argument("--input", required=True, help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, help="output folder: scores.csv (path,score,verdict) and maps/")
    p.add_argument("--backend", default="auto", help="inference backend (auto, torch, ...)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for inference")
    p.add_argument("--no-maps", action="store_true", help="write scores.csv only")
    p.add_argument(
        "--mm-per-px",
        type=float,
        default=None,
        help="pixel scale (mm/px); needed when the bundle sets a minimum defect area in mm^2",
    )
    add_mode_flag(p)
    add_progress_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipelines.bundle import load_bundle
    from pipelines.data import list_images
    from pipelines.evaluation import analyse_paths
    from pipelines.inspector import Inspector, decide, min_area_in_px

    root = existing_dir(args.input, what="--input")
    paths = list_images(root)
    if not paths:
        raise ConfigError(f"--input {root} contains no images (png, jpg, bmp, tif)")
    if args.mm_per_px is not None and not args.mm_per_px > 0:
        raise ConfigError(f"--mm-per-px {args.mm_per_px} must be a positive number of mm per pixel")
    inspector = Inspector(
        load_bundle(args.bundle), backend=args.backend, threads=args.threads, mode=args.mode
    )
    min_area_in_px(inspector.calibration, args.mm_per_px)  # refuse before writing anything
    out = Path(args.out)
    (out / "maps").mkdir(parents=True, exist_ok=True)
    tmp_csv = out / f".scores.csv.{os.getpid()}"
    counts = {"OK": 0, "NG": 0}
    with open(tmp_csv, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "score", "verdict"])
        for path, analysis in analyse_paths(
            inspector, paths, progress=not args.no_progress, desc="predicting"
        ):
            rel = path.relative_to(root)
            result, _ = decide(analysis, inspector.calibration, mm_per_px=args.mm_per_px)
            counts[result.value] += 1
            writer.writerow([rel.as_posix(), f"{analysis.score:.6f}", result.value])
            if not args.no_maps:
                target = out / "maps" / rel.with_suffix(".npy")
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(target.name + ".partial")
                with open(tmp, "wb") as mf:
                    np.save(mf, analysis.anomaly_map.astype(np.float32))
                os.replace(tmp, target)
    os.replace(tmp_csv, out / "scores.csv")
    print(f"{len(paths)} images: {counts['OK']} OK, {counts['NG']} NG -> {out / 'scores.csv'}")
    return 0
