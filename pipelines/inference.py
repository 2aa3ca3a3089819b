"""The one inference path: tile a frame, infer tiles in batches, stitch, fuse.

`TiledAnalyser` is used by training (held-out statistics), `aoi predict`,
`aoi eval`, `aoi calibrate` and the line's inspector alike, whatever the
backend: the backend only maps a float batch (N, C, t, t) to maps (N, 1, t, t) (C = 3,
or 6 for a golden-reference model: the tile and the golden tile).

Modes: "tiles" (the default) cuts the frame into overlapping tiles and
stitches; "whole" runs the fully-convolutional network once over the whole
frame; "halo" gives the whole frame's map with bounded memory (below); "auto"
takes "whole" when its estimated activation memory fits in half of the
available memory, else "halo" (the same map), else "tiles" (a network whose
receptive field is too wide for halos). Whole-frame border handling: the
frame is reflect-padded by `margin_px` on every side (exactly what a frame-edge
tile sees, so the frame's edges are treated alike in both modes), then further
reflect-padded on the bottom and right up to a multiple of 32 (the backbone's
static padding is exact only there), and the map is cropped back. Inside the
frame the two modes differ where a tile's own zero padding cut its receptive
field short; `tests/pipelines/test_export_parity.py` measures how much.

Halo tiles ("halo") make tiles give the whole frame's map exactly. The frame
is padded as for "whole" and cut into cores of `core_px`, each run with a halo
of `halo_px` on every side where the padded frame goes on (clipped at its
edges, where the whole frame has the same edge); only the core is kept. An
output pixel depends only on input within the network's receptive-field
radius, and the halo covers that radius plus one stride cell
(`pipelines.export.halo_for`, the radius measured by gradient at export). All
crop origins and sides are multiples of 32, so the strided layers see the same
grid as in the whole frame. The maps then agree to float rounding (tested
per family). The cost is the halos' extra compute: for BVPN (radius 200 px, halo
256) with 1024-px cores, 1.75x the whole frame's pixels on a 1913x2624 frame,
at 45% of its activation memory.

Golden-reference models (`reference_frame` given, the bundle's 6-channel input):
every tile goes in with the reference frame's tile at the same place (cut from
the reference padded exactly like the frame), so frames must have the reference
frame's size (the golden template's alignment gives them that geometry), and
they run in tiles only.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

from pipelines.edges import BANDS_PX, apply_gains, interior_mean
from pipelines.errors import DataError
from pipelines.models.base import GlobalBranch
from pipelines.tiling import TilePlan

InferFn = Callable[[np.ndarray], np.ndarray]
MODES = ("tiles", "whole", "halo", "auto")
HALO_CORE_PX = 1024  # default core side of halo tiles
WHOLE_MULTIPLE_PX = 32  # the backbone's total stride: static "same" padding is exact for multiples
WHOLE_MEMORY_FRACTION = 0.5  # "auto" leaves the other half to the rest of the appliance


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclasses.dataclass(frozen=True)
class Analysis:
    """The model's view of one image: calibrated score and map at the image's resolution."""

    score: float
    anomaly_map: np.ndarray
    tile_score: float
    global_score: float | None

    global_map_max: float | None = None
    # (tile map, global map or None) before fusion, only when the analyser keeps them (calibration)
    branch_maps: tuple[np.ndarray, np.ndarray | None] | None = None
    # the tile map's interior mean before edge gains (when the surface score is on, or in
    # calibration), and the surface score made of it (when on): see TiledAnalyser
    surface_mean: float | None = None
    surface_score: float | None = None

    def whole_image_scores(self) -> tuple[float, ...]:
        """The scores that judge the whole image rather than a place in it (the global branch's,
        the surface score): each can make a part NG without a blob in the map."""
        return tuple(s for s in (self.global_score, self.surface_score) if s is not None)

    def fusion_parts(self) -> tuple[float, float]:
        """(tile score, the global branch's larger of score and map maximum, or -inf): the image
        score is max(tile, gain * global), what calibration re-fuses (`calibration.threshold.fuse`)
        with another gain."""
        if self.global_score is None:
            return float(self.tile_score), float("-inf")
        return float(self.tile_score), branch_part(self.global_score, self.global_map_max)


def branch_part(score: float, map_max: float | None) -> float:
    """A whole-image branch's part in the image score: the larger of its score and its map's maximum."""
    return float(score if map_max is None else max(score, map_max))


@functools.lru_cache(maxsize=16)
def _plan(height_px: int, width_px: int, tile_px: int, overlap_px: int) -> TilePlan:
    return TilePlan.for_shape(height_px=height_px, width_px=width_px, tile_px=tile_px, overlap_px=overlap_px)


class TiledAnalyser:
    """Frame (HxWx3 uint8 RGB) -> Analysis, through tiles of `tile_px`."""

    def __init__(
        self,
        infer: InferFn,
        *,
        tile_px: int,
        overlap_px: int,
        batch_size: int = 8,
        input_scale: float = 1 / 255,
        global_branch: GlobalBranch | None = None,
        margin_px: int = 0,
        mode: str = "tiles",
        whole_bytes_per_px: float | None = None,
        global_gain: float = 1.0,
        reference_frame: np.ndarray | None = None,
        halo_px: int | None = None,
        core_px: int = HALO_CORE_PX,
        edge_gains: Sequence[float] | None = None,
        edge_bands_px: Sequence[int] = BANDS_PX,
        surface: tuple[float, float] | None = None,
    ) -> None:
        """`whole_bytes_per_px`: activation memory of the network per input pixel
        (bytes), which "auto" needs; without it "auto" stays with tiles.
        `global_gain`: factor on the global branch's score and map (the calibration's).
        `reference_frame`: HxWx3 uint8 golden frame of a golden-reference model.
        `halo_px`, `core_px`: halo tiles (multiples of 32); "halo" needs `halo_px`, and "auto"
        without it falls back to "tiles" where the whole frame does not fit.
        `edge_gains`, `edge_bands_px`: the calibration's factors on the tile map by distance from
        the frame's edge (`pipelines.edges`); None or empty: none.
        `surface`: (offset, gain) of the surface score, offset + gain * the tile map's interior
        mean (`pipelines.edges.interior_mean`, before the edge gains), which joins the image
        score: a part whose whole surface departs from good ones (rougher, duller, another
        finish) without one place standing out. The calibration's; None: off."""
        if mode not in MODES:
            raise ValueError(f"unknown inference mode {mode!r}: choose one of {', '.join(MODES)}")
        if reference_frame is not None and mode in ("whole", "halo"):
            raise DataError(
                "a golden-reference model runs in tiles only (its reference is cut per tile): "
                "use inference mode tiles or auto"
            )
        if mode == "halo" and halo_px is None:
            raise DataError("halo mode needs the network's halo (receptive field): none was given")
        for name, v in (("halo_px", halo_px), ("core_px", core_px)):
            if v is not None and (v < 0 or v % WHOLE_MULTIPLE_PX or (name == "core_px" and v == 0)):
                raise DataError(f"{name} {v}: a multiple of {WHOLE_MULTIPLE_PX} px")
        self.halo_px = halo_px
        self.core_px = core_px
        self.reference_frame = reference_frame
        self._reference_tiles: np.ndarray | None = None  # the reference as tiles cut it, in [0, 1]
        self.mode = mode
        self.whole_bytes_per_px = whole_bytes_per_px
        self.infer = infer
        self.margin_px = margin_px
        self.tile_px = tile_px
        self.overlap_px = overlap_px
        self.batch_size = batch_size
        self.input_scale = np.float32(input_scale)
        self.global_branch = global_branch
        self.global_gain = global_gain
        self.keep_branch_maps = False  # calibration sets it: Analysis.branch_maps
        self.edge_gains = tuple(edge_gains) if edge_gains else None  # calibration turns them off to fit them
        self.edge_bands_px = tuple(edge_bands_px)
        self.surface = surface

    def measure_raw(self) -> None:
        """Switch off what calibration fits (the branch's gain, the edge gains, the surface score)
        and keep the branch maps: the analyses `calibration.threshold.GoodImages` and `BadImages`
        measure, from which calibration predicts the scores under any fit it then chooses."""
        self.global_gain = 1.0
        self.edge_gains = None
        self.surface = None
        self.keep_branch_maps = True

    def plan(self, height_px: int, width_px: int) -> TilePlan:
        return _plan(height_px, width_px, self.tile_px, self.overlap_px)

    def whole_shape(self, height_px: int, width_px: int) -> tuple[int, int]:
        """The padded (height, width) that whole-frame mode feeds the network."""
        m = 2 * self.margin_px
        return (
            -(-(height_px + m) // WHOLE_MULTIPLE_PX) * WHOLE_MULTIPLE_PX,
            -(-(width_px + m) // WHOLE_MULTIPLE_PX) * WHOLE_MULTIPLE_PX,
        )

    def mode_for(self, height_px: int, width_px: int) -> str:
        """The mode ("tiles" or "whole") for a frame of this size; resolves "auto" by memory."""
        if self.mode != "auto":
            return self.mode
        if self.reference_frame is not None:
            return "tiles"
        free = available_memory_bytes()
        if self.whole_bytes_per_px is None or free is None:
            return "tiles"
        ph, pw = self.whole_shape(height_px, width_px)
        need = ph * pw * self.whole_bytes_per_px
        if need <= WHOLE_MEMORY_FRACTION * free:
            return "whole"
        return "tiles" if self.halo_px is None else "halo"

    def _whole_input(self, rgb: np.ndarray) -> np.ndarray:
        """The frame padded as whole-frame mode feeds it (margin, then up to multiples of 32)."""
        h, w = rgb.shape[:2]
        m = self.margin_px
        ph, pw = self.whole_shape(h, w)
        pad = ((m, ph - h - m), (m, pw - w - m), (0, 0))
        return np.pad(rgb, pad, mode="reflect" if min(h, w) > 1 else "edge")

    def _run(self, padded: np.ndarray) -> np.ndarray:
        """The network's (H, W) map of one padded uint8 image."""
        x = padded.transpose(2, 0, 1)[None].astype(np.float32) * self.input_scale
        return np.asarray(self.infer(np.ascontiguousarray(x)), dtype=np.float32)[0, 0]

    def whole_map(self, rgb: np.ndarray) -> np.ndarray:
        """The map of the whole frame in one pass (see the module docstring for the borders)."""
        h, w = rgb.shape[:2]
        m = self.margin_px
        return self._run(self._whole_input(rgb))[m : m + h, m : m + w]

    def halo_crops(self, height_px: int, width_px: int) -> list[tuple[slice, slice, slice, slice]]:
        """Per core of halo mode, in the padded frame: (crop rows, crop columns, core rows and
        core columns inside the crop's map)."""
        assert self.halo_px is not None
        ph, pw = self.whole_shape(height_px, width_px)
        c, halo = self.core_px, self.halo_px
        out = []
        for y in range(0, ph, c):
            for x in range(0, pw, c):
                y0, x0 = max(0, y - halo), max(0, x - halo)
                y1, x1 = min(ph, y + c), min(pw, x + c)
                out.append(
                    (
                        slice(y0, min(ph, y1 + halo)),
                        slice(x0, min(pw, x1 + halo)),
                        slice(y - y0, y1 - y0),
                        slice(x - x0, x1 - x0),
                    )
                )
        return out

    def halo_map(self, rgb: np.ndarray) -> np.ndarray:
        """The whole frame's map through halo tiles (see the module docstring)."""
        h, w = rgb.shape[:2]
        m = self.margin_px
        padded = self._whole_input(rgb)
        out = np.empty(padded.shape[:2], np.float32)
        for rows, cols, core_rows, core_cols in self.halo_crops(h, w):
            crop = self._run(padded[rows, cols])
            out[rows, cols][core_rows, core_cols] = crop[core_rows, core_cols]
        return out[m : m + h, m : m + w]

    def tile_map(self, rgb: np.ndarray) -> np.ndarray:
        """The stitched tile-model map (calibrated scale) at the image's resolution.

        The frame is reflect-padded by `margin_px` first and the map cropped back:
        a tile's outer edge (zero padding inside the networks, no neighbour to
        blend with) then never lies on the frame's edge, where it caused false
        peaks on good images."""
        h, w = rgb.shape[:2]
        m = self.margin_px
        ref = self._padded_reference(h, w)
        plan, img = self._tiled(rgb)
        t = plan.tile_px
        positions = plan.positions()
        # Each tile is scaled straight from the frame into one reused float buffer (one pass, no
        # stack of all tiles): the backends copy their input, so the buffer is free after infer().
        c = 3 if ref is None else 6
        buf = np.empty((min(self.batch_size, len(positions)), c, t, t), np.float32)
        maps = np.empty((len(positions), t, t), np.float32)
        for start in range(0, len(positions), self.batch_size):
            chunk = positions[start : start + self.batch_size]
            x = buf[: len(chunk)]
            for k, (y, x0) in enumerate(chunk):
                np.multiply(img[y : y + t, x0 : x0 + t].transpose(2, 0, 1), self.input_scale, out=x[k, :3])
                if ref is not None:
                    x[k, 3:] = ref[y : y + t, x0 : x0 + t].transpose(2, 0, 1)
            maps[start : start + len(chunk)] = np.asarray(self.infer(x), dtype=np.float32)[:, 0]
        stitched = plan.stitch(maps)
        return stitched[m : m + h, m : m + w] if m else stitched

    def _tiled(self, rgb: np.ndarray) -> tuple[TilePlan, np.ndarray]:
        """The tile plan of a frame and the frame as tiles cut it: reflect-padded by the margin,
        then padded to the plan."""
        m = self.margin_px
        if m:
            rgb = np.pad(rgb, ((m, m), (m, m), (0, 0)), mode="reflect")
        plan = self.plan(rgb.shape[0], rgb.shape[1])
        return plan, plan.padded(rgb)

    def _padded_reference(self, h: int, w: int) -> np.ndarray | None:
        """The reference frame padded as a frame of this size is, scaled to [0, 1] (cached)."""
        if self.reference_frame is None:
            return None
        if self.reference_frame.shape[:2] != (h, w):
            rh, rw = self.reference_frame.shape[:2]
            raise DataError(
                f"a {w}x{h} frame does not match the model's {rw}x{rh} golden reference frame: "
                "align frames to the golden template (calibration template) or retrain"
            )
        if self._reference_tiles is None:  # frames all have the reference's size: one padding
            _, padded = self._tiled(self.reference_frame)
            self._reference_tiles = padded.astype(np.float32) * self.input_scale
        return self._reference_tiles

    def __call__(self, rgb: np.ndarray) -> Analysis:
        mode = self.mode_for(rgb.shape[0], rgb.shape[1])
        if mode == "whole":
            tile = self.whole_map(rgb)
        elif mode == "halo":
            tile = self.halo_map(rgb)
        else:
            tile = self.tile_map(rgb)
        measured = self.surface is not None or self.keep_branch_maps
        surface_mean = interior_mean(tile, self.edge_bands_px) if measured else None
        surface_score = None
        if self.surface is not None and surface_mean is not None:
            surface_score = self.surface[0] + self.surface[1] * surface_mean
        whole = () if surface_score is None else (surface_score,)
        if self.edge_gains is not None:
            apply_gains(tile, self.edge_gains, self.edge_bands_px)
        tile_score = float(tile.max())
        if self.global_branch is None:
            return Analysis(
                max((tile_score, *whole)),
                tile,
                tile_score,
                None,
                surface_mean=surface_mean,
                surface_score=surface_score,
            )
        g = self.global_branch(rgb)
        gain = self.global_gain
        global_score = gain * g.score
        global_map = g.anomaly_map
        if global_map is None:  # a whole-image judgement: the map stays the tile map
            fused, global_map_max = tile, None
        else:
            global_map = global_map * np.float32(gain) if gain != 1.0 else global_map
            fused = np.maximum(tile, global_map)
            global_map_max = float(global_map.max())
        score = max(float(fused.max()), global_score, *whole)
        kept = (tile, global_map) if self.keep_branch_maps else None
        return Analysis(
            score,
            fused,
            tile_score,
            global_score,
            global_map_max,
            kept,
            surface_mean=surface_mean,
            surface_score=surface_score,
        )


def torch_infer(net: Any) -> InferFn:
    """An InferFn running a torch module in inference mode on the CPU (training-time use)."""
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(x)).numpy()

    return run


def resize_map(m: np.ndarray, *, height_px: int, width_px: int) -> np.ndarray:
    """Bilinear resize of a float map to (height_px, width_px)."""
    if m.shape == (height_px, width_px):
        return m
    return cv2.resize(m.astype(np.float32), (width_px, height_px), interpolation=cv2.INTER_LINEAR)
