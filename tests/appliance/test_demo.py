"""`aoi demo`: the PLC simulator counts reject pulses, and a whole demo run (on a tiny model and small
frames, so it takes seconds) prints the JSON summary in which the PLC's pulses equal the rejects in
the records, and writes the HTML report."""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pymodbus")

from appliance.cli import demo
from drivers.io.modbus import ModbusOutput, ModbusOutputSettings
from drivers.verdict import Result, Verdict

KEYS = {
    "frames", "ok", "ng", "uninspected", "truth_defective", "missed_defects", "false_rejects",
    "plc_rejects_received", "latency_ms_p50", "latency_ms_p99", "report",
}  # fmt: skip


def test_plc_simulator_counts_rising_edges_of_the_reject_coil() -> None:
    plc = demo.ModbusPlcSimulator(port=demo.free_port(), reject_coil=9)
    plc.start()
    output = ModbusOutput(
        ModbusOutputSettings(
            port=plc.port, reject_coil=9, pulse_ms=5, pulse_gap_ms=2, heartbeat_period_ms=0, max_age_ms=5000
        )
    )
    try:
        assert output.connect(wait_s=5)
        results = [Result.OK, Result.NG, Result.NG, Result.OK, Result.UNINSPECTED, Result.NG]
        for i, result in enumerate(results):
            output.publish(Verdict(frame_id=i, part_id=str(i), timestamp_s=time.monotonic(), result=result))
        output.close(timeout_s=5)
        assert output.status().delivered == len(results)
        assert plc.rising_edges == 4 and len(plc.writes) >= len(results)
    finally:
        output.close()
        plc.stop()


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny PatchCore bundle (64 px tiles), trained once per test session and shared."""
    from pipelines.datasets.synth import write_mvtec_dataset
    from pipelines.training import train_bundle

    root = tmp_path_factory.getbasetemp() / "aoi-line-tiny"
    bundle = root / "bundle"
    if not (bundle / "bundle.yaml").is_file():
        write_mvtec_dataset(
            root / "data", product="print", width_px=64, height_px=64, n_train=12, n_test_good=1,
            n_test_per_defect=0, defects=[], seed=3, progress=False, overwrite=True,
        )  # fmt: skip
        train_bundle(
            family="patchcore", data=root / "data", out=bundle,
            overrides={"bank_size": 200, "max_patches": 5000},
            limit=12, tile_px=64, overlap_px=0, progress=False, overwrite=True,
        )  # fmt: skip
    return bundle


def run_demo(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="aoi")
    demo.add_parser(parser.add_subparsers(), "demo")
    args = parser.parse_args(["demo", *argv])
    code = args.func(args)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out  # --json: one JSON object, nothing else on stdout
    return code, json.loads(out[0])


def test_demo_runs_the_line_and_the_plc_sees_every_reject(
    tmp_path: Path, tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The real demo trains BVPN on 224 px parts for minutes; here the same steps run on 64 px
    # parts with a tiny PatchCore bundle standing in for the training.
    trained: list[Path] = []

    def train_stand_in(*, out: Path, **kwargs: Any) -> Path:
        assert kwargs["family"] == "bvpn" and kwargs["profile"] == "fast"
        assert len(list((kwargs["data"] / "train" / "good").glob("*.png"))) == demo.N_TRAIN
        shutil.copytree(tiny_bundle, out, dirs_exist_ok=True)
        trained.append(out)
        return out

    monkeypatch.setattr("pipelines.training.train_bundle", train_stand_in)
    monkeypatch.setattr(demo, "SIZE_PX", 64)
    monkeypatch.setattr(demo, "N_TRAIN", 6)
    monkeypatch.setattr(demo, "N_CALIBRATE", 20)  # the fewest for a tail-fitted threshold
    workdir = tmp_path / "demo"
    code, summary = run_demo(["--workdir", str(workdir), "--frames", "16", "--json", "--no-progress"], capsys)
    assert code == 0, summary
    assert set(summary) >= KEYS and len(trained) == 1
    assert summary["frames"] == summary["acquired"] == 16 == summary["records_total"]
    assert summary["ok"] + summary["ng"] + summary["uninspected"] == 16
    assert (
        summary["plc_rejects_received"]
        == summary["rejects_recorded"]
        == summary["ng"] + summary["uninspected"]
    )
    assert summary["plc_matches_records"] is True and summary["outputs_undelivered"] == 0
    assert 0 <= summary["missed_defects"] <= summary["truth_defective"]
    assert summary["latency_ms_p99"] >= summary["latency_ms_p50"] > 0
    report = Path(summary["report"]).read_text()
    assert "<h1>aoi demo" in report and "Verdicts against ground truth" in report
    if summary["ng"]:
        assert "data:image/jpeg;base64," in report
    # A second run reuses the cached, calibrated bundle: no training.
    code, again = run_demo(["--workdir", str(workdir), "--frames", "3", "--json", "--no-progress"], capsys)
    assert code == 0 and again["frames"] == 3 and again["training_s"] is None and len(trained) == 1
