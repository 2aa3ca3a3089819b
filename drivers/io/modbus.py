"""Modbus TCP output: the appliance is the Modbus client and writes into the PLC's Modbus server.

Signal map (addresses are 0-based protocol addresses; many PLC manuals count
from 1, so holding register 0 is "40001" there):

- coil ``reject_coil``: the reject pulse (1 for `pulse_ms` per rejected part).
- holding registers from ``register_base`` (R):

  ====== ==================================================================
  R+0    result: 0 OK, 1 NG, 2 UNINSPECTED
  R+1,2  frame id, 32-bit unsigned (wraps at 2**32), two words in
         ``word_order`` (``low_first``: R+1 low word, R+2 high word)
  R+3,4  part id code, 32-bit (see `drivers.io.base.part_id_code`): the
         number for a decimal part id, else CRC-16/CCITT-FALSE of the text
         with bit 31 set (high word 0x8000); same word order
  R+5    score x1000, 0..65534; 65535 means "no score" (NaN)
  R+6    sequence: +1 for every verdict written (wraps at 65536), so the PLC
         sees a new verdict even when a camera restart repeats frame ids
  R+7    heartbeat: toggles 0/1 every `heartbeat_period_ms`
  ====== ==================================================================

R+0..R+6 are written in one "write multiple registers" request (function 16)
before the coil is set (function 5), so when the PLC sees the rising edge of the
coil the registers already belong to that part, and they stay unchanged until
the coil has fallen again.

pymodbus is imported only when this output is used (`pip install '.[plc]'`).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from drivers.errors import OutputError
from drivers.io.base import (
    Output,
    OutputSettings,
    part_id_code,
    require_module,
    score_milli,
    split_words,
)
from drivers.verdict import Verdict

log = logging.getLogger(__name__)

#: Offsets from `register_base`, as documented above.
RESULT, FRAME_ID, PART_ID, SCORE, SEQUENCE, HEARTBEAT = 0, 1, 3, 5, 6, 7
BLOCK_REGISTERS = 7  # R+0..R+6, written together
USED_REGISTERS = 8  # R+0..R+7


class ModbusRequestError(OutputError):
    """The Modbus server answered with an exception response (a wrong address or unit id, mostly)."""


class ModbusOutputSettings(OutputSettings):
    """Where the Modbus TCP server is and where the signals go in it."""

    type: Literal["modbus"] = Field(default="modbus", description="Selects the Modbus TCP output.")
    host: str = Field(
        default="127.0.0.1", description="IP address or host name of the PLC's Modbus TCP server."
    )
    port: int = Field(default=502, ge=1, le=65535, description="TCP port of the Modbus server.")
    device_id: int = Field(
        default=1, ge=0, le=255, description="Modbus unit id (slave id) addressed in every request (0..255)."
    )
    reject_coil: int = Field(
        default=0, ge=0, le=65535, description="0-based address of the coil that carries the reject pulse."
    )
    register_base: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="0-based address of the first of the 8 holding registers (result ... heartbeat).",
    )
    word_order: Literal["low_first", "high_first"] = Field(
        default="low_first",
        description=(
            "Order of the two 16-bit registers of 32-bit values (frame id, part id): low_first puts the "
            "low word at the lower address (Modicon/Schneider); high_first suits big-endian PLCs such "
            "as Siemens S7."
        ),
    )

    @model_validator(mode="after")
    def _verify_modbus(self) -> ModbusOutputSettings:
        verify_register_range(self)
        return self


def verify_register_range(settings: ModbusOutputSettings) -> None:
    """The 8 holding registers must fit below address 65536."""
    last = settings.register_base + USED_REGISTERS - 1
    if last > 0xFFFF:
        raise ValueError(
            f"register_base={settings.register_base} puts the last register at {last}; the highest "
            f"Modbus address is 65535, so register_base must be <= {0x10000 - USED_REGISTERS}"
        )


def verdict_registers(verdict: Verdict, *, sequence: int, low_word_first: bool) -> list[int]:
    """The values of R+0..R+6 for one verdict (see the module docstring)."""
    return [
        verdict.result.code,
        *split_words(verdict.frame_id, low_word_first=low_word_first),
        *split_words(part_id_code(verdict.part_id), low_word_first=low_word_first),
        score_milli(verdict.score),
        sequence & 0xFFFF,
    ]


class ModbusOutput(Output):
    """Writes verdicts to a Modbus TCP server (a PLC) with the pymodbus synchronous client."""

    type_name: ClassVar[str] = "modbus"
    settings_class: ClassVar[type[OutputSettings]] = ModbusOutputSettings
    settings: ModbusOutputSettings

    def __init__(self, settings: ModbusOutputSettings) -> None:
        super().__init__(settings)
        self._client: Any = None
        self._sequence = 0

    def target(self) -> str:
        """``host:port unit N``."""
        s = self.settings
        return f"{s.host}:{s.port} unit {s.device_id}"

    def _prepare(self) -> None:
        require_module("pymodbus", output_type="modbus", package="pymodbus", extra="plc")

    def _open(self) -> None:
        from pymodbus.client import ModbusTcpClient

        s = self.settings
        # retries=0: one attempt per request; the shared worker owns retrying and back-off.
        client = ModbusTcpClient(
            s.host, port=s.port, timeout=s.connect_timeout_s, retries=0, name="aoi-output"
        )
        self._client = client
        if not client.connect():
            raise ConnectionError(f"cannot connect to Modbus server {s.host}:{s.port}")
        # The same parameter bounds every answer once connected.
        client.comm_params.timeout_connect = s.io_timeout_s

    def _check(self, response: Any, what: str) -> None:
        if response is None or response.isError():
            raise ModbusRequestError(f"{what} refused by unit {self.settings.device_id}: {response}")

    def _send(self, verdict: Verdict) -> None:
        s = self.settings
        self._sequence = (self._sequence + 1) & 0xFFFF
        values = verdict_registers(
            verdict, sequence=self._sequence, low_word_first=s.word_order == "low_first"
        )
        response = self._client.write_registers(s.register_base + RESULT, values, device_id=s.device_id)
        self._check(
            response, f"write of holding registers {s.register_base}..{s.register_base + BLOCK_REGISTERS - 1}"
        )

    def _set_reject(self, active: bool) -> None:
        s = self.settings
        response = self._client.write_coil(s.reject_coil, active, device_id=s.device_id)
        self._check(response, f"write of coil {s.reject_coil}")

    def _heartbeat(self, state: bool) -> None:
        s = self.settings
        address = s.register_base + HEARTBEAT
        response = self._client.write_register(address, int(state), device_id=s.device_id)
        self._check(response, f"write of heartbeat register {address}")

    def _close_transport(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except OSError:
                log.debug("closing the Modbus client failed", exc_info=True)
