"""One optimizer step's inputs: the order of an epoch's batches, and a batch of random crops
(fine-tuning) or of cached front-end maps (frozen tier). The loss is ``crowdtk.train.loss``'s."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from crowdtk.errors import CrowdtkError
from crowdtk.features import FeatureMap
from crowdtk.models import Counter
from crowdtk.train.samples import Sample, random_crop
from crowdtk.train_config import TrainConfig


def crop_batches(samples: list[Sample], global_batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    """An epoch of random crops: the images in a random order, wrapped around so that every batch is full."""
    steps = math.ceil(len(samples) / global_batch)
    order = np.resize(rng.permutation(len(samples)), steps * global_batch)
    return [order[i * global_batch : (i + 1) * global_batch] for i in range(steps)]


def whole_image_batches(samples: list[Sample], global_batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    """An epoch of whole images: a batch holds images of one size (cached maps are not cropped),
    in a random order; the number of batches depends only on the sizes, not on the seed."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for i in rng.permutation(len(samples)).tolist():
        by_size.setdefault(samples[i].mask.shape, []).append(i)
    batches = [
        np.array(group[j : j + global_batch]) for group in by_size.values() for j in range(0, len(group), global_batch)
    ]
    return [batches[k] for k in rng.permutation(len(batches))]


def crop_batch(
    batch: list[Sample], config: TrainConfig, rngs: list[np.random.Generator], counter: Counter, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    crops = [random_crop(sample, config.crop, config.flip, rng) for sample, rng in zip(batch, rngs)]
    if config.crop == 0 and len({c[0].shape for c in crops}) > 1:
        raise CrowdtkError(
            "images of different sizes cannot share a batch without cropping", "pass --crop, or --batch-size 1"
        )
    x = counter.to_input(np.stack([c[0] for c in crops]), device)
    target = torch.from_numpy(np.stack([c[1] for c in crops])).to(device)
    mask = torch.from_numpy(np.stack([c[2] for c in crops])).to(device)
    return x, target, mask


def _cached_maps(sample: Sample) -> tuple[FeatureMap, FeatureMap]:
    assert sample.features is not None  # feature batches are made only of samples with cached features
    return sample.features


def feature_batch(
    batch: list[Sample], flip: bool, rngs: list[np.random.Generator], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Whole cached maps; a flipped image takes its mirror's map and mirrored targets."""
    flips = [flip and rng.random() < 0.5 for rng in rngs]
    x = torch.stack([_cached_maps(s)[int(f)].load() for s, f in zip(batch, flips)]).to(device).float()
    target = np.stack([s.target[:, ::-1] if f else s.target for s, f in zip(batch, flips)])
    mask = np.stack([s.mask[:, ::-1] if f else s.mask for s, f in zip(batch, flips)])
    return (
        x.contiguous(memory_format=torch.channels_last),
        torch.from_numpy(np.ascontiguousarray(target)).to(device),
        torch.from_numpy(np.ascontiguousarray(mask)).to(device),
    )


def freeze_batchnorm(module: nn.Module) -> None:
    """Batch norm stays in eval mode: batches of 1–4 crops give useless statistics, and frozen
    statistics make a multi-process run compute what a one-process run computes."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
