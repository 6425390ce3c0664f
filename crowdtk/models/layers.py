"""Layers the counters are built from: TensorFlow-style convolutions, inverted residuals, back ends.

EfficientNet-Lite was trained in TensorFlow, so reusing its ImageNet weights exactly takes
TensorFlow's conventions, which PyTorch's layers do not share:

* :class:`SameConv2d`: "same" padding, asymmetric for strided convolutions (PyTorch pads
  symmetrically), and an optional faster backward for dilated depthwise convolutions
  (:func:`phase_split_conv`);
* :func:`batch_norm`: TensorFlow's epsilon and momentum;
* :class:`MBConv`: the inverted-residual block, with EfficientNet-PyTorch's attribute names
  so that its state dicts load as they are.

:func:`dilated_backend` is the CSRNet-style back end that every counter puts on its front end.
"""

from __future__ import annotations

import math
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01  # TensorFlow's 0.99 decay

ConvT = TypeVar("ConvT", bound=nn.Conv2d)


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


def fold_batch_norm(conv: ConvT, bn: nn.Module) -> tuple[ConvT, nn.Module]:
    """``conv`` with the batch norm ``bn`` folded into it (eval mode), and the Identity that takes ``bn``'s place."""
    assert isinstance(bn, nn.modules.batchnorm._BatchNorm)  # not folded yet: inference_copy folds a fresh copy once
    return fuse_conv_bn_eval(conv, bn), nn.Identity()


class SameConv2d(nn.Conv2d):
    """A convolution with TensorFlow's "same" padding.

    Stride 1: symmetric padding ``(k − 1)·d / 2`` (static). Stride > 1: the total padding
    ``max((⌈i/s⌉ − 1)·s + (k − 1)·d + 1 − i, 0)`` is split with the smaller half at the
    top/left, as TensorFlow does (for an even input and k = 3: 0 before, 1 after).
    """

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1, groups: int = 1, bias: bool = False
    ) -> None:
        static = (kernel - 1) * dilation // 2 if stride == 1 else 0
        super().__init__(cin, cout, kernel, stride=stride, padding=static, dilation=dilation, groups=groups, bias=bias)
        self._dynamic = stride > 1
        # Only a dilated, depthwise, odd-kernel, stride-1 convolution can be phase-split.
        self._phased = stride == 1 and dilation > 1 and groups == cin == cout and kernel % 2 == 1

    # Off by default (see phase_split_conv): whether it pays depends on the CPU, so training code
    # (crowdtk.train) times both ways on its first batch and sets it.
    phase_split_backward: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._dynamic:
            pads = []
            for size, k, s, d in zip(
                reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride), reversed(self.dilation)
            ):
                total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
                pads += [total // 2, total - total // 2]
            if any(pads):
                x = F.pad(x, pads)
        # Only when a backward pass will follow: that pass is what the split speeds up.
        if (
            self._phased
            and self.phase_split_backward
            and torch.is_grad_enabled()
            and (x.requires_grad or self.weight.requires_grad)
        ):
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
    dilated 672-channel 5×5 layers then take most of a training step (benchmarks/training.py measures it).
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
            self._bn0: nn.Module = batch_norm(mid)  # an Identity once fold_batch_norms has folded it
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, dilation=dilation, groups=mid)
        self._bn1: nn.Module = batch_norm(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2: nn.Module = batch_norm(cout)
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

    def fold_batch_norms(self) -> None:
        """For ``inference_copy`` (eval mode only): fold each batch norm into its convolution, run in place."""
        if self.expand:
            self._expand_conv, self._bn0 = fold_batch_norm(self._expand_conv, self._bn0)
        self._depthwise_conv, self._bn1 = fold_batch_norm(self._depthwise_conv, self._bn1)
        self._project_conv, self._bn2 = fold_batch_norm(self._project_conv, self._bn2)
        self.inplace = True


def dilated_backend(cin: int, channels: tuple[int, ...], dilation: int = 2) -> nn.Sequential:
    """CSRNet's back end: 3×3 convolutions with dilation 2 and ReLU, widening the receptive field
    at stride 8 without more pooling."""
    layers: list[nn.Module] = []
    for cout in channels:
        layers += [nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True)]
        cin = cout
    return nn.Sequential(*layers)
