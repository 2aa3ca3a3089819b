"""The headless service: the line under systemd, with readiness, watchdog, status and signals.

`run_service(config)` is what `aoi run` does:

1. installs SIGTERM and SIGINT handlers (both mean: stop gracefully),
2. opens records, archive, outputs, model (warmed up) and camera,
   sending ``STATUS=`` lines as it goes,
3. starts the line and the control endpoint, then sends ``READY=1``: only now
   are camera, model and records really up,
4. every tick, asks the line whether it is healthy (inspection worker alive
   and making progress within `service.stall_s`, records writer alive, camera
   not failed) and only then sends ``WATCHDOG=1`` (at half of
   ``$WATCHDOG_USEC``), so systemd restarts a hung line; ``STATUS=`` carries
   the counters every `service.status_interval_s`,
5. on a signal: ``STOPPING=1``, a graceful stop (the frame in inspection is
   finished, queued frames get UNINSPECTED "shutdown", the outputs, the archive
   and the records are flushed), exit 0. A line that ended by itself exits 0
   after the end of a finite source and 1 after a failure (camera failed,
   inspection worker crashed), so ``Restart=on-failure`` brings it back.

`SystemdNotifier` speaks the sd_notify protocol directly over the unix
datagram socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the
abstract namespace); without that variable every call is a no-op, so the same
code runs in a terminal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.config import AppConfig
    from appliance.line import InspectorFactory, Line, LineStatus

log = logging.getLogger(__name__)

# A headless service logs its counters at most this often (the journal is not a time series).
_LOG_PERIOD_S = 60.0


class SystemdNotifier:
    """sd_notify over ``$NOTIFY_SOCKET``; every method is a no-op when there is no socket."""

    def __init__(self, address: str | None) -> None:
        self.address = address or None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failed_logged = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier:
        """The notifier for ``$NOTIFY_SOCKET`` (no-op when unset)."""
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def _target(self) -> str:
        assert self.address is not None
        # "@name" is Linux's abstract namespace: a leading NUL byte instead of the "@".
        return "\0" + self.address[1:] if self.address.startswith("@") else self.address

    def notify(self, *lines: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; False when disabled or the send failed."""
        if self.address is None:
            return False
        message = "\n".join(lines).encode("utf-8")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(message, self._target())
            except OSError as exc:
                if not self._failed_logged:
                    self._failed_logged = True
                    log.warning("sd_notify to %s failed: %s", self.address, exc)
                return False
        return True

    def ready(self, status: str = "") -> bool:
        """``READY=1``: start-up is complete."""
        return self.notify("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def status(self, text: str) -> bool:
        """``STATUS=``: one line for ``systemctl status``."""
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the service is alive and well."""
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str = "") -> bool:
        """``STOPPING=1``: a graceful stop has begun."""
        return self.notify("STOPPING=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def watchdog_interval_s(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings (half of ``$WATCHDOG_USEC``), or None without a watchdog.

    ``$WATCHDOG_PID``, when set, must be this process (systemd sets it for the main PID).
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec:
        return None
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not a number; watchdog disabled", usec)
        return None
    return value / 2e6 if value > 0 else None


def status_line(status: LineStatus) -> str:
    """The line's counters in one short line (STATUS= and the log)."""
    parts = [
        f"{status.state}: {status.frames} frames",
        f"{status.ok} OK",
        f"{status.ng} NG",
        f"{status.uninspected} UNINSPECTED",
    ]
    if status.fps is not None:
        parts.append(f"{status.fps:.1f} fps")
    if status.latency_ms_p99 is not None:
        parts.append(f"p99 {status.latency_ms_p99:.0f} ms")
    if status.alarms:
        parts.append(f"{len(status.alarms)} alarm(s): {status.alarms[0]}")
    return ", ".join(parts)


@contextlib.contextmanager
def _signals(stop: threading.Event, *, install: bool) -> Iterator[None]:
    """SIGTERM and SIGINT set `stop` while inside; the previous handlers come back afterwards."""
    if not install:
        yield
        return
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("signal handlers can only be installed from the main thread")

    def handler(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.info("%s received again; already stopping", name)
        else:
            log.info("%s received: stopping gracefully", name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_service(
    config: AppConfig,
    *,
    headless: bool = True,
    notifier: SystemdNotifier | None = None,
    stop_event: threading.Event | None = None,
    install_signals: bool = True,
    inspector_factory: InspectorFactory | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run the line until a signal (or `stop_event`), the end of the source or a fatal failure.

    Returns the process exit code: 0 for a graceful stop or the end of a
    finite source, 1 when the line failed. Start-up errors raise their
    `ApplianceError` (one line, no READY=1).
    """
    from appliance.control import ControlServer
    from appliance.line import open_line

    notify = notifier or SystemdNotifier.from_environment(environ)
    stop = stop_event or threading.Event()
    ping_s = watchdog_interval_s(environ)
    try:
        with _signals(stop, install=install_signals):
            notify.status("starting")
            line = open_line(config, inspector_factory=inspector_factory, on_step=notify.status)
            control = None
            try:
                if stop.is_set():
                    notify.stopping("stopped during start-up")
                    line.stop()
                    return 0
                line.start()
                if config.control.enabled:
                    control = ControlServer(line, config.control, data_dir=config.data_dir)
                    control.start()
                where = f", control on {control.url}" if control is not None else ""
                notify.ready(f"running: bundle {line.bundle_id}{where}")
                log.info(
                    "appliance ready%s; watchdog %s", where, f"every {ping_s:.1f} s" if ping_s else "off"
                )
                code = _supervise(line, config, notify, stop, ping_s=ping_s, headless=headless)
                notify.stopping("stopping: finishing frames, flushing records")
            finally:
                if control is not None:
                    control.stop()
                final = line.stop()
            notify.status(f"stopped: {status_line(final)}")
            log.info("appliance stopped (exit %d): %s", code, status_line(final))
            return code
    finally:
        notify.close()


def _supervise(
    line: Line,
    config: AppConfig,
    notify: SystemdNotifier,
    stop: threading.Event,
    *,
    ping_s: float | None,
    headless: bool,
) -> int:
    """Ping the watchdog while healthy and report status until a stop; returns the exit code."""
    service = config.service
    tick_s = min(0.5, ping_s or 0.5, service.status_interval_s)
    next_ping = next_status = time.monotonic()
    next_log = time.monotonic() + _LOG_PERIOD_S
    unhealthy_since: float | None = None
    while not stop.wait(tick_s):
        now = time.monotonic()
        health = line.health(stall_s=service.stall_s)
        if line.ended.is_set():
            status = line.status()
            reason = str(status.camera.get("end_reason", ""))
            clean = reason == "end of stream" and not status.worker_error
            log.log(logging.INFO if clean else logging.ERROR, "line ended: camera %s", reason or "running")
            return 0 if clean else 1
        if health.ok:
            if unhealthy_since is not None:
                log.warning("line healthy again after %.1f s", now - unhealthy_since)
                unhealthy_since = None
            if ping_s is not None and now >= next_ping:
                notify.watchdog()
                next_ping = now + ping_s
        else:
            if unhealthy_since is None:
                unhealthy_since = now
                log.error("line unhealthy: %s; watchdog pings withheld", health.reason)
                notify.status(f"unhealthy: {health.reason}")
            if not line.status().worker_alive:
                log.error("inspection worker is dead; stopping so the service can be restarted")
                return 1
        if now >= next_status:
            next_status = now + service.status_interval_s
            text = status_line(line.status())
            if health.ok:
                notify.status(text)
            if not headless:
                print(text, file=sys.stdout, flush=True)
            elif now >= next_log:
                next_log = now + _LOG_PERIOD_S
                log.info("%s", text)
    return 0
