"""The Modbus TCP output against a real pymodbus server on 127.0.0.1.

The server is the demo's PLC simulator (`drivers.io.simulators`), on its own
thread and event loop; it records every write with the server's receive time,
so pulse widths and heartbeat toggles are observed where a PLC would see them.
"""

from __future__ import annotations

import functools
import itertools
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("pymodbus")

from drivers.errors import OutputError
from drivers.io.base import PART_ID_HASHED_FLAG, part_id_code
from drivers.io.modbus import (
    FRAME_ID,
    HEARTBEAT,
    PART_ID,
    RESULT,
    SCORE,
    SEQUENCE,
    ModbusOutput,
    ModbusOutputSettings,
    verdict_registers,
)
from drivers.io.simulators import ModbusPlcSimulator
from drivers.verdict import Result, Verdict

VerdictFactory = Callable[..., Verdict]
WaitFor = Callable[..., None]

FC_WRITE_REGISTER = 6
UNIT = 7
COIL = 3
BASE = 10


@pytest.fixture
def modbus_server() -> Iterator[ModbusPlcSimulator]:
    with ModbusPlcSimulator(device_id=UNIT, reject_coil=COIL) as server:
        yield server


@pytest.fixture
def settings_for(
    modbus_server: ModbusPlcSimulator, fast_settings: Callable[..., Any]
) -> Callable[..., ModbusOutputSettings]:
    """`settings_for(**overrides)`: settings for the test server, fast test timings."""
    return functools.partial(
        fast_settings,
        ModbusOutputSettings,
        port=modbus_server.port,
        device_id=UNIT,
        reject_coil=COIL,
        register_base=BASE,
    )


def test_register_values_and_word_order(verdict: VerdictFactory) -> None:
    v = verdict(0x0001_2345, Result.NG, part_id="4711", score=1.2345)
    low = verdict_registers(v, sequence=9, low_word_first=True)
    assert low == [1, 0x2345, 0x0001, 4711, 0, 1234, 9]
    high = verdict_registers(v, sequence=9, low_word_first=False)
    assert high[1:3] == [0x0001, 0x2345]
    text = verdict(1, Result.OK, part_id="LOT-A/17", score=float("nan"))
    regs = verdict_registers(text, sequence=1, low_word_first=True)
    assert regs[4] == 0x8000 and regs[3] == part_id_code("LOT-A/17") & 0xFFFF
    assert part_id_code("LOT-A/17") & PART_ID_HASHED_FLAG
    assert regs[5] == 0xFFFF  # NaN score


def test_settings_reject_registers_past_the_end() -> None:
    with pytest.raises(ValueError, match="register_base"):
        ModbusOutputSettings(register_base=65530)


@pytest.mark.plc
def test_reject_pulse_result_codes_and_frame_echo(
    modbus_server: ModbusPlcSimulator,
    verdict: VerdictFactory,
    settings_for: Callable[..., ModbusOutputSettings],
) -> None:
    out = ModbusOutput(settings_for())
    try:
        assert out.connect()
        out.publish(verdict(70_000, Result.NG, part_id="1234", score=1.5))
        assert out.wait_idle(timeout_s=2)
        r = modbus_server.registers
        assert r[BASE + RESULT] == 1
        assert (r[BASE + FRAME_ID], r[BASE + FRAME_ID + 1]) == (70_000 & 0xFFFF, 70_000 >> 16)
        assert (r[BASE + PART_ID], r[BASE + PART_ID + 1]) == (1234, 0)
        assert r[BASE + SCORE] == 1500
        assert r[BASE + SEQUENCE] == 1

        out.publish(verdict(70_001, Result.OK))
        assert out.wait_idle(timeout_s=2)
        r = modbus_server.registers
        assert r[BASE + RESULT] == 0 and r[BASE + FRAME_ID] == 70_001 & 0xFFFF

        out.publish(verdict(70_002, Result.UNINSPECTED, score=float("nan")))
        assert out.wait_idle(timeout_s=2)
        r = modbus_server.registers
        assert r[BASE + RESULT] == 2 and r[BASE + SCORE] == 0xFFFF and r[BASE + SEQUENCE] == 3

        # NG and UNINSPECTED each gave one pulse; OK gave none.
        widths = modbus_server.pulses_ms(COIL)
        assert len(widths) == 2, modbus_server.coil_edges(COIL)
        for width in widths:
            assert 0.5 * 40 <= width <= 5 * 40, widths
        status = out.status()
        assert status.connected and status.delivered == 3 and status.undelivered == 0
        assert status.alarm == ""
    finally:
        out.close()
    # close() leaves the reject inactive.
    assert modbus_server.coil_edges(COIL)[-1][1] == 0


@pytest.mark.plc
def test_heartbeat_toggles(
    modbus_server: ModbusPlcSimulator,
    settings_for: Callable[..., ModbusOutputSettings],
    run_connected: Callable[..., None],
) -> None:
    run_connected(ModbusOutput(settings_for(heartbeat_period_ms=30.0)), 0.35)
    beats = [
        (t, values[0])
        for t, fc, address, values in modbus_server.writes
        if fc == FC_WRITE_REGISTER and address == BASE + HEARTBEAT
    ]
    assert len(beats) >= 5, beats
    values = [v for _, v in beats]
    assert all(a != b for a, b in itertools.pairwise(values)), values
    gaps_ms = [(b[0] - a[0]) * 1000 for a, b in itertools.pairwise(beats[1:])]
    assert all(10 <= g <= 150 for g in gaps_ms), gaps_ms


@pytest.mark.plc
def test_server_down_then_back(
    modbus_server: ModbusPlcSimulator,
    verdict: VerdictFactory,
    wait_for: WaitFor,
    settings_for: Callable[..., ModbusOutputSettings],
    check_outage: Callable[..., None],
) -> None:
    out = ModbusOutput(settings_for())
    try:
        assert out.connect()
        out.publish(verdict(1, Result.NG))
        assert out.wait_idle(timeout_s=2)
        check_outage(out, go_down=modbus_server.stop, come_back=modbus_server.start)
        out.publish(verdict(500, Result.NG))
        assert out.wait_idle(timeout_s=2)
        assert modbus_server.registers[BASE + FRAME_ID] == 500
        assert len(modbus_server.pulses_ms(COIL)) >= 1
        status = out.status()
        assert status.delivered == 2 and status.undelivered == 100 and status.queued == 0
    finally:
        out.close()


@pytest.mark.plc
def test_verdicts_queued_during_a_short_outage_are_sent_after_reconnect(
    modbus_server: ModbusPlcSimulator,
    verdict: VerdictFactory,
    wait_for: WaitFor,
    settings_for: Callable[..., ModbusOutputSettings],
) -> None:
    out = ModbusOutput(settings_for(max_age_ms=3000.0, heartbeat_period_ms=20.0))
    try:
        assert out.connect()
        modbus_server.stop()
        wait_for(lambda: not out.status().connected, timeout_s=3, what="the loss to be noticed")
        out.publish(verdict(42, Result.OK))
        modbus_server.start()
        wait_for(lambda: out.status().delivered == 1, timeout_s=3, what="the queued verdict")
        assert modbus_server.registers[BASE + FRAME_ID] == 42
        assert out.status().undelivered == 0
    finally:
        out.close()


@pytest.mark.plc
def test_wrong_unit_id_raises_the_alarm(
    modbus_server: ModbusPlcSimulator,
    verdict: VerdictFactory,
    wait_for: WaitFor,
    settings_for: Callable[..., ModbusOutputSettings],
) -> None:
    out = ModbusOutput(settings_for(device_id=UNIT + 1, max_age_ms=200.0))
    try:
        out.connect()
        out.publish(verdict(1, Result.NG))
        wait_for(lambda: out.status().undelivered == 1, timeout_s=3, what="the verdict to expire")
        status = out.status()
        assert not status.connected and status.alarm and "unit" in status.last_error
    finally:
        out.close()


@pytest.mark.plc
def test_simulator_counts_rising_edges_of_single_and_multiple_coil_writes(
    modbus_server: ModbusPlcSimulator,
) -> None:
    from pymodbus.client import ModbusTcpClient

    client = ModbusTcpClient("127.0.0.1", port=modbus_server.port, timeout=2, retries=0)
    try:
        assert client.connect()
        for value in (True, True, False, True, False):  # 1 -> 1 is no new edge
            assert not client.write_coil(COIL, value, device_id=UNIT).isError()
        # FC 15 over COIL-1..COIL+1: rises COIL with its neighbours, then one write touching only COIL+1.
        assert not client.write_coils(COIL - 1, [True, True, True], device_id=UNIT).isError()
        assert not client.write_coils(COIL + 1, [False], device_id=UNIT).isError()
        assert not client.write_registers(BASE, [5, 6, 7], device_id=UNIT).isError()
        assert not client.read_coils(COIL, count=1, device_id=UNIT).isError()  # reads are not writes
    finally:
        client.close()
    assert modbus_server.rising_edges == 3
    assert [v for _, v in modbus_server.coil_edges(COIL)] == [1, 0, 1, 0, 1]
    assert len(modbus_server.pulses_ms(COIL)) == 2
    assert [(fc, address) for _, fc, address, _ in modbus_server.writes] == [
        (5, COIL), (5, COIL), (5, COIL), (5, COIL), (5, COIL), (15, COIL - 1), (15, COIL + 1), (16, BASE),
    ]  # fmt: skip
    assert modbus_server.registers == {BASE: 5, BASE + 1: 6, BASE + 2: 7}

    # A restarted PLC starts with its coils off: the next 1 is a new edge; the counts are kept.
    modbus_server.stop()
    modbus_server.start()
    client = ModbusTcpClient("127.0.0.1", port=modbus_server.port, timeout=2, retries=0)
    try:
        assert client.connect()
        assert not client.write_coil(COIL, True, device_id=UNIT).isError()
    finally:
        client.close()
    assert modbus_server.rising_edges == 4


@pytest.mark.plc
def test_simulator_port_taken_is_one_line_and_stop_is_safe_twice(modbus_server: ModbusPlcSimulator) -> None:
    second = ModbusPlcSimulator(port=modbus_server.port)
    assert second.address == f"127.0.0.1:{modbus_server.port}"
    with pytest.raises(OutputError, match=f"127.0.0.1:{modbus_server.port} failed to start") as info:
        second.start(timeout_s=5)
    assert "\n" not in str(info.value)
    assert not second.running
    second.stop()
    with pytest.raises(OutputError, match="already running"):
        modbus_server.start()
    modbus_server.stop()
    modbus_server.stop()
    assert not modbus_server.running


def test_simulator_without_pymodbus_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes `import pymodbus` raise ImportError, as if it were not installed.
    monkeypatch.setitem(sys.modules, "pymodbus", None)
    plc = ModbusPlcSimulator()
    with pytest.raises(OutputError, match=r"needs pymodbus .*pip install '\.\[plc\]'"):
        plc.start()
    assert not plc.running
