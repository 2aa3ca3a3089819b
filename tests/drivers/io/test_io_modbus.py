"""The Modbus TCP output against a real pymodbus server on 127.0.0.1.

The server runs in its own thread and event loop; a SimDevice action records
every write with the server's receive time, so pulse widths and heartbeat
toggles are observed where a PLC would see them.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("pymodbus")

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

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
from drivers.verdict import Result, Verdict

FC_WRITE_COIL, FC_WRITE_REGISTER, FC_WRITE_REGISTERS = 5, 6, 16
UNIT = 7
COIL = 3
BASE = 10


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def verdict(frame_id: int, result: Result, *, part_id: str = "", score: float = 0.5) -> Verdict:
    return Verdict(
        frame_id=frame_id, part_id=part_id, timestamp_s=time.monotonic(), result=result, score=score
    )


def wait_for(predicate: Any, *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.005)


class ModbusTestServer:
    """A pymodbus TCP server on 127.0.0.1 in a thread; records (time, fc, address, values) per write."""

    def __init__(self, *, port: int, device_id: int) -> None:
        self.port = port
        self.device_id = device_id
        self.writes: list[tuple[float, int, int, list[int]]] = []
        self.registers: dict[int, int] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> None:
        if set_values is not None and function_code in (FC_WRITE_COIL, FC_WRITE_REGISTER, FC_WRITE_REGISTERS):
            values = [int(v) for v in set_values]
            self.writes.append((time.monotonic(), function_code, address, values))
            if function_code != FC_WRITE_COIL:
                for i, v in enumerate(values):
                    self.registers[address + i] = v
        return None

    async def _main(self) -> None:
        device = SimDevice(
            id=self.device_id,
            simdata=(
                [SimData(0, count=32, values=False, datatype=DataType.BITS)],
                [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                [SimData(0, count=64, values=0, datatype=DataType.REGISTERS)],
                [SimData(0, count=16, values=0, datatype=DataType.REGISTERS)],
            ),
            action=self._action,
        )
        server = ModbusTcpServer(device, address=("127.0.0.1", self.port))
        self._stop = asyncio.Event()
        await server.serve_forever(background=True)
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await server.shutdown()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    def start(self) -> None:
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="test-modbus-server", daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "Modbus test server did not start"
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        assert not self._thread.is_alive(), "Modbus test server did not stop"
        self._thread = None

    def coil_edges(self, coil: int) -> list[tuple[float, int]]:
        """(time, value) for every write of `coil` that changed its value (starting from 0)."""
        edges: list[tuple[float, int]] = []
        state = 0
        for t, fc, address, values in list(self.writes):
            if fc == FC_WRITE_COIL and address == coil and values[0] != state:
                state = values[0]
                edges.append((t, state))
        return edges

    def pulses_ms(self, coil: int) -> list[float]:
        edges = self.coil_edges(coil)
        return [
            (edges[i + 1][0] - edges[i][0]) * 1000.0
            for i in range(len(edges) - 1)
            if edges[i][1] == 1 and edges[i + 1][1] == 0
        ]


@pytest.fixture
def modbus_server() -> Iterator[ModbusTestServer]:
    server = ModbusTestServer(port=free_port(), device_id=UNIT)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def settings_for(server: ModbusTestServer, **overrides: Any) -> ModbusOutputSettings:
    values: dict[str, Any] = {
        "port": server.port,
        "device_id": UNIT,
        "reject_coil": COIL,
        "register_base": BASE,
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
    values.update(overrides)
    return ModbusOutputSettings(**values)


def test_register_values_and_word_order() -> None:
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
def test_reject_pulse_result_codes_and_frame_echo(modbus_server: ModbusTestServer) -> None:
    out = ModbusOutput(settings_for(modbus_server))
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
        assert r[BASE + RESULT] == 0 and r[BASE + FRAME_ID] == 70_001 & 0xFFFF

        out.publish(verdict(70_002, Result.UNINSPECTED, score=float("nan")))
        assert out.wait_idle(timeout_s=2)
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
def test_heartbeat_toggles(modbus_server: ModbusTestServer) -> None:
    out = ModbusOutput(settings_for(modbus_server, heartbeat_period_ms=30.0))
    try:
        assert out.connect()
        time.sleep(0.35)
    finally:
        out.close()
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
def test_server_down_then_back(modbus_server: ModbusTestServer, caplog: pytest.LogCaptureFixture) -> None:
    out = ModbusOutput(settings_for(modbus_server))
    published = 0
    try:
        assert out.connect()
        out.publish(verdict(1, Result.NG))
        published += 1
        assert out.wait_idle(timeout_s=2)

        modbus_server.stop()
        wait_for(lambda: not out.status().connected, timeout_s=3, what="the loss to be noticed")
        status = out.status()
        assert "connection lost" in status.alarm and status.last_error

        # The inspection side never waits for the PLC.
        start = time.perf_counter()
        for i in range(100):
            out.publish(verdict(100 + i, Result.NG))
        elapsed = time.perf_counter() - start
        published += 100
        assert elapsed < 0.25, f"100 publishes took {elapsed:.3f} s while the PLC was down"

        # Nothing is silent: every verdict is delivered, undelivered or still queued...
        wait_for(lambda: out.status().queued == 0, timeout_s=3, what="queued verdicts to expire")
        status = out.status()
        assert status.undelivered == 100 and status.delivered == 1
        assert status.delivered + status.undelivered + status.queued == published
        assert sum("connection lost" in r.getMessage() for r in caplog.records) == 1  # once per outage

        modbus_server.start()
        wait_for(lambda: out.status().connected, timeout_s=3, what="the reconnect")
        status = out.status()
        assert status.reconnects == 1 and status.alarm == ""

        out.publish(verdict(500, Result.NG))
        published += 1
        assert out.wait_idle(timeout_s=2)
        assert modbus_server.registers[BASE + FRAME_ID] == 500
        assert len(modbus_server.pulses_ms(COIL)) >= 1
        assert out.status().delivered == 2
    finally:
        out.close()


@pytest.mark.plc
def test_verdicts_queued_during_a_short_outage_are_sent_after_reconnect(
    modbus_server: ModbusTestServer,
) -> None:
    out = ModbusOutput(settings_for(modbus_server, max_age_ms=3000.0, heartbeat_period_ms=20.0))
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
def test_wrong_unit_id_raises_the_alarm(modbus_server: ModbusTestServer) -> None:
    out = ModbusOutput(settings_for(modbus_server, device_id=UNIT + 1, max_age_ms=200.0))
    try:
        out.connect()
        out.publish(verdict(1, Result.NG))
        wait_for(lambda: out.status().undelivered == 1, timeout_s=3, what="the verdict to expire")
        status = out.status()
        assert not status.connected and status.alarm and "unit" in status.last_error
    finally:
        out.close()
