"""`aoi bench --line`: the real line around a bundle; its overhead and throughput against the bare model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.cli import main


def test_line_bench_reports_overhead_and_throughput(
    tiny_print_bundle: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tiny_print_bundle[1]
    argv = ["bench", "--bundle", str(bundle), "--frame", "96x80", "--runs", "3", "--line"]
    assert main([*argv, "--backend", "torch", "--threads", "1", "--json"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{") :])
    assert result["frame"] == "96x80" and result["line_frames"] == 9
    # Every frame the camera produced was judged: inspected, or UNINSPECTED with a counted reason.
    assert result["line_inspected"] + sum(result["line_uninspected_by_reason"].values()) == 9
    assert result["line_inspected"] >= 2
    assert 0 <= result["line_overhead_ms_p50"] <= result["line_overhead_ms_p99"]
    assert result["bare_inspect_ms_median"] > 0 and result["line_inspected_fps"] > 0
    assert result["line_fps_over_bare"] == pytest.approx(
        result["line_inspected_fps"] / result["bare_fps"], rel=0.01
    )
    assert main([*argv, "--runs", "0"]) == 2
