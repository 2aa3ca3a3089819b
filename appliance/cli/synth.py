"""`aoi synth`: write a synthetic dataset (MVTec layout) or line recording, with masks.

Package paper or inkjet prints with structural defects (scratch, spot, hole,
crease, ink_streak, smudge) and, for prints, logical ones (missing, extra,
wrong_colour, shifted). The same seed always gives the same images.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from appliance.cli.common import add_progress_flag, parse_size
from appliance.errors import ConfigError
from drivers.camera.scene import LOGICAL_DEFECTS, PRODUCTS, STRUCTURAL_DEFECTS, allowed_defects

LAYOUTS = ("mvtec", "recording")
DEFAULT_SIZE = {"mvtec": "256x256", "recording": "1913x2624"}
# Options that belong to one layout, with their defaults; given for the other
# layout they are a mistake worth saying.
MVTEC_OPTIONS = {"train": 200, "test_good": 50, "test_per_defect": 20}
RECORDING_OPTIONS: dict[str, Any] = {"frames": 100, "defect_rate": 0.1}
_MIN_SIDE_PX, _MAX_SIDE_PX = 64, 16384


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    """Register `aoi synth` and its options."""
    p = subparsers.add_parser(
        name,
        help="write a synthetic dataset or line recording (package paper, inkjet prints) with masks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder; must not exist or be empty")
    p.add_argument(
        "--product",
        default="print",
        metavar="NAME",
        help=f"product to render: {' or '.join(PRODUCTS)} (package paper, inkjet print); default print",
    )
    p.add_argument(
        "--layout",
        default="mvtec",
        metavar="NAME",
        help="mvtec: train/good, test/<defect>, ground_truth/ for training and eval; "
        "recording: frames/, masks/, truth.csv for replay on a line; default mvtec",
    )
    p.add_argument(
        "--size",
        default=None,
        metavar="WxH",
        help="frame width x height in pixels, each 64 to 16384; "
        "default 256x256 (mvtec), 1913x2624 (recording)",
    )
    p.add_argument(
        "--train", type=int, default=None, metavar="N", help="mvtec: good training images; default 200"
    )
    p.add_argument(
        "--test-good", type=int, default=None, metavar="N", help="mvtec: good test images; default 50"
    )
    p.add_argument(
        "--test-per-defect",
        type=int,
        default=None,
        metavar="N",
        help="mvtec: test images (with masks) per defect kind; default 20",
    )
    p.add_argument(
        "--frames", type=int, default=None, metavar="N", help="recording: frames (parts); default 100"
    )
    p.add_argument(
        "--defect-rate",
        type=float,
        default=None,
        metavar="FRACTION",
        help="recording: probability that a part is defective, 0 to 1; default 0.1",
    )
    p.add_argument(
        "--defects",
        default=None,
        metavar="LIST",
        help=f"comma list of defect kinds; default all the product allows: structural "
        f"({','.join(STRUCTURAL_DEFECTS)}) for paper, plus logical ({','.join(LOGICAL_DEFECTS)}) for print",
    )
    p.add_argument(
        "--seed", type=int, default=0, metavar="INT", help="seed of the product design and parts; default 0"
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder (atomically)")
    add_progress_flag(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Validate the options, write the dataset or recording, print a summary line."""
    from pipelines.datasets.synth import write_line_recording, write_mvtec_dataset

    if args.layout not in LAYOUTS:
        raise ConfigError(f"--layout {args.layout!r} is unknown: use one of {', '.join(LAYOUTS)}")
    if args.product not in PRODUCTS:
        raise ConfigError(f"--product {args.product!r} is unknown: use one of {', '.join(PRODUCTS)}")
    width_px, height_px = _size(args.size if args.size is not None else DEFAULT_SIZE[args.layout])
    defects = _defects(args.defects, args.product)
    own, other = (
        (MVTEC_OPTIONS, RECORDING_OPTIONS) if args.layout == "mvtec" else (RECORDING_OPTIONS, MVTEC_OPTIONS)
    )
    for key in other:
        if getattr(args, key) is not None:
            flag = "--" + key.replace("_", "-")
            raise ConfigError(
                f"{flag} applies to --layout {'recording' if args.layout == 'mvtec' else 'mvtec'} only"
            )
    values = {
        key: (default if getattr(args, key) is None else getattr(args, key)) for key, default in own.items()
    }
    for key in ("train", "test_good", "test_per_defect", "frames"):
        if key in values and values[key] < 0:
            raise ConfigError(f"--{key.replace('_', '-')} {values[key]}: must be 0 or more")
    common = {
        "product": args.product,
        "width_px": width_px,
        "height_px": height_px,
        "defects": defects,
        "seed": args.seed,
        "progress": not args.no_progress,
        "overwrite": args.overwrite,
    }
    out = Path(args.out)
    if args.layout == "mvtec":
        summary = write_mvtec_dataset(
            out,
            n_train=values["train"],
            n_test_good=values["test_good"],
            n_test_per_defect=values["test_per_defect"],
            **common,
        )
    else:
        rate = float(values["defect_rate"])
        if not 0.0 <= rate <= 1.0:
            raise ConfigError(f"--defect-rate {rate}: must be a fraction from 0 to 1")
        if values["frames"] == 0:
            raise ConfigError("--frames 0: a recording needs at least one frame")
        summary = write_line_recording(out, n_frames=values["frames"], defect_rate=rate, **common)
    counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items() if v) or "nothing"
    print(
        f"wrote {summary['images']} {args.product} images ({width_px}x{height_px} px, seed {args.seed}) "
        f"to {out} in {summary['seconds']:.1f} s: {counts}"
    )
    return 0


def _size(text: str) -> tuple[int, int]:
    width_px, height_px = parse_size(text, option="--size")
    if not (_MIN_SIDE_PX <= width_px <= _MAX_SIDE_PX and _MIN_SIDE_PX <= height_px <= _MAX_SIDE_PX):
        raise ConfigError(f"--size {text!r}: each side must be {_MIN_SIDE_PX} to {_MAX_SIDE_PX} px")
    return width_px, height_px


def _defects(text: str | None, product: str) -> list[str]:
    allowed = allowed_defects(product)
    if text is None:
        return list(allowed)
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    if not kinds:
        raise ConfigError(f"--defects {text!r} lists no defect: use any of {','.join(allowed)}")
    for kind in kinds:
        if kind in allowed:
            continue
        if kind in LOGICAL_DEFECTS:
            raise ConfigError(
                f"--defects: {kind!r} is a logical (layout) defect and needs --product print; "
                f"for {product} use any of {','.join(allowed)}"
            )
        raise ConfigError(f"--defects: unknown defect {kind!r} for {product}: use any of {','.join(allowed)}")
    if len(set(kinds)) != len(kinds):
        raise ConfigError(f"--defects {text!r} names a defect twice")
    return kinds
