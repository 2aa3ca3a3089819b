"""Saving and loading calibration artefacts: arrays in a `.npz`, metadata in a YAML sidecar.

Every artefact (flat-field, pixel scale, golden template, capture reference)
is two files side by side: `NAME.npz` holds the arrays (written with
`np.savez`, read with `allow_pickle=False`, so loading one can never run
code) and `NAME.yaml` holds what a person wants to read: the kind of
artefact, when and with which library versions it was made, its settings and
its quality figures, and the SHA-256 of the `.npz` so that a sidecar and an
array file from different runs are never paired by mistake.

Both files are written to a temporary file in the same folder and moved into
place with `os.replace`, so a crash or a full disk never leaves a half-written
calibration where the line would pick it up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import io
import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from calibration.errors import CalibrationError

__all__ = [
    "FORMAT_VERSION",
    "KIND_COMMANDS",
    "Artefact",
    "atomic_write_bytes",
    "load_artefact",
    "save_artefact",
    "sidecar_path",
]

# Bumped when the meaning of stored arrays or keys changes; older files are refused with a clear message.
FORMAT_VERSION = 1

# Which `aoi calibrate` sub-command makes each kind, so an error can say how to make a missing one.
KIND_COMMANDS: dict[str, str] = {
    "flatfield": "flatfield",
    "pixel_scale": "scale",
    "golden_template": "template",
    "capture_reference": "capture-reference",
}


@dataclasses.dataclass(frozen=True)
class Artefact:
    """What `load_artefact` returns: the arrays and the sidecar's metadata."""

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]
    path: Path


def sidecar_path(path: Path | str) -> Path:
    """The YAML sidecar of an artefact: `flat.npz` -> `flat.yaml`."""
    return Path(path).with_suffix(".yaml")


def save_artefact(
    path: Path | str, *, kind: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]
) -> Path:
    """Write `path` (.npz) and its YAML sidecar atomically; returns the .npz path.

    `meta` must hold plain values (numbers, strings, lists, dicts, None);
    numpy scalars and arrays are turned into plain values.
    """
    npz = _npz_path(path, kind)
    if not npz.parent.is_dir():
        raise CalibrationError(f"cannot write {npz}: folder {npz.parent} does not exist; create it first")
    for name, value in arrays.items():
        if not isinstance(value, np.ndarray) or value.dtype == object:
            raise CalibrationError(f"artefact array {name!r} is not a plain numeric array; cannot store it")
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **dict(arrays))
    data = buffer.getvalue()
    header = {
        "kind": kind,
        "format_version": FORMAT_VERSION,
        "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "npz_file": npz.name,
        "npz_sha256": hashlib.sha256(data).hexdigest(),
        "numpy_version": np.__version__,
        "opencv_version": cv2.__version__,
    }
    text = yaml.safe_dump({**header, **_plain(dict(meta))}, sort_keys=False, allow_unicode=True)
    atomic_write_bytes(npz, data)
    atomic_write_bytes(sidecar_path(npz), text.encode("utf-8"))
    return npz


def load_artefact(path: Path | str, *, kind: str) -> Artefact:
    """Read an artefact written by `save_artefact`, checking its kind, version and checksum."""
    npz = _npz_path(path, kind)
    side = sidecar_path(npz)
    make = f"make it with `aoi calibrate {KIND_COMMANDS.get(kind, kind)} ... --out {npz}`"
    if not npz.is_file():
        raise CalibrationError(f"calibration file {npz} not found: {make}")
    if not side.is_file():
        raise CalibrationError(f"calibration file {npz} has no sidecar {side.name}: {make} again")
    try:
        meta = yaml.safe_load(side.read_text(encoding="utf-8"))
        data = npz.read_bytes()
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CalibrationError(f"cannot read calibration file {npz} or {side.name}: {exc}") from None
    if not isinstance(meta, dict):
        raise CalibrationError(f"sidecar {side} is not a YAML mapping: {make} again")
    if meta.get("kind") != kind:
        raise CalibrationError(
            f"{npz} holds a {meta.get('kind')!r} calibration, not {kind!r}: check the path in the config"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise CalibrationError(
            f"{npz} has format version {meta.get('format_version')!r}; this appliance reads version "
            f"{FORMAT_VERSION}: {make} again"
        )
    if meta.get("npz_sha256") != hashlib.sha256(data).hexdigest():
        raise CalibrationError(
            f"{npz} does not match its sidecar {side.name} (checksum differs): the two files come from "
            f"different runs; {make} again"
        )
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            arrays = {name: np.array(stored[name]) for name in stored.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CalibrationError(f"cannot read arrays from {npz}: {exc}; {make} again") from None
    return Artefact(arrays=arrays, meta=meta, path=npz)


def _npz_path(path: Path | str, kind: str) -> Path:
    npz = Path(path)
    if npz.suffix != ".npz":
        raise CalibrationError(
            f"calibration file {npz} must end in .npz (its metadata goes beside it as .yaml): "
            f"name it like {kind}.npz"
        )
    return npz


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, flush it to disk and move it into place."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise CalibrationError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise CalibrationError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _plain(value: Any) -> Any:
    """Numpy scalars, arrays, tuples and paths as plain YAML-safe values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value
