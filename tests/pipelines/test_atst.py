"""ATST: the CoT block, the EMA-normalised teacher, a tiny training, export parity, bad settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from appliance.cli import main
from drivers.camera.scene import SceneRenderer
from pipelines.bundle import Bundle, load_bundle
from pipelines.errors import ModelError, PipelineError
from pipelines.export import export_onnx
from pipelines.inspector import Inspector
from pipelines.metrics import image_auroc
from pipelines.models.atst.cot import CoTBlock, LocalAggregation, ResidualBlock
from pipelines.models.atst.model import TAPS, EMANorm, Teacher, build_tile_net, net_from_params
from pipelines.models.atst.train import PROFILES, _params
from pipelines.training import train_bundle

# teacher_norm=ema: the paper's normalisation (the full profile's), so the tiny training exercises it
TINY = {"iterations": 150, "batch": 4, "crop_px": 64, "width": 16, "lr": 3e-3, "teacher_norm": "ema"}
ATOL = 1e-4  # calibrated scale, as for every family (tests/pipelines/test_export_parity.py)


def test_shapes_per_scale_and_fused_map() -> None:
    net = net_from_params(_params({**PROFILES["fast"], **TINY})).eval()
    x = torch.rand(2, 3, 64, 96)
    with torch.inference_mode():
        feats = net.teacher(x)
        preds = net.student(x)
        out = net(x)
    assert [f.shape[1:] for f in feats] == [p.shape[1:] for p in preds]
    assert [f.shape[-1] for f in feats] == [96 // s for s in (4, 8, 16)]
    assert [f.shape[1] for f in feats] == [24, 40, 112]  # EfficientNet-Lite0 blocks 2, 4, 10
    assert net.raw_maps(x).shape == (2, len(TAPS), 64, 96)
    assert out.shape == (2, 1, 64, 96) and torch.isfinite(out).all()


def test_local_aggregation_is_attention_over_the_window() -> None:
    torch.manual_seed(0)
    v = torch.randn(2, 16, 7, 9)
    agg = LocalAggregation(16, 3)
    # All weight on one offset: the values shifted by it (zero beyond the border).
    for j, (dy, dx) in enumerate((a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)):
        attn = torch.zeros(2, 2, 9, 7, 9)
        attn[:, :, j] = 1.0
        ref = F.pad(v, (1, 1, 1, 1))[:, :, 1 + dy : 8 + dy, 1 + dx : 10 + dx]
        assert torch.equal(agg(v, attn), ref)
    # A different weight set per channel group and position: checked against an explicit sum.
    attn = torch.rand(2, 2, 9, 7, 9).softmax(2)
    vp = F.pad(v, (1, 1, 1, 1))
    ref = torch.zeros_like(v)
    for j in range(9):
        dy, dx = divmod(j, 3)
        shifted = vp[:, :, dy : dy + 7, dx : dx + 9]
        ref += shifted * attn[:, :, j].repeat_interleave(8, dim=1)
    assert torch.allclose(agg(v, attn), ref, atol=1e-6)


def test_cot_block_learns_through_every_part_and_keeps_the_shape() -> None:
    torch.manual_seed(0)
    block = CoTBlock(32, kernel=3)
    x = torch.randn(2, 32, 12, 10)
    y = block(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # The residual block's middle is a CoT block for the ATST student, a 3x3 convolution for the ablation.
    assert isinstance(ResidualBlock(32, kind="cot").mix, CoTBlock)
    mix = ResidualBlock(32, kind="conv").mix
    assert isinstance(mix, torch.nn.Sequential) and isinstance(mix[0], torch.nn.Conv2d)
    with pytest.raises(ValueError, match="student kind"):
        ResidualBlock(32, kind="attention")


def test_ema_norm_updates_in_training_and_is_fixed_in_eval() -> None:
    torch.manual_seed(0)
    norm = EMANorm(3, mode="ema", momentum=0.9)
    a = torch.randn(4, 3, 5, 5) * 2 + 1
    b = torch.randn(4, 3, 5, 5) * 3 - 2
    norm.train()
    norm(a)  # the first batch sets the statistics
    assert torch.allclose(norm.mean, a.mean(dim=(0, 2, 3)), atol=1e-6)
    out = norm(b)
    mean = 0.9 * a.mean(dim=(0, 2, 3)) + 0.1 * b.mean(dim=(0, 2, 3))
    var = 0.9 * a.var(dim=(0, 2, 3), unbiased=False) + 0.1 * b.var(dim=(0, 2, 3), unbiased=False)
    assert torch.allclose(norm.mean, mean, atol=1e-6) and torch.allclose(norm.var, var, atol=1e-5)
    # Normalised with the running statistics, never the batch's own (EMAN).
    assert torch.allclose(out, (b - mean.view(1, 3, 1, 1)) / (var.view(1, 3, 1, 1) + 1e-5).sqrt(), atol=1e-5)
    assert int(norm.updates) == 2
    norm.eval()
    frozen = (norm.mean.clone(), norm.var.clone())
    one = norm(b[:1])
    assert torch.equal(norm(b)[:1], one), "in eval a sample's output does not depend on its batch"
    assert torch.equal(norm.mean, frozen[0]) and torch.equal(norm.var, frozen[1])
    assert int(norm.updates) == 2
    for mode in ("static", "none"):
        other = EMANorm(3, mode=mode).train()
        other(a)
        assert int(other.updates) == 0 and torch.equal(other.mean, torch.zeros(3))
    assert torch.equal(EMANorm(3, mode="none")(a), a)


def test_teacher_in_training_mode_keeps_the_backbone_frozen() -> None:
    teacher = Teacher("efficientnet-lite0", norm="ema", momentum=0.99).train()
    assert not teacher.features.training and all(not m.training for m in teacher.features.modules())
    assert all(n.training for n in teacher.ema_layers())
    before = [b.clone() for n, b in teacher.features.named_buffers() if "running" in n]
    teacher(torch.rand(2, 3, 64, 64))
    after = [b for n, b in teacher.features.named_buffers() if "running" in n]
    assert all(torch.equal(x, y) for x, y in zip(before, after, strict=True))
    assert all(int(n.updates) == 1 for n in teacher.ema_layers())


def _paper(n: int, seed: int) -> list[np.ndarray]:
    r = SceneRenderer(product="paper", width_px=96, height_px=96, seed=seed)
    return [r.render(i).image for i in range(n)]


def _defect(img: np.ndarray, i: int) -> np.ndarray:
    out = img.copy()
    y, x = 20 + 7 * (i % 5), 30 + 5 * (i % 4)
    out[y : y + 18, x : x + 18] = (20, 20, 160)  # an obvious dark blue patch
    return out


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    import cv2

    root = tmp_path_factory.mktemp("atst") / "data"
    (root / "train" / "good").mkdir(parents=True)
    for i, img in enumerate(_paper(16, seed=5)):
        cv2.imwrite(str(root / "train" / "good" / f"{i:03d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    out = train_bundle(
        family="atst", data=root, out=root.parent / "b", overrides=TINY, tile_px=64, overlap_px=16,
        progress=False,
    )  # fmt: skip
    return export_onnx(load_bundle(out))


def test_tiny_training_writes_a_bundle_that_loads_and_separates_a_defect(bundle: Bundle) -> None:
    meta = bundle.meta
    assert meta.family == "atst"
    assert meta.params["student"] == "cot" and meta.params["teacher_norm"] == "ema"
    assert meta.training["iterations_done"] == TINY["iterations"]
    assert meta.training["ema_updates"] == TINY["iterations"]
    net = build_tile_net(meta, bundle.tensors)
    layers = net.teacher.ema_layers()
    assert all(int(n.updates) == TINY["iterations"] for n in layers) and not layers[0].training
    assert not torch.equal(layers[0].mean, torch.zeros_like(layers[0].mean)), "EMA statistics are stored"
    insp = Inspector(bundle, backend="torch", threads=1)
    good = _paper(6, seed=77)
    scores = [insp.analyse(img).score for img in good] + [
        insp.analyse(_defect(img, i)).score for i, img in enumerate(good)
    ]
    labels = np.array([0] * len(good) + [1] * len(good))
    assert image_auroc(np.array(scores), labels) >= 0.9, scores
    m = insp.analyse(_defect(good[0], 0)).anomaly_map
    assert m.shape == (96, 96)
    assert m[20:38, 30:48].mean() > m[70:, 70:].mean(), "the map is highest on the patch"


def test_export_parity_with_onnxruntime(bundle: Bundle) -> None:
    rec = bundle.meta.exports["onnx"]
    assert rec["parity_max_abs_vs_torch"] < ATOL
    torch_insp = Inspector(bundle, backend="torch", threads=1)
    ort_insp = Inspector(bundle, backend="onnxruntime", threads=1)
    for i, img in enumerate(_paper(2, seed=9)):
        img = _defect(img, i) if i else img
        a, b = torch_insp.analyse(img), ort_insp.analyse(img)
        assert float(np.abs(a.anomaly_map - b.anomaly_map).max()) <= ATOL
        assert abs(a.score - b.score) <= ATOL


def test_too_wide_a_receptive_field_refuses_halo_tiles(bundle: Bundle) -> None:
    """The teacher's deepest tap sees more than 512 px: no halo makes tiles exact, so the export
    records no radius, halo mode says why, and auto falls back to blended tiles."""
    assert bundle.meta.exports["onnx"]["receptive_radius_px"] is None
    with pytest.raises(PipelineError, match="too wide for halo tiles"):
        Inspector(bundle, backend="onnxruntime", mode="halo")
    auto = Inspector(bundle, backend="onnxruntime", mode="auto")
    assert auto.analyser.halo_px is None and auto.analyser.mode_for(10**5, 10**5) == "tiles"


@pytest.mark.parametrize(
    ("key", "value"),
    [("student", "transformer"), ("teacher_norm", "batchnorm"), ("width", "24"), ("ema_momentum", "1.5")],
)
def test_bad_settings_raise_one_clear_error(
    key: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data" / "train" / "good"
    data.mkdir(parents=True)
    import cv2

    for i, img in enumerate(_paper(6, seed=1)):
        cv2.imwrite(str(data / f"{i}.png"), img)
    argv = ["train", "--model", "atst", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "b")]
    assert main([*argv, "--no-progress", "--set", f"{key}={value}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and key in err[0] and value in err[0]
    assert not (tmp_path / "b").exists()
    with pytest.raises(ModelError, match=key):
        train_bundle(
            family="atst", data=tmp_path / "data", out=tmp_path / "c", overrides={key: value}, progress=False
        )


def test_ablation_switches_reach_the_network(tmp_path: Path) -> None:
    import cv2

    conv = net_from_params(_params({**PROFILES["fast"], **TINY, "student": "conv", "teacher_norm": "none"}))
    assert not any(isinstance(m, CoTBlock) for m in conv.modules())
    assert all(n.mode == "none" for n in conv.teacher.ema_layers())
    cot = net_from_params(_params({**PROFILES["fast"], **TINY}))
    assert sum(isinstance(m, CoTBlock) for m in cot.modules()) == 3  # one per stage at depth 1
    # Through training: the conv student with statistics fixed before training (teacher_norm=static).
    data = tmp_path / "data" / "train" / "good"
    data.mkdir(parents=True)
    for i, img in enumerate(_paper(8, seed=2)):
        cv2.imwrite(str(data / f"{i}.png"), img)
    overrides = {**TINY, "iterations": 3, "student": "conv", "teacher_norm": "static"}
    out = train_bundle(
        family="atst", data=tmp_path / "data", out=tmp_path / "b", overrides=overrides, tile_px=64,
        overlap_px=16, progress=False,
    )  # fmt: skip
    b = load_bundle(out)
    assert b.meta.params["student"] == "conv" and b.meta.params["teacher_norm"] == "static"
    net = build_tile_net(b.meta, b.tensors)
    assert not any(isinstance(m, CoTBlock) for m in net.modules())
    layers = net.teacher.ema_layers()
    assert all(int(n.updates) == 0 and float(n.var.min()) > 0 for n in layers)
    assert not torch.equal(layers[0].var, torch.ones_like(layers[0].var)), "statistics were estimated"
