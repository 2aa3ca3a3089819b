"""The headless service: sd_notify over a real unix datagram socket, the watchdog that only pings a
healthy line, signals, the `aoi run` command, and the systemd unit (systemd-analyze verify)."""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance.cli import run as run_cmd
from appliance.config import AppConfig, parse_config
from appliance.errors import ConfigError
from appliance.records import RecordsReader
from appliance.service import SystemdNotifier, run_service, watchdog_interval_s
from tests.appliance.doubles import ThresholdInspectorForTests

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "aoi-appliance.service"


class NotifyListener:
    """A bound unix datagram socket collecting sd_notify lines on a thread."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.messages: list[tuple[float, str]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-notify-listener")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            now = time.monotonic()
            self.messages.extend((now, line) for line in data.decode().splitlines())

    def lines(self) -> list[str]:
        return [m for _, m in list(self.messages)]

    def wait_for(self, predicate: Callable[[list[str]], bool], *, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate(self.lines()):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; got {self.lines()}")
            time.sleep(0.02)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    notify = NotifyListener(str(tmp_path / "notify.sock"))
    try:
        yield notify
    finally:
        notify.close()


def line_config(tmp_path: Path, **service: float) -> AppConfig:
    return parse_config(
        {
            "camera": {"type": "synthetic", "product": "print", "width_px": 64, "height_px": 64,
                       "frame_rate_hz": 50, "seed": 3},
            "inspection": {"bundle": "unused-by-the-test-double", "deadline_ms": 500, "queue_size": 4},
            "data_dir": str(tmp_path / "var"),
            "archive": {"min_free_mb": 0},
            "control": {"enabled": True, "port": 0, "token": "t" * 24},
            "service": {"stall_s": 1.0, "status_interval_s": 0.2, **service},
        }
    )  # fmt: skip


def test_notifier_sends_to_a_path_socket(listener: NotifyListener) -> None:
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": listener.address})
    assert notifier.enabled
    assert notifier.ready("running: all  fine\nreally")
    assert notifier.watchdog() and notifier.stopping()
    notifier.close()
    listener.wait_for(lambda m: "STOPPING=1" in m, timeout_s=5, what="STOPPING=1")
    assert listener.lines() == ["READY=1", "STATUS=running: all fine really", "WATCHDOG=1", "STOPPING=1"]


def test_notifier_speaks_the_abstract_namespace() -> None:
    address = f"@aoi-test-{os.getpid()}-{secrets.token_hex(4)}"
    listener = NotifyListener(address)
    try:
        notifier = SystemdNotifier(address)
        assert notifier.status("hello")
        notifier.close()
        listener.wait_for(lambda m: bool(m), timeout_s=5, what="a datagram")
        assert listener.lines() == ["STATUS=hello"]
    finally:
        listener.close()


def test_notifier_without_socket_is_a_no_op() -> None:
    notifier = SystemdNotifier.from_environment({})
    assert not notifier.enabled and not notifier.ready() and not notifier.watchdog()
    notifier.close()


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "4000000"}) == 2.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}) == 2.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval_s({}) is None


def test_service_ready_watchdog_and_sigterm_in_process(tmp_path: Path, listener: NotifyListener) -> None:
    environ = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "400000"}
    original = signal.getsignal(signal.SIGTERM)

    def operate() -> None:
        listener.wait_for(lambda m: "READY=1" in m and m.count("WATCHDOG=1") >= 3, timeout_s=30, what="pings")
        os.kill(os.getpid(), signal.SIGTERM)

    helper = threading.Thread(target=operate, name="test-operator")
    helper.start()
    try:
        code = run_service(
            line_config(tmp_path),
            headless=True,
            environ=environ,
            inspector_factory=lambda p: ThresholdInspectorForTests(),
        )
    finally:
        helper.join(30)
    assert code == 0
    assert signal.getsignal(signal.SIGTERM) is original
    listener.wait_for(lambda m: any(x.startswith("STATUS=stopped") for x in m), timeout_s=5, what="stopped")
    lines = listener.lines()
    ready = lines.index("READY=1")
    assert any(m.startswith("STATUS=opening camera") for m in lines[:ready])  # READY only after the camera
    assert lines.index("WATCHDOG=1") > ready and lines.index("STOPPING=1") > ready
    stopped = next(m for m in lines if m.startswith("STATUS=stopped"))
    frames = int(stopped.split(": ")[2].split(" frames")[0])
    ids = sorted(
        r.frame_id for r in RecordsReader(tmp_path / "var/records/aoi-records.sqlite3").iter_verdicts()
    )
    assert frames > 0 and ids == list(range(frames))
    token = tmp_path / "var" / "control.token"
    assert not token.exists()  # the token came from the config


def test_hung_inspection_withholds_watchdog_pings(tmp_path: Path, listener: NotifyListener) -> None:
    inspector = ThresholdInspectorForTests()
    stop = threading.Event()
    environ = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "200000"}
    observed: dict[str, float] = {}

    def operate() -> None:
        try:
            listener.wait_for(lambda m: m.count("WATCHDOG=1") >= 2, timeout_s=30, what="pings")
            inspector.hang.clear()  # the model hangs from the next frame on
            listener.wait_for(lambda m: any("unhealthy" in x for x in m), timeout_s=10, what="unhealthy")
            since = time.monotonic()
            time.sleep(0.6)
            observed["pings_while_hung"] = sum(
                1 for t, m in list(listener.messages) if m == "WATCHDOG=1" and t > since
            )
            inspector.hang.set()
            listener.wait_for(lambda m: m[-1] == "WATCHDOG=1", timeout_s=10, what="pings again")
        finally:
            inspector.hang.set()
            stop.set()

    helper = threading.Thread(target=operate, name="test-operator")
    helper.start()
    try:
        code = run_service(
            line_config(tmp_path),
            headless=True,
            environ=environ,
            stop_event=stop,
            install_signals=False,
            inspector_factory=lambda p: inspector,
        )
    finally:
        helper.join(30)
    assert code == 0
    assert observed["pings_while_hung"] == 0
    unhealthy = next(m for m in listener.lines() if "unhealthy" in m)
    assert "no progress" in unhealthy


def test_run_command_parses_and_reports_a_missing_config(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="aoi")
    run_cmd.add_parser(parser.add_subparsers(), "run")
    args = parser.parse_args(["run", "--config", str(tmp_path / "missing.yaml"), "--headless"])
    assert args.headless and args.config.endswith("missing.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        args.func(args)
    with pytest.raises(SystemExit):
        parser.parse_args(["run"])  # --config is required


def test_unit_file_has_the_service_contract() -> None:
    text = UNIT.read_text()
    for directive in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "User=aoi",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/aoi",
        "PrivateTmp=yes",
        "--headless",
    ):
        assert f"\n{directive}" in text or f" {directive}" in text, directive


def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed here")
    aoi = Path(sys.executable).with_name("aoi")
    if not aoi.is_file():
        pytest.skip(f"no aoi entry point beside {sys.executable} to point ExecStart at")
    # verify checks that ExecStart names an existing binary: point it at this checkout's aoi.
    text = UNIT.read_text().replace("ExecStart=/opt/aoi/.venv/bin/aoi", f"ExecStart={aoi}")
    assert f"ExecStart={aoi}" in text
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    result = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in result.stderr.splitlines() if UNIT.name in line]
    assert result.returncode == 0 and not problems, result.stderr
