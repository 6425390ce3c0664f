"""Building a counter by name, and the options each one takes.

``build_model(name, pretrained=..., backbone_weights=..., **options)`` builds one of
``MODEL_NAMES``; each model records its options in ``model.config`` (JSON-able), so that
``build_model(model.name, pretrained=False, **model.config)`` rebuilds the same
architecture for a checkpoint's weights. Unknown names and options are refused here, with
the choices, rather than as a TypeError from a constructor.
"""

from __future__ import annotations

import os
from typing import Any

from crowdtk.errors import CrowdtkError
from crowdtk.models.base import Counter
from crowdtk.models.csrnet import CSRNet
from crowdtk.models.lite import Lite1Counter, Lite2Counter, LiteCounter
from crowdtk.train_config import MODEL_NAMES


_BUILDERS: dict[str, type[Counter]] = {"csrnet": CSRNet, "lite": LiteCounter, "lite1": Lite1Counter, "lite2": Lite2Counter}
assert tuple(_BUILDERS) == MODEL_NAMES  # the CLI offers MODEL_NAMES without importing torch
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
