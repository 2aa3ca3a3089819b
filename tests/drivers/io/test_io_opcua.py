"""The OPC UA output against a real asyncua server on opc.tcp://127.0.0.1:<free port>.

One server per module (it takes about a second to build its address space),
running in a thread with its own event loop; a PostWrite callback records
every external write with the server's time, so pulses are measured where a
PLC would see them. The outage test stops and restarts the same server.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from drivers.io.opcua import OpcUaOutput, OpcUaOutputSettings, fit_integer
from drivers.verdict import Result, Verdict

pytest.importorskip("asyncua")

from asyncua import Server, ua
from asyncua.common.callback import CallbackType

NAMESPACE = "urn:aoi:test-line"

VARIABLES: dict[str, tuple[Any, Any]] = {
    "Reject": (False, ua.VariantType.Boolean),
    "Result": (0, ua.VariantType.Int16),
    "FrameId": (0, ua.VariantType.UInt32),
    "PartId": ("", ua.VariantType.String),
    "Score": (0.0, ua.VariantType.Double),
    "Heartbeat": (False, ua.VariantType.Boolean),
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def verdict(frame_id: int, result: Result, *, part_id: str = "", score: float = 0.5) -> Verdict:
    return Verdict(
        frame_id=frame_id, part_id=part_id, timestamp_s=time.monotonic(), result=result, score=score
    )


def wait_for(predicate: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.005)


class OpcUaTestServer:
    """An asyncua server in a thread; `writes` holds (time, variable name, value) per external write."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"opc.tcp://127.0.0.1:{self.port}/aoi"
        self.writes: list[tuple[float, str, Any]] = []
        self._names: dict[Any, str] = {}
        self._server: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    def _on_write(self, event: Any, _dispatcher: Any) -> None:
        if not event.is_external:
            return
        now = time.monotonic()
        for item in event.request_params.NodesToWrite:
            name = self._names.get(item.NodeId)
            if name is not None:
                self.writes.append((now, name, item.Value.Value.Value))

    async def _main(self) -> None:
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        ns = await server.register_namespace(NAMESPACE)
        obj = await server.nodes.objects.add_object(ns, "AOI")
        for name, (initial, vtype) in VARIABLES.items():
            var = await obj.add_variable(ns, name, initial, varianttype=vtype)
            await var.set_writable()
            self._names[var.nodeid] = name
        server.subscribe_server_callback(CallbackType.PostWrite, self._on_write)
        self._server = server
        self._stop = asyncio.Event()
        await server.start()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await server.stop()

    def _thread_main(self) -> None:
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
        self._thread = threading.Thread(target=self._thread_main, name="test-opcua-server", daemon=True)
        self._thread.start()
        assert self._ready.wait(20), "OPC UA test server did not start"
        if self._error is not None:
            raise self._error

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def go_down(self) -> None:
        """Stop listening and drop every session (the PLC is switched off)."""
        self._call(self._server.stop())

    def come_back(self) -> None:
        self._call(self._server.start())

    def shutdown(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)
        assert not self._thread.is_alive(), "OPC UA test server did not stop"
        self._thread = None

    def values(self, name: str) -> list[Any]:
        return [value for _, n, value in list(self.writes) if n == name]

    def pulses_ms(self) -> list[float]:
        edges: list[tuple[float, bool]] = []
        state = False
        for t, name, value in list(self.writes):
            if name == "Reject" and bool(value) != state:
                state = bool(value)
                edges.append((t, state))
        return [(b[0] - a[0]) * 1000.0 for a, b in itertools.pairwise(edges) if a[1] and not b[1]]


@pytest.fixture(scope="module")
def opcua_server_module() -> Iterator[OpcUaTestServer]:
    server = OpcUaTestServer()
    server.start()
    try:
        yield server
    finally:
        server.shutdown()


@pytest.fixture
def opcua_server(opcua_server_module: OpcUaTestServer) -> OpcUaTestServer:
    opcua_server_module.writes.clear()
    return opcua_server_module


def settings_for(server: OpcUaTestServer, **overrides: Any) -> OpcUaOutputSettings:
    values: dict[str, Any] = {
        "endpoint": server.endpoint,
        "namespace_uri": NAMESPACE,
        "object_path": ["AOI"],
        "pulse_ms": 40.0,
        "pulse_gap_ms": 10.0,
        "heartbeat_period_ms": 50.0,
        "connect_timeout_s": 2.0,
        "io_timeout_s": 0.5,
        "max_age_ms": 400.0,
        "queue_size": 8,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.2,
    }
    values.update(overrides)
    return OpcUaOutputSettings(**values)


def test_fit_integer() -> None:
    assert fit_integer(2**32 + 5, "UInt32") == 5
    assert fit_integer(2**31 + 5, "Int32") == 5
    assert fit_integer(0x8000_1234, "Int32", twos_complement=True) == 0x8000_1234 - 2**32
    assert fit_integer(70_000, "Int64") == 70_000


@pytest.mark.plc
def test_reject_pulse_result_frame_and_part(opcua_server: OpcUaTestServer) -> None:
    out = OpcUaOutput(settings_for(opcua_server))
    try:
        assert out.connect()
        out.publish(verdict(2**32 + 9, Result.NG, part_id="LOT-9", score=1.75))
        out.publish(verdict(11, Result.OK, part_id="12"))
        out.publish(verdict(12, Result.UNINSPECTED, score=float("nan")))
        assert out.wait_idle(timeout_s=3)
        assert opcua_server.values("Result") == [1, 0, 2]
        assert opcua_server.values("FrameId") == [9, 11, 12]  # UInt32 wraps at 2**32
        assert opcua_server.values("PartId") == ["LOT-9", "12", ""]
        assert opcua_server.values("Score") == [1.75, 0.5, -1.0]
        widths = opcua_server.pulses_ms()
        assert len(widths) == 2, opcua_server.writes
        for width in widths:
            assert 0.5 * 40 <= width <= 5 * 40, widths
        assert out.status().delivered == 3 and out.status().alarm == ""
    finally:
        out.close()
    assert opcua_server.values("Reject")[-1] is False


@pytest.mark.plc
def test_heartbeat_toggles(opcua_server: OpcUaTestServer) -> None:
    out = OpcUaOutput(settings_for(opcua_server, heartbeat_period_ms=30.0))
    try:
        assert out.connect()
        time.sleep(0.35)
    finally:
        out.close()
    beats = opcua_server.values("Heartbeat")
    assert len(beats) >= 5, beats
    assert all(a != b for a, b in itertools.pairwise(beats[1:])), beats


@pytest.mark.plc
def test_missing_variable_is_a_clear_alarm(opcua_server: OpcUaTestServer) -> None:
    out = OpcUaOutput(settings_for(opcua_server, object_path=["NoSuchObject"]))
    try:
        assert not out.connect()
        status = out.status()
        assert "NoSuchObject" in status.last_error and status.alarm
    finally:
        out.close()


@pytest.mark.plc
def test_server_down_then_back(opcua_server: OpcUaTestServer) -> None:
    out = OpcUaOutput(settings_for(opcua_server))
    try:
        assert out.connect()
        opcua_server.go_down()
        wait_for(lambda: not out.status().connected, timeout_s=5, what="the loss to be noticed")
        assert "connection lost" in out.status().alarm

        start = time.perf_counter()
        for i in range(100):
            out.publish(verdict(i, Result.NG))
        assert time.perf_counter() - start < 0.25

        wait_for(lambda: out.status().queued == 0, timeout_s=3, what="queued verdicts to expire")
        assert out.status().undelivered == 100

        opcua_server.come_back()
        wait_for(lambda: out.status().connected, timeout_s=5, what="the reconnect")
        assert out.status().reconnects == 1 and out.status().alarm == ""
        out.publish(verdict(4242, Result.NG))
        assert out.wait_idle(timeout_s=3)
        assert opcua_server.values("FrameId")[-1] == 4242
        assert len(opcua_server.pulses_ms()) == 1
    finally:
        out.close()
