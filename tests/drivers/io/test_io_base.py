"""The shared worker of every output: queue, pulse, heartbeat, back-off, expiry, counters, close.

`FakeTransportOutputForTests` speaks no protocol: it records every template call
with its time and can be told to fail, so the base class is tested without a
network.
"""

from __future__ import annotations

import binascii
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import pytest
from pydantic import Field, ValidationError

from drivers.errors import OutputError
from drivers.io.base import (
    PART_ID_HASHED_FLAG,
    Output,
    OutputSettings,
    part_id_code,
    score_milli,
    split_words,
)
from drivers.verdict import Result, Verdict

VerdictFactory = Callable[..., Verdict]
WaitFor = Callable[..., None]


class FakeSettingsForTests(OutputSettings):
    type: Literal["fake"] = Field(default="fake", description="test only")


class FakeTransportOutputForTests(Output):
    """Records (time, call, argument); `down` makes every call fail; `send_delay_s` slows `_send`."""

    type_name: ClassVar[str] = "fake"
    settings_class: ClassVar[type[OutputSettings]] = FakeSettingsForTests

    def __init__(self, settings: FakeSettingsForTests) -> None:
        super().__init__(settings)
        self.calls: list[tuple[float, str, Any]] = []
        self.down = threading.Event()
        self.send_delay_s = 0.0
        self.opened = False

    def target(self) -> str:
        return "memory"

    def _call(self, name: str, arg: Any = None) -> None:
        if self.down.is_set():
            self.calls.append((time.monotonic(), f"{name}-failed", arg))
            raise ConnectionError("simulated outage")
        self.calls.append((time.monotonic(), name, arg))

    def _open(self) -> None:
        self._call("open")
        self.opened = True

    def _send(self, verdict: Verdict) -> None:
        if self.send_delay_s:
            time.sleep(self.send_delay_s)
        self._call("send", verdict.frame_id)

    def _set_reject(self, active: bool) -> None:
        self._call("reject", active)

    def _heartbeat(self, state: bool) -> None:
        self._call("heartbeat", state)

    def _close_transport(self) -> None:
        self.opened = False
        self.calls.append((time.monotonic(), "close", None))

    def names(self) -> list[str]:
        return [name for _, name, _ in self.calls]

    def of(self, name: str) -> list[tuple[float, Any]]:
        return [(t, arg) for t, n, arg in self.calls if n == name]


def make(**overrides: Any) -> FakeTransportOutputForTests:
    values: dict[str, Any] = {
        "pulse_ms": 30.0,
        "pulse_gap_ms": 10.0,
        "heartbeat_period_ms": 0.0,
        "max_age_ms": 500.0,
        "queue_size": 16,
        "reconnect_min_s": 0.02,
        "reconnect_max_s": 0.16,
    }
    values.update(overrides)
    return FakeTransportOutputForTests(FakeSettingsForTests(**values))


def accounted(out: Output) -> int:
    s = out.status()
    return s.delivered + s.undelivered + s.queued


# ------------------------------------------------------------------ encodings


def test_part_id_code() -> None:
    assert part_id_code("") == 0
    assert part_id_code("000123") == 123
    assert part_id_code(str(2**31 - 1)) == 2**31 - 1
    big = part_id_code(str(2**31))  # too big for a DINT: hashed like text
    assert big & PART_ID_HASHED_FLAG
    text = part_id_code("LOT-A")
    assert text & PART_ID_HASHED_FLAG and text & 0x7FFF_0000 == 0
    assert text == part_id_code("LOT-A")  # stable across runs (CRC, not hash())
    # The hash is CRC-16/CCITT-FALSE (check value 0x29B1), which a PLC program can recompute.
    assert binascii.crc_hqx(b"123456789", 0xFFFF) == 0x29B1
    assert part_id_code("ABC") == PART_ID_HASHED_FLAG | binascii.crc_hqx(b"ABC", 0xFFFF)


def test_score_and_words() -> None:
    assert score_milli(1.2345) == 1234 or score_milli(1.2345) == 1235
    assert score_milli(-3.0) == 0
    assert score_milli(1e9) == 65534
    assert score_milli(float("nan")) == 65535
    assert split_words(0x1234_5678, low_word_first=True) == [0x5678, 0x1234]
    assert split_words(0x1234_5678, low_word_first=False) == [0x1234, 0x5678]
    assert split_words(2**32 + 1, low_word_first=True) == [1, 0]


def test_settings_cross_field_rules() -> None:
    with pytest.raises(ValidationError, match="reconnect_min_s"):
        FakeSettingsForTests(reconnect_min_s=10, reconnect_max_s=1)
    with pytest.raises(ValidationError, match="max_age_ms"):
        FakeSettingsForTests(pulse_ms=400, pulse_gap_ms=200, max_age_ms=500)
    with pytest.raises(ValidationError, match="extra"):
        FakeSettingsForTests(pulse_width=3)  # type: ignore[call-arg]


def test_wrong_settings_class_is_refused() -> None:
    with pytest.raises(OutputError, match="FakeSettingsForTests"):
        FakeTransportOutputForTests(OutputSettings())  # type: ignore[arg-type]


# ------------------------------------------------------------------ behaviour


def test_pulse_holds_data_and_separates_rejects(verdict: VerdictFactory) -> None:
    out = make()
    try:
        assert out.connect()
        for i, result in enumerate([Result.NG, Result.NG, Result.OK, Result.UNINSPECTED]):
            out.publish(verdict(i, result))
        assert out.wait_idle(timeout_s=2)
    finally:
        out.close()
    sequence = [(n, a) for _, n, a in out.calls if n in ("send", "reject")]
    # The open writes the reject inactive first (a pulse cut short earlier never sticks).
    assert sequence[0] == ("reject", False)
    assert sequence[1:] == [
        ("send", 0),
        ("reject", True),
        ("reject", False),
        ("send", 1),
        ("reject", True),
        ("reject", False),
        ("send", 2),
        ("send", 3),
        ("reject", True),
        ("reject", False),
        ("reject", False),  # close() leaves it inactive
    ]
    on_off = out.of("reject")[1:]
    widths = [(off[0] - on[0]) * 1000 for on, off in itertools.pairwise(on_off) if on[1] and not off[1]]
    assert all(15 <= w <= 150 for w in widths), widths
    # gap between the first pulse's end and the second's start
    gap_ms = (on_off[2][0] - on_off[1][0]) * 1000
    assert gap_ms >= 5, gap_ms
    assert out.status().delivered == 4


def test_publish_never_blocks_even_when_the_transport_is_slow(verdict: VerdictFactory) -> None:
    out = make(queue_size=8, max_age_ms=2000.0)
    out.send_delay_s = 0.5
    try:
        assert out.connect()
        start = time.perf_counter()
        for i in range(100):
            out.publish(verdict(i, Result.OK))
        elapsed = time.perf_counter() - start
        # Waiting for even one send would take 0.5 s; the margin absorbs a loaded CI machine.
        assert elapsed < 0.4, elapsed
        status = out.status()
        # 8 may wait (plus the one being sent); everything else is counted at once.
        assert status.undelivered >= 100 - 9
        assert "queue full" in status.alarm
    finally:
        out.close(timeout_s=0.05)
    assert accounted(out) == 100


def test_queue_full_is_counted_logged_once_and_clears(
    caplog: pytest.LogCaptureFixture, verdict: VerdictFactory, wait_for: WaitFor
) -> None:
    out = make(queue_size=4)
    with caplog.at_level(logging.WARNING, logger="drivers.io.base"):
        for i in range(10):
            out.publish(verdict(i, Result.OK))
        status = out.status()
        assert status.queued == 4 and status.undelivered == 6
        assert "queue full" in status.alarm
        assert sum("queue full" in r.getMessage() for r in caplog.records) == 1
        try:
            assert out.connect()
            assert out.wait_idle(timeout_s=2)
            wait_for(lambda: out.status().alarm == "", timeout_s=2, what="the queue-full alarm to clear")
            assert out.status().delivered == 4
            assert any("6 verdict(s) were not delivered" in r.getMessage() for r in caplog.records)
        finally:
            out.close()


def test_old_verdicts_are_dropped_not_sent_late(verdict: VerdictFactory) -> None:
    out = make(max_age_ms=100.0)
    out.publish(verdict(1))
    time.sleep(0.15)
    out.publish(verdict(2))
    try:
        assert out.connect()
        assert out.wait_idle(timeout_s=2)
    finally:
        out.close()
    assert [a for _, a in out.of("send")] == [2]
    assert out.status().undelivered == 1 and out.status().delivered == 1


def test_outage_alarm_backoff_and_recovery(
    caplog: pytest.LogCaptureFixture, verdict: VerdictFactory, wait_for: WaitFor
) -> None:
    out = make(heartbeat_period_ms=20.0, max_age_ms=1000.0)
    try:
        assert out.connect()
        out.down.set()
        with caplog.at_level(logging.WARNING, logger="drivers.io.base"):
            wait_for(lambda: not out.status().connected, timeout_s=2, what="the loss")
            status = out.status()
            assert "connection lost" in status.alarm and "simulated outage" in status.last_error
            time.sleep(0.6)
            out.publish(verdict(7))  # queued, young enough to survive the outage
            assert sum("connection lost" in r.getMessage() for r in caplog.records) == 1
        attempts = [t for t, _ in out.of("open-failed")]
        gaps = [b - a for a, b in itertools.pairwise(attempts[1:])]
        assert len(attempts) >= 4, attempts
        # exponential from 0.02 s, capped at 0.16 s
        assert gaps[0] < gaps[-1] and max(gaps) < 0.16 * 2, gaps
        out.down.clear()
        wait_for(lambda: out.status().connected, timeout_s=2, what="the reconnect")
        assert out.wait_idle(timeout_s=2)
        status = out.status()
        assert status.reconnects == 1 and status.alarm == "" and status.delivered == 1
        assert [a for _, a in out.of("send")] == [7]
    finally:
        out.close()


def test_failed_send_is_retried_after_reconnect(verdict: VerdictFactory, wait_for: WaitFor) -> None:
    out = make(max_age_ms=2000.0)
    try:
        assert out.connect()
        out.down.set()
        out.publish(verdict(5))
        wait_for(lambda: not out.status().connected, timeout_s=2, what="the loss")
        assert out.status().queued == 1  # put back, not lost
        out.down.clear()
        assert out.wait_idle(timeout_s=2)
        assert out.status().delivered == 1 and out.status().undelivered == 0
    finally:
        out.close()


def test_close_drains_within_timeout_and_is_idempotent(verdict: VerdictFactory) -> None:
    out = make()
    try:
        assert out.connect()
        for i in range(3):
            out.publish(verdict(i))
    finally:
        start = time.monotonic()
        out.close(timeout_s=2.0)
    # Three pulses of 30 ms plus gaps; close() returns as soon as they are done, not at its timeout.
    assert time.monotonic() - start < 0.6
    assert out.status().delivered == 3
    assert out.names()[-2:] == ["reject", "close"]
    out.close()
    out.publish(verdict(9))
    status = out.status()
    assert status.undelivered == 1 and not status.connected
    with pytest.raises(OutputError, match="after close"):
        out.connect()


def test_close_while_down_counts_the_rest_and_returns_promptly(verdict: VerdictFactory) -> None:
    out = make(max_age_ms=5000.0)
    out.down.set()
    assert not out.connect(wait_s=0.2)
    for i in range(5):
        out.publish(verdict(i))
    start = time.monotonic()
    out.close(timeout_s=0.2)
    assert time.monotonic() - start < 1.0
    status = out.status()
    assert status.undelivered == 5 and status.delivered == 0 and status.queued == 0


def test_close_without_connect(verdict: VerdictFactory) -> None:
    out = make()
    out.publish(verdict(1))
    out.close()
    assert out.status().undelivered == 1


def test_heartbeat_alternates_at_its_period() -> None:
    out = make(heartbeat_period_ms=25.0)
    try:
        assert out.connect()
        time.sleep(0.3)
    finally:
        out.close()
    beats = out.of("heartbeat")
    states = [a for _, a in beats]
    assert len(states) >= 8
    assert all(a != b for a, b in itertools.pairwise(states[1:]))
    periods = [(b[0] - a[0]) * 1000 for a, b in itertools.pairwise(beats[1:])]
    assert 15 <= sum(periods) / len(periods) <= 60, periods


def test_close_during_a_pulse_finishes_it_then_resets(verdict: VerdictFactory, wait_for: WaitFor) -> None:
    out = make(pulse_ms=80.0)
    try:
        assert out.connect()
        out.publish(verdict(1))
        wait_for(lambda: ("reject", True) in [(n, a) for _, n, a in out.calls], timeout_s=2, what="the pulse")
    finally:
        out.close(timeout_s=1.0)
    rejects = out.of("reject")
    on = next(t for t, a in rejects if a)
    off = next(t for t, a in rejects if t > on and not a)
    assert 0.5 * 80 <= (off - on) * 1000 <= 5 * 80
    assert out.names()[-1] == "close"
    assert out.status().delivered == 1


def test_close_with_zero_timeout_cuts_the_pulse_short_but_leaves_it_inactive(
    verdict: VerdictFactory, wait_for: WaitFor
) -> None:
    out = make(pulse_ms=500.0, max_age_ms=2000.0)
    try:
        assert out.connect()
        out.publish(verdict(1))
        wait_for(lambda: ("reject", True) in [(n, a) for _, n, a in out.calls], timeout_s=2, what="the pulse")
    finally:
        start = time.monotonic()
        out.close(timeout_s=0.0)
    assert time.monotonic() - start < 0.3
    assert out.of("reject")[-1][1] is False
