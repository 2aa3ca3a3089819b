"""Siemens S7 output: writes the verdict signals into a data block (DB) with python-snap7.

The appliance is an S7 client (like an HMI) writing into one DB of the PLC. The
DB must be a *standard* (non-optimised) block, because S7 communication
addresses it by byte offset; "PUT/GET communication" must be allowed in the
CPU's protection settings (S7-1200/1500). Default layout (every offset is
configurable; the defaults form one 18-byte DB):

========  ======  ==========================================================
offset    type    signal
========  ======  ==========================================================
0.0       BOOL    reject: TRUE for `pulse_ms` per rejected part
0.1       BOOL    heartbeat: toggles every `heartbeat_period_ms`
2         INT     result: 0 OK, 1 NG, 2 UNINSPECTED
4         DINT    frame id, modulo 2**31 (never negative)
8         DINT    part id code (`drivers.io.base.part_id_code`): the number for
                  a decimal part id; a hashed text id has bit 31 set, so it
                  reads as a negative DINT
12        REAL    score on the calibrated scale (1.0 = threshold); -1.0 = none
16        WORD    sequence: +1 per verdict written (wraps at 65536)
========  ======  ==========================================================

The bytes that hold the reject and heartbeat bits belong to the appliance: it
writes the whole byte (the other bits as 0), because a single-bit write is not
atomic on every S7 server. Keep other signals out of these bytes.

The data fields are written first (contiguous fields in one request), then the
reject bit; the data stays unchanged while the reject bit is TRUE.

python-snap7 is imported only when this output is used (`pip install '.[plc]'`).
Note: python-snap7 3.x uses a fixed 5 s TCP connect timeout of its own;
`io_timeout_s` bounds every request once connected.
"""

from __future__ import annotations

import logging
import math
import struct
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from drivers.io.base import Output, OutputSettings, part_id_code, require_module
from drivers.verdict import Verdict

log = logging.getLogger(__name__)

#: Field name -> (struct format, size in bytes) of the data fields in the DB.
DATA_FIELDS: dict[str, tuple[str, int]] = {
    "result": (">h", 2),
    "frame_id": (">i", 4),
    "part_id": (">I", 4),
    "score": (">f", 4),
    "sequence": (">H", 2),
}


class S7OutputSettings(OutputSettings):
    """Where the PLC is and where the signals go in its data block."""

    type: Literal["s7"] = Field(default="s7", description="Selects the Siemens S7 output.")
    host: str = Field(default="127.0.0.1", description="IP address of the PLC (or its CP).")
    port: int = Field(default=102, ge=1, le=65535, description="ISO-on-TCP port; 102 on every S7 PLC.")
    rack: int = Field(default=0, ge=0, le=7, description="Rack of the CPU (0 on S7-1200/1500).")
    slot: int = Field(default=1, ge=0, le=31, description="Slot of the CPU: 1 on S7-1200/1500, 2 on S7-300.")
    db_number: int = Field(
        default=100, ge=1, le=65535, description="Number of the (non-optimised) data block."
    )
    reject_byte: int = Field(
        default=0, ge=0, le=65535, description="Byte offset of the reject BOOL in the DB."
    )
    reject_bit: int = Field(default=0, ge=0, le=7, description="Bit (0..7) of the reject BOOL in its byte.")
    heartbeat_byte: int = Field(
        default=0, ge=0, le=65535, description="Byte offset of the heartbeat BOOL in the DB."
    )
    heartbeat_bit: int = Field(
        default=1, ge=0, le=7, description="Bit (0..7) of the heartbeat BOOL in its byte."
    )
    result_offset: int = Field(default=2, ge=0, le=65534, description="Byte offset of the result INT (even).")
    frame_id_offset: int = Field(
        default=4, ge=0, le=65532, description="Byte offset of the frame id DINT (even)."
    )
    part_id_offset: int = Field(
        default=8, ge=0, le=65532, description="Byte offset of the part id code DINT (even)."
    )
    score_offset: int = Field(default=12, ge=0, le=65532, description="Byte offset of the score REAL (even).")
    sequence_offset: int = Field(
        default=16, ge=0, le=65534, description="Byte offset of the sequence WORD (even)."
    )

    @model_validator(mode="after")
    def _verify_s7(self) -> S7OutputSettings:
        verify_bits_distinct(self)
        verify_even_offsets(self)
        verify_no_overlap(self)
        return self

    def field_offsets(self) -> dict[str, int]:
        """Data field name -> byte offset."""
        return {name: getattr(self, f"{name}_offset") for name in DATA_FIELDS}


def verify_bits_distinct(settings: S7OutputSettings) -> None:
    """The reject and heartbeat bits must not be the same bit."""
    if (settings.reject_byte, settings.reject_bit) == (settings.heartbeat_byte, settings.heartbeat_bit):
        raise ValueError(
            f"reject and heartbeat are both at DBX{settings.reject_byte}.{settings.reject_bit}; "
            "give them different bits"
        )


def verify_even_offsets(settings: S7OutputSettings) -> None:
    """INT, DINT, REAL and WORD start at even byte offsets in a standard DB."""
    odd = {name: offset for name, offset in settings.field_offsets().items() if offset % 2}
    if odd:
        raise ValueError(f"S7 word fields must start at even byte offsets; odd: {odd}")


def verify_no_overlap(settings: S7OutputSettings) -> None:
    """No two fields (nor a field and a bit byte) may share a byte."""
    owners: dict[int, str] = {settings.reject_byte: "reject", settings.heartbeat_byte: "heartbeat"}
    if settings.reject_byte == settings.heartbeat_byte:
        owners[settings.reject_byte] = "reject/heartbeat"
    for name, offset in settings.field_offsets().items():
        for byte in range(offset, offset + DATA_FIELDS[name][1]):
            if byte in owners:
                raise ValueError(f"S7 field {name} (offset {offset}) overlaps {owners[byte]} at byte {byte}")
            owners[byte] = name


def field_values(verdict: Verdict, *, sequence: int) -> dict[str, int | float]:
    """The value of every data field for one verdict (see the module docstring)."""
    return {
        "result": verdict.result.code,
        "frame_id": verdict.frame_id & 0x7FFF_FFFF,
        "part_id": part_id_code(verdict.part_id),
        "score": -1.0 if math.isnan(verdict.score) else float(verdict.score),
        "sequence": sequence & 0xFFFF,
    }


def coalesce(chunks: dict[int, bytes]) -> list[tuple[int, bytes]]:
    """Merge byte chunks keyed by offset into as few contiguous (offset, data) writes as possible."""
    runs: list[tuple[int, bytearray]] = []
    for offset in sorted(chunks):
        data = chunks[offset]
        if runs and runs[-1][0] + len(runs[-1][1]) == offset:
            runs[-1][1].extend(data)
        else:
            runs.append((offset, bytearray(data)))
    return [(offset, bytes(data)) for offset, data in runs]


class S7Output(Output):
    """Writes verdicts into a data block of a Siemens S7 PLC with the python-snap7 client."""

    type_name: ClassVar[str] = "s7"
    settings_class: ClassVar[type[OutputSettings]] = S7OutputSettings
    settings: S7OutputSettings

    def __init__(self, settings: S7OutputSettings) -> None:
        super().__init__(settings)
        self._client: Any = None
        self._sequence = 0
        # The bytes holding the reject and heartbeat bits, as last written (the appliance owns them).
        self._bit_bytes: dict[int, int] = {}

    def target(self) -> str:
        """``host:port DB n``."""
        s = self.settings
        return f"{s.host}:{s.port} DB{s.db_number}"

    def _prepare(self) -> None:
        require_module("snap7", output_type="s7", package="python-snap7", extra="plc")

    def _open(self) -> None:
        import snap7

        s = self.settings
        client = snap7.Client()
        self._client = client
        client.connect(s.host, s.rack, s.slot, s.port)
        connection = getattr(client, "connection", None)
        sock = getattr(connection, "socket", None)
        if connection is not None and sock is not None:
            # Bound every request/answer once connected (snap7 keeps 5 s otherwise).
            connection.timeout = s.io_timeout_s
            sock.settimeout(s.io_timeout_s)
        self._bit_bytes = {s.reject_byte: 0, s.heartbeat_byte: 0}

    def _write(self, offset: int, data: bytes) -> None:
        self._client.db_write(self.settings.db_number, offset, bytearray(data))

    def _send(self, verdict: Verdict) -> None:
        self._sequence = (self._sequence + 1) & 0xFFFF
        values = field_values(verdict, sequence=self._sequence)
        offsets = self.settings.field_offsets()
        chunks = {offsets[name]: struct.pack(DATA_FIELDS[name][0], value) for name, value in values.items()}
        for offset, data in coalesce(chunks):
            self._write(offset, data)

    def _write_bit(self, byte: int, bit: int, state: bool) -> None:
        value = self._bit_bytes.get(byte, 0)
        value = value | (1 << bit) if state else value & ~(1 << bit)
        self._write(byte, bytes([value & 0xFF]))
        # Only after a successful write, so a failed write is retried from the true state.
        self._bit_bytes[byte] = value & 0xFF

    def _set_reject(self, active: bool) -> None:
        self._write_bit(self.settings.reject_byte, self.settings.reject_bit, active)

    def _heartbeat(self, state: bool) -> None:
        self._write_bit(self.settings.heartbeat_byte, self.settings.heartbeat_bit, state)

    def _close_transport(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.disconnect()
            except Exception:  # a half-dead connection may fail in many ways; the socket is gone either way
                log.debug("disconnecting the S7 client failed", exc_info=True)
