"""The inspector: decisions, defect blobs, ROI and golden-template alignment on frames."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from calibration.roi import RoiSettings
from calibration.template import GoldenTemplate
from drivers.camera.base import Frame
from drivers.camera.scene import SceneRenderer
from drivers.verdict import Result
from pipelines.bundle import Calibration, load_bundle
from pipelines.datasets.synth import write_mvtec_dataset
from pipelines.errors import ModelError
from pipelines.inference import Analysis
from pipelines.inspector import Inspector, decide, find_defects, min_area_in_px
from pipelines.preprocess import Preprocessor
from pipelines.training import train_bundle


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("insp")
    write_mvtec_dataset(
        root / "data", product="print", width_px=128, height_px=128, n_train=10, n_test_good=1,
        n_test_per_defect=0, defects=[], seed=5, progress=False,
    )  # fmt: skip
    return train_bundle(
        family="patchcore", data=root / "data", out=root / "b",
        overrides={"bank_size": 200, "max_patches": 4000}, tile_px=64, overlap_px=16, progress=False,
    )  # fmt: skip


def test_find_defects_and_minimum_area() -> None:
    m = np.zeros((100, 120), np.float32)
    m[10:20, 10:30] = 2.0  # 200 px
    m[60:62, 90:92] = 3.0  # 4 px
    defects = find_defects(m, pixel_threshold=1.0, min_area_px=0, mm_per_px=0.1)
    assert [(d.x, d.y, d.width, d.height, d.area_px) for d in defects] == [
        (10, 10, 20, 10, 200),
        (90, 60, 2, 2, 4),
    ]
    assert defects[0].area_mm2 == pytest.approx(2.0)
    assert defects[1].peak_score == pytest.approx(3.0)
    analysis = Analysis(score=3.0, anomaly_map=m, tile_score=3.0, global_score=None)
    # A minimum area above every blob means no NG from the map alone.
    result, kept = decide(
        analysis, Calibration(image_threshold=1.0, pixel_threshold=1.0, min_defect_area_px=500)
    )
    assert result is Result.OK and kept == ()
    result, kept = decide(
        analysis, Calibration(image_threshold=1.0, pixel_threshold=1.0, min_defect_area_px=100)
    )
    assert result is Result.NG and len(kept) == 1


def test_minimum_area_in_mm2_uses_the_pixel_scale() -> None:
    m = np.zeros((100, 120), np.float32)
    m[10:20, 10:30] = 2.0  # 200 px = 2.0 mm^2 at 0.1 mm/px
    analysis = Analysis(score=2.0, anomaly_map=m, tile_score=2.0, global_score=None)
    small = Calibration(image_threshold=1.0, pixel_threshold=1.0, min_defect_area_mm2=1.5)
    large = Calibration(image_threshold=1.0, pixel_threshold=1.0, min_defect_area_mm2=2.5)
    assert min_area_in_px(small, 0.1) == 150 and min_area_in_px(large, 0.1) == 250
    assert decide(analysis, small, mm_per_px=0.1)[0] is Result.NG
    assert decide(analysis, large, mm_per_px=0.1) == (Result.OK, ())
    # At 0.05 mm/px the same 200 px blob is 0.5 mm^2: below 1.5 mm^2.
    assert decide(analysis, small, mm_per_px=0.05)[0] is Result.OK
    # With a pixel minimum too, the larger of the two applies.
    both = small.model_copy(update={"min_defect_area_px": 300})
    assert min_area_in_px(both, 0.1) == 300 and decide(analysis, both, mm_per_px=0.1)[0] is Result.OK
    with pytest.raises(ModelError, match=r"min_defect_area_mm2 .* needs a pixel scale"):
        decide(analysis, small)


def _frame(pixels: np.ndarray, frame_id: int = 1) -> Frame:
    return Frame(frame_id=frame_id, timestamp_s=time.monotonic(), pixels=pixels, part_id=f"P{frame_id}")


def test_roi_excludes_pixels(tiny_bundle: Path) -> None:
    img = SceneRenderer(product="print", width_px=128, height_px=128, seed=5).render(3, defect="spot").image
    plain = Inspector(load_bundle(tiny_bundle), backend="torch")
    roi = RoiSettings(exclude=[[[0, 0], [64, 0], [64, 128], [0, 128]]])
    masked = Inspector(load_bundle(tiny_bundle), backend="torch", preprocessor=Preprocessor(roi=roi))
    a = plain.inspect(_frame(img))
    b = masked.inspect(_frame(img))
    assert a.anomaly_map is not None and b.anomaly_map is not None
    assert np.all(b.anomaly_map[:, :63] == 0)
    np.testing.assert_allclose(b.anomaly_map[:, 70:], a.anomaly_map[:, 70:], atol=1e-6)


def test_failed_alignment_is_uninspected_with_reason(tiny_bundle: Path) -> None:
    scene = SceneRenderer(product="print", width_px=512, height_px=512, seed=5)
    template = GoldenTemplate.create(scene.render(0).image)
    inspector = Inspector(
        load_bundle(tiny_bundle), backend="torch", preprocessor=Preprocessor(template=template)
    )
    good = inspector.inspect(_frame(scene.render(1).image))
    assert good.result in (Result.OK, Result.NG)
    blank = inspector.inspect(_frame(np.full((512, 512, 3), 200, np.uint8), 2))
    assert blank.result is Result.UNINSPECTED
    assert blank.reject
    assert blank.reason.startswith("alignment failed")
