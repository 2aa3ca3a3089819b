"""Tiling and stitching: exact round trips, constants, a hot pixel near a border."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pipelines.tiling import TilePlan, batches


@pytest.mark.parametrize(("h", "w"), [(2624, 1913), (460, 1130), (256, 256), (300, 257), (100, 77)])
def test_tiles_cover_the_frame_and_round_trip(h: int, w: int) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
    plan = TilePlan.for_shape(height_px=h, width_px=w, tile_px=256, overlap_px=32)
    tiles = plan.tiles(image)
    assert tiles.shape == (plan.count, 256, 256, 3)
    # Every tile is the frame's own pixels where the frame exists (no squashing).
    for (y, x), tile in zip(plan.positions(), tiles, strict=True):
        hh, ww = min(256, h - y), min(256, w - x)
        np.testing.assert_array_equal(tile[:hh, :ww], image[y : y + hh, x : x + ww])
    # Neighbouring tiles overlap by at least the requested amount.
    for starts in (plan.ys, plan.xs):
        for a, b in itertools.pairwise(starts):
            assert a + 256 - b >= 32
    # Each channel stitched back is the image exactly.
    for c in range(3):
        back = plan.stitch(tiles[..., c].astype(np.float32))
        np.testing.assert_allclose(back, image[..., c], atol=1e-3)


def test_constant_map_stitches_to_the_same_constant() -> None:
    plan = TilePlan.for_shape(height_px=2624, width_px=1913, tile_px=256, overlap_px=48)
    maps = np.full((plan.count, 256, 256), 0.37, np.float32)
    out = plan.stitch(maps)
    assert out.shape == (2624, 1913)
    np.testing.assert_allclose(out, 0.37, rtol=1e-6)


def test_hot_pixel_near_a_tile_border_returns_in_place() -> None:
    plan = TilePlan.for_shape(height_px=700, width_px=900, tile_px=256, overlap_px=32)
    y, x = plan.ys[1] + 1, plan.xs[1] + 2  # inside the overlap of several tiles
    full = np.zeros((700, 900), np.float32)
    full[y, x] = 5.0
    maps = plan.tiles(full[..., None])[..., 0]
    out = plan.stitch(maps)
    assert np.unravel_index(out.argmax(), out.shape) == (y, x)
    assert out[y, x] == pytest.approx(5.0, rel=1e-5)
    assert np.count_nonzero(out > 1e-6) == 1


def test_seams_do_not_show_with_disagreeing_tiles() -> None:
    # Tiles that disagree by a constant offset blend smoothly: no step at a tile edge.
    plan = TilePlan.for_shape(height_px=256, width_px=480, tile_px=256, overlap_px=64)
    maps = np.stack([np.full((256, 256), float(i), np.float32) for i in range(plan.count)])
    row = plan.stitch(maps)[128]
    assert np.abs(np.diff(row)).max() < 0.1


def test_bad_plans_are_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        TilePlan.for_shape(height_px=100, width_px=100, tile_px=64, overlap_px=64)
    plan = TilePlan.for_shape(height_px=100, width_px=100, tile_px=64, overlap_px=8)
    with pytest.raises(ValueError, match="plan is for"):
        plan.tiles(np.zeros((90, 100), np.uint8))


def test_batches() -> None:
    assert [len(b) for b in batches(np.zeros(10), batch_size=4)] == [4, 4, 2]


def test_margin_keeps_tile_edges_off_the_frame_border() -> None:
    from pipelines.inference import TiledAnalyser

    def edge_artefact(x: np.ndarray) -> np.ndarray:
        # A network whose output is wrong only at its own tile edge (zero padding).
        out = np.zeros((x.shape[0], 1, x.shape[2], x.shape[3]), np.float32)
        out[:, :, :4, :] = out[:, :, -4:, :] = out[:, :, :, :4] = out[:, :, :, -4:] = 9.0
        return out

    image = np.zeros((300, 500, 3), np.uint8)
    bare = TiledAnalyser(edge_artefact, tile_px=128, overlap_px=32, margin_px=0)
    padded = TiledAnalyser(edge_artefact, tile_px=128, overlap_px=32, margin_px=16)
    assert bare.tile_map(image)[0].max() > 1.0  # the artefact shows on the frame's top row
    m = padded.tile_map(image)
    assert m.shape == (300, 500)
    assert m.max() < 0.5


def test_blend_weights_are_computed_once_and_cannot_be_changed() -> None:
    plan = TilePlan.for_shape(height_px=700, width_px=900, tile_px=256, overlap_px=32)
    weights = plan.weights()
    assert weights is plan.weights()
    with pytest.raises(ValueError, match="read-only"):
        weights[0, 0, 0] = 2.0
    maps = np.random.default_rng(1).random((plan.count, 256, 256), dtype=np.float32)
    kept = maps.copy()
    first = plan.stitch(maps)
    np.testing.assert_array_equal(plan.stitch(maps), first)  # no state carried between frames
    np.testing.assert_array_equal(maps, kept)  # the caller's maps are not touched
