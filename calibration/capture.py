"""Capture checks: is the camera still seeing the line the way it did at commissioning?

Three things drift on a line without anyone touching the inspection: focus
(a knocked lens, a thicker product), exposure (a changed shutter or gain, glare)
and illumination (ageing or failing lamps, daylight). A model trained on good
parts then rejects good parts, or misses bad ones. These checks catch it:

- focus: variance of the Laplacian of the grey image, measured at full
  resolution on a grid of tiles (blur removes the fine detail it measures);
  compared with the reference as a ratio, since its absolute value depends on
  the product's print;
- exposure: the fraction of pixels at or near full scale (saturated, any
  channel) and near black (dark, every channel), on a sparse sample of pixels;
- illumination drift: the mean brightness against the reference [%].

`CaptureReference.from_frames` records focus and brightness from good frames
at commissioning (`aoi calibrate capture-reference`); `check(frame, reference,
settings)` measures one frame in a few milliseconds and returns a
`CaptureReport` with one sentence per problem. On the line, `CaptureMonitor`
checks every n-th raw frame, raises an alarm after `alarm_after_frames`
failing checks in a row and clears it after as many passing ones, and (with
`action: reject`) makes a failing frame UNINSPECTED.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import Field, model_validator

from calibration.errors import CalibrationError
from calibration.store import load_artefact, save_artefact
from drivers.settings import Settings

__all__ = [
    "CaptureMonitor",
    "CaptureReference",
    "CaptureReport",
    "CaptureSettings",
    "FrameStats",
    "check",
    "measure",
    "verify_levels",
]

KIND = "capture_reference"


class CaptureSettings(Settings):
    """Limits of the capture checks (focus, exposure, illumination drift) and how they sample a frame."""

    enabled: bool = Field(default=False, description="Check every frame's focus, exposure and brightness.")
    reference_path: Path | None = Field(
        default=None,
        description="Reference made by `aoi calibrate capture-reference`; without it only exposure is "
        "checked [.npz path].",
    )
    min_focus_ratio: float = Field(
        default=0.6,
        gt=0.0,
        le=1.0,
        description="Smallest focus measure as a share of the reference's [ratio].",
    )
    min_focus: float | None = Field(
        default=None,
        gt=0.0,
        description="Smallest focus measure when there is no reference [grey levels^2 of the Laplacian].",
    )
    saturation_level: float = Field(
        default=0.98,
        gt=0.0,
        le=1.0,
        description="A pixel at or above this is saturated [fraction of full scale].",
    )
    max_saturated_fraction: float = Field(
        default=0.01, ge=0.0, le=1.0, description="Largest share of saturated pixels [fraction of pixels]."
    )
    dark_level: float = Field(
        default=0.02, ge=0.0, lt=1.0, description="A pixel at or below this is dark [fraction of full scale]."
    )
    max_dark_fraction: float = Field(
        default=0.25, ge=0.0, le=1.0, description="Largest share of dark pixels [fraction of pixels]."
    )
    max_brightness_drift_pct: float = Field(
        default=10.0, gt=0.0, description="Largest change of mean brightness against the reference [%]."
    )
    bit_depth: int | None = Field(
        default=None,
        ge=1,
        le=16,
        description="Significant bits of the camera's pixels (12 for Mono12 in 16-bit words); None: the "
        "pixel type's full range [bits].",
    )
    sample_step_px: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Exposure and brightness use every n-th pixel in each direction [px].",
    )
    focus_grid: int = Field(
        default=4, ge=1, le=16, description="Focus is measured on a grid of this many tiles per side [tiles]."
    )
    focus_tile_px: int = Field(default=192, ge=16, description="Side of each focus tile [px].")
    every_n_frames: int = Field(
        default=1, ge=1, le=10_000, description="On the line, check every n-th frame [frames]."
    )
    alarm_after_frames: int = Field(
        default=3,
        ge=1,
        le=10_000,
        description="On the line, raise the capture alarm after this many failing checks in a row, and "
        "clear it after as many passing ones [checked frames].",
    )
    action: Literal["alarm", "reject"] = Field(
        default="alarm",
        description="On the line, what a failing check does: 'alarm' raises the alarm and still "
        "inspects the frame; 'reject' also makes the frame UNINSPECTED (rejected) with the reason.",
    )

    @model_validator(mode="after")
    def _verify(self) -> CaptureSettings:
        verify_levels(self)
        return self


def verify_levels(settings: CaptureSettings) -> None:
    """The dark level lies below the saturation level."""
    if settings.dark_level >= settings.saturation_level:
        raise ValueError(
            f"capture.dark_level {settings.dark_level} is not below capture.saturation_level "
            f"{settings.saturation_level}: dark must be darker than saturated"
        )


@dataclasses.dataclass(frozen=True)
class FrameStats:
    """What `measure` finds in one frame."""

    focus: float  # variance of the Laplacian on the focus tiles [grey levels^2, 8-bit scale]
    brightness: float  # mean level [fraction of full scale]
    saturated_fraction: float
    dark_fraction: float


@dataclasses.dataclass(frozen=True)
class CaptureReference:
    """Focus and brightness of good frames at commissioning."""

    focus: float
    brightness: float  # [fraction of full scale]
    n_frames: int
    frame_shape: tuple[int, ...]
    focus_spread: float = 0.0  # relative standard deviation over the reference frames
    brightness_spread: float = 0.0

    @classmethod
    def from_frames(
        cls, frames: Iterable[np.ndarray], *, settings: CaptureSettings | None = None
    ) -> CaptureReference:
        """Average the stats of good, well-lit, in-focus frames (5 to 20 is plenty)."""
        cfg = settings or CaptureSettings()
        stats: list[FrameStats] = []
        shape: tuple[int, ...] | None = None
        for i, frame in enumerate(frames):
            if shape is None:
                shape = tuple(frame.shape)
            elif tuple(frame.shape) != shape:
                raise CalibrationError(
                    f"reference frame {i} has shape {frame.shape} but the first has {shape}: use frames "
                    f"from one camera setup"
                )
            stats.append(measure(frame, cfg))
        if not stats or shape is None:
            raise CalibrationError("no reference frames given: capture a few good parts (5 to 20)")
        focus = np.array([s.focus for s in stats])
        bright = np.array([s.brightness for s in stats])
        if float(focus.mean()) <= 0 or float(bright.mean()) <= 0:
            raise CalibrationError(
                "the reference frames are blank (no detail or no light): capture good parts with the light on"
            )
        return cls(
            focus=float(focus.mean()),
            brightness=float(bright.mean()),
            n_frames=len(stats),
            frame_shape=shape,
            focus_spread=float(focus.std() / focus.mean()),
            brightness_spread=float(bright.std() / bright.mean()),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready fields."""
        return {**dataclasses.asdict(self), "frame_shape": list(self.frame_shape)}

    def save(self, path: Path | str) -> Path:
        """Write the reference (.npz, empty) and its YAML sidecar (the values)."""
        return save_artefact(path, kind=KIND, arrays={}, meta={"reference": self.to_dict()})

    @classmethod
    def load(cls, path: Path | str) -> CaptureReference:
        """Read a reference written by `save`."""
        art = load_artefact(path, kind=KIND)
        d = art.meta.get("reference")
        if not isinstance(d, dict):
            raise CalibrationError(f"{art.path} holds no capture reference: make it again")
        try:
            return cls(
                focus=float(d["focus"]),
                brightness=float(d["brightness"]),
                n_frames=int(d["n_frames"]),
                frame_shape=tuple(int(v) for v in d["frame_shape"]),
                focus_spread=float(d.get("focus_spread", 0.0)),
                brightness_spread=float(d.get("brightness_spread", 0.0)),
            )
        except (KeyError, TypeError, ValueError):
            raise CalibrationError(f"{art.path} is not a complete capture reference: make it again") from None


@dataclasses.dataclass(frozen=True)
class CaptureReport:
    """The capture checks of one frame; `problems` has one sentence per failed check."""

    ok: bool
    focus: float
    saturated_fraction: float
    dark_fraction: float
    brightness_drift_pct: float | None  # None without a reference
    problems: list[str]
    focus_ratio: float | None = None  # focus / reference focus
    brightness: float = math.nan  # [fraction of full scale]
    time_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields."""
        return dataclasses.asdict(self)


def measure(frame: np.ndarray, settings: CaptureSettings | None = None) -> FrameStats:
    """Focus, brightness and exposure fractions of one frame."""
    cfg = settings or CaptureSettings()
    if frame.ndim not in (2, 3) or frame.size == 0:
        raise CalibrationError(f"cannot check a frame of shape {frame.shape}: expected HxW or HxWxC")
    full_scale = _full_scale(frame.dtype, cfg.bit_depth)
    step = cfg.sample_step_px
    h, w = frame.shape[:2]
    # Every n-th pixel, made contiguous by OpenCV (far faster than a strided numpy view of a colour frame).
    sample = cv2.resize(
        frame, ((w + step - 1) // step, (h + step - 1) // step), interpolation=cv2.INTER_NEAREST
    )
    if sample.ndim == 3 and sample.shape[2] > 1:
        # cv2.max over the split planes: about 30 times faster than numpy's max over the channel axis.
        planes = cv2.split(sample)[:3]
        brightest = planes[0]
        for plane in planes[1:]:
            brightest = cv2.max(brightest, plane)
    else:
        brightest = sample.reshape(sample.shape[0], sample.shape[1])
    saturated = float(np.count_nonzero(brightest >= cfg.saturation_level * full_scale)) / brightest.size
    dark = float(np.count_nonzero(brightest <= cfg.dark_level * full_scale)) / brightest.size
    channels = min(sample.shape[2], 3) if sample.ndim == 3 else 1  # alpha is not light
    brightness = float(np.mean(cv2.mean(sample)[:channels])) / full_scale
    return FrameStats(
        focus=_focus(frame, cfg, full_scale),
        brightness=brightness,
        saturated_fraction=saturated,
        dark_fraction=dark,
    )


def check(
    frame: np.ndarray, reference: CaptureReference | None, settings: CaptureSettings | None = None
) -> CaptureReport:
    """Measure `frame` and compare it with the limits and, when given, the reference."""
    t0 = time.perf_counter()
    cfg = settings or CaptureSettings()
    stats = measure(frame, cfg)
    problems: list[str] = []
    focus_ratio = drift = None
    if reference is not None:
        if tuple(frame.shape) != tuple(reference.frame_shape):
            problems.append(
                f"frame shape {frame.shape} differs from the reference's {tuple(reference.frame_shape)}: "
                f"the camera's settings changed; make the capture reference again"
            )
        focus_ratio = stats.focus / reference.focus
        if focus_ratio < cfg.min_focus_ratio:
            problems.append(
                f"out of focus: sharpness {100 * focus_ratio:.0f}% of the reference (minimum "
                f"{100 * cfg.min_focus_ratio:.0f}%): refocus the lens, check the part's height and the lens "
                f"for dirt"
            )
        drift = 100.0 * (stats.brightness / reference.brightness - 1.0)
        if abs(drift) > cfg.max_brightness_drift_pct:
            direction = "darker" if drift < 0 else "brighter"
            problems.append(
                f"illumination drift: {abs(drift):.1f}% {direction} than the reference (limit "
                f"{cfg.max_brightness_drift_pct:g}%): check the lamps, their power and stray light, then the "
                f"exposure"
            )
    elif cfg.min_focus is not None and stats.focus < cfg.min_focus:
        problems.append(
            f"out of focus: sharpness {stats.focus:.1f} < {cfg.min_focus:g}: refocus the lens, check the "
            f"part's height"
        )
    if stats.saturated_fraction > cfg.max_saturated_fraction:
        problems.append(
            f"overexposed: {100 * stats.saturated_fraction:.2f}% of pixels saturated (limit "
            f"{100 * cfg.max_saturated_fraction:g}%): lower the exposure time, gain or light, or remove glare"
        )
    if stats.dark_fraction > cfg.max_dark_fraction:
        problems.append(
            f"underexposed: {100 * stats.dark_fraction:.1f}% of pixels near black (limit "
            f"{100 * cfg.max_dark_fraction:g}%): raise the exposure time, gain or light"
        )
    return CaptureReport(
        ok=not problems,
        focus=stats.focus,
        saturated_fraction=stats.saturated_fraction,
        dark_fraction=stats.dark_fraction,
        brightness_drift_pct=drift,
        problems=problems,
        focus_ratio=focus_ratio,
        brightness=stats.brightness,
        time_ms=1000.0 * (time.perf_counter() - t0),
    )


class CaptureMonitor:
    """The capture checks on a running line: debounced into an alarm, and counted.

    `observe(pixels)` is called by the inspection worker with every raw frame
    (before flat-field and alignment); `status()` and `alarm` may be read from
    any thread."""

    def __init__(self, settings: CaptureSettings, reference: CaptureReference | None = None) -> None:
        self.settings = settings
        self.reference = reference
        self._lock = threading.Lock()
        self._seen = 0
        self._checked = 0
        self._failed = 0
        self._fail_run = 0
        self._pass_run = 0
        self._alarm: str | None = None
        self._last: CaptureReport | None = None

    @classmethod
    def from_settings(cls, settings: CaptureSettings) -> CaptureMonitor | None:
        """The monitor a config's `capture:` section asks for (loading its reference), or None."""
        if not settings.enabled:
            return None
        reference = CaptureReference.load(settings.reference_path) if settings.reference_path else None
        return cls(settings, reference)

    def observe(self, pixels: np.ndarray) -> CaptureReport | None:
        """Check this frame if it is the n-th; the report, or None when it was not checked."""
        with self._lock:
            self._seen += 1
            due = (self._seen - 1) % self.settings.every_n_frames == 0
        if not due:
            return None
        report = check(pixels, self.reference, self.settings)
        with self._lock:
            self._checked += 1
            self._last = report
            limit = self.settings.alarm_after_frames
            if report.ok:
                self._pass_run += 1
                self._fail_run = 0
                if self._alarm is not None and self._pass_run >= limit:
                    self._alarm = None
            else:
                self._failed += 1
                self._fail_run += 1
                self._pass_run = 0
                if self._fail_run >= limit:
                    self._alarm = "capture: " + "; ".join(report.problems)
        return report

    def rejects(self, report: CaptureReport | None) -> bool:
        """Whether this report makes its frame UNINSPECTED (`action: reject` and a failed check)."""
        return report is not None and not report.ok and self.settings.action == "reject"

    @property
    def alarm(self) -> str | None:
        """The alarm message while the checks keep failing, else None."""
        with self._lock:
            return self._alarm

    def status(self) -> dict[str, Any]:
        """Counts, the alarm and the last report, JSON-ready."""
        with self._lock:
            last = self._last
            return {
                "checked": self._checked,
                "failed": self._failed,
                "alarm": self._alarm,
                "reference": self.reference is not None,
                "last": None
                if last is None
                else {
                    "ok": last.ok,
                    "focus_ratio": last.focus_ratio,
                    "brightness_drift_pct": last.brightness_drift_pct,
                    "saturated_fraction": last.saturated_fraction,
                    "dark_fraction": last.dark_fraction,
                    "problems": list(last.problems),
                    "time_ms": last.time_ms,
                },
            }


def _full_scale(dtype: np.dtype, bit_depth: int | None) -> float:
    if bit_depth is not None:
        return float((1 << bit_depth) - 1)
    if dtype.kind in "ui":
        return float(np.iinfo(dtype).max)
    return 1.0  # float frames are taken as 0..1


def _focus(frame: np.ndarray, cfg: CaptureSettings, full_scale: float) -> float:
    """Variance of the Laplacian on a grid of full-resolution grey tiles, on an 8-bit scale."""
    h, w = frame.shape[:2]
    n = cfg.focus_grid
    side_y, side_x = min(cfg.focus_tile_px, h // n), min(cfg.focus_tile_px, w // n)
    if side_y < 3 or side_x < 3:
        raise CalibrationError(
            f"frame {w}x{h} px is too small for a {n}x{n} focus grid: lower capture.focus_grid"
        )
    variances = []
    for i in range(n):
        y = int((i + 0.5) * h / n - side_y / 2)
        for j in range(n):
            x = int((j + 0.5) * w / n - side_x / 2)
            tile = frame[y : y + side_y, x : x + side_x]
            if tile.ndim == 3:
                tile = tile[..., 0] if tile.shape[2] == 1 else cv2.cvtColor(tile[..., :3], cv2.COLOR_RGB2GRAY)
            lap = cv2.Laplacian(tile.astype(np.float32), cv2.CV_32F, ksize=1)
            _, std = cv2.meanStdDev(lap)
            variances.append(float(std[0, 0]) ** 2)
    # On the 8-bit scale, so a 12-bit and an 8-bit camera give comparable numbers.
    return float(np.mean(variances)) * (255.0 / full_scale) ** 2
