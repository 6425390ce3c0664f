"""Pixel and cell geometry, torch-free: the output stride, image sizes after resizing and padding,
the output cells a region covers, and the strips (paper 3.4).

Strip geometry: an image is cut into vertical strips of ~``strip_frac`` of its width.

There are ``round(1 / strip_frac)`` strips. Their edges lie on the output-cell grid *of the
resolution the counter is trained at*: an image trained at ``--scale s`` is resized to
``model_size(width, s)`` pixels and cut into cells of ``STRIDE`` pixels there, so a strip
edge sits at a whole number of those cells, written back in full-resolution pixels
(rounded to the nearest pixel). Every labeled pixel then lies in a supervised cell: with
edges on the full-resolution 8-px grid, training at scale 0.5 (16-px cells) dropped the
cells a strip edge cut, and about 8% of a 10% strip's heads never reached a target.
The strips tile the image exactly, so a budget of M% of the area is M / strip_frac strips
per image.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from crowdtk.errors import CrowdtkError

STRIDE = 8  # output stride of every counter


def strip_count(strip_frac: float) -> int:
    if not 0 < strip_frac <= 1:
        raise CrowdtkError(f"--strip-frac must be in (0, 1], got {strip_frac}", "use e.g. 0.1 (the paper's 10%)")
    return max(1, round(1 / strip_frac))


def model_size(size: int, scale: float) -> int:
    """An image side of ``size`` px after resizing by ``scale``, as training and inference resize it."""
    return size if scale == 1.0 else max(STRIDE, round(size * scale))


def model_cells(size: int, scale: float) -> int:
    """Output cells along a side of ``size`` px at ``scale`` (the last one may be partly padding)."""
    return -(-model_size(size, scale) // STRIDE)


def span_edges(size: int, n: int, scale: float = 1.0) -> np.ndarray:
    """Edges ``e`` (length n+1, full-resolution px) of ``n`` spans tiling ``[0, size)``: inner
    edges lie on whole output cells of the image resized by ``scale``."""
    resized = model_size(size, scale)
    cells = -(-resized // STRIDE)
    if cells < n:
        raise CrowdtkError(
            f"an image side of {size} px has only {cells} output cells at scale {scale:g}, fewer than {n} strips",
            "use a larger --strip-frac for such small images",
        )
    inner_cells = np.round(np.arange(1, n) * cells / n)
    inner = np.round(inner_cells * STRIDE * size / resized).astype(np.int64)
    return np.concatenate([[0], inner, [size]]).astype(np.int64)


def strip_edges(width: int, strip_frac: float = 0.1, scale: float = 1.0) -> np.ndarray:
    """Column edges ``e`` (length n+1): strip i is ``[e[i], e[i+1])``; inner edges on the cell grid at ``scale``."""
    return span_edges(width, strip_count(strip_frac), scale)


def check_scale(scale: float) -> None:
    """The one check of a working scale, wherever it is given (train, select, vectors, eval, ...)."""
    if not 0 < scale <= 4:
        raise CrowdtkError(
            f"--scale must be in (0, 4], got {scale}", "pass e.g. --scale 0.5 (the scale the counter is trained at)"
        )


def resize_for_model(image: np.ndarray, scale: float) -> tuple[np.ndarray, float, float]:
    """Resize by ``scale`` (area interpolation when shrinking); return the image and x/y factors."""
    if scale == 1.0:
        return image, 1.0, 1.0
    height, width = image.shape[:2]
    new_w, new_h = model_size(width, scale), model_size(height, scale)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, (new_w, new_h), interpolation=interpolation), new_w / width, new_h / height


def pad_image(image: np.ndarray, stride: int = STRIDE) -> np.ndarray:
    height, width = image.shape[:2]
    ph, pw = -height % stride, -width % stride
    if ph or pw:
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
    return image


def cells_inside(start: int, stop: int, size: int, scale: float, cells: int) -> tuple[int, int]:
    """The output cells [first, last) that lie inside the pixel span [start, stop) of an image
    ``size`` px long, resized by ``scale`` (this axis's own: resize_for_model rounds each side, so it is the
    resized side over ``size``, within a pixel of the nominal --scale); a span reaching the image's end keeps the
    padding cell there. Region edges on the cell grid of this scale (span_edges) are rounded to
    whole full-resolution pixels, so an edge within half a pixel of a cell edge counts as on it."""
    slack = 0.5 * scale / STRIDE + 1e-9
    first = math.ceil(start * scale / STRIDE - slack)
    last = cells if stop >= size else math.floor(stop * scale / STRIDE + slack)
    return first, min(last, cells)


# The working resolution a data set gets from `--scale auto`: about this many pixels per image.
# 512×384 is Part B at half size, where the frozen tier was measured (a 1024×768 image's heads
# stay about 6–20 px wide); smaller images are not enlarged, larger ones shrink to it.
PIXEL_BUDGET = 512 * 384


def scale_for_pixels(sizes: list[tuple[int, int]], pixel_budget: int = PIXEL_BUDGET) -> float:
    """One working scale for a data set of image ``sizes`` (width, height): the factor that brings
    the median image to about ``pixel_budget`` pixels, never above 1, floored to a multiple of
    1/16 so that close pools get the same scale (and the printed commands a short number).

    One factor for every data set (0.5) shrank 400-px images to 200 px and their heads to a few
    pixels; one factor per image would give every image its own cell grid, which the strips,
    the budget's accounting and the feature cache all assume is one scale per run."""
    if not sizes:
        raise CrowdtkError("no images to choose a scale for", "pass a manifest with images")
    if pixel_budget < STRIDE * STRIDE:
        raise CrowdtkError(f"pixel budget {pixel_budget} is below one output cell", "pass e.g. 196608 (512×384)")
    median_area = float(np.median([w * h for w, h in sizes]))
    factor = min(1.0, math.sqrt(pixel_budget / median_area))
    return max(1 / 16, math.floor(factor * 16 + 1e-9) / 16)
