"""Small helpers shared by the CLI commands: paths, bundles, sizes, progress."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from appliance.errors import ConfigError


def existing_dir(value: str, *, what: str) -> Path:
    p = Path(value)
    if not p.is_dir():
        raise ConfigError(f"{what} {p} is not a directory")
    return p


def parse_size(value: str, *, option: str) -> tuple[int, int]:
    """'WxH' in px -> (width, height)."""
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise ConfigError(f"{option} {value!r} is not WIDTHxHEIGHT in px, e.g. 1913x2624") from None
    if w < 32 or h < 32:
        raise ConfigError(f"{option} {value!r}: both sides must be at least 32 px")
    return w, h


def add_mode_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mode",
        choices=("tiles", "whole", "halo", "auto"),
        default="tiles",
        help="inference mode: tiles (blended, the default), whole frame, halo tiles (the whole frame's "
        "map with bounded memory) or auto (whole if it fits in memory, else halo); whole, halo and "
        "auto give one map, tiles another: calibrate in the mode the line runs",
    )


def add_progress_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs and CI)")


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
