"""Exporting a bundle's tile network: ONNX graphs (fp32, fp16, int8 Q/DQ) and TensorRT engines.

The exported graph is the family's own tile network (`build_tile_net`), so the
input scaling, the backbone's normalisation, the feature statistics, the map
quantiles and the blur are all inside it; no backend re-implements them.

- fp32 (`model.onnx`): the TorchScript-based `torch.onnx.export` (the dynamo
  exporter needs onnxscript, which the runtime does not install), input
  `image` (N, 3, H, W) float32 in [0, 1], output `map` (N, 1, H, W), with the
  batch, height and width dynamic, so the same graph runs tiles and whole
  frames (sides multiples of 32). The export is checked against torch with
  onnxruntime before it is accepted.
- fp16 (`model.fp16.onnx`): the network in half precision behind float32 I/O,
  for TensorRT's strongly-typed networks (which take precisions from the graph).
- int8 (`model.int8.onnx`): explicit quantization. Q/DQ pairs are inserted in
  front of every learned convolution (onnxruntime.quantization, QDQ format,
  symmetric int8, per-channel weights, min/max calibration on tiles of good
  images): the placement TensorRT's explicit-quantization route wants. The map
  arithmetic after the networks (distances, normalisation, blur) stays in
  float. onnxruntime runs the graph on the CPU too, but slower than fp32 on the
  2-core AVX-512 test machine (8 BVPN tiles of 256 px: 0.66 s vs 0.35 s; with
  every op of the networks quantized 0.42-0.60 s vs 0.31 s), so int8 pays on
  TensorRT only.

Each file is written beside the bundle's files under a temporary name, synced
and renamed into place, then `bundle.yaml`'s `exports` records it (atomically,
with `pipelines.bundle.update_meta`): file, sha256, sha256 of the weights it
came from (a retrained bundle's stale graph is refused), opset, exporter and
versions, the measured parity, and the network's activation memory per pixel
(which `--mode auto` needs).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.bundle import WEIGHTS_FILE, Bundle, now_iso, update_meta
from pipelines.errors import BundleError, PipelineError

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "map"
PRECISIONS = ("fp32", "fp16", "int8")
ONNX_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
EXPORT_KEYS = {"fp32": "onnx", "fp16": "onnx-fp16", "int8": "onnx-int8"}
PARITY_ATOL = 1e-4  # fp32 graph vs torch on the calibrated scale; refuse an export beyond it
# Peak bytes of one op's operands and result per input pixel underestimate a
# runtime's arena (fragmentation, workspaces, the frame itself): measured 1.7x
# for BVPN under onnxruntime at 1952x2656, so 2x keeps "auto" on the safe side.
ACTIVATION_SAFETY = 2.0
CALIB_TILES = 64  # int8 calibration tiles: enough for stable min/max of every layer


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_sha256(bundle: Bundle) -> str:
    return sha256_file(bundle.path / WEIGHTS_FILE)


def export_command(bundle: Bundle, precision: str = "fp32") -> str:
    """The command that (re)writes the graph of `precision`."""
    cmd = f"aoi export --bundle {bundle.path} --format onnx"
    if precision == "int8":
        cmd += " --precision int8 --calib DIR"
    elif precision != "fp32":
        cmd += f" --precision {precision}"
    return cmd


def onnx_record(bundle: Bundle, precision: str = "fp32") -> dict[str, Any] | None:
    """The `exports` entry of the graph of `precision`, if the bundle has one that fits its weights."""
    rec = bundle.meta.exports.get(EXPORT_KEYS[precision])
    if not isinstance(rec, dict) or not (bundle.path / ONNX_FILES[precision]).is_file():
        return None
    if rec.get("weights_sha256") != weights_sha256(bundle):
        return None
    return rec


def onnx_path(bundle: Bundle, precision: str = "fp32") -> Path:
    """The bundle's exported graph of `precision`; one clear BundleError if absent or stale."""
    if precision not in PRECISIONS:
        raise PipelineError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    path = bundle.path / ONNX_FILES[precision]
    if not path.is_file():
        raise BundleError(f"{bundle.path} has no {path.name}: run '{export_command(bundle, precision)}'")
    if onnx_record(bundle, precision) is None:
        raise BundleError(
            f"{path} does not match the bundle's weights (retrained since the export): "
            f"run '{export_command(bundle, precision)}' again"
        )
    return path


def activation_bytes_per_px(bundle: Bundle) -> float | None:
    """Activation memory per input pixel recorded at export (bytes), or None."""
    rec = onnx_record(bundle, "fp32")
    value = rec.get("activation_bytes_per_px") if rec else None
    return float(value) if value is not None else None


RF_PROBE_PX = 1024  # side of the input the receptive field is measured on
HALO_STEP_PX = 32  # halos are whole stride cells (the backbone's total stride)


def measure_receptive_radius(net: Any, *, channels: int = 3, side_px: int = RF_PROBE_PX) -> int:
    """The network's receptive-field radius in input pixels, measured: the farthest input pixel
    (Chebyshev distance) with a non-zero gradient of the output map's centre pixel, on a random
    input of `side_px`. A conservative halo for exact tiles adds one stride cell on top
    (`halo_for`). Raises if the field reaches the probe's edge (too wide to measure)."""
    import torch

    c = side_px // 2
    g = torch.Generator().manual_seed(0)
    x = torch.rand((1, channels, side_px, side_px), generator=g).requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(net(x)[0, 0, c, c], x)
    ys, xs = np.nonzero(grad.abs().sum(dim=(0, 1)).numpy())
    radius = int(max(np.abs(ys - c).max(), np.abs(xs - c).max()))
    if radius >= c - 1:
        raise PipelineError(
            f"the network's receptive field reaches {side_px // 2} px or more: too wide for halo "
            "tiles; use inference mode tiles or whole"
        )
    return radius


def halo_for(radius_px: int) -> int:
    """The halo that makes halo tiles exact: the radius plus one stride cell, rounded up to cells."""
    return -(-(radius_px + HALO_STEP_PX) // HALO_STEP_PX) * HALO_STEP_PX


def receptive_radius_px(bundle: Bundle) -> int:
    """The bundle's receptive-field radius: recorded at export, else measured on its torch network."""
    rec = onnx_record(bundle, "fp32")
    if rec and "receptive_radius_px" in rec:
        if rec["receptive_radius_px"] is None:  # measured at export: too wide, or a golden-reference model
            raise PipelineError(
                f"{bundle.path}: the network's receptive field is too wide for halo tiles (or it takes a "
                "golden reference); use inference mode tiles or whole"
            )
        return int(rec["receptive_radius_px"])
    try:
        net = _tile_net(bundle)
    except ImportError as exc:
        raise PipelineError(
            f"halo tiles need the receptive field of {bundle.path}: run '{export_command(bundle, 'fp32')}' "
            "on a machine with torch (it records it)"
        ) from exc
    return measure_receptive_radius(net, channels=bundle.meta.input_channels)


def network_costs(net: Any, shape: tuple[int, int, int, int]) -> tuple[float, float]:
    """(FLOPs, peak bytes of any single op's operands + result) of `net` on an input of `shape`.

    Runs on the meta device (shapes only, no arithmetic), so a whole frame costs
    nothing; FLOPs are torch's FlopCounterMode count (2 per multiply-add of
    convolutions and matrix products)."""
    import copy

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten
    from torch.utils.flop_counter import FlopCounterMode

    class PeakBytes(TorchDispatchMode):
        peak = 0

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            leaves, _ = tree_flatten((args, kwargs, out))
            size = sum(t.numel() * t.element_size() for t in leaves if isinstance(t, torch.Tensor))
            self.peak = max(self.peak, size)
            return out

    meta_net = copy.deepcopy(net).to("meta")
    x = torch.empty(shape, device="meta")
    counter = FlopCounterMode(display=False)
    peak = PeakBytes()
    with torch.inference_mode(), counter, peak:
        meta_net(x)
    return float(counter.get_total_flops()), float(peak.peak)


def _tile_net(bundle: Bundle) -> Any:
    from pipelines.models.registry import inference_module

    return inference_module(bundle.meta.family).build_tile_net(bundle.meta, bundle.tensors).eval()


def _half_wrapper(net: Any) -> Any:
    """The network in fp16 behind float32 input and output (one graph for every runtime's I/O)."""
    import copy

    from torch import nn

    class Half(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = copy.deepcopy(inner).half()

        def forward(self, x: Any) -> Any:
            return self.inner(x.half()).float()

    return Half(net)


@contextlib.contextmanager
def _staged(final: Path) -> Iterator[Path]:
    """A temporary path beside `final`, fsynced and renamed onto it on success, removed on failure."""
    tmp = final.with_name(f".{final.name}.partial-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def ort_session(path: Path, *, threads: int | None = None) -> Any:
    """A CPU onnxruntime session with the options every backend uses (optimise all, sequential)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = int(threads or 0)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # warnings about unused initialisers are noise here
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _probe_inputs(tile_px: int, channels: int = 3) -> list[np.ndarray]:
    """A batch of tiles and one non-square, two-tile-wide image (checks the dynamic axes); a
    golden-reference model (6 channels) runs tiles only, so it gets the batch of tiles only."""
    rng = np.random.default_rng(0)
    probes = [rng.random((2, channels, tile_px, tile_px), dtype=np.float32)]
    if channels == 3:
        probes.append(rng.random((1, 3, tile_px, 2 * tile_px), dtype=np.float32))
    return probes


def _max_diff_torch_vs_ort(module: Any, path: Path, probes: list[np.ndarray]) -> float | None:
    try:
        session = ort_session(path)
    except ImportError:
        log.warning("onnxruntime is not installed: the exported graph was not checked against torch")
        return None
    import torch

    worst = 0.0
    with torch.inference_mode():
        for x in probes:
            ref = module(torch.from_numpy(x)).float().numpy()
            out = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
            worst = max(worst, float(np.abs(ref - out).max()))
    return worst


def export_onnx(
    bundle: Bundle, *, precision: str = "fp32", opset: int = OPSET, calib_dir: Path | None = None
) -> Bundle:
    """Write the graph of `precision` into the bundle and record it; returns the reloaded bundle."""
    if precision not in PRECISIONS:
        raise PipelineError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "int8":
        if calib_dir is None:
            raise PipelineError(
                "int8 needs calibration images: pass --calib DIR (good images, e.g. the training "
                "data's train/good)"
            )
        if bundle.meta.input_channels != 3:
            raise PipelineError(
                "int8 calibration of a golden-reference model (tile and golden tile) is not "
                "supported: export fp16 or fp32"
            )
        return _export_int8(bundle, calib_dir=calib_dir)
    try:
        import torch
    except ImportError as exc:
        raise PipelineError("exporting needs torch: pip install '.[torch]'") from exc
    try:
        import onnx
    except ImportError as exc:
        raise PipelineError("exporting needs onnx: pip install '.[onnx]'") from exc
    net = _tile_net(bundle)
    t = bundle.meta.tiles.tile_px
    c = bundle.meta.input_channels
    flops, peak = network_costs(net, (1, c, t, t))
    radius = None  # recorded as None: golden models run tiles only; too wide a field for halos
    if c == 3:
        with contextlib.suppress(PipelineError):
            radius = measure_receptive_radius(net, channels=c)
    module = net if precision == "fp32" else _half_wrapper(net)
    final = bundle.path / ONNX_FILES[precision]
    dyn = {0: "batch", 2: "height", 3: "width"}
    with _staged(final) as tmp:
        with warnings.catch_warnings():
            # The TorchScript exporter announces its deprecation on every call.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (torch.from_numpy(_probe_inputs(t, c)[0]),),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: dyn, OUTPUT_NAME: dyn},
                do_constant_folding=True,
            )
        onnx.checker.check_model(str(tmp))
        # fp16 is held to fp32 torch: its diff is the precision's own cost, recorded, not refused.
        diff = _max_diff_torch_vs_ort(net, tmp, _probe_inputs(t, c))
        if precision == "fp32" and diff is not None and diff > PARITY_ATOL:
            raise PipelineError(
                f"the exported graph differs from torch by {diff:.2e} (> {PARITY_ATOL:g}) on the "
                "calibrated scale: the export is refused; report this with the bundle's bundle.yaml"
            )
    record = {
        "file": final.name,
        "precision": precision,
        "sha256": sha256_file(final),
        "weights_sha256": weights_sha256(bundle),
        "opset": opset,
        "exporter": f"torch.onnx.export (TorchScript), torch {torch.__version__}",
        "onnx": onnx.__version__,
        "input": {"name": INPUT_NAME, "shape": ["batch", c, "height", "width"], "dtype": "float32"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", 1, "height", "width"], "dtype": "float32"},
        "parity_max_abs_vs_torch": diff,
        "tile_gflops": round(flops / 1e9, 4),
        "activation_bytes_per_px": round(ACTIVATION_SAFETY * peak / (t * t), 1),
        "receptive_radius_px": radius,
        "created": now_iso(),
    }
    return _record(bundle, EXPORT_KEYS[precision], record)


def _record(bundle: Bundle, key: str, record: dict[str, Any]) -> Bundle:
    exports = dict(bundle.meta.exports)
    exports[key] = record
    return update_meta(bundle, exports=exports)


def calibration_tiles(calib_dir: Path, *, tile_px: int, count: int, seed: int = 0) -> np.ndarray:
    """Up to `count` tiles (N, 3, t, t) float32 in [0, 1] cut from the images under `calib_dir`."""
    from pipelines.data import list_images, read_image
    from pipelines.tiling import TilePlan

    paths = list_images(calib_dir)
    if not paths:
        raise PipelineError(f"--calib {calib_dir} contains no images (png, jpg, bmp, tif)")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(paths))
    tiles: list[np.ndarray] = []
    per_image = max(1, count // min(len(paths), count))
    for i in order:
        img = read_image(paths[int(i)])
        plan = TilePlan.for_shape(
            height_px=img.shape[0], width_px=img.shape[1], tile_px=tile_px, overlap_px=0
        )
        cut = plan.tiles(img)
        pick = rng.choice(len(cut), size=min(per_image, len(cut)), replace=False)
        tiles.extend(cut[pick])
        if len(tiles) >= count:
            break
    batch = np.stack(tiles[:count]).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    return np.ascontiguousarray(batch)


def _learned_convs(model: Any) -> list[str]:
    """Names of Conv nodes with learned multi-channel weights (not the map's 1-channel blur)."""
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        dims = inits.get(node.input[1])
        if dims is not None and dims[0] > 1:
            names.append(node.name)
    return names


def _export_int8(bundle: Bundle, *, calib_dir: Path) -> Bundle:
    try:
        import onnx
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )
    except ImportError as exc:
        raise PipelineError("int8 export needs onnx and onnxruntime: pip install '.[onnx]'") from exc
    if onnx_record(bundle, "fp32") is None:
        bundle = export_onnx(bundle, precision="fp32")
    src = onnx_path(bundle, "fp32")
    tiles = calibration_tiles(calib_dir, tile_px=bundle.meta.tiles.tile_px, count=CALIB_TILES)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(range(0, len(tiles), 4))

        def get_next(self) -> dict[str, np.ndarray] | None:
            i = next(self.it, None)
            return None if i is None else {INPUT_NAME: tiles[i : i + 4]}

    nodes = _learned_convs(onnx.load(str(src)))
    final = bundle.path / ONNX_FILES["int8"]
    with _staged(final) as tmp:
        quantize_static(
            str(src),
            str(tmp),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_quantize=nodes,
            # TensorRT's explicit quantization takes symmetric scales only (zero point 0).
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
        ref = ort_session(src).run([OUTPUT_NAME], {INPUT_NAME: tiles[:8]})[0]
        out = ort_session(tmp).run([OUTPUT_NAME], {INPUT_NAME: tiles[:8]})[0]
        diff = float(np.abs(ref - out).max())
    import onnxruntime

    record = {
        "file": final.name,
        "precision": "int8",
        "sha256": sha256_file(final),
        "weights_sha256": weights_sha256(bundle),
        "opset": int(onnx.load(str(final)).opset_import[0].version),
        "exporter": f"onnxruntime.quantization {onnxruntime.__version__} (QDQ, symmetric int8, per-channel)",
        "source": src.name,
        "quantized_nodes": len(nodes),
        "calibration": {"dir": str(calib_dir), "tiles": len(tiles), "method": "minmax"},
        "max_abs_vs_fp32_on_calibration_tiles": diff,
        "created": now_iso(),
    }
    return _record(bundle, EXPORT_KEYS["int8"], record)


def export_engine(
    bundle: Bundle,
    *,
    precision: str = "fp16",
    batch_size: int = 8,
    frames_hw: tuple[tuple[int, int], ...] = (),
    calib_dir: Path | None = None,
) -> tuple[Bundle, Path]:
    """Build (or find cached) the TensorRT engine for this GPU and record it in `exports`;
    returns the reloaded bundle and the engine's path.

    The ONNX graph it needs is exported first when the bundle lacks it: fp32
    always; int8 (Q/DQ) from `calib_dir`; fp16 where TensorRT builds strongly
    typed networks only."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise PipelineError(
            "--format tensorrt needs TensorRT and cuda-python on a machine with an NVIDIA GPU "
            "(pip install tensorrt '.[tensorrt]', or JetPack on a Jetson)"
        ) from exc
    from pipelines.backends import tensorrt_backend as tb
    from pipelines.backends.trt_plan import default_profiles

    if precision not in PRECISIONS:
        raise PipelineError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if onnx_record(bundle, "fp32") is None:
        bundle = export_onnx(bundle, precision="fp32")
    source = tb.graph_precision(trt, precision)
    if onnx_record(bundle, source) is None:
        bundle = export_onnx(bundle, precision=source, calib_dir=calib_dir)
    profiles = default_profiles(tile_px=bundle.meta.tiles.tile_px, batch_size=batch_size, frames_hw=frames_hw)
    path, _, built = tb.ensure_engine(trt, bundle, precision=precision, profiles=profiles)
    engines = dict(bundle.meta.exports.get("tensorrt") or {})
    engines[path.name] = {
        "precision": precision,
        "gpu": tb.gpu_name(),
        "tensorrt": str(trt.__version__),
        "profiles": [
            {"min": list(p.min_shape), "opt": list(p.opt_shape), "max": list(p.max_shape)} for p in profiles
        ],
        "source": ONNX_FILES[source],
        "strongly_typed": tb.strongly_typed_only(trt),
        "sha256": sha256_file(path),
        "built_now": built,
        "created": now_iso(),
    }
    exports = dict(bundle.meta.exports)
    exports["tensorrt"] = engines
    return update_meta(bundle, exports=exports), path
