"""MDC (paper 3.4, Algorithm 1 line 5): per image, cluster the strip vectors
and take the strip nearest each cluster's mean.

Per image, a Gaussian mixture with n_l components (diagonal covariance, ``reg_covar``) is
fitted by EM (:mod:`crowdtk.selection.gmm`) to the image's strip vectors; each strip goes to
its most probable component and each component contributes the strip nearest (Euclidean) to
its mean. A component that received no strip takes the unselected strip nearest its mean
(components in order). n_l == 1 takes the strip nearest the mean of all strips (no EM);
n_l >= n_strips takes all.

*Scale.* Vectors are predicted head counts, whose scale varies by orders of magnitude
between images, while ``reg_covar`` and EM's tolerance are absolute. Each image's vectors
are therefore centred and divided by one scalar (their root-mean-square deviation), which
makes ``reg_covar`` a relative regulariser (1e-4 of the image's spread) and keeps the
vectors' geometry: distances and "nearest to the mean" are unchanged by a shift and one
scale, unlike per-dimension standardisation, which would blow up dimensions (empty
bands) that hardly vary. Images whose strips all predict the same vector (spread below
1e-6 heads, e.g. empty scenes) get evenly spaced strips.

*Engines and streams.* ``numpy`` (the default) fits batches of images at once, ``sklearn``
one image at a time; tests check that both select the same strips. Both start from the
same k-means++ initialisation, drawn from a per-image random stream keyed by (seed, image
id) (:mod:`crowdtk.selection.streams`): results depend neither on the order of the images
nor on ``workers``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from crowdtk.formats import ManifestEntry, StripVectors
from crowdtk.selection.config import CHUNK, Picks, SelectConfig
from crowdtk.selection.gmm import gmm_numpy, gmm_sklearn, kmeans_plusplus
from crowdtk.selection.streams import image_keys, keyed_uniforms
from crowdtk.workers import process_pool

_DEGENERATE = 1e-6  # heads: strips whose vectors spread less than this are all alike


@dataclass
class MdcPick:
    """MDC's choice for a batch of images: per image and selected strip, its index, component, distance."""

    strips: np.ndarray  # (B, k) int64, ascending
    component: np.ndarray  # (B, k) int64
    distance: np.ndarray  # (B, k) float64, Euclidean distance to the component mean, vector units


def _standardise(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre each image's vectors and divide by one scalar, their RMS deviation (see *Scale* above).

    Returns (standardised vectors, the scalar per image, whether the image is degenerate)."""
    x = vectors.astype(np.float64)
    centred = x - x.mean(axis=1, keepdims=True)
    scale = np.sqrt((centred**2).mean(axis=(1, 2)))
    degenerate = ~(scale >= _DEGENERATE)
    scale = np.where(degenerate, 1.0, scale)
    return centred / scale[:, None, None], scale, degenerate


def _argmin_ties(values: np.ndarray, priority: np.ndarray) -> np.ndarray:
    """Row-wise argmin over the last axis; values within rounding of the minimum tie, and a tie goes to the
    lowest ``priority`` (a per-image random order), so that float noise never decides and no side is favoured."""
    low = values.min(axis=-1, keepdims=True)
    tied = values <= low + 1e-9 * np.abs(low) + 1e-12
    return np.where(tied, priority, np.inf).argmin(axis=-1)


def _pick(
    z: np.ndarray, labels: np.ndarray, means: np.ndarray, priority: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per component, its member nearest its mean; empty components take the nearest unselected strip."""
    b, n, _ = z.shape
    k = means.shape[1]
    rows = np.arange(b)
    dist = ((z[:, :, None, :] - means[:, None, :, :]) ** 2).sum(-1)  # (B, n, k)
    member = labels[:, :, None] == np.arange(k)[None, None, :]
    chosen = np.full((b, k), -1, dtype=np.int64)
    has = member.any(axis=1)
    nearest_member = _argmin_ties(np.where(member, dist, np.inf).transpose(0, 2, 1), priority[:, None, :])  # (B, k)
    chosen[has] = nearest_member[has]
    taken = np.zeros((b, n), dtype=bool)
    hb, hc = np.nonzero(has)
    taken[hb, chosen[hb, hc]] = True
    for c in range(k):
        empty = np.flatnonzero(~has[:, c])
        if empty.size:
            pick = _argmin_ties(np.where(taken[empty], np.inf, dist[empty, :, c]), priority[empty])
            chosen[empty, c] = pick
            taken[empty, pick] = True
    d = np.sqrt(dist[rows[:, None], chosen, np.arange(k)[None, :]])
    return chosen, np.broadcast_to(np.arange(k), (b, k)).copy(), d


def mdc_batch(
    vectors: np.ndarray,
    k: int,
    keys: np.ndarray,
    engine: str = "numpy",
    reg_covar: float = 1e-4,
    max_iter: int = 100,
    tol: float = 1e-3,
    n_init: int = 3,
) -> MdcPick:
    """MDC on B images with the same number of strips n and the same n_l = k (1 <= k < n).

    EM runs from ``n_init`` k-means++ starts per image and keeps the fit of the highest
    likelihood (scikit-learn's ``n_init``): from one start, a seed change flipped about a third
    of the picks, because EM on ~10 ten-dimensional vectors has many local optima."""
    b, n, _ = vectors.shape
    z, scale, degenerate = _standardise(vectors)
    trials = 2 + int(np.log(k))
    span = 1 + (k - 1) * trials  # uniforms one k-means++ start draws
    draws = keyed_uniforms(keys, n_init * span + n)
    priority = draws[:, -n:]  # breaks exact ties between strips
    if k == 1:
        dist = np.sqrt((z**2).sum(-1))  # to the mean of all strips (the origin after centring)
        chosen = _argmin_ties(dist, priority)[:, None]
        component = np.zeros((b, 1), dtype=np.int64)
        distance = dist[np.arange(b), chosen[:, 0]][:, None]
    else:
        fit = gmm_numpy if engine == "numpy" else gmm_sklearn
        labels, means, best = fit(z, kmeans_plusplus(z, k, draws[:, :span]), reg_covar, max_iter, tol)
        for start in range(1, n_init):
            seeds = kmeans_plusplus(z, k, draws[:, start * span : (start + 1) * span])
            l2, m2, score = fit(z, seeds, reg_covar, max_iter, tol)
            better = score > best + 1e-12 * np.abs(best)  # a tie keeps the earlier start
            labels[better], means[better], best[better] = l2[better], m2[better], score[better]
        chosen, component, distance = _pick(z, labels, means, priority)
    even = np.floor((np.arange(k) + 0.5) * n / k).astype(np.int64)
    chosen[degenerate] = even
    component[degenerate] = np.arange(k)
    distance[degenerate] = 0.0
    order = np.argsort(chosen, axis=1, kind="stable")
    take = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
    return MdcPick(take(chosen), take(component), take(distance) * scale[:, None])


def _mdc_task(args: tuple[np.ndarray, int, np.ndarray, str, float, int, float, int]) -> MdcPick:
    """One chunk of :func:`mdc_batch`, as one picklable argument for the process pool."""
    vectors, k, keys, engine, reg_covar, max_iter, tol, n_init = args
    return mdc_batch(vectors, k, keys, engine, reg_covar, max_iter, tol, n_init)


def mdc_all(
    entries: Sequence[ManifestEntry],
    chosen: np.ndarray,
    share: np.ndarray,
    capacity: np.ndarray,
    rows_of: dict[int, np.ndarray],
    vectors: StripVectors,
    config: SelectConfig,
    on_progress: Callable[[int], None] | None,
) -> Picks:
    """MDC on the ``chosen`` images, ``share[i]`` of ``capacity[i]`` strips each, their vectors at ``rows_of[i]``.

    Images with the same (strips, picks) are batched, in chunks of CHUNK: the chunks, not the
    images, are what workers share, so the result is the same for any ``workers``."""
    advance = on_progress or (lambda n: None)
    picks: Picks = {}
    groups: dict[tuple[int, int], list[int]] = {}
    for i in chosen.tolist():
        n, k = int(capacity[i]), int(share[i])
        if k >= n:
            picks[i] = (list(range(n)), None)
            advance(1)
        else:
            groups.setdefault((n, k), []).append(i)
    tasks, owners = [], []
    for (_n, k), members in sorted(groups.items()):
        for start in range(0, len(members), CHUNK):
            part = members[start : start + CHUNK]
            stack = np.stack([vectors.vectors[rows_of[i]] for i in part])
            keys = image_keys(config.seed, [entries[i].id for i in part], "mdc")
            tasks.append((stack, k, keys, config.engine, config.reg_covar, config.max_iter, config.tol, config.n_init))
            owners.append(part)
    # A process pool only pays for itself with more than one chunk to share.
    parallel = config.workers > 1 and len(tasks) > 1
    with process_pool(min(config.workers, len(tasks))) if parallel else contextlib.nullcontext() as pool:
        results = pool.map(_mdc_task, tasks) if parallel else map(_mdc_task, tasks)  # type: ignore[union-attr]
        for part, result in zip(owners, results):
            advance(len(part))
            for i, strips, component, distance in zip(
                part, result.strips.tolist(), result.component.tolist(), result.distance.tolist()
            ):
                picks[i] = (strips, (component, distance))
    return picks
