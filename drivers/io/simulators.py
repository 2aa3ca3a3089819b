"""PLC stand-ins on 127.0.0.1: a Modbus TCP server that records what the appliance writes.

`aoi demo` runs the whole line against `ModbusPlcSimulator` instead of a PLC,
and the output tests use the same server to see every write where a PLC would
see it, with the server's receive time. `AsyncServerThread` is the part every
asyncio-based stand-in shares: the server runs on its own thread and event
loop, `start()` returns once it listens (or raises a one-line `OutputError`),
and `stop()` shuts it down and joins the thread. `stop()` then `start()` on the
same port simulates a PLC going down and coming back.

The servers bind 127.0.0.1 only: they are for demos and tests on this machine,
never for the machine network. pymodbus is imported only when a Modbus
simulator starts (`pip install '.[plc]'`).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import importlib
import itertools
import socket
import threading
import time
from collections.abc import Coroutine, Iterable
from typing import Any, ClassVar, Self

from drivers.errors import OutputError

HOST = "127.0.0.1"

#: Modbus function codes that write coils, and those that write holding registers.
COIL_WRITES = frozenset({5, 15})
REGISTER_WRITES = frozenset({6, 16, 23})


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def level_edges(samples: Iterable[tuple[float, int]]) -> list[tuple[float, int]]:
    """(time, level) at every change of a signal given as (time, level) samples; it starts at 0."""
    edges: list[tuple[float, int]] = []
    state = 0
    for t, value in samples:
        if value != state:
            state = value
            edges.append((t, value))
    return edges


def pulse_widths_ms(edges: Iterable[tuple[float, int]]) -> list[float]:
    """Width (ms) of every complete pulse, from `level_edges` output: a rise followed by a fall."""
    return [(b[0] - a[0]) * 1000.0 for a, b in itertools.pairwise(edges) if a[1] and not b[1]]


class AsyncServerThread(abc.ABC):
    """An asyncio server on 127.0.0.1, run on its own thread and event loop.

    A subclass builds its server and starts it listening on `HOST`:`port` in
    `_open()`, and shuts it down in `_close()`; both run on the server's loop.
    `start()` imports the library named in `requires` first, so a missing one
    is a one-line `OutputError`.
    """

    #: What the server stands for, in thread names and error messages.
    label = "PLC simulator"
    #: (module, install command) of the library the server needs, or None.
    requires: ClassVar[tuple[str, str] | None] = None

    def __init__(self, *, port: int | None = None) -> None:
        self.port = free_port() if port is None else port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"{HOST}:{self.port}"

    def _require(self) -> None:
        if self.requires is None:
            return
        module, install = self.requires
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise OutputError(f"the {self.label} needs {module} ({exc}); install it with {install}") from exc

    @abc.abstractmethod
    async def _open(self) -> None:
        """Build the server and start listening on 127.0.0.1:`port` (on the server's loop)."""

    @abc.abstractmethod
    async def _close(self) -> None:
        """Stop listening and drop every connection (on the server's loop)."""

    async def _main(self) -> None:
        await self._open()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self._close()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._task = loop.create_task(self._main())
        try:
            loop.run_until_complete(self._task)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    @property
    def running(self) -> bool:
        """Whether the server thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, *, timeout_s: float = 10.0) -> None:
        """Serve on 127.0.0.1:`port`; `OutputError` when the library is missing or the server fails."""
        if self._thread is not None:
            raise OutputError(f"{self.label} on {self.address} is already running; stop() it first")
        self._require()
        self._ready.clear()
        self._error = None
        self._loop = self._task = None
        self._stop = asyncio.Event()
        name = self.label.lower().replace(" ", "-")
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            self.stop(timeout_s=timeout_s)
            raise OutputError(f"{self.label} on {self.address} did not start within {timeout_s} s")
        if self._error is not None:
            error = self._error
            self.stop(timeout_s=timeout_s)
            raise OutputError(f"{self.label} on {self.address} failed to start: {error}") from error

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """Shut the server down and join its thread. Safe to call twice, or before `start()`."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop = self._loop
        if loop is not None and not loop.is_closed():
            # RuntimeError: the loop closed in between, so the thread is ending anyway.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._request_stop)
        thread.join(timeout_s)
        if thread.is_alive():
            raise OutputError(f"{self.label} on {self.address} did not stop within {timeout_s} s")

    def _request_stop(self) -> None:
        # On the server's loop. A server still starting (start() timed out) is cancelled instead.
        if self._ready.is_set():
            self._stop.set()
        elif self._task is not None:
            self._task.cancel()

    def call(self, coro: Coroutine[Any, Any, Any], *, timeout_s: float = 10.0) -> Any:
        """Run `coro` on the server's loop from another thread and return its result."""
        loop = self._loop
        if loop is None or not self.running:
            coro.close()
            raise OutputError(f"{self.label} on {self.address} is not running")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=timeout_s)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ModbusPlcSimulator(AsyncServerThread):
    """A Modbus TCP server on 127.0.0.1 standing in for the PLC.

    Every write reaches `_on_write` (the datastore's action callback), where a
    PLC would see it: it is recorded as (receive time, function code, first
    address, values), holding-register writes update `registers`, and the
    rising edges (0 -> 1) of `reject_coil` are counted. A restarted simulator
    starts with its coils off; the record and the counts are kept across
    restarts.
    """

    label = "PLC simulator"
    requires = ("pymodbus", "pip install '.[plc]'")

    def __init__(
        self,
        *,
        port: int | None = None,
        device_id: int = 1,
        reject_coil: int = 0,
        coils: int = 64,
        holding_registers: int = 64,
    ) -> None:
        super().__init__(port=port)
        self.device_id = device_id
        self.reject_coil = reject_coil
        self.coils = coils
        self.holding_registers = holding_registers
        self._lock = threading.Lock()
        self._writes: list[tuple[float, int, int, list[int]]] = []
        self._registers: dict[int, int] = {}
        self._coil = 0
        self._rising = 0
        self._server: Any = None

    @property
    def rising_edges(self) -> int:
        """Reject pulses received: 0 -> 1 transitions of the reject coil."""
        with self._lock:
            return self._rising

    @property
    def writes(self) -> list[tuple[float, int, int, list[int]]]:
        """Every write so far: (monotonic receive time, function code, first address, values)."""
        with self._lock:
            return list(self._writes)

    @property
    def registers(self) -> dict[int, int]:
        """The last value written to each holding register, by address."""
        with self._lock:
            return dict(self._registers)

    def coil_edges(self, coil: int) -> list[tuple[float, int]]:
        """(time, value) of every write that changed `coil` (starting from 0)."""
        samples = [
            (t, values[coil - address])
            for t, fc, address, values in self.writes
            if fc in COIL_WRITES and address <= coil < address + len(values)
        ]
        return level_edges(samples)

    def pulses_ms(self, coil: int) -> list[float]:
        """Width (ms) of every complete pulse on `coil`, as the server received it."""
        return pulse_widths_ms(self.coil_edges(coil))

    async def _on_write(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> None:
        if set_values is None:  # a read
            return None
        values = [int(v) for v in set_values]
        with self._lock:
            self._writes.append((time.monotonic(), function_code, address, values))
            # `address` is the request's first coil or register (`start_address` is the datastore block's).
            if function_code in REGISTER_WRITES:
                for i, value in enumerate(values):
                    self._registers[address + i] = value
            elif function_code in COIL_WRITES and address <= self.reject_coil < address + len(values):
                value = values[self.reject_coil - address]
                if value and not self._coil:
                    self._rising += 1
                self._coil = value
        return None

    async def _open(self) -> None:
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        with self._lock:
            self._coil = 0  # a restarted PLC starts with its coils off
        device = SimDevice(
            id=self.device_id,
            simdata=(
                [SimData(0, count=self.coils, values=False, datatype=DataType.BITS)],
                [SimData(0, count=16, values=False, datatype=DataType.BITS)],
                [SimData(0, count=self.holding_registers, values=0, datatype=DataType.REGISTERS)],
                [SimData(0, count=16, values=0, datatype=DataType.REGISTERS)],
            ),
            action=self._on_write,
        )
        self._server = ModbusTcpServer(device, address=(HOST, self.port))
        await self._server.serve_forever(background=True)

    async def _close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()
