"""`aoi bench`: per-frame latency, throughput, memory and compute floor of a bundle on a backend.

The frame is synthetic (a rendered print at --frame size), so only the bundle
is needed. Prints one JSON object with --json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from appliance.cli.common import parse_size, print_json
from appliance.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(
        name, help="benchmark a bundle on a backend (latency, fps, memory)", description=__doc__
    )
    p.add_argument("--bundle", required=True, help="model bundle directory")
    p.add_argument("--backend", default="auto", help="auto, torch, onnxruntime or tensorrt (default auto)")
    p.add_argument("--frame", default="1913x2624", metavar="WxH", help="frame size in px (default 1913x2624)")
    p.add_argument(
        "--product",
        choices=("print", "paper"),
        default="print",
        help="what the synthetic frame shows: an inkjet print or package paper (default print); "
        "a network's cost does not depend on it, a global branch's (BVPN's logical module) may",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads for inference")
    p.add_argument("--runs", type=int, default=10, help="timed frames after warm-up (default 10)")
    p.add_argument("--warmup", type=int, default=1, help="untimed frames first (default 1)")
    p.add_argument(
        "--mode",
        choices=("tiles", "whole", "halo", "auto"),
        default="tiles",
        help="tiles (blended, the default), whole frame, halo tiles (the whole frame's map with bounded "
        "memory) or auto (whole if it fits in memory, else halo)",
    )
    p.add_argument(
        "--halo-core",
        type=int,
        default=1024,
        help="core side of halo tiles in px, a multiple of 32 (default 1024): smaller cores use "
        "less memory and repeat more halo",
    )
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default=None, help="backend precision")
    p.add_argument("--batch", type=int, default=8, help="tiles per inference call (default 8)")
    p.add_argument(
        "--profile", action="store_true", help="also report time per stage and per network sub-module"
    )
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count and the GEMM benchmark")
    p.add_argument(
        "--line",
        action="store_true",
        help="also run the real line (synthetic camera, queue, outputs, records, archive) and report its "
        "overhead per frame (ms) and throughput against the bare inspector",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipelines.bench import run_bench
    from pipelines.bundle import load_bundle

    width, height = parse_size(args.frame, option="--frame")
    for option, value, least in (
        ("--runs", args.runs, 1),
        ("--warmup", args.warmup, 0),
        ("--batch", args.batch, 1),
    ):
        if value < least:
            raise ConfigError(f"{option} {value}: must be at least {least}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads {args.threads}: must be at least 1")
    if args.line:
        from appliance.line_bench import run_line_bench

        line = run_line_bench(
            Path(args.bundle),
            backend=args.backend,
            threads=args.threads,
            width_px=width,
            height_px=height,
            runs=args.runs,
        )
        if args.json:
            print_json(line)
        else:
            print(
                f"line on {line['frame']}: bare inspector {line['bare_inspect_ms_median']:.0f} ms/frame; "
                f"line overhead p50 {line['line_overhead_ms_p50']:.1f} ms, "
                f"p99 {line['line_overhead_ms_p99']:.1f} ms; "
                f"{line['line_inspected_fps']} inspected fps = {line['line_fps_over_bare']:.0%} of bare"
            )
        return 0
    result = run_bench(
        load_bundle(args.bundle),
        backend=args.backend,
        width_px=width,
        height_px=height,
        threads=args.threads,
        runs=args.runs,
        warmup=args.warmup,
        mode=args.mode,
        halo_core_px=args.halo_core,
        precision=args.precision,
        batch_size=args.batch,
        profile=args.profile,
        flops=not args.no_flops,
        product=args.product,
    )
    if args.json:
        print_json(result)
        return 0
    print(
        f"{result['family']} on {result['backend']} ({result['device']}, {result['precision']}), "
        f"{result['frame']} {result['mode']}: median {result['latency_median_s'] * 1000:.0f} ms, "
        f"p99 {result['latency_p99_s'] * 1000:.0f} ms, {result['fps']:.2f} fps, "
        f"peak RSS {result['peak_rss_mib']:.0f} MiB"
    )
    if "compute_floor_s" in result:
        floor_ms = result["compute_floor_s"] * 1000
        print(
            f"{result['gflops_per_frame']:.1f} GFLOPs/frame at {result['gemm_gflops_per_s']:.0f} "
            f"GFLOP/s GEMM: floor {floor_ms:.0f} ms, latency/floor {result['latency_over_floor']:.2f}"
        )
    return 0
