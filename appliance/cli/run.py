"""`aoi run --config FILE [--headless]`: the appliance on a line.

Opens the camera, the model, the outputs, the records and the image archive
that FILE configures, starts the line and the local control endpoint, and
runs until SIGTERM or SIGINT (a graceful stop: frames in flight are finished,
records flushed, exit 0). Under systemd (``Type=notify``) it reports
readiness, status and watchdog pings over ``$NOTIFY_SOCKET``; see
``systemd/README.md``. Without ``--headless`` the counters are also printed to
the terminal every `service.status_interval_s`; a GUI attaches through the
control endpoint's event stream.
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(
        name,
        help="run the appliance on a line (foreground or systemd service)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config", required=True, help="configuration file (YAML); check it with 'aoi config validate'"
    )
    p.add_argument(
        "--headless",
        action="store_true",
        help="no terminal output besides the log (for systemd); the counters go to STATUS= and the log",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from appliance.config import load_config
    from appliance.service import run_service

    config = load_config(args.config)
    return run_service(config, headless=args.headless)
