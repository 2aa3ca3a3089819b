"""A log-only output: writes what it would have sent to a PLC, as log lines and optionally JSONL.

Useful for a dry run on a line (the appliance judges, nothing is ejected), for
the demo, and as the reference of what the PLC outputs send: the same verdict
data, the same reject pulse timing (from the shared worker in `base`), the
same counters.

JSONL records (one JSON object per line, flushed at once):

- ``{"event": "verdict", "t": <monotonic s>, "wall_time": <unix s>, "frame_id": ..., "part_id": ...,
  "part_id_code": ..., "result": "NG", "code": 1, "reject": true, "score": 1.23, "score_milli": 1230,
  "reason": ...}``
- ``{"event": "reject", "t": ..., "active": true|false}``: the pulse edges,
- ``{"event": "heartbeat", "t": ..., "state": true|false}`` when `record_heartbeat` is on.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import IO, Any, ClassVar, Literal

from pydantic import Field

from drivers.errors import OutputError
from drivers.io.base import Output, OutputSettings, part_id_code, score_milli
from drivers.verdict import Verdict

log = logging.getLogger(__name__)

_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING}


class LogOutputSettings(OutputSettings):
    """A log-only output; no PLC is involved."""

    type: Literal["log"] = Field(default="log", description="Selects the log-only output.")
    path: Path | None = Field(
        default=None,
        description="JSONL file that receives one record per verdict and signal edge; none: log only.",
    )
    level: Literal["DEBUG", "INFO", "WARNING"] = Field(
        default="INFO", description="Logging level of the one line written per verdict."
    )
    record_heartbeat: bool = Field(
        default=False,
        description="Also write heartbeat toggles to the JSONL file (they are always logged at DEBUG).",
    )


class LogOutput(Output):
    """Writes verdicts and signal edges to the log and, optionally, to a JSONL file."""

    type_name: ClassVar[str] = "log"
    settings_class: ClassVar[type[OutputSettings]] = LogOutputSettings
    settings: LogOutputSettings

    def __init__(self, settings: LogOutputSettings) -> None:
        super().__init__(settings)
        self._file: IO[str] | None = None

    def target(self) -> str:
        """The JSONL path, or ``log`` when only the logger is written."""
        return str(self.settings.path) if self.settings.path is not None else "log"

    def _prepare(self) -> None:
        path = self.settings.path
        if path is not None and not path.parent.is_dir():
            raise OutputError(
                f"output 'log': the folder of path={path} does not exist; create it or change output.path"
            )

    def _open(self) -> None:
        if self.settings.path is not None and self._file is None:
            self._file = self.settings.path.open("a", encoding="utf-8")

    def _write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        # NaN is not JSON; null says "no score" to any reader.
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}
        self._file.write(json.dumps(clean, separators=(",", ":")) + "\n")
        self._file.flush()

    def _send(self, verdict: Verdict) -> None:
        record = {
            "event": "verdict",
            "t": time.monotonic(),
            "wall_time": verdict.wall_time_s or time.time(),
            "frame_id": verdict.frame_id,
            "part_id": verdict.part_id,
            "part_id_code": part_id_code(verdict.part_id),
            "result": verdict.result.value,
            "code": verdict.result.code,
            "reject": verdict.reject,
            "score": verdict.score,
            "score_milli": score_milli(verdict.score),
            "reason": verdict.reason,
        }
        log.log(
            _LEVELS[self.settings.level],
            "verdict frame=%d part=%s result=%s(%d) score=%.3f reject=%s%s",
            verdict.frame_id,
            verdict.part_id or "-",
            verdict.result.value,
            verdict.result.code,
            verdict.score,
            verdict.reject,
            f" reason={verdict.reason}" if verdict.reason else "",
        )
        self._write(record)

    def _set_reject(self, active: bool) -> None:
        log.debug("reject %s", "on" if active else "off")
        self._write({"event": "reject", "t": time.monotonic(), "active": active})

    def _heartbeat(self, state: bool) -> None:
        log.debug("heartbeat %d", int(state))
        if self.settings.record_heartbeat:
            self._write({"event": "heartbeat", "t": time.monotonic(), "state": state})

    def _close_transport(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except OSError:
                log.debug("closing %s failed", self.settings.path, exc_info=True)
