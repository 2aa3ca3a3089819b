"""TensorRT's surroundings without TensorRT: shape profiles, engine-cache keys, the buffer plan."""

from __future__ import annotations

from typing import Any

import pytest

from pipelines.backends.trt_plan import (
    ALIGNMENT_BYTES,
    BufferPlan,
    ShapeProfile,
    default_profiles,
    engine_file_name,
    profile_for,
    round_up,
    slug,
)

DIGEST = "ab" * 32


def test_tile_profile_spans_one_to_twice_the_batch() -> None:
    p = ShapeProfile.for_tiles(tile_px=256, batch_size=8)
    assert p.min_shape == (1, 3, 256, 256)
    assert p.opt_shape == (8, 3, 256, 256)
    assert p.max_shape == (16, 3, 256, 256)
    assert p.contains((1, 3, 256, 256)) and p.contains((16, 3, 256, 256))
    assert not p.contains((17, 3, 256, 256))
    assert not p.contains((4, 3, 256, 288))
    assert p.key == "b1-8-16x256x256"


def test_frame_profile_rounds_up_to_multiples_of_32() -> None:
    p = ShapeProfile.for_frame(height_px=2656, width_px=1945)
    assert p.min_shape == p.opt_shape == p.max_shape == (1, 3, 2656, 1952)
    assert p.key == "b1x2656x1952"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"tile_px": 250, "batch_size": 8}, "multiple of 32"), ({"tile_px": 256, "batch_size": 0}, ">= 1")],
)
def test_bad_tile_profiles_are_refused(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ShapeProfile.for_tiles(**kwargs)


def test_profile_order_must_hold() -> None:
    with pytest.raises(ValueError, match="min <= opt <= max"):
        ShapeProfile((2, 3, 64, 64), (1, 3, 64, 64), (4, 3, 64, 64))


def test_default_profiles_put_tiles_first_and_deduplicate_frames() -> None:
    profiles = default_profiles(tile_px=64, batch_size=4, frames_hw=[(2656, 1952), (2650, 1950), (640, 480)])
    assert [p.key for p in profiles] == ["b1-4-8x64x64", "b1x2656x1952", "b1x640x480"]
    assert profile_for(profiles, (3, 3, 64, 64)) == 0
    assert profile_for(profiles, (1, 3, 640, 480)) == 2
    assert profile_for(profiles, (1, 3, 704, 480)) is None


def test_engine_name_changes_with_every_input_of_the_build() -> None:
    tiles = [ShapeProfile.for_tiles(tile_px=256, batch_size=8)]
    base: dict[str, Any] = {
        "gpu_name": "NVIDIA GeForce RTX 4090",
        "trt_version": "10.7.0",
        "precision": "fp16",
        "profiles": tiles,
        "onnx_sha256": DIGEST,
    }
    name = engine_file_name(**base)
    assert name == "nvidia-geforce-rtx-4090-trt10.7.0-fp16-b1-8-16x256x256-abababababab.engine"
    variants: list[dict[str, Any]] = [
        {"gpu_name": "Orin (nvgpu)"},
        {"trt_version": "10.8.0"},
        {"precision": "int8"},
        {"profiles": [ShapeProfile.for_tiles(tile_px=256, batch_size=4)]},
        {"profiles": [*tiles, ShapeProfile.for_frame(height_px=2656, width_px=1952)]},
        {"onnx_sha256": "cd" * 32},
    ]
    names = {engine_file_name(**{**base, **v}) for v in variants}
    assert name not in names and len(names) == len(variants)


def test_engine_name_refuses_unknown_precision_and_empty_profiles() -> None:
    with pytest.raises(ValueError, match="precision"):
        engine_file_name(gpu_name="x", trt_version="10", precision="fp8", profiles=[], onnx_sha256=DIGEST)
    with pytest.raises(ValueError, match="at least one"):
        engine_file_name(gpu_name="x", trt_version="10", precision="fp16", profiles=[], onnx_sha256=DIGEST)


def test_slug_is_file_name_safe() -> None:
    assert slug("NVIDIA A100-SXM4-80GB") == "nvidia-a100-sxm4-80gb"
    assert slug("  ") == "unknown"
    assert slug("Orin (nvgpu)/x") == "orin-nvgpu-x"


def test_buffer_plan_sizes_for_the_largest_shape_aligned() -> None:
    p = ShapeProfile.for_tiles(tile_px=64, batch_size=4)
    out_max = (p.max_shape[0], 1, 64, 64)
    plan = BufferPlan.build(inputs={"image": (p.max_shape, "float32")}, outputs={"map": (out_max, "float32")})
    assert [b.name for b in plan.inputs] == ["image"] and [b.name for b in plan.outputs] == ["map"]
    assert plan.inputs[0].nbytes == 8 * 3 * 64 * 64 * 4
    assert all(b.nbytes % ALIGNMENT_BYTES == 0 for b in plan.buffers)
    assert plan.total_bytes == sum(b.nbytes for b in plan.buffers)
    # A smaller batch uses the front of the same buffer; a larger one is refused.
    assert plan.outputs[0].used_bytes((3, 1, 64, 64)) == 3 * 64 * 64 * 4
    with pytest.raises(ValueError, match="exceeds"):
        plan.outputs[0].used_bytes((9, 1, 64, 64))


def test_buffer_plan_aligns_odd_sizes_and_refuses_unknown_dims() -> None:
    plan = BufferPlan.build(inputs={"x": ((1, 3, 5, 7), "float16")}, outputs={})
    assert plan.buffers[0].nbytes == round_up(3 * 5 * 7 * 2, multiple=ALIGNMENT_BYTES) == 256
    with pytest.raises(ValueError, match="fully known"):
        BufferPlan.build(inputs={"x": ((-1, 3, 64, 64), "float32")}, outputs={})
    with pytest.raises(ValueError, match="dtype"):
        BufferPlan.build(inputs={"x": ((1, 3, 64, 64), "complex64")}, outputs={})
