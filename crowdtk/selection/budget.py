"""The candidate cells of an image and how many of them each image gets (paper 3.4, the budget).

``budget`` M is a fraction of the pool's area. Every image is cut into candidate cells
(``strip``: the paper's vertical strips, :func:`crowdtk.geometry.strip_edges`; ``band``:
full-width horizontal bands of the same area fraction; ``block``: a grid of square cells of
about ``strip_frac`` of the image's area each; all edges on the output-cell grid of the
resolution the counter is trained at, ``scale``) and the budget is counted in area, also on
pools of mixed image sizes: each image first gets ``floor(M × n_cells)`` cells; images drawn by
the seed then get one cell more until the area reaches M of the pool's (:func:`spread_area`),
so no image gets more cells than it has and the total is within half a cell of the budget.

Cells of one image need not be alike: on the output-cell grid of a small image trained at a
reduced scale (256 px at ``scale`` 0.5: 16 cells of 16 px for 10 strips) some strips are twice
as wide as others, and MAX and MDC favour the wide ones (they hold more heads). The plan counts
every cell at its image's mean cell area; when the area the strategy then picks misses the
budget by more than one mean cell or by more than half a percentage point of the pool, the cells
are handed out again priced at the area of the strategy's picks (``crowdtk.selection.strategies``),
which brings the total within half a cell where the cells allow (else ``select`` warns how near).

**Warm-up** (``warmup_frac`` R, strategy random): ``round(R × n_images)`` images drawn by the
seed get random cells at the per-image rate M. **Exclusion**: the area earlier rounds already
used (the warm-up round's strips included, as in the paper's Algorithm 1, whose budget covers
both rounds) is subtracted from the budget, so that all rounds together spend M of the pool's area.
**none-or-all**: whole images drawn by the seed until their area reaches what is left
(:func:`draw_whole_images`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from crowdtk.errors import CrowdtkError
from crowdtk.formats import LabelsEntry, ManifestEntry, Region, RegionsEntry
from crowdtk.geometry import STRIDE, model_cells, span_edges, strip_count, strip_edges
from crowdtk.selection.config import SHAPES, STRATEGIES, SelectConfig
from crowdtk.selection.streams import SPREAD, WARMUP_IMAGES, WHOLE_IMAGES, pool_stream


def cell_grid(
    width: int, height: int, shape: str = "strip", strip_frac: float = 0.1, scale: float = 1.0
) -> list[Region]:
    """The candidate cells of a ``width``×``height`` image, in order (left to right, top to bottom);
    their edges lie on the output-cell grid of the image resized by ``scale`` (geometry.span_edges)."""
    if width < STRIDE or height < STRIDE:
        raise CrowdtkError(
            f"the image is {width}x{height} px, smaller than the output stride ({STRIDE} px)",
            "remove it from the manifest (crowdtk index refuses such images)",
        )
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
        return [
            Region(int(x0), int(x1), int(y0), int(y1))
            for y0, y1 in zip(ys[:-1], ys[1:])
            for x0, x1 in zip(xs[:-1], xs[1:])
        ]
    raise CrowdtkError(f"--shape {shape}: unknown shape", f"use one of {', '.join(SHAPES)}")


class CellGrids:
    """The cells of each image size, computed once per size: a pool holds few sizes and many images."""

    def __init__(self, config: SelectConfig, manifest_name: str) -> None:
        self.config = config
        self.manifest_name = manifest_name
        self._grids: dict[tuple[int, int], list[Region]] = {}
        self._edges: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def of(self, e: ManifestEntry | RegionsEntry | LabelsEntry) -> list[Region]:
        size = (e.width, e.height)
        if size not in self._grids:
            try:
                self._grids[size] = cell_grid(
                    e.width, e.height, self.config.shape, self.config.strip_frac, self.config.scale
                )
            except CrowdtkError as exc:  # name the image: the geometry error alone does not say which one
                raise CrowdtkError(f"{self.manifest_name}: image '{e.id}': {exc.what}", exc.fix) from None
        return self._grids[size]

    def edges(self, e: ManifestEntry) -> tuple[np.ndarray, np.ndarray]:
        """The cells' left and right edges, to compare with the strips of a vectors file."""
        size = (e.width, e.height)
        if size not in self._edges:
            self._edges[size] = (np.array([c.x0 for c in self.of(e)]), np.array([c.x1 for c in self.of(e)]))
        return self._edges[size]


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
        if abs(total + areas[best] - wanted) <= abs(total - wanted) + 1e-9 * abs(
            wanted
        ):  # a tie rounds up, as halves do
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


@dataclass
class Plan:
    """How the budget is spent: cells per image, or (none-or-all) whole images; notes for the user."""

    share: np.ndarray  # cells per image of the pool (0: not selected)
    whole: np.ndarray  # none-or-all: indices of the whole images selected, ascending
    notes: list[str] = field(default_factory=list)
    wanted: float = 0.0  # an area budget: the px this plan is to spend (0 or less: none)
    spend_on: np.ndarray | None = None  # an area budget of cells: the images it may give cells to

    @property
    def targets(self) -> np.ndarray:
        """The images that get regions, ascending (their vectors are needed)."""
        # A whole-image strategy (none-or-all) fills ``whole`` and leaves ``share`` at 0;
        # the other strategies the reverse.
        return self.whole if self.whole.size else np.flatnonzero(self.share)


def plan_budget(
    config: SelectConfig,
    image_area: np.ndarray,
    capacity: np.ndarray,
    remaining: np.ndarray,
    pool_area: int,
    excluded_area: int,
) -> Plan:
    """Every strategy spends the budget's area (less what earlier rounds spent), whatever the images' sizes.

    ``remaining``: indices of the images no earlier round labeled."""
    spread_rng = pool_stream(config.seed, SPREAD)
    plan = Plan(np.zeros(len(image_area), dtype=np.int64), np.zeros(0, dtype=np.int64))
    wanted_area = config.budget * pool_area - excluded_area
    if config.warmup_frac > 0:
        n_warm = min(round_half_up(config.warmup_frac * len(image_area)), len(remaining))
        if n_warm == 0:
            raise CrowdtkError(
                f"--warmup-frac {config.warmup_frac} of {len(image_area)} images selects no image",
                "use a larger --warmup-frac",
            )
        rng = pool_stream(config.seed, WARMUP_IMAGES)
        warm = np.sort(rng.choice(remaining, size=n_warm, replace=False))
        # The warm-up round spends the budget's rate on its own images only.
        plan.wanted, plan.spend_on = config.budget * float(image_area[warm].sum()), warm
        plan.share[warm] = spread_area(plan.wanted, capacity[warm], image_area[warm], spread_rng)
        return plan
    available = int(image_area[remaining].sum())
    if not remaining.size:
        plan.notes.append(
            f"every image of the pool is in the excluded files ({100 * excluded_area / pool_area:.2f}% of its area "
            "labeled there): nothing is left to select"
        )
    elif wanted_area < 0:
        plan.notes.append(
            f"the excluded files already use {100 * excluded_area / pool_area:.2f}% of the pool's area, more than "
            f"the budget's {100 * config.budget:g}%; nothing is selected"
        )
    elif wanted_area > available:
        plan.notes.append(
            f"the budget asks for {wanted_area:.0f} more px, but only {available} remain; all are selected"
        )
    if STRATEGIES[config.strategy].whole_images:  # none-or-all
        rng = pool_stream(config.seed, WHOLE_IMAGES)
        plan.whole = np.sort(remaining[draw_whole_images(image_area[remaining], wanted_area, rng)])
    else:
        plan.wanted, plan.spend_on = wanted_area, remaining
        plan.share[remaining] = spread_area(wanted_area, capacity[remaining], image_area[remaining], spread_rng)
    return plan
