"""Helpers shared by the output tests: verdicts, a polling wait, fast settings and the outage check.

They are fixtures because the tests run with ``--import-mode=importlib``, where
a test module cannot import this file. The PLC stand-ins and `free_port` are
product code, in `drivers.io.simulators`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import pytest

from drivers.io.base import Output, OutputSettings
from drivers.verdict import Result, Verdict

S = TypeVar("S", bound=OutputSettings)

#: Output timings for tests against a server on 127.0.0.1: 40 ms pulses, a short
#: verdict lifetime and a fast back-off, so an outage and its recovery take a fraction of a second.
FAST_TIMING: dict[str, Any] = {
    "pulse_ms": 40.0,
    "pulse_gap_ms": 10.0,
    "heartbeat_period_ms": 50.0,
    "connect_timeout_s": 1.0,
    "io_timeout_s": 0.5,
    "max_age_ms": 400.0,
    "queue_size": 8,
    "reconnect_min_s": 0.05,
    "reconnect_max_s": 0.2,
}


class VerdictFactory(Protocol):
    def __call__(
        self, frame_id: int, result: Result = Result.NG, *, part_id: str = "", score: float = 0.5
    ) -> Verdict: ...


class WaitFor(Protocol):
    def __call__(self, predicate: Callable[[], object], *, timeout_s: float, what: str) -> None: ...


class OutageCheck(Protocol):
    def __call__(
        self,
        out: Output,
        *,
        go_down: Callable[[], object],
        come_back: Callable[[], object],
        link_timeout_s: float = 3.0,
    ) -> None: ...


def _verdict(frame_id: int, result: Result = Result.NG, *, part_id: str = "", score: float = 0.5) -> Verdict:
    return Verdict(
        frame_id=frame_id, part_id=part_id, timestamp_s=time.monotonic(), result=result, score=score
    )


def _wait_for(predicate: Callable[[], object], *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.005)


def _fast_settings(cls: type[S], **values: Any) -> S:
    return cls(**{**FAST_TIMING, **values})


@pytest.fixture
def verdict() -> VerdictFactory:
    """`verdict(frame_id, result=NG, part_id=..., score=...)`: a verdict stamped now."""
    return _verdict


@pytest.fixture
def wait_for() -> WaitFor:
    """`wait_for(predicate, timeout_s=..., what=...)`: poll until true, else fail naming `what`."""
    return _wait_for


@pytest.fixture
def fast_settings() -> Callable[..., OutputSettings]:
    """`fast_settings(SettingsClass, **values)`: settings with `FAST_TIMING`, `values` on top."""
    return _fast_settings


@pytest.fixture
def run_connected() -> Callable[[Output, float], None]:
    """`run_connected(out, duration_s)`: connect `out` (it must succeed), let it run, close it."""

    def run(out: Output, duration_s: float) -> None:
        try:
            assert out.connect()
            time.sleep(duration_s)
        finally:
            out.close()

    return run


@pytest.fixture
def check_outage(caplog: pytest.LogCaptureFixture) -> OutageCheck:
    """`check_outage(out, go_down=..., come_back=...)` on a connected output: the PLC goes down.

    The loss is noticed and raises the alarm (one log warning); 100 rejects
    published meanwhile return at once and all expire undelivered; when the PLC
    comes back the output reconnects once and clears the alarm.
    """

    def check(
        out: Output,
        *,
        go_down: Callable[[], object],
        come_back: Callable[[], object],
        link_timeout_s: float = 3.0,
    ) -> None:
        before = out.status()
        assert before.connected and before.queued == 0, before
        go_down()
        _wait_for(lambda: not out.status().connected, timeout_s=link_timeout_s, what="the loss to be noticed")
        status = out.status()
        assert "connection lost" in status.alarm and status.last_error

        # The inspection side never waits for the PLC.
        start = time.perf_counter()
        for i in range(100):
            out.publish(_verdict(100 + i, Result.NG))
        elapsed = time.perf_counter() - start
        assert elapsed < 0.25, f"100 publishes took {elapsed:.3f} s while the PLC was down"

        # Nothing is silent: every verdict is delivered, undelivered or still queued...
        _wait_for(lambda: out.status().queued == 0, timeout_s=3, what="queued verdicts to expire")
        status = out.status()
        assert status.undelivered == before.undelivered + 100 and status.delivered == before.delivered
        assert sum("connection lost" in r.getMessage() for r in caplog.records) == 1  # once per outage

        come_back()
        _wait_for(lambda: out.status().connected, timeout_s=link_timeout_s, what="the reconnect")
        status = out.status()
        assert status.reconnects == before.reconnects + 1 and status.alarm == ""

    return check
