"""`aoi records`: export and summarise the appliance's records database.

- ``aoi records export --db FILE --since 8h [--until ...] [--table verdicts|alarms|actions]
  [--format csv|jsonl] [--out FILE]`` writes the rows of a time range, oldest
  first, to stdout or a file (written to a temporary and moved into place, so
  a half-written export never looks complete).
- ``aoi records summary --db FILE [--since ...] [--until ...]`` prints the
  verdict counts (total, OK, NG, UNINSPECTED) and the active alarms as JSON.

Times are ISO 8601 (``2026-11-23T08:00``; without an offset it is the
appliance's local time) or a duration back from now (``90s``, ``30m``, ``8h``,
``2d``, ``1w``). Exported times are ISO 8601 local times with their offset.
The database is opened read-only, so both commands are safe on a running line.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import json
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from appliance.errors import RecordsError
from appliance.records import RecordsReader, iso_time

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)\s*$", re.IGNORECASE)
_UNIT_S = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}

# Columns per table, in export order; time columns are written as ISO 8601.
_COLUMNS: dict[str, tuple[str, ...]] = {
    "verdicts": (
        "id",
        "frame_id",
        "part_id",
        "acquired_at",
        "decided_at",
        "verdict",
        "score",
        "defects",
        "latency_ms",
        "bundle_id",
        "bundle_version",
        "recipe",
        "reason",
        "image_path",
        "heatmap_path",
    ),
    "alarms": (
        "id",
        "source",
        "severity",
        "message",
        "raised_at",
        "cleared_at",
        "acknowledged_at",
        "acknowledged_by",
    ),
    "actions": ("id", "time", "user", "role", "action", "details"),
}
_TIME_COLUMNS = {"acquired_at", "decided_at", "raised_at", "cleared_at", "acknowledged_at", "time"}


def parse_time(text: str, *, option: str, now_s: float | None = None) -> float:
    """Unix seconds from an ISO 8601 time (naive: local) or a duration back from now (8h)."""
    now = time.time() if now_s is None else now_s
    match = _DURATION.match(text)
    if match:
        return now - float(match.group(1)) * _UNIT_S[match.group(2).lower()]
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise RecordsError(
            f"{option} {text!r} is neither an ISO time (2026-11-23T08:00) nor a duration back "
            "from now (90s, 30m, 8h, 2d, 1w)"
        ) from None
    return moment.timestamp()


def add_parser(subparsers: Any, name: str) -> argparse.ArgumentParser:
    """Add `aoi <name> export|summary` to the CLI."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help="export or summarise the records (verdicts, alarms, operator actions)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    sub = parser.add_subparsers(dest="records_command", metavar="ACTION")
    sub.required = True
    time_help = "ISO 8601 time (local unless it has an offset) or a duration back from now: 90s, 30m, 8h, 2d"

    export = sub.add_parser("export", help="write the records of a time range as CSV or JSON lines")
    export.add_argument("--db", type=Path, required=True, help="records database file (records.path)")
    export.add_argument("--since", required=True, help=f"start of the range, included; {time_help}")
    export.add_argument("--until", help="end of the range, excluded (default: now); same forms as --since")
    export.add_argument("--table", choices=tuple(_COLUMNS), default="verdicts", help="what to export")
    export.add_argument("--format", choices=("csv", "jsonl"), default="csv", help="output format")
    export.add_argument("--out", type=Path, help="output file (default: stdout)")
    export.set_defaults(func=run)

    summary = sub.add_parser("summary", help="print verdict counts and active alarms as JSON")
    summary.add_argument("--db", type=Path, required=True, help="records database file (records.path)")
    summary.add_argument("--since", help=f"start of the range (default: all records); {time_help}")
    summary.add_argument("--until", help="end of the range, excluded (default: now)")
    summary.set_defaults(func=run)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run `aoi records export` or `aoi records summary`."""
    now = time.time()
    since = None if args.since is None else parse_time(args.since, option="--since", now_s=now)
    until = None if args.until is None else parse_time(args.until, option="--until", now_s=now)
    if since is not None and until is not None and until <= since:
        raise RecordsError(f"--until {args.until!r} is not after --since {args.since!r}; swap or widen them")
    reader = RecordsReader(args.db)
    if args.records_command == "export":
        rows = _rows(reader, args.table, since=since, until=until)
        with _output(args.out) as out:
            n = _write(rows, out, table=args.table, fmt=args.format)
        if args.out is not None:
            print(f"{n} {args.table} written to {args.out}", file=sys.stderr)
        return 0
    counts = reader.counts(since=since, until=until)
    active = reader.alarms(active_only=True, limit=None)
    summary = {
        "db": str(args.db),
        "since": iso_time(since),
        "until": iso_time(until),
        **counts,
        "reject_rate": (counts["ng"] + counts["uninspected"]) / counts["total"] if counts["total"] else None,
        "active_alarms": [
            {"id": a.id, "source": a.source, "severity": a.severity, "message": a.message} for a in active
        ],
    }
    print(json.dumps(summary, indent=2))
    return 0


def _rows(reader: RecordsReader, table: str, *, since: float | None, until: float | None) -> Iterator[dict]:
    if table == "verdicts":
        yield from (v.to_dict() for v in reader.iter_verdicts(since=since, until=until))
    elif table == "alarms":
        yield from (a.to_dict() for a in reversed(reader.alarms(since=since, until=until, limit=None)))
    else:
        yield from (a.to_dict() for a in reversed(reader.actions(since=since, until=until, limit=None)))


@contextlib.contextmanager
def _output(path: Path | None) -> Iterator[IO[str]]:
    """stdout, or a temporary beside `path` that replaces it only when the export is complete."""
    if path is None:
        yield sys.stdout
        return
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8", newline="") as file:
            yield file
        os.replace(tmp, path)
    except OSError as exc:
        raise RecordsError(f"export file {path} cannot be written ({exc}); check --out") from exc
    finally:
        tmp.unlink(missing_ok=True)


def _write(rows: Iterable[dict], out: IO[str], *, table: str, fmt: str) -> int:
    columns = _COLUMNS[table]
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n") if fmt == "csv" else None
    if writer is not None:
        writer.writeheader()
    n = 0
    for row in rows:
        record = {c: (iso_time(row[c]) if c in _TIME_COLUMNS else row[c]) for c in columns}
        if writer is not None:
            for key in ("defects", "details"):
                if key in record:
                    record[key] = json.dumps(record[key], separators=(",", ":"))
            writer.writerow(record)
        else:
            out.write(json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n")
        n += 1
    return n
