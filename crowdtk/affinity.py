"""CAP's affinity maps of a trained checkpoint (the paper's Fig. 5): for chosen labeled positions of
one partly labeled image, Eq. 9's affinities to every unlabeled position, as ``h×w`` maps, of the
affinity form (and temperature) the checkpoint was trained with."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from crowdtk.cap import affinity_maps
from crowdtk.checkpoint import cap_settings, load_tensors, refuse_training_state
from crowdtk.errors import CrowdtkError
from crowdtk.formats import LabelsEntry
from crowdtk.predict import load_counter
from crowdtk.runtime import resolve_device
from crowdtk.train import prepare_sample
from crowdtk.train_config import TrainConfig


@dataclass
class ImageAffinities:
    positions: list[tuple[int, int]]  # the labeled cells (row, col) shown
    maps: np.ndarray  # (len(positions), h, w) float32
    mask: np.ndarray  # (h, w) bool: the labeled cells (they have no affinity)
    scale: float  # the checkpoint's, to place cells on the original image
    affinity: str = "paper"  # CAP's affinity form in the checkpoint (crowdtk.cap)
    temperature: float | None = None  # its temperature (None for paper)


def choose_positions(density: np.ndarray, mask: np.ndarray, count: int) -> list[tuple[int, int]]:
    """``count`` labeled cells (row, col) to show affinities for, deterministically.

    Alternately the densest and the emptiest labeled cell by predicted density (a crowd
    and a background position, like the paper's marked positions), each at least a
    sixth of the map's longer side from those already chosen (the distance is halved
    when no cell is left that far away). Cells near the map's border (within 1/16 of
    its size) are avoided when enough others are labeled, so the marks stay readable.
    """
    if count < 1:
        raise CrowdtkError(f"--positions must be at least 1, got {count}", "pass e.g. --positions 2")
    if int(mask.sum()) < count:
        raise CrowdtkError(
            f"the image has {int(mask.sum())} labeled positions, fewer than --positions {count}",
            "pass fewer --positions, or an image with larger labeled regions",
        )
    inner = np.zeros_like(mask, dtype=bool)
    mr, mc = max(1, mask.shape[0] // 16), max(1, mask.shape[1] // 16)  # a margin of 1/16 of the map, at least a cell
    inner[mr:-mr, mc:-mc] = mask[mr:-mr, mc:-mc]
    if int(inner.sum()) >= count:
        mask = inner
    cells = np.argwhere(mask)
    values = density[mask]
    by_density = [np.argsort(-values, kind="stable"), np.argsort(values, kind="stable")]
    chosen: list[int] = []
    spacing = max(mask.shape) / 6
    while len(chosen) < count:
        order = by_density[len(chosen) % 2]
        for i in order:
            if i in chosen:
                continue
            if all(np.hypot(*(cells[i] - cells[j])) >= spacing for j in chosen):
                chosen.append(int(i))
                break
        else:
            spacing /= 2
            if spacing < 0.5:
                spacing = 0.0
    return [(int(cells[i][0]), int(cells[i][1])) for i in chosen]


def image_affinities(
    checkpoint: str | os.PathLike[str], entry: LabelsEntry, positions: int, source: str
) -> ImageAffinities:
    """The affinity maps of ``positions`` labeled cells of ``entry`` (chosen by :func:`choose_positions` on the
    checkpoint's predicted density), from the counter's last feature map of the whole image.
    ``checkpoint`` must carry CAP (``train --cap``, before ``strip-cap``); ``source`` names the labels file."""
    header, tensors = load_tensors(checkpoint)
    refuse_training_state(header, checkpoint)
    if not header.get("cap") or not any(k.startswith("cap.") for k in tensors):
        raise CrowdtkError(
            f"{checkpoint}: has no CAP module (trained without --cap, or CAP removed by strip-cap)",
            "pass the checkpoint written by 'crowdtk train --cap', before 'crowdtk strip-cap'",
        )
    del tensors
    affinity, temperature = cap_settings(header, str(checkpoint))
    loaded = load_counter(checkpoint)

    sample = prepare_sample(entry, TrainConfig(model=loaded.header["model"]["name"], scale=loaded.scale))
    device = resolve_device("auto")
    counter = loaded.counter.to(device)
    with torch.inference_mode():
        feat = counter.forward_features(counter.to_input(sample.image[None], device))
        density = (counter.head(feat)[0, 0].float() / loaded.density_scale).cpu().numpy()
        feat = feat[0].float()
        mask = torch.from_numpy(sample.mask).to(device)
        if not bool(mask.any()) or bool(mask.all()):
            raise CrowdtkError(
                f"{source}: image '{entry.id}' has no labeled or no unlabeled positions at the model's stride",
                "pass --image with a partly labeled image whose regions are at least 8 px wide",
            )
        chosen = choose_positions(density, sample.mask, positions)
        maps = affinity_maps(feat, mask, chosen, affinity=affinity, temperature=temperature).float().cpu().numpy()

    return ImageAffinities(chosen, maps, sample.mask, loaded.scale, affinity, temperature)
