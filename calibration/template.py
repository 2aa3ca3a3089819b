"""Golden-template alignment: bring every frame into the geometry of one good part.

The model was trained on parts in one position; a part that arrives shifted
or turned on the line must be moved back before it is judged, or the shift
itself looks like a defect. `GoldenTemplate.create` takes one good frame (the
golden part); `GoldenTemplate.align` then, per frame:

1. coarse: phase correlation (`cv2.phaseCorrelate`) of a strongly reduced grey
   copy against copies of the template turned over a small grid of angles
   (within `max_rotation_deg`); the best peak gives the angle and the shift;
2. fine: ECC (`cv2.findTransformECC`, rigid motion) started from the coarse
   estimate, first on the coarse copy (cheap iterations), then a few
   iterations on a moderately reduced copy, to a fraction of a pixel;
3. warps the full-resolution frame (all channels) into the template's
   geometry with that rigid transform;
4. checks the result: normalised cross-correlation of small, well-textured
   patches of the aligned frame against the template at full resolution
   measures how far each is still off (up to 1/8 of the patch side). The
   residual is the RMS of those offsets, leaving out the worst fifth (a real
   defect may spoil a patch).

Alignment never raises on a bad frame: it returns `ok=False` and a reason
(no match with the template, ECC did not converge, correlation too low, the
part out of its expected position, residual above the limit), so the
inspector can mark the frame UNINSPECTED and say why.

Conventions: `shift_px` is where the template's centre lies in the frame minus
where it lies in the template (dx right, dy down) in full-resolution pixels;
`rotation_deg` is the frame's rotation against the template, counter-clockwise
as seen on screen (OpenCV's `getRotationMatrix2D` sense). `matrix` maps
template pixel coordinates to frame pixel coordinates.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import Field, model_validator

from calibration.errors import CalibrationError
from calibration.store import load_artefact, save_artefact
from drivers.settings import Settings

__all__ = ["AlignResult", "GoldenTemplate", "TemplateSettings", "verify_template_path"]

KIND = "golden_template"
# Check patches: how many, and their side at full resolution (smaller on small frames).
_N_PATCHES = 9
_PATCH_PX = 128
# Patches are picked from a grid of candidates this many per side, inside a margin of the frame.
_PATCH_GRID = 6
_PATCH_MARGIN_FRACTION = 0.12
# A check patch needs this much texture: smallest structure-tensor eigenvalue per pixel
# (grey levels^2 on the 8-bit scale).
_MIN_PATCH_TEXTURE = 4.0
# Fewer check patches than this inside the frame cannot vouch for an alignment.
_MIN_CHECKED_PATCHES = 3


class TemplateSettings(Settings):
    """Alignment of each frame to the golden template, and when to give up on a frame."""

    enabled: bool = Field(default=False, description="Align every frame to the golden template in `path`.")
    path: Path | None = Field(
        default=None, description="Golden template made by `aoi calibrate template` [.npz path]."
    )
    max_rotation_deg: float = Field(
        default=5.0, ge=0.0, le=45.0, description="Largest rotation of a part searched for [deg]."
    )
    rotation_step_deg: float = Field(
        default=1.0, gt=0.0, le=5.0, description="Step of the coarse rotation search [deg]."
    )
    max_shift_px: float = Field(
        default=300.0, gt=0.0, description="Largest shift of a part before it counts as out of position [px]."
    )
    min_match: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="Smallest peak of the coarse phase correlation; below it the frame is taken for "
        "something else (good parts give about 0.3 to 1, other products below 0.07) [0..1].",
    )
    max_residual_px: float = Field(
        default=2.0, gt=0.0, description="Largest local misalignment left after alignment [px]."
    )
    min_correlation: float = Field(
        default=0.5,
        ge=-1.0,
        le=1.0,
        description="Smallest ECC correlation between aligned frame and template [-1..1].",
    )
    ecc_max_iterations: int = Field(
        default=20, ge=1, description="Most ECC iterations on the coarse copy [iterations]."
    )
    ecc_refine_iterations: int = Field(
        default=5,
        ge=0,
        description="Most ECC iterations on the moderately reduced copy, after the coarse ones; each "
        "costs about 4 coarse ones [iterations].",
    )
    ecc_eps: float = Field(
        default=1e-3,
        gt=0.0,
        description="ECC stops when the correlation changes less than this between iterations; it can "
        "oscillate just above a smaller value until the iteration limit [-].",
    )
    border: Literal["replicate", "constant"] = Field(
        default="replicate",
        description="How pixels brought in from outside the frame are filled: copies of the edge, or black.",
    )

    @model_validator(mode="after")
    def _verify(self) -> TemplateSettings:
        verify_template_path(self)
        return self


def verify_template_path(settings: TemplateSettings) -> None:
    """Enabled alignment needs a template file."""
    if settings.enabled and settings.path is None:
        raise ValueError("template.path is not set: give the .npz from `aoi calibrate template`")


@dataclasses.dataclass(frozen=True, eq=False)
class AlignResult:
    """The outcome of aligning one frame; `aligned` is None when `ok` is False."""

    ok: bool
    aligned: np.ndarray | None
    shift_px: tuple[float, float]
    rotation_deg: float
    residual_px: float
    reason: str = ""
    correlation: float = math.nan  # ECC correlation coefficient of the fine step
    matrix: np.ndarray | None = None  # 2x3, template px -> frame px
    time_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields (no images)."""
        return {
            "ok": self.ok,
            "shift_px": [round(self.shift_px[0], 3), round(self.shift_px[1], 3)],
            "rotation_deg": round(self.rotation_deg, 4),
            "residual_px": round(self.residual_px, 3),
            "correlation": round(self.correlation, 4),
            "reason": self.reason,
            "time_ms": round(self.time_ms, 1),
        }


class GoldenTemplate:
    """A good part's grey image and what is precomputed from it for fast alignment."""

    def __init__(
        self,
        *,
        grey: np.ndarray,
        frame_shape: tuple[int, ...],
        patches: np.ndarray,
        downscale: float,
        ecc_scale: float,
        settings: TemplateSettings | None = None,
    ) -> None:
        if grey.ndim != 2 or tuple(grey.shape) != tuple(frame_shape[:2]):
            raise CalibrationError(
                f"template grey image {grey.shape} does not match frame shape {frame_shape}"
            )
        self.grey = grey
        self.frame_shape = tuple(int(v) for v in frame_shape)
        self.patches = np.asarray(patches, dtype=np.int32).reshape(-1, 4)
        self.downscale = float(downscale)
        self.ecc_scale = float(ecc_scale)
        self.settings = settings or TemplateSettings()
        grey_f = grey.astype(np.float32)
        self._ecc_template = _resize(grey_f, self.ecc_scale)
        # Reduced in the same two steps as each frame, so both see the same smoothing.
        coarse = _resize(self._ecc_template, self.downscale / self.ecc_scale)
        self._coarse_template = coarse
        self._coarse_window = cv2.createHanningWindow((coarse.shape[1], coarse.shape[0]), cv2.CV_32F)
        self._angles = _angle_grid(self.settings.max_rotation_deg, self.settings.rotation_step_deg)
        centre = ((coarse.shape[1] - 1) / 2.0, (coarse.shape[0] - 1) / 2.0)
        # Spectra of the template as it would look turned by each searched angle (template -> frame sense).
        self._coarse_spectra = [
            _spectrum(
                cv2.warpAffine(
                    coarse,
                    cv2.getRotationMatrix2D(centre, float(a), 1.0),
                    (coarse.shape[1], coarse.shape[0]),
                    flags=cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REPLICATE,
                ),
                self._coarse_window,
            )
            for a in self._angles
        ]
        # The inner part of each check patch is searched for within the patch, up to +-_search px.
        self._search = int(self.patches[0, 2]) // 8 if len(self.patches) else 0
        r = self._search
        self._patch_templates = [
            grey_f[y + r : y + h - r, x + r : x + w - r].copy() for x, y, w, h in self.patches
        ]

    @property
    def shape(self) -> tuple[int, ...]:
        """The frame shape the template was made from (HxW or HxWxC)."""
        return self.frame_shape

    @classmethod
    def create(
        cls,
        frame: np.ndarray,
        *,
        downscale: float = 0.125,
        ecc_scale: float = 0.25,
        settings: TemplateSettings | None = None,
    ) -> GoldenTemplate:
        """A template from one good frame.

        `downscale` is the reduction of the coarse rotation/shift search
        (0.125: a 1913x2624 frame is searched at 239x328); `ecc_scale` the
        reduction at which ECC refines (0.25: 478x656). Raises
        CalibrationError when the frame has too little texture to align on.
        """
        if not (0.01 <= downscale <= ecc_scale <= 1.0):
            raise CalibrationError(
                f"downscale {downscale} and ecc_scale {ecc_scale} must satisfy 0.01 <= downscale <= "
                f"ecc_scale <= 1 (e.g. 0.125 and 0.25)"
            )
        if frame.ndim not in (2, 3) or min(frame.shape[:2]) < 64:
            raise CalibrationError(
                f"golden frame of shape {frame.shape} is too small to align on (64x64 at least)"
            )
        grey = _grey(frame)
        if min(int(grey.shape[0] * downscale), int(grey.shape[1] * downscale)) < 16:
            raise CalibrationError(
                f"downscale {downscale} reduces the {grey.shape[1]}x{grey.shape[0]} frame below 16 px: "
                f"use a larger downscale"
            )
        patches = _pick_patches(grey)
        return cls(
            grey=grey,
            frame_shape=frame.shape,
            patches=patches,
            downscale=downscale,
            ecc_scale=ecc_scale,
            settings=settings,
        )

    def align(self, frame: np.ndarray) -> AlignResult:
        """Warp `frame` into the template's geometry; never raises for a frame that does not fit."""
        t0 = time.perf_counter()
        cfg = self.settings
        h, w = self.grey.shape

        nan2 = (math.nan, math.nan)

        def fail(
            reason: str,
            *,
            shift_px: tuple[float, float] = nan2,
            rotation_deg: float = math.nan,
            residual_px: float = math.nan,
            correlation: float = math.nan,
        ) -> AlignResult:
            return AlignResult(
                ok=False,
                aligned=None,
                shift_px=shift_px,
                rotation_deg=rotation_deg,
                residual_px=residual_px,
                reason=reason,
                correlation=correlation,
                time_ms=1000.0 * (time.perf_counter() - t0),
            )

        if frame.shape[:2] != (h, w):
            return fail(
                f"frame {frame.shape[1]}x{frame.shape[0]} px does not match the template's {w}x{h} px"
            )
        grey = _grey(frame).astype(np.float32)
        ecc_frame = _resize(grey, self.ecc_scale)
        coarse = _resize(ecc_frame, self.downscale / self.ecc_scale)

        # 1. coarse: the angle whose phase-correlation peak is highest (a parabola through its neighbours
        # refines it); the peak's place is the shift.
        frame_spectrum = _spectrum(coarse, self._coarse_window)
        peaks = [_phase_peak(frame_spectrum, t) for t in self._coarse_spectra]
        heights = np.array([p[2] for p in peaks])
        best = int(np.argmax(heights))
        step = float(self._angles[1] - self._angles[0]) if len(self._angles) > 1 else 0.0
        angle = float(self._angles[best]) + _parabola_peak(heights, best) * step
        dx_c, dy_c, match = peaks[best]
        if match < cfg.min_match:
            return fail(
                f"no match with the template (coarse correlation {match:.2f} < {cfg.min_match:g}): wrong "
                f"product, empty belt, or the part is not in view"
            )
        c_coarse = ((coarse.shape[1] - 1) / 2.0, (coarse.shape[0] - 1) / 2.0)
        m_coarse = np.asarray(cv2.getRotationMatrix2D(c_coarse, angle, 1.0), dtype=np.float64)
        m_coarse[:, 2] += np.array([dx_c, dy_c])
        m_full = _to_scale(m_coarse, from_scale=self.downscale, to_scale=1.0)
        shift, rotation = _shift_rotation(m_full, (w, h))
        if math.hypot(*shift) > cfg.max_shift_px:
            return fail(
                f"part out of position: shift {math.hypot(*shift):.0f} px > {cfg.max_shift_px:g} px limit",
                shift_px=shift,
                rotation_deg=rotation,
            )

        # 2. fine: ECC (OpenCV's default 5x5 Gaussian pre-filter), first on the coarse copy, where an
        # iteration is cheap, then a few iterations on the moderately reduced copy for sub-pixel accuracy.
        warp = m_coarse.astype(np.float32)
        levels = [(self._coarse_template, coarse, self.downscale, cfg.ecc_max_iterations)]
        if self.ecc_scale != self.downscale and cfg.ecc_refine_iterations > 0:
            levels.append((self._ecc_template, ecc_frame, self.ecc_scale, cfg.ecc_refine_iterations))
        cc = math.nan
        scale = self.downscale
        for template_level, frame_level, level_scale, iterations in levels:
            warp = _to_scale(warp, from_scale=scale, to_scale=level_scale).astype(np.float32)
            scale = level_scale
            criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, iterations, cfg.ecc_eps)
            try:
                cc, warp_out = cv2.findTransformECC(
                    template_level, frame_level, warp, cv2.MOTION_EUCLIDEAN, criteria, None
                )
            except cv2.error:
                return fail(
                    "ECC did not converge: the frame does not look like the template (wrong product, empty "
                    "belt, or moved further than the coarse search reaches)",
                    shift_px=shift,
                    rotation_deg=rotation,
                )
            warp = np.asarray(warp_out, dtype=np.float64)
        correlation = float(cc)
        m_full = _to_scale(warp, from_scale=scale, to_scale=1.0)
        shift, rotation = _shift_rotation(m_full, (w, h))
        if correlation < cfg.min_correlation:
            return fail(
                f"template correlation {correlation:.2f} < {cfg.min_correlation:g}: wrong product, or the "
                f"light or the part's look has changed since the template was made",
                shift_px=shift,
                rotation_deg=rotation,
                correlation=correlation,
            )
        if abs(rotation) > cfg.max_rotation_deg + cfg.rotation_step_deg:
            return fail(
                f"rotation {rotation:.2f} deg > {cfg.max_rotation_deg:g} deg limit",
                shift_px=shift,
                rotation_deg=rotation,
                correlation=correlation,
            )
        if math.hypot(*shift) > cfg.max_shift_px:
            return fail(
                f"part out of position: shift {math.hypot(*shift):.0f} px > {cfg.max_shift_px:g} px limit",
                shift_px=shift,
                rotation_deg=rotation,
                correlation=correlation,
            )

        # 3. warp the full frame; 4. measure what is left, patch by patch, at full resolution.
        border = cv2.BORDER_REPLICATE if cfg.border == "replicate" else cv2.BORDER_CONSTANT
        aligned = cv2.warpAffine(
            frame, m_full, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=border
        ).reshape(frame.shape)  # OpenCV hands an HxWx1 frame back as HxW
        residual, n_checked = self._residual_px(aligned, m_full)
        if n_checked < _MIN_CHECKED_PATCHES or not residual <= cfg.max_residual_px:
            reason = (
                f"too little of the part in view to check the alignment ({n_checked} of "
                f"{len(self.patches)} check regions inside the frame)"
                if n_checked < _MIN_CHECKED_PATCHES
                else f"alignment residual {residual:.1f} px > {cfg.max_residual_px:g} px limit"
            )
            return fail(
                reason, shift_px=shift, rotation_deg=rotation, residual_px=residual, correlation=correlation
            )
        return AlignResult(
            ok=True,
            aligned=aligned,
            shift_px=shift,
            rotation_deg=rotation,
            residual_px=residual,
            correlation=correlation,
            matrix=m_full,
            time_ms=1000.0 * (time.perf_counter() - t0),
        )

    def _residual_px(self, aligned: np.ndarray, matrix: np.ndarray) -> tuple[float, int]:
        """RMS offset of the check patches after alignment, leaving out the worst fifth, and how many
        patches were checked: only those whose pixels all came from inside the frame."""
        h, w = self.grey.shape
        offsets = []
        for (x, y, pw, ph), tpl in zip(self.patches, self._patch_templates, strict=True):
            corners = np.array(
                [[x, y], [x + pw - 1, y], [x, y + ph - 1], [x + pw - 1, y + ph - 1]], np.float64
            )
            src = corners @ matrix[:, :2].T + matrix[:, 2]
            if src.min() < 0 or np.any(src.max(axis=0) > (w - 1, h - 1)):
                continue
            patch = _grey(aligned[y : y + ph, x : x + pw]).astype(np.float32)
            # Normalised cross-correlation, not phase correlation: it weights frequencies by the print's
            # own power, so sensor noise cannot drown the peak of a patch with a few large, smooth shapes.
            score = cv2.matchTemplate(patch, tpl, cv2.TM_CCOEFF_NORMED)
            _, _, _, (px, py) = cv2.minMaxLoc(score)
            n = score.shape[0] - 1
            fx = _parabola_peak(score[py, [max(px - 1, 0), px, min(px + 1, n)]], 1) if 0 < px < n else 0.0
            fy = _parabola_peak(score[[max(py - 1, 0), py, min(py + 1, n)], px], 1) if 0 < py < n else 0.0
            offsets.append(math.hypot(px + fx - self._search, py + fy - self._search))
        if not offsets:
            return math.nan, 0
        kept = np.sort(np.array(offsets))[: len(offsets) - len(offsets) // 5]
        return float(np.sqrt(np.mean(kept**2))), len(offsets)

    def save(self, path: Path | str) -> Path:
        """Write the template (.npz: grey image and check patches) and its YAML sidecar."""
        meta = {
            "frame_shape": list(self.frame_shape),
            "frame_dtype": str(self.grey.dtype),
            "downscale": self.downscale,
            "ecc_scale": self.ecc_scale,
            "n_patches": len(self.patches),
        }
        return save_artefact(
            path, kind=KIND, arrays={"grey": self.grey, "patches": self.patches}, meta={"template": meta}
        )

    @classmethod
    def load(cls, path: Path | str, *, settings: TemplateSettings | None = None) -> GoldenTemplate:
        """Read a template written by `save`; `settings` sets the per-frame limits."""
        art = load_artefact(path, kind=KIND)
        meta = art.meta.get("template")
        if not isinstance(meta, dict) or "grey" not in art.arrays or "patches" not in art.arrays:
            raise CalibrationError(f"{art.path} is not a complete golden template: make it again")
        return cls(
            grey=art.arrays["grey"],
            frame_shape=tuple(meta["frame_shape"]),
            patches=art.arrays["patches"],
            downscale=float(meta["downscale"]),
            ecc_scale=float(meta["ecc_scale"]),
            settings=settings,
        )


def _grey(image: np.ndarray) -> np.ndarray:
    """Single-channel view or conversion of an HxW, HxWx1, HxWx3 (RGB) or HxWx4 (RGBA) image."""
    if image.ndim == 2:
        return image
    if image.shape[2] == 1:
        return image[..., 0]
    code = cv2.COLOR_RGBA2GRAY if image.shape[2] == 4 else cv2.COLOR_RGB2GRAY
    return cv2.cvtColor(image, code)


def _resize(image: np.ndarray, scale: float) -> np.ndarray:
    """Area-averaged reduction by exactly `scale` (fx=fy, so pixel geometry stays exact)."""
    if scale == 1.0:
        return image
    return cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)


def _to_scale(matrix: np.ndarray, *, from_scale: float, to_scale: float) -> np.ndarray:
    """A 2x3 warp between images reduced by `from_scale`, as the same warp at `to_scale`.

    Pixel centres: x_s = s * x_full + (s - 1) / 2 (OpenCV's resize geometry).
    """
    a = matrix[:, :2].astype(np.float64)
    b = matrix[:, 2].astype(np.float64)
    o_from = (from_scale - 1.0) / 2.0
    b_full = (b + (a - np.eye(2)) @ np.array([o_from, o_from])) / from_scale
    o_to = (to_scale - 1.0) / 2.0
    b_to = to_scale * b_full + (np.eye(2) - a) @ np.array([o_to, o_to])
    return np.hstack([a, b_to[:, None]])


def _shift_rotation(matrix: np.ndarray, size: tuple[int, int]) -> tuple[tuple[float, float], float]:
    """Where the template centre moves (dx, dy) and the counter-clockwise rotation [deg]."""
    c = np.array([(size[0] - 1) / 2.0, (size[1] - 1) / 2.0])
    moved = matrix[:, :2] @ c + matrix[:, 2]
    # getRotationMatrix2D(angle) has [[cos, sin], [-sin, cos]]: counter-clockwise on screen.
    rotation = math.degrees(math.atan2(matrix[0, 1], matrix[0, 0]))
    return (float(moved[0] - c[0]), float(moved[1] - c[1])), rotation


def _angle_grid(max_deg: float, step_deg: float) -> np.ndarray:
    n = math.ceil(max_deg / step_deg - 1e-9)
    return np.arange(-n, n + 1, dtype=np.float64) * (max_deg / n if n else 0.0)


def _spectrum(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """DFT (complex, HxWx2) of the mean-free, windowed image, zero-padded to a fast size."""
    h, w = image.shape
    padded = np.zeros((cv2.getOptimalDFTSize(h), cv2.getOptimalDFTSize(w)), np.float32)
    padded[:h, :w] = (image - float(image.mean())) * window
    return cv2.dft(padded, flags=cv2.DFT_COMPLEX_OUTPUT)


def _phase_peak(frame_spectrum: np.ndarray, template_spectrum: np.ndarray) -> tuple[float, float, float]:
    """Shift (dx, dy) of the frame against the template and the phase-correlation peak height (1: identical).

    Unlike `cv2.phaseCorrelate`'s response (a sum around the peak, close to 1 for any smooth peak), the
    height of the bare peak drops clearly as the angle moves away from the right one.
    """
    cross = np.asarray(cv2.mulSpectrums(frame_spectrum, template_spectrum, 0, conjB=True), dtype=np.float32)
    magnitude = cv2.magnitude(cross[..., 0], cross[..., 1]) + 1e-12
    cross /= magnitude[..., None]
    surface = cv2.idft(cross, flags=cv2.DFT_REAL_OUTPUT | cv2.DFT_SCALE)
    _, height, _, (px, py) = cv2.minMaxLoc(surface)
    h, w = surface.shape
    # Sub-pixel: a parabola through the peak and its neighbours on each axis (the surface wraps around).
    fx = _parabola_peak(surface[py, [(px - 1) % w, px, (px + 1) % w]], 1)
    fy = _parabola_peak(surface[[(py - 1) % h, py, (py + 1) % h], px], 1)
    dx = px + fx if px <= w // 2 else px + fx - w
    dy = py + fy if py <= h // 2 else py + fy - h
    return float(dx), float(dy), float(height)


def _parabola_peak(values: np.ndarray, i: int) -> float:
    """Sub-step offset (-0.5..0.5) of a peak at index i from its two neighbours."""
    if i == 0 or i == len(values) - 1:
        return 0.0
    left, mid, right = float(values[i - 1]), float(values[i]), float(values[i + 1])
    denom = left - 2.0 * mid + right
    return 0.0 if denom >= 0 else float(np.clip(0.5 * (left - right) / denom, -0.5, 0.5))


def _pick_patches(grey: np.ndarray) -> np.ndarray:
    """The best-textured check patches (x, y, w, h) from a grid inside the frame's margin.

    Texture is the smaller eigenvalue of the structure tensor: a patch with
    edges in one direction only (a line) cannot show a shift along that line.
    """
    h, w = grey.shape
    side = int(min(_PATCH_PX, min(h, w) // 4))
    side -= side % 2
    g = grey.astype(np.float32)
    if grey.dtype == np.uint16:
        g *= 1.0 / 257.0  # judge texture on the 8-bit scale
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    mx, my = int(w * _PATCH_MARGIN_FRACTION), int(h * _PATCH_MARGIN_FRACTION)
    xs = np.linspace(mx, w - mx - side, _PATCH_GRID).astype(int)
    ys = np.linspace(my, h - my - side, _PATCH_GRID).astype(int)
    scored = []
    for y in ys:
        for x in xs:
            sx, sy = gx[y : y + side, x : x + side], gy[y : y + side, x : x + side]
            jxx, jyy, jxy = float(np.mean(sx * sx)), float(np.mean(sy * sy)), float(np.mean(sx * sy))
            lam_min = 0.5 * (jxx + jyy - math.sqrt((jxx - jyy) ** 2 + 4.0 * jxy**2))
            scored.append((lam_min, int(x), int(y)))
    scored.sort(reverse=True)
    good = [(x, y, side, side) for lam, x, y in scored[:_N_PATCHES] if lam >= _MIN_PATCH_TEXTURE]
    if len(good) < 4:
        raise CalibrationError(
            f"the golden frame has too little texture to align on ({len(good)} of {_PATCH_GRID**2} regions "
            f"textured, 4 needed): use a frame of a printed or structured part, in focus and well lit"
        )
    return np.array(good, dtype=np.int32)
