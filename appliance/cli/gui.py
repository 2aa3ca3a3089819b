"""`aoi gui`: the operator station (PySide6 + pyqtgraph).

- ``aoi gui --attach [URL]``: a client of a running service (``aoi run``)
  through its control endpoint (default http://127.0.0.1:8750); the service
  owns the camera and keeps inspecting when the station closes or restarts.
  The token comes from ``--token-file``, ``$AOI_CONTROL_TOKEN``, or the
  ``control`` section of ``--config FILE``.
- ``aoi gui --config FILE``: runs the line of FILE in this process (a bench
  setup) with its control endpoint, and shows it.
- ``--kiosk``: full screen without a window frame; only an unlocked engineer
  can close it. ``--size 1920x1080`` sets the window size otherwise.
- ``aoi gui --hash-pin``: asks for an engineer PIN and prints the hash for
  ``gui.engineer_pin_hash`` (the PIN itself is never stored).
"""

from __future__ import annotations

import argparse
import getpass
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.cli.common import parse_size
from appliance.errors import ConfigError

if TYPE_CHECKING:
    from appliance.config import AppConfig
    from appliance.gui.settings import GuiSettings
    from appliance.gui.stream import Source

DEFAULT_URL = "http://127.0.0.1:8750"


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(
        name,
        help="the operator station: attach to a running service or run a line in-process",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--attach",
        nargs="?",
        const="",
        default=None,
        metavar="URL",
        help=f"attach to a running service's control endpoint (default {DEFAULT_URL}, or the "
        "control section of --config)",
    )
    p.add_argument("--config", help="configuration file (YAML): the line to run, or with --attach the token")
    p.add_argument("--token-file", help="file holding the control endpoint's bearer token (with --attach)")
    p.add_argument("--kiosk", action="store_true", help="full screen, no window frame (gui.kiosk)")
    p.add_argument("--size", metavar="WxH", help="window size in px, e.g. 1280x800 or 1920x1080")
    p.add_argument("--hash-pin", action="store_true", help="print the hash of an engineer PIN and exit")
    p.set_defaults(func=run)


def hash_pin_command() -> int:
    from appliance.gui.pin import hash_pin

    if sys.stdin.isatty():
        pin = getpass.getpass("engineer PIN (4+ digits): ")
        if getpass.getpass("again: ") != pin:
            raise ConfigError("the two PINs differ; run 'aoi gui --hash-pin' again")
    else:
        pin = sys.stdin.readline().strip()
    try:
        print(hash_pin(pin))
    except ValueError as exc:
        raise ConfigError(f"engineer PIN: {exc}") from None
    print("put it in the configuration as   gui: {engineer_pin_hash: '<the line above>'}", file=sys.stderr)
    return 0


def _attach_token(args: argparse.Namespace, config: AppConfig | None) -> str:
    from appliance.gui.stream import read_token

    if args.token_file:
        return read_token(token=None, token_file=Path(args.token_file))
    if os.environ.get("AOI_CONTROL_TOKEN"):
        return read_token(token=os.environ["AOI_CONTROL_TOKEN"], token_file=None)
    if config is not None:
        control = config.control
        if control.token:
            return control.token
        return read_token(token=None, token_file=config.in_data_dir(control.token_file))
    raise ConfigError("no control token: pass --token-file FILE, set AOI_CONTROL_TOKEN, or --config FILE")


def _gui_settings(args: argparse.Namespace, config: AppConfig | None) -> GuiSettings:
    from appliance.gui.settings import GuiSettings

    settings = config.gui.model_copy() if config is not None else GuiSettings()
    if args.kiosk:
        settings.kiosk = True
    if args.size:
        width, height = parse_size(args.size, option="--size")
        try:
            settings.width_px, settings.height_px = width, height
        except ValueError as exc:
            raise ConfigError(f"--size {args.size}: at least 800x480 px ({exc.__class__.__name__})") from None
    return settings


def run(args: argparse.Namespace) -> int:
    if args.hash_pin:
        return hash_pin_command()
    from appliance.config import load_config
    from appliance.gui import require_qt

    if args.attach is None and not args.config:
        raise ConfigError("say which line: --attach [URL] (a running service) or --config FILE (in-process)")
    require_qt()
    config = load_config(args.config) if args.config else None
    settings = _gui_settings(args, config)
    if args.attach is not None:
        from appliance.gui.stream import HttpSource

        url = args.attach
        if not url:
            url = DEFAULT_URL if config is None else f"http://{config.control.host}:{config.control.port}"
        source = HttpSource(
            url, token=_attach_token(args, config), status_interval_s=settings.status_interval_s
        )
        return show(source, settings)
    assert config is not None
    return run_in_process(config, settings)


def run_in_process(config: AppConfig, settings: GuiSettings) -> int:
    """Open and start the line of `config` with its control endpoint, show it, stop it on close."""
    from appliance.control import ControlServer
    from appliance.gui.stream import LineSource
    from appliance.line import open_line

    line = open_line(config)
    control = None
    try:
        line.start()
        if config.control.enabled:
            control = ControlServer(line, config.control, data_dir=config.data_dir)
            control.start()
        return show(LineSource(line, status_interval_s=settings.status_interval_s), settings)
    finally:
        if control is not None:
            control.stop()
        line.stop()


def show(source: Source, settings: GuiSettings) -> int:
    """Run the Qt event loop with a station window for `source` until it closes (or SIGINT/SIGTERM)."""
    from PySide6 import QtCore, QtWidgets

    from appliance.gui.window import StationWindow

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    window = StationWindow(source, settings)
    previous = {}

    def stop(signum: int, frame: object) -> None:
        window._allow_close = True
        window.close()

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, stop)
    # Python runs signal handlers only between byte codes: wake the interpreter now and then.
    wake = QtCore.QTimer()
    wake.timeout.connect(lambda: None)
    wake.start(250)
    try:
        if settings.kiosk:
            window.showFullScreen()
        else:
            window.show()
        app.exec()
    finally:
        wake.stop()
        window.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
