"""The backbone's weights are the real ImageNet ones, and its taps are where we think."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from pipelines.backbone import LITE_MEAN, LITE_STD, frozen_features, load_classifier

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_pretrained_weights_classify_a_known_picture() -> None:
    skdata = pytest.importorskip("skimage.data")
    img = cv2.resize(skdata.chelsea(), (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    x = torch.from_numpy(((img - LITE_MEAN) / LITE_STD).transpose(2, 0, 1)).float()[None]
    model = load_classifier("efficientnet-lite0")
    with torch.inference_mode():
        probs = model(x).softmax(1)[0]
    top = int(probs.argmax())
    assert top in CAT_CLASSES, f"top-1 class {top}: the backbone is not the pretrained one"
    assert float(probs[sorted(CAT_CLASSES)].sum()) > 0.8


def test_features_are_frozen_with_expected_strides() -> None:
    net = frozen_features("efficientnet-lite0", taps=(4, 10))
    assert net.channels == (40, 112)
    assert net.strides == (8, 16)
    assert not any(p.requires_grad for p in net.parameters())
    with torch.inference_mode():
        a, b = net(torch.rand(1, 3, 96, 160))
    assert a.shape == (1, 40, 12, 20)
    assert b.shape == (1, 112, 6, 10)
