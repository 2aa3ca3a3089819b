"""Render the operator station offscreen from a real (short) demo line run, into docs/screenshots/.

The demo line of `aoi demo` (the calibrated BVPN demo bundle, trained and
cached on first use under $AOI_CACHE/demo or --workdir, the synthetic print
camera, a Modbus PLC simulator on 127.0.0.1) runs in this process with the
station attached as it is with `aoi gui --config`. After --parts parts the
main screen and the NG inspection screen are saved at 1280x800 and 1920x1080:

    docs/screenshots/station-main-1280x800.png
    docs/screenshots/station-inspect-1280x800.png
    docs/screenshots/station-main-1920x1080.png
    docs/screenshots/station-inspect-1920x1080.png

Run: QT_QPA_PLATFORM=offscreen python scripts/render_screenshots.py [--workdir DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIZES = ((1280, 800), (1920, 1080))
MM_PER_PX = 0.1  # a nominal pixel scale so the defect boxes are labelled in mm, as on a calibrated line


def settle(app: Any, *, until: Callable[[], bool] | None = None, timeout_s: float = 5.0) -> None:
    """Let Qt process events for a moment, or until `until()` holds."""
    deadline = time.monotonic() + (timeout_s if until is not None else 0.3)
    while time.monotonic() < deadline:
        app.processEvents()
        if until is not None and until():
            break
        time.sleep(0.02)
    app.processEvents()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", default=None, help="demo bundle cache (default $AOI_CACHE/demo)")
    parser.add_argument("--parts", type=int, default=48, help="parts to run before the screenshots")
    parser.add_argument("--rate-hz", type=float, default=4.0, help="parts per second (default 4)")
    parser.add_argument("--out", default="docs/screenshots", help="folder for the PNGs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from PySide6 import QtWidgets

    from appliance.cli import demo
    from appliance.gui.pin import hash_pin
    from appliance.gui.settings import GuiSettings
    from appliance.gui.stream import LineSource
    from appliance.gui.window import StationWindow
    from appliance.line import open_line
    from drivers.io.simulators import ModbusPlcSimulator, free_port

    work = Path(args.workdir) if args.workdir else demo._cache_dir() / "demo"
    work.mkdir(parents=True, exist_ok=True)
    bundle_dir, _ = demo._bundle(work, fresh=False, progress=False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    with tempfile.TemporaryDirectory(prefix="aoi-screens-") as tmp:
        port = free_port()
        config = demo._line_config(
            bundle_dir=bundle_dir,
            data_dir=Path(tmp),
            port=port,
            frames=10_000,
            rate_hz=args.rate_hz,
            defect_rate=0.3,
        )
        config.scale.mm_per_px = MM_PER_PX
        config.line.display_every_n = 1
        settings = GuiSettings(engineer_pin_hash=hash_pin("2468"), station="screenshots", gallery_size=8)
        with ModbusPlcSimulator(port=port, device_id=demo.DEVICE_ID, reject_coil=demo.REJECT_COIL):
            line = open_line(config)
            line.start()
            window = StationWindow(LineSource(line, status_interval_s=0.5), settings)
            try:
                window.resize(*SIZES[0])
                window.show()
                deadline = time.monotonic() + args.parts / args.rate_hz * 3 + 60
                while line.status().frames < args.parts and time.monotonic() < deadline:
                    app.processEvents()
                    time.sleep(0.02)
                end = time.monotonic() + 1.0  # one more status poll
                while time.monotonic() < end:
                    app.processEvents()
                    time.sleep(0.02)
                window.source.stop()  # freeze the main screen (the line goes on)
                window.drain()
                for width, height in SIZES:
                    window.resize(width, height)
                    window.show_page("main")
                    settle(app)
                    window.frame_view.fit()
                    settle(app)
                    path = out / f"station-main-{width}x{height}.png"
                    window.grab().save(str(path))
                    print(path)
                # The newest NG part with a defect region, so its labelled box shows; the inspection
                # screen loads its full-resolution frame from the archive through the running source.
                window.source.start(window.buffer)
                parts = list(window.model.gallery)
                pick = next((i for i, part in enumerate(parts) if part.data.get("defects")), 0)
                for width, height in SIZES:
                    window.resize(width, height)
                    if not window.inspect(pick):
                        print("no NG part in the run: no inspection screenshot", file=sys.stderr)
                        break
                    settle(app, until=lambda: "full resolution" in window.inspect_resolution.text())
                    path = out / f"station-inspect-{width}x{height}.png"
                    window.grab().save(str(path))
                    print(path)
            finally:
                window.shutdown()
                window.close()
                line.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
