"""The line under faults: camera gone and back, PLC gone and back, archive disk full, a model too
slow or failing, SIGTERM mid-run. In every case each acquired frame has exactly one verdict in the
records (frame ids acquired == frame ids recorded)."""

from __future__ import annotations

import errno
import gc
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

import appliance.archive
from appliance.archive import ArchiveSettings, ImageArchive
from appliance.config import LineSettings
from appliance.line import Line
from appliance.records import Records, RecordsReader, RecordsSettings
from drivers.camera.base import Camera, Frame
from drivers.camera.synthetic import SyntheticCamera
from drivers.errors import CameraError
from drivers.io.base import Output
from tests.appliance.doubles import ThresholdInspectorForTests, synthetic_camera, wait_until

REPO = Path(__file__).resolve().parents[2]


class FlakyCameraForTests(Camera):
    """Test double: a synthetic camera that is unplugged (CameraError, state "reconnecting") while
    `gone` is set, and remembers the id of every frame it delivered."""

    name = "flaky"

    def __init__(self, inner: SyntheticCamera) -> None:
        super().__init__()
        self.inner = inner
        self.gone = threading.Event()
        self.delivered: list[int] = []

    def open(self) -> None:
        self.inner.open()
        self.status.state = "open"

    def start(self) -> None:
        self.inner.start()
        self.status.state = "streaming"

    def _acquire(self, *, timeout_s: float) -> tuple[Frame, Any]:
        if self.gone.is_set():
            self.status.state = "reconnecting"
            self.status.last_error = "device unplugged"
            time.sleep(0.02)
            raise CameraError("camera unplugged (test)")
        if self.status.state == "reconnecting":
            self.status.state = "streaming"
            self.status.reconnects += 1
        frame, token = self.inner._acquire(timeout_s=timeout_s)
        self.delivered.append(frame.frame_id)
        return frame, token

    def stop(self) -> None:
        self.inner.stop()
        self.status.state = "open"

    def close(self) -> None:
        self.inner.close()
        self.status.state = "closed"


def build_line(
    tmp_path: Path,
    *,
    camera: Camera,
    inspector: ThresholdInspectorForTests,
    outputs: list[Output] | None = None,
    queue_size: int = 4,
    deadline_ms: float = 5000.0,
) -> Line:
    camera.open()
    return Line(
        camera=camera,
        inspector=inspector,
        records=Records(RecordsSettings(path=tmp_path / "records.sqlite3", flush_interval_ms=10)),
        outputs=outputs or [],
        archive=ImageArchive(ArchiveSettings(directory=tmp_path / "images", min_free_mb=0, quota_mb=0)),
        deadline_ms=deadline_ms,
        queue_size=queue_size,
        settings=LineSettings(stop_timeout_s=5.0, events_capacity=64, display_keep=4),
    )


def recorded_ids(records_path: Path) -> list[int]:
    return sorted(r.frame_id for r in RecordsReader(records_path).iter_verdicts())


def test_camera_disappears_and_comes_back(tmp_path: Path) -> None:
    cam = FlakyCameraForTests(synthetic_camera())
    line = build_line(tmp_path, camera=cam, inspector=ThresholdInspectorForTests())
    line.start()
    try:
        wait_until(lambda: line.status().frames >= 10, timeout_s=10, what="first verdicts")
        cam.gone.set()
        wait_until(
            lambda: any(a.startswith("camera") for a in line.status().alarms), timeout_s=5, what="alarm"
        )
        assert line.health(stall_s=5).ok  # the worker still makes progress: the service stays up
        cam.gone.clear()
        back_at = line.status().frames
        wait_until(lambda: line.status().frames >= back_at + 10, timeout_s=10, what="frames after return")
        wait_until(lambda: not line.status().alarms, timeout_s=5, what="camera alarm cleared")
    finally:
        final = line.stop()
    assert final.camera["errors"] > 0 and final.camera["reconnects"] >= 1
    assert recorded_ids(tmp_path / "records.sqlite3") == sorted(cam.delivered)
    assert final.frames == final.acquired == len(cam.delivered)
    alarms = [a for a in RecordsReader(tmp_path / "records.sqlite3").alarms() if a.source == "camera"]
    assert len(alarms) == 1 and alarms[0].cleared_at is not None


def test_plc_goes_down_and_comes_back(tmp_path: Path) -> None:
    pytest.importorskip("pymodbus")
    from appliance.cli.demo import ModbusPlcSimulator, free_port
    from drivers.io.modbus import ModbusOutput, ModbusOutputSettings

    plc = ModbusPlcSimulator(port=free_port())
    plc.start()
    output = ModbusOutput(
        ModbusOutputSettings(
            port=plc.port,
            pulse_ms=2,
            pulse_gap_ms=1,
            heartbeat_period_ms=50,
            max_age_ms=500,
            connect_timeout_s=0.5,
            io_timeout_s=0.3,
            reconnect_min_s=0.05,
            reconnect_max_s=0.2,
        )
    )
    line = build_line(
        tmp_path,
        camera=synthetic_camera(rate_hz=50.0),
        inspector=ThresholdInspectorForTests(),
        outputs=[output],
    )
    try:
        line.start()
        wait_until(lambda: plc.rising_edges >= 2, timeout_s=15, what="reject pulses at the PLC")
        plc.stop()
        wait_until(lambda: not line.status().outputs[0]["connected"], timeout_s=5, what="link loss")
        down_at = line.status().frames
        wait_until(
            lambda: line.status().frames >= down_at + 10, timeout_s=10, what="verdicts while the PLC is down"
        )
        wait_until(
            lambda: any(a.startswith("modbus") for a in line.status().alarms), timeout_s=5, what="alarm"
        )
        plc.start()
        edges = plc.rising_edges
        wait_until(lambda: plc.rising_edges > edges, timeout_s=15, what="pulses after the PLC came back")
    finally:
        final = line.stop()
        plc.stop()
    out = final.outputs[0]
    assert out["reconnects"] >= 1 and out["delivered"] + out["undelivered"] == final.frames
    assert out["undelivered"] > 0  # verdicts during the outage are counted, not sent late
    assert recorded_ids(tmp_path / "records.sqlite3") == list(range(final.acquired))
    sources = {a.source for a in RecordsReader(tmp_path / "records.sqlite3").alarms()}
    assert any(s.startswith("output:modbus") for s in sources)


def test_archive_disk_full_keeps_every_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(appliance.archive, "_write_file", full)
    line = build_line(tmp_path, camera=synthetic_camera(), inspector=ThresholdInspectorForTests())
    line.start()
    try:
        wait_until(
            lambda: bool(line.archive and line.archive.status().disk_full), timeout_s=15, what="disk full"
        )
        wait_until(
            lambda: any("disk full" in a for a in line.status().alarms), timeout_s=5, what="archive alarm"
        )
        at = line.status().frames
        wait_until(lambda: line.status().frames >= at + 10, timeout_s=10, what="verdicts with the disk full")
    finally:
        final = line.stop()
    assert recorded_ids(tmp_path / "records.sqlite3") == list(range(final.acquired))
    assert (
        final.archive is not None and final.archive["skipped_disk_full"] >= 1 and final.archive["saved"] == 0
    )
    assert "archive" in {a.source for a in RecordsReader(tmp_path / "records.sqlite3").alarms()}


def test_model_too_slow_rejects_uninspected_and_memory_stays_bounded(tmp_path: Path) -> None:
    line = build_line(
        tmp_path,
        camera=synthetic_camera(rate_hz=100.0),
        inspector=ThresholdInspectorForTests(delay_s=0.12),
        queue_size=2,
        deadline_ms=100.0,
    )
    line.start()
    frames_alive = []
    try:
        reasons = ("queue full", "deadline missed before inspection", "inspection too slow")
        wait_until(
            lambda: all(line.status().uninspected_by_reason.get(r, 0) >= 2 for r in reasons),
            timeout_s=20,
            what="every overload reason",
        )
        for _ in range(3):
            frames_alive.append(sum(type(o) is Frame for o in gc.get_objects()))
            time.sleep(0.2)
        status = line.status()
    finally:
        final = line.stop()
    assert status.max_queue_depth <= 2 and status.queue_depth <= 2
    assert status.events["kept"] <= 64
    assert max(frames_alive) <= 12, frames_alive  # queue + in flight + archive: not the whole run
    assert final.ok == final.ng == 0  # every inspection ended after the deadline: nothing passed unchecked
    rows = list(RecordsReader(tmp_path / "records.sqlite3").iter_verdicts())
    assert sorted(r.frame_id for r in rows) == list(range(final.acquired))
    assert all(r.verdict == "UNINSPECTED" and r.reason for r in rows)
    late = [r.reason for r in rows if r.reason.startswith("inspection took")]
    assert late and all(r.endswith("> deadline 100 ms") for r in late)


def test_inspection_exceptions_are_uninspected_and_the_worker_lives_on(tmp_path: Path) -> None:
    line = build_line(
        tmp_path,
        camera=synthetic_camera(parts=30, rate_hz=200.0),
        inspector=ThresholdInspectorForTests(fail_every=3),
    )
    line.start()
    assert line.wait_ended(timeout_s=30)
    final = line.stop()
    rows = list(RecordsReader(tmp_path / "records.sqlite3").iter_verdicts())
    assert sorted(r.frame_id for r in rows) == list(range(30))
    failed = [r for r in rows if r.reason.startswith("inspection failed")]
    assert {r.frame_id for r in failed} == {i for i in range(30) if i % 3 == 0} - {
        r.frame_id for r in rows if r.reason == "queue full"
    }
    assert failed[0].reason == "inspection failed: RuntimeError: boom" and failed[0].verdict == "UNINSPECTED"
    assert final.uninspected_by_reason["inspection failed"] == len(failed)
    assert final.ok + final.ng > 0 and not final.worker_error


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny PatchCore bundle (64 px tiles), trained once per test session and shared."""
    from pipelines.datasets.synth import write_mvtec_dataset
    from pipelines.training import train_bundle

    root = tmp_path_factory.getbasetemp() / "aoi-line-tiny"
    bundle = root / "bundle"
    if not (bundle / "bundle.yaml").is_file():
        write_mvtec_dataset(
            root / "data",
            product="print",
            width_px=64,
            height_px=64,
            n_train=12,
            n_test_good=1,
            n_test_per_defect=0,
            defects=[],
            seed=3,
            progress=False,
            overwrite=True,
        )
        train_bundle(
            family="patchcore",
            data=root / "data",
            out=bundle,
            overrides={"bank_size": 200, "max_patches": 5000},
            limit=12,
            tile_px=64,
            overlap_px=0,
            progress=False,
            overwrite=True,
        )
    return bundle


_RUN = (
    "import argparse, logging, sys\n"
    "from appliance.cli import run\n"
    "parser = argparse.ArgumentParser(prog='aoi')\n"
    "run.add_parser(parser.add_subparsers(), 'run')\n"
    "args = parser.parse_args(sys.argv[1:])\n"
    "logging.basicConfig(level=logging.INFO)\n"
    "sys.exit(args.func(args))\n"
)


def test_sigterm_mid_run_stops_gracefully_and_loses_no_verdict(tmp_path: Path, tiny_bundle: Path) -> None:
    config = {
        "camera": {
            "type": "synthetic",
            "product": "print",
            "width_px": 64,
            "height_px": 64,
            "frame_rate_hz": 40,
            "seed": 3,
        },
        "inspection": {
            "bundle": str(tiny_bundle),
            "backend": "torch",
            "threads": 1,
            "deadline_ms": 2000,
            "queue_size": 4,
        },
        "outputs": [{"type": "log", "pulse_ms": 2, "pulse_gap_ms": 1, "level": "DEBUG"}],
        "data_dir": str(tmp_path / "var"),
        "archive": {"min_free_mb": 0},
        "control": {"enabled": False},
        "service": {"stall_s": 10, "status_interval_s": 0.5},
    }
    config_path = tmp_path / "line.yaml"
    config_path.write_text(yaml.safe_dump(config))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(1.0)
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
        "WATCHDOG_USEC": "1000000",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUN, "run", "--config", str(config_path), "--headless"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    messages: list[str] = []

    def receive_until(predicate: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate() and time.monotonic() < deadline and proc.poll() is None:
            try:
                messages.extend(sock.recv(4096).decode().splitlines())
            except TimeoutError:
                continue

    try:
        receive_until(lambda: "READY=1" in messages, 90)
        assert "READY=1" in messages, f"no READY=1; got {messages}"
        receive_until(
            lambda: (
                messages.count("WATCHDOG=1") >= 2 and any(m.startswith("STATUS=running: ") for m in messages)
            ),
            20,
        )
        proc.send_signal(signal.SIGTERM)
        receive_until(lambda: any(m.startswith("STATUS=stopped") for m in messages), 30)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        sock.close()
    assert proc.returncode == 0, output[-3000:]
    assert "STOPPING=1" in messages and messages.index("STOPPING=1") > messages.index("READY=1")
    assert messages.count("WATCHDOG=1") >= 2
    stopped = next(m for m in messages if m.startswith("STATUS=stopped"))
    frames = int(stopped.split(": ")[2].split(" frames")[0])
    ids = recorded_ids(tmp_path / "var" / "records" / "aoi-records.sqlite3")
    assert frames > 0 and ids == list(range(frames)), stopped
