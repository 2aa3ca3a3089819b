"""The OPC UA output against a real asyncua server on opc.tcp://127.0.0.1:<free port>.

One server per module (it takes about a second to build its address space),
running in a thread with its own event loop; a PostWrite callback records
every external write with the server's time, so pulses are measured where a
PLC would see them. The outage test stops and restarts the same server.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from drivers.io.opcua import OpcUaOutput, OpcUaOutputSettings, fit_integer
from drivers.io.simulators import AsyncServerThread, level_edges, pulse_widths_ms
from drivers.verdict import Result, Verdict

pytest.importorskip("asyncua")

from asyncua import Server, ua
from asyncua.common.callback import CallbackType

NAMESPACE = "urn:aoi:test-line"

VerdictFactory = Callable[..., Verdict]

VARIABLES: dict[str, tuple[Any, Any]] = {
    "Reject": (False, ua.VariantType.Boolean),
    "Result": (0, ua.VariantType.Int16),
    "FrameId": (0, ua.VariantType.UInt32),
    "PartId": ("", ua.VariantType.String),
    "Score": (0.0, ua.VariantType.Double),
    "Heartbeat": (False, ua.VariantType.Boolean),
}


class OpcUaTestServer(AsyncServerThread):
    """An asyncua server on 127.0.0.1; `writes` holds (time, variable name, value) per external write."""

    label = "OPC UA test server"
    requires = ("asyncua", "pip install '.[plc]'")

    def __init__(self) -> None:
        super().__init__()
        self.endpoint = f"opc.tcp://{self.address}/aoi"
        self.writes: list[tuple[float, str, Any]] = []
        self._names: dict[Any, str] = {}
        self._server: Any = None

    def _on_write(self, event: Any, _dispatcher: Any) -> None:
        if not event.is_external:
            return
        now = time.monotonic()
        for item in event.request_params.NodesToWrite:
            name = self._names.get(item.NodeId)
            if name is not None:
                self.writes.append((now, name, item.Value.Value.Value))

    async def _open(self) -> None:
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
        await server.start()

    async def _close(self) -> None:
        await self._server.stop()

    def go_down(self) -> None:
        """Stop listening and drop every session (the PLC is switched off)."""
        self.call(self._server.stop())

    def come_back(self) -> None:
        self.call(self._server.start())

    def values(self, name: str) -> list[Any]:
        return [value for _, n, value in list(self.writes) if n == name]

    def pulses_ms(self) -> list[float]:
        samples = [(t, int(bool(value))) for t, name, value in list(self.writes) if name == "Reject"]
        return pulse_widths_ms(level_edges(samples))


@pytest.fixture(scope="module")
def opcua_server_module() -> Iterator[OpcUaTestServer]:
    server = OpcUaTestServer()
    server.start(timeout_s=20)
    try:
        yield server
    finally:
        server.stop(timeout_s=20)


@pytest.fixture
def opcua_server(opcua_server_module: OpcUaTestServer) -> OpcUaTestServer:
    opcua_server_module.writes.clear()
    return opcua_server_module


@pytest.fixture
def settings_for(
    opcua_server: OpcUaTestServer, fast_settings: Callable[..., Any]
) -> Callable[..., OpcUaOutputSettings]:
    """`settings_for(**overrides)`: settings for the test server, fast test timings."""
    return functools.partial(
        fast_settings,
        OpcUaOutputSettings,
        endpoint=opcua_server.endpoint,
        namespace_uri=NAMESPACE,
        object_path=["AOI"],
        connect_timeout_s=2.0,
    )


def test_fit_integer() -> None:
    assert fit_integer(2**32 + 5, "UInt32") == 5
    assert fit_integer(2**31 + 5, "Int32") == 5
    assert fit_integer(0x8000_1234, "Int32", twos_complement=True) == 0x8000_1234 - 2**32
    assert fit_integer(70_000, "Int64") == 70_000


@pytest.mark.plc
def test_reject_pulse_result_frame_and_part(
    opcua_server: OpcUaTestServer, verdict: VerdictFactory, settings_for: Callable[..., OpcUaOutputSettings]
) -> None:
    out = OpcUaOutput(settings_for())
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
def test_heartbeat_toggles(
    opcua_server: OpcUaTestServer,
    settings_for: Callable[..., OpcUaOutputSettings],
    run_connected: Callable[..., None],
) -> None:
    run_connected(OpcUaOutput(settings_for(heartbeat_period_ms=30.0)), 0.35)
    beats = opcua_server.values("Heartbeat")
    assert len(beats) >= 5, beats
    assert all(a != b for a, b in itertools.pairwise(beats[1:])), beats


@pytest.mark.plc
def test_missing_variable_is_a_clear_alarm(
    opcua_server: OpcUaTestServer, settings_for: Callable[..., OpcUaOutputSettings]
) -> None:
    out = OpcUaOutput(settings_for(object_path=["NoSuchObject"]))
    try:
        assert not out.connect()
        status = out.status()
        assert "NoSuchObject" in status.last_error and status.alarm
    finally:
        out.close()


@pytest.mark.plc
def test_server_down_then_back(
    opcua_server: OpcUaTestServer,
    verdict: VerdictFactory,
    settings_for: Callable[..., OpcUaOutputSettings],
    check_outage: Callable[..., None],
) -> None:
    out = OpcUaOutput(settings_for())
    try:
        assert out.connect()
        check_outage(out, go_down=opcua_server.go_down, come_back=opcua_server.come_back, link_timeout_s=5)
        out.publish(verdict(4242, Result.NG))
        assert out.wait_idle(timeout_s=3)
        assert opcua_server.values("FrameId")[-1] == 4242
        assert len(opcua_server.pulses_ms()) == 1
    finally:
        out.close()
