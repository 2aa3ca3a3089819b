"""NDP-Net: shapes, the reference repair, artificial defects, filters, a tiny training, export parity."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pipelines.backbone import frozen_features
from pipelines.bundle import Bundle, load_bundle, write_bundle
from pipelines.data import list_images, read_image
from pipelines.datasets.synth import write_mvtec_dataset
from pipelines.errors import DataError, ModelError
from pipelines.export import export_onnx
from pipelines.inspector import Inspector
from pipelines.models.base import upsample_to
from pipelines.models.ndpnet.defects import DefectMaker, perlin_mask, procedural_texture
from pipelines.models.ndpnet.model import (
    PERCEPTUAL_TAPS,
    RBFRM,
    SEG_STAGES,
    MeanFilter,
    MedianFilter,
    NDPNet,
    _shifted,
    parse_segmentation,
    patch_bank,
)
from pipelines.models.ndpnet.train import defect_perception_loss, focal_loss
from pipelines.training import train_bundle

TINY = {
    "budget": "epochs",
    "phase1_epochs": 10.0,
    "phase2_epochs": 6.0,
    "crop_px": 64,
    "batch": 4,
    "width": 8,
    "fusion_channels": 16,
    "lr": 2e-3,
    "reference_candidates": 8,
}


def _net(**kw: object) -> NDPNet:
    args: dict = dict(width=8, tile_px=64, rbam=True, segmentation="msdsm", rbam_tau=0.05, fusion_channels=16)
    args.update(kw)
    net = NDPNet(**args)
    net.set_reference(torch.rand(1, 3, 64, 64))
    return net.eval()


@pytest.mark.parametrize(
    "segmentation",
    ["msdsm", "pixel", "msdsm+pixel", "perception", "msdsm+pixel+perception", "pixel+perception+perceptual"],
)
@pytest.mark.parametrize("rbam", [True, False])
def test_shapes_for_tiles_and_non_square_frames(segmentation: str, rbam: bool) -> None:
    net = _net(segmentation=segmentation, rbam=rbam)
    with torch.inference_mode():
        for shape in ((2, 3, 64, 64), (1, 3, 64, 128), (1, 3, 96, 160)):
            out = net(torch.rand(shape))
            assert out.shape == (shape[0], 1, *shape[2:])
            assert torch.isfinite(out).all()


def test_msdsm_plus_pixel_is_the_sum_of_the_two_maps_on_their_own_scales() -> None:
    """The same weights in the three modes: msdsm+pixel = norm(MSDSM map) + norm_pixel(pixel map)."""
    torch.manual_seed(0)
    both = _net(segmentation="msdsm+pixel")
    both.norm.q.copy_(torch.tensor([0.1, 0.6]))
    assert both.norm_pixel is not None
    both.norm_pixel.q.copy_(torch.tensor([0.01, 0.05]))
    seg, pix = _net(segmentation="msdsm"), _net(segmentation="pixel")
    state = both.state_dict()
    seg.load_state_dict({k: v for k, v in state.items() if not k.startswith("norm_pixel.")})
    pix.load_state_dict(
        {
            **{k: v for k, v in state.items() if not k.startswith(("msdsm.", "norm"))},
            "norm.q": state["norm_pixel.q"],
        }
    )
    x = torch.rand(2, 3, 64, 96)
    with torch.inference_mode():
        raw = both.raw_map(x)
        assert raw.shape == (2, 2, 64, 96)
        torch.testing.assert_close(both(x), seg(x) + pix(x))
        # each channel is filtered on its own: the median of the pair is not mixed across maps
        torch.testing.assert_close(raw[:, 1:2], pix.raw_map(x))


def test_perception_map_is_the_mean_of_the_encoder_stage_differences_on_their_own_scales() -> None:
    """ "perception": per MSDSM stage, mean_c (enc(x) - enc(rec))^2, filtered, on its own scale, averaged."""
    torch.manual_seed(0)
    net = _net(segmentation="perception")
    assert net.channels == ["perception0", "perception1", "perception2"]
    q = np.array([[0.0, 0.5], [0.1, 0.3], [0.02, 2.0]], np.float32)
    net.set_quantiles(q)
    x = torch.rand(2, 3, 64, 96)
    with torch.inference_mode():
        feats, _, rec = net.reconstruct(x)
        fr = net.encoder(rec, depth=3)
        want = torch.zeros(2, 1, 64, 96)
        for k, i in enumerate(SEG_STAGES):
            d = upsample_to(((feats[i] - fr[i]) ** 2).mean(1, keepdim=True), x)
            d = net.median_filter(net.mean_filter(d))
            want += (d - float(q[k, 0])) / float(q[k, 1] - q[k, 0]) / 3
        torch.testing.assert_close(net(x), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ModelError, match="2 map quantiles for 3 channels"):
        net.set_quantiles(q[:2])


def test_three_part_map_is_the_sum_of_its_parts_with_the_same_weights() -> None:
    torch.manual_seed(0)
    full = _net(segmentation="msdsm+pixel+perception")
    assert full.channels == ["msdsm", "pixel", "perception0", "perception1", "perception2"]
    full.set_quantiles(np.array([[0.1, 0.6], [0.01, 0.05], [0.0, 1.0], [0.0, 2.0], [0.5, 1.5]], np.float32))
    two, per = _net(segmentation="msdsm+pixel"), _net(segmentation="perception")
    state = full.state_dict()
    two.load_state_dict({k: v for k, v in state.items() if not k.startswith("norm_perception")})
    per.load_state_dict(
        {
            **{k: v for k, v in state.items() if not k.startswith(("msdsm.", "norm"))},
            "norm.q": state["norm_perception0.q"],
            "norm_perception1.q": state["norm_perception1.q"],
            "norm_perception2.q": state["norm_perception2.q"],
        }
    )
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(full(x), two(x) + per(x), rtol=1e-4, atol=1e-5)


def test_perceptual_map_is_the_pretrained_networks_cosine_distance_averaged_over_its_taps() -> None:
    torch.manual_seed(0)
    net = _net(segmentation="perceptual")
    assert net.lite is not None and net.channels == ["perceptual"]
    lite = frozen_features("efficientnet-lite0", taps=PERCEPTUAL_TAPS)
    net.lite.load_state_dict(lite.state_dict())
    net.train()
    assert not net.lite.training and net.encoder.training  # the pretrained network stays frozen
    net.eval()
    net.set_quantiles(np.array([[0.02, 0.2]], np.float32))
    x = torch.rand(2, 3, 64, 96)
    with torch.inference_mode():
        _, _, rec = net.reconstruct(x)
        d = torch.zeros(2, 1, 64, 96)
        for a, b in zip(lite(x), lite(rec), strict=True):
            d += upsample_to(1 - torch.nn.functional.cosine_similarity(a, b, dim=1).unsqueeze(1), x) / 5
        want = (net.median_filter(net.mean_filter(d)) - 0.02) / 0.18
        torch.testing.assert_close(net(x), want, rtol=1e-4, atol=1e-4)


def test_segmentation_parts_are_parsed_in_channel_order_and_checked() -> None:
    assert parse_segmentation("perception+msdsm") == ("msdsm", "perception")
    assert _net(segmentation="pixel+msdsm").segmentation == "msdsm+pixel"
    for bad in ("msdsm+msdsm", "msdsm+diff", "", "msdsm+"):
        with pytest.raises(ModelError, match="'\\+'-list of distinct parts"):
            parse_segmentation(bad)


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("side", [8, 6])
def test_rbfrm_with_a_bank_per_sample_equals_the_stored_bank(k: int, side: int) -> None:
    """Golden mode cuts each sample's bank in the graph; with the same reference for every sample
    it must repair exactly as the stored bank does (partial last patches included)."""
    torch.manual_seed(1)
    m = RBFRM(5, k, (-(-side // k)) ** 2, 0.05)
    ref = torch.randn(1, 5, side, side)
    m.set_reference(ref)
    f = torch.randn(3, 5, side, side)
    torch.testing.assert_close(m(f, ref.expand(3, -1, -1, -1)), m(f), atol=1e-5, rtol=1e-5)
    other = torch.randn(1, 5, side, side)  # and another sample's reference changes only that sample
    out = m(f, torch.cat([ref, other, ref]))
    torch.testing.assert_close(out[[0, 2]], m(f)[[0, 2]], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out[1], m(f)[1], atol=1e-3)


@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("side", [8, 6])  # 6: the last patch is partial (zero-padded)
def test_rbfrm_with_the_input_as_reference_returns_the_input(k: int, side: int) -> None:
    torch.manual_seed(0)
    f = torch.randn(1, 32, side, side)
    n = (-(-side // k)) ** 2
    m = RBFRM(32, k, n, tau=0.05)
    m.set_reference(f)
    out = m(f)
    assert out.shape == f.shape
    assert torch.allclose(out, f, atol=1e-3)
    # Another input is pulled towards the reference patches: each output patch is a convex
    # combination of reference patches, so it lies inside their span.
    g = torch.randn(2, 32, side, side)
    a = m.attention(g)
    assert torch.allclose(a.sum(1), torch.ones_like(a.sum(1)), atol=1e-5)
    assert not torch.allclose(m(g), g, atol=0.1)


def test_patch_bank_cuts_non_overlapping_patches() -> None:
    f = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)
    bank = patch_bank(f, 2)
    assert bank.shape == (4, 2, 2, 2)
    assert torch.equal(bank[1], f[0, :, 0:2, 2:4])
    assert torch.equal(bank[2], f[0, :, 2:4, 0:2])


def test_mean_and_median_filters_match_opencv() -> None:
    rng = np.random.default_rng(0)
    m = rng.random((37, 41)).astype(np.float32)
    t = torch.from_numpy(m)[None, None]
    mean = MeanFilter(5)(t)[0, 0].numpy()
    assert np.allclose(mean, cv2.blur(m, (5, 5), borderType=cv2.BORDER_REPLICATE), atol=1e-6)
    med = MedianFilter(5)(t)[0, 0].numpy()
    padded = np.pad(m, 2, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (5, 5))
    assert np.array_equal(med, np.median(windows, axis=(2, 3)).astype(np.float32))


@pytest.mark.parametrize("levels", [0, 3])  # continuous values; three levels (ties everywhere)
def test_median_network_equals_topk_median(levels: int) -> None:
    """The 5x5 sorting network selects the same element as TopK's middle, exactly, and 3x3 (TopK) too."""
    g = torch.Generator().manual_seed(levels)
    t = torch.rand(3, 2, 29, 33, generator=g)
    if levels:
        t = torch.floor(t * levels)
    for k in (3, 5):
        n = k * k
        topk = torch.topk(_shifted(t.reshape(6, 1, 29, 33), k), n // 2 + 1, dim=1).values[:, n // 2 :]
        assert torch.equal(MedianFilter(k)(t), topk.reshape(3, 2, 29, 33))


def test_artificial_defects_are_composites_inside_their_masks() -> None:
    rng = np.random.default_rng(1)
    good = [rng.integers(0, 255, (80, 90, 3), dtype=np.uint8) for _ in range(3)]
    maker = DefectMaker(good, sources=("procedural", "dataset", "packaged"), probability=0.5, seed=0)
    batch = rng.random((40, 3, 64, 64)).astype(np.float32)
    bad, masks = maker(batch)
    assert bad.shape == batch.shape and masks.shape == (40, 1, 64, 64)
    assert set(np.unique(masks)) <= {0.0, 1.0}
    defective = masks.reshape(40, -1).any(1)
    assert 8 <= defective.sum() <= 32  # probability 0.5
    outside = np.broadcast_to(masks == 0, batch.shape)
    assert np.array_equal(bad[outside], batch[outside])  # I_o * (1 - M) outside
    assert np.array_equal(bad[~defective], batch[~defective])
    inside = np.broadcast_to(masks == 1, batch.shape)
    assert np.abs(bad[inside] - batch[inside]).mean() > 0.05  # I_n * M inside
    assert bad.min() >= 0.0 and bad.max() <= 1.0
    for _ in range(5):
        mask = perlin_mask(64, rng)
        assert mask.any() and mask.shape == (64, 64)
        tex = procedural_texture(64, rng)
        assert tex.shape == (64, 64, 3) and 0.0 <= tex.min() <= tex.max() <= 1.0


def test_losses() -> None:
    f = [torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4)]
    zero = torch.zeros(2, 1, 32, 32)
    assert float(defect_perception_loss(f, f, zero)) == 0.0
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, :16, :16] = 1
    perceived = [x.clone() for x in f]
    for x in perceived:
        h = x.shape[-1] // 2
        x[:, :, :h, :h] += 3.0  # features differ exactly under the mask
    elsewhere = [x.clone() for x in f]
    for x in elsewhere:
        h = x.shape[-1] // 2
        x[:, :, h:, h:] += 3.0
    assert float(defect_perception_loss(f, perceived, mask)) < 1e-6
    assert float(defect_perception_loss(f, elsewhere, mask)) > 0.1
    target = (torch.rand(1, 1, 8, 8) > 0.5).float()
    right = focal_loss((target * 2 - 1) * 6, target, 2.0)
    wrong = focal_loss((1 - 2 * target) * 6, target, 2.0)
    assert float(right) < 1e-4 < float(wrong)


@pytest.fixture(scope="module")
def paper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ndp") / "paper"
    write_mvtec_dataset(
        root, product="paper", width_px=128, height_px=128, n_train=14, n_test_good=3,
        n_test_per_defect=2, defects=["spot", "scratch"], seed=3, progress=False,
    )  # fmt: skip
    return root


@pytest.fixture(scope="module")
def bundle(paper: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    out = train_bundle(
        family="ndpnet", data=paper, out=tmp_path_factory.mktemp("b") / "ndp", overrides=TINY,
        tile_px=64, overlap_px=16, progress=False,
    )  # fmt: skip
    return load_bundle(out)


def test_bundle_holds_the_reference_and_separates_an_obvious_defect(bundle: Bundle, paper: Path) -> None:
    meta = bundle.meta
    assert meta.family == "ndpnet"
    # the fast profile's map: the MSDSM, the pixel difference and the pretrained network's (5 taps)
    assert meta.params["rbam"] is True and meta.params["segmentation"] == "msdsm+pixel+perceptual"
    assert len(meta.training["map_quantiles"]) == 3  # every raw channel has its held-out scale
    pretrained = frozen_features("efficientnet-lite0", taps=PERCEPTUAL_TAPS).state_dict()
    for key, value in pretrained.items():  # the perceptual part's network is the pretrained one
        np.testing.assert_array_equal(bundle.tensors["net.lite." + key], value.numpy())
    assert meta.training["reference"]["method"] == "medoid"
    ref = bundle.tensors["net.ref_image"]
    assert ref.shape == (1, 3, 64, 64) and ref.std() > 0  # a real training tile, not zeros
    assert "net.rbam.0.rbfrm2.bank" in bundle.tensors
    insp = Inspector(bundle, backend="torch", threads=1)
    good = [read_image(p) for p in list_images(paper / "test" / "good")]
    bad = []
    for img in good:
        d = img.copy()
        d[40:80, 30:90] = (20, 20, 200)  # a large, saturated blue stain on paper
        bad.append(d)
    g = [insp.analyse(x).score for x in good]
    b = [insp.analyse(x).score for x in bad]
    assert min(b) > max(g), (g, b)


def test_export_parity_with_onnxruntime(bundle: Bundle, paper: Path) -> None:
    exported = export_onnx(bundle)
    rec = exported.meta.exports["onnx"]
    assert rec["parity_max_abs_vs_torch"] < 1e-4
    import onnx

    ops = {n.op_type for n in onnx.load(str(exported.path / rec["file"])).graph.node}
    # median (sorting network), RBFRM, attention, mean
    assert {"Min", "Max", "ConvTranspose", "Softmax", "AveragePool"} <= ops and "TopK" not in ops
    images = [read_image(p) for p in list_images(paper / "test")]
    for mode in ("tiles", "whole"):
        a = Inspector(exported, backend="torch", threads=1, mode=mode)
        b = Inspector(exported, backend="onnxruntime", threads=1, mode=mode)
        for img in images[:4]:
            ra, rb = a.analyse(img), b.analyse(img)
            assert float(np.abs(ra.anomaly_map - rb.anomaly_map).max()) <= 1e-4
            assert abs(ra.score - rb.score) <= 1e-4


def test_ablation_switches(paper: Path, tmp_path: Path) -> None:
    small = {**TINY, "phase1_epochs": 1.0, "phase2_epochs": 1.0}
    out = train_bundle(
        family="ndpnet", data=paper, out=tmp_path / "abl",
        overrides={**small, "rbam": "off", "segmentation": "pixel", "def_per_weight": "0"},
        tile_px=64, overlap_px=16, progress=False,
    )  # fmt: skip
    meta = load_bundle(out).meta
    assert meta.params["rbam"] is False and meta.params["segmentation"] == "pixel"
    assert meta.training["settings"]["def_per_weight"] == 0.0
    assert not any(k.startswith("net.rbam.") or k.startswith("net.msdsm.") for k in load_bundle(out).tensors)
    assert not any(k.startswith("net.lite.") for k in load_bundle(out).tensors)  # no perceptual part


def test_time_budget_trains_each_phase_for_its_share(paper: Path, tmp_path: Path) -> None:
    """budget=time: the phases run past their epoch counts until the clock says stop, in the
    profile's split; the epochs actually trained are recorded."""
    budget_s = 12.0
    out = train_bundle(
        family="ndpnet", data=paper, out=tmp_path / "t",
        overrides={**TINY, "budget": "time", "max_minutes": budget_s / 60, "phase1_share": 0.5,
                   "phase1_epochs": 0.5, "phase2_epochs": 0.5},
        tile_px=64, overlap_px=16, progress=False,
    )  # fmt: skip
    info = load_bundle(out).meta.training
    floor_iterations = 5  # 0.5 epochs of 64-px crops over 10 images of 128x128 (4 crops each), batch 4
    assert info["budget"] == "time"
    assert (
        info["phase1_iterations"] > 2 * floor_iterations and info["phase2_iterations"] > 2 * floor_iterations
    )
    assert info["epochs"]["phase1"] > 0.5 and info["epochs"]["phase2"] > 0.5
    assert info["network_training_s"] >= budget_s


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("rbam", "maybe", "use on or off"),
        ("segmentation", "diff", "msdsm"),
        ("segmentation", "msdsm+msdsm", "perception"),
        ("anomaly_sources", "dtd", "procedural"),
        ("crop_px", "100", "multiple of 32"),
        ("anomaly_probability", "1.5", "between 0 and 1"),
        ("rbam_tau", "0", "> 0"),
        ("budget", "hours", "use time"),
        ("phase1_share", "1.5", "fraction between 0 and 1"),
        ("reference", "first", "use medoid"),
        ("reference", "golden", "needs reference_frame=PATH"),
    ],
)
def test_bad_settings_raise_one_clear_error(
    paper: Path, tmp_path: Path, key: str, value: str, says: str
) -> None:
    with pytest.raises(ModelError, match=says):
        train_bundle(
            family="ndpnet", data=paper, out=tmp_path / "x", overrides={**TINY, key: value},
            tile_px=64, overlap_px=16, progress=False,
        )  # fmt: skip
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def prints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Inkjet prints: a layout, so the tile at each place has its own golden counterpart."""
    root = tmp_path_factory.mktemp("ndp") / "print"
    write_mvtec_dataset(
        root, product="print", width_px=128, height_px=128, n_train=14, n_test_good=3,
        n_test_per_defect=2, defects=["spot", "missing"], seed=3, progress=False,
    )  # fmt: skip
    return root


def test_golden_reference_repairs_each_tile_from_the_golden_frame_at_its_place(
    prints: Path, tmp_path: Path
) -> None:
    golden_path = list_images(prints / "train" / "good")[0]
    out = train_bundle(
        family="ndpnet", data=prints, out=tmp_path / "g",
        overrides={**TINY, "phase1_epochs": 2.0, "phase2_epochs": 2.0, "reference": "golden",
                   "reference_frame": str(golden_path)},
        tile_px=64, overlap_px=16, progress=False,
    )  # fmt: skip
    b = load_bundle(out)
    assert b.meta.input_channels == 6 and b.meta.params["reference"] == "golden"
    assert b.meta.training["reference"]["method"] == "golden"
    np.testing.assert_array_equal(b.tensors["reference_frame"], read_image(golden_path))
    exported = export_onnx(b)
    rec = exported.meta.exports["onnx"]
    assert rec["parity_max_abs_vs_torch"] < 1e-4 and rec["input"]["shape"][1] == 6
    images = [read_image(p) for p in list_images(prints / "test")][:3]
    a = Inspector(exported, backend="torch", threads=1)
    o = Inspector(exported, backend="onnxruntime", threads=1)
    for img in images:
        ra, ro = a.analyse(img), o.analyse(img)
        assert float(np.abs(ra.anomaly_map - ro.anomaly_map).max()) <= 1e-4
        assert abs(ra.score - ro.score) <= 1e-4
    # The reference is used: the same frame judged against another golden frame gives another map.
    flipped = {**b.tensors, "reference_frame": b.tensors["reference_frame"][::-1].copy()}
    swapped = load_bundle(write_bundle(tmp_path / "swapped", b.meta, flipped))
    after = Inspector(swapped, backend="torch", threads=1).analyse(images[0]).anomaly_map
    assert float(np.abs(after - a.analyse(images[0]).anomaly_map).max()) > 1e-3
    # Frames must have the golden frame's size; whole-frame mode cannot cut a reference per tile.
    with pytest.raises(DataError, match=r"does not match the model's 128x128 golden reference frame"):
        o.analyse(images[0][:96])
    with pytest.raises(DataError, match="tiles only"):
        Inspector(exported, backend="onnxruntime", mode="whole")


def test_golden_reference_frame_must_exist_and_match_the_training_frames(
    prints: Path, tmp_path: Path
) -> None:
    with pytest.raises(ModelError, match="no such file"):
        train_bundle(
            family="ndpnet", data=prints, out=tmp_path / "x",
            overrides={**TINY, "reference": "golden", "reference_frame": str(tmp_path / "none.png")},
            tile_px=64, overlap_px=16, progress=False,
        )  # fmt: skip
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.zeros((96, 128, 3), np.uint8))
    with pytest.raises(ModelError, match=r"is 128x96 but a training frame is 128x128"):
        train_bundle(
            family="ndpnet", data=prints, out=tmp_path / "y",
            overrides={**TINY, "reference": "golden", "reference_frame": str(small)},
            tile_px=64, overlap_px=16, progress=False,
        )  # fmt: skip
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
