"""The S7 output against python-snap7's own server on 127.0.0.1 (a high port, no privileges needed).

The server's event callback runs right after each write, in the server's
client thread; it snapshots the DB, so pulse widths are measured where a PLC
would see them.
"""

from __future__ import annotations

import itertools
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest

from drivers.io.base import part_id_code
from drivers.io.s7 import S7Output, S7OutputSettings, coalesce
from drivers.verdict import Result, Verdict

pytest.importorskip("snap7")

import snap7
from snap7.type import SrvArea, SrvEvent

EVC_DATA_WRITE = 0x00040000
DB = 100


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
        edges: list[tuple[float, int]] = []
        state = 0
        for t, data in list(self.snapshots):
            value = (data[byte] >> bit) & 1
            if value != state:
                state = value
                edges.append((t, value))
        return edges

    def pulses_ms(self, byte: int, bit: int) -> list[float]:
        edges = self.bit_edges(byte, bit)
        return [(b[0] - a[0]) * 1000.0 for a, b in itertools.pairwise(edges) if a[1] == 1 and b[1] == 0]

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
    try:
        yield server
    finally:
        server.stop()


def settings_for(server: S7TestServer, **overrides: Any) -> S7OutputSettings:
    values: dict[str, Any] = {
        "port": server.port,
        "db_number": DB,
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
    return S7OutputSettings(**values)


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
def test_reject_bit_pulse_result_and_frame_id(s7_server: S7TestServer) -> None:
    out = S7Output(settings_for(s7_server))
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
def test_heartbeat_bit_toggles_without_touching_reject(s7_server: S7TestServer) -> None:
    out = S7Output(settings_for(s7_server, heartbeat_period_ms=30.0))
    try:
        assert out.connect()
        time.sleep(0.35)
    finally:
        out.close()
    beats = s7_server.bit_edges(0, 1)
    assert len(beats) >= 5, beats
    assert s7_server.bit_edges(0, 0) == []


@pytest.mark.plc
def test_plc_down_then_back(s7_server: S7TestServer) -> None:
    out = S7Output(settings_for(s7_server))
    try:
        assert out.connect()
        s7_server.stop()
        wait_for(lambda: not out.status().connected, timeout_s=3, what="the loss to be noticed")
        assert "connection lost" in out.status().alarm

        start = time.perf_counter()
        for i in range(100):
            out.publish(verdict(i, Result.NG))
        assert time.perf_counter() - start < 0.25

        wait_for(lambda: out.status().queued == 0, timeout_s=3, what="queued verdicts to expire")
        status = out.status()
        assert status.undelivered == 100 and status.delivered == 0

        s7_server.start()
        wait_for(lambda: out.status().connected, timeout_s=3, what="the reconnect")
        assert out.status().reconnects == 1 and out.status().alarm == ""
        out.publish(verdict(777, Result.NG))
        assert out.wait_idle(timeout_s=2)
        assert s7_server.int32(4) == 777
        assert len(s7_server.pulses_ms(0, 0)) == 1
    finally:
        out.close()
