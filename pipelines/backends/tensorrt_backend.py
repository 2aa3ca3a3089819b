"""The TensorRT backend: an engine built from the bundle's ONNX graph, cached in the bundle.

Written against the TensorRT 10 Python API, with TensorRT 11 in mind:
- the network is created with the default flags (explicit batch is the only
  mode since TensorRT 10); from TensorRT 11 on, where weakly-typed networks
  are gone, it is created STRONGLY_TYPED and the precision comes from the
  graph (`model.fp16.onnx`, `model.int8.onnx`) instead of builder flags;
- fp16: the fp32 graph with BuilderFlag.FP16 (weakly typed);
- int8: explicit quantization only. The graph is `model.int8.onnx`, whose
  Q/DQ nodes `aoi export --format onnx --precision int8 --calib DIR` inserted
  (symmetric, per-channel, calibrated on good tiles), with BuilderFlag.INT8;
  no implicit calibrator (deprecated in TensorRT 10) is used;
- one optimization profile over the tile batch (min 1, opt = batch size,
  max = 2x) and one per whole-frame size;
- engines are cached under `engines/` with a name that holds the GPU, the
  TensorRT version, the precision, the shapes and the graph's digest
  (`pipelines.backends.trt_plan`), so any change rebuilds;
- inference with `execute_async_v3` after `set_tensor_address` for every I/O
  tensor, on device buffers and pinned host buffers allocated once per profile
  at its largest shape (`BufferPlan`), so no frame allocates.

CUDA memory, copies and the stream come from cuda-python
(`from cuda.bindings import runtime as cudart`), not pycuda: NVIDIA moved its
own TensorRT samples to cuda-python, it installs as a wheel, and pycuda does
not build without a CUDA toolkit on the machine.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.backends.base import Backend
from pipelines.backends.trt_plan import (
    BufferPlan,
    ShapeProfile,
    default_profiles,
    engine_file_name,
    profile_for,
)
from pipelines.bundle import Bundle
from pipelines.errors import PipelineError
from pipelines.export import INPUT_NAME, onnx_path, onnx_record

log = logging.getLogger(__name__)

ENGINES_DIR = "engines"
WORKSPACE_BYTES = 2 << 30  # builder scratch memory; tactics needing more are skipped


def _cuda(result: Any) -> Any:
    """Unpack a cuda-python call's (error, *values), raising on an error."""
    from cuda.bindings import runtime as cudart

    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        _, name = cudart.cudaGetErrorName(err)
        raise PipelineError(f"CUDA error {name.decode() if isinstance(name, bytes) else name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def gpu_name(device: int = 0) -> str:
    from cuda.bindings import runtime as cudart

    props = _cuda(cudart.cudaGetDeviceProperties(device))
    raw = props.name
    return (raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)).rstrip("\x00")


def strongly_typed_only(trt: Any) -> bool:
    """TensorRT 11 dropped weakly-typed networks (precision flags); types come from the graph."""
    return int(str(trt.__version__).split(".")[0]) >= 11


def graph_precision(trt: Any, precision: str) -> str:
    """Which exported graph an engine of `precision` is built from."""
    if precision == "int8":
        return "int8"
    return precision if strongly_typed_only(trt) else "fp32"


def build_engine(
    trt: Any,
    onnx_file: Path,
    *,
    profiles: Sequence[ShapeProfile],
    precision: str,
    workspace_bytes: int = WORKSPACE_BYTES,
) -> bytes:
    """Parse `onnx_file`, build and serialise an engine for `profiles` at `precision`."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = strongly_typed_only(trt)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_file.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise PipelineError(f"TensorRT cannot parse {onnx_file}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if not strongly_typed:
        if precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        elif precision == "int8":
            # With Q/DQ nodes in the graph this is explicit quantization: the
            # scales are the graph's, no calibrator runs.
            config.set_flag(trt.BuilderFlag.INT8)
    for p in profiles:
        profile = builder.create_optimization_profile()
        profile.set_shape(INPUT_NAME, p.min_shape, p.opt_shape, p.max_shape)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise PipelineError(
            f"TensorRT could not build a {precision} engine from {onnx_file} (see its log above); "
            "try --precision fp32 or more GPU memory"
        )
    return bytes(serialized)


def engine_path(
    trt: Any, bundle: Bundle, *, precision: str, profiles: Sequence[ShapeProfile], device: int = 0
) -> Path:
    """Where the engine for this GPU, TensorRT, precision, shapes and graph is cached."""
    source = graph_precision(trt, precision)
    record = onnx_record(bundle, source)
    digest = str(record["sha256"]) if record else "unexported"
    name = engine_file_name(
        gpu_name=gpu_name(device),
        trt_version=str(trt.__version__),
        precision=precision,
        profiles=profiles,
        onnx_sha256=digest,
    )
    return bundle.path / ENGINES_DIR / name


def ensure_engine(
    trt: Any, bundle: Bundle, *, precision: str, profiles: Sequence[ShapeProfile], device: int = 0
) -> tuple[Path, bytes, bool]:
    """(path, serialised engine, built now): the cached engine, or a new one written atomically."""
    path = engine_path(trt, bundle, precision=precision, profiles=profiles, device=device)
    if path.is_file():
        return path, path.read_bytes(), False
    source = onnx_path(bundle, graph_precision(trt, precision))
    log.info("building TensorRT %s engine %s (minutes, once per GPU and shape)", precision, path.name)
    data = build_engine(trt, source, profiles=profiles, precision=precision)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        # A read-only bundle still runs; it only rebuilds at every start.
        log.warning("could not cache the engine in %s (%s): it is rebuilt at every start", path.parent, exc)
    return path, data, True


class _Buffers:
    """Device and pinned host buffers of one profile, at its largest shapes."""

    def __init__(self, plan: BufferPlan) -> None:
        from cuda.bindings import runtime as cudart

        self.plan = plan
        self.device: dict[str, int] = {}
        self.host_ptr: dict[str, int] = {}
        self.host: dict[str, np.ndarray] = {}
        try:
            for b in plan.buffers:
                self.device[b.name] = int(_cuda(cudart.cudaMalloc(b.nbytes)))
                ptr = int(_cuda(cudart.cudaMallocHost(b.nbytes)))
                self.host_ptr[b.name] = ptr
                raw = (ctypes.c_uint8 * b.nbytes).from_address(ptr)
                self.host[b.name] = np.frombuffer(memoryview(raw).cast("B"), dtype=np.uint8).view(
                    np.dtype(b.dtype)
                )
        except BaseException:
            self.free()
            raise

    def free(self) -> None:
        from cuda.bindings import runtime as cudart

        for ptr in self.device.values():
            cudart.cudaFree(ptr)
        for ptr in self.host_ptr.values():
            cudart.cudaFreeHost(ptr)
        self.device.clear()
        self.host_ptr.clear()
        self.host.clear()


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(
        self,
        bundle: Bundle,
        *,
        threads: int | None = None,
        precision: str | None = None,
        batch_size: int = 8,
        frames_hw: Iterable[tuple[int, int]] = (),
        device: int = 0,
    ) -> None:
        """`precision`: fp16 (default), fp32 or int8; `frames_hw`: padded whole-frame
        sizes (height, width in px) to build profiles for up front."""
        super().__init__(bundle, threads=threads)
        import tensorrt as trt
        from cuda.bindings import runtime as cudart

        self.trt = trt
        self.precision = precision or "fp16"
        if self.precision not in ("fp32", "fp16", "int8"):
            raise PipelineError(f"unknown precision {self.precision!r}: choose fp32, fp16 or int8")
        self.device_index = device
        _cuda(cudart.cudaSetDevice(device))
        self.batch_size = batch_size
        self.profiles = default_profiles(
            tile_px=bundle.meta.tiles.tile_px, batch_size=batch_size, frames_hw=frames_hw,
            channels=bundle.meta.input_channels,
        )  # fmt: skip
        self.stream = _cuda(cudart.cudaStreamCreate())
        self.buffers: dict[int, _Buffers] = {}
        self.context: Any = None
        self.engine: Any = None
        self._load()

    def _load(self) -> None:
        trt = self.trt
        self.engine_file, data, _ = ensure_engine(
            trt, self.bundle, precision=self.precision, profiles=self.profiles, device=self.device_index
        )
        # Kept on the object: the runtime must outlive the engines it deserialised.
        self.runtime = runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            # A cached engine from another TensorRT build or a truncated file: rebuild it.
            self.engine_file.unlink(missing_ok=True)
            self.engine_file, data, _ = ensure_engine(
                trt, self.bundle, precision=self.precision, profiles=self.profiles, device=self.device_index
            )
            engine = runtime.deserialize_cuda_engine(data)
            if engine is None:
                raise PipelineError(f"TensorRT cannot load the engine it just built ({self.engine_file})")
        self.engine = engine
        self.context = engine.create_execution_context()
        self.names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.output_names = [n for n in self.names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.active_profile: int | None = None

    def _dtype(self, name: str) -> str:
        return np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name))).name

    def _buffers_for(self, index: int) -> _Buffers:
        """The buffers of profile `index`, allocated on first use at the profile's largest shapes."""
        if index in self.buffers:
            return self.buffers[index]
        profile = self.profiles[index]
        self._activate(index)
        self.context.set_input_shape(INPUT_NAME, profile.max_shape)
        inputs = {INPUT_NAME: (profile.max_shape, self._dtype(INPUT_NAME))}
        outputs = {n: (tuple(self.context.get_tensor_shape(n)), self._dtype(n)) for n in self.output_names}
        self.buffers[index] = _Buffers(BufferPlan.build(inputs=inputs, outputs=outputs))
        return self.buffers[index]

    def _activate(self, index: int) -> None:
        if self.active_profile != index:
            self.context.set_optimization_profile_async(index, int(self.stream))
            self.active_profile = index

    def _add_profile(self, shape: tuple[int, ...]) -> int:
        """Rebuild (once, cached) with a profile for a whole frame of a size not seen before."""
        log.warning(
            "no TensorRT profile covers input %s: building one (pre-build with 'aoi export "
            "--bundle %s --format tensorrt --frame WxH')",
            shape,
            self.bundle.path,
        )
        # Existing profiles keep their indices and sizes, so their buffers stay.
        self.profiles.append(ShapeProfile.for_frame(height_px=shape[2], width_px=shape[3], channels=shape[1]))
        self._load()
        index = profile_for(self.profiles, shape)
        if index is None:
            raise PipelineError(f"input {shape} is not a batch of (3, H, W) with H, W multiples of 32")
        return index

    def infer(self, batch: np.ndarray) -> np.ndarray:
        from cuda.bindings import runtime as cudart

        x = np.ascontiguousarray(batch, dtype=np.float32)
        shape = tuple(int(s) for s in x.shape)
        index = profile_for(self.profiles, shape)
        if index is None:
            index = self._add_profile(shape)
        bufs = self._buffers_for(index)
        self._activate(index)
        self.context.set_input_shape(INPUT_NAME, shape)
        host_in = bufs.host[INPUT_NAME][: x.size]
        np.copyto(host_in, x.reshape(-1), casting="same_kind")
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _cuda(
            cudart.cudaMemcpyAsync(
                bufs.device[INPUT_NAME], bufs.host_ptr[INPUT_NAME], x.nbytes, h2d, self.stream
            )
        )
        for name in self.names:
            self.context.set_tensor_address(name, bufs.device[name])
        if not self.context.execute_async_v3(int(self.stream)):
            raise PipelineError(f"TensorRT failed to run {self.engine_file.name} on input {shape}")
        out_name = self.output_names[0]
        out_shape = tuple(int(s) for s in self.context.get_tensor_shape(out_name))
        out_buffer = next(b for b in bufs.plan.outputs if b.name == out_name)
        nbytes = out_buffer.used_bytes(out_shape)
        _cuda(
            cudart.cudaMemcpyAsync(bufs.host_ptr[out_name], bufs.device[out_name], nbytes, d2h, self.stream)
        )
        _cuda(cudart.cudaStreamSynchronize(self.stream))
        # A copy: the pinned buffer is overwritten by the next batch.
        n = int(np.prod(out_shape))
        return bufs.host[out_name][:n].reshape(out_shape).astype(np.float32, copy=True)

    def _release_buffers(self) -> None:
        for b in self.buffers.values():
            b.free()
        self.buffers.clear()

    def close(self) -> None:
        """Free the GPU buffers, the pinned memory and the stream."""
        from cuda.bindings import runtime as cudart

        self._release_buffers()
        if self.stream is not None:
            cudart.cudaStreamDestroy(self.stream)
            self.stream = None

    def __del__(self) -> None:
        # At interpreter shutdown cuda-python may be torn down already.
        with contextlib.suppress(Exception):
            self.close()

    def describe(self) -> dict[str, str]:
        return {
            "backend": self.name,
            "device": f"cuda:{self.device_index} ({gpu_name(self.device_index)})",
            "precision": self.precision,
            "engine": self.engine_file.name,
        }
