"""Region selection (paper 3.4; Algorithm 1, lines 1 and 5): the budget, RANDOM, NONE-OR-ALL, MAX and MDC.

**Budget.** ``budget`` M is a fraction of the pool's area. Every image is cut into
candidate cells (``strip``: the paper's vertical strips, :func:`crowdtk.strips.strip_edges`;
``band``: full-width horizontal bands of the same area fraction; ``block``: a grid of square
cells of about ``strip_frac`` of the image's area each; all edges on the output-cell grid of
the resolution the counter is trained at, ``scale``) and the budget is counted in area, also
on pools of mixed image sizes: each image first gets ``floor(M × n_cells)`` cells; images drawn
by the seed then get one cell more until the area reaches M of the pool's (:func:`spread_area`),
so no image gets more cells than it has and the total is within half a cell of the budget.

**Warm-up** (``warmup_frac`` R, strategy random): ``round(R × n_images)`` images drawn by the
seed get random cells at the per-image rate M; their rows are marked ``warmup``.
**Exclusion**: images of earlier rounds' regions or labels files are left out, and the area
those files already used is subtracted from the budget, so that all rounds together spend M
of the pool's area.

**Strategies.** ``random``: random cells per image. ``none-or-all``: whole images drawn by the
seed until their area reaches M of the pool's area (less the area already used; see
:func:`draw_whole_images`), one region each.
``max``: the strips with the largest predicted count (ties: the leftmost). ``mdc``: per
image, a Gaussian mixture with n_l components (diagonal covariance, ``reg_covar``) fitted
by EM to the image's strip vectors; each strip goes to its most probable component and
each component contributes the strip nearest (Euclidean) to its mean. A component that
received no strip takes the unselected strip nearest its mean (components in order).
n_l == 1 takes the strip nearest the mean of all strips (no EM); n_l >= n_strips takes all.

*Scale.* Vectors are predicted head counts, whose scale varies by orders of magnitude
between images, while ``reg_covar`` and EM's tolerance are absolute. Each image's vectors
are therefore centred and divided by one scalar (their root-mean-square deviation), which
makes ``reg_covar`` a relative regulariser (1e-4 of the image's spread) and keeps the
vectors' geometry: distances and "nearest to the mean" are unchanged by a shift and one
scale, unlike per-dimension standardisation, which would blow up dimensions (empty
bands) that hardly vary. Images whose strips all predict the same vector (spread below
1e-6 heads, e.g. empty scenes) get evenly spaced strips.

*Engines.* ``sklearn`` fits one ``sklearn.mixture.GaussianMixture`` per image. ``numpy``
(the default) runs the same EM (scikit-learn's diagonal-covariance formulas, tolerance and
stopping rule) on batches of images at once, which is what makes 100,000 images take
seconds; tests check that both select the same strips. Both start from the same k-means++
initialisation, drawn from a per-image random stream keyed by (seed, image id): results
depend neither on the order of the images nor on ``workers``.

**Records.** Adjacent selected cells merge into one region (strips left to right, bands top
to bottom, blocks along a row). Each region records ``cells`` (indices of the cells it
covers: strips left to right, bands top to bottom, blocks row by row), ``predicted_count``
(the warm-up counter's heads in the region, summed over its strips, when vectors were
given) and, for MDC, ``component`` and ``distance`` (per strip, in vector units: heads).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crowdtk.errors import CrowdtkError
from crowdtk.formats import (
    LABELS,
    REGIONS,
    LabelsEntry,
    ManifestEntry,
    Region,
    RegionsEntry,
    StripVectors,
    read_labels,
    read_regions,
)
from crowdtk.strips import STRIDE, check_scale, model_cells, span_edges, strip_count, strip_edges

STRATEGIES = ("random", "none-or-all", "max", "mdc")
SHAPES = ("strip", "band", "block")
ENGINES = ("numpy", "sklearn")
WARMUP = "warmup"  # the strategy recorded on warm-up rows
CHUNK = 2048  # images per MDC task; fixed, so results do not depend on the number of workers
_DEGENERATE = 1e-6  # heads: strips whose vectors spread less than this are all alike

# Independent random streams of one seed.
_SPREAD, _WARMUP_IMAGES, _WHOLE_IMAGES = 1, 2, 3


@dataclass(frozen=True)
class SelectConfig:
    """Defaults of ``crowdtk select``."""

    budget: float = 0.1
    strategy: str = "random"
    strip_frac: float = 0.1
    scale: float = 1.0  # the --scale the counter is trained at: cell edges lie on its output-cell grid
    shape: str = "strip"
    warmup_frac: float = 0.0
    seed: int = 0
    workers: int = 1
    engine: str = "numpy"
    reg_covar: float = 1e-4
    max_iter: int = 100
    tol: float = 1e-3
    n_init: int = 3  # EM starts per image; the best likelihood wins

    def validate(self) -> None:
        if not (isinstance(self.budget, (int, float)) and 0 < self.budget <= 1):
            raise CrowdtkError(f"--budget {self.budget}: budget outside (0, 1]", "give the fraction of the pool's area to label, e.g. 0.1 for 10%")
        if self.strategy not in STRATEGIES:
            raise CrowdtkError(f"--strategy {self.strategy}: unknown strategy", f"use one of {', '.join(STRATEGIES)}")
        if self.shape not in SHAPES:
            raise CrowdtkError(f"--shape {self.shape}: unknown shape", f"use one of {', '.join(SHAPES)}")
        if self.engine not in ENGINES:
            raise CrowdtkError(f"--engine {self.engine}: unknown engine", f"use one of {', '.join(ENGINES)}")
        strip_count(self.strip_frac)  # validates --strip-frac
        check_scale(self.scale)
        if not 0 <= self.warmup_frac <= 1:
            raise CrowdtkError(f"--warmup-frac {self.warmup_frac} outside [0, 1]", "use e.g. 0.2 (the paper's warm-up share), or 0 for none")
        if self.warmup_frac > 0 and self.strategy != "random":
            raise CrowdtkError(f"--warmup-frac with --strategy {self.strategy}", "the warm-up round picks random strips: use --strategy random")
        if self.shape != "strip" and self.strategy in ("max", "mdc"):
            raise CrowdtkError(f"--strategy {self.strategy} with --shape {self.shape}",
                               "strip vectors describe vertical strips: use --shape strip, or --strategy random")
        if self.workers < 1:
            raise CrowdtkError(f"--workers {self.workers} must be at least 1", "use 1 or more")
        if self.n_init < 1:
            raise CrowdtkError(f"--n-init {self.n_init} must be at least 1", "use e.g. 3")
        if not self.reg_covar > 0:
            raise CrowdtkError(f"reg_covar {self.reg_covar} must be positive", "use e.g. 1e-4")


@dataclass
class Exclusion:
    """Images an earlier round already labeled (from a regions or labels file)."""

    source: str
    entries: list[RegionsEntry] | list[LabelsEntry]


@dataclass
class Selection:
    """What ``select`` chose, with the numbers it reports."""

    entries: list[RegionsEntry]
    pool_images: int
    pool_area: int
    area: int  # pixels of this file's regions
    excluded_images: int
    excluded_area: int  # pixels of the excluded files' regions
    cells: int  # cells placed by this file
    expected_heads: float | None  # predicted heads in this file's regions (vectors given)
    notes: list[str] = field(default_factory=list)

    @property
    def area_fraction(self) -> float:
        return self.area / self.pool_area if self.pool_area else 0.0

    @property
    def cumulative_area_fraction(self) -> float:
        return (self.area + self.excluded_area) / self.pool_area if self.pool_area else 0.0


# --------------------------------------------------------------------------- geometry and budget


def cell_grid(width: int, height: int, shape: str = "strip", strip_frac: float = 0.1, scale: float = 1.0) -> list[Region]:
    """The candidate cells of a ``width``×``height`` image, in order (left to right, top to bottom);
    their edges lie on the output-cell grid of the image resized by ``scale`` (strips.span_edges)."""
    if width < STRIDE or height < STRIDE:
        raise CrowdtkError(f"the image is {width}x{height} px, smaller than the output stride ({STRIDE} px)",
                           "remove it from the manifest (crowdtk index refuses such images)")
    if shape == "strip":
        edges = strip_edges(width, strip_frac, scale)
        return [Region(int(a), int(b), 0, height) for a, b in zip(edges[:-1], edges[1:])]
    if shape == "band":
        edges = span_edges(height, strip_count(strip_frac), scale)
        return [Region(0, width, int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
    if shape == "block":
        side = math.sqrt(strip_frac * width * height)
        gx = max(1, min(round(width / side), model_cells(width, scale)))
        gy = max(1, min(round(height / side), model_cells(height, scale)))
        xs, ys = span_edges(width, gx, scale), span_edges(height, gy, scale)
        return [Region(int(x0), int(x1), int(y0), int(y1))
                for y0, y1 in zip(ys[:-1], ys[1:]) for x0, x1 in zip(xs[:-1], xs[1:])]
    raise CrowdtkError(f"--shape {shape}: unknown shape", f"use one of {', '.join(SHAPES)}")


def round_half_up(x: float) -> int:
    """Round to the nearest integer, halves up (Python's round() rounds halves to even)."""
    return int(math.floor(x + 0.5 + 1e-9))


def fill_area(areas: np.ndarray, wanted: float, rng: np.random.Generator) -> np.ndarray:
    """Which items (of ``areas`` px each) to take, at random, so that their area comes nearest ``wanted``.

    Items are taken in a random order while they fit under ``wanted``; the one item left that
    brings the total nearest to ``wanted`` is then added if it does. The total is within half
    the smallest item of ``wanted`` unless the items run out."""
    areas = np.asarray(areas, dtype=np.float64)
    taken = np.zeros(len(areas), dtype=bool)
    total = 0.0
    for i in rng.permutation(len(areas)):
        if total + areas[i] <= wanted:
            taken[i] = True
            total += areas[i]
    rest = np.flatnonzero(~taken)
    if rest.size:
        best = rest[np.argmin(np.abs(total + areas[rest] - wanted))]
        if abs(total + areas[best] - wanted) <= abs(total - wanted) + 1e-9 * abs(wanted):  # a tie rounds up, as halves do
            taken[best] = True
    return taken


def draw_whole_images(areas: np.ndarray, wanted: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of whole images (areas in px) drawn at random until their area reaches ``wanted``
    (:func:`fill_area`). Counting images instead of area spends the wrong area on pools of mixed
    sizes (ShanghaiTech Part A and UCF-QNRF range from ~300 to ~4000 px)."""
    return np.flatnonzero(fill_area(areas, wanted, rng))


def spread_area(wanted: float, capacity: np.ndarray, image_area: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Cells per image so that their area comes nearest ``wanted`` px: the same share of every
    image's cells (rounded down), then one more cell on images drawn by :func:`fill_area` for the
    area left. Counted in area, not cells: on a pool of mixed sizes a cell of a 4000-px image is
    many cells of a 300-px one. Never exceeds ``capacity``."""
    capacity = np.asarray(capacity, dtype=np.int64)
    image_area = np.asarray(image_area, dtype=np.float64)
    rate = min(max(wanted / image_area.sum(), 0.0), 1.0) if image_area.sum() else 0.0
    share = np.minimum(np.floor(rate * capacity + 1e-9).astype(np.int64), capacity)
    cell = image_area / capacity
    open_ = np.flatnonzero(share < capacity)
    extra = fill_area(cell[open_], wanted - float((share * cell).sum()), rng)
    share[open_[extra]] += 1
    return share


# --------------------------------------------------------------------------- keyed random streams


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def image_keys(seed: int, ids: Sequence[str], purpose: str) -> np.ndarray:
    """One 64-bit key per image from (seed, purpose, id): a stream that does not depend on other images."""
    return np.array([int.from_bytes(hashlib.sha256(f"{seed}\0{purpose}\0{i}".encode()).digest()[:8], "little") for i in ids],
                    dtype=np.uint64)


def keyed_uniforms(keys: np.ndarray, count: int) -> np.ndarray:
    """``count`` uniform numbers in [0, 1) per key (splitmix64 over key + j × golden ratio), vectorised."""
    with np.errstate(over="ignore"):
        z = keys.astype(np.uint64)[:, None] + np.arange(1, count + 1, dtype=np.uint64)[None, :] * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


# --------------------------------------------------------------------------- MDC


@dataclass
class MdcPick:
    """MDC's choice for a batch of images: per image and selected strip, its index, component, distance."""

    strips: np.ndarray  # (B, k) int64, ascending
    component: np.ndarray  # (B, k) int64
    distance: np.ndarray  # (B, k) float64, Euclidean distance to the component mean, vector units


def _standardise(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = vectors.astype(np.float64)
    centred = x - x.mean(axis=1, keepdims=True)
    scale = np.sqrt((centred**2).mean(axis=(1, 2)))
    degenerate = ~(scale >= _DEGENERATE)
    scale = np.where(degenerate, 1.0, scale)
    return centred / scale[:, None, None], scale, degenerate


def kmeans_plusplus(z: np.ndarray, k: int, uniforms: np.ndarray) -> np.ndarray:
    """Greedy k-means++ seeds (scikit-learn's variant: 2 + ln k local trials), batched: (B, k) strip indices."""
    b, n, _ = z.shape
    trials = 2 + int(np.log(k))
    rows = np.arange(b)
    first = np.minimum((uniforms[:, 0] * n).astype(np.int64), n - 1)
    centres = [first]
    closest = ((z - z[rows, first][:, None, :]) ** 2).sum(-1)
    potential = closest.sum(1)
    for c in range(1, k):
        draws = uniforms[:, 1 + (c - 1) * trials: 1 + c * trials] * potential[:, None]
        cumulative = np.cumsum(closest, axis=1)
        candidates = np.minimum((cumulative[:, None, :] < draws[:, :, None]).sum(-1), n - 1)  # searchsorted, left
        dist = ((z[:, None, :, :] - z[rows[:, None], candidates][:, :, None, :]) ** 2).sum(-1)
        trial_closest = np.minimum(closest[:, None, :], dist)
        trial_potential = trial_closest.sum(-1)
        best = trial_potential.argmin(1)
        centres.append(candidates[rows, best])
        closest = trial_closest[rows, best]
        potential = trial_potential[rows, best]
    return np.stack(centres, axis=1)


def _init_params(z: np.ndarray, seeds: np.ndarray, reg_covar: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Equal weights, means at the seeds, covariances from the one-hot responsibilities (as scikit-learn)."""
    b, n, _ = z.shape
    k = seeds.shape[1]
    resp = np.zeros((b, n, k))
    resp[np.arange(b)[:, None], seeds, np.arange(k)[None, :]] = 1.0
    _, means, cov = _gaussian_params(z, resp, reg_covar)
    weights = np.full((b, k), 1.0 / k)
    return weights, means, cov


def _gaussian_params(z: np.ndarray, resp: np.ndarray, reg_covar: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    nk = resp.sum(axis=1) + 10 * np.finfo(resp.dtype).eps
    rt = resp.transpose(0, 2, 1)
    means = np.matmul(rt, z) / nk[:, :, None]
    cov = np.matmul(rt, z * z) / nk[:, :, None] - means**2 + reg_covar
    return nk, means, np.maximum(cov, reg_covar * 1e-3)


def _log_resp(z: np.ndarray, weights: np.ndarray, means: np.ndarray, prec_chol: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = z.shape[2]
    precisions = prec_chol**2
    log_prob = ((means**2 * precisions).sum(-1)[:, None, :]
                - 2 * np.matmul(z, (means * precisions).transpose(0, 2, 1))
                + np.matmul(z**2, precisions.transpose(0, 2, 1)))
    weighted = -0.5 * (d * np.log(2 * np.pi) + log_prob) + np.log(prec_chol).sum(-1)[:, None, :] + np.log(weights)[:, None, :]
    top = weighted.max(axis=2, keepdims=True)
    norm = (np.log(np.exp(weighted - top).sum(axis=2, keepdims=True)) + top)[:, :, 0]
    return norm.mean(axis=1), weighted - norm[:, :, None]


def gmm_numpy(z: np.ndarray, seeds: np.ndarray, reg_covar: float, max_iter: int,
              tol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EM for diagonal Gaussian mixtures on B images at once; scikit-learn's updates and stopping rule.

    Returns (labels (B, n), means (B, k, d), mean log-likelihood of the fit (B,)).
    """
    weights, means, cov = _init_params(z, seeds, reg_covar)
    prec_chol = np.sqrt(1.0 / cov)  # scikit-learn: precisions_init -> sqrt
    lower = np.full(len(z), -np.inf)
    active = np.arange(len(z))
    for _ in range(max_iter):
        if active.size == 0:
            break
        za = z[active]
        bound, log_resp = _log_resp(za, weights[active], means[active], prec_chol[active])
        nk, m, c = _gaussian_params(za, np.exp(log_resp), reg_covar)
        weights[active] = nk / nk.sum(axis=1, keepdims=True)
        means[active] = m
        prec_chol[active] = 1.0 / np.sqrt(c)
        change = bound - lower[active]
        lower[active] = bound
        active = active[~(np.abs(change) < tol)]
    score, log_resp = _log_resp(z, weights, means, prec_chol)
    return log_resp.argmax(axis=2), means, score


def gmm_sklearn(z: np.ndarray, seeds: np.ndarray, reg_covar: float, max_iter: int,
                tol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference: one ``sklearn.mixture.GaussianMixture`` per image, from the same initialisation."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    weights, means, cov = _init_params(z, seeds, reg_covar)
    labels = np.zeros(z.shape[:2], dtype=np.int64)
    out = np.zeros_like(means)
    score = np.zeros(len(z))
    for i in range(len(z)):
        gm = GaussianMixture(n_components=seeds.shape[1], covariance_type="diag", reg_covar=reg_covar, max_iter=max_iter,
                             tol=tol, init_params="random_from_data", weights_init=weights[i], means_init=means[i], precisions_init=1.0 / cov[i])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            labels[i] = gm.fit_predict(z[i])
        out[i] = gm.means_
        score[i] = _log_resp(z[i][None], gm.weights_[None], gm.means_[None], gm.precisions_cholesky_[None])[0][0]
    return labels, out, score


def _argmin_ties(values: np.ndarray, priority: np.ndarray) -> np.ndarray:
    """Row-wise argmin over the last axis; values within rounding of the minimum tie, and a tie goes to the
    lowest ``priority`` (a per-image random order), so that float noise never decides and no side is favoured."""
    low = values.min(axis=-1, keepdims=True)
    tied = values <= low + 1e-9 * np.abs(low) + 1e-12
    return np.where(tied, priority, np.inf).argmin(axis=-1)


def _pick(z: np.ndarray, labels: np.ndarray, means: np.ndarray, priority: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def mdc_batch(vectors: np.ndarray, k: int, keys: np.ndarray, engine: str = "numpy", reg_covar: float = 1e-4,
              max_iter: int = 100, tol: float = 1e-3, n_init: int = 3) -> MdcPick:
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
            seeds = kmeans_plusplus(z, k, draws[:, start * span:(start + 1) * span])
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
    vectors, k, keys, engine, reg_covar, max_iter, tol, n_init = args
    return mdc_batch(vectors, k, keys, engine, reg_covar, max_iter, tol, n_init)


# --------------------------------------------------------------------------- reading inputs


def read_exclusion(path: str | os.PathLike[str]) -> Exclusion:
    """An earlier round's regions or labels file (the format is read from its header)."""
    if _peek_format(path) == LABELS:
        return Exclusion(str(path), read_labels(path)[1])
    return Exclusion(str(path), read_regions(path)[1])


def check_exclusion(exclusion: Exclusion, entries: Sequence[ManifestEntry], manifest_name: str) -> None:
    """Refuse an earlier round's file of another pool: every image it names must be in the manifest, with the same bytes."""
    by_id = {e.id: e for e in entries}
    unknown = [x.id for x in exclusion.entries if x.id not in by_id]
    if unknown:
        raise CrowdtkError(f"{exclusion.source}: names {len(unknown)} image(s) absent from {manifest_name}, e.g. '{unknown[0]}'",
                           "pass the regions or labels of the same pool")
    for x in exclusion.entries:
        if x.sha256 != by_id[x.id].sha256:
            raise CrowdtkError(f"{exclusion.source}: image '{x.id}' differs from the one in {manifest_name} (sha256)",
                               "pass the regions or labels of the same pool")


def _peek_format(path: str | os.PathLike[str]) -> str:
    import json

    try:
        with open(path, encoding="utf-8") as fh:
            first = json.loads(fh.readline())
    except FileNotFoundError:
        raise CrowdtkError(f"{path}: no such file", "check the path") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise CrowdtkError(f"{path}: not a crowdtk regions or labels file", "pass the regions.jsonl or labels.jsonl of the earlier round") from None
    return LABELS if isinstance(first, dict) and first.get("format") == LABELS else REGIONS


def check_vectors(header: dict[str, Any], data: StripVectors, source: str, manifest_digest: str | None, manifest_name: str,
                  entries: Sequence[ManifestEntry], config: SelectConfig) -> None:
    """Refuse vectors of another manifest, another strip geometry, or other image bytes."""
    if manifest_digest is None:
        raise CrowdtkError(f"{manifest_name}: --vectors needs the manifest as a file (its digest is compared with the vectors')",
                           "pass the manifest file instead of '-'")
    if header.get("manifest_sha256") != manifest_digest:
        raise CrowdtkError(f"{source}: a vectors file from another manifest (its manifest_sha256 differs from {manifest_name}'s digest)",
                           "compute the vectors from this manifest with crowdtk vectors, or pass the manifest they were made from")
    frac, scale = header.get("strip_frac"), float(header.get("scale", 1.0))
    if frac is not None and abs(float(frac) - config.strip_frac) > 1e-12:
        raise CrowdtkError(f"{source}: vectors describe strips of strip_frac {frac}, not --strip-frac {config.strip_frac}",
                           f"pass --strip-frac {frac}, or recompute the vectors")
    if abs(scale - config.scale) > 1e-12:
        raise CrowdtkError(f"{source}: vectors describe strips on the cell grid of --scale {scale:g}, not --scale {config.scale:g}",
                           f"pass --scale {scale:g}, or recompute the vectors with --scale {config.scale:g}")
    by_id = {e.id: e for e in entries}
    for image_id, sha in zip(data.ids.tolist(), data.sha256.tolist()):
        entry = by_id.get(image_id)
        if entry is None:
            raise CrowdtkError(f"{source}: has vectors of image '{image_id}', absent from {manifest_name}", "pass the manifest the vectors were made from")
        if entry.sha256 != sha:
            raise CrowdtkError(f"{source}: image '{image_id}' changed since its vectors were computed (sha256 differs)",
                               "recompute the vectors with crowdtk vectors")


# --------------------------------------------------------------------------- selection


def _merge(cells: list[Region], picked: Sequence[int], shape: str) -> list[list[int]]:
    """Group picked cell indices (ascending) into runs of adjacent cells that form one rectangle."""
    runs: list[list[int]] = []
    for j in picked:
        if runs:
            last = cells[runs[-1][-1]]
            cell = cells[j]
            if shape == "band":
                joins = last.y1 == cell.y0
            else:  # strips; blocks along a row
                joins = last.x1 == cell.x0 and (last.y0, last.y1) == (cell.y0, cell.y1)
            if joins:
                runs[-1].append(j)
                continue
        runs.append([j])
    return runs


def _rounded(x: float) -> float:
    return float(f"{x:.4f}")


def _entry(m: ManifestEntry, strategy: str, cells: list[Region], picked: list[int], shape: str,
           counts: list[float] | None, mdc: tuple[list[int], list[float]] | None) -> RegionsEntry:
    """One image's record; ``picked`` ascending, ``mdc`` = (component, distance) per picked cell."""
    regions, details = [], []
    position = {j: i for i, j in enumerate(picked)}
    for run in _merge(cells, picked, shape):
        first, last = cells[run[0]], cells[run[-1]]
        regions.append(Region(first.x0, last.x1, first.y0, last.y1))
        detail: dict[str, Any] = {"cells": run}
        if counts is not None:
            detail["predicted_count"] = _rounded(sum(counts[j] for j in run))
        if mdc is not None:
            component, distance = mdc
            detail["component"] = [component[position[j]] for j in run]
            detail["distance"] = [_rounded(distance[position[j]]) for j in run]
        details.append(detail)
    return RegionsEntry(m.id, m.image, m.sha256, m.width, m.height, strategy, tuple(regions), tuple(details))


def select_regions(
    entries: Sequence[ManifestEntry],
    config: SelectConfig,
    vectors: StripVectors | None = None,
    exclusions: Sequence[Exclusion] = (),
    manifest_name: str = "MANIFEST",
    on_progress: Callable[[int], None] | None = None,
) -> Selection:
    """Choose the regions to label in the pool ``entries`` (a manifest) under ``config``."""
    config.validate()
    if not entries:
        raise CrowdtkError(f"{manifest_name}: no images", "select from a manifest with images")
    if config.strategy in ("max", "mdc") and vectors is None:
        raise CrowdtkError(f"--strategy {config.strategy} needs --vectors", "compute strip vectors with crowdtk vectors and pass them with --vectors")
    notes: list[str] = []
    grids: dict[tuple[int, int], list[Region]] = {}

    def grid(e: ManifestEntry | RegionsEntry | LabelsEntry) -> list[Region]:
        size = (e.width, e.height)
        if size not in grids:
            try:
                grids[size] = cell_grid(e.width, e.height, config.shape, config.strip_frac, config.scale)
            except CrowdtkError as exc:
                raise CrowdtkError(f"{manifest_name}: image '{e.id}': {exc.what}", exc.fix) from None
        return grids[size]

    capacity = np.array([len(grid(e)) for e in entries], dtype=np.int64)
    pool_area = sum(e.width * e.height for e in entries)
    index = {e.id: i for i, e in enumerate(entries)}

    # Earlier rounds.
    excluded: dict[str, set[Region]] = {}  # image id -> its regions in the earlier rounds (a union over the files)
    for exclusion in exclusions:
        check_exclusion(exclusion, entries, manifest_name)
        for x in exclusion.entries:
            excluded.setdefault(x.id, set()).update(x.regions)
    excluded_area = sum(sum(r.area for r in regions) for regions in excluded.values())
    remaining = np.array([i for i, e in enumerate(entries) if e.id not in excluded], dtype=np.int64)

    # How many cells (or whole images) each remaining image gets: every strategy spends the
    # budget's area (less what earlier rounds spent), whatever the images' sizes.
    spread_rng = np.random.default_rng([config.seed, _SPREAD])
    share = np.zeros(len(entries), dtype=np.int64)
    whole: np.ndarray = np.zeros(0, dtype=np.int64)
    image_area = np.array([e.width * e.height for e in entries], dtype=np.int64)
    wanted_area = config.budget * pool_area - excluded_area
    if config.warmup_frac > 0:
        n_warm = min(round_half_up(config.warmup_frac * len(entries)), len(remaining))
        if n_warm == 0:
            raise CrowdtkError(f"--warmup-frac {config.warmup_frac} of {len(entries)} images selects no image", "use a larger --warmup-frac")
        rng = np.random.default_rng([config.seed, _WARMUP_IMAGES])
        warm = np.sort(rng.choice(remaining, size=n_warm, replace=False))
        share[warm] = spread_area(config.budget * image_area[warm].sum(), capacity[warm], image_area[warm], spread_rng)
    else:
        available = int(image_area[remaining].sum())
        if wanted_area < 0:
            notes.append(f"the excluded files already use {100 * excluded_area / pool_area:.2f}% of the pool's area, more than "
                         f"the budget's {100 * config.budget:g}%; nothing is selected")
        elif wanted_area > available:
            notes.append(f"the budget asks for {wanted_area:.0f} more px, but only {available} remain; all are selected")
        if config.strategy == "none-or-all":
            rng = np.random.default_rng([config.seed, _WHOLE_IMAGES])
            whole = np.sort(remaining[draw_whole_images(image_area[remaining], wanted_area, rng)])
        else:
            share[remaining] = spread_area(wanted_area, capacity[remaining], image_area[remaining], spread_rng)

    # Vectors of the images that need them.
    rows_of: dict[int, np.ndarray] = {}
    edges: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def edges_of(e: ManifestEntry) -> tuple[np.ndarray, np.ndarray]:
        size = (e.width, e.height)
        if size not in edges:
            edges[size] = (np.array([c.x0 for c in grid(e)]), np.array([c.x1 for c in grid(e)]))
        return edges[size]

    if vectors is not None:
        order = np.argsort(vectors.strip_image, kind="stable")
        bounds = np.searchsorted(vectors.strip_image[order], np.arange(len(vectors.ids) + 1))
        vec_index = {image_id: v for v, image_id in enumerate(vectors.ids.tolist())}
        targets = whole if config.strategy == "none-or-all" else np.flatnonzero(share)
        missing = [entries[i].id for i in targets if entries[i].id not in vec_index]
        if missing and config.strategy in ("max", "mdc"):
            raise CrowdtkError(f"the vectors have no strips of {len(missing)} image(s) to select from, e.g. '{missing[0]}'",
                               "compute the vectors over the images not yet labeled (crowdtk vectors with the same --exclude)")
        for i in targets:
            v = vec_index.get(entries[i].id)
            if v is None:
                continue
            rows = order[bounds[v]:bounds[v + 1]]
            rows = rows[np.argsort(vectors.strip_x0[rows], kind="stable")]
            rows_of[int(i)] = rows
            if config.shape == "strip":
                x0, x1 = edges_of(entries[i])
                if not (np.array_equal(vectors.strip_x0[rows], x0) and np.array_equal(vectors.strip_x1[rows], x1)):
                    raise CrowdtkError(f"the vectors' strips of image '{entries[i].id}' are not this strip geometry "
                                       f"(--strip-frac {config.strip_frac}, --scale {config.scale:g})", "recompute the vectors, or match --strip-frac and --scale")

    def counts_of(i: int) -> list[float] | None:
        if vectors is None or i not in rows_of or config.shape != "strip":
            return None
        return vectors.counts[rows_of[i]].astype(np.float64).tolist()

    # The choice inside each image.
    picks: dict[int, tuple[list[int], tuple[list[int], list[float]] | None]] = {}
    chosen_images = np.flatnonzero(share)
    if config.strategy in ("random",) or config.warmup_frac > 0:
        keys = image_keys(config.seed, [entries[i].id for i in chosen_images], "random")
        uniforms = keyed_uniforms(keys, int(capacity.max()))
        for i, u in zip(chosen_images.tolist(), uniforms):
            picks[i] = (sorted(np.argsort(u[: capacity[i]], kind="stable")[: share[i]].tolist()), None)
    elif config.strategy == "max":
        for i in chosen_images.tolist():
            c = vectors.counts[rows_of[i]].astype(np.float64)  # type: ignore[union-attr]
            picks[i] = (sorted(np.argsort(-c, kind="stable")[: share[i]].tolist()), None)
    elif config.strategy == "mdc":
        picks.update(_mdc_all(entries, chosen_images, share, capacity, rows_of, vectors, config, on_progress))  # type: ignore[arg-type]

    strategy = WARMUP if config.warmup_frac > 0 else config.strategy
    out: list[RegionsEntry] = []
    whole_set = set(whole.tolist())
    cells_placed = 0
    expected: float | None = 0.0 if vectors is not None else None
    for i, m in enumerate(entries):
        if i in whole_set:
            counts = counts_of(i)
            detail = {"predicted_count": _rounded(sum(counts))} if counts is not None else {}
            out.append(RegionsEntry(m.id, m.image, m.sha256, m.width, m.height, strategy, (Region(0, m.width, 0, m.height),), (detail,)))
            cells_placed += int(capacity[i])
        elif i in picks:
            picked, mdc = picks[i]
            counts = counts_of(i)
            out.append(_entry(m, strategy, grid(m), picked, config.shape, counts, mdc))
            cells_placed += len(picked)
        else:
            continue
        if expected is not None:
            expected += sum(float(d.get("predicted_count", 0.0)) for d in out[-1].details)
    area = sum(e.area for e in out)
    return Selection(out, len(entries), pool_area, area, len(excluded), excluded_area, cells_placed, expected, notes)


def _mdc_all(entries: Sequence[ManifestEntry], chosen: np.ndarray, share: np.ndarray, capacity: np.ndarray,
             rows_of: dict[int, np.ndarray], vectors: StripVectors, config: SelectConfig,
             on_progress: Callable[[int], None] | None) -> dict[int, tuple[list[int], tuple[list[int], list[float]] | None]]:
    picks: dict[int, tuple[list[int], tuple[list[int], list[float]] | None]] = {}
    groups: dict[tuple[int, int], list[int]] = {}
    for i in chosen.tolist():
        n, k = int(capacity[i]), int(share[i])
        if k >= n:
            picks[i] = (list(range(n)), None)
            if on_progress:
                on_progress(1)
        else:
            groups.setdefault((n, k), []).append(i)
    tasks, owners = [], []
    for (n, k), members in sorted(groups.items()):
        for start in range(0, len(members), CHUNK):
            part = members[start:start + CHUNK]
            stack = np.stack([vectors.vectors[rows_of[i]] for i in part])
            keys = image_keys(config.seed, [entries[i].id for i in part], "mdc")
            tasks.append((stack, k, keys, config.engine, config.reg_covar, config.max_iter, config.tol, config.n_init))
            owners.append(part)
    if config.workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=min(config.workers, len(tasks))) as pool:
            results = pool.map(_mdc_task, tasks)
            collected = []
            for part, result in zip(owners, results):
                collected.append((part, result))
                if on_progress:
                    on_progress(len(part))
    else:
        collected = []
        for part, task in zip(owners, tasks):
            collected.append((part, _mdc_task(task)))
            if on_progress:
                on_progress(len(part))
    for part, result in collected:
        for i, strips, component, distance in zip(part, result.strips.tolist(), result.component.tolist(), result.distance.tolist()):
            picks[i] = (strips, (component, distance))
    return picks
