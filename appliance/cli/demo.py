"""`aoi demo`: the whole line on embedded defaults, nothing to set up.

1. Writes a synthetic inkjet-print dataset (224x224 px, good parts only) and
   trains BVPN with the fast profile, unless a calibrated bundle is cached
   under ``$AOI_CACHE`` (default ``~/.cache/aoi``) ``/demo`` (``--fresh`` retrains).
2. Calibrates the image threshold on fresh good parts of the same design
   (parts the training never saw) for a 1 % false-reject target.
3. Starts a Modbus TCP PLC simulator (a pymodbus server on 127.0.0.1, a free
   port) that counts the rising edges of its reject coil.
4. Runs `--frames` parts (default 200) of the synthetic line camera through
   the real line: camera thread -> bounded queue -> inspector -> Modbus output
   -> records and image archive, at a frame rate the model keeps up with.
5. Prints the summary (verdicts against ground truth, reject pulses the PLC
   received against the rejects in the records, latency and line overhead)
   and writes an HTML report with the rejected frames and their heatmaps.

The training parts are numbered from 1,000,000 and the calibration parts from
50,000,000; the line shows parts 0, 1, 2, ... so no part is judged by a model
that saw it. Exit status 1 when the PLC did not receive one reject pulse per
NG or UNINSPECTED verdict in the records.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.cli.common import add_progress_flag, print_json
from appliance.errors import ConfigError
from drivers.io.simulators import ModbusPlcSimulator, free_port  # tests import both from here too

if TYPE_CHECKING:
    from appliance.config import AppConfig
    from appliance.line import LineStatus
    from drivers.camera.synthetic import SyntheticCamera

log = logging.getLogger(__name__)

PRODUCT = "print"
SEED = 7  # the print design (layout, inks) of the demo product
SIZE_PX = 224  # with the 16 px reflect margin, one 256 px tile covers a whole frame
N_TRAIN = 200
N_CALIBRATE = 200
CALIBRATION_BASE = 50_000_000  # part numbers of the calibration parts, far from every other range
TARGET_FRR = 0.01
MIN_RATE_HZ, MAX_RATE_HZ = 2.0, 20.0  # parts per second the demo line runs at
REJECT_COIL = 0
DEVICE_ID = 1
_CALIBRATION_METHOD = "demo: fresh good parts, target_frr 1%, branch gain"


def _cache_dir() -> Path:
    return Path(os.environ.get("AOI_CACHE") or Path.home() / ".cache" / "aoi")


def inference_threads() -> int:
    """Inference threads on the line: one core is left to the camera, outputs, archive and records.

    Measured on 2 cores (224 px BVPN): with 2 inference threads a frame took 55 ms alone but
    ~90 ms inside the line, where any other thread stalls torch's thread team; with 1 thread,
    65 ms alone and ~70 ms inside the line.
    """
    return max(1, (os.cpu_count() or 2) - 1)


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(
        name,
        help="run the whole appliance on embedded defaults",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--frames", type=int, default=200, help="parts to run through the line (default 200)")
    p.add_argument(
        "--rate-hz",
        type=float,
        default=None,
        help="parts per second (default: what the measured model keeps up with, 2 to 20)",
    )
    p.add_argument("--defect-rate", type=float, default=0.2, help="fraction of defective parts (default 0.2)")
    p.add_argument("--workdir", default=None, help="data, bundle and run folder (default $AOI_CACHE/demo)")
    p.add_argument("--fresh", action="store_true", help="ignore a cached bundle: retrain and recalibrate")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    add_progress_flag(p)
    p.set_defaults(func=run)


def _dataset(work: Path, *, progress: bool) -> Path:
    """The training set: good parts numbered from 1,000,000 (the test/good range), in train/good."""
    from pipelines.datasets.synth import write_mvtec_dataset

    data = work / f"{PRODUCT}-{SIZE_PX}"
    if (data / "train" / "good").is_dir():
        return data
    write_mvtec_dataset(
        data,
        product=PRODUCT,
        width_px=SIZE_PX,
        height_px=SIZE_PX,
        n_train=0,
        n_test_good=N_TRAIN,
        n_test_per_defect=0,
        defects=[],
        seed=SEED,
        progress=progress,
        overwrite=True,
    )
    # The writer numbers train/good from part 0, which the line camera shows first; its
    # test/good parts are numbered from 1,000,000, so they become the training set.
    (data / "train").mkdir(exist_ok=True)
    os.replace(data / "test" / "good", data / "train" / "good")
    return data


def _calibrate(bundle_dir: Path, *, progress: bool) -> dict[str, Any]:
    """Threshold for TARGET_FRR from fresh good parts of the same design; written into the bundle."""
    from tqdm import tqdm

    from calibration.threshold import GoodImages, threshold_for_frr
    from drivers.camera.scene import SceneRenderer
    from pipelines.bundle import Calibration, load_bundle, update_meta
    from pipelines.inspector import Inspector

    bundle = load_bundle(bundle_dir)
    inspector = Inspector(bundle)
    inspector.analyser.measure_raw()  # what calibration fits is fitted below (as aoi calibrate)
    scene = SceneRenderer(product=PRODUCT, width_px=SIZE_PX, height_px=SIZE_PX, seed=SEED)
    goods = GoodImages(pixels=False)
    for i in tqdm(range(N_CALIBRATE), desc="calibrating", unit="part", disable=not progress):
        goods.add(inspector.analyse(scene.render(CALIBRATION_BASE + i).image))
    fusion = goods.fusion(target_frr=TARGET_FRR)
    scores = fusion.scores(goods)
    result = threshold_for_frr(scores, target_frr=TARGET_FRR)
    update_meta(
        bundle,
        calibration=Calibration(
            image_threshold=result.threshold,
            pixel_threshold=result.threshold,
            **fusion.calibration_fields(),
            edge_bands_px=list(goods.bands_px),
            method=_CALIBRATION_METHOD,
            details={
                **result.to_dict(),
                **fusion.details(),
                **goods.edge_details(),
            },
        ),
    )
    return {"threshold": result.threshold, "message": result.message}


def _bundle(work: Path, *, fresh: bool, progress: bool) -> tuple[Path, float | None]:
    """The calibrated demo bundle (trained now or cached); returns it and the training time (s)."""
    from pipelines.bundle import load_bundle
    from pipelines.training import train_bundle

    bundle_dir = work / f"bvpn-{PRODUCT}-{SIZE_PX}.bundle"
    trained_s = None
    if fresh or not (bundle_dir / "bundle.yaml").is_file():
        data = _dataset(work, progress=progress)
        started = time.monotonic()
        log.info("training BVPN (fast profile) on %d good parts; cached in %s", N_TRAIN, bundle_dir)
        train_bundle(
            family="bvpn",
            data=data,
            out=bundle_dir,
            profile="fast",
            seed=0,
            overwrite=True,
            progress=progress,
        )
        trained_s = time.monotonic() - started
    if (
        fresh
        or trained_s is not None
        or load_bundle(bundle_dir).meta.calibration.method != _CALIBRATION_METHOD
    ):
        calibrated = _calibrate(bundle_dir, progress=progress)
        log.info("image threshold %.4g: %s", calibrated["threshold"], calibrated["message"])
    return bundle_dir, trained_s


def _measure_model(bundle_dir: Path, *, frames: int = 12) -> list[float]:
    """Bare-model latency (ms) of `Inspector.inspect` on demo parts, after a warm-up."""
    from drivers.camera.base import Frame
    from drivers.camera.scene import SceneRenderer
    from pipelines.bundle import load_bundle
    from pipelines.inspector import Inspector

    inspector = Inspector(load_bundle(bundle_dir), threads=inference_threads())
    scene = SceneRenderer(product=PRODUCT, width_px=SIZE_PX, height_px=SIZE_PX, seed=SEED)
    images = [scene.render(CALIBRATION_BASE + N_CALIBRATE + i).image for i in range(frames + 2)]
    times = []
    for i, image in enumerate(images):
        started = time.monotonic()
        inspector.inspect(Frame(frame_id=i, timestamp_s=started, pixels=image))
        if i >= 2:  # the first calls pay for lazy initialisation
            times.append((time.monotonic() - started) * 1000.0)
    return times


def _line_config(
    *, bundle_dir: Path, data_dir: Path, port: int, frames: int, rate_hz: float, defect_rate: float
) -> AppConfig:
    """The demo line's configuration, validated like any `aoi run` configuration."""
    from appliance.config import parse_config

    period_ms = 1000.0 / rate_hz
    # Every reject must get its own pulse before the next part: pulse + gap within ~60% of a period.
    pulse_ms = max(2.0, min(40.0, 0.4 * period_ms))
    gap_ms = max(1.0, min(20.0, 0.2 * period_ms))
    deadline_ms = 1500.0
    return parse_config(
        {
            "camera": {
                "type": "synthetic",
                "product": PRODUCT,
                "width_px": SIZE_PX,
                "height_px": SIZE_PX,
                "frame_rate_hz": rate_hz,
                "defect_rate": defect_rate,
                "seed": SEED,
                "pixel_format": "rgb8",
                "parts": frames,
            },
            "inspection": {
                "bundle": str(bundle_dir),
                "threads": inference_threads(),
                "deadline_ms": deadline_ms,
                "queue_size": 8,
            },
            "outputs": [
                {
                    "type": "modbus",
                    "host": "127.0.0.1",
                    "port": port,
                    "device_id": DEVICE_ID,
                    "reject_coil": REJECT_COIL,
                    "pulse_ms": pulse_ms,
                    "pulse_gap_ms": gap_ms,
                    "max_age_ms": 2 * deadline_ms,
                    "heartbeat_period_ms": 500.0,
                    "queue_size": 64,
                }
            ],
            "data_dir": str(data_dir),
            "archive": {"quota_mb": 512.0, "min_free_mb": 64.0},
            "line": {"recipe": f"demo-{PRODUCT}"},
            "control": {"enabled": False},
            "service": {"stall_s": 10.0},
        },
        source="demo configuration",
    )


def _run_line(
    config: AppConfig, *, frames: int, rate_hz: float, progress: bool
) -> tuple[LineStatus, SyntheticCamera]:
    """Run the line until its `frames` parts are decided; returns (final status, camera)."""
    from tqdm import tqdm

    from appliance.line import open_line
    from drivers.camera.synthetic import SyntheticCamera, SyntheticSettings

    assert isinstance(config.camera, SyntheticSettings)
    camera = SyntheticCamera(config.camera)
    line = open_line(config, camera=camera)
    line.start()
    limit_s = frames / rate_hz * 3.0 + 60.0
    started = time.monotonic()
    bar = tqdm(total=frames, desc="line", unit="part", disable=not progress, leave=False)
    try:
        while not line.wait_ended(timeout_s=0.25):
            bar.update(line.status().frames - bar.n)
            if time.monotonic() - started > limit_s:
                log.error("the line did not finish %d parts within %.0f s; stopping it", frames, limit_s)
                break
    finally:
        bar.close()
        final = line.stop()
    return final, camera


def run(args: argparse.Namespace) -> int:
    from appliance.records import RecordsReader
    from appliance.report import write_report

    if args.frames < 1:
        raise ConfigError(f"--frames must be at least 1, got {args.frames}")
    if args.rate_hz is not None and not 0 < args.rate_hz <= 200:
        raise ConfigError(f"--rate-hz must be in (0, 200], got {args.rate_hz}")
    if not 0.0 <= args.defect_rate <= 1.0:
        raise ConfigError(f"--defect-rate must be in [0, 1], got {args.defect_rate}")
    started = time.monotonic()
    progress = not args.no_progress
    work = Path(args.workdir) if args.workdir else _cache_dir() / "demo"
    work.mkdir(parents=True, exist_ok=True)

    bundle_dir, trained_s = _bundle(work, fresh=args.fresh, progress=progress)
    model_ms = _measure_model(bundle_dir)
    model_p50_ms = float(sorted(model_ms)[len(model_ms) // 2])
    # The model busy half the time leaves room for the camera, the archive and the records on
    # two cores. At least 2 Hz keeps the run short: a machine too busy for that shows it as
    # UNINSPECTED verdicts, counted and rejected, which is what a line would do.
    rate_hz = args.rate_hz or max(MIN_RATE_HZ, min(MAX_RATE_HZ, 500.0 / model_p50_ms))
    run_dir = work / "run"
    shutil.rmtree(run_dir, ignore_errors=True)  # one run's records, so the counts are this run's
    port = free_port()
    config = _line_config(
        bundle_dir=bundle_dir,
        data_dir=run_dir,
        port=port,
        frames=args.frames,
        rate_hz=rate_hz,
        defect_rate=args.defect_rate,
    )
    log.info(
        "line: %d parts at %.1f Hz, %dx%d px, PLC simulator on 127.0.0.1:%d",
        *(args.frames, rate_hz, SIZE_PX, SIZE_PX, port),
    )
    with ModbusPlcSimulator(port=port, device_id=DEVICE_ID, reject_coil=REJECT_COIL) as plc:
        final, camera = _run_line(config, frames=args.frames, rate_hz=rate_hz, progress=progress)
        pulses = plc.rising_edges
    records_path = config.records_settings().path
    counts = RecordsReader(records_path).counts()
    rejects_recorded = counts["ng"] + counts["uninspected"]
    truth = final.truth or {}
    output = final.outputs[0] if final.outputs else {}
    summary: dict[str, Any] = {
        "frames": final.frames,
        "acquired": final.acquired,
        "ok": final.ok,
        "ng": final.ng,
        "uninspected": final.uninspected,
        "uninspected_by_reason": final.uninspected_by_reason,
        "truth_defective": truth.get("defective", 0),
        "missed_defects": truth.get("missed_defects", 0),
        "false_rejects": truth.get("false_rejects", 0),
        "plc_rejects_received": pulses,
        "rejects_recorded": rejects_recorded,
        "records_total": counts["total"],
        "plc_matches_records": pulses == rejects_recorded,
        "outputs_delivered": output.get("delivered"),
        "outputs_undelivered": output.get("undelivered"),
        "latency_ms_p50": final.latency_ms_p50,
        "latency_ms_p99": final.latency_ms_p99,
        "inspect_ms_p50": final.inspect_ms_p50,
        "overhead_ms_p50": final.overhead_ms_p50,
        "overhead_ms_p99": final.overhead_ms_p99,
        "bare_model_ms_p50": round(model_p50_ms, 3),
        "frame_px": f"{SIZE_PX}x{SIZE_PX}",
        "frame_rate_hz": round(rate_hz, 2),
        "deadline_ms": final.deadline_ms,
        "image_threshold": final.image_threshold,
        "bundle": str(bundle_dir),
        "training_s": None if trained_s is None else round(trained_s, 1),
        "records": str(records_path),
    }
    report = write_report(
        run_dir / "report.html",
        title=f"aoi demo: {final.frames} {PRODUCT} parts at {rate_hz:.1f} Hz",
        summary=summary,
        records_path=records_path,
        truth=camera.defect_for,
    )
    summary["report"] = str(report)
    summary["runtime_s"] = round(time.monotonic() - started, 1)
    if args.json:
        print(json.dumps(summary, default=str, allow_nan=False))
    else:
        print_json(summary)
    if not summary["plc_matches_records"]:
        print(
            f"aoi demo: the PLC received {pulses} reject pulses but the records hold {rejects_recorded} "
            f"rejects ({output.get('undelivered')} verdicts undelivered by the output)",
            file=sys.stderr,
        )
        return 1
    if final.frames != final.acquired:
        print(f"aoi demo: {final.acquired} frames acquired but {final.frames} verdicts", file=sys.stderr)
        return 1
    return 0
