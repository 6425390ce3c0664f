"""`warmup` and `train`: fit a counter on labeled regions, optionally with CAP (paper 3.5).

The density loss (Eq. 2) is a squared error on labeled positions only: each labeled image
carries a mask at the output stride that is true on the cells lying wholly inside a
labeled region. Unlabeled positions get no target; with ``cap`` they learn through Crowd
Affinity Propagation, which mixes their features into the labeled positions' features.

The parts: ``samples`` (labeled images → targets and masks, crops, the validation split),
``steps`` (an epoch's batches and the loss), ``cpu`` (CPU settings timed for the run),
``state`` (what a resumed run continues from) and ``loop`` (``train`` itself).
"""

from crowdtk.train.cpu import example_batch, speed_up_cpu_training
from crowdtk.train.loop import EpochReport, TrainResult, train, validate
from crowdtk.train.samples import Sample, prepare_sample, random_crop, split_validation
from crowdtk.train.steps import freeze_batchnorm, masked_loss

__all__ = ["EpochReport", "Sample", "TrainResult", "example_batch", "freeze_batchnorm", "masked_loss", "prepare_sample",
           "random_crop", "speed_up_cpu_training", "split_validation", "train", "validate"]
