"""The commissioning steps of `aoi calibrate`: flat-field, pixel scale, golden template, ROI and
capture reference, one sub-command each (`threshold` lives in `appliance.cli.calibrate`).

Each step reads images with the same reader as the replay camera (so channel
order and bit depth match what the line sees), calls the `calibration`
package, writes its artefact (an .npz with a .yaml sidecar, or a PNG) and
prints its result as one JSON line, or a short table for per-image checks.
Exit code 0: done and every check passed; 1: done, but a check failed (the
output says which and what to do). Bad input (a missing file, an unreadable
image, no checkerboard found) raises CalibrationError with one line that
names it. The order of the steps and what to do when one fails are in
docs/commissioning.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np
import yaml
from pydantic import ValidationError

from calibration.capture import CaptureReference, CaptureSettings, check
from calibration.errors import CalibrationError
from calibration.flatfield import FlatField, FlatFieldSettings
from calibration.roi import RoiSettings, draw_roi, roi_mask
from calibration.scale import PixelScale, ScaleSettings, parse_pattern
from calibration.store import atomic_write_bytes
from calibration.template import GoldenTemplate, TemplateSettings
from drivers.camera.replay import list_images, read_image
from drivers.errors import CameraError
from drivers.settings import Settings

__all__ = ["add_commands"]

SettingsT = TypeVar("SettingsT", bound=Settings)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add the commissioning sub-commands to the `aoi calibrate` group."""
    p = subparsers.add_parser(
        "flatfield",
        help="flat-field from frames of a uniform target (and dark frames)",
        description="Average frames of a uniform, evenly lit target (flats) and, optionally, frames with "
        "the light off or lens capped (darks) into a per-pixel gain and offset.",
    )
    p.add_argument("--flats", required=True, metavar="DIR", help="folder of flat frames (8 to 32)")
    p.add_argument("--darks", default=None, metavar="DIR", help="folder of dark frames (optional)")
    p.add_argument("--out", required=True, metavar="FILE", help="flat-field file to write (.npz)")
    p.add_argument(
        "--smooth-px",
        type=float,
        default=None,
        metavar="SIGMA",
        help="blur the flat by this sigma (px) before the gain, for a textured or dusty target; default 0",
    )
    p.add_argument(
        "--max-gain", type=float, default=None, metavar="RATIO", help="largest correction gain; default 4"
    )
    p.set_defaults(func=run_flatfield)

    p = subparsers.add_parser(
        "scale",
        help="pixel scale (mm/px) from a checkerboard or two points",
        description="Millimetres per pixel on the product plane: from one or more images of a flat "
        "checkerboard (3 or more also fit the lens distortion), or from two points a known distance apart.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--checkerboard",
        nargs="+",
        metavar="IMG",
        help="image(s) of a flat checkerboard where the product runs",
    )
    source.add_argument(
        "--points", metavar="X1,Y1,X2,Y2", help="two image points (px) a known distance apart"
    )
    p.add_argument(
        "--square-mm", type=float, default=None, metavar="MM", help="checkerboard square side (mm)"
    )
    p.add_argument(
        "--pattern",
        default=None,
        metavar="COLSxROWS",
        help="inner corners, e.g. 9x6 for a board of 10x7 squares",
    )
    p.add_argument(
        "--distance-mm", type=float, default=None, metavar="MM", help="distance of the two points (mm)"
    )
    p.add_argument("--out", required=True, metavar="FILE", help="pixel-scale file to write (.npz)")
    p.set_defaults(func=run_scale)

    p = subparsers.add_parser(
        "template",
        help="golden template for alignment; --check aligns a folder against it",
        description="Make the golden template from one good frame; with --check, align every image in a "
        "folder to it and print shift, rotation and residual per image.",
    )
    p.add_argument(
        "--golden", required=True, metavar="IMG", help="frame of a good part in its reference position"
    )
    p.add_argument("--out", required=True, metavar="FILE", help="template file to write (.npz)")
    p.add_argument(
        "--check", default=None, metavar="DIR", help="align every image in DIR and print the residuals"
    )
    p.add_argument(
        "--downscale",
        type=float,
        default=0.125,
        metavar="FACTOR",
        help="reduction of the coarse search (default 0.125)",
    )
    p.add_argument(
        "--ecc-scale",
        type=float,
        default=0.25,
        metavar="FACTOR",
        help="reduction of the ECC refinement (default 0.25)",
    )
    p.add_argument(
        "--flatfield",
        default=None,
        metavar="FILE",
        help="flat-field to apply to every image first, as the line does when flat-field is enabled",
    )
    p.add_argument(
        "--config", default=None, metavar="FILE", help="YAML file whose `template:` section sets the limits"
    )
    p.set_defaults(func=run_template)

    p = subparsers.add_parser(
        "roi",
        help="draw the ROI polygons of a config over a frame, to check them",
        description="Read the `roi:` section of a YAML file, draw its include (green) and exclude (red) "
        "polygons over a frame and write a PNG; the part not inspected is dimmed.",
    )
    p.add_argument("--config", required=True, metavar="FILE", help="YAML file with an `roi:` section")
    p.add_argument("--frame", required=True, metavar="IMG", help="a frame (aligned, if alignment is on)")
    p.add_argument("--out", required=True, metavar="PNG", help="picture to write (.png)")
    p.set_defaults(func=run_roi)

    p = subparsers.add_parser(
        "capture-reference",
        help="focus and brightness reference from good frames",
        description="Record focus and mean brightness of good, well-lit, in-focus frames as the reference "
        "of the capture checks.",
    )
    p.add_argument("--frames", required=True, metavar="DIR", help="folder of good frames (5 to 20)")
    p.add_argument("--out", required=True, metavar="FILE", help="reference file to write (.npz)")
    p.add_argument(
        "--config", default=None, metavar="FILE", help="YAML file whose `capture:` section sets the checks"
    )
    p.set_defaults(func=run_capture_reference)

    p = subparsers.add_parser(
        "capture-check",
        help="check frames' focus, exposure and brightness against the reference",
        description="Run the capture checks on every image in a folder and print one line per image.",
    )
    p.add_argument("--reference", required=True, metavar="FILE", help="reference from capture-reference")
    p.add_argument("--frames", required=True, metavar="DIR", help="folder of frames to check")
    p.add_argument(
        "--config", default=None, metavar="FILE", help="YAML file whose `capture:` section sets the limits"
    )
    p.set_defaults(func=run_capture_check)


def run_flatfield(args: argparse.Namespace) -> int:
    """`aoi calibrate flatfield`."""
    overrides = {
        k: v for k, v in (("smooth_px", args.smooth_px), ("max_gain", args.max_gain)) if v is not None
    }
    settings = _validated(FlatFieldSettings, overrides, "flatfield")
    flat_paths = _images_in(args.flats, "--flats")
    dark_paths = _images_in(args.darks, "--darks") if args.darks else None
    ff = FlatField.from_captures(
        flats=_read_all(flat_paths),
        darks=None if dark_paths is None else _read_all(dark_paths),
        settings=settings,
    )
    out = ff.save(_out_path(args.out))
    stats = ff.stats
    warnings = []
    if stats["falloff_pct"] > 50.0:
        warnings.append(
            f"light falls off {stats['falloff_pct']:.0f}% across the field: even out the light or close the "
            f"aperture a little; a strong correction amplifies noise in the dim corners"
        )
    if stats["uncorrectable_fraction"] > 0.001 or stats["clipped_gain_fraction"] > 0.001:
        share = 100 * max(stats["uncorrectable_fraction"], stats["clipped_gain_fraction"])
        warnings.append(
            f"{share:.2f}% of pixels are too dim to correct fully: check for shadows or dirt on the target "
            f"and that it fills the field of view"
        )
    _print_line({"step": "flatfield", "out": str(out), **stats, "warnings": warnings})
    return 0


def run_scale(args: argparse.Namespace) -> int:
    """`aoi calibrate scale`."""
    if args.checkerboard:
        if args.square_mm is None or args.pattern is None:
            raise CalibrationError(
                "--checkerboard needs --square-mm (square side in mm) and --pattern (e.g. 9x6)"
            )
        pattern = parse_pattern(args.pattern)
        paths = [_existing_file(p, "--checkerboard") for p in args.checkerboard]
        scale = PixelScale.from_checkerboard(
            [_read(p) for p in paths],
            square_mm=args.square_mm,
            pattern=pattern,
            names=[str(p) for p in paths],
        )
    else:
        if args.distance_mm is None:
            raise CalibrationError("--points needs --distance-mm (the distance of the two points in mm)")
        try:
            x1, y1, x2, y2 = (float(v) for v in args.points.split(","))
        except ValueError:
            raise CalibrationError(
                f"--points {args.points!r} is not X1,Y1,X2,Y2 in px, e.g. 120,80,1800,80"
            ) from None
        scale = PixelScale.from_points(p1_px=(x1, y1), p2_px=(x2, y2), distance_mm=args.distance_mm)
    out = scale.save(_out_path(args.out))
    _print_line(
        {"step": "scale", "out": str(out), **scale.to_dict(), "warnings": scale.warnings(ScaleSettings())}
    )
    return 0


def run_template(args: argparse.Namespace) -> int:
    """`aoi calibrate template`."""
    settings = _section_of(args.config, "template", TemplateSettings) if args.config else TemplateSettings()
    golden_path = _existing_file(args.golden, "--golden")
    check_paths = _images_in(args.check, "--check") if args.check else []
    flatfield = FlatField.load(args.flatfield) if args.flatfield else None

    def prepared(path: Path) -> np.ndarray:
        image = _read(path)
        return image if flatfield is None else flatfield.apply(image)

    template = GoldenTemplate.create(
        prepared(golden_path), downscale=args.downscale, ecc_scale=args.ecc_scale, settings=settings
    )
    out = template.save(_out_path(args.out))
    _print_line(
        {
            "step": "template",
            "out": str(out),
            "shape": list(template.shape),
            "check_patches": len(template.patches),
            "downscale": template.downscale,
            "ecc_scale": template.ecc_scale,
        }
    )
    if not check_paths:
        return 0
    root = Path(args.check)
    rows = []
    failed = 0
    for path in check_paths:
        result = template.align(prepared(path))
        failed += not result.ok
        rows.append(
            [
                str(path.relative_to(root)),
                "ok" if result.ok else "FAIL",
                f"{result.shift_px[0]:.2f}",
                f"{result.shift_px[1]:.2f}",
                f"{result.rotation_deg:.3f}",
                f"{result.residual_px:.2f}",
                f"{result.correlation:.3f}",
                f"{result.time_ms:.0f}",
                result.reason,
            ]
        )
    _print_table(
        ["image", "result", "dx_px", "dy_px", "rot_deg", "residual_px", "corr", "ms", "reason"], rows
    )
    print(f"{len(rows) - failed} of {len(rows)} aligned within {settings.max_residual_px:g} px")
    return 1 if failed else 0


def run_roi(args: argparse.Namespace) -> int:
    """`aoi calibrate roi`."""
    settings = _section_of(args.config, "roi", RoiSettings)
    frame = _read(_existing_file(args.frame, "--frame"))
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise CalibrationError(f"--out {out} must be a .png file")
    picture = draw_roi(frame, settings)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    if not ok:
        raise CalibrationError(f"cannot encode the ROI picture for {out}")
    atomic_write_bytes(_out_path(out), encoded.tobytes())
    mask = roi_mask(frame.shape, settings)
    _print_line(
        {
            "step": "roi",
            "out": str(out),
            "frame": [int(frame.shape[1]), int(frame.shape[0])],
            "include_polygons": len(settings.include),
            "exclude_polygons": len(settings.exclude),
            "inspected_pct": round(100.0 * float(mask.mean()), 3),
        }
    )
    return 0


def run_capture_reference(args: argparse.Namespace) -> int:
    """`aoi calibrate capture-reference`."""
    settings = _section_of(args.config, "capture", CaptureSettings) if args.config else CaptureSettings()
    paths = _images_in(args.frames, "--frames")
    reference = CaptureReference.from_frames(_read_all(paths), settings=settings)
    out = reference.save(_out_path(args.out))
    warnings = []
    if reference.focus_spread > 0.2 or reference.brightness_spread > 0.05:
        warnings.append(
            f"the reference frames vary (focus {100 * reference.focus_spread:.0f}%, brightness "
            f"{100 * reference.brightness_spread:.1f}%): use frames of the same product under steady light"
        )
    _print_line({"step": "capture-reference", "out": str(out), **reference.to_dict(), "warnings": warnings})
    return 0


def run_capture_check(args: argparse.Namespace) -> int:
    """`aoi calibrate capture-check`."""
    settings = _section_of(args.config, "capture", CaptureSettings) if args.config else CaptureSettings()
    reference = CaptureReference.load(args.reference)  # a missing file's error says how to make it
    root = Path(args.frames)
    rows = []
    failed = 0
    for path in _images_in(args.frames, "--frames"):
        report = check(_read(path), reference, settings)
        failed += not report.ok
        rows.append(
            [
                str(path.relative_to(root)),
                "ok" if report.ok else "FAIL",
                f"{100 * (report.focus_ratio or 0.0):.0f}%",
                f"{100 * report.saturated_fraction:.2f}%",
                f"{100 * report.dark_fraction:.1f}%",
                f"{report.brightness_drift_pct:+.1f}%" if report.brightness_drift_pct is not None else "-",
                "; ".join(report.problems),
            ]
        )
    _print_table(["image", "result", "focus", "saturated", "dark", "drift", "problems"], rows)
    print(f"{len(rows) - failed} of {len(rows)} frames passed the capture checks")
    return 1 if failed else 0


def _existing_file(value: str | Path, option: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise CalibrationError(f"{option} {path} does not exist or is not a file")
    return path


def _images_in(value: str, option: str) -> list[Path]:
    folder = Path(value)
    if not folder.is_dir():
        raise CalibrationError(f"{option} {folder} is not a folder")
    paths = list_images(folder)
    if not paths:
        raise CalibrationError(f"{option} {folder} holds no images (.png, .jpg, .bmp, .tif)")
    return paths


def _read(path: Path) -> np.ndarray:
    try:
        return read_image(path)
    except CameraError as exc:
        raise CalibrationError(str(exc)) from None


def _read_all(paths: list[Path]) -> Iterator[np.ndarray]:
    """One image at a time, so that 32 full-resolution flats never sit in memory together."""
    for path in paths:
        yield _read(path)


def _out_path(value: str | Path) -> Path:
    out = Path(value)
    if not out.parent.is_dir():
        raise CalibrationError(f"--out {out}: folder {out.parent} does not exist; create it first")
    return out


def _section_of(config: str, name: str, model: type[SettingsT]) -> SettingsT:
    """The `name:` section of a YAML file, validated; other sections are left alone."""
    path = _existing_file(config, "--config")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CalibrationError(f"--config {path} is not readable YAML: {exc}") from None
    if not isinstance(raw, dict) or name not in raw:
        raise CalibrationError(f"--config {path} has no `{name}:` section")
    return _validated(model, raw[name] or {}, name, source=str(path))


def _validated(model: type[SettingsT], values: Any, name: str, *, source: str = "options") -> SettingsT:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = str(err["msg"]).removeprefix("Value error, ")
        if not err["loc"]:
            # A cross-field rule (a verify_* function): its message already names the keys.
            raise CalibrationError(f"{source}: {msg}") from None
        loc = ".".join([name, *(str(x) for x in err["loc"])])
        raise CalibrationError(f"{source}: {loc}: {msg} (got {err.get('input')!r})") from None


def _print_line(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, default=str, separators=(", ", ": ")))


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    for line in [header, *rows]:
        # The last column (reason, problems) is free text: not padded.
        cells = [c.ljust(w) for c, w in zip(line[:-1], widths[:-1], strict=True)] + [line[-1]]
        sys.stdout.write("  ".join(cells).rstrip() + "\n")
