"""Preprocessing before the model: flat-field, golden-template alignment, ROI.

Built from the calibration artefacts (`aoi calibrate flatfield|template`) and
the ROI polygons of the config. Alignment that fails makes the frame
UNINSPECTED with the aligner's reason; pixels outside the ROI never count.
Capture checks (focus, exposure, drift) run on the raw frame in the line,
before this, because interpolation changes the focus measure.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from calibration.flatfield import FlatField
from calibration.roi import RoiSettings, roi_mask
from calibration.template import GoldenTemplate


@dataclasses.dataclass(frozen=True)
class Prepared:
    pixels: np.ndarray | None  # None when the frame cannot be inspected
    reason: str = ""
    residual_px: float | None = None


class Preprocessor:
    def __init__(
        self,
        *,
        flatfield: FlatField | None = None,
        template: GoldenTemplate | None = None,
        roi: RoiSettings | None = None,
    ) -> None:
        self.flatfield = flatfield
        self.template = template
        self.roi = roi if roi is not None and (roi.include or roi.exclude) else None

    def __call__(self, pixels: np.ndarray) -> Prepared:
        if self.flatfield is not None:
            pixels = self.flatfield.apply(pixels)
        residual = None
        if self.template is not None:
            result = self.template.align(pixels)
            if not result.ok or result.aligned is None:
                return Prepared(None, f"alignment failed: {result.reason}", result.residual_px)
            pixels, residual = result.aligned, result.residual_px
        return Prepared(pixels, "", residual)

    def mask_map(self, anomaly_map: np.ndarray) -> np.ndarray:
        """Zero the map outside the ROI (the map is in the aligned frame's geometry)."""
        if self.roi is None:
            return anomaly_map
        return np.where(roi_mask(anomaly_map.shape, self.roi), anomaly_map, np.float32(0.0)).astype(
            np.float32
        )
