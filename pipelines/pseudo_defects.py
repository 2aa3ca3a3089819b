"""Artificial defects on good images, to judge at training time how well a map separates
defects from good parts without any real defect.

Generic and product-agnostic: soft blobs (spots, stains, holes), thin strokes
(scratches, hairs, streaks) and displaced patches (a piece of the part where it
does not belong). They are small, like the defects a line sees, and drawn with
a seeded generator, so the same held-out images give the same verdict on the
same model. Used by the training of model families to weight or select their
maps (BVPN's `modules: auto`); never for a reported accuracy figure.
"""

from __future__ import annotations

import cv2
import numpy as np

KINDS = ("blob", "stroke", "patch")


def add_pseudo_defect(
    image: np.ndarray, rng: np.random.Generator, *, kind: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A copy of `image` (HxWx3 uint8) with one artificial defect, and its mask (HxW bool)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, got {image.shape} {image.dtype}")
    kind = kind or KINDS[int(rng.integers(len(KINDS)))]
    if kind not in KINDS:
        raise ValueError(f"unknown pseudo-defect kind {kind!r}: choose one of {', '.join(KINDS)}")
    h, w = image.shape[:2]
    side = min(h, w)
    out: np.ndarray = image.astype(np.float32)
    alpha: np.ndarray = np.zeros((h, w), np.float32)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    if kind == "blob":
        r = max(2.0, side * float(rng.uniform(0.012, 0.05)))
        axes = (int(r), int(r * rng.uniform(0.5, 1.0)))
        cv2.ellipse(alpha, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        alpha = np.asarray(cv2.GaussianBlur(alpha, (0, 0), max(0.8, r / 4)), np.float32)
        colour = _contrasting_colour(image, cy, cx, rng)
        strength = float(rng.uniform(0.6, 1.0))
        out = out * (1 - strength * alpha[..., None]) + colour * strength * alpha[..., None]
    elif kind == "stroke":
        length = side * float(rng.uniform(0.08, 0.3))
        angle = float(rng.uniform(0, np.pi))
        pts = np.array(
            [[cx + t * length * np.cos(angle), cy + t * length * np.sin(angle) + 3 * np.sin(4 * t)]
             for t in np.linspace(-0.5, 0.5, 12)],
            np.int32,
        )  # fmt: skip
        cv2.polylines(alpha, [pts], False, 1.0, int(rng.integers(1, 4)), cv2.LINE_AA)
        colour = _contrasting_colour(image, cy, cx, rng)
        strength = float(rng.uniform(0.5, 0.9))
        out = out * (1 - strength * alpha[..., None]) + colour * strength * alpha[..., None]
    else:  # patch: a piece of the image displaced to where it does not belong
        p = max(6, int(side * float(rng.uniform(0.05, 0.15))))
        sy, sx = int(rng.integers(max(1, h - p))), int(rng.integers(max(1, w - p)))
        ty, tx = min(cy, h - p), min(cx, w - p)
        piece = out[sy : sy + p, sx : sx + p].copy()
        piece = np.rot90(piece, int(rng.integers(1, 4))) if piece.shape[0] == piece.shape[1] else piece
        # A different tone too, or a displaced piece of a plain texture would look like the texture.
        piece = piece * float(rng.choice([rng.uniform(0.55, 0.8), rng.uniform(1.2, 1.5)]))
        out[ty : ty + p, tx : tx + p] = piece[: h - ty, : w - tx]
        alpha[ty : ty + p, tx : tx + p] = 1.0
    mask = alpha > 0.25
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), mask


def _contrasting_colour(image: np.ndarray, y: int, x: int, rng: np.random.Generator) -> np.ndarray:
    """A colour that stands out from the image around (y, x): darker, lighter or another hue."""
    local = image[max(0, y - 8) : y + 9, max(0, x - 8) : x + 9].reshape(-1, 3).mean(0)
    choice = int(rng.integers(3))
    if choice == 0:
        return local * float(rng.uniform(0.1, 0.5))
    if choice == 1:
        return local + (255 - local) * float(rng.uniform(0.5, 0.9))
    return rng.uniform(0, 255, 3)
