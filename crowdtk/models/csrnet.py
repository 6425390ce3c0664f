"""``csrnet``: the paper's counter, a VGG16 front end with a dilated back end.

VGG16 conv1_1–conv4_3 (three max-pools, stride 8), a back end of six 3×3 convolutions with
dilation 2 (512, 512, 512, 256, 128, 64) and ReLU, and the 1×1 output (Li et al., CSRNet,
CVPR 2018). The front end starts from ImageNet VGG16 weights: torchvision's
``VGG16_Weights.IMAGENET1K_V1`` read from the local torch hub cache only (nothing is
downloaded), or a torchvision VGG16 state dict the user names (``backbone_weights``); see
``crowdtk.models.weights``. The model has no options (``config`` is empty) and no batch norm.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

from crowdtk.models.base import IMAGENET_MEAN, IMAGENET_STD, Counter, check_freeze, init_output
from crowdtk.models.layers import dilated_backend
from crowdtk.models.weights import initial_state, load_exact, vgg16_imagenet_state

# torchvision's vgg16().features layout up to conv4_3 + ReLU (indices 0..22): the front end
# keeps the same indices so that ``features.N.*`` maps onto ``frontend.N.*``.
_VGG16_FRONTEND = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512)
_CSRNET_BACKEND = (512, 512, 512, 256, 128, 64)
# --freeze early: VGG16 up to its third pool (stride 8, 256 channels) is frozen; conv4_1–4_3 are fine-tuned.
_CSRNET_EARLY_LAYERS = 17


def _vgg_frontend() -> nn.Sequential:
    layers: list[nn.Module] = []
    cin = 3
    for item in _VGG16_FRONTEND:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, int(item), 3, padding=1), nn.ReLU(inplace=True)]
            cin = int(item)
    return nn.Sequential(*layers)


class CSRNet(Counter):
    """CSRNet: VGG16 conv1_1–conv4_3, dilated back end (512, 512, 512, 256, 128, 64), 1×1 output."""

    name = "csrnet"
    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    def __init__(self, *, pretrained: bool = True, backbone_weights: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        self.config = {}
        self.frontend = _vgg_frontend()
        self.backend = dilated_backend(512, _CSRNET_BACKEND)
        self.feature_channels = _CSRNET_BACKEND[-1]
        self.output = nn.Conv2d(self.feature_channels, 1, 1)
        # CSRNet's initialisation: every convolution N(0, 0.01), bias 0.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                assert m.bias is not None  # every convolution of CSRNet has a bias
                nn.init.zeros_(m.bias)
        init_output(self.output)
        start = initial_state(pretrained, backbone_weights, vgg16_imagenet_state)
        if start is not None:
            state, source, init_source = start
            self.load_vgg16(state, source)
            self.init_source = init_source

    def load_vgg16(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        """Copy a torchvision VGG16 state dict's ``features.N.*`` (N ≤ 21) into the front end."""
        mapped = {k: state[f"features.{k}"] for k in self.frontend.state_dict() if f"features.{k}" in state}
        load_exact(self.frontend, mapped, source, "torchvision VGG16 (features.N.weight/bias)", "features.")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.backend(self.frontend(x))

    def _cut(self, level: str) -> int:
        # How many front-end layers the level freezes (encode runs them, decode the rest).
        return len(self.frontend) if level == "encoder" else _CSRNET_EARLY_LAYERS

    def frozen_modules(self, level: str) -> list[nn.Module]:
        return list(self.frontend[: self._cut(check_freeze(level))])

    def encode(self, x: torch.Tensor, level: str) -> torch.Tensor:
        self._check_input(x)
        return self.frontend[: self._cut(check_freeze(level))](x)

    def decode(self, h: torch.Tensor, level: str) -> torch.Tensor:
        return self.backend(self.frontend[self._cut(level) :](h))
