"""Preprocessing before the model: flat-field, lens undistortion, golden-template alignment, ROI.

Built from the calibration artefacts (`aoi calibrate flatfield|scale|template`)
and the ROI polygons of the config (`Preprocessor.from_settings`). Alignment that fails makes the frame
UNINSPECTED with the aligner's reason; pixels outside the ROI never count.
Capture checks (focus, exposure, drift) run on the raw frame in the line,
before this, because interpolation changes the focus measure.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from calibration.errors import CalibrationError
from calibration.flatfield import FlatField, FlatFieldSettings
from calibration.roi import RoiSettings, roi_mask
from calibration.scale import PixelScale
from calibration.template import GoldenTemplate, TemplateSettings


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
        undistort: PixelScale | None = None,
    ) -> None:
        self.flatfield = flatfield
        self.template = template
        self.roi = roi if roi is not None and (roi.include or roi.exclude) else None
        self.undistort = undistort if undistort is not None and undistort.camera_matrix is not None else None

    @classmethod
    def from_settings(
        cls,
        *,
        flatfield: FlatFieldSettings,
        template: TemplateSettings,
        roi: RoiSettings,
        scale: PixelScale | None = None,
        undistort: bool = False,
    ) -> Preprocessor | None:
        """The preprocessing the config's sections ask for (loading their files), or None for none.

        Order: flat-field (in the sensor's geometry, where it was measured), lens
        undistortion (`scale.undistort`, needs a scale fitted from 3+ views), then
        alignment to the golden template (whose frame was made the same way)."""
        ff = FlatField.load(flatfield.path) if flatfield.enabled and flatfield.path is not None else None
        tpl = (
            GoldenTemplate.load(template.path, settings=template)
            if template.enabled and template.path is not None
            else None
        )
        und = scale if undistort else None
        if und is not None and und.camera_matrix is None:
            raise CalibrationError(
                "scale.undistort is set but the scale file holds no lens model: make the scale from 3 or "
                "more checkerboard views, or set scale.undistort: false"
            )
        pre = cls(flatfield=ff, template=tpl, roi=roi, undistort=und)
        if pre.flatfield is None and pre.template is None and pre.roi is None and pre.undistort is None:
            return None
        return pre

    def __call__(self, pixels: np.ndarray) -> Prepared:
        if self.flatfield is not None:
            pixels = self.flatfield.apply(pixels)
        if self.undistort is not None:
            pixels = self.undistort.undistort(pixels)
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
