"""The log-only output: a log line per verdict and a JSONL trace of what a PLC would have received."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from drivers.errors import OutputError
from drivers.io.log import LogOutput, LogOutputSettings
from drivers.verdict import Result, Verdict

VerdictFactory = Callable[..., Verdict]


def test_jsonl_records_verdicts_and_pulse_edges(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, verdict: VerdictFactory
) -> None:
    path = tmp_path / "outputs.jsonl"
    out = LogOutput(LogOutputSettings(path=path, pulse_ms=20.0, heartbeat_period_ms=0.0))
    with caplog.at_level(logging.INFO, logger="drivers.io.log"):
        try:
            assert out.connect()
            out.publish(verdict(1, Result.NG, score=2.0, part_id="A7"))
            out.publish(verdict(2, Result.OK))
            out.publish(verdict(3, Result.UNINSPECTED, score=float("nan")))
            assert out.wait_idle(timeout_s=2)
        finally:
            out.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    verdicts = [r for r in records if r["event"] == "verdict"]
    assert [(r["frame_id"], r["code"], r["reject"]) for r in verdicts] == [
        (1, 1, True),
        (2, 0, False),
        (3, 2, True),
    ]
    assert verdicts[0]["score_milli"] == 2000 and verdicts[2]["score"] is None
    edges = [r["active"] for r in records if r["event"] == "reject"]
    # inactive at open, two pulses, inactive at close
    assert edges == [False, True, False, True, False, False]
    on = [r["t"] for r in records if r["event"] == "reject" and r["active"]]
    off = [r["t"] for r in records if r["event"] == "reject" and not r["active"]][1:3]
    assert all(0.01 <= b - a <= 0.1 for a, b in zip(on, off, strict=True))
    lines = [r.getMessage() for r in caplog.records if r.name == "drivers.io.log"]
    assert sum("verdict frame=" in line for line in lines) == 3
    assert out.status().delivered == 3


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    out = LogOutput(LogOutputSettings(path=tmp_path / "nope" / "out.jsonl"))
    with pytest.raises(OutputError, match="does not exist"):
        out.connect()
    out.close()


def test_log_only_without_file(verdict: VerdictFactory) -> None:
    out = LogOutput(LogOutputSettings(heartbeat_period_ms=10.0))
    try:
        assert out.connect()
        out.publish(verdict(1, Result.NG))
        assert out.wait_idle(timeout_s=2)
        assert out.status().delivered == 1 and out.target() == "log"
    finally:
        out.close()
