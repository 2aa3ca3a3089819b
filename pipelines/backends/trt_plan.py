"""What a TensorRT engine is built for and how its buffers are laid out: pure Python.

The TensorRT backend (`tensorrt_backend.py`) needs TensorRT and a GPU; the
decisions around it do not, and are tested on their own here:

- `ShapeProfile`: the min/opt/max input shapes of one optimization profile.
  Tiles: batch 1 .. 2x the batch size, optimised for the batch size, at the
  bundle's tile size. Whole frame: batch 1 at the frame padded to a multiple
  of 32 (the backbone's static padding is exact only there).
- `engine_file_name`: engines are cached in the bundle under
  `engines/<gpu>-<trt version>-<precision>-<shape key>.engine`, so a change of
  GPU, TensorRT version, precision or shapes finds no file and rebuilds.
- `BufferPlan`: one device buffer and one pinned host buffer per I/O tensor,
  sized for the profile's largest shape and allocated once; a frame of any
  shape inside the profile uses the leading part of them (no per-frame
  allocation).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence

PRECISIONS = ("fp32", "fp16", "int8")
SPATIAL_MULTIPLE_PX = 32  # the backbone's total stride; its static padding is exact for multiples
ALIGNMENT_BYTES = 256  # cudaMalloc's own alignment; keeps every tensor in an arena coalesced

Shape = tuple[int, ...]

# numpy dtype names of the TensorRT data types we bind (TensorRT's DataType enum names).
DTYPE_BYTES: dict[str, int] = {"float32": 4, "float16": 2, "int8": 1, "int32": 4, "int64": 8, "bool": 1}


def round_up(value: int, *, multiple: int) -> int:
    """The smallest multiple of `multiple` that is >= `value`."""
    return -(-value // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class ShapeProfile:
    """One optimization profile of the input tensor `(N, C, H, W)`."""

    min_shape: Shape
    opt_shape: Shape
    max_shape: Shape

    def __post_init__(self) -> None:
        if not len(self.min_shape) == len(self.opt_shape) == len(self.max_shape):
            raise ValueError("min, opt and max shapes need the same rank")
        for lo, opt, hi in zip(self.min_shape, self.opt_shape, self.max_shape, strict=True):
            if not 1 <= lo <= opt <= hi:
                raise ValueError(f"need 1 <= min <= opt <= max per axis, got {self}")

    @classmethod
    def for_tiles(cls, *, tile_px: int, batch_size: int, channels: int = 3) -> ShapeProfile:
        """Batches of tiles: 1 .. 2x `batch_size`, optimised for `batch_size`."""
        if tile_px % SPATIAL_MULTIPLE_PX:
            raise ValueError(f"tile_px {tile_px} is not a multiple of {SPATIAL_MULTIPLE_PX}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return cls(
            (1, channels, tile_px, tile_px),
            (batch_size, channels, tile_px, tile_px),
            (2 * batch_size, channels, tile_px, tile_px),
        )

    @classmethod
    def for_frame(cls, *, height_px: int, width_px: int, channels: int = 3) -> ShapeProfile:
        """One whole (already padded) frame; sides are rounded up to multiples of 32."""
        h = round_up(height_px, multiple=SPATIAL_MULTIPLE_PX)
        w = round_up(width_px, multiple=SPATIAL_MULTIPLE_PX)
        shape = (1, channels, h, w)
        return cls(shape, shape, shape)

    def contains(self, shape: Sequence[int]) -> bool:
        """True when `shape` lies inside [min, max] on every axis."""
        return len(shape) == len(self.min_shape) and all(
            lo <= s <= hi for lo, s, hi in zip(self.min_shape, shape, self.max_shape, strict=True)
        )

    @property
    def key(self) -> str:
        """A short, readable name: `b1-8-16x256x256` for tiles, `b1x2656x1952` for a frame."""
        n_lo, _, h_lo, w_lo = self.min_shape
        n_opt = self.opt_shape[0]
        n_hi, _, h_hi, w_hi = self.max_shape
        batch = f"b{n_lo}" if n_lo == n_opt == n_hi else f"b{n_lo}-{n_opt}-{n_hi}"
        space = f"{h_hi}x{w_hi}" if (h_lo, w_lo) == (h_hi, w_hi) else f"{h_lo}x{w_lo}-{h_hi}x{w_hi}"
        return f"{batch}x{space}"


def profiles_key(profiles: Sequence[ShapeProfile]) -> str:
    """The shape part of an engine's file name, covering every profile it was built with."""
    if not profiles:
        raise ValueError("an engine needs at least one shape profile")
    return "_".join(p.key for p in profiles)


def slug(text: str) -> str:
    """A file-name-safe lower-case form: 'NVIDIA GeForce RTX 4090' -> 'nvidia-geforce-rtx-4090'."""
    s = re.sub(r"[^a-z0-9.]+", "-", text.strip().lower()).strip("-")
    return s or "unknown"


def engine_file_name(
    *, gpu_name: str, trt_version: str, precision: str, profiles: Sequence[ShapeProfile], onnx_sha256: str
) -> str:
    """`<gpu>-<trt version>-<precision>-<shape key>-<graph>.engine`.

    Every input that changes the engine is in the name, so a cached engine is
    reused exactly when it was built for this GPU, TensorRT, precision, shapes
    and graph (`onnx_sha256`: re-exporting the model invalidates the engine)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    head = f"{slug(gpu_name)}-trt{slug(trt_version)}-{precision}"
    return f"{head}-{profiles_key(profiles)}-{onnx_sha256[:12]}.engine"


def profile_for(profiles: Sequence[ShapeProfile], shape: Sequence[int]) -> int | None:
    """The index of the first profile that contains `shape`, or None."""
    for i, p in enumerate(profiles):
        if p.contains(shape):
            return i
    return None


def default_profiles(
    *, tile_px: int, batch_size: int, frames_hw: Iterable[tuple[int, int]] = (), channels: int = 3
) -> list[ShapeProfile]:
    """The tile profile first, then one per whole-frame size (deduplicated, in order)."""
    out = [ShapeProfile.for_tiles(tile_px=tile_px, batch_size=batch_size, channels=channels)]
    for h, w in frames_hw:
        p = ShapeProfile.for_frame(height_px=h, width_px=w, channels=channels)
        if p not in out:
            out.append(p)
    return out


@dataclasses.dataclass(frozen=True)
class TensorBuffer:
    """One I/O tensor's buffer: its capacity shape, dtype and byte size (aligned)."""

    name: str
    is_input: bool
    max_shape: Shape
    dtype: str
    nbytes: int

    def used_bytes(self, shape: Sequence[int]) -> int:
        """Bytes that a tensor of `shape` (within `max_shape`) occupies."""
        if len(shape) != len(self.max_shape) or any(
            s > m for s, m in zip(shape, self.max_shape, strict=True)
        ):
            raise ValueError(f"{self.name}: shape {tuple(shape)} exceeds the buffer's {self.max_shape}")
        return math.prod(shape) * DTYPE_BYTES[self.dtype]


@dataclasses.dataclass(frozen=True)
class BufferPlan:
    """Buffers for every I/O tensor of one profile, sized for its largest shapes."""

    buffers: tuple[TensorBuffer, ...]

    @classmethod
    def build(
        cls,
        *,
        inputs: Mapping[str, tuple[Sequence[int], str]],
        outputs: Mapping[str, tuple[Sequence[int], str]],
    ) -> BufferPlan:
        """`inputs`/`outputs`: name -> (max shape, dtype name); byte sizes are aligned."""
        items: list[TensorBuffer] = []
        for is_input, group in ((True, inputs), (False, outputs)):
            for name, (shape, dtype) in group.items():
                if dtype not in DTYPE_BYTES:
                    raise ValueError(f"{name}: unsupported dtype {dtype!r}")
                if any(int(s) < 1 for s in shape):
                    raise ValueError(f"{name}: max shape {tuple(shape)} must be fully known and positive")
                size = math.prod(int(s) for s in shape) * DTYPE_BYTES[dtype]
                items.append(
                    TensorBuffer(
                        name=name,
                        is_input=is_input,
                        max_shape=tuple(int(s) for s in shape),
                        dtype=dtype,
                        nbytes=round_up(size, multiple=ALIGNMENT_BYTES),
                    )
                )
        return cls(tuple(items))

    @property
    def total_bytes(self) -> int:
        return sum(b.nbytes for b in self.buffers)

    @property
    def inputs(self) -> tuple[TensorBuffer, ...]:
        return tuple(b for b in self.buffers if b.is_input)

    @property
    def outputs(self) -> tuple[TensorBuffer, ...]:
        return tuple(b for b in self.buffers if not b.is_input)
