"""`gen-density`: ground-truth density maps (Eq. 1 of the paper).

Each head is a 2-D Gaussian sampled exactly as ``scipy.ndimage.gaussian_filter`` samples
it (radius ``int(truncate·σ + 0.5)``, weights ``exp(-d²/2σ²)``), centred on the pixel
``(floor(x), floor(y))`` as in the original CSRNet preprocessing. Where the kernel runs
off the image it is cut and renormalised, so every head contributes mass 1 and a map sums
to its head count.

Written by hand rather than calling ``gaussian_filter`` once per head (the textbook way)
because that filters the whole image per head: the kernel is separable, so the whole map is
one matrix product ``D = Yᵀ X`` where row k of ``Y`` (N×H) and ``X`` (N×W) hold head k's
1-D kernels. Sum-pooling to the output stride is linear and separable too, so it is applied
to ``Y`` and ``X`` before the product and the stride-8 map costs 64× less than the full one.
``benchmarks/gen_density.py`` measures the gain against the textbook method.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from crowdtk.data import check_image_size, check_unchanged, read_points_on_image
from crowdtk.errors import CrowdtkError
from crowdtk.formats import DensityEntry, ManifestEntry, Provenance, density_map_header, save_npz
from crowdtk.geometry import STRIDE
from crowdtk.workers import process_pool

HEADS_PER_BLOCK = 2048  # bounds the N×H and N×W kernel matrices to ~16 MB each


@dataclass(frozen=True)
class DensityConfig:
    """Defaults of `gen-density`."""

    sigma: float = 4.0  # fixed Gaussian bandwidth, pixels
    adaptive: bool = False  # geometry-adaptive σ_k = β · mean distance to the k nearest heads
    beta: float = 0.3
    k_nearest: int = 3
    truncate: float = 4.0  # kernel radius in σ, as scipy.ndimage.gaussian_filter
    stride: int = STRIDE  # sum-pool to the model's output stride; 1 keeps full resolution
    min_sigma: float = 0.1  # floor for adaptive σ (two heads on one spot give distance 0)

    def validate(self) -> None:
        if not self.sigma > 0:
            raise CrowdtkError(f"--sigma must be positive, got {self.sigma}", "pass e.g. --sigma 4")
        if self.stride < 1:
            raise CrowdtkError(f"--stride must be at least 1, got {self.stride}", "pass 1 (full resolution) or 8")
        if not self.beta > 0 or self.k_nearest < 1:
            raise CrowdtkError("--beta must be positive and --k-nearest at least 1", "use the defaults 0.3 and 3")


def head_sigmas(points: np.ndarray, config: DensityConfig) -> np.ndarray:
    """σ for each head: fixed, or β times the mean distance to the k nearest other heads."""
    n = len(points)
    if not config.adaptive or n < 2:
        return np.full(n, config.sigma, dtype=np.float64)
    k = min(config.k_nearest, n - 1)
    distances, _ = cKDTree(points).query(points, k=k + 1)  # column 0 is the head itself
    sigmas = config.beta * distances[:, 1:].mean(axis=1)
    return np.maximum(sigmas, config.min_sigma)


def axis_kernels(centers: np.ndarray, sigmas: np.ndarray, length: int, truncate: float) -> np.ndarray:
    """(N, length) matrix: head k's 1-D Gaussian along one axis, cut at the border, summing to 1."""
    radius = (truncate * sigmas + 0.5).astype(np.int64)
    offsets = np.arange(length, dtype=np.float64)[None, :] - centers[:, None]
    weights = np.exp(-0.5 * (offsets / sigmas[:, None]) ** 2)
    weights[np.abs(offsets) > radius[:, None]] = 0.0
    return weights / weights.sum(axis=1, keepdims=True)


def sum_pool_axis(matrix: np.ndarray, stride: int) -> np.ndarray:
    """Sum each run of ``stride`` columns (zero-padding the last run): mass is preserved."""
    if stride == 1:
        return matrix
    n, length = matrix.shape
    cells = math.ceil(length / stride)
    padded = np.zeros((n, cells * stride), dtype=matrix.dtype)
    padded[:, :length] = matrix
    return padded.reshape(n, cells, stride).sum(axis=2)


def density_map(points: np.ndarray, height: int, width: int, config: DensityConfig = DensityConfig()) -> np.ndarray:
    """The density map of ``points`` (N×2, x then y, on the image) at ``config.stride``.

    Shape ``(ceil(height/stride), ceil(width/stride))``, float32, sum = N (to float32 rounding).
    """
    out_h, out_w = math.ceil(height / config.stride), math.ceil(width / config.stride)
    total = np.zeros((out_h, out_w), dtype=np.float64)
    if len(points) == 0:
        return total.astype(np.float32)
    sigmas = head_sigmas(points, config)
    cols = np.floor(points[:, 0]).astype(np.float64)
    rows = np.floor(points[:, 1]).astype(np.float64)
    for start in range(0, len(points), HEADS_PER_BLOCK):
        block = slice(start, start + HEADS_PER_BLOCK)
        ky = sum_pool_axis(axis_kernels(rows[block], sigmas[block], height, config.truncate), config.stride)
        kx = sum_pool_axis(axis_kernels(cols[block], sigmas[block], width, config.truncate), config.stride)
        total += ky.T @ kx
    return total.astype(np.float32)


def _one(entry: ManifestEntry, out_dir: str, config: DensityConfig, provenance: Provenance) -> DensityEntry:
    check_image_size(entry.width, entry.height, entry.image)
    # A map is drawn for the image indexed: one replaced since is refused, though only its size is used here.
    check_unchanged(entry.image, entry.sha256, entry.size_bytes, entry.mtime_ns)
    points, _ = read_points_on_image(entry.points, entry.width, entry.height, entry.points_sha256)
    if len(points) != entry.count:  # manifests before points_sha256: an edit that changes the count
        raise CrowdtkError(
            f"{entry.points}: holds {len(points)} heads on the image but the manifest says {entry.count}",
            "the annotations changed since indexing; re-run crowdtk index",
        )
    density = density_map(points, entry.height, entry.width, config)
    rel = f"maps/{entry.id}.npz"
    header = density_map_header(
        provenance, entry.id, entry.image, entry.count, config.stride, [entry.height, entry.width]
    )
    save_npz(Path(out_dir) / rel, header, {"density": density})
    record = DensityEntry(
        id=entry.id,
        image=entry.image,
        density=rel,
        count=entry.count,
        sum=float(density.sum(dtype=np.float64)),
        stride=config.stride,
        height=entry.height,
        width=entry.width,
    )
    return record


def _one_or_error(
    entry: ManifestEntry, out_dir: str, config: DensityConfig, provenance: Provenance
) -> DensityEntry | tuple[str, str]:
    """``_one``, with a CrowdtkError returned as (what, fix): it crosses a process boundary intact."""
    try:
        return _one(entry, out_dir, config, provenance)
    except CrowdtkError as exc:
        return exc.what, exc.fix


def generate_densities(
    entries: list[ManifestEntry],
    out_dir: str | os.PathLike[str],
    config: DensityConfig,
    provenance: Provenance,
    workers: int = 1,
    on_progress: Callable[[int], None] | None = None,
    skip_bad: bool = False,
    skipped: list[str] | None = None,
) -> list[DensityEntry]:
    """Write ``out_dir/maps/<id>.npz`` for every entry; return the index records in input order.

    A bad entry (points file missing, unreadable, NaN, or changed since indexing) stops the run
    with its error, unless ``skip_bad``: then it is left out and its error appended to ``skipped``.
    """
    config.validate()
    (Path(out_dir) / "maps").mkdir(parents=True, exist_ok=True)
    results: list[DensityEntry] = []

    def take(outcome: DensityEntry | tuple[str, str]) -> None:
        if isinstance(outcome, tuple):
            if not skip_bad:
                raise CrowdtkError(*outcome)
            if skipped is not None:
                skipped.append(CrowdtkError(*outcome).as_skipped())
        else:
            results.append(outcome)
        if on_progress:
            on_progress(1)

    if workers <= 1:
        for entry in entries:
            take(_one_or_error(entry, str(out_dir), config, provenance))
        return results
    with process_pool(workers) as pool:  # workers that die with this process
        futures = [pool.submit(_one_or_error, entry, str(out_dir), config, provenance) for entry in entries]
        try:
            for future in futures:
                take(future.result())
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return results
