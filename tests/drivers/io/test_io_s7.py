"""The S7 output against python-snap7's own server on 127.0.0.1 (a high port, no privileges needed).

The server's event callback runs right after each write, in the server's
client thread; it snapshots the DB, so pulse widths are measured where a PLC
would see them.
"""

from __future__ import annotations

import functools
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from drivers.io.base import part_id_code
from drivers.io.s7 import S7Output, S7OutputSettings, coalesce
from drivers.io.simulators import free_port, level_edges, pulse_widths_ms
from drivers.verdict import Result, Verdict

pytest.importorskip("snap7")

import snap7
from snap7.type import SrvArea, SrvEvent

EVC_DATA_WRITE = 0x00040000
DB = 100

VerdictFactory = Callable[..., Verdict]


class S7TestServer:
    """snap7.Server bound to 127.0.0.1:<port> with one DB; snapshots the DB after every write."""

    def __init__(self, *, port: int) -> None:
        self.port = port
        self.db = bytearray(32)
        self.snapshots: list[tuple[float, bytes]] = []
        self._server: Any = None

    def _on_event(self, event: SrvEvent) -> None:
        if event.EvtCode == EVC_DATA_WRITE:
            self.snapshots.append((time.monotonic(), bytes(self.db)))

    def start(self) -> None:
        server = snap7.Server(log=False)
        server.register_area(SrvArea.DB, DB, self.db)
        server.set_events_callback(self._on_event)
        server.start_to("127.0.0.1", self.port)
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def bit_edges(self, byte: int, bit: int) -> list[tuple[float, int]]:
        return level_edges((t, (data[byte] >> bit) & 1) for t, data in list(self.snapshots))

    def pulses_ms(self, byte: int, bit: int) -> list[float]:
        return pulse_widths_ms(self.bit_edges(byte, bit))

    def int16(self, offset: int) -> int:
        return int(struct.unpack_from(">h", self.db, offset)[0])

    def int32(self, offset: int) -> int:
        return int(struct.unpack_from(">i", self.db, offset)[0])

    def real(self, offset: int) -> float:
        return float(struct.unpack_from(">f", self.db, offset)[0])


@pytest.fixture
def s7_server() -> Iterator[S7TestServer]:
    server = S7TestServer(port=free_port())
    server.start()
    yield server  # pytest runs the rest whatever the test's outcome
    server.stop()


@pytest.fixture
def settings_for(
    s7_server: S7TestServer, fast_settings: Callable[..., Any]
) -> Callable[..., S7OutputSettings]:
    """`settings_for(**overrides)`: settings for the test server, fast test timings."""
    return functools.partial(fast_settings, S7OutputSettings, port=s7_server.port, db_number=DB)


def test_layout_is_validated() -> None:
    with pytest.raises(ValueError, match="even"):
        S7OutputSettings(result_offset=3)
    with pytest.raises(ValueError, match="overlaps"):
        S7OutputSettings(frame_id_offset=2)
    with pytest.raises(ValueError, match="different bits"):
        S7OutputSettings(heartbeat_bit=0)


def test_coalesce_merges_contiguous_fields() -> None:
    assert coalesce({4: b"\x01\x02", 2: b"\x00\x00", 10: b"\x09"}) == [
        (2, b"\x00\x00\x01\x02"),
        (10, b"\x09"),
    ]


@pytest.mark.plc
def test_reject_bit_pulse_result_and_frame_id(
    s7_server: S7TestServer, verdict: VerdictFactory, settings_for: Callable[..., S7OutputSettings]
) -> None:
    out = S7Output(settings_for())
    try:
        assert out.connect()
        out.publish(verdict(123_456, Result.NG, part_id="987", score=1.25))
        assert out.wait_idle(timeout_s=2)
        assert s7_server.int16(2) == 1
        assert s7_server.int32(4) == 123_456
        assert s7_server.int32(8) == 987
        assert s7_server.real(12) == pytest.approx(1.25)
        assert struct.unpack_from(">H", s7_server.db, 16)[0] == 1

        out.publish(verdict(123_457, Result.OK, part_id="LOT-7"))
        assert out.wait_idle(timeout_s=2)
        assert s7_server.int16(2) == 0 and s7_server.int32(4) == 123_457
        assert s7_server.int32(8) < 0  # hashed text id: bit 31 set
        assert s7_server.int32(8) & 0xFFFF == part_id_code("LOT-7") & 0xFFFF

        out.publish(verdict(123_458, Result.UNINSPECTED, score=float("nan")))
        assert out.wait_idle(timeout_s=2)
        assert s7_server.int16(2) == 2 and s7_server.real(12) == -1.0

        widths = s7_server.pulses_ms(0, 0)
        assert len(widths) == 2, s7_server.bit_edges(0, 0)
        for width in widths:
            assert 0.5 * 40 <= width <= 5 * 40, widths
        assert out.status().delivered == 3
    finally:
        out.close()
    assert s7_server.db[0] & 1 == 0


@pytest.mark.plc
def test_heartbeat_bit_toggles_without_touching_reject(
    s7_server: S7TestServer, settings_for: Callable[..., S7OutputSettings], run_connected: Callable[..., None]
) -> None:
    run_connected(S7Output(settings_for(heartbeat_period_ms=30.0)), 0.35)
    beats = s7_server.bit_edges(0, 1)
    assert len(beats) >= 5, beats
    assert s7_server.bit_edges(0, 0) == []


@pytest.mark.plc
def test_plc_down_then_back(
    s7_server: S7TestServer,
    verdict: VerdictFactory,
    settings_for: Callable[..., S7OutputSettings],
    check_outage: Callable[..., None],
) -> None:
    out = S7Output(settings_for())
    try:
        assert out.connect()
        check_outage(out, go_down=s7_server.stop, come_back=s7_server.start)
        out.publish(verdict(777, Result.NG))
        assert out.wait_idle(timeout_s=2)
        assert s7_server.int32(4) == 777
        assert len(s7_server.pulses_ms(0, 0)) == 1
    finally:
        out.close()
