"""Building a counter by name, from its record in :data:`crowdtk.model_records.MODELS`.

``build_model(name, pretrained=..., backbone_weights=..., **options)`` builds a registered model;
each model records its options in ``model.config`` (JSON-able), so that
``build_model(model.name, pretrained=False, **model.config)`` rebuilds the same architecture
for a checkpoint's weights. Unknown names and options are refused here, with the choices,
rather than as a TypeError from a constructor.

Importing this module checks that every model record resolves (:func:`check_builder`): the records
are readable without torch and name their builders by "module:attr" (:mod:`crowdtk.model_records`
says why), so this is where a misspelt or half-made one fails, and every record registered later is
checked when it is registered.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from crowdtk.errors import CrowdtkError
from crowdtk.model_records import MODELS, ModelRecord, model_record
from crowdtk.models.base import Counter
from crowdtk.registry import RegistrationError


def check_builder(record: ModelRecord) -> None:
    """Refuse a record whose builder is no Counter subclass of the record's name, or does not take its options."""
    builder = record.resolve()
    if not (isinstance(builder, type) and issubclass(builder, Counter)):
        raise RegistrationError(
            f"the model {record.name!r}: its builder {builder!r} is not a crowdtk.models.Counter subclass"
        )
    if builder.name != record.name:  # the name its checkpoints carry, and build_model rebuilds them by
        raise RegistrationError(f"the model {record.name!r}: its builder {builder.__name__} has name {builder.name!r}")
    params = inspect.signature(builder).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        missing = [o for o in ("pretrained", "backbone_weights", *record.options) if o not in params]
        if missing:
            raise RegistrationError(
                f"the model {record.name!r}: {builder.__name__} takes no keyword {', '.join(missing)}"
            )


MODELS.add_check(check_builder)


def build_model(
    name: str, *, pretrained: bool = True, backbone_weights: str | os.PathLike[str] | None = None, **options: Any
) -> Counter:
    """Build a registered counter by name.

    ``pretrained=True``: the front end starts from ImageNet weights (csrnet: torchvision's
    cache; lite: the packaged file). ``backbone_weights=FILE`` loads the front end from a
    state dict instead (csrnet: torchvision VGG16; lite: EfficientNet-PyTorch Lite0).
    ``pretrained=False`` is random initialisation (for training from scratch, or before
    loading a checkpoint). ``options`` are the model's ``config`` entries.
    """
    record = model_record(name)
    unknown = sorted(set(options) - set(record.options))
    if unknown:
        allowed = ", ".join(record.options) or "none"
        raise CrowdtkError(f"model '{name}' has no option(s) {', '.join(unknown)}", f"its options: {allowed}")
    if backbone_weights is not None and not pretrained:
        raise CrowdtkError("pretrained=False contradicts backbone weights = FILE", "drop one of the two")
    counter: Counter = record.resolve()(pretrained=pretrained, backbone_weights=backbone_weights, **options)
    return counter
