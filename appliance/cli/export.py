"""`aoi export`: write the bundle's ONNX graph (fp32, fp16 or int8 Q/DQ) or build its TensorRT engine.

The result goes into the bundle (`model*.onnx`, `engines/*.engine`) and is
recorded in `bundle.yaml` under `exports` with opset, exporter and versions.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from appliance.cli.common import existing_dir, parse_size, print_json


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="export the model to ONNX or a TensorRT engine", description=__doc__)
    p.add_argument("--bundle", required=True, help="model bundle directory")
    p.add_argument("--format", required=True, choices=("onnx", "tensorrt"), help="what to write")
    p.add_argument(
        "--precision",
        choices=("fp32", "fp16", "int8"),
        default=None,
        help="onnx: fp32 (default), fp16, int8 (Q/DQ, needs --calib); tensorrt: fp16 (default), fp32, int8",
    )
    p.add_argument("--calib", default=None, help="folder of good images for int8 calibration")
    p.add_argument(
        "--batch", type=int, default=8, help="tensorrt: tiles per call the engine is optimised for"
    )
    p.add_argument(
        "--frame",
        action="append",
        default=[],
        metavar="WxH",
        help="tensorrt: also build a whole-frame profile for this frame size in px (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print the recorded export entry as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from appliance.errors import ConfigError
    from pipelines.bundle import load_bundle
    from pipelines.export import EXPORT_KEYS, export_engine, export_onnx
    from pipelines.inference import TiledAnalyser

    bundle = load_bundle(args.bundle)
    calib = existing_dir(args.calib, what="--calib") if args.calib else None
    if args.batch < 1:
        raise ConfigError(f"--batch {args.batch}: must be at least 1")
    if args.format == "onnx":
        precision = args.precision or "fp32"
        bundle = export_onnx(bundle, precision=precision, calib_dir=calib)
        entry = bundle.meta.exports[EXPORT_KEYS[precision]]
        where = Path(bundle.path) / entry["file"]
    else:
        precision = args.precision or "fp16"
        shaper = TiledAnalyser(
            lambda x: x,
            tile_px=bundle.meta.tiles.tile_px,
            overlap_px=bundle.meta.tiles.overlap_px,
            margin_px=bundle.meta.tiles.margin_px,
        )
        frames = []
        for value in args.frame:
            w, h = parse_size(value, option="--frame")
            frames.append(shaper.whole_shape(h, w))
        bundle, where = export_engine(
            bundle, precision=precision, batch_size=args.batch, frames_hw=tuple(frames), calib_dir=calib
        )
        entry = bundle.meta.exports["tensorrt"][where.name]
    if args.json:
        print_json({"path": str(where), **entry})
    else:
        print(f"{args.format} {precision} -> {where}")
    return 0
