"""Backends: the registry and `auto`, the torch and onnxruntime backends, whole-frame mode, TensorRT."""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import shutil
import sys
import types
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from pipelines.backends import registry
from pipelines.backends.registry import choose_auto, create_backend
from pipelines.bundle import Bundle, load_bundle, write_bundle
from pipelines.datasets.synth import write_mvtec_dataset
from pipelines.errors import BundleError, PipelineError
from pipelines.export import export_onnx
from pipelines.inference import TiledAnalyser
from pipelines.training import train_bundle

TRT_SKIP = "TensorRT is not installable on these machines"
HAVE_TRT = importlib.util.find_spec("tensorrt") is not None and importlib.util.find_spec("cuda") is not None


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny PatchCore bundle, not exported."""
    root = tmp_path_factory.mktemp("backends")
    write_mvtec_dataset(
        root / "data", product="print", width_px=128, height_px=128, n_train=10, n_test_good=1,
        n_test_per_defect=0, defects=[], seed=4, progress=False,
    )  # fmt: skip
    return train_bundle(
        family="patchcore", data=root / "data", out=root / "plain",
        overrides={"bank_size": 100, "max_patches": 3000}, tile_px=64, overlap_px=16, progress=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def exported(plain: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    dest = tmp_path_factory.mktemp("exported") / "b"
    shutil.copytree(plain, dest)
    return export_onnx(load_bundle(dest))


def _tiles(n: int = 3, t: int = 64) -> np.ndarray:
    return np.random.default_rng(1).random((n, 3, t, t), dtype=np.float32)


def test_unknown_backend_names_the_choices(plain: Path) -> None:
    with pytest.raises(PipelineError, match="choose one of auto, torch, onnxruntime, tensorrt"):
        create_backend("openvino", load_bundle(plain))


def test_onnxruntime_without_export_names_the_command(plain: Path) -> None:
    with pytest.raises(BundleError, match=r"has no model.onnx: run 'aoi export --bundle .* --format onnx'"):
        create_backend("onnxruntime", load_bundle(plain))


def test_stale_export_is_refused(exported: Bundle, tmp_path: Path) -> None:
    """An old model.onnx put back beside retrained weights (by hand, from a backup) is refused."""
    dest = tmp_path / "b"
    shutil.copytree(exported.path, dest)
    b = load_bundle(dest)
    tensors = dict(b.tensors)
    tensors["net.bank"] = tensors["net.bank"] + 1.0
    write_bundle(dest, b.meta, tensors, overwrite=True)
    shutil.copy2(exported.path / "model.onnx", dest / "model.onnx")
    with pytest.raises(BundleError, match=r"does not match the bundle's weights.*aoi export"):
        create_backend("onnxruntime", load_bundle(dest))
    assert choose_auto(load_bundle(dest)).name == "torch"


def test_auto_order(plain: Path, exported: Bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorRT, then torch on CUDA, then onnxruntime on the CPU, then torch on the CPU."""
    bare = load_bundle(plain)
    picks = lambda b: (choose_auto(b).name, choose_auto(b).options)  # noqa: E731
    monkeypatch.setattr(registry, "nvidia_gpu_present", lambda: False)
    assert picks(bare) == ("torch", {"device": "cpu"})
    assert picks(exported) == ("onnxruntime", {})
    monkeypatch.setattr(registry, "nvidia_gpu_present", lambda: True)
    monkeypatch.setattr(registry, "_torch_cuda", lambda: True)
    assert picks(exported) == ("torch", {"device": "cuda"})
    real = registry.installed
    monkeypatch.setattr(registry, "installed", lambda m: m in ("tensorrt", "cuda.bindings") or real(m))
    assert picks(exported) == ("tensorrt", {})
    assert picks(bare) == ("torch", {"device": "cuda"})  # TensorRT builds from model.onnx
    monkeypatch.setattr(registry, "nvidia_gpu_present", lambda: False)
    monkeypatch.setattr(registry, "installed", lambda m: False)
    with pytest.raises(PipelineError, match="no backend can run"):
        choose_auto(bare)


def test_torch_backend_describes_itself_and_refuses_bad_precisions(plain: Path) -> None:
    b = load_bundle(plain)
    backend = create_backend("torch", b, threads=1)
    assert backend.describe() == {"backend": "torch", "device": "cpu", "precision": "fp32"}
    for precision, message in (("fp16", "slower than fp32"), ("int8", "int8 runs on")):
        with pytest.raises(PipelineError, match=message):
            create_backend("torch", b, precision=precision)


def test_channels_last_changes_nothing(plain: Path) -> None:
    from pipelines.backends.torch_backend import TorchBackend

    b = load_bundle(plain)
    x = _tiles()
    fast = TorchBackend(b, threads=1, channels_last=True).infer(x)
    plain_layout = TorchBackend(b, threads=1, channels_last=False).infer(x)
    np.testing.assert_allclose(fast, plain_layout, atol=1e-5)


def test_onnxruntime_backend_matches_torch_with_and_without_io_binding(exported: Bundle) -> None:
    from pipelines.backends.onnxruntime_backend import OnnxRuntimeBackend

    x = _tiles()
    ref = create_backend("torch", exported, threads=1).infer(x)
    ort = create_backend("onnxruntime", exported, threads=1)
    assert ort.describe() == {"backend": "onnxruntime", "device": "cpu", "precision": "fp32"}
    bound = OnnxRuntimeBackend(exported, threads=1, io_binding=True)
    np.testing.assert_allclose(ort.infer(x), ref, atol=1e-4)
    np.testing.assert_allclose(bound.infer(x), ref, atol=1e-4)
    # Dynamic height and width: a whole (padded) frame goes through the same graph.
    frame = np.random.default_rng(2).random((1, 3, 96, 160), dtype=np.float32)
    assert ort.infer(frame).shape == (1, 1, 96, 160)


def test_onnxruntime_refuses_fp16_and_a_missing_provider(exported: Bundle) -> None:
    from pipelines.backends.onnxruntime_backend import OnnxRuntimeBackend

    with pytest.raises(PipelineError, match="fp16 is for GPUs"):
        OnnxRuntimeBackend(exported, precision="fp16")
    with pytest.raises(PipelineError, match="none of the providers"):
        OnnxRuntimeBackend(exported, providers=["NoSuchExecutionProvider"])


def test_whole_frame_mode_pads_to_32_and_crops_back() -> None:
    seen: list[tuple[int, ...]] = []

    def identity_red(x: np.ndarray) -> np.ndarray:
        seen.append(x.shape)
        return x[:, :1]

    a = TiledAnalyser(identity_red, tile_px=64, overlap_px=16, margin_px=16, mode="whole", input_scale=1.0)
    rgb = np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    out = a(rgb).anomaly_map
    assert seen == [(1, 3, 128, 128)]  # 70 + 32 -> 128, 90 + 32 -> 128
    np.testing.assert_array_equal(out, rgb[:, :, 0].astype(np.float32))


def test_auto_mode_follows_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines import inference

    a = TiledAnalyser(lambda x: x[:, :1], tile_px=64, overlap_px=16, mode="auto", whole_bytes_per_px=100.0)
    monkeypatch.setattr(inference, "available_memory_bytes", lambda: 10**9)
    assert a.mode_for(1000, 1000) == "whole"  # 1e8 bytes <= half of 1e9
    monkeypatch.setattr(inference, "available_memory_bytes", lambda: 10**8)
    assert a.mode_for(1000, 1000) == "tiles"
    haloed = TiledAnalyser(
        lambda x: x[:, :1], tile_px=64, overlap_px=16, mode="auto", whole_bytes_per_px=100.0, halo_px=64
    )
    assert haloed.mode_for(1000, 1000) == "halo"  # the whole frame's map in bounded memory
    unknown = TiledAnalyser(lambda x: x[:, :1], tile_px=64, overlap_px=16, mode="auto")
    assert unknown.mode_for(100, 100) == "tiles"
    with pytest.raises(ValueError, match="unknown inference mode"):
        TiledAnalyser(lambda x: x, tile_px=64, overlap_px=16, mode="fast")


def _box_sum(radius: int) -> Callable[[np.ndarray], np.ndarray]:
    """A network with a known receptive field: the sum of the red channel over a
    (2r+1)^2 window with zero padding (as a convolution pads)."""

    def run(x: np.ndarray) -> np.ndarray:
        red = np.pad(x[:, 0], ((0, 0), (radius, radius), (radius, radius)))
        out = np.zeros((x.shape[0], 1, x.shape[2], x.shape[3]), np.float32)
        for dy in range(2 * radius + 1):
            for dx in range(2 * radius + 1):
                out[:, 0] += red[:, dy : dy + x.shape[2], dx : dx + x.shape[3]]
        return out

    return run


@pytest.mark.parametrize("core", [32, 64, 96])
def test_halo_tiles_give_the_whole_frames_map(core: int) -> None:
    """Receptive radius 7 px, halo one stride cell (32 px): every core's output sees what the
    whole frame's does. A halo shorter than the radius would not (checked: zero halo differs)."""
    shapes: list[tuple[int, ...]] = []
    net = _box_sum(7)

    def infer(x: np.ndarray) -> np.ndarray:
        shapes.append(x.shape)
        return net(x)

    rgb = np.random.default_rng(1).integers(0, 255, (150, 230, 3), dtype=np.uint8)
    args: dict[str, Any] = dict(tile_px=64, overlap_px=16, margin_px=16, input_scale=1.0)
    whole = TiledAnalyser(net, mode="whole", **args)(rgb).anomaly_map
    halo = TiledAnalyser(infer, mode="halo", halo_px=32, core_px=core, **args)(rgb).anomaly_map
    np.testing.assert_array_equal(halo, whole)
    assert len(shapes) > 1 and all(s[2] % 32 == 0 and s[3] % 32 == 0 for s in shapes)
    assert max(s[2] * s[3] for s in shapes) < 192 * 288  # cores, not the padded frame again
    no_halo = TiledAnalyser(net, mode="halo", halo_px=0, core_px=core, **args)(rgb).anomaly_map
    assert np.abs(no_halo - whole).max() > 0
    with pytest.raises(PipelineError, match="multiple of 32"):
        TiledAnalyser(net, mode="halo", halo_px=20, **args)
    with pytest.raises(PipelineError, match="needs the network's halo"):
        TiledAnalyser(net, mode="halo", **args)


def test_receptive_radius_is_measured_by_gradient() -> None:
    import torch
    from torch import nn

    from pipelines.export import halo_for, measure_receptive_radius

    torch.manual_seed(0)
    five = nn.Sequential(*[nn.Conv2d(3, 3, 3, padding=1) for _ in range(5)], nn.Conv2d(3, 1, 1))
    assert measure_receptive_radius(five, side_px=64) == 5
    assert halo_for(5) == 64 and halo_for(0) == 32  # one stride cell on top, in whole cells

    class Global(nn.Module):  # depends on every pixel: no halo can make tiles exact
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x - x.mean()).sum(1, keepdim=True)

    with pytest.raises(PipelineError, match="too wide for halo tiles"):
        measure_receptive_radius(Global(), side_px=64)


@pytest.mark.tensorrt
@pytest.mark.skipif(not HAVE_TRT, reason=TRT_SKIP)
@pytest.mark.parametrize(("precision", "atol"), [("fp32", 1e-4), ("fp16", 2e-2)])
def test_tensorrt_matches_onnxruntime(exported: Bundle, precision: str, atol: float) -> None:
    from pipelines.backends.tensorrt_backend import TensorRTBackend

    ref = create_backend("onnxruntime", exported).infer(_tiles(5))
    trt = TensorRTBackend(exported, precision=precision, batch_size=4)
    try:
        np.testing.assert_allclose(trt.infer(_tiles(5)), ref, atol=atol)
        np.testing.assert_allclose(trt.infer(_tiles(1)), ref[:1], atol=atol)
        assert trt.engine_file.is_file()
        again = TensorRTBackend(exported, precision=precision, batch_size=4)
        assert again.engine_file == trt.engine_file  # the cached engine is reused
        again.close()
    finally:
        trt.close()


def test_int8_export_inserts_qdq_and_runs_on_onnxruntime(
    exported: Bundle, plain: Path, tmp_path: Path
) -> None:
    import onnx

    dest = tmp_path / "b"
    shutil.copytree(exported.path, dest)
    calib = plain.parent / "data" / "train" / "good"
    b = export_onnx(load_bundle(dest), precision="int8", calib_dir=calib)
    rec = b.meta.exports["onnx-int8"]
    assert rec["quantized_nodes"] > 0 and rec["calibration"]["tiles"] > 0
    ops = {n.op_type for n in onnx.load(str(dest / rec["file"])).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8 = create_backend("onnxruntime", b, threads=1, precision="int8")
    assert int8.describe()["precision"] == "int8"
    # Tiles of a real part (random noise is far outside what int8 was calibrated for).
    import cv2

    part = cv2.cvtColor(cv2.imread(str(sorted(calib.glob("*.png"))[0])), cv2.COLOR_BGR2RGB)
    x = np.stack([part[y : y + 64, x0 : x0 + 64] for y in (0, 64) for x0 in (0, 64)])
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
    ref = create_backend("onnxruntime", b, threads=1).infer(x)
    out = int8.infer(x)
    assert out.shape == ref.shape and np.isfinite(out).all()
    # int8 moves the map (its cost, recorded at export); it must still follow the fp32 map
    # (measured: correlation 0.87 on this tiny PatchCore's real tiles; a broken graph gives ~0).
    assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.8


def test_fp16_export_records_its_cost(exported: Bundle, tmp_path: Path) -> None:
    dest = tmp_path / "b"
    shutil.copytree(exported.path, dest)
    b = export_onnx(load_bundle(dest), precision="fp16")
    rec = b.meta.exports["onnx-fp16"]
    assert rec["file"] == "model.fp16.onnx" and (dest / rec["file"]).is_file()
    assert 0 < rec["parity_max_abs_vs_torch"] < 0.1
    assert b.meta.exports["onnx"] == exported.meta.exports["onnx"]  # the fp32 entry is kept


def test_int8_needs_calibration_images(exported: Bundle) -> None:
    with pytest.raises(PipelineError, match="int8 needs calibration images: pass --calib DIR"):
        export_onnx(exported, precision="int8")


# --- The TensorRT backend's own logic, on stand-ins for TensorRT and the CUDA runtime. ---
# The fakes keep "device" memory in host buffers and run the engine's ONNX graph with
# onnxruntime, so shapes, profiles, buffers, copies and the engine cache are exercised
# for real; only TensorRT's kernels are not (the test above does that where it exists).


class _FakeCudart(types.ModuleType):
    """cuda-python's runtime module with "device" memory in host buffers."""

    blocks: dict[int, ctypes.Array[ctypes.c_char]]
    mallocs: int


def _fake_cudart() -> _FakeCudart:
    cudart = _FakeCudart("cuda.bindings.runtime")
    cudart.blocks, cudart.mallocs = {}, 0

    def malloc(n: int) -> tuple[int, int]:
        buf = ctypes.create_string_buffer(n)
        cudart.blocks[ctypes.addressof(buf)] = buf
        cudart.mallocs += 1
        return 0, ctypes.addressof(buf)

    def free(ptr: int) -> tuple[int]:
        del cudart.blocks[ptr]
        return (0,)

    def memcpy(dst: int, src: int, n: int, kind: int, stream: int) -> tuple[int]:
        ctypes.memmove(dst, src, n)
        return (0,)

    names: dict[str, Any] = {
        "cudaError_t": SimpleNamespace(cudaSuccess=0),
        "cudaMemcpyKind": SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2),
        "cudaMalloc": malloc, "cudaMallocHost": malloc, "cudaFree": free, "cudaFreeHost": free,
        "cudaMemcpyAsync": memcpy,
        "cudaStreamCreate": lambda: (0, 7),
        "cudaStreamSynchronize": lambda stream: (0,),
        "cudaStreamDestroy": lambda stream: (0,),
        "cudaSetDevice": lambda device: (0,),
        "cudaGetDeviceProperties": lambda device: (0, SimpleNamespace(name=b"Fake GPU 9000\x00")),
        "cudaGetErrorName": lambda err: (0, b"cudaErrorFake"),
    }  # fmt: skip
    for key, value in names.items():
        setattr(cudart, key, value)
    return cudart


def _fake_tensorrt(version: str) -> types.ModuleType:
    import onnxruntime

    trt = types.ModuleType("tensorrt")
    trt.__version__ = version  # type: ignore[attr-defined]
    graphs: dict[str, bytes] = {}
    builds: list[dict[str, Any]] = []
    trt.builds = builds  # type: ignore[attr-defined]

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            self.level = level

    class Network:
        onnx = b""

    class Parser:
        def __init__(self, network: Network, logger: Logger) -> None:
            self.network = network
            self.num_errors = 0

        def parse(self, data: bytes) -> bool:
            self.network.onnx = data
            return True

    class Profile:
        shapes: tuple[tuple[int, ...], ...] = ()

        def set_shape(
            self, name: str, lo: tuple[int, ...], opt: tuple[int, ...], hi: tuple[int, ...]
        ) -> None:
            self.shapes = (tuple(lo), tuple(opt), tuple(hi))

    class Config:
        def __init__(self) -> None:
            self.flags: list[str] = []
            self.profiles: list[Profile] = []

        def set_memory_pool_limit(self, pool: int, size: int) -> None:
            assert size > 0

        def set_flag(self, flag: str) -> None:
            self.flags.append(flag)

        def add_optimization_profile(self, p: Profile) -> None:
            self.profiles.append(p)

    class Builder:
        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def create_network(self, flags: int) -> Network:
            return Network()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def create_builder_config(self) -> Config:
            return Config()

        def build_serialized_network(self, network: Network, config: Config) -> bytes:
            key = hashlib.sha256(network.onnx).hexdigest()
            graphs[key] = network.onnx
            plan = {"graph": key, "flags": config.flags, "profiles": [p.shapes for p in config.profiles]}
            builds.append(plan)
            return b"FAKE" + json.dumps(plan).encode()

    class Context:
        current: tuple[int, ...] = ()

        def __init__(self, engine: Engine) -> None:
            self.engine = engine
            self.profile = 0
            self.addresses: dict[str, int] = {}

        def set_optimization_profile_async(self, index: int, stream: int) -> None:
            self.profile = index

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> None:
            lo, _, hi = self.engine.plan["profiles"][self.profile]
            assert all(a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)), (shape, lo, hi)
            self.current = tuple(shape)

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            n, _, h, w = self.current
            return self.current if name == "image" else (n, 1, h, w)

        def set_tensor_address(self, name: str, ptr: int) -> None:
            self.addresses[name] = ptr

        def execute_async_v3(self, stream: int) -> bool:
            count = int(np.prod(self.current))
            raw = (ctypes.c_float * count).from_address(self.addresses["image"])
            x = np.ctypeslib.as_array(raw).reshape(self.current).copy()
            y = np.ascontiguousarray(self.engine.session.run(None, {"image": x})[0], dtype=np.float32)
            ctypes.memmove(self.addresses["map"], y.ctypes.data, y.nbytes)
            return True

    class Engine:
        num_io_tensors = 2

        def __init__(self, plan: dict[str, Any]) -> None:
            self.plan = plan
            self.session = onnxruntime.InferenceSession(
                graphs[plan["graph"]], providers=["CPUExecutionProvider"]
            )

        def get_tensor_name(self, i: int) -> str:
            return ("image", "map")[i]

        def get_tensor_mode(self, name: str) -> int:
            return 0 if name == "image" else 1

        def get_tensor_dtype(self, name: str) -> str:
            return "float"

        def create_execution_context(self) -> Context:
            return Context(self)

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
            if not data.startswith(b"FAKE"):
                return None
            plan = json.loads(data[4:])
            return Engine(plan) if plan["graph"] in graphs else None

    names = {
        "Logger": Logger, "Builder": Builder, "OnnxParser": Parser, "Runtime": Runtime,
        "NetworkDefinitionCreationFlag": SimpleNamespace(STRONGLY_TYPED=5),
        "MemoryPoolType": SimpleNamespace(WORKSPACE=0),
        "BuilderFlag": SimpleNamespace(FP16="FP16", INT8="INT8"),
        "TensorIOMode": SimpleNamespace(INPUT=0, OUTPUT=1),
        "nptype": lambda dtype: np.float32,
    }  # fmt: skip
    for key, value in names.items():
        setattr(trt, key, value)
    return trt


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], tuple[types.ModuleType, _FakeCudart]]:
    def install(version: str = "10.99.0") -> tuple[types.ModuleType, _FakeCudart]:
        cudart = _fake_cudart()
        bindings = types.ModuleType("cuda.bindings")
        bindings.runtime = cudart  # type: ignore[attr-defined]
        cuda = types.ModuleType("cuda")
        cuda.bindings = bindings  # type: ignore[attr-defined]
        trt = _fake_tensorrt(version)
        for name, module in (
            ("tensorrt", trt), ("cuda", cuda), ("cuda.bindings", bindings), ("cuda.bindings.runtime", cudart),
        ):  # fmt: skip
            monkeypatch.setitem(sys.modules, name, module)
        return trt, cudart

    return install


def test_tensorrt_plumbing_builds_caches_and_runs(exported: Bundle, tmp_path: Path, fake_gpu: Any) -> None:
    from pipelines.backends.tensorrt_backend import TensorRTBackend

    trt, cudart = fake_gpu()
    dest = tmp_path / "b"
    shutil.copytree(exported.path, dest)
    bundle = load_bundle(dest)
    backend = create_backend("tensorrt", bundle, batch_size=4)
    assert isinstance(backend, TensorRTBackend)
    sha = bundle.meta.exports["onnx"]["sha256"][:12]
    assert backend.engine_file.name == f"fake-gpu-9000-trt10.99.0-fp16-b1-4-8x64x64-{sha}.engine"
    assert backend.engine_file.is_file() and trt.builds[-1]["flags"] == ["FP16"]
    assert backend.describe()["device"] == "cuda:0 (Fake GPU 9000)"
    ref = create_backend("onnxruntime", bundle, threads=1)
    for n in (4, 1, 8):
        np.testing.assert_allclose(backend.infer(_tiles(n)), ref.infer(_tiles(n)), atol=1e-6)
    assert cudart.mallocs == 4  # device + pinned host, input + output, once for the profile
    # A whole frame: one rebuild with a frame profile, cached under its own name.
    frame = np.random.default_rng(3).random((1, 3, 96, 160), dtype=np.float32)
    np.testing.assert_allclose(backend.infer(frame), ref.infer(frame), atol=1e-6)
    assert "b1x96x160" in backend.engine_file.name and len(trt.builds) == 2
    backend.infer(_tiles(3))
    assert cudart.mallocs == 8  # the frame profile's buffers, then no more
    backend.close()
    assert not cudart.blocks, "every buffer is freed"
    # The cached engine is reused; a corrupt one is rebuilt.
    again = TensorRTBackend(bundle, batch_size=4)
    assert len(trt.builds) == 2
    again.close()
    again.engine_file.write_bytes(b"garbage")
    TensorRTBackend(bundle, batch_size=4).close()
    assert len(trt.builds) == 3


def test_tensorrt_11_builds_from_the_precision_s_graph(exported: Bundle, fake_gpu: Any) -> None:
    from pipelines.backends.tensorrt_backend import TensorRTBackend

    fake_gpu("11.0.0")
    with pytest.raises(BundleError, match=r"no model.fp16.onnx: run 'aoi export .* --precision fp16'"):
        TensorRTBackend(exported, precision="fp16")
    with pytest.raises(BundleError, match=r"no model.int8.onnx: run .*--precision int8 --calib DIR"):
        TensorRTBackend(exported, precision="int8")
