"""`aoi bench --line`: what the line costs on top of the model, at full frame size.

1. The bare inspector: `--runs` rendered frames inspected one after another
   (tiling, network, stitching, decision; no camera, queue, outputs or records).
2. The real line on the same bundle: the synthetic camera at 5% above the bare
   rate (so the model is never starved and the queue is exercised), a bounded
   queue, a log output, the records and the image archive (PNG, writer at its
   default lower priority) in a temporary data directory, `--runs` x 3 frames.

Reported: the line's overhead per inspected frame (time in the worker outside
`inspect`: routing to outputs, archive, records, events; p50/p99), the
inspected frames per second against the bare rate, the frames the queue
could not hold (UNINSPECTED "queue full", counted, not lost), the archive's
images written and skipped, and peak RSS. The camera pre-renders 4 parts and
cycles them (`prerender`): a real camera's frames arrive by DMA and cost the
host a copy, not a 55-160 ms render on the cores the model runs on.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from drivers.camera.base import Frame


def run_line_bench(
    bundle: Path,
    *,
    backend: str,
    threads: int | None,
    width_px: int,
    height_px: int,
    runs: int,
    seed: int = 7,
) -> dict[str, Any]:
    from appliance.config import parse_config
    from appliance.line import open_line
    from appliance.records import RecordsReader
    from drivers.camera.scene import SceneRenderer
    from pipelines.bench import RssSampler
    from pipelines.bundle import load_bundle
    from pipelines.inspector import Inspector

    inspector = Inspector(load_bundle(bundle), backend=backend, threads=threads)
    scene = SceneRenderer(product="print", width_px=width_px, height_px=height_px, seed=seed)
    frames = [scene.render(5_000_000 + i).image for i in range(min(runs, 4))]
    inspector.inspect(Frame(frame_id=-1, timestamp_s=time.monotonic(), pixels=frames[0]))  # warm-up
    bare_ms = []
    for i in range(runs):
        t0 = time.monotonic()
        inspector.inspect(Frame(frame_id=i, timestamp_s=t0, pixels=frames[i % len(frames)]))
        bare_ms.append((time.monotonic() - t0) * 1000.0)
    bare_fps = 1000.0 / statistics.mean(bare_ms)
    del inspector

    n_line = 3 * runs
    with tempfile.TemporaryDirectory(prefix="aoi-line-bench-") as tmp:
        config = parse_config(
            {
                "camera": {
                    "type": "synthetic", "product": "print", "width_px": width_px, "height_px": height_px,
                    "frame_rate_hz": round(1.05 * bare_fps, 4), "parts": n_line, "seed": seed,
                    "defect_rate": 0.2, "prerender": 4,
                },
                "inspection": {
                    "bundle": str(bundle), "backend": backend, "threads": threads,
                    "deadline_ms": 600_000, "queue_size": 2,
                },
                "outputs": [{"type": "log", "path": str(Path(tmp) / "verdicts.jsonl"), "level": "DEBUG"}],
                "data_dir": tmp,
                "archive": {"min_free_mb": 0},
                "control": {"enabled": False},
                "service": {"stall_s": 3600},
            },
            source="aoi bench --line",
        )  # fmt: skip
        with RssSampler() as rss:
            line = open_line(config)
            line.start()
            try:
                line.wait_ended(timeout_s=600 + n_line * 10 * max(bare_ms) / 1000.0)
            finally:
                status = line.stop()
        inspected = sorted(
            r.decided_at
            for r in RecordsReader(config.records_settings().path).iter_verdicts()
            if r.verdict in ("OK", "NG")
        )
    line_fps = (len(inspected) - 1) / (inspected[-1] - inspected[0]) if len(inspected) > 1 else None
    return {
        "bundle": str(bundle),
        "frame": f"{width_px}x{height_px}",
        "backend": backend,
        "bare_inspect_ms_median": round(statistics.median(bare_ms), 1),
        "bare_fps": round(bare_fps, 4),
        "camera_rate_hz": round(1.05 * bare_fps, 4),
        "line_frames": status.frames,
        "line_inspected": len(inspected),
        "line_uninspected_by_reason": status.uninspected_by_reason,
        "line_inspect_ms_p50": status.inspect_ms_p50,
        "line_overhead_ms_p50": status.overhead_ms_p50,
        "line_overhead_ms_p99": status.overhead_ms_p99,
        "line_latency_ms_p50": status.latency_ms_p50,
        "line_inspected_fps": round(line_fps, 4) if line_fps else None,
        "line_fps_over_bare": round(line_fps / bare_fps, 4) if line_fps else None,
        "archive_saved": None if status.archive is None else status.archive["saved"],
        "archive_skipped_overload": None if status.archive is None else status.archive["skipped_overload"],
        "peak_rss_mib": round(rss.peak_bytes / 2**20, 1),
    }
