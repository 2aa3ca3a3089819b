"""Image AUROC per defect kind of a bundle on fresh synthetic parts (the figures in BENCHMARKS.md).

Usage: python scripts/per_defect_scores.py BUNDLE SIZE_PX [SEED] [--product print|paper]

Renders 40 good parts and 12 parts per defect kind with part numbers far from every
training range (9,000,000+ good, 8,000,000+ defective) and prints, per kind, the median
image score, the share caught at the bundle's threshold and the AUROC against the good parts.
"""

from __future__ import annotations

import argparse

import numpy as np

from drivers.camera.scene import SceneRenderer, allowed_defects
from pipelines.bundle import load_bundle
from pipelines.inspector import Inspector
from pipelines.metrics import image_auroc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("size_px", type=int)
    p.add_argument("seed", type=int, nargs="?", default=7, help="the product design (default 7, the demo's)")
    p.add_argument("--product", default="print", choices=("print", "paper"))
    args = p.parse_args()
    inspector = Inspector(load_bundle(args.bundle), backend="torch", threads=2)
    scene = SceneRenderer(product=args.product, width_px=args.size_px, height_px=args.size_px, seed=args.seed)
    threshold = inspector.calibration.image_threshold
    good = np.array([inspector.analyse(scene.render(9_000_000 + i).image).score for i in range(40)])
    print(f"{'good':14s} median {np.median(good):.2f}  rejected {np.mean(good >= threshold):.2f}")
    for kind in allowed_defects(args.product):
        bad = np.array(
            [inspector.analyse(scene.render(8_000_000 + i, defect=kind).image).score for i in range(12)]
        )
        auc = image_auroc(np.r_[good, bad], np.r_[np.zeros(good.size), np.ones(bad.size)])
        caught = np.mean(bad >= threshold)
        print(f"{kind:14s} median {np.median(bad):.2f}  caught {caught:.2f}  auroc {auc:.2f}")
    print(f"threshold {threshold:.4g}")


if __name__ == "__main__":
    main()
