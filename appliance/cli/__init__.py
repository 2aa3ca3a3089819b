"""The `aoi` command line: one sub-command per module, listed in `COMMANDS`.

Each command module exposes `add_parser(subparsers)` and `run(args) -> int`.
An `ApplianceError` (a mistake a person can fix) becomes one line on stderr
and a non-zero exit; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from drivers.errors import ApplianceError

# name -> module under appliance.cli; explicit, so nothing depends on import order.
COMMANDS: dict[str, str] = {
    "synth": "appliance.cli.synth",
    "train": "appliance.cli.train",
    "calibrate": "appliance.cli.calibrate",
    "predict": "appliance.cli.predict",
    "eval": "appliance.cli.evaluate",
    "export": "appliance.cli.export",
    "bench": "appliance.cli.bench",
    "config": "appliance.cli.config_cmd",
    "records": "appliance.cli.records_cmd",
    "run": "appliance.cli.run",
    "demo": "appliance.cli.demo",
    "gui": "appliance.cli.gui",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aoi",
        description="Automated optical inspection appliance: train, calibrate and run "
        "unsupervised anomaly detection on camera lines.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        module.add_parser(sub, name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except ApplianceError as exc:
        print(f"aoi {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"aoi {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
