"""The counter models by name: one record each, readable without torch.

A model's record is its name (``--model``, and the name its checkpoints carry), a one-line help for
``--help``, the options its constructor takes (recorded in ``model.config``; ``build_model`` refuses
others), whether ``--freeze`` can keep a front end of it frozen, and its builder: the :class:`Counter`
subclass that implements it.

**Why the builder is named by a "module:attr" string.** The command line offers the model names and
their help without importing torch (``crowdtk --help`` and option parsing stay fast), but every model
module defines an ``nn.Module`` and imports torch at its top. A record inside that module could not be
read without torch, and a torch-free companion module per model would split one model over two files.
So the built-in records are kept here, each naming its class as ``"crowdtk.models.csrnet:CSRNet"``,
and :mod:`crowdtk.models.registry` resolves every record when ``crowdtk.models`` is imported (the
module exists, the attribute is a Counter of the record's name taking the record's options), and
every record registered after that when it is registered. A misspelt builder therefore fails at the
first import of the models package, which the test suite does, not at the first training run. A
model registered from the user's own code may give the class itself as its builder.

**Adding a model** is a module with its Counter subclass and one :func:`register_model` call: here for
a built-in one, in the user's code for their own; ``train``, ``warmup``, ``bench`` and ``demo`` then
offer it, and checkpoints of it load everywhere a checkpoint is read.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Any

from crowdtk.errors import CrowdtkError
from crowdtk.registry import RegistrationError, Registry

_BUILDER = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


@dataclass(frozen=True)
class ModelRecord:
    """A counter model (:func:`register_model` registers one)."""

    name: str
    help: str  # one line, for --model's help
    builder: Any  # the Counter subclass, or "module:attr" naming it (imported when a model is built)
    options: tuple[str, ...] = ()  # the constructor's keyword options besides pretrained and backbone_weights
    frozen_encoder: bool = True  # --freeze early/encoder: encode() runs a frozen front end whose features are cached

    def check(self) -> None:
        if isinstance(self.builder, str):
            if not _BUILDER.fullmatch(self.builder):
                raise RegistrationError(f"the model {self.name!r}: builder {self.builder!r} is not 'module:attr'")
        elif not callable(self.builder):
            raise RegistrationError(
                f"the model {self.name!r} has no builder: give its Counter subclass, or 'module:attr' naming it"
            )
        if not all(isinstance(o, str) and o.isidentifier() for o in self.options):
            raise RegistrationError(f"the model {self.name!r}: options {self.options!r} are not keyword names")

    def resolve(self) -> Any:
        """The builder itself (a string is imported here)."""
        if not isinstance(self.builder, str):
            return self.builder
        module, _, attr = self.builder.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise RegistrationError(
                f"the model {self.name!r}: its builder {self.builder!r} does not resolve ({exc})"
            ) from None


# Every model by name, in the order --model lists them.
MODELS: Registry[ModelRecord] = Registry("model")


def register_model(record: ModelRecord) -> ModelRecord:
    """Register a counter model; a name registered twice, or a record without a builder, fails here."""
    return MODELS.register(record)


def model_record(name: str) -> ModelRecord:
    """The registered model ``name``; an unknown one is refused with the choices."""
    if name not in MODELS:
        raise CrowdtkError(f"unknown model '{name}'", f"choose one of {', '.join(MODELS)}")
    return MODELS[name]


_LITE_OPTIONS = ("dilated", "backend_channels")
register_model(ModelRecord("csrnet", "the paper's: a VGG16 front end", "crowdtk.models.csrnet:CSRNet"))
register_model(
    ModelRecord(
        "lite", "an EfficientNet-Lite0 front end, fast on CPU", "crowdtk.models.lite:LiteCounter", _LITE_OPTIONS
    )
)
register_model(ModelRecord("lite1", "EfficientNet-Lite1: deeper", "crowdtk.models.lite:Lite1Counter", _LITE_OPTIONS))
register_model(
    ModelRecord("lite2", "EfficientNet-Lite2: deeper and wider", "crowdtk.models.lite:Lite2Counter", _LITE_OPTIONS)
)
