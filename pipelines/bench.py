"""Benchmarking one bundle on one backend: latency, throughput, memory and the compute floor.

Works on a bundle alone: the frame is synthetic (`SceneRenderer`, product
"print" or "paper", at the requested size). One frame's way is the inspector's own
(`Inspector.inspect`: tiling, backend, stitching, global branch, decision),
timed after warm-up runs. Besides latency (median, p99) and frames per
second it reports:

- CPU seconds per frame (all threads), a check on latencies taken on a busy machine;
- peak resident memory: sampled from /proc/self/statm every 5 ms during the
  timed runs (the model's working set), and `ru_maxrss` of the process;
- the network's GFLOPs per frame: torch's FlopCounterMode on one tile (meta
  tensors, no arithmetic) times the number of tiles, or once over the padded
  frame in whole-frame mode;
- the machine's measured single-precision GEMM rate (a square float32 matrix
  product on the same number of threads) and the compute floor
  GFLOPs / GEMM rate, with `latency / floor`: how far the backend is from
  running every FLOP at GEMM speed (1.0 would be perfect);
- with `profile=True`, where the time goes: per stage of the frame (cutting
  and stitching tiles, the backend, the global branch, the decision) and,
  for the onnxruntime backend, per top-level sub-module of the network
  (onnxruntime's node profile grouped by the module path in each node's name).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.bundle import Bundle
from pipelines.inference import HALO_CORE_PX
from pipelines.models.base import GlobalBranch, GlobalResult

SAMPLE_INTERVAL_S = 0.005
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
MIB = 1 << 20


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE_BYTES


class RssSampler:
    """Samples this process's resident memory in a background thread; `peak_bytes` when stopped."""

    def __init__(self, *, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.peak_bytes = current_rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, current_rss_bytes())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, current_rss_bytes())


def gemm_gflops(
    *, threads: int | None = None, size: int = 1024, min_time_s: float = 1.0
) -> tuple[float, str]:
    """(best GFLOP/s, library) of a float32 `size`x`size` matrix product on `threads` threads."""
    try:
        import torch
    except ImportError:
        rng = np.random.default_rng(0)
        a = rng.random((size, size), dtype=np.float32)
        b = rng.random((size, size), dtype=np.float32)
        return _best_rate(lambda: a @ b, size=size, min_time_s=min_time_s), f"numpy {np.__version__}"
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        ta, tb = torch.rand(size, size), torch.rand(size, size)
        rate = _best_rate(lambda: torch.mm(ta, tb), size=size, min_time_s=min_time_s)
        return rate, f"torch {torch.__version__} on {torch.get_num_threads()} threads"
    finally:
        torch.set_num_threads(before)


def _best_rate(run: Any, *, size: int, min_time_s: float) -> float:
    run()
    best = float("inf")
    start = time.perf_counter()
    while time.perf_counter() - start < min_time_s or best == float("inf"):
        t = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t)
    return 2.0 * size**3 / best / 1e9


def frame_gflops(
    bundle: Bundle,
    *,
    tiles: int,
    whole_hw: tuple[int, int] | None,
    crops_hw: list[tuple[int, int]] | None = None,
) -> float | None:
    """The network's GFLOPs for one frame: per tile x tiles, over the whole padded frame, or
    summed over the crops of halo mode."""
    t = bundle.meta.tiles.tile_px
    try:
        from pipelines.export import network_costs
        from pipelines.models.registry import inference_module

        net = inference_module(bundle.meta.family).build_tile_net(bundle.meta, bundle.tensors)
    except ImportError:
        rec = bundle.meta.exports.get("onnx") or {}
        per_tile = rec.get("tile_gflops")
        return None if per_tile is None or whole_hw or crops_hw else float(per_tile) * tiles
    if crops_hw is not None:
        c = bundle.meta.input_channels
        per_shape = {hw: network_costs(net, (1, c, *hw))[0] for hw in set(crops_hw)}
        return sum(per_shape[hw] for hw in crops_hw) / 1e9
    if whole_hw is not None:
        flops, _ = network_costs(net, (1, bundle.meta.input_channels, *whole_hw))
        return flops / 1e9
    flops, _ = network_costs(net, (1, bundle.meta.input_channels, t, t))
    return flops / 1e9 * tiles


class _TimedGlobal(GlobalBranch):
    def __init__(self, inner: GlobalBranch, clock: dict[str, float]) -> None:
        self.inner = inner
        self.clock = clock

    def __call__(self, rgb: np.ndarray) -> GlobalResult:
        t = time.perf_counter()
        try:
            return self.inner(rgb)
        finally:
            self.clock["global_branch_s"] += time.perf_counter() - t


def module_profile(
    bundle: Bundle, *, threads: int | None, batch_size: int, repeats: int = 3
) -> dict[str, float]:
    """Milliseconds per tile batch spent in each top-level sub-module, from onnxruntime's profiler."""
    import onnxruntime as ort

    from pipelines.export import INPUT_NAME, OUTPUT_NAME, onnx_path

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = int(threads or 0)
    so.enable_profiling = True
    so.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="aoi-profile-") as tmp:
        so.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(onnx_path(bundle)), so, providers=["CPUExecutionProvider"])
        t = bundle.meta.tiles.tile_px
        c = bundle.meta.input_channels
        x = np.random.default_rng(0).random((batch_size, c, t, t), dtype=np.float32)
        session.run([OUTPUT_NAME], {INPUT_NAME: x})  # warm-up, profiled too: dropped below
        for _ in range(repeats):
            session.run([OUTPUT_NAME], {INPUT_NAME: x})
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    first_end = runs[0]["ts"] + runs[0]["dur"] if runs else 0
    totals: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        if e["ts"] < first_end:
            continue
        totals[_module_of(str(e["name"]), str(e["args"].get("op_name", "")))] += e["dur"] / 1000.0
    return {k: round(v / repeats, 2) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def _module_of(node_name: str, op_name: str) -> str:
    """'/teacher/features/blocks.3/...' -> 'teacher'; top-level ops -> 'head <op>' (the map
    arithmetic: distances, nearest neighbours, normalisation); onnxruntime's own layout
    conversions -> 'layout reorders'."""
    parts = [p for p in node_name.removesuffix("_kernel_time").split("/") if p]
    # A fused top-level op is named '/MatMul/MatMulScaleFusion/': still the head's.
    if len(parts) > 1 and not parts[1].endswith("Fusion"):
        return parts[0]
    if op_name.startswith("Reorder") or (parts[:1] and parts[0].startswith("ReorderOutput")):
        return "layout reorders"
    return f"head {op_name or 'other'}"


@contextlib.contextmanager
def _timed_infer(inspector: Any, clock: dict[str, float]) -> Iterator[None]:
    analyser = inspector.analyser
    inner, inner_global = analyser.infer, analyser.global_branch

    def timed(x: np.ndarray) -> np.ndarray:
        t = time.perf_counter()
        try:
            return np.asarray(inner(x))
        finally:
            clock["backend_s"] += time.perf_counter() - t

    analyser.infer = timed
    if inner_global is not None:
        analyser.global_branch = _TimedGlobal(inner_global, clock)
    try:
        yield
    finally:
        analyser.infer, analyser.global_branch = inner, inner_global


def run_bench(
    bundle: Bundle,
    *,
    backend: str = "auto",
    width_px: int = 1913,
    height_px: int = 2624,
    threads: int | None = None,
    runs: int = 10,
    warmup: int = 1,
    mode: str = "tiles",
    halo_core_px: int = HALO_CORE_PX,
    precision: str | None = None,
    batch_size: int = 8,
    profile: bool = False,
    flops: bool = True,
    product: str = "print",
) -> dict[str, Any]:
    """Benchmark `bundle` on `backend` at a synthetic `width_px` x `height_px` frame of `product`;
    one JSON-able dict."""
    from drivers.camera.base import Frame
    from drivers.camera.scene import SceneRenderer
    from pipelines.inspector import Inspector, decide

    image = SceneRenderer(product=product, width_px=width_px, height_px=height_px, seed=0).render(0).image
    # Before any backend exists: onnxruntime's worker threads spin for a while after each
    # run and would slow the GEMM benchmark down.
    gemm = gemm_gflops(threads=threads) if flops else None
    t0 = time.perf_counter()
    inspector = Inspector(
        bundle, backend=backend, threads=threads, batch_size=batch_size, mode=mode, precision=precision,
        halo_core_px=halo_core_px,
    )  # fmt: skip
    load_s = time.perf_counter() - t0
    analyser = inspector.analyser
    chosen_mode = analyser.mode_for(height_px, width_px)
    m = analyser.margin_px
    tiles = analyser.plan(height_px + 2 * m, width_px + 2 * m).count
    crops_hw = None
    if chosen_mode == "halo":
        crops = analyser.halo_crops(height_px, width_px)
        crops_hw = [(r.stop - r.start, c.stop - c.start) for r, c, _, _ in crops]
        tiles = len(crops)
    for i in range(warmup):
        inspector.inspect(Frame(frame_id=i, timestamp_s=time.monotonic(), pixels=image))
    latencies: list[float] = []
    clock: dict[str, float] = defaultdict(float)
    with RssSampler() as rss, _timed_infer(inspector, clock):
        cpu_start = time.process_time()
        start = time.perf_counter()
        for i in range(runs):
            t = time.perf_counter()
            if profile:
                a = inspector.analyse(image)
                clock["analyse_s"] += time.perf_counter() - t
                td = time.perf_counter()
                decide(a, inspector.calibration)
                clock["decide_s"] += time.perf_counter() - td
            else:
                inspector.inspect(Frame(frame_id=warmup + i, timestamp_s=time.monotonic(), pixels=image))
            latencies.append(time.perf_counter() - t)
        total_s = time.perf_counter() - start
        cpu_s = time.process_time() - cpu_start
    lat = np.array(latencies)
    result: dict[str, Any] = {
        "bundle": str(bundle.path),
        "family": bundle.meta.family,
        **inspector.backend.describe(),
        "threads": threads,
        "frame": f"{width_px}x{height_px}",
        "product": product,
        "mode": chosen_mode,
        "tiles": tiles if chosen_mode in ("tiles", "halo") else 1,
        "halo_px": analyser.halo_px if chosen_mode == "halo" else None,
        "halo_core_px": analyser.core_px if chosen_mode == "halo" else None,
        "tile_px": bundle.meta.tiles.tile_px,
        "batch_size": batch_size,
        "runs": runs,
        "warmup": warmup,
        "load_s": round(load_s, 3),
        "latency_median_s": round(float(np.median(lat)), 4),
        "latency_p99_s": round(float(np.quantile(lat, 0.99)), 4),
        "latency_min_s": round(float(lat.min()), 4),
        "fps": round(runs / total_s, 3),
        # CPU seconds of this process per frame: less sensitive than latency to other load
        # on the machine (onnxruntime's spinning worker threads count in it, too).
        "cpu_s_per_frame": round(cpu_s / runs, 3),
        "peak_rss_mib": round(rss.peak_bytes / MIB, 1),
        "ru_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }
    if profile:
        analyse_s = clock["analyse_s"]
        stages = {
            "backend": clock["backend_s"],
            "global_branch": clock["global_branch_s"],
            "tiling_stitching_other": analyse_s - clock["backend_s"] - clock["global_branch_s"],
            "decision": clock["decide_s"],
        }
        result["stages_s_per_frame"] = {k: round(v / runs, 4) for k, v in stages.items()}
        if result["backend"] == "onnxruntime":
            result["modules_ms_per_batch"] = module_profile(bundle, threads=threads, batch_size=batch_size)
    if gemm is not None:
        whole = analyser.whole_shape(height_px, width_px) if chosen_mode == "whole" else None
        gflops = frame_gflops(bundle, tiles=tiles, whole_hw=whole, crops_hw=crops_hw)
        rate, library = gemm
        result["gflops_per_frame"] = None if gflops is None else round(gflops, 2)
        result["gemm_gflops_per_s"] = round(rate, 1)
        result["gemm_library"] = library
        if gflops is not None:
            floor_s = gflops / rate
            result["compute_floor_s"] = round(floor_s, 4)
            result["latency_over_floor"] = round(result["latency_median_s"] / floor_s, 2)
    return result
