"""Pixel scale: how many millimetres one pixel spans on the product, for defect sizes in mm.

Two ways to measure it during commissioning:

- A printed checkerboard laid flat where the product runs
  (`PixelScale.from_checkerboard`): its inner corners are found
  (`cv2.findChessboardCorners` on a reduced copy, then `cv2.cornerSubPix` at
  full resolution) and a similarity (scale, rotation, shift) is fitted from
  board millimetres to image pixels. The fit's RMS residual says how well one
  scale describes the board: a tilted camera (perspective), lens distortion
  or a board that is not flat all raise it. The affine fit's two axis scales
  give the anisotropy (a camera not square to the line, or non-square pixels).
  With three or more views, `cv2.calibrateCamera` also fits the lens
  distortion; the corners are undistorted before the scale is fitted, and
  `PixelScale.undistort` can straighten frames.
- Two points a known distance apart (`PixelScale.from_points`), for a quick
  start with a ruler or a part of known size; its uncertainty assumes each
  point is placed within half a pixel.

The scale holds for the plane the board lay in: a part that is thicker than
the board, or a camera that is refocused or moved, needs a new scale.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import Field, model_validator

from calibration.errors import CalibrationError
from calibration.store import load_artefact, save_artefact
from drivers.settings import Settings

__all__ = [
    "PixelScale",
    "ScaleSettings",
    "find_checkerboard",
    "parse_pattern",
    "verify_one_scale_source",
]

KIND = "pixel_scale"
ScaleMethod = Literal["checkerboard", "points", "manual"]
# Corners are searched on a copy no larger than this: findChessboardCorners slows down steeply with size.
_DETECT_MAX_SIDE_PX = 1400
# Half-pixel placement of each of two points, as an RMS over the distance.
_POINT_PLACEMENT_PX = 0.5


class ScaleSettings(Settings):
    """The line's pixel scale: from a calibration file, or given directly."""

    path: Path | None = Field(
        default=None, description="Pixel-scale file made by `aoi calibrate scale` [.npz path]."
    )
    mm_per_px: float | None = Field(
        default=None, gt=0.0, description="The scale given directly, instead of `path` [mm/px]."
    )
    undistort: bool = Field(
        default=False,
        description="Correct lens distortion of every frame (needs a scale from 3 or more checkerboard "
        "views).",
    )
    min_views_for_distortion: int = Field(
        default=3,
        ge=3,
        description="Checkerboard views from which the lens distortion is also fitted [views].",
    )
    max_residual_px: float = Field(
        default=0.5,
        gt=0.0,
        description="Largest RMS corner residual of the scale fit before a warning [px].",
    )
    max_anisotropy_pct: float = Field(
        default=1.0,
        gt=0.0,
        description="Largest difference between the scales along and across the board before a warning [%].",
    )
    min_coverage_pct: float = Field(
        default=10.0,
        ge=0.0,
        le=100.0,
        description="Smallest share of the image the board should cover before a warning [% of area].",
    )

    @model_validator(mode="after")
    def _verify(self) -> ScaleSettings:
        verify_one_scale_source(self)
        return self


def verify_one_scale_source(settings: ScaleSettings) -> None:
    """A scale comes from a file or is given, not both; undistorting needs the file."""
    if settings.path is not None and settings.mm_per_px is not None:
        raise ValueError("scale.path and scale.mm_per_px are both set: keep one")
    if settings.undistort and settings.path is None:
        raise ValueError("scale.undistort needs scale.path (a scale made from 3 or more checkerboard views)")


def parse_pattern(text: str) -> tuple[int, int]:
    """'9x6' -> (9, 6): inner corners per row x per column."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX*]\s*(\d+)\s*", text)
    if not match:
        raise CalibrationError(
            f"checkerboard pattern {text!r} is not COLSxROWS: give the inner corners, e.g. 9x6 for a "
            f"board of 10x7 squares"
        )
    cols, rows = int(match.group(1)), int(match.group(2))
    if cols < 3 or rows < 3 or cols == rows:
        raise CalibrationError(
            f"checkerboard pattern {text!r}: use at least 3x3 inner corners, and different counts "
            f"across and along (e.g. 9x6), so the board's orientation is unambiguous"
        )
    return cols, rows


# eq=False: numpy fields cannot be compared as a tuple; a scale is compared by its fields when needed.
@dataclasses.dataclass(frozen=True, eq=False)
class PixelScale:
    """Millimetres per pixel on the product plane, how it was measured and how well."""

    mm_per_px: float
    method: ScaleMethod
    residual_px: float | None = None  # RMS corner residual of the similarity fit; None for points
    uncertainty_pct: float | None = None  # 1-sigma statistical uncertainty of mm_per_px
    anisotropy_pct: float | None = None  # difference between the two axis scales (affine fit)
    coverage_pct: float | None = None  # share of the image area the board's corners span
    n_views: int = 1
    image_size_px: tuple[int, int] | None = None  # (width, height) of the calibration images
    camera_matrix: np.ndarray | None = None  # 3x3, when the lens distortion was fitted
    dist_coeffs: np.ndarray | None = None
    reprojection_error_px: float | None = None  # of cv2.calibrateCamera
    per_view_mm_per_px: tuple[float, ...] = ()
    _maps: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = dataclasses.field(
        default_factory=dict, repr=False, compare=False
    )

    @property
    def px_per_mm(self) -> float:
        """Pixels per millimetre."""
        return 1.0 / self.mm_per_px

    def length_mm(self, length_px: float) -> float:
        """A length in the image, in millimetres on the product."""
        return float(length_px) * self.mm_per_px

    def area_mm2(self, area_px: float) -> float:
        """An area in pixels (a defect blob), in square millimetres on the product."""
        return float(area_px) * self.mm_per_px**2

    @classmethod
    def manual(cls, *, mm_per_px: float) -> PixelScale:
        """A scale given directly (config `scale.mm_per_px`)."""
        if not (math.isfinite(mm_per_px) and mm_per_px > 0):
            raise CalibrationError(f"mm_per_px {mm_per_px!r} must be a positive number of mm per pixel")
        return cls(mm_per_px=float(mm_per_px), method="manual")

    @classmethod
    def from_settings(cls, settings: ScaleSettings) -> PixelScale | None:
        """The scale a config section names, or None when it names none."""
        if settings.mm_per_px is not None:
            return cls.manual(mm_per_px=settings.mm_per_px)
        if settings.path is not None:
            return cls.load(settings.path)
        return None

    @classmethod
    def from_points(
        cls,
        *,
        p1_px: tuple[float, float],
        p2_px: tuple[float, float],
        distance_mm: float,
    ) -> PixelScale:
        """Scale from two image points (x, y) that lie `distance_mm` apart on the product."""
        if not (math.isfinite(distance_mm) and distance_mm > 0):
            raise CalibrationError(f"distance {distance_mm!r} mm must be a positive length in millimetres")
        distance_px = math.dist(p1_px, p2_px)
        if not math.isfinite(distance_px) or distance_px < 1.0:
            raise CalibrationError(
                f"points {tuple(p1_px)} and {tuple(p2_px)} are {distance_px:.2f} px apart: pick two points "
                f"far apart (ideally across the whole image)"
            )
        return cls(
            mm_per_px=distance_mm / distance_px,
            method="points",
            uncertainty_pct=100.0 * math.sqrt(2.0) * _POINT_PLACEMENT_PX / distance_px,
        )

    @classmethod
    def from_checkerboard(
        cls,
        images: Sequence[np.ndarray],
        *,
        square_mm: float,
        pattern: tuple[int, int],
        names: Sequence[str] | None = None,
        settings: ScaleSettings | None = None,
    ) -> PixelScale:
        """Scale from one or more views of a flat checkerboard with `square_mm` squares.

        `pattern` is (inner corners per row, per column), e.g. (9, 6) for a
        board of 10x7 squares. With `settings.min_views_for_distortion` or more
        views the lens distortion is fitted too. `names` (file names) go into
        error messages.
        """
        cfg = settings or ScaleSettings()
        if not (math.isfinite(square_mm) and square_mm > 0):
            raise CalibrationError(f"square size {square_mm!r} mm must be a positive length in millimetres")
        if not images:
            raise CalibrationError("no checkerboard images given: give at least one")
        labels = list(names) if names is not None else [f"view {i + 1}" for i in range(len(images))]
        sizes = {(img.shape[1], img.shape[0]) for img in images}
        if len(sizes) > 1:
            raise CalibrationError(
                f"checkerboard images differ in size {sorted(sizes)}: take every view with the same "
                f"camera setup"
            )
        size = sizes.pop()
        corners = [
            find_checkerboard(img, pattern=pattern, name=label)
            for img, label in zip(images, labels, strict=True)
        ]
        board_mm = _board_points(pattern, square_mm=square_mm)

        camera_matrix = dist_coeffs = None
        reprojection = None
        if len(images) >= cfg.min_views_for_distortion:
            camera_matrix, dist_coeffs, reprojection = _fit_distortion(corners, board_mm, size)
            corners = [
                cv2.undistortPoints(c.reshape(-1, 1, 2), camera_matrix, dist_coeffs, P=camera_matrix).reshape(
                    -1, 2
                )
                for c in corners
            ]

        fits = [_fit_board(board_mm, c) for c in corners]
        scales = np.array([f["mm_per_px"] for f in fits])
        residual = math.sqrt(float(np.mean([f["residual_px"] ** 2 for f in fits])))
        spread_px2 = sum(f["spread_px2"] for f in fits)
        uncertainty = 100.0 * (residual / math.sqrt(2.0)) / math.sqrt(spread_px2)
        if len(fits) > 1:
            # Views disagree beyond the fit noise when the board was not at the same height every time.
            uncertainty = max(
                uncertainty, 100.0 * float(np.std(scales, ddof=1) / np.mean(scales)) / math.sqrt(len(fits))
            )
        return cls(
            mm_per_px=float(np.median(scales)),
            method="checkerboard",
            residual_px=residual,
            uncertainty_pct=uncertainty,
            anisotropy_pct=float(max(f["anisotropy_pct"] for f in fits)),
            coverage_pct=float(max(f["coverage_px2"] for f in fits) / (size[0] * size[1]) * 100.0),
            n_views=len(images),
            image_size_px=size,
            camera_matrix=camera_matrix,
            dist_coeffs=dist_coeffs,
            reprojection_error_px=reprojection,
            per_view_mm_per_px=tuple(float(s) for s in scales),
        )

    def warnings(self, settings: ScaleSettings | None = None) -> list[str]:
        """Quality problems of this scale, one sentence each with what to do (empty when fine)."""
        cfg = settings or ScaleSettings()
        out: list[str] = []
        if self.residual_px is not None and self.residual_px > cfg.max_residual_px:
            out.append(
                f"corner residual {self.residual_px:.2f} px > {cfg.max_residual_px:g} px: the board is not "
                f"flat, or the camera is tilted or its lens distorts; flatten the board, square the camera "
                f"to the line, or give 3 or more views to fit the distortion"
            )
        if self.anisotropy_pct is not None and self.anisotropy_pct > cfg.max_anisotropy_pct:
            out.append(
                f"scales along and across the board differ by {self.anisotropy_pct:.2f}% > "
                f"{cfg.max_anisotropy_pct:g}%: the camera looks at the line at an angle; square it up"
            )
        if self.coverage_pct is not None and self.coverage_pct < cfg.min_coverage_pct:
            out.append(
                f"the board covers {self.coverage_pct:.1f}% of the image < {cfg.min_coverage_pct:g}%: "
                f"use a larger board, or check the scale near the image edges"
            )
        if len(self.per_view_mm_per_px) > 1:
            lo, hi = min(self.per_view_mm_per_px), max(self.per_view_mm_per_px)
            if (hi - lo) / self.mm_per_px * 100.0 > cfg.max_anisotropy_pct:
                out.append(
                    f"the views' scales range {lo:.5f}..{hi:.5f} mm/px: the board was not at the same height "
                    f"(or flat) in every view"
                )
        return out

    def undistort(self, image: np.ndarray) -> np.ndarray:
        """The image with the lens distortion removed (same size); the image itself without a lens model."""
        if self.camera_matrix is None or self.dist_coeffs is None:
            return image
        h, w = image.shape[:2]
        maps = self._maps.get((w, h))
        if maps is None:
            maps = cv2.initUndistortRectifyMap(
                self.camera_matrix, self.dist_coeffs, None, self.camera_matrix, (w, h), cv2.CV_16SC2
            )
            self._maps[(w, h)] = maps
        return cv2.remap(image, maps[0], maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready fields (no arrays)."""
        return {
            "mm_per_px": self.mm_per_px,
            "px_per_mm": self.px_per_mm,
            "method": self.method,
            "residual_px": self.residual_px,
            "uncertainty_pct": self.uncertainty_pct,
            "anisotropy_pct": self.anisotropy_pct,
            "coverage_pct": self.coverage_pct,
            "n_views": self.n_views,
            "image_size_px": None if self.image_size_px is None else list(self.image_size_px),
            "lens_distortion": None
            if self.dist_coeffs is None
            else [float(v) for v in self.dist_coeffs.ravel()],
            "reprojection_error_px": self.reprojection_error_px,
            "per_view_mm_per_px": list(self.per_view_mm_per_px),
        }

    def save(self, path: Path | str) -> Path:
        """Write the scale (.npz with the lens model, if any) and its YAML sidecar."""
        arrays: dict[str, np.ndarray] = {}
        if self.camera_matrix is not None and self.dist_coeffs is not None:
            arrays = {"camera_matrix": self.camera_matrix, "dist_coeffs": self.dist_coeffs}
        return save_artefact(path, kind=KIND, arrays=arrays, meta={"scale": self.to_dict()})

    @classmethod
    def load(cls, path: Path | str) -> PixelScale:
        """Read a scale written by `save`."""
        art = load_artefact(path, kind=KIND)
        d = art.meta.get("scale")
        if not isinstance(d, dict) or not isinstance(d.get("mm_per_px"), float | int):
            raise CalibrationError(f"{art.path} holds no mm_per_px: make the scale again")
        size = d.get("image_size_px")
        return cls(
            mm_per_px=float(d["mm_per_px"]),
            method=d.get("method", "manual"),
            residual_px=d.get("residual_px"),
            uncertainty_pct=d.get("uncertainty_pct"),
            anisotropy_pct=d.get("anisotropy_pct"),
            coverage_pct=d.get("coverage_pct"),
            n_views=int(d.get("n_views", 1)),
            image_size_px=None if size is None else (int(size[0]), int(size[1])),
            camera_matrix=art.arrays.get("camera_matrix"),
            dist_coeffs=art.arrays.get("dist_coeffs"),
            reprojection_error_px=d.get("reprojection_error_px"),
            per_view_mm_per_px=tuple(float(v) for v in d.get("per_view_mm_per_px") or ()),
        )


def find_checkerboard(image: np.ndarray, *, pattern: tuple[int, int], name: str = "the image") -> np.ndarray:
    """Inner corners of a `pattern` checkerboard, (N, 2) float32 px, refined to sub-pixel.

    Raises CalibrationError naming `name` when no such board is found.
    """
    grey = _grey_u8(image)
    h, w = grey.shape
    factor = min(1.0, _DETECT_MAX_SIDE_PX / max(h, w))
    small = (
        grey if factor == 1.0 else cv2.resize(grey, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    )
    flags = cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_NORMALIZE_IMAGE
    found, corners = cv2.findChessboardCorners(small, pattern, flags=flags)
    if not found:
        # The sector-based detector copes better with blur, glare and uneven light.
        found, corners = cv2.findChessboardCornersSB(small, pattern, flags=cv2.CALIB_CB_EXHAUSTIVE)
    if not found or corners is None:
        raise CalibrationError(
            f"no {pattern[0]}x{pattern[1]} checkerboard found in {name}: check --pattern (inner corners, "
            f"a board of 10x7 squares is 9x6), that the whole board and a white margin are in view, and focus"
        )
    pts = corners.reshape(-1, 2).astype(np.float32) / np.float32(factor)
    # Half-window of the sub-pixel search: well inside one square, so a neighbouring corner never pulls it.
    spacing_px = float(
        np.median(np.linalg.norm(np.diff(pts.reshape(pattern[1], pattern[0], 2), axis=1), axis=2))
    )
    win = int(np.clip(0.35 * spacing_px, 3, 25))
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_MAX_ITER, 50, 0.001)
    refined = cv2.cornerSubPix(grey, pts.reshape(-1, 1, 2), (win, win), (-1, -1), criteria)
    return np.asarray(refined, dtype=np.float32).reshape(-1, 2)


def _board_points(pattern: tuple[int, int], *, square_mm: float) -> np.ndarray:
    """Board coordinates of the inner corners in OpenCV's order (row by row), mm, (N, 2)."""
    cols, rows = pattern
    xs, ys = np.meshgrid(np.arange(cols), np.arange(rows))
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64) * square_mm


def _fit_board(board_mm: np.ndarray, corners_px: np.ndarray) -> dict[str, float]:
    """Least-squares similarity board mm -> image px (Umeyama), and the affine fit's axis scales."""
    x = board_mm - board_mm.mean(axis=0)
    y = corners_px.astype(np.float64) - corners_px.mean(axis=0)
    # The best orthogonal map may be a reflection (the detector's corner order decides); the scale
    # does not care.
    singular = np.linalg.svd(y.T @ x, compute_uv=False)
    px_per_mm = float(singular.sum() / np.sum(x**2))
    u, _, vt = np.linalg.svd(y.T @ x)
    fitted = px_per_mm * x @ (u @ vt).T
    residual = math.sqrt(float(np.mean(np.sum((y - fitted) ** 2, axis=1))))
    affine, *_ = np.linalg.lstsq(x, y, rcond=None)
    axis_scales = np.linalg.svd(affine, compute_uv=False)
    hull = cv2.convexHull(corners_px.astype(np.float32).reshape(-1, 1, 2))
    return {
        "mm_per_px": 1.0 / px_per_mm,
        "residual_px": residual,
        "anisotropy_pct": float(100.0 * (axis_scales.max() / axis_scales.min() - 1.0)),
        "spread_px2": float(np.sum(y**2)),
        "coverage_px2": float(cv2.contourArea(hull)),
    }


def _fit_distortion(
    corners: list[np.ndarray], board_mm: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, float]:
    """Camera matrix and radial distortion (k1, k2) from several views of the flat board."""
    obj = np.hstack([board_mm, np.zeros((board_mm.shape[0], 1))]).astype(np.float32)
    # A board lying flat on the line is seen face-on in every view, which cannot pin down the principal
    # point or tangential terms; fixing them keeps the radial terms well determined.
    flags = (
        cv2.CALIB_FIX_PRINCIPAL_POINT
        | cv2.CALIB_ZERO_TANGENT_DIST
        | cv2.CALIB_FIX_K3
        | cv2.CALIB_FIX_ASPECT_RATIO
    )
    k0 = np.array([[max(size), 0, size[0] / 2], [0, max(size), size[1] / 2], [0, 0, 1]], dtype=np.float64)
    try:
        rms, k, dist, _, _ = cv2.calibrateCamera(
            [obj] * len(corners),
            [c.reshape(-1, 1, 2).astype(np.float32) for c in corners],
            size,
            k0,
            np.zeros(5),
            flags=flags | cv2.CALIB_USE_INTRINSIC_GUESS,
        )
    except cv2.error as exc:
        raise CalibrationError(
            f"lens distortion fit failed ({exc.err}): give views with the board in different places of the "
            f"image, or a single view for the scale alone"
        ) from None
    return np.asarray(k, dtype=np.float64), np.asarray(dist, dtype=np.float64).ravel(), float(rms)


def _grey_u8(image: np.ndarray) -> np.ndarray:
    """8-bit grey for the corner detector; 16-bit images are stretched to their own range."""
    img = image
    if img.ndim == 3:
        img = img[..., 0] if img.shape[2] == 1 else cv2.cvtColor(img[..., :3], cv2.COLOR_RGB2GRAY)
    if img.dtype != np.uint8:
        top = float(np.percentile(img[::4, ::4], 99.9)) or 1.0
        img = np.clip(img.astype(np.float32) * (255.0 / top), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)
