"""The Verdict: what the inspector decided about one frame.

It lives beside `Frame` in the lowest layer because outputs (`drivers.io`)
publish it and may not import `pipelines`, where it is made.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import numpy as np


class Result(enum.StrEnum):
    """OK passes; NG and UNINSPECTED are both rejected (fail-safe)."""

    OK = "OK"
    NG = "NG"
    UNINSPECTED = "UNINSPECTED"

    @property
    def code(self) -> int:
        """The integer a PLC reads: 0 OK, 1 NG, 2 UNINSPECTED."""
        return {"OK": 0, "NG": 1, "UNINSPECTED": 2}[self.value]

    @property
    def reject(self) -> bool:
        return self is not Result.OK


@dataclasses.dataclass(frozen=True)
class Defect:
    """One connected region above the pixel threshold, in frame pixel coordinates."""

    x: int
    y: int
    width: int
    height: int
    area_px: int
    peak_score: float
    area_mm2: float | None = None
    kind: str = "structural"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The decision for one frame. `score` is the image score on the calibrated
    scale (1.0 = image threshold); `anomaly_map` is optional (float32, frame size)."""

    frame_id: int
    part_id: str
    timestamp_s: float
    result: Result
    score: float = float("nan")
    defects: tuple[Defect, ...] = ()
    latency_ms: float = float("nan")
    reason: str = ""
    bundle_id: str = ""
    wall_time_s: float = 0.0
    anomaly_map: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
    truth: dict[str, Any] | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def reject(self) -> bool:
        return self.result.reject
