"""Regions of interest: which pixels of the (aligned) frame count for inspection.

The config lists polygons in pixel coordinates of the template's geometry
(the frame after alignment), each a list of [x, y] points:

    roi:
      include:                       # none listed: the whole frame
        - [[40, 60], [1870, 60], [1870, 2560], [40, 2560]]
      exclude:                       # cut out of the included area
        - [[800, 100], [1100, 100], [1100, 260], [800, 260]]   # the printed lot number

`roi_mask(shape, settings)` is True where a pixel counts: inside any include
polygon (or anywhere, when there is none) and inside no exclude polygon. The
inspector multiplies the anomaly map by it, so nothing outside ever raises a
defect. Masks are cached per shape and polygon set, and are read-only.
`draw_roi` paints the polygons over a frame so an integrator can check them
against a real part before the line runs.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np
from pydantic import Field, model_validator

from calibration.errors import CalibrationError
from drivers.settings import Settings

__all__ = ["Polygon", "RoiSettings", "draw_roi", "roi_mask", "verify_polygons"]

Polygon = list[tuple[float, float]]
# Polygon vertices are drawn with 1/16 px precision (cv2.fillPoly's `shift`).
_SHIFT = 4
_INCLUDE_RGB = (40, 220, 60)
_EXCLUDE_RGB = (240, 40, 40)


class RoiSettings(Settings):
    """Polygons that include and exclude parts of the aligned frame from inspection."""

    include: list[Polygon] = Field(
        default_factory=list,
        description="Polygons, each a list of [x, y] points, whose inside is inspected; none: all [px].",
    )
    exclude: list[Polygon] = Field(
        default_factory=list,
        description="Polygons, each a list of [x, y] points, never inspected (cut from `include`) [px].",
    )

    @model_validator(mode="after")
    def _verify(self) -> RoiSettings:
        verify_polygons(self)
        return self


def verify_polygons(settings: RoiSettings) -> None:
    """Every polygon has at least 3 finite points and encloses some area."""
    for key in ("include", "exclude"):
        for i, poly in enumerate(getattr(settings, key)):
            if len(poly) < 3:
                raise ValueError(
                    f"roi.{key}[{i}] has {len(poly)} points: a polygon needs at least 3 [x, y] points"
                )
            if not all(math.isfinite(v) for point in poly for v in point):
                raise ValueError(f"roi.{key}[{i}] has a point that is not a finite number")
            if _area(poly) < 1.0:
                raise ValueError(f"roi.{key}[{i}] encloses no area (its points are in a line): check them")


def roi_mask(shape: tuple[int, ...], settings: RoiSettings) -> np.ndarray:
    """HxW bool, True where pixels count; cached per (shape, polygons), read-only.

    `shape` is a frame's shape (HxW or HxWxC). Raises CalibrationError when
    nothing of the frame is left to inspect.
    """
    h, w = int(shape[0]), int(shape[1])
    return _mask(h, w, _frozen(settings.include), _frozen(settings.exclude))


def draw_roi(frame: np.ndarray, settings: RoiSettings) -> np.ndarray:
    """An RGB uint8 picture of the frame with what is not inspected dimmed, include outlines green,
    exclude outlines red and each polygon numbered, for checking the ROI by eye."""
    rgb = _display_rgb(frame)
    mask = roi_mask(frame.shape, settings)
    out = rgb.copy()
    out[~mask] = (rgb[~mask] * 0.35).astype(np.uint8)
    thickness = max(1, round(max(frame.shape[:2]) / 600))
    font_scale = max(0.5, max(frame.shape[:2]) / 1500)
    for key, colour in (("include", _INCLUDE_RGB), ("exclude", _EXCLUDE_RGB)):
        for i, poly in enumerate(getattr(settings, key)):
            pts = _fixed_point(poly)
            cv2.polylines(out, [pts], True, colour, thickness, cv2.LINE_AA, shift=_SHIFT)
            x, y = (np.asarray(poly, dtype=np.float64).min(axis=0) + 4).astype(int)
            cv2.putText(
                out,
                f"{key} {i}",
                (int(x), int(y) + int(24 * font_scale)),
                cv2.FONT_HERSHEY_SIMPLEX,
                font_scale,
                colour,
                thickness,
                cv2.LINE_AA,
            )
    share = 100.0 * float(mask.mean())
    cv2.putText(
        out,
        f"inspected: {share:.1f}% of the frame",
        (10, int(30 * font_scale) + 10),
        cv2.FONT_HERSHEY_SIMPLEX,
        font_scale,
        (255, 255, 0),
        thickness,
        cv2.LINE_AA,
    )
    return out


@functools.lru_cache(maxsize=16)
def _mask(
    h: int,
    w: int,
    include: tuple[tuple[tuple[float, float], ...], ...],
    exclude: tuple[tuple[tuple[float, float], ...], ...],
) -> np.ndarray:
    if include:
        canvas = np.zeros((h, w), np.uint8)
        cv2.fillPoly(canvas, [_fixed_point(p) for p in include], 1, cv2.LINE_8, shift=_SHIFT)
    else:
        canvas = np.ones((h, w), np.uint8)
    if exclude:
        cv2.fillPoly(canvas, [_fixed_point(p) for p in exclude], 0, cv2.LINE_8, shift=_SHIFT)
    mask = canvas.astype(bool)
    if not mask.any():
        raise CalibrationError(
            f"the ROI leaves nothing of the {w}x{h} px frame to inspect: the include polygons lie outside "
            f"the frame or are covered by exclude polygons; check them with `aoi calibrate roi`"
        )
    mask.flags.writeable = False  # shared by every caller: nobody may change it
    return mask


def _frozen(polygons: list[Polygon]) -> tuple[tuple[tuple[float, float], ...], ...]:
    return tuple(tuple((float(x), float(y)) for x, y in poly) for poly in polygons)


def _fixed_point(poly: Polygon | tuple[tuple[float, float], ...]) -> np.ndarray:
    return np.round(np.asarray(poly, dtype=np.float64) * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)


def _area(poly: Polygon) -> float:
    pts = np.asarray(poly, dtype=np.float64)
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _display_rgb(frame: np.ndarray) -> np.ndarray:
    """8-bit RGB for drawing: grey is repeated, 16-bit is stretched to its 99.9th percentile."""
    img = frame
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.dtype != np.uint8:
        top = float(np.percentile(img[::4, ::4], 99.9)) or 1.0
        img = np.clip(img.astype(np.float32) * (255.0 / top), 0, 255).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    return np.ascontiguousarray(img[..., :3])
