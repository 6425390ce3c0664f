"""What training learns from: each labeled image at the working resolution with its density
target and the mask of the cells it supervises (Eq. 2 is taken on those cells only), the
random crops of the fine-tuning tier, and the validation split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crowdtk.data import read_recorded_image
from crowdtk.density import DensityConfig, density_map
from crowdtk.features import FeatureMap
from crowdtk.formats import LabelsEntry
from crowdtk.geometry import STRIDE, cells_inside, pad_image, resize_for_model
from crowdtk.train_config import TrainConfig


@dataclass
class Sample:
    """One labeled image at the working resolution, padded to a multiple of the stride."""

    id: str
    image: np.ndarray | None  # (H, W, 3) uint8, H and W multiples of 8; None once its features are cached
    target: np.ndarray  # (H/8, W/8) float32, heads per cell, labeled points only
    mask: np.ndarray  # (H/8, W/8) bool, cells lying wholly inside a labeled region
    heads_labeled: int = 0  # points inside the labeled regions
    heads_supervised: int = 0  # of those, the points inside supervised cells (they reach the target)
    features: tuple[FeatureMap, FeatureMap] | None = None  # frozen part's maps of the image and its mirror


def working_image(entry: LabelsEntry, config: TrainConfig) -> tuple[np.ndarray, float, float]:
    """The entry's image at the working resolution, padded to the stride, and the x/y resize factors."""
    image = read_recorded_image(entry)
    image, sx, sy = resize_for_model(image, config.scale)
    return pad_image(image), sx, sy


def prepare_sample(entry: LabelsEntry, config: TrainConfig) -> Sample:
    image, sx, sy = working_image(entry, config)
    rows, cols = image.shape[0] // STRIDE, image.shape[1] // STRIDE
    target = np.zeros((rows, cols), dtype=np.float32)
    mask = np.zeros((rows, cols), dtype=bool)
    # sigma is in full-resolution pixels: the kernel is drawn on the resized image, where it is
    # sigma times the scale (drawing sigma = 4 after a 0.5 resize meant sigma = 8 at full size).
    density = DensityConfig(sigma=config.sigma * (sx + sy) / 2, stride=STRIDE)
    labeled = supervised = 0
    for region in entry.regions:
        # Supervise only the output cells lying wholly inside the region, and render the
        # region's heads with kernels cut at those cells' edges and renormalised, so the
        # target's sum over the masked cells is exactly the number of heads there. With
        # cells straddling the strip's edge, or kernels of heads outside the strip leaking in
        # unseen, a 10% strip's target came out 7% below the true density (measured on Part B
        # at --scale 0.5), and region-labeled training learned to undercount.
        inside = entry.points[region.contains(entry.points)]
        labeled += len(inside)
        r0, r1 = cells_inside(region.y0, region.y1, entry.height, sy, rows)
        c0, c1 = cells_inside(region.x0, region.x1, entry.width, sx, cols)
        if r1 <= r0 or c1 <= c0:
            continue
        points = inside * [sx, sy] - [c0 * STRIDE, r0 * STRIDE]
        box = (
            (points[:, 0] >= 0)
            & (points[:, 0] < (c1 - c0) * STRIDE)
            & (points[:, 1] >= 0)
            & (points[:, 1] < (r1 - r0) * STRIDE)
        )
        supervised += int(box.sum())
        target[r0:r1, c0:c1] = density_map(points[box], (r1 - r0) * STRIDE, (c1 - c0) * STRIDE, density)
        mask[r0:r1, c0:c1] = True
    return Sample(entry.id, image, target, mask, labeled, supervised)


def random_crop(
    sample: Sample, crop: int, flip: bool, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A crop of ``crop`` px (whole image when 0) that contains a random labeled cell.

    Crops start on the stride grid so the stride-8 target is sliced exactly; a crop larger
    than the image is zero-padded with the mask false there.
    """
    assert sample.image is not None  # crops are cut from images, never from cached features
    rows, cols = sample.mask.shape
    if crop == 0:
        image, target, mask = sample.image, sample.target, sample.mask
    else:
        cells = crop // STRIDE
        ch, cw = min(cells, rows), min(cells, cols)
        labeled = np.flatnonzero(sample.mask)
        anchor = labeled[rng.integers(len(labeled))] if labeled.size else rng.integers(rows * cols)
        ar, ac = divmod(int(anchor), cols)
        top = int(rng.integers(max(0, ar - ch + 1), min(ar, rows - ch) + 1))
        left = int(rng.integers(max(0, ac - cw + 1), min(ac, cols - cw) + 1))
        image = sample.image[top * STRIDE : (top + ch) * STRIDE, left * STRIDE : (left + cw) * STRIDE]
        target = sample.target[top : top + ch, left : left + cw]
        mask = sample.mask[top : top + ch, left : left + cw]
        if (ch, cw) != (cells, cells):
            image = np.pad(image, ((0, (cells - ch) * STRIDE), (0, (cells - cw) * STRIDE), (0, 0)))
            target = np.pad(target, ((0, cells - ch), (0, cells - cw)))
            mask = np.pad(mask, ((0, cells - ch), (0, cells - cw)))
    if flip and rng.random() < 0.5:
        image, target, mask = image[:, ::-1], target[:, ::-1], mask[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(target), np.ascontiguousarray(mask)


def split_validation(
    entries: list[LabelsEntry], config: TrainConfig
) -> tuple[list[LabelsEntry], list[LabelsEntry], str]:
    """Hold out ``val_frac`` of the labeled images (by seed);
    with fewer than 5 images validate on the training images."""
    n_val = int(round(len(entries) * config.val_frac))
    if len(entries) < 5 or n_val == 0:
        return entries, entries, "train"
    order = np.random.default_rng([config.seed, 7919]).permutation(len(entries))
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return [entries[i] for i in train], [entries[i] for i in val], "held-out"
