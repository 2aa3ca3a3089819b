"""Reading images and MVTec-layout datasets, with one clear error for each mistake.

Layout: `train/good/`, `test/good/`, `test/<defect>/`,
`ground_truth/<defect>/<stem>_mask.png`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np

from pipelines.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def read_image(path: Path) -> np.ndarray:
    """An image as HxWx3 uint8 RGB (grey is replicated, 16-bit scaled down)."""
    if not path.is_file():
        raise DataError(f"image {path} does not exist")
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise DataError(f"image {path} cannot be read (corrupt or not an image): replace or remove it")
    return to_rgb8(img, bgr=True)


def to_rgb8(img: np.ndarray, *, bgr: bool = False) -> np.ndarray:
    """Any HxW / HxWxC uint8/uint16 image as contiguous HxWx3 uint8 RGB."""
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise DataError(f"unsupported pixel type {img.dtype}: use 8- or 16-bit images")
    if img.ndim == 2:
        return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))
    if img.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(img, 3, axis=2))
    if img.shape[2] == 4:
        img = img[:, :, :3]
    return np.ascontiguousarray(img[:, :, ::-1] if bgr else img)


def read_mask(path: Path, *, shape: tuple[int, int]) -> np.ndarray:
    """A ground-truth mask as bool HxW; must match the image's size."""
    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise DataError(f"mask {path} cannot be read")
    if m.shape != shape:
        raise DataError(f"mask {path} is {m.shape[1]}x{m.shape[0]}, its image is {shape[1]}x{shape[0]}")
    return m >= 128


def list_images(folder: Path) -> list[Path]:
    """Image files in `folder`, recursively, sorted."""
    if not folder.is_dir():
        raise DataError(f"folder {folder} does not exist")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


@dataclasses.dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # 1 = defective
    defect: str
    mask_path: Path | None


def train_images(root: Path, *, limit: int | None = None) -> list[Path]:
    """The good training images of an MVTec-layout dataset."""
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist: point --data at an MVTec-layout folder")
    good = root / "train" / "good"
    if not good.is_dir():
        raise DataError(f"{root} has no train/good folder: the dataset must use the MVTec layout")
    paths = list_images(good)
    if not paths:
        raise DataError(f"{good} contains no images: add good product images (png/jpg/bmp/tif)")
    if limit is not None and limit < len(paths):
        # Evenly spaced so a limit still covers the whole sequence.
        idx = np.linspace(0, len(paths) - 1, limit).round().astype(int)
        paths = [paths[i] for i in idx]
    return paths


def test_samples(root: Path) -> list[Sample]:
    """The test images of an MVTec-layout dataset with labels and mask paths."""
    test = root / "test"
    if not test.is_dir():
        raise DataError(f"{root} has no test folder: 'aoi eval' needs test/good and test/<defect>")
    samples: list[Sample] = []
    for sub in sorted(p for p in test.iterdir() if p.is_dir()):
        for img in list_images(sub):
            if sub.name == "good":
                samples.append(Sample(img, 0, "good", None))
                continue
            rel = img.relative_to(sub).with_suffix("")
            mask = root / "ground_truth" / sub.name / f"{rel}_mask.png"
            samples.append(Sample(img, 1, sub.name, mask if mask.is_file() else None))
    if not samples:
        raise DataError(f"{test} contains no images")
    if len({s.label for s in samples}) < 2:
        raise DataError(f"{test} needs both good and defective images to evaluate")
    return samples
