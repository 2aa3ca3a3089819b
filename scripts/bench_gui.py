"""GUI benchmark: does the operator station keep up with the line without growing memory or slowing it?

The line runs in this process on the synthetic print camera at --frame size
(default 1913x2624) and --rate-hz (default 10), every verdict event carrying a
downsampled display frame and heatmap (``line.display_every_n: 1``). The
inspector is a cheap stand-in that decides from the synthetic frame's ground
truth and builds a full-resolution anomaly map with a defect box (the model's
own speed is `aoi bench`'s subject; here the question is the station).

Two phases of --seconds each:

1. ``line``: the line alone (the baseline),
2. ``line+gui``: the same line with the station window (offscreen, 1280x800,
   Qt event loop running) attached in-process, or with ``--attach`` through
   the control endpoint on 127.0.0.1 (SSE).

For each: the line's frame rate, verdicts, UNINSPECTED, latency and its own
overhead per frame; for the GUI phase also the process RSS every 5 s (growth
in MiB/min after the first 10 s), the verdicts the station counted against the
line's, and the display frames dropped. Prints one JSON object.

Run (heavy: both cores for 2 x --seconds):
    flock /tmp/aoi-heavy.lock timeout 900 env OMP_NUM_THREADS=2 QT_QPA_PLATFORM=offscreen \\
        .venv/bin/python scripts/bench_gui.py --seconds 75
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from drivers.camera.base import Frame
from drivers.verdict import Defect, Result, Verdict
from pipelines.bundle import Bundle, BundleMeta, Calibration

TOKEN = "bench-gui-token-0123456789"


class TruthInspector:
    """Stand-in for `pipelines.inspector.Inspector` (same contract): verdict from the synthetic frame's
    ground truth, a full-resolution float32 anomaly map and one defect box per defective part."""

    def __init__(self) -> None:
        meta = BundleMeta(family="bench-truth", created="bench", calibration=Calibration(image_threshold=1.0))
        self.bundle = Bundle(Path("bench-truth"), meta)

    @property
    def calibration(self) -> Calibration:
        return self.bundle.meta.calibration

    def inspect(self, frame: Frame) -> Verdict:
        truth = frame.truth or {}
        amap = np.zeros(frame.pixels.shape[:2], np.float32)
        defects: tuple[Defect, ...] = ()
        mask = truth.get("mask")
        score = 0.3
        if truth.get("defective") and mask is not None and mask.any():
            ys, xs = np.nonzero(mask)
            x, y = int(xs.min()), int(ys.min())
            w, h = int(xs.max()) - x + 1, int(ys.max()) - y + 1
            amap[y : y + h, x : x + w] = 1.6
            score = 1.6
            defects = (Defect(x, y, w, h, len(xs), 1.6, area_mm2=len(xs) * 0.01),)
        return Verdict(
            frame_id=frame.frame_id,
            part_id=frame.part_id,
            timestamp_s=frame.timestamp_s,
            result=Result.NG if score >= 1.0 else Result.OK,
            score=score,
            defects=defects,
            bundle_id=self.bundle.meta.bundle_id,
            wall_time_s=frame.wall_time_s,
            anomaly_map=amap,
            truth=frame.truth,
        )


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def build_line(args: argparse.Namespace, data_dir: Path) -> Any:
    from appliance.config import LineSettings
    from appliance.line import Line
    from appliance.records import Records, RecordsSettings
    from drivers.camera.synthetic import SyntheticCamera, SyntheticSettings

    width, height = (int(v) for v in args.frame.split("x"))
    camera = SyntheticCamera(
        SyntheticSettings(
            product="print",
            width_px=width,
            height_px=height,
            frame_rate_hz=args.rate_hz,
            seed=7,
            defect_rate=0.2,
        )
    )
    camera.open()
    return Line(
        camera=camera,
        inspector=TruthInspector(),
        records=Records(RecordsSettings(path=data_dir / "records.sqlite3")),
        deadline_ms=2000.0,
        queue_size=4,
        settings=LineSettings(display_every_n=1, display_max_px=args.display_max_px, warmup=False),
    )


def line_figures(status: Any, seconds: float) -> dict[str, Any]:
    return {
        "verdicts": status.frames,
        "verdicts_per_s": round(status.frames / seconds, 2),
        "ok": status.ok,
        "ng": status.ng,
        "uninspected": status.uninspected,
        "uninspected_by_reason": status.uninspected_by_reason,
        "latency_ms_p50": status.latency_ms_p50,
        "latency_ms_p99": status.latency_ms_p99,
        "overhead_ms_p50": status.overhead_ms_p50,
        "overhead_ms_p99": status.overhead_ms_p99,
        "events_display_released": status.events.get("display_released"),
    }


def run_line_alone(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    line = build_line(args, data_dir)
    line.events.subscribe()  # a consumer that never reads: display images are still made, as for a GUI
    line.start()
    started = time.monotonic()
    try:
        time.sleep(args.seconds)
    finally:
        elapsed = time.monotonic() - started
        final = line.stop()
    return line_figures(final, elapsed)


def run_with_gui(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    from PySide6 import QtCore, QtWidgets

    from appliance.config import ControlSettings
    from appliance.control import ControlServer
    from appliance.gui.settings import GuiSettings
    from appliance.gui.stream import HttpSource, LineSource, Source
    from appliance.gui.window import StationWindow

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    line = build_line(args, data_dir)
    control = None
    line.start()
    source: Source
    if args.attach:
        control = ControlServer(line, ControlSettings(port=0, token=TOKEN), data_dir=data_dir)
        control.start()
        source = HttpSource(control.url, token=TOKEN)
    else:
        source = LineSource(line)
    window = StationWindow(source, GuiSettings(width_px=1280, height_px=800))
    window.show()
    samples: list[tuple[float, float]] = []
    started = time.monotonic()

    def sample() -> None:
        samples.append((round(time.monotonic() - started, 1), round(rss_mib(), 1)))

    sample()
    timer = QtCore.QTimer()
    timer.timeout.connect(sample)
    timer.start(5000)
    QtCore.QTimer.singleShot(int(args.seconds * 1000), app.quit)
    try:
        app.exec()
    finally:
        timer.stop()
        elapsed = time.monotonic() - started
        sample()
        status = line.status()
        window.shutdown()
        window.drain()
        if control is not None:
            control.stop()
        final = line.stop()
        window.close()
    late = [(t, r) for t, r in samples if t >= 10.0]
    slope = None
    if len(late) >= 3:
        ts, rs = np.array([t for t, _ in late]), np.array([r for _, r in late])
        slope = round(float(np.polyfit(ts, rs, 1)[0]) * 60.0, 2)
    figures = line_figures(final, elapsed)
    figures.update(
        {
            "mode": "attach (SSE on 127.0.0.1)" if args.attach else "in-process",
            "station_verdicts_counted": window.model.counters.total,
            "line_verdicts_at_gui_stop": status.frames,
            "station_verdict_events": window.model.verdicts_seen,
            "display_frames_drawn": window.frame_view.shown,
            "display_frames_dropped": window.dropped_display_frames(),
            "dropped_by_line_or_endpoint": window.model.display_dropped,
            "dropped_in_buffer": window.buffer.display_dropped,
            "dropped_per_drain": window.display_skipped,
            "drains": window.drains,
            "rss_mib_samples": samples,
            "rss_mib_start": samples[0][1],
            "rss_mib_end": samples[-1][1],
            "rss_mib_max": max(r for _, r in samples),
            "rss_growth_mib_per_min_after_10s": slope,
        }
    )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=75.0, help="length of each phase (s)")
    parser.add_argument("--rate-hz", type=float, default=10.0, help="parts per second")
    parser.add_argument("--frame", default="1913x2624", help="frame size WxH (px)")
    parser.add_argument("--display-max-px", type=int, default=320, help="line.display_max_px (px)")
    parser.add_argument(
        "--attach", action="store_true", help="the station attaches over the control endpoint"
    )
    parser.add_argument("--skip-baseline", action="store_true", help="only the line+gui phase")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {
        "frame": args.frame,
        "rate_hz": args.rate_hz,
        "seconds": args.seconds,
        "display_max_px": args.display_max_px,
        "load_average_start": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="aoi-bench-gui-") as tmp:
        if not args.skip_baseline:
            result["line"] = run_line_alone(args, Path(tmp) / "alone")
        result["line+gui"] = run_with_gui(args, Path(tmp) / "gui")
    result["load_average_end"] = os.getloadavg()
    print(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
