"""The onnxruntime backend: the bundle's exported graph (`model.onnx`) on CPU, CUDA or TensorRT providers.

On a CPU this is the fast path: onnxruntime fuses the backbone's conv + BN +
activation chains and runs them on its own GEMM kernels, several times faster
than torch eager for these networks (see `aoi bench`). Session options:
every graph optimisation, sequential execution, `threads` intra-op threads
(0 lets onnxruntime take one per physical core). The CUDA and TensorRT
execution providers are used first when the installed onnxruntime has them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pipelines.backends.base import Backend
from pipelines.bundle import Bundle
from pipelines.errors import PipelineError
from pipelines.export import INPUT_NAME, OUTPUT_NAME, onnx_path, ort_session

# Most capable first; onnxruntime falls back along the list per node.
PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
DEVICES = {
    "TensorrtExecutionProvider": "cuda (tensorrt provider)",
    "CUDAExecutionProvider": "cuda",
    "CPUExecutionProvider": "cpu",
}


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(
        self,
        bundle: Bundle,
        *,
        threads: int | None = None,
        precision: str | None = None,
        providers: Sequence[str] | None = None,
        io_binding: bool = False,
    ) -> None:
        """`precision`: "fp32" (model.onnx, the default) or "int8" (model.int8.onnx, Q/DQ);
        `providers`: onnxruntime execution providers, default the best installed ones."""
        super().__init__(bundle, threads=threads)
        import onnxruntime as ort

        self.precision = precision or "fp32"
        if self.precision not in ("fp32", "int8"):
            raise PipelineError(
                f"onnxruntime runs fp32 or int8 graphs, not {self.precision!r}: fp16 is for GPUs "
                "(--backend tensorrt or torch on CUDA)"
            )
        path = onnx_path(bundle, self.precision)
        available = set(ort.get_available_providers())
        chosen = [p for p in (providers or PROVIDER_ORDER) if p in available]
        if not chosen:
            raise PipelineError(
                f"none of the providers {list(providers or PROVIDER_ORDER)} is in this onnxruntime "
                f"(it has {sorted(available)})"
            )
        if chosen == ["CPUExecutionProvider"]:
            self.session = ort_session(path, threads=threads)
        else:
            self.session = self._gpu_session(ort, path, chosen, threads)
        self.io_binding = io_binding
        self.provider = self.session.get_providers()[0]

    def _gpu_session(self, ort: Any, path: Any, providers: list[str], threads: int | None) -> Any:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = int(threads or 0)
        so.log_severity_level = 3
        options: list[dict[str, Any]] = []
        for p in providers:
            if p == "TensorrtExecutionProvider":
                # fp32 engines keep the provider's maps equal to the CPU's; the cache skips
                # rebuilds where the bundle is writable.
                cache = self.bundle.path / "engines" / "onnxruntime-trt"
                try:
                    cache.mkdir(parents=True, exist_ok=True)
                    options.append({"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache)})
                except OSError:
                    options.append({})
            else:
                options.append({})
        return ort.InferenceSession(str(path), so, providers=providers, provider_options=options)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if not self.io_binding:
            out: np.ndarray = self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
            return out
        binding = self.session.io_binding()
        binding.bind_cpu_input(INPUT_NAME, x)
        binding.bind_output(OUTPUT_NAME, "cpu")
        self.session.run_with_iobinding(binding)
        result: np.ndarray = binding.copy_outputs_to_cpu()[0]
        return result

    def describe(self) -> dict[str, str]:
        return {
            "backend": self.name,
            "device": DEVICES.get(self.provider, self.provider),
            "precision": self.precision,
        }
