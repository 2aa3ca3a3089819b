"""OPC UA output: writes the verdict signals into variables of the PLC's OPC UA server (asyncua).

The appliance is an OPC UA client. The PLC programmer creates one object
(e.g. ``AOI`` under ``Objects``, reached by `object_path`) in the namespace
`namespace_uri`, holding these variables (browse names in that namespace):

===========  =========================  ====================================================
variable     data type                  meaning
===========  =========================  ====================================================
Reject       Boolean (required)         TRUE for `pulse_ms` per rejected part
Result       any integer (required)     0 OK, 1 NG, 2 UNINSPECTED
FrameId      any integer (required)     frame id; wraps to the variable's range (UInt32 at
                                        2**32, Int32 at 2**31, Int64 never in practice)
Heartbeat    Boolean (required unless   toggles every `heartbeat_period_ms`
             heartbeat_period_ms = 0)
PartId       String or integer          the part id text; an integer variable receives the
             (optional)                 part id code (`drivers.io.base.part_id_code`)
Score        Float or Double            score on the calibrated scale (1.0 = threshold);
             (optional)                 -1.0 = no score
Sequence     any integer (optional)     +1 per verdict written, wraps at the type's range
===========  =========================  ====================================================

The data types are read from the server at connect, so the PLC decides them
(Int16, UInt32, Int64 ...). Result, FrameId, PartId, Score and Sequence are
written in one Write request, then Reject: the data belongs to the part when
Reject rises, and it stays unchanged while Reject is TRUE.

The client runs its own asyncio event loop inside the output's worker thread:
no extra thread. Security: SecurityPolicy None with anonymous or user/password
login; use it on the machine network only.

asyncua is imported only when this output is used (`pip install '.[plc]'`).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Coroutine
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import Field, SecretStr

from drivers.errors import OutputError
from drivers.io.base import Output, OutputSettings, part_id_code, require_module
from drivers.verdict import Verdict

log = logging.getLogger(__name__)

_T = TypeVar("_T")

REQUIRED = ("Reject", "Result", "FrameId")
OPTIONAL = ("PartId", "Score", "Sequence")
HEARTBEAT = "Heartbeat"

# Integer variant type name -> (bits, signed).
_INTEGER_TYPES: dict[str, tuple[int, bool]] = {
    "SByte": (8, True),
    "Byte": (8, False),
    "Int16": (16, True),
    "UInt16": (16, False),
    "Int32": (32, True),
    "UInt32": (32, False),
    "Int64": (64, True),
    "UInt64": (64, False),
}
_FLOAT_TYPES = ("Float", "Double")


class OpcUaOutputSettings(OutputSettings):
    """Where the OPC UA server is and which object holds the signal variables."""

    type: Literal["opcua"] = Field(default="opcua", description="Selects the OPC UA output.")
    endpoint: str = Field(
        default="opc.tcp://127.0.0.1:4840",
        description="Endpoint URL of the PLC's OPC UA server (opc.tcp://host:port/...).",
    )
    namespace_uri: str = Field(
        default="urn:aoi:line",
        description="Namespace URI of the object and its variables (resolved to an index at connect).",
    )
    object_path: list[str] = Field(
        default_factory=lambda: ["AOI"],
        description="Browse names, from the Objects folder down to the object that holds the variables.",
    )
    username: str | None = Field(default=None, description="User name for the session; none: anonymous.")
    password: SecretStr | None = Field(default=None, description="Password for `username`.")


def fit_integer(value: int, type_name: str, *, twos_complement: bool = False) -> int:
    """`value` made to fit an OPC UA integer type.

    Counters (frame id, sequence) wrap into the non-negative range of the type;
    a code with meaningful high bit (the part id code) is reinterpreted as two's
    complement for a signed type when `twos_complement` is set.
    """
    bits, signed = _INTEGER_TYPES[type_name]
    if not signed:
        return value % (1 << bits)
    if twos_complement:
        value %= 1 << bits
        return value - (1 << bits) if value >= 1 << (bits - 1) else value
    return value % (1 << (bits - 1))


class OpcUaOutput(Output):
    """Writes verdicts into OPC UA variables with asyncua, on a private event loop in the worker thread."""

    type_name: ClassVar[str] = "opcua"
    settings_class: ClassVar[type[OutputSettings]] = OpcUaOutputSettings
    settings: OpcUaOutputSettings

    def __init__(self, settings: OpcUaOutputSettings) -> None:
        super().__init__(settings)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Any = None
        self._healthy = False
        self._nodes: dict[str, Any] = {}
        self._types: dict[str, str] = {}
        self._sequence = 0

    def target(self) -> str:
        """The endpoint URL."""
        return self.settings.endpoint

    def _prepare(self) -> None:
        require_module("asyncua", output_type="opcua", package="asyncua", extra="plc")

    # The event loop runs only inside these calls, in the worker thread.
    def _run(self, coro: Coroutine[Any, Any, _T], *, timeout_s: float) -> _T:
        if self._loop is None:
            coro.close()
            raise ConnectionError("OPC UA client is not connected")
        try:
            return self._loop.run_until_complete(asyncio.wait_for(coro, timeout=timeout_s))
        except BaseException:
            self._healthy = False
            raise

    def _open(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._run(self._connect(), timeout_s=self.settings.connect_timeout_s + 2 * self.settings.io_timeout_s)
        self._healthy = True

    async def _connect(self) -> None:
        from asyncua import Client, ua

        s = self.settings
        client = Client(s.endpoint, timeout=s.io_timeout_s)
        if s.username:
            client.set_user(s.username)
            if s.password is not None:
                client.set_password(s.password.get_secret_value())
        self._client = client
        await client.connect()
        try:
            ns = await client.get_namespace_index(s.namespace_uri)
        except ValueError:
            raise OutputError(
                f"OPC UA server {s.endpoint} has no namespace {s.namespace_uri!r}; check output.namespace_uri"
            ) from None
        parent = client.nodes.objects
        if s.object_path:
            try:
                parent = await parent.get_child([ua.QualifiedName(name, ns) for name in s.object_path])
            except ua.UaStatusCodeError as exc:
                raise OutputError(
                    f"OPC UA object Objects/{'/'.join(s.object_path)} not found in namespace "
                    f"{s.namespace_uri} ({exc}); check output.object_path"
                ) from None
        required = list(REQUIRED) + ([HEARTBEAT] if s.heartbeat_period_ms > 0 else [])
        self._nodes, self._types = {}, {}
        for name in [*required, *OPTIONAL]:
            try:
                node = await parent.get_child(ua.QualifiedName(name, ns))
            except ua.UaStatusCodeError:
                if name in required:
                    raise OutputError(
                        f"OPC UA variable {name} not found under Objects/{'/'.join(s.object_path)}; "
                        "see drivers/io/README.md for the variables to create"
                    ) from None
                log.info("%s: optional variable %s not present; not written", self.name, name)
                continue
            vtype = (await node.read_data_type_as_variant_type()).name
            _check_type(name, vtype)
            self._nodes[name] = node
            self._types[name] = vtype

    def _variant(self, name: str, value: Any) -> Any:
        from asyncua import ua

        vtype = self._types[name]
        if vtype == "Boolean":
            value = bool(value)
        elif vtype in _FLOAT_TYPES:
            value = float(value)
        elif vtype == "String":
            value = str(value)
        else:
            value = fit_integer(int(value), vtype, twos_complement=name == "PartId")
        return ua.Variant(value, getattr(ua.VariantType, vtype))

    def _write(self, values: dict[str, Any]) -> None:
        names = [name for name in values if name in self._nodes]
        if not names:
            return
        nodes = [self._nodes[name] for name in names]
        variants = [self._variant(name, values[name]) for name in names]
        self._run(self._client.write_values(nodes, variants), timeout_s=self.settings.io_timeout_s)

    def _send(self, verdict: Verdict) -> None:
        self._sequence += 1
        part: Any = verdict.part_id
        if self._types.get("PartId", "String") != "String":
            part = part_id_code(verdict.part_id)
        self._write(
            {
                "Result": verdict.result.code,
                "FrameId": verdict.frame_id,
                "PartId": part,
                "Score": -1.0 if math.isnan(verdict.score) else verdict.score,
                "Sequence": self._sequence,
            }
        )

    def _set_reject(self, active: bool) -> None:
        self._write({"Reject": active})

    def _heartbeat(self, state: bool) -> None:
        self._write({HEARTBEAT: state})

    def _close_transport(self) -> None:
        loop, client = self._loop, self._client
        self._loop, self._client, self._nodes = None, None, {}
        if loop is None:
            return
        try:
            if client is not None:
                if self._healthy:
                    # A polite goodbye (CloseSession) only when the server can still hear it.
                    try:
                        loop.run_until_complete(
                            asyncio.wait_for(client.disconnect(), self.settings.io_timeout_s)
                        )
                    except Exception:
                        log.debug("%s: OPC UA disconnect failed", self.name, exc_info=True)
                client.disconnect_socket()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        except Exception:
            log.debug("%s: closing the OPC UA client failed", self.name, exc_info=True)
        finally:
            self._healthy = False
            loop.close()


def _check_type(name: str, vtype: str) -> None:
    """Refuse a variable whose data type cannot carry its signal."""
    if name in ("Reject", HEARTBEAT):
        ok = vtype == "Boolean"
    elif name == "Score":
        ok = vtype in _FLOAT_TYPES
    elif name == "PartId":
        ok = vtype == "String" or vtype in _INTEGER_TYPES
    else:
        ok = vtype in _INTEGER_TYPES
    if not ok:
        raise OutputError(
            f"OPC UA variable {name} has data type {vtype}, which cannot carry it; see the README"
        )
