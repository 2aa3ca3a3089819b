"""Bundles: round trip, atomic writes, and one clear error for each broken bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines import bundle as bundle_mod
from pipelines.bundle import BundleMeta, load_bundle, update_meta, write_bundle
from pipelines.errors import BundleError


def _meta() -> BundleMeta:
    return BundleMeta(family="patchcore", created="2026-11-23T00:00:00Z", params={"a": 1})


def test_round_trip(tmp_path: Path) -> None:
    t = {"net.w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    write_bundle(tmp_path / "b", _meta(), t)
    b = load_bundle(tmp_path / "b")
    assert b.meta.family == "patchcore"
    np.testing.assert_array_equal(b.tensors["net.w"], t["net.w"])
    b2 = update_meta(b, calibration=b.meta.calibration.model_copy(update={"image_threshold": 2.5}))
    assert b2.meta.calibration.image_threshold == 2.5
    np.testing.assert_array_equal(b2.tensors["net.w"], t["net.w"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_interrupted_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("safetensors.numpy.save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        write_bundle(tmp_path / "b", _meta(), {"x": np.zeros(3, np.float32)})
    assert list(tmp_path.iterdir()) == []


def test_existing_bundle_is_not_replaced_without_overwrite(tmp_path: Path) -> None:
    write_bundle(tmp_path / "b", _meta(), {"x": np.zeros(3, np.float32)})
    with pytest.raises(BundleError, match="--overwrite"):
        write_bundle(tmp_path / "b", _meta(), {"x": np.zeros(3, np.float32)})


def test_metadata_updates_keep_exports_and_retraining_drops_them(tmp_path: Path) -> None:
    b = write_bundle(tmp_path / "b", _meta(), {"x": np.zeros(3, np.float32)})
    (b / "model.onnx").write_bytes(b"graph of the first weights")
    (b / "engines").mkdir()
    (b / "engines" / "gpu.plan").write_bytes(b"engine")
    update_meta(load_bundle(b), params={"a": 2})  # calibration, export: metadata only
    assert (b / "model.onnx").is_file() and (b / "engines" / "gpu.plan").is_file()
    write_bundle(b, _meta(), {"x": np.ones(3, np.float32)}, overwrite=True)  # a new training
    assert sorted(p.name for p in b.iterdir()) == ["bundle.yaml", "weights.safetensors"]
    assert load_bundle(b).tensors["x"].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_text("x"), "not a directory"),
        (lambda p: p.mkdir(), "not a model bundle"),
        (lambda p: (p.mkdir(), (p / "bundle.yaml").write_text("{: [")), "not valid YAML"),
        (lambda p: (p.mkdir(), (p / "bundle.yaml").write_text("name: other-tool\n")), "foreign"),
    ],
)
def test_broken_bundles_give_one_clear_error(tmp_path: Path, make, message: str) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "b"
    make(p)
    with pytest.raises(BundleError, match=message):
        load_bundle(p)


def test_corrupt_weights(tmp_path: Path) -> None:
    write_bundle(tmp_path / "b", _meta(), {"x": np.zeros(3, np.float32)})
    (tmp_path / "b" / bundle_mod.WEIGHTS_FILE).write_bytes(b"garbage" * 10)
    with pytest.raises(BundleError, match="corrupt"):
        _ = load_bundle(tmp_path / "b").tensors
