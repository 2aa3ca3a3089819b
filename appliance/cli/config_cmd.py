"""`aoi config validate FILE`: check a configuration without starting anything."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="check configuration files", description=__doc__)
    steps = p.add_subparsers(dest="action", metavar="ACTION")
    steps.required = True
    v = steps.add_parser("validate", help="validate a YAML configuration file; exit 0 if it is valid")
    v.add_argument("file", help="configuration file (YAML)")
    v.set_defaults(func=run_validate)


def run_validate(args: argparse.Namespace) -> int:
    from appliance.config import load_config

    cfg = load_config(args.file)
    outputs = ", ".join(o.type for o in cfg.outputs) or "none"
    print(
        f"{args.file}: valid (camera {cfg.camera.type}, backend {cfg.inspection.backend}, outputs {outputs})"
    )
    return 0
