"""DistRec: shapes, attention, patch similarity, a tiny training, export parity, bad settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from appliance.cli import main
from pipelines.backbone import frozen_features
from pipelines.bundle import Bundle, load_bundle
from pipelines.data import list_images, read_image
from pipelines.datasets.synth import write_mvtec_dataset
from pipelines.errors import ModelError
from pipelines.export import export_onnx
from pipelines.inspector import Inspector
from pipelines.models.base import upsample_to
from pipelines.models.distrec.model import (
    CBAM,
    SCORINGS,
    TEACHER_TAPS,
    DistRecNet,
    LocalSSIM,
    cosine_patch_distance,
    parse_scoring,
)
from pipelines.models.distrec.train import paste_corruption
from pipelines.training import train_bundle

# cosine: a 60-iteration decoder reconstructs too roughly for SSIM (the profiles' default) to single
# out the test's patch; the ssim path is trained and exported below.
TINY = {"iterations": 60, "batch": 4, "crop_px": 64, "width": 16, "latent": 8, "scoring": "cosine"}
ATOL = 1e-4


def _net(scoring: str = "cosine") -> DistRecNet:
    torch.manual_seed(0)
    return DistRecNet(
        width=16, latent=8, head_dim=24, scoring=scoring, blur_sigma_px=2.0, ssim_sigma_px=1.5,
        teachers=("efficientnet-lite0",),
    ).eval()  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("distrec") / "data"
    write_mvtec_dataset(
        root, product="print", width_px=128, height_px=128, n_train=14, n_test_good=4,
        n_test_per_defect=2, defects=["spot"], seed=3, progress=False,
    )  # fmt: skip
    return root


@pytest.fixture(scope="module")
def bundle(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    out = train_bundle(
        family="distrec", data=dataset, out=tmp_path_factory.mktemp("b") / "b", overrides=TINY,
        tile_px=64, overlap_px=16, progress=False,
    )  # fmt: skip
    return load_bundle(out)


@pytest.mark.parametrize("scoring", SCORINGS)
def test_shapes(scoring: str) -> None:
    net = _net(scoring)
    x = torch.rand(2, 3, 64, 96)
    with torch.inference_mode():
        assert net.encoder(x).shape == (2, 32, 8, 12)
        assert net.heads(net.encoder(x)).shape == (2, 24, 8, 12)
        r = net.reconstruct(x)
        assert r.shape == x.shape and float(r.min()) >= 0.0 and float(r.max()) <= 1.0
        m = net(x)
    assert m.shape == (2, 1, 64, 96) and torch.isfinite(m).all()


def test_attention_block_gates_channels_and_places() -> None:
    torch.manual_seed(0)
    cbam = CBAM(8)
    x = torch.zeros(1, 8, 16, 16)
    x[0, :, 4:8, 4:8] = 3.0
    with torch.no_grad():
        cg, sg = cbam.channel_gate(x), cbam.spatial_gate(x)
    assert cg.shape == (1, 8, 1, 1) and sg.shape == (1, 1, 16, 16)
    assert float(cg.min()) > 0 and float(cg.max()) < 1 and float(sg.min()) > 0 and float(sg.max()) < 1
    # A spatial gate that reads the channel maximum highlights the bright square.
    with torch.no_grad():
        cbam.spatial.weight.zero_()
        cbam.spatial.weight[0, 1, 3, 3] = 2.0
        assert cbam.spatial.bias is not None
        cbam.spatial.bias.fill_(-1.0)
    y = cbam(x)
    with torch.no_grad():
        sg = cbam.spatial_gate(x * cbam.channel_gate(x))
    assert float(sg[0, 0, 5, 5]) > 0.9 > 0.3 > float(sg[0, 0, 12, 12])
    assert y.shape == x.shape and float(y.detach()[0, :, 12, 12].abs().max()) == 0.0
    y.sum().backward()
    assert cbam.mlp[0].weight.grad is not None and cbam.spatial.weight.grad is not None


def test_patch_similarity_is_zero_for_identical_and_high_where_different() -> None:
    torch.manual_seed(1)
    a = torch.rand(1, 3, 64, 64)
    b = a.clone()
    b[:, :, 24:40, 24:40] = 1.0 - b[:, :, 24:40, 24:40]
    ssim = LocalSSIM(1.5)
    same = 1.0 - ssim(a, a)
    assert float(same.abs().max()) < 1e-6
    diff = 1.0 - ssim(a, b)
    assert float(diff[0, 0, 28:36, 28:36].mean()) > 0.5
    assert float(diff[0, 0, :12, :12].abs().max()) < 1e-6
    fa = torch.randn(1, 16, 16, 16)
    fb = fa.clone()
    fb[:, :, 6:10, 6:10] = torch.randn(1, 16, 4, 4)
    assert float(cosine_patch_distance(fa, fa).max()) < 1e-5
    d = cosine_patch_distance(fa, fb)
    assert float(d[0, 0, 7:9, 7:9].min()) > 0.2 and float(d[0, 0, :3, :3].max()) < 1e-5
    for scoring in SCORINGS:
        net = _net(scoring)
        with torch.inference_mode():
            assert float(net.dissimilarity(a, a).abs().max()) < 1e-5, scoring
            m = net.dissimilarity(a, b)
        # The teachers' taps see the whole 64-px tile (fields of about 100 and 200 px): less local.
        factor = 1.5 if scoring == "perceptual" else 10.0
        assert float(m[0, 0, 28:36, 28:36].mean()) > factor * float(m[0, 0, :8, :8].mean()) + 1e-6, scoring


def test_paste_corruption_changes_a_rectangle_only() -> None:
    x = torch.rand(4, 3, 64, 64)
    y = paste_corruption(x, prob=1.0, gen=torch.Generator().manual_seed(0))
    changed = (y != x).any(dim=1)
    assert all(bool(changed[i].any()) for i in range(4))
    assert float(changed.float().mean()) < 0.2
    assert torch.equal(paste_corruption(x, prob=0.0, gen=torch.Generator()), x)


def test_tiny_training_separates_an_obvious_defect(bundle: Bundle, dataset: Path) -> None:
    assert bundle.meta.family == "distrec"
    assert bundle.meta.params["teachers"] == ["efficientnet-lite0", "efficientnet-lite1"]
    assert bundle.meta.params["head_dim"] == 304
    insp = Inspector(bundle, backend="torch", threads=1)
    goods = [read_image(p) for p in list_images(dataset / "test" / "good")]
    good_scores = [insp.analyse(img).score for img in goods]
    bad = goods[0].copy()
    bad[40:80, 40:80] = (20, 200, 20)  # a big green patch no good print has
    analysis = insp.analyse(bad)
    assert analysis.score > max(good_scores)
    m = analysis.anomaly_map
    assert m.shape == bad.shape[:2] and float(m[50:70, 50:70].mean()) > float(np.median(m))


def test_export_parity_with_onnxruntime(bundle: Bundle, dataset: Path) -> None:
    exported = export_onnx(bundle)
    assert exported.meta.exports["onnx"]["parity_max_abs_vs_torch"] < ATOL
    a_insp = Inspector(exported, backend="torch", threads=1)
    b_insp = Inspector(exported, backend="onnxruntime", threads=1)
    for p in list_images(dataset / "test")[:3]:
        img = read_image(p)
        a, b = a_insp.analyse(img), b_insp.analyse(img)
        assert float(np.abs(a.anomaly_map - b.anomaly_map).max()) <= ATOL
        assert abs(a.score - b.score) <= ATOL


@pytest.mark.parametrize("scoring", ["ssim", "pixel"])
def test_other_scorings_train_and_export(scoring: str, dataset: Path, tmp_path: Path) -> None:
    out = train_bundle(
        family="distrec", data=dataset, out=tmp_path / "b", tile_px=64, overlap_px=16, progress=False,
        overrides={**TINY, "iterations": 3, "scoring": scoring, "teachers": "single"},
    )  # fmt: skip
    b = export_onnx(load_bundle(out))
    assert b.meta.params["scoring"] == scoring and b.meta.params["head_dim"] == 152
    assert b.meta.exports["onnx"]["parity_max_abs_vs_torch"] < ATOL


@pytest.mark.parametrize(
    ("setting", "needle"),
    [
        ("scoring=l2", "scoring='l2' is invalid: a '+'-list of distinct parts from ssim, cosine, pixel"),
        ("scoring=ssim+ssim", "scoring='ssim+ssim' is invalid"),
        ("teachers=triple", "teachers='triple' is invalid: choose one of dual, single"),
        ("width=10", "width=10 is invalid"),
        ("crop_px=100", "crop_px=100 is invalid"),
        ("corrupt_prob=1.5", "corrupt_prob=1.5 is invalid"),
        ("colour=red", "unknown setting 'colour'"),
    ],
)
def test_bad_settings_fail_with_one_clear_line(
    setting: str, needle: str, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "--model", "distrec", "--data", str(dataset), "--out", str(tmp_path / "b")]
    code = main([*argv, "--no-progress", "--tile", "64", "--set", setting])
    err = capsys.readouterr().err
    assert code != 0 and needle in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()


def test_bad_scoring_in_a_bundle_is_refused() -> None:
    with pytest.raises(ModelError, match="scoring 'l1' is unknown"):
        DistRecNet(width=16, latent=8, head_dim=8, scoring="l1", blur_sigma_px=2.0, ssim_sigma_px=1.5)
    with pytest.raises(ModelError, match="'perceptual' needs the teachers"):
        DistRecNet(width=16, latent=8, head_dim=8, scoring="perceptual", blur_sigma_px=2.0, ssim_sigma_px=1.5)


def test_scoring_parts_are_parsed_in_channel_order() -> None:
    assert parse_scoring("perceptual+ssim") == ("ssim", "perceptual")
    assert _net("pixel+ssim").scoring == "ssim+pixel"
    for bad in ("ssim+ssim", "ssim+l2", "", "ssim+"):
        with pytest.raises(ModelError, match="'\\+'-list of distinct parts"):
            parse_scoring(bad)


def test_perceptual_part_is_the_raw_teachers_cosine_distance_and_parts_add_on_their_scales() -> None:
    net = _net("ssim+perceptual")
    assert net.teachers is not None
    lite = frozen_features("efficientnet-lite0", taps=TEACHER_TAPS["efficientnet-lite0"])
    net.teachers.nets[0].load_state_dict(lite.state_dict())
    net.train()
    assert not net.teachers.training and net.encoder.training  # the teachers stay frozen
    assert not any(p.requires_grad for p in net.teachers.parameters())
    net.eval()
    net.set_quantiles(np.array([[0.1, 0.5], [0.02, 0.2]], np.float32))
    x = torch.rand(2, 3, 64, 96)
    with torch.inference_mode():
        r = net.reconstruct(x)
        d = torch.zeros(2, 1, 64, 96)
        for a, b in zip(lite(x), lite(r), strict=True):
            d += upsample_to(1 - torch.nn.functional.cosine_similarity(a, b, dim=1).unsqueeze(1), x) / 2
        ssim = upsample_to((1 - net.ssim(x, r)).clamp_min(0), x)
        want = (net.blur(ssim) - 0.1) / 0.4 + (net.blur(d) - 0.02) / 0.18
        torch.testing.assert_close(net(x), want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ModelError, match="3 map quantiles for 2 scoring parts"):
        net.set_quantiles(np.zeros((3, 2), np.float32))


def test_perceptual_scoring_trains_exports_and_carries_the_teachers(dataset: Path, tmp_path: Path) -> None:
    out = train_bundle(
        family="distrec", data=dataset, out=tmp_path / "b", tile_px=64, overlap_px=16, progress=False,
        overrides={**TINY, "iterations": 3, "scoring": "perceptual+ssim", "teachers": "single"},
    )  # fmt: skip
    b = export_onnx(load_bundle(out))
    assert b.meta.params["scoring"] == "ssim+perceptual"
    assert np.asarray(b.meta.training["map_quantiles"]).shape == (2, 2)
    lite = frozen_features("efficientnet-lite0", taps=TEACHER_TAPS["efficientnet-lite0"])
    for key, value in lite.state_dict().items():  # the pretrained teacher travels in the bundle
        np.testing.assert_array_equal(b.tensors["net.teachers.nets.0." + key], value.numpy())
    assert b.meta.exports["onnx"]["parity_max_abs_vs_torch"] < ATOL
