"""Artificial defects for training NDP-Net, DRAEM-style, from sources that need no download.

I_ad = I_o * (1 - M) + I_n * M, with M a thresholded Perlin-noise mask and I_n
an "anomaly source" image. DRAEM draws I_n from the DTD texture set; nothing
is downloaded here, so I_n comes from three kinds of source:

- `procedural`: rendered textures (coloured Perlin noise, stripes at a random
  angle and frequency, checkerboards, blurred colour noise, flat colour);
- `dataset`: another training image, shuffled (random crop, flips, 90-degree
  rotations) and recoloured (channel permutation, inversion, brightness and
  contrast, a colour cast), so the defect has the product's own statistics but
  not its place;
- `packaged`: the sample images shipped inside the installed scikit-image
  package (`skimage/data/*.png|jpg`: brick, grass, gravel, coffee, ...), read
  from disk with OpenCV, random crops.
Training only: never imported by the inference path.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import cv2
import numpy as np

from pipelines.errors import ModelError

log = logging.getLogger(__name__)
SOURCES = ("procedural", "dataset", "packaged")


def perlin(height: int, width: int, res_y: int, res_x: int, rng: np.random.Generator) -> np.ndarray:
    """Gradient (Perlin) noise of shape (height, width) with res_y x res_x lattice cells, about [-1, 1]."""
    angles = 2 * np.pi * rng.random((res_y + 1, res_x + 1))
    grads = np.stack([np.cos(angles), np.sin(angles)], -1)
    ys = np.arange(height) * (res_y / height)
    xs = np.arange(width) * (res_x / width)
    iy = ys.astype(int)
    ix = xs.astype(int)
    fy = (ys - iy)[:, None]
    fx = (xs - ix)[None, :]

    def dot(dy: int, dx: int) -> np.ndarray:
        g = grads[(iy + dy)[:, None], (ix + dx)[None, :]]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    def fade(t: np.ndarray) -> np.ndarray:
        return 6 * t**5 - 15 * t**4 + 10 * t**3

    u, v = fade(fx), fade(fy)
    top = dot(0, 0) * (1 - u) + dot(0, 1) * u
    bottom = dot(1, 0) * (1 - u) + dot(1, 1) * u
    return np.sqrt(2.0) * (top * (1 - v) + bottom * v)


def perlin_mask(size_px: int, rng: np.random.Generator, *, threshold: float = 0.5) -> np.ndarray:
    """A float32 {0, 1} mask from Perlin noise at random scales (2^0..2^5 cells per side), as DRAEM."""
    for _ in range(10):
        ry, rx = 2 ** int(rng.integers(0, 6)), 2 ** int(rng.integers(0, 6))
        noise = perlin(size_px, size_px, ry, rx, rng)
        if rng.random() < 0.5:
            noise = np.rot90(noise, int(rng.integers(1, 4)))
        mask = (noise > threshold).astype(np.float32)
        if mask.any():
            return np.ascontiguousarray(mask)
    # Rare: ten empty draws; a small square keeps the sample defective.
    mask = np.zeros((size_px, size_px), np.float32)
    y, x = rng.integers(0, size_px - size_px // 8, 2)
    mask[y : y + size_px // 8, x : x + size_px // 8] = 1.0
    return mask


def packaged_images() -> list[np.ndarray]:
    """The sample images shipped with scikit-image, as RGB uint8 (empty if it is not installed)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    images = []
    for path in sorted(folder.glob("*")):
        if path.suffix.lower() not in (".png", ".jpg"):
            continue
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is not None and min(img.shape[:2]) >= 64:
            images.append(np.ascontiguousarray(img[:, :, ::-1]))
    return images


def _random_crop(img: np.ndarray, size_px: int, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    if h < size_px or w < size_px:
        scale = size_px / min(h, w)
        img = cv2.resize(img, (max(size_px, round(w * scale)), max(size_px, round(h * scale))))
        h, w = img.shape[:2]
    y = int(rng.integers(h - size_px + 1))
    x = int(rng.integers(w - size_px + 1))
    return img[y : y + size_px, x : x + size_px]


def procedural_texture(size_px: int, rng: np.random.Generator) -> np.ndarray:
    """One rendered texture (H, W, 3) float32 in [0, 1]."""
    kind = int(rng.integers(5))
    n = size_px
    if kind == 0:  # coloured Perlin noise
        res = 2 ** int(rng.integers(1, 5))
        chans = [perlin(n, n, res, res, rng) for _ in range(3)]
        img = np.stack(chans, -1) * 0.5 + 0.5
    elif kind == 1:  # stripes
        angle = rng.random() * np.pi
        freq = rng.uniform(2, 24) / n
        yy, xx = np.mgrid[0:n, 0:n]
        s = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)))
        c0, c1 = rng.random(3), rng.random(3)
        img = s[..., None] * c0 + (1 - s[..., None]) * c1
    elif kind == 2:  # checkerboard
        cell = int(rng.integers(4, max(5, n // 4)))
        yy, xx = np.mgrid[0:n, 0:n]
        s = ((yy // cell + xx // cell) % 2).astype(np.float64)
        c0, c1 = rng.random(3), rng.random(3)
        img = s[..., None] * c0 + (1 - s[..., None]) * c1
    elif kind == 3:  # blurred colour noise
        noise = rng.random((n, n, 3)).astype(np.float32)
        sigma = float(rng.uniform(0.5, 4.0))
        blurred = cv2.GaussianBlur(noise, (0, 0), sigma).astype(np.float64)
        img = (blurred - blurred.min()) / max(float(blurred.max() - blurred.min()), 1e-6)
    else:  # flat colour with a little grain
        img = rng.random(3)[None, None, :] + 0.05 * rng.standard_normal((n, n, 3))
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def recolour(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shuffle and recolour an RGB float image in [0, 1] (so it is not the product's own look)."""
    img = img[:, :, rng.permutation(3)]
    if rng.random() < 0.5:
        img = img[:, ::-1]
    if rng.random() < 0.5:
        img = img[::-1]
    img = np.rot90(img, int(rng.integers(4)))
    if rng.random() < 0.3:
        img = 1.0 - img
    contrast = rng.uniform(0.5, 1.8)
    img = (img - img.mean()) * contrast + img.mean() + rng.uniform(-0.3, 0.3)
    img = img * rng.uniform(0.6, 1.4, size=3)[None, None, :]
    return np.clip(img, 0.0, 1.0).astype(np.float32)


class DefectMaker:
    """Makes (I_ad, M) from a batch of good crops I_o."""

    def __init__(
        self,
        images: list[np.ndarray],
        *,
        sources: tuple[str, ...],
        probability: float,
        seed: int,
    ) -> None:
        unknown = [s for s in sources if s not in SOURCES]
        if unknown or not sources:
            raise ModelError(
                f"anomaly sources {','.join(sources) or '(none)'}: choose from {','.join(SOURCES)}"
            )
        if not 0.0 <= probability <= 1.0:
            raise ModelError(f"anomaly_probability {probability} must be between 0 and 1")
        self.images = images
        self.packaged = packaged_images() if "packaged" in sources else []
        if "packaged" in sources and not self.packaged:
            log.warning("no packaged sample images found (scikit-image missing): source 'packaged' skipped")
        self.sources = tuple(s for s in sources if s != "packaged" or self.packaged)
        self.probability = probability
        self.rng = np.random.default_rng(seed)

    def source(self, size_px: int) -> np.ndarray:
        """One anomaly source image (H, W, 3) float32 in [0, 1]."""
        kind = self.sources[int(self.rng.integers(len(self.sources)))]
        if kind == "procedural":
            return procedural_texture(size_px, self.rng)
        pool = self.images if kind == "dataset" else self.packaged
        img = _random_crop(pool[int(self.rng.integers(len(pool)))], size_px, self.rng)
        return recolour(img.astype(np.float32) / 255.0, self.rng)

    def __call__(self, good: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """good: (B, 3, H, W) float32 in [0, 1], H == W -> (defective (B, 3, H, W), masks (B, 1, H, W)).

        Each sample is made defective with `probability`; the others stay as they are with an empty mask."""
        b, _, h, w = good.shape
        if h != w:
            raise ModelError(f"artificial defects need square crops, got {w}x{h}")
        out = good.copy()
        masks = np.zeros((b, 1, h, w), np.float32)
        for i in range(b):
            if self.rng.random() >= self.probability:
                continue
            m = perlin_mask(h, self.rng)
            src = self.source(h).transpose(2, 0, 1)
            out[i] = good[i] * (1 - m) + src * m
            masks[i, 0] = m
        return out, masks
