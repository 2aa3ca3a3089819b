"""The inspector: one object that turns an image or a Frame into an Analysis and a Verdict.

Used by every entry point (`aoi predict`, `aoi eval`, `aoi calibrate`, the
line, the GUI), so the maths exists once.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time

import cv2
import numpy as np

from drivers.camera.base import Frame
from drivers.verdict import Defect, Result, Verdict
from pipelines.backends.registry import create_backend
from pipelines.bundle import REFERENCE_FRAME_KEY, Bundle, Calibration
from pipelines.data import to_rgb8
from pipelines.errors import ModelError, PipelineError
from pipelines.export import activation_bytes_per_px, halo_for, receptive_radius_px
from pipelines.inference import HALO_CORE_PX, Analysis, TiledAnalyser
from pipelines.models.registry import inference_module
from pipelines.preprocess import Preprocessor

log = logging.getLogger(__name__)


def map_kind(mode: str) -> str:
    """Which map an inference mode gives: "tiles" (blended tiles) or "whole" (whole, halo, auto)."""
    return "tiles" if mode == "tiles" else "whole"


def find_defects(
    anomaly_map: np.ndarray, *, pixel_threshold: float, min_area_px: int, mm_per_px: float | None = None
) -> tuple[Defect, ...]:
    """Connected regions of the map at or above the pixel threshold, largest first."""
    binary = (anomaly_map >= pixel_threshold).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    defects = []
    for i in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[i])
        if area < max(1, min_area_px):
            continue
        peak = float(anomaly_map[y : y + h, x : x + w][labels[y : y + h, x : x + w] == i].max())
        area_mm2 = area * mm_per_px**2 if mm_per_px else None
        defects.append(Defect(x=x, y=y, width=w, height=h, area_px=area, peak_score=peak, area_mm2=area_mm2))
    defects.sort(key=lambda d: d.area_px, reverse=True)
    return tuple(defects)


def min_area_in_px(calibration: Calibration, mm_per_px: float | None) -> int:
    """The minimum defect area in pixels: the larger of `min_defect_area_px` and `min_defect_area_mm2`."""
    area = calibration.min_defect_area_px
    if calibration.min_defect_area_mm2 > 0:
        if not mm_per_px:
            raise ModelError(
                f"the bundle's min_defect_area_mm2 ({calibration.min_defect_area_mm2:g} mm^2) needs a pixel "
                f"scale: give one (config `scale:` section, or --mm-per-px)"
            )
        area = max(area, math.ceil(calibration.min_defect_area_mm2 / mm_per_px**2 - 1e-9))
    return area


def decide(
    analysis: Analysis, calibration: Calibration, *, mm_per_px: float | None = None
) -> tuple[Result, tuple[Defect, ...]]:
    """NG when the image score reaches the threshold and, if a minimum defect
    area is set, a blob at least that large exists (or a whole-image score, the
    layout's or the surface's, reaches it)."""
    min_area_px = min_area_in_px(calibration, mm_per_px)
    defects = find_defects(
        analysis.anomaly_map,
        pixel_threshold=calibration.pixel_threshold,
        min_area_px=min_area_px,
        mm_per_px=mm_per_px,
    )
    ng = analysis.score >= calibration.image_threshold
    if ng and min_area_px > 0:
        whole = any(s >= calibration.image_threshold for s in analysis.whole_image_scores())
        ng = bool(defects) or whole
    return (Result.NG if ng else Result.OK), defects


class Inspector:
    """Bundle + backend -> analyses of images and verdicts of frames."""

    def __init__(
        self,
        bundle: Bundle,
        *,
        backend: str = "auto",
        threads: int | None = None,
        batch_size: int = 8,
        preprocessor: Preprocessor | None = None,
        mode: str = "tiles",
        precision: str | None = None,
        halo_core_px: int = HALO_CORE_PX,
        check_calibration_mode: bool = True,
    ):
        """`mode`: "tiles", "whole", "halo" or "auto" (see `pipelines.inference`); tiles is
        the default for every family because whole-frame maps differ at tile borders
        (measured in tests/pipelines/test_export_parity.py) and calibration is made in
        tiles; "whole", "halo" and "auto" give one and the same map.
        `halo_core_px`: core side of halo tiles (multiple of 32). `check_calibration_mode`: warn
        when the thresholds were made in the other kind of map (off for calibration itself)."""
        self.bundle = bundle
        self.preprocessor = preprocessor
        self.backend = create_backend(
            backend, bundle, threads=threads, precision=precision, batch_size=batch_size
        )
        family = inference_module(bundle.meta.family)
        halo = None
        if mode in ("halo", "auto") and bundle.meta.input_channels == 3:
            try:
                halo = halo_for(receptive_radius_px(bundle))
            except PipelineError:
                if mode == "halo":
                    raise
                log.info("auto inference mode: the receptive field is too wide for halo tiles")
        self.analyser = TiledAnalyser(
            self.backend.infer,
            tile_px=bundle.meta.tiles.tile_px,
            overlap_px=bundle.meta.tiles.overlap_px,
            batch_size=batch_size,
            input_scale=bundle.meta.input_scale,
            global_branch=family.build_global(bundle.meta, bundle.tensors),
            margin_px=bundle.meta.tiles.margin_px,
            mode=mode,
            whole_bytes_per_px=activation_bytes_per_px(bundle) if mode == "auto" else None,
            global_gain=bundle.meta.calibration.global_gain,
            reference_frame=bundle.tensors.get(REFERENCE_FRAME_KEY),
            halo_px=halo,
            core_px=halo_core_px,
            edge_gains=bundle.meta.calibration.edge_gains,
            edge_bands_px=bundle.meta.calibration.edge_bands_px,
            surface=bundle.meta.calibration.surface(),
        )
        self.mm_per_px: float | None = None
        made_in = bundle.meta.calibration.inference_mode
        if check_calibration_mode and map_kind(mode) != made_in:
            log.warning(
                "%s: thresholds were calibrated in %s mode but inference runs in %s mode, whose maps "
                "differ at tile borders: run 'aoi calibrate --mode %s'",
                bundle.path, made_in, mode, mode,
            )  # fmt: skip

    @property
    def calibration(self) -> Calibration:
        return self.bundle.meta.calibration

    def analyse(self, pixels: np.ndarray) -> Analysis:
        """Score and calibrated anomaly map of one image (any size, grey or colour, 8/16 bit).

        No preprocessing: datasets for training, `predict` and `eval` are already
        what the model sees; the line's frames go through `inspect`."""
        return self.analyser(to_rgb8(pixels))

    def _analyse_frame(self, pixels: np.ndarray) -> tuple[Analysis | None, str]:
        if self.preprocessor is None:
            return self.analyse(pixels), ""
        prepared = self.preprocessor(pixels)
        if prepared.pixels is None:
            return None, prepared.reason
        a = self.analyse(prepared.pixels)
        masked = self.preprocessor.mask_map(a.anomaly_map)
        if masked is a.anomaly_map:
            return a, ""
        score = max((float(masked.max()), *a.whole_image_scores()))
        return dataclasses.replace(a, score=score, anomaly_map=masked, branch_maps=None), ""

    def inspect(self, frame: Frame) -> Verdict:
        """The verdict for one frame (the deadline is enforced by the line's worker).

        A frame that cannot be aligned to the golden template is UNINSPECTED with the reason."""
        analysis, reason = self._analyse_frame(frame.pixels)
        if analysis is None:
            return Verdict(
                frame_id=frame.frame_id,
                part_id=frame.part_id,
                timestamp_s=frame.timestamp_s,
                result=Result.UNINSPECTED,
                reason=reason,
                latency_ms=(time.monotonic() - frame.timestamp_s) * 1000.0,
                bundle_id=self.bundle.meta.bundle_id,
                wall_time_s=frame.wall_time_s,
                truth=frame.truth,
            )
        result, defects = decide(analysis, self.calibration, mm_per_px=self.mm_per_px)
        return Verdict(
            frame_id=frame.frame_id,
            part_id=frame.part_id,
            timestamp_s=frame.timestamp_s,
            result=result,
            score=analysis.score / self.calibration.image_threshold,
            defects=defects,
            latency_ms=(time.monotonic() - frame.timestamp_s) * 1000.0,
            bundle_id=self.bundle.meta.bundle_id,
            wall_time_s=frame.wall_time_s,
            anomaly_map=analysis.anomaly_map,
            truth=frame.truth,
        )
