"""The counter interface: one contract for every back bone, and the input conventions it fixes.

Every counter is a :class:`Counter` with output stride 8 (``crowdtk.geometry.STRIDE``):

* ``forward_features(x)`` maps a normalised image batch ``N×3×H×W`` (``H`` and ``W``
  multiples of 8) to the last feature map before the output layer, ``N×C×H/8×W/8``;
  this is the map Crowd Affinity Propagation (``crowdtk.cap``) works on;
* ``head(feat)`` is the 1×1 output convolution and nothing else, giving the density map
  ``N×1×H/8×W/8``;
* ``forward(x) = head(forward_features(x))``;
* ``encode`` / ``decode`` / ``frozen_modules`` split ``forward_features`` at a freeze level
  (``--freeze``), so that the frozen part's output can be cached.

Inputs are RGB, normalised by the model's own convention: ``model.normalize(images)``
takes uint8 (0..255) or float (0..1) tensors shaped ``3×H×W`` or ``N×3×H×W`` and applies
``model.mean`` / ``model.std``. Pad the *normalised* batch to a multiple of the stride
with :func:`pad_to_stride` (zeros at the bottom and the right, so output cell ``(i, j)``
still covers input pixels ``8i..8i+7, 8j..8j+7``); crop the density map back with
``[..., :ceil(H/8), :ceil(W/8)]`` if needed.

:func:`inference_copy` turns any counter into a faster, inference-only copy; the modules
that can fold their batch norms say how (``fold_batch_norms``), so this interface needs to
know no back bone.
"""

from __future__ import annotations

import abc
import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from crowdtk.errors import CrowdtkError
from crowdtk.geometry import STRIDE
from crowdtk.train_config import FREEZE_LEVELS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_freeze(level: str) -> str:
    # FREEZE_LEVELS[0] is "none": nothing to encode, so it is no level for encode/frozen_modules.
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


class Counter(nn.Module, abc.ABC):
    """A density-map counter with output stride 8 (see the module docstring)."""

    name: str = ""
    stride: int = STRIDE
    # Images per forward pass when predicting many images of one size (crowdtk.predict, which on
    # CPU keeps it only if the first batch is measurably faster): batching can help the lite
    # counter's many small depthwise layers, depending on the CPU, never CSRNet's large
    # convolutions, whose memory it would multiply.
    inference_batch: int = 1
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __init__(self) -> None:
        super().__init__()
        # The rebuild options (JSON-able): build_model(model.name, pretrained=False, **model.config)
        # gives the same architecture for a checkpoint's weights.
        self.config: dict[str, Any] = {}
        # Where the front end's initial weights came from (informative, not a rebuild option).
        self.init_source: str = "random"
        self.feature_channels: int = 0
        self.output: nn.Conv2d  # the 1×1 output layer, set by subclasses

    def normalize(self, images: Any) -> torch.Tensor:
        """uint8 (0..255) or float (0..1) RGB, ``3×H×W`` or ``N×3×H×W`` → the model's input scale."""
        return _normalize(images, self.mean, self.std)

    def to_input(self, images: Any, device: torch.device) -> torch.Tensor:
        """A (B, H, W, 3) uint8 array of images → the normalised (B, 3, H, W) float input, in
        channels-last memory (the layout oneDNN's convolutions run fastest in)."""
        x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(255.0)
        return self.normalize(x).contiguous(memory_format=torch.channels_last)

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


def init_output(conv: nn.Conv2d) -> None:
    """The output layer starts with non-negative weights |N(0, 0.01)| / √C and a bias of 0.01.

    The features it reads are ReLU outputs (≥ 0), so every initial prediction is at least
    0.01 and its mean is a small positive number: the squared error starts with gradients
    of one sign in empty regions and none of the dead, all-negative maps a zero-mean
    initialisation can start from.
    """
    with torch.no_grad():
        conv.weight.normal_(0.0, 0.01).abs_().div_(math.sqrt(conv.in_channels))
        assert conv.bias is not None  # the output convolution has a bias
        conv.bias.fill_(0.01)


def inference_copy(counter: Counter) -> Counter:
    """A copy of ``counter`` for inference only (eval mode, no gradients): each batch norm is folded
    into the convolution before it and activations run in place.

    Same outputs up to float rounding (|difference| ~1e-6 of the output's scale). On CPU this
    removes one full read and write of every expanded feature map per batch norm and per
    activation, which makes the lite counter's forward faster (``benchmarks/inference.py`` measures it).
    The copy's state dict has other keys (no ``_bn*``): never save it as a checkpoint.
    """
    model = copy.deepcopy(counter).eval()
    for module in model.modules():
        # Modules with batch norms (crowdtk.models.layers.MBConv, crowdtk.models.lite.Lite0Encoder)
        # fold them themselves: they know which convolution each one follows.
        fold = getattr(module, "fold_batch_norms", None)
        if fold is not None:
            fold()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
