"""The model bundle: the one thing that travels from training to a line.

A bundle is a directory:
- `bundle.yaml`: family and version, tile geometry, model parameters,
  calibration (score statistics of good images, thresholds), fingerprint of
  the training data, creation time, library versions;
- `weights.safetensors`: every tensor the model needs (backbone included; a
  golden-reference model also its reference frame, `reference_frame`);
- later `model.onnx` and `engines/*.engine` (export).

No pickle is ever loaded from a bundle. Writes are atomic: the bundle is
assembled in a sibling temp directory and renamed into place, so an
interrupted training or calibration never leaves a half-written bundle.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import platform
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import Field, ValidationError, model_validator

from drivers.settings import Settings
from pipelines.edges import BANDS_PX, check_bands
from pipelines.errors import BundleError

FORMAT = "aoi-bundle"
FORMAT_VERSION = 1
META_FILE = "bundle.yaml"
WEIGHTS_FILE = "weights.safetensors"
# A golden-reference model's reference frame (HxWx3 uint8 RGB), a tensor beside the weights.
REFERENCE_FRAME_KEY = "reference_frame"


class TileSpec(Settings):
    tile_px: int = Field(default=256, description="side of a square inference tile (px, multiple of 32)")
    overlap_px: int = Field(default=32, description="minimum overlap of neighbouring tiles (px)")
    margin_px: int = Field(
        default=16,
        ge=0,
        description="reflect padding around the frame before tiling (px): no tile edge on the frame edge",
    )


class Calibration(Settings):
    """Thresholds live on the calibrated scale: the model's map is normalised so
    that good images score low; `image_threshold` applies to the image score."""

    image_threshold: float = Field(default=1.0, description="image score at or above which a part is NG")
    pixel_threshold: float = Field(default=1.0, description="map value above which a pixel is defective")
    min_defect_area_px: int = Field(
        default=0, ge=0, description="blobs smaller than this do not make a part NG (px)"
    )
    min_defect_area_mm2: float = Field(
        default=0.0,
        ge=0.0,
        description="blobs smaller than this do not make a part NG (mm^2; needs the line's pixel scale; "
        "with min_defect_area_px too, the larger of the two applies)",
    )
    global_gain: float = Field(
        default=1.0,
        gt=0.0,
        description="factor on the whole-image branch's score and map (BVPN's logical module) before they "
        "are fused with the tile map's: `aoi calibrate` sets it so that on the good images both branches "
        "reach their own tail quantile at the same score (dimensionless; 1 leaves the branch as trained)",
    )
    edge_bands_px: list[int] = Field(
        default_factory=lambda: list(BANDS_PX),
        description="lower bounds of the bands of distance from the frame's edge that `edge_gains` "
        "scale (px; the last band is the interior; see pipelines/edges.py)",
    )
    edge_gains: list[float] = Field(
        default_factory=list,
        description="factor on the tile map in each edge band, from the good images' tails: "
        "interior / band where a band's good tail is heavier, else 1 (dimensionless, in (0, 1]; "
        "empty: no edge scaling)",
    )
    surface_gain: float = Field(
        default=0.0,
        ge=0.0,
        description="the surface score, surface_offset + surface_gain * the tile map's mean inside the "
        "edge bands, joins the image score: it judges the whole surface (rougher, duller, another "
        "finish) where no one place stands out; calibration sets both so that on the good images its "
        "median and tail meet the image score's (dimensionless; 0: off)",
    )
    surface_offset: float = Field(
        default=0.0, description="see surface_gain (on the calibrated scale of the image score)"
    )
    inference_mode: str = Field(
        default="tiles",
        description="the inference mode the thresholds were made in: tiles, or whole (whole, halo and "
        "auto give the same map)",
    )
    method: str = Field(default="uncalibrated", description="how the thresholds were set")
    details: dict[str, Any] = Field(default_factory=dict, description="the data the thresholds came from")

    @model_validator(mode="after")
    def _check_edges(self) -> Calibration:
        check_bands(self.edge_bands_px)
        if self.edge_gains and len(self.edge_gains) != len(self.edge_bands_px):
            raise ValueError(
                f"edge_gains has {len(self.edge_gains)} values for {len(self.edge_bands_px)} edge bands: "
                "one per band, or none"
            )
        if any(not 0.0 < g <= 1.0 for g in self.edge_gains):
            raise ValueError(f"edge_gains {self.edge_gains} must lie in (0, 1]: re-run aoi calibrate")
        return self

    def surface(self) -> tuple[float, float] | None:
        """(offset, gain) of the surface score for the analyser, or None when it is off."""
        return (self.surface_offset, self.surface_gain) if self.surface_gain > 0 else None


class BundleMeta(Settings):
    format: str = Field(default=FORMAT, description="always 'aoi-bundle'")
    format_version: int = Field(default=FORMAT_VERSION, description="bundle layout version")
    family: str = Field(description="model family, e.g. 'bvpn' or 'patchcore'")
    family_version: int = Field(default=1, description="version of the family's architecture")
    created: str = Field(default="", description="creation time, ISO 8601 UTC")
    tiles: TileSpec = Field(default_factory=TileSpec, description="tile geometry")
    input_channels: int = Field(
        default=3,
        description="channels the model takes: 3 (RGB), or 6 (RGB, then the bundle's "
        "reference_frame at the same place: a golden-reference model)",
    )
    input_scale: float = Field(default=1 / 255, description="multiplier from uint8 pixels to [0, 1]")
    params: dict[str, Any] = Field(
        default_factory=dict, description="family-specific architecture parameters"
    )
    calibration: Calibration = Field(default_factory=Calibration, description="thresholds and their source")
    data_fingerprint: str = Field(default="", description="sha256 over the training file names and sizes")
    training: dict[str, Any] = Field(
        default_factory=dict, description="profile, seed, duration, image counts"
    )
    libraries: dict[str, str] = Field(default_factory=dict, description="library versions at creation")
    exports: dict[str, Any] = Field(default_factory=dict, description="exported graphs and engines")

    @property
    def bundle_id(self) -> str:
        return f"{self.family}-{self.data_fingerprint[:8]}-{self.created}"


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("torch", "onnxruntime", "cv2"):
        with contextlib.suppress(ImportError):
            out[name] = str(__import__(name).__version__)
    return out


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fingerprint_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(str(p.stat().st_size).encode())
    return h.hexdigest()


class Bundle:
    """A loaded bundle: validated metadata and lazily read tensors (numpy)."""

    def __init__(self, path: Path, meta: BundleMeta) -> None:
        self.path = path
        self.meta = meta
        self._tensors: dict[str, np.ndarray] | None = None

    @property
    def tensors(self) -> dict[str, np.ndarray]:
        if self._tensors is None:
            from safetensors.numpy import load_file

            try:
                self._tensors = dict(load_file(str(self.path / WEIGHTS_FILE)))
            except Exception as exc:  # safetensors raises its own error types
                raise BundleError(
                    f"{self.path / WEIGHTS_FILE} is corrupt ({exc}); re-run 'aoi train' to rebuild the bundle"
                ) from exc
        return self._tensors


def load_bundle(path: str | Path) -> Bundle:
    """Read and validate a bundle directory; any problem is one BundleError line."""
    p = Path(path)
    if not p.exists():
        raise BundleError(f"bundle {p} does not exist: train one with 'aoi train --out {p}'")
    if not p.is_dir():
        raise BundleError(f"bundle {p} is not a directory: a bundle is the folder 'aoi train' writes")
    meta_path = p / META_FILE
    if not meta_path.is_file():
        raise BundleError(
            f"{p} is not a model bundle (no {META_FILE}): point --bundle at a folder 'aoi train' wrote"
        )
    try:
        raw = yaml.safe_load(meta_path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise BundleError(
            f"{meta_path} is not valid YAML: the bundle is corrupt, re-run 'aoi train'"
        ) from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise BundleError(
            f"{meta_path} is not an aoi bundle (format is not '{FORMAT}'): it is a foreign file"
        )
    if raw.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{p} has bundle format {raw.get('format_version')}, this appliance reads {FORMAT_VERSION}: "
            "re-train or upgrade the appliance"
        )
    try:
        meta = BundleMeta.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise BundleError(
            f"{meta_path}: {loc}: {first['msg']}; the bundle is corrupt, re-run 'aoi train'"
        ) from exc
    if not (p / WEIGHTS_FILE).is_file():
        raise BundleError(f"{p} has no {WEIGHTS_FILE}: the bundle is incomplete, re-run 'aoi train'")
    return Bundle(p, meta)


def _write_dir(
    tmp: Path, meta: BundleMeta, tensors: Mapping[str, np.ndarray] | None, src: Path | None
) -> None:
    if src is not None:
        for item in src.iterdir():
            if item.name in (META_FILE,) or (tensors is not None and item.name == WEIGHTS_FILE):
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)
    if tensors is not None:
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp / WEIGHTS_FILE))
    (tmp / META_FILE).write_text(yaml.safe_dump(meta.model_dump(mode="json"), sort_keys=False))
    for f in tmp.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def write_bundle(
    out: str | Path,
    meta: BundleMeta,
    tensors: Mapping[str, np.ndarray] | None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write a bundle atomically. `tensors=None` keeps the weights of the existing
    bundle at `out` and everything beside them (exported graphs, engines): used by
    calibration and export, which only change the metadata. With new `tensors` (a
    training over an existing bundle), nothing of the old bundle is kept: graphs and
    engines built from the old weights would only be stale files."""
    dest = Path(out)
    if dest.exists() and not overwrite:
        raise BundleError(f"{dest} exists: choose another --out or pass --overwrite")
    if dest.exists() and not (dest / META_FILE).is_file():
        raise BundleError(f"{dest} exists and is not a bundle: refusing to replace it")
    if tensors is None and not (dest / WEIGHTS_FILE).is_file():
        raise BundleError(f"{dest} has no weights to keep")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        _write_dir(tmp, meta, tensors, dest if dest.exists() and tensors is None else None)
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            old.rmdir()
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def update_meta(bundle: Bundle, **changes: Any) -> Bundle:
    """Rewrite only the metadata of a bundle (atomically) and return it reloaded."""
    meta = bundle.meta.model_copy(update=changes)
    write_bundle(bundle.path, meta, None, overwrite=True)
    return load_bundle(bundle.path)
