"""`aoi calibrate`: thresholds from data (default), and the commissioning steps.

`aoi calibrate --bundle B --good DIR [--bad DIR [--masks DIR]]` (or
`aoi calibrate threshold ...`) sets the image and pixel thresholds in the
bundle. Image threshold: from good images only it aims at a target
false-reject rate and says what the number of images supports; with defective
images too it picks the F1-optimal threshold (or a cost-weighted one). Pixel
threshold (what makes up a defect's blob, box and area): with ground-truth
masks of the defective images the best pixel F1, else the level that
`--pixel-fpr` of good pixels exceed; never above the image threshold, so every
NG part shows where. A minimum defect area (px or mm^2) keeps smaller blobs
from making a part NG. Near the frame's edge, where good pixels can run
hotter than inside, the tile map is scaled down band by band to the interior's
level first (edge gains, `pipelines/edges.py`; `--no-edge-gains` turns it off).
The image score can also count a surface score, the tile map's mean inside the
edge bands put on the image score's scale (`--surface on|off|auto`): it
catches a part whose whole surface departs from the good ones (rougher,
duller, another finish) where no one place stands out. With `--bad` both are
weighed (image AUROC): the gains are kept only where they separate the good
from the defective images at least as well as leaving them out, and the
surface score (`auto`, the default) only where it separates them better. A
line whose defective parts differ at the frame's edge, or all over, loses by
the gains; one with small local defects loses by the surface score, which
also fires on good parts whose surface the calibration's good images did not
show (`edge_gains_kept`, `surface_kept`, `weighed_options` in the output).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
from pathlib import Path

import numpy as np

from appliance.cli.common import add_mode_flag, add_progress_flag, existing_dir, print_json
from appliance.errors import ConfigError


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
        "--masks",
        default=None,
        help="with --bad: folder of their ground-truth masks (STEM.png or STEM_mask.png, >0 = defect) "
        "for a pixel threshold with the best pixel F1",
    )
    p.add_argument(
        "--pixel-fpr",
        type=float,
        default=0.001,
        help="without --masks: share of good pixels allowed above the pixel threshold (fraction, "
        "default 0.001)",
    )
    p.add_argument(
        "--min-defect-area", type=int, default=None, help="blobs smaller than this never make NG (px)"
    )
    p.add_argument(
        "--min-defect-area-mm2",
        type=float,
        default=None,
        help="blobs smaller than this never make NG (mm^2; the line converts it with its pixel scale)",
    )
    p.add_argument(
        "--no-edge-gains",
        action="store_true",
        help="do not scale the map near the frame's edge (by default, bands of distance from the edge "
        "whose good pixels run hotter than the interior's are scaled down to it: pipelines/edges.py)",
    )
    p.add_argument(
        "--surface",
        choices=("auto", "on", "off"),
        default="auto",
        help="the surface score, the map's mean inside the edge bands on the image score's scale, in "
        "the image score: for parts whose whole surface departs from good ones (rougher, duller, "
        "another finish). auto (default): only with --bad, and only if it separates good from "
        "defective better; on: always (needs 20 good images); off: never",
    )
    p.add_argument("--backend", default="auto", help="inference backend")
    add_mode_flag(p)
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
    from calibration.threshold import (
        BadImages,
        GoodImages,
        pixel_threshold_f1,
        pixel_threshold_for_fpr,
        threshold_cost,
        threshold_f1,
        threshold_for_frr,
    )
    from pipelines.bundle import Calibration, load_bundle, update_meta
    from pipelines.data import list_images
    from pipelines.evaluation import analyse_paths
    from pipelines.inspector import Inspector, map_kind

    if not args.bundle or not args.good:
        raise ConfigError(
            "aoi calibrate needs --bundle and --good (or a step: threshold, flatfield, scale, ...)"
        )
    if args.masks and not args.bad:
        raise ConfigError("--masks are the masks of the --bad images: give --bad too")
    if not (0.0 < args.pixel_fpr < 1.0):
        raise ConfigError(f"--pixel-fpr {args.pixel_fpr} must be a fraction between 0 and 1, e.g. 0.001")
    for flag, value in (
        ("--min-defect-area", args.min_defect_area),
        ("--min-defect-area-mm2", args.min_defect_area_mm2),
    ):
        if value is not None and not value >= 0:
            raise ConfigError(f"{flag} {value} must be zero or a positive area")
    bundle = load_bundle(args.bundle)
    inspector = Inspector(bundle, backend=args.backend, mode=args.mode, check_calibration_mode=False)
    good_paths = list_images(existing_dir(args.good, what="--good"))
    if not good_paths:
        raise ConfigError(f"--good {args.good} contains no images")
    bad_paths = []
    mask_paths = []
    if args.bad:
        bad_paths = list_images(existing_dir(args.bad, what="--bad"))
        if not bad_paths:
            raise ConfigError(f"--bad {args.bad} contains no images")
        if args.masks:
            masks_dir = existing_dir(args.masks, what="--masks")
            mask_paths = [_mask_for(masks_dir, path) for path in bad_paths]
    progress = not args.no_progress
    # The good (and bad) images are measured without edge gains, without the surface score and
    # with a whole-image branch (BVPN's logical module and statistics) unaligned. The edge gains
    # (`pipelines.edges`) are fitted on the good ones, the branch is aligned with the scaled tile
    # map's tail (`align_branches`) and the surface score with both (`align_surface`); with
    # defective images, the gains and the surface score are kept only where they separate good
    # from bad at least as well as none. Image scores and sampled map pixels are re-computed with
    # all of it (`Fusion`), exactly as the inspector will see them.
    inspector.analyser.measure_raw()
    goods = GoodImages(edges=not args.no_edge_gains, surface=args.surface)
    for _, a in analyse_paths(inspector, good_paths, progress=progress, desc="good images"):
        goods.add(a)
    bads = BadImages(bands_px=goods.bands_px)
    weighed: dict[str, object] = {}
    if args.bad:  # measured like the good images; with them, the gains and the surface are weighed
        for i, (_, a) in enumerate(analyse_paths(inspector, bad_paths, progress=progress, desc="bad images")):
            bads.add(a, _read_mask(mask_paths[i]) if mask_paths else None)
        weighed = goods.weigh(bads, target_frr=args.target_frr)
    fusion = goods.fusion(target_frr=args.target_frr)
    good = fusion.scores(goods)
    if args.bad:
        bad = fusion.scores(bads)
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
    good_values = goods.pixel_values(fusion)
    if mask_paths:
        values = np.concatenate([*good_values, *bads.pixels.values(fusion.alignment, fusion.edge_gains)])
        labels = np.concatenate([np.zeros(sum(v.size for v in good_values), bool), *bads.pixels.labels()])
        pixel, pixel_f1 = pixel_threshold_f1(values, labels)
        pixel_how = {"pixel_method": "pixel_f1", "pixel_f1": pixel_f1}
    else:
        pixel = pixel_threshold_for_fpr(np.concatenate(good_values), target_fpr=args.pixel_fpr)
        pixel_how = {"pixel_method": "pixel_fpr", "pixel_fpr": args.pixel_fpr}
    pixel_how["pixel_capped_at_image_threshold"] = bool(pixel > result.threshold)
    pixel = min(pixel, float(result.threshold))
    old = bundle.meta.calibration
    calibration = Calibration(
        image_threshold=float(result.threshold),
        pixel_threshold=float(pixel),
        min_defect_area_px=args.min_defect_area
        if args.min_defect_area is not None
        else old.min_defect_area_px,
        min_defect_area_mm2=args.min_defect_area_mm2
        if args.min_defect_area_mm2 is not None
        else old.min_defect_area_mm2,
        **fusion.calibration_fields(),
        edge_bands_px=list(goods.bands_px),
        inference_mode=map_kind(args.mode),
        method=result.method,
        details={
            **result.to_dict(),
            **pixel_how,
            **fusion.details(),
            **goods.edge_details(),
            "good": str(args.good),
            "bad": str(args.bad) if args.bad else None,
            "masks": str(args.masks) if args.masks else None,
        },
    )
    update_meta(bundle, calibration=calibration)
    if not result.supported:
        print(f"warning: {result.message}")
    print_json(
        {
            **result.to_dict(),
            "pixel_threshold": calibration.pixel_threshold,
            **pixel_how,
            "min_defect_area_px": calibration.min_defect_area_px,
            "min_defect_area_mm2": calibration.min_defect_area_mm2,
            "global_gain": calibration.global_gain,
            "edge_gains": calibration.edge_gains,
            "surface_gain": calibration.surface_gain,
            "surface_offset": calibration.surface_offset,
            **weighed,
        }
    )
    return 0


def _mask_for(masks_dir: Path, image: Path) -> Path:
    """The ground-truth mask of `image` in `masks_dir`: STEM_mask.png or STEM.png (MVTec names both ways)."""
    for name in (f"{image.stem}_mask.png", f"{image.stem}.png"):
        if (masks_dir / name).is_file():
            return masks_dir / name
    raise ConfigError(
        f"--masks {masks_dir} has no mask for {image.name} ({image.stem}_mask.png or {image.stem}.png): "
        f"give the masks of exactly the --bad images"
    )


def _read_mask(path: Path) -> np.ndarray:
    import cv2

    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ConfigError(
            f"mask {path} is not a readable image: give 8-bit PNG masks (0 = good, >0 = defect)"
        )
    return mask
