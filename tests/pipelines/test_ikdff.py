"""IKDFF: shapes, attention fusion, feature mask, a tiny training end to end, export parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from appliance.cli import main
from pipelines.bundle import Bundle, load_bundle
from pipelines.data import list_images, read_image
from pipelines.datasets.synth import write_mvtec_dataset
from pipelines.errors import ModelError
from pipelines.export import export_onnx
from pipelines.inspector import Inspector
from pipelines.models.ikdff.model import (
    AttentionFusion,
    FeatureMaskGenerator,
    IKDFFNet,
    cosine_distance,
    teacher_taps,
)
from pipelines.training import train_bundle

SMALL = {"fuse_width": 16, "embed": 32, "decoder_widths": (8, 16, 24)}
TINY = [
    "--set", "iterations=60", "--set", "batch=4", "--set", "crop_px=64", "--set", "fuse_width=16",
    "--set", "embed=32", "--set", "decoder_widths=8,16,24", "--set", "lr=3e-3",
    "--set", "checkpoint_every=20", "--tile", "64", "--overlap", "16",
]  # fmt: skip
ATOL = 1e-4


def small_net(*, attention: bool = True, feature_mask: bool = True, ratio: float = 0.5) -> IKDFFNet:
    torch.manual_seed(0)
    return IKDFFNet(
        backbone="efficientnet-lite0",
        taps=teacher_taps("efficientnet-lite0"),
        attention=attention,
        feature_mask=feature_mask,
        mask_ratio=ratio,
        mask_block_px=16,
        **SMALL,  # type: ignore[arg-type]
    )


def test_teacher_taps_are_the_deepest_blocks_at_strides_4_8_16() -> None:
    assert teacher_taps("efficientnet-lite0") == (2, 4, 10)


def test_shapes_student_mirrors_teacher_and_map_has_tile_size() -> None:
    net = small_net().eval()
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        t, s = net.pair(x)
        m = net(x)
    assert [f.shape for f in t] == [f.shape for f in s]
    assert [f.shape[1] for f in t] == [24, 40, 112]
    assert [f.shape[-1] for f in t] == [24, 12, 6]  # strides 4, 8, 16
    assert m.shape == (2, 1, 64, 96) and torch.isfinite(m).all()


def test_cosine_distance_is_zero_for_parallel_and_two_for_opposite() -> None:
    a = torch.randn(1, 5, 3, 3)
    assert torch.allclose(cosine_distance(a, 3 * a), torch.zeros(1, 1, 3, 3), atol=1e-6)
    assert torch.allclose(cosine_distance(a, -a), torch.full((1, 1, 3, 3), 2.0), atol=1e-6)


def test_attention_fusion_weights_are_a_softmax_over_scales_and_depend_on_input() -> None:
    torch.manual_seed(0)
    fusion = AttentionFusion((24, 40, 112), (4, 8, 16), width=16, attention=True)
    feats = [torch.randn(2, 24, 16, 16), torch.randn(2, 40, 8, 8), torch.randn(2, 112, 4, 4)]
    aligned = [m(f) for m, f in zip(fusion.align, feats, strict=True)]
    w = fusion.weights(aligned)
    assert w.shape == (2, 3, 16, 4, 4)
    assert torch.allclose(w.sum(1), torch.ones(2, 16, 4, 4), atol=1e-5)
    assert not torch.allclose(w[:, :, :, 0, 0], w[:, :, :, 3, 3])  # spatial term varies by position
    out = fusion(feats)
    assert out.shape == (2, 16, 4, 4)
    out.sum().backward()
    assert fusion.spatial_logits.weight.grad is not None and fusion.channel_logits.weight.grad is not None
    plain = AttentionFusion((24, 40, 112), (4, 8, 16), width=16, attention=False)
    assert plain(feats).shape == (2, 16, 4, 4)
    assert not hasattr(plain, "spatial_logits")


def test_feature_mask_hides_blocks_in_training_only() -> None:
    torch.manual_seed(0)
    gen = FeatureMaskGenerator((24, 40, 112), ratio=0.5, block_px=32)
    with torch.no_grad():
        for token, value in zip(gen.tokens, (7.0, 8.0, 9.0), strict=True):
            token.fill_(value)
    feats = [torch.randn(4, 24, 32, 32), torch.randn(4, 40, 16, 16), torch.randn(4, 112, 8, 8)]
    gen.train()
    out = gen(feats, (128, 128))
    hidden = [(o == v).all(1) for o, v in zip(out, (7.0, 8.0, 9.0), strict=True)]
    share = [float(h.float().mean()) for h in hidden]
    assert all(0.3 < s < 0.7 for s in share), share  # about half the blocks, at every scale
    # Blocks of 32 px: 8x8 at stride 4, 2x2 at stride 16, and the same region at every scale.
    h0, h2 = hidden[0].float(), hidden[2].float()
    assert torch.equal(h0[:, ::8, ::8], h2[:, ::2, ::2])
    assert torch.equal(torch.nn.functional.avg_pool2d(h0[:, None], 8)[:, 0], h0[:, ::8, ::8])
    kept = ~hidden[1]
    assert torch.equal(out[1].permute(0, 2, 3, 1)[kept], feats[1].permute(0, 2, 3, 1)[kept])
    gen.eval()
    assert all(o is f for o, f in zip(gen(feats, (128, 128)), feats, strict=True))
    off = FeatureMaskGenerator((24, 40, 112), ratio=0.5, block_px=32, enabled=False).train()
    assert all(o is f for o, f in zip(off(feats, (128, 128)), feats, strict=True))


def test_network_is_deterministic_in_eval_and_masked_in_training() -> None:
    net = small_net(ratio=0.5)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        net.eval()
        assert torch.equal(net(x), net(x))
        net.train()
        net.teacher.eval()
        a, b = net.pair(x)[1][0], net.pair(x)[1][0]
    assert not torch.equal(a, b)


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("attention", "maybe", "attention=on or attention=off"),
        ("feature_mask", "sometimes", "feature_mask=on or feature_mask=off"),
        ("mask_ratio", "1.5", "mask_ratio"),
        ("mask_block_px", "24", "multiple of 16"),
        ("crop_px", "80", "multiple of 32"),
        ("decoder_widths", "8,16", "3 whole numbers"),
        ("teacher_norm", "ema", "teacher_norm='ema': choose one of standard, none"),
        ("nonsense", "1", "unknown setting 'nonsense'"),
    ],
)
def test_bad_settings_raise_a_clear_error(tmp_path: Path, key: str, value: str, words: str) -> None:
    data = tmp_path / "d"
    write_mvtec_dataset(
        data, product="paper", width_px=64, height_px=64, n_train=6, n_test_good=0,
        n_test_per_defect=0, defects=[], seed=1, progress=False,
    )  # fmt: skip
    with pytest.raises(ModelError, match=words):
        train_bundle(family="ikdff", data=data, out=tmp_path / "b", overrides={key: value}, progress=False)


@pytest.fixture(scope="module")
def paper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ikdff") / "paper"
    write_mvtec_dataset(
        root, product="paper", width_px=128, height_px=128, n_train=14, n_test_good=4,
        n_test_per_defect=2, defects=["spot"], seed=3, progress=False,
    )  # fmt: skip
    return root


@pytest.fixture(scope="module")
def bundle(paper: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    out = tmp_path_factory.mktemp("ikdff-bundle") / "b"
    assert (
        main(["train", "--model", "ikdff", "--data", str(paper), "--out", str(out), "--no-progress", *TINY])
        == 0
    )
    return load_bundle(out)


def test_tiny_training_writes_a_bundle_that_separates_an_obvious_defect(
    bundle: Bundle, paper: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    meta = bundle.meta
    assert meta.family == "ikdff" and meta.params["attention"] is True
    assert meta.params["taps"] == [2, 4, 10]
    assert meta.training["iterations_done"] == 60
    chosen = meta.training["checkpoint"]
    assert [h[0] for h in chosen["history"]] == [20, 40, 60]
    assert chosen["selected_score"] == max(h[1] for h in chosen["history"])
    assert chosen["selected_iteration"] in (20, 40, 60)
    assert meta.training["settings"]["feature_mask"] == "on"
    q = bundle.tensors["net.norm.q"]
    assert q[1] > q[0]
    insp = Inspector(bundle, backend="torch", threads=1)
    goods = [read_image(p) for p in list_images(paper / "test" / "good")]
    good_scores, bad_scores = [], []
    for img in goods:
        bad = img.copy()
        bad[40:72, 50:82] = (20, 20, 20)  # a dark 32 px square on light paper
        good_a, bad_a = insp.analyse(img), insp.analyse(bad)
        good_scores.append(good_a.score)
        bad_scores.append(bad_a.score)
        inside = bad_a.anomaly_map[40:72, 50:82].mean()
        assert inside > bad_a.anomaly_map[:, :30].mean() + 0.5  # localised at the square
    assert min(bad_scores) > max(good_scores), (bad_scores, good_scores)
    capsys.readouterr()
    assert main(["eval", "--bundle", str(bundle.path), "--data", str(paper), "--no-progress"]) == 0
    assert "aupro" in capsys.readouterr().out


def test_ablation_switches_reach_the_bundle(paper: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    args = ["train", "--model", "ikdff", "--data", str(paper), "--out", str(out), "--no-progress", *TINY]
    switches = ["--set", "attention=off", "--set", "feature_mask=off", "--set", "teacher_norm=standard"]
    assert main([*args, *switches, "--set", "iterations=2"]) == 0
    b = load_bundle(out)
    assert b.meta.params["attention"] is False and b.meta.params["feature_mask_in_training"] is False
    assert not any(k.startswith("net.fusion.spatial_logits") for k in b.tensors)
    # teacher_norm=standard: per-channel statistics of the training crops are stored
    assert b.meta.params["teacher_norm"] == "standard"
    assert b.tensors["net.teacher.mean0"].any() and not np.allclose(b.tensors["net.teacher.std0"], 1.0)


def test_teacher_features_are_raw_by_default(bundle: Bundle) -> None:
    """teacher_norm=none (the default): the standardisation stays the identity, as reverse distillation."""
    assert bundle.meta.params["teacher_norm"] == "none"
    for i in range(3):
        assert not bundle.tensors[f"net.teacher.mean{i}"].any()
        assert (bundle.tensors[f"net.teacher.std{i}"] == 1).all()


def test_export_parity_with_onnxruntime(bundle: Bundle, paper: Path) -> None:
    exported = export_onnx(bundle)
    assert exported.meta.exports["onnx"]["parity_max_abs_vs_torch"] < ATOL
    torch_insp = Inspector(exported, backend="torch", threads=1)
    ort_insp = Inspector(exported, backend="onnxruntime", threads=1)
    for p in list_images(paper / "test")[:3]:
        img = read_image(p)
        a, b = torch_insp.analyse(img), ort_insp.analyse(img)
        assert float(np.abs(a.anomaly_map - b.anomaly_map).max()) <= ATOL
        assert abs(a.score - b.score) <= ATOL
