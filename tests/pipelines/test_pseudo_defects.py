"""Artificial defects for training-time validation: visible inside their mask, nothing outside it."""

from __future__ import annotations

import numpy as np
import pytest

from drivers.camera.scene import SceneRenderer
from pipelines.pseudo_defects import KINDS, add_pseudo_defect


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_changes_the_image_inside_its_mask_only(kind: str) -> None:
    img = SceneRenderer(product="paper", width_px=200, height_px=160, seed=1).render(0).image
    changed = 0
    for seed in range(12):
        out, mask = add_pseudo_defect(img, np.random.default_rng(seed), kind=kind)
        assert out.shape == img.shape and out.dtype == np.uint8 and mask.shape == img.shape[:2]
        assert 0 < mask.sum() < 0.2 * mask.size, "a small defect"
        diff = np.abs(out.astype(int) - img.astype(int)).max(axis=2)
        # Outside the mask only the soft edge of a blob or stroke may differ, and only a little.
        assert np.percentile(diff[~mask], 99.9) <= 64
        changed += diff[mask].mean() > 12
    assert changed >= 8, "most draws are clearly visible"


def test_same_seed_same_defect_and_bad_input() -> None:
    img = SceneRenderer(product="print", width_px=128, height_px=128, seed=2).render(1).image
    a = add_pseudo_defect(img, np.random.default_rng(5))
    b = add_pseudo_defect(img, np.random.default_rng(5))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    with pytest.raises(ValueError, match="unknown pseudo-defect kind"):
        add_pseudo_defect(img, np.random.default_rng(0), kind="crack")
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        add_pseudo_defect(img[..., 0], np.random.default_rng(0))
