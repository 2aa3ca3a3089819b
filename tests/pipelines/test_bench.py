"""`aoi bench` and `aoi export`: the benchmark's numbers hang together, the commands speak in one line."""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import threading
from pathlib import Path

import pytest

from appliance.cli import bench as bench_cmd
from appliance.cli import export as export_cmd
from drivers.errors import ApplianceError
from pipelines.bench import RssSampler, current_rss_bytes, gemm_gflops, run_bench
from pipelines.bundle import load_bundle
from pipelines.datasets.synth import write_mvtec_dataset
from pipelines.training import train_bundle

KEYS = {
    "backend", "device", "precision", "frame", "mode", "tiles", "latency_median_s", "latency_p99_s",
    "fps", "peak_rss_mib", "ru_maxrss_mib", "gflops_per_frame", "gemm_gflops_per_s", "compute_floor_s",
    "latency_over_floor", "load_average", "product",
}  # fmt: skip


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    write_mvtec_dataset(
        root / "data", product="print", width_px=128, height_px=128, n_train=8, n_test_good=1,
        n_test_per_defect=0, defects=[], seed=6, progress=False,
    )  # fmt: skip
    return train_bundle(
        family="patchcore", data=root / "data", out=root / "b",
        overrides={"bank_size": 100, "max_patches": 3000}, tile_px=64, overlap_px=16, progress=False,
    )  # fmt: skip


def _cli(module: object, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="aoi")
    sub = parser.add_subparsers(dest="command")
    name = argv[0]
    module.add_parser(sub, name)  # type: ignore[attr-defined]
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_rss_sampler_and_gemm_rate() -> None:
    before = threading.active_count()
    with RssSampler(interval_s=0.001) as rss:
        block = bytearray(32 << 20)
    assert rss.peak_bytes >= current_rss_bytes() - len(block) and rss.peak_bytes > 32 << 20
    assert threading.active_count() == before
    rate, library = gemm_gflops(threads=1, size=256, min_time_s=0.05)
    assert rate > 0.1 and library


def test_bench_on_tiles_reports_every_number(bundle_dir: Path) -> None:
    b = load_bundle(bundle_dir)
    r = run_bench(b, backend="torch", width_px=200, height_px=160, threads=1, runs=2, profile=True)
    assert set(r) >= KEYS
    assert r["mode"] == "tiles" and r["tiles"] == 20  # (160 + 32) x (200 + 32) px in 64 px tiles, 16 overlap
    assert 0 < r["latency_median_s"] <= r["latency_p99_s"]
    assert r["fps"] > 0 and r["peak_rss_mib"] > 50
    assert r["compute_floor_s"] == pytest.approx(r["gflops_per_frame"] / r["gemm_gflops_per_s"], rel=0.02)
    assert set(r["stages_s_per_frame"]) == {"backend", "global_branch", "tiling_stitching_other", "decision"}
    json.dumps(r)


def test_cli_export_then_bench_whole_frame(
    bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "b"
    shutil.copytree(bundle_dir, dest)
    assert _cli(export_cmd, ["export", "--bundle", str(dest), "--format", "onnx", "--json"]) == 0
    entry = json.loads(capsys.readouterr().out)
    assert entry["opset"] == 17 and Path(entry["path"]).is_file()
    argv = ["bench", "--bundle", str(dest), "--backend", "onnxruntime", "--frame", "200x160"]
    argv += ["--threads", "1", "--runs", "2", "--mode", "whole", "--profile", "--product", "paper", "--json"]
    assert _cli(bench_cmd, argv) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["backend"] == "onnxruntime" and r["mode"] == "whole" and r["tiles"] == 1
    assert r["product"] == "paper" and r["frame"] == "200x160"
    assert r["gflops_per_frame"] > 0
    assert r["modules_ms_per_batch"] and all(v >= 0 for v in r["modules_ms_per_batch"].values())
    whole_gflops = r["gflops_per_frame"]
    argv = ["bench", "--bundle", str(dest), "--backend", "onnxruntime", "--frame", "400x300"]
    argv += ["--threads", "1", "--runs", "1", "--mode", "halo", "--halo-core", "64", "--json"]
    assert _cli(bench_cmd, argv) == 0
    h = json.loads(capsys.readouterr().out)
    assert h["mode"] == "halo" and h["halo_core_px"] == 64 and h["halo_px"] % 32 == 0
    assert h["tiles"] == 6 * 7  # (300 + 32 -> 352) x (400 + 32 -> 448) padded, in 64-px cores
    assert h["gflops_per_frame"] > whole_gflops  # a bigger frame, and the halos on top


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "--frame", "big"], "is not WIDTHxHEIGHT"),
        (["bench", "--runs", "0"], "--runs 0: must be at least 1"),
        (["export", "--format", "tensorrt"], "needs TensorRT"),
        (["export", "--format", "onnx", "--precision", "int8"], "int8 needs calibration images"),
    ],
)
def test_cli_mistakes_are_one_line(bundle_dir: Path, argv: list[str], message: str) -> None:
    if "tensorrt" in argv and importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    module = bench_cmd if argv[0] == "bench" else export_cmd
    with pytest.raises(ApplianceError, match=message) as err:
        _cli(module, [argv[0], "--bundle", str(bundle_dir), *argv[1:]])
    assert "\n" not in str(err.value)
