"""The GPIO output: pulse width and polarity against an in-memory fake line, and the real
libgpiod path where a GPIO chip exists (skipped here: no chip on this machine)."""

from __future__ import annotations

import glob
import itertools
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from drivers.errors import OutputError
from drivers.io.gpio import GpioLine, GpioOutput, GpioOutputSettings, jetson_level
from drivers.verdict import Result, Verdict

VerdictFactory = Callable[..., Verdict]
WaitFor = Callable[..., None]


class FakeGpioLineForTests(GpioLine):
    """An in-memory line that records electrical levels (True = high) with their time.

    It applies `active_low` like the kernel does for a gpiod request, and starts
    at the inactive level as the real request does.
    """

    def __init__(self, *, active_low: bool, fail: threading.Event | None = None) -> None:
        self.active_low = active_low
        self.fail = fail
        self.released = False
        self.levels: list[tuple[float, bool]] = [(time.monotonic(), active_low)]

    def set_active(self, active: bool) -> None:
        if self.fail is not None and self.fail.is_set():
            raise OSError("line lost (simulated)")
        self.levels.append((time.monotonic(), active != self.active_low))

    def release(self) -> None:
        self.released = True

    def transitions(self) -> list[tuple[float, bool]]:
        out = [self.levels[0]]
        for t, level in self.levels[1:]:
            if level != out[-1][1]:
                out.append((t, level))
        return out

    def pulses_ms(self) -> list[float]:
        """Widths of the excursions away from the idle level."""
        idle = self.levels[0][1]
        edges = self.transitions()
        return [(b[0] - a[0]) * 1000.0 for a, b in itertools.pairwise(edges) if a[1] != idle and b[1] == idle]


class FakeLines:
    """A line factory that keeps every fake line it built, by role."""

    def __init__(self) -> None:
        self.built: dict[str, list[FakeGpioLineForTests]] = {"reject": [], "heartbeat": []}
        self.fail = threading.Event()
        self.refuse = threading.Event()

    def __call__(self, settings: GpioOutputSettings, number: int, active_low: bool, role: str) -> GpioLine:
        if self.refuse.is_set():
            raise OSError("line busy (simulated)")
        line = FakeGpioLineForTests(active_low=active_low, fail=self.fail)
        self.built[role].append(line)
        return line


def settings(**overrides: Any) -> GpioOutputSettings:
    values: dict[str, Any] = {
        "line": 17,
        "pulse_ms": 30.0,
        "pulse_gap_ms": 20.0,
        "heartbeat_period_ms": 0.0,
        "max_age_ms": 1000.0,
        "reconnect_min_s": 0.02,
        "reconnect_max_s": 0.1,
    }
    values.update(overrides)
    return GpioOutputSettings(**values)


@pytest.mark.parametrize("active_low", [False, True])
def test_pulse_polarity_and_width(active_low: bool, verdict: VerdictFactory) -> None:
    lines = FakeLines()
    out = GpioOutput(settings(active_low=active_low), line_factory=lines)
    try:
        assert out.connect()
        out.publish(verdict(1, Result.NG))
        out.publish(verdict(2, Result.OK))
        out.publish(verdict(3, Result.UNINSPECTED))
        assert out.wait_idle(timeout_s=2)
    finally:
        out.close()
    line = lines.built["reject"][0]
    idle = active_low  # active-low idles high
    edges = line.transitions()
    assert edges[0][1] is idle
    assert [level for _, level in edges] == [idle, not idle, idle, not idle, idle]
    widths = line.pulses_ms()
    assert len(widths) == 2
    for width in widths:
        assert 0.5 * 30 <= width <= 5 * 30, widths
    # Two rejects are two edges: the line stays idle at least ~pulse_gap_ms between them.
    gap_ms = (edges[3][0] - edges[2][0]) * 1000
    assert gap_ms >= 0.5 * 20, gap_ms
    assert line.released and line.levels[-1][1] is idle


def test_jetson_levels() -> None:
    assert jetson_level(True, active_low=False) is True
    assert jetson_level(False, active_low=False) is False
    assert jetson_level(True, active_low=True) is False
    assert jetson_level(False, active_low=True) is True


def test_heartbeat_line_toggles() -> None:
    lines = FakeLines()
    out = GpioOutput(settings(heartbeat_line=18, heartbeat_period_ms=20.0), line_factory=lines)
    try:
        assert out.connect()
        time.sleep(0.25)
    finally:
        out.close()
    beats = lines.built["heartbeat"][0].transitions()
    assert len(beats) >= 5, beats
    assert lines.built["reject"][0].transitions()[1:] == []  # no verdict, no pulse


def test_lost_line_raises_the_alarm_and_recovers(verdict: VerdictFactory, wait_for: WaitFor) -> None:
    lines = FakeLines()
    out = GpioOutput(settings(max_age_ms=150.0), line_factory=lines)
    try:
        assert out.connect()
        lines.fail.set()
        lines.refuse.set()
        out.publish(verdict(1, Result.NG))
        wait_for(lambda: not out.status().connected, timeout_s=2, what="the loss")
        assert "connection lost" in out.status().alarm
        wait_for(lambda: out.status().undelivered == 1, timeout_s=2, what="the reject to expire")
        lines.fail.clear()
        lines.refuse.clear()
        wait_for(lambda: out.status().connected, timeout_s=2, what="the line to come back")
        out.publish(verdict(2, Result.NG))
        assert out.wait_idle(timeout_s=2)
        status = out.status()
        assert status.delivered == 1 and status.undelivered == 1 and status.reconnects == 1
        assert status.alarm == ""
        assert len(lines.built["reject"][-1].pulses_ms()) == 1
    finally:
        out.close()


def test_missing_chip_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    out = GpioOutput(settings(chip="/dev/gpiochip-does-not-exist"))
    with pytest.raises(OutputError) as info:
        out.check()
    message = str(info.value)
    # Either the library is missing (named, with the extra) or the chip is (named).
    assert "gpiochip-does-not-exist" in message or "'.[gpio]'" in message
    out.close()


@pytest.mark.skipif(not glob.glob("/dev/gpiochip*"), reason="no GPIO chip on this machine")
def test_real_gpiod_line_pulses(verdict: VerdictFactory) -> None:
    pytest.importorskip("gpiod")
    chip = os.environ.get("AOI_TEST_GPIO_CHIP", sorted(glob.glob("/dev/gpiochip*"))[0])
    line = os.environ.get("AOI_TEST_GPIO_LINE")
    if line is None:
        pytest.skip("set AOI_TEST_GPIO_LINE to a line that is free to toggle (and AOI_TEST_GPIO_CHIP)")
    out = GpioOutput(settings(chip=chip, line=int(line)))
    try:
        assert out.connect()
        out.publish(verdict(1, Result.NG))
        assert out.wait_idle(timeout_s=2)
        status = out.status()
        assert status.delivered == 1 and status.alarm == ""
    finally:
        out.close()
