"""Model-assisted pre-labels: a counter's predicted head points inside each region, for ``export --prelabel``.

A density map says how many heads a region holds (its sum), not where each one is. The points
come from a count-preserving peak extraction (:func:`peak_points`): the region's cells are
upsampled ``UPSAMPLE``× (bilinear, mass kept) and lightly smoothed, and as many points as the
region's rounded predicted count are taken one at a time at the highest remaining value, each
refined to the centroid of its 3×3 neighbourhood and then removed from the map by subtracting
one head's worth of density (a unit-mass Gaussian) around it. Subtracting, rather than keeping
the local maxima, lets a blob where the map has merged two heads give two points: on Part B's
MDC regions with the bench's warm-up counter, local maxima matched 15% of the heads within 8 px
and subtraction 27% (the grid and widths below were chosen there, on training images).

A point's ``score`` (0–1) is the share of one head's density that was found there (what the
subtraction removed): near 1 for a clear head, low for a point taken from a faint tail to make
up the count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from crowdtk.errors import CrowdtkError
from crowdtk.formats import Prelabels, RegionsEntry, Suggestions
from crowdtk.geometry import STRIDE
from crowdtk.predict_config import PredictConfig

if TYPE_CHECKING:  # importing predict at run time would load torch for every user of this module
    from crowdtk.predict import Predictor

UPSAMPLE = 4  # sub-cells per output cell and side: positions finer than the stride-8 grid
SMOOTH_CELLS = 0.5  # sigma (output cells) of the smoothing before the peaks are taken
HEAD_CELLS = 0.7  # sigma (output cells) of the one head's density that is subtracted at each peak


def _one_head_kernel() -> np.ndarray:
    """One head's density on the upsampled grid: a unit-mass Gaussian of ``HEAD_CELLS``, 3 sigma wide."""
    sigma = HEAD_CELLS * UPSAMPLE
    radius = int(np.ceil(3 * sigma))
    k = np.zeros((2 * radius + 1, 2 * radius + 1), dtype=np.float64)
    k[radius, radius] = 1.0
    k = ndimage.gaussian_filter(k, sigma, mode="constant")
    return k / k.sum()


_KERNEL = _one_head_kernel()
_RADIUS = _KERNEL.shape[0] // 2


def peak_points(density: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` head positions in a density map, as (N, 2) (row, col) in cell units (cell ``i`` spans [i, i + 1)),
    and scores.

    Fewer are returned only when the map runs out of density."""
    if density.size == 0 or count <= 0:
        return np.zeros((0, 2)), np.zeros(0)
    fine = ndimage.zoom(density.astype(np.float64), UPSAMPLE, order=1, grid_mode=True, mode="nearest")
    fine *= float(density.sum(dtype=np.float64)) / max(float(fine.sum()), 1e-12)  # keep the region's mass (its count)
    residual = np.clip(ndimage.gaussian_filter(fine, SMOOTH_CELLS * UPSAMPLE, mode="constant"), 0.0, None)
    height, width = residual.shape
    found, scores = [], []
    for _ in range(count):
        r, c = divmod(int(np.argmax(residual)), width)
        if residual[r, c] <= 0:
            break
        r0, r1, c0, c1 = max(0, r - 1), min(height, r + 2), max(0, c - 1), min(width, c + 2)
        window = residual[r0:r1, c0:c1]
        rows, cols = np.mgrid[r0:r1, c0:c1]
        found.append(((rows * window).sum() / window.sum(), (cols * window).sum() / window.sum()))
        # Remove one head: the kernel placed at (r, c), cut to the map; what it removed is the score.
        kr0, kr1 = max(0, r - _RADIUS), min(height, r + _RADIUS + 1)
        kc0, kc1 = max(0, c - _RADIUS), min(width, c + _RADIUS + 1)
        patch = _KERNEL[kr0 - r + _RADIUS : kr1 - r + _RADIUS, kc0 - c + _RADIUS : kc1 - c + _RADIUS]
        before = residual[kr0:kr1, kc0:kc1]
        after = np.clip(before - patch, 0.0, None)
        scores.append(min(1.0, float((before - after).sum())))
        residual[kr0:kr1, kc0:kc1] = after
    cells = (np.array(found, dtype=np.float64).reshape(-1, 2) + 0.5) / UPSAMPLE  # sub-cell centres in cell units
    return cells, np.array(scores, dtype=np.float64)


def region_suggestions(density: np.ndarray, sx: float, sy: float, entry: RegionsEntry) -> Suggestions:
    """The suggested heads of every region of ``entry`` from its image's density map (resize factors ``sx``, ``sy``).

    A region holds the cells whose centre lies in it; its number of points is its rounded predicted count."""
    col_centres = (np.arange(density.shape[1]) + 0.5) * STRIDE / sx
    row_centres = (np.arange(density.shape[0]) + 0.5) * STRIDE / sy
    points, scores = [], []
    for region in entry.regions:
        cols = np.flatnonzero((col_centres >= region.x0) & (col_centres < region.x1))
        rows = np.flatnonzero((row_centres >= region.y0) & (row_centres < region.y1))
        if cols.size == 0 or rows.size == 0:
            continue  # a region thinner than a cell at this scale: nothing to suggest
        part = density[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        cells, score = peak_points(part, int(round(float(part.sum(dtype=np.float64)))))
        # Cell units to full-image pixels, kept inside the region.
        x = np.clip((cells[:, 1] + cols[0]) * STRIDE / sx, region.x0, np.nextafter(region.x1, region.x0))
        y = np.clip((cells[:, 0] + rows[0]) * STRIDE / sy, region.y0, np.nextafter(region.y1, region.y0))
        points.append(np.stack([x, y], axis=1))
        scores.append(score)
    if not points:
        return Suggestions(np.zeros((0, 2)), np.zeros(0))
    return Suggestions(np.concatenate(points), np.concatenate(scores))


def image_heads(density: np.ndarray, sx: float, sy: float, width: int, height: int) -> Suggestions:
    """The heads of a whole ``width``×``height`` image from its density map (resize factors ``sx``, ``sy``): as
    many as its rounded predicted count (fewer only when the map runs out), in full-image pixels, inside the
    image (``count --points``, ``eval --localization``); none for a map that is not finite."""
    total = float(density.sum(dtype=np.float64))
    if not np.isfinite(total):
        return Suggestions(np.zeros((0, 2)), np.zeros(0))
    cells, scores = peak_points(density, int(round(total)))
    x = np.clip(cells[:, 1] * STRIDE / sx, 0.0, np.nextafter(float(width), 0.0))
    y = np.clip(cells[:, 0] * STRIDE / sy, 0.0, np.nextafter(float(height), 0.0))
    return Suggestions(np.stack([x, y], axis=1), scores)


def suggest_heads(
    predictor: Predictor,
    entries: Sequence[RegionsEntry],
    images: Iterable[tuple[str, np.ndarray]],
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, Suggestions]:
    """Per image id, the suggested heads in its regions; ``images`` yields (path, RGB image) in the entries' order."""
    from crowdtk.predict import require_finite

    out = {}
    for entry, (_, image) in zip(entries, images):
        if image.shape[:2] != (entry.height, entry.width):
            raise CrowdtkError(
                f"{entry.image}: image is {image.shape[1]}x{image.shape[0]}, the regions file says "
                f"{entry.width}x{entry.height}",
                "re-run index and select",
            )
        density, sx, sy = predictor.density(image, entry.sha256)
        out[entry.id] = region_suggestions(require_finite(density, entry.image), sx, sy, entry)
        if on_progress:
            on_progress(1)
    return out


def model_version(checkpoint: str | Path, header: dict) -> str:
    """The name a tool shows for the suggestions: the counter's architecture and the checkpoint's file name."""
    name = (header.get("model") or {}).get("name", "counter")
    return f"crowdtk prelabel {name} {Path(checkpoint).name}"


def prelabel(
    checkpoint: str | Path,
    entries: Sequence[RegionsEntry],
    *,
    device: str = "auto",
    max_side: int = PredictConfig.max_side,
    feature_cache: str | Path | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[Prelabels, str | None]:
    """The suggestions of the counter of ``checkpoint`` for every image of ``entries``, and why the
    checkpoint should not be trusted (an unfinished training run; else None)."""
    from crowdtk.data import read_image
    from crowdtk.predict import Predictor, load_counter, prefetched

    loaded = load_counter(checkpoint)
    predictor = Predictor(loaded, device=device, max_side=max_side, feature_cache=feature_cache)
    images = prefetched(entries, lambda e: read_image(e.image, e.sha256))
    return Prelabels(
        model_version(checkpoint, loaded.header), suggest_heads(predictor, entries, images, on_progress)
    ), loaded.unfinished
