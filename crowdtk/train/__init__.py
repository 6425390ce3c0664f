"""`warmup` and `train`: fit a counter on labeled regions, optionally with CAP (paper 3.5).

The density loss (Eq. 2, ``loss``) is a squared error on labeled positions only: each labeled image
carries a mask at the output stride that is true on the cells lying wholly inside a
labeled region. Unlabeled positions get no target; with ``cap`` they learn through Crowd
Affinity Propagation, which mixes their features into the labeled positions' features.

The parts: ``samples`` (labeled images → targets and masks, crops, the validation split),
``loss`` (the losses ``train --loss`` chooses from), ``steps`` (an epoch's batches), ``cpu``
(CPU settings timed for the run), ``state`` (what a resumed run continues from) and ``loop``
(``train`` itself).

The names below are imported when first used: the command line reads ``crowdtk.train.loss``'s
registry without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "example_batch": "cpu",
    "speed_up_cpu_training": "cpu",
    "EpochReport": "loop",
    "TrainResult": "loop",
    "train": "loop",
    "validate": "loop",
    "Sample": "samples",
    "prepare_sample": "samples",
    "random_crop": "samples",
    "split_validation": "samples",
    "freeze_batchnorm": "steps",
    "density_loss": "loss",
    "LOSSES": "loss",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'crowdtk.train' has no attribute {name!r}")
    return getattr(importlib.import_module(f"crowdtk.train.{_HOMES[name]}"), name)
