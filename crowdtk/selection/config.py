"""What ``crowdtk select`` is asked for (:class:`SelectConfig`), what it returns (:class:`Selection`), the
strategies' registry (:data:`STRATEGIES`) and what a strategy's picker is given (:class:`Job`).

Kept apart from the strategies so that every part of the package (budget, MDC, checks) can
read the settings and the strategies' records without importing the code that runs them.

**Adding a strategy** is one record: decorate its picker with :func:`register_strategy` (the built-in ones
are in :mod:`crowdtk.selection.strategies`). The record says what the rest of crowdtk needs to know: its
one-line help (``select --help``), whether it ranks strips by the warm-up counter's vectors (``--vectors``
is then required, and the bench runs a warm-up round for it), whether the budget draws whole images for
it instead of spreading cells over the images, whether it takes the whole images an image list names
(``select --image-list``) instead of the budget's draw, the cell shapes it picks from, whether it can pick
the warm-up round, and whether its picker reports progress. ``select --strategy NAME`` then runs it and
``crowdtk bench`` runs it as a method of that name (:func:`crowdtk.experiment.plan.bench_methods`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crowdtk.errors import CrowdtkError, UsageError
from crowdtk.formats import ManifestEntry, RegionsEntry, StripVectors
from crowdtk.geometry import check_scale, strip_count
from crowdtk.registry import RegistrationError, Registry

SHAPES = ("strip", "band", "block")
ENGINES = ("numpy", "sklearn")
WARMUP = "warmup"  # the strategy recorded on warm-up rows
CHUNK = 2048  # images per MDC task; fixed, so results do not depend on the number of workers

# Per image: the picked cells (ascending) and, for MDC, (component, distance) per picked cell.
Picks = dict[int, tuple[list[int], tuple[list[int], list[float]] | None]]


@dataclass
class Job:
    """What a strategy's picker picks from: the pool, the cells each image gets, and the images' vector rows."""

    entries: Sequence[ManifestEntry]
    config: SelectConfig
    vectors: StripVectors | None  # never None for a strategy that needs vectors (checks.check_request)
    capacity: np.ndarray  # cells per image
    share: np.ndarray  # cells to pick per image
    rows_of: dict[int, np.ndarray]  # image index -> its strips' rows in ``vectors``, left to right
    on_progress: Callable[[int], None] | None

    @property
    def chosen(self) -> np.ndarray:
        return np.flatnonzero(self.share)


Picker = Callable[[Job], Picks]


@dataclass(frozen=True)
class Strategy:
    """A selection strategy: which cells of each image to label (:func:`register_strategy` registers one)."""

    name: str
    help: str  # one line, for select --help
    # The picker: for every image the budget gives cells (job.chosen), the indices of job.share[i] of its
    # job.capacity[i] cells, ascending, and for MDC the component and distance of each (else None).
    pick: Picker
    needs_vectors: bool = False  # ranks strips by the warm-up counter's vectors: select needs --vectors
    whole_images: bool = False  # the budget draws whole images (none-or-all); the picker is not asked for cells
    image_list: bool = False  # takes select --image-list: the whole images a list names, instead of the budget's draw
    shapes: tuple[str, ...] = SHAPES  # the cells it picks from (select --shape)
    warmup: bool = False  # can pick the warm-up round (select --warmup-frac)
    progress: bool = False  # its picker advances select's progress bar once per image

    def check(self) -> None:
        if not callable(self.pick):
            raise RegistrationError(
                f"the strategy {self.name!r} has no picker: register it with @register_strategy on its picker"
            )
        if not self.shapes or set(self.shapes) - set(SHAPES):
            raise RegistrationError(
                f"the strategy {self.name!r}: shapes {self.shapes} are not some of {', '.join(SHAPES)}"
            )
        if self.needs_vectors and self.shapes != ("strip",):
            raise RegistrationError(
                f"the strategy {self.name!r} needs vectors, which describe strips: give it shapes=('strip',)"
            )
        if self.image_list and not self.whole_images:
            raise RegistrationError(
                f"the strategy {self.name!r}: an image list names whole images; give it whole_images=True"
            )
        if self.warmup and (self.needs_vectors or self.whole_images):
            raise RegistrationError(
                f"the strategy {self.name!r}: the warm-up round has no vectors and spreads cells over its images"
            )


# Every strategy by name, in the order select --help lists them.
STRATEGIES: Registry[Strategy] = Registry("strategy")


def register_strategy(name: str, help: str, **capabilities: Any) -> Callable[[Picker], Picker]:
    """Register the decorated picker as the strategy ``name`` (the capabilities are :class:`Strategy`'s fields);
    a name registered twice, or a malformed record, fails here."""

    def add(pick: Picker) -> Picker:
        STRATEGIES.register(Strategy(name, help, pick, **capabilities))
        return pick

    return add


def image_list_strategies() -> list[str]:
    """The strategies that take ``--image-list`` (their records say so)."""
    return [s.name for s in STRATEGIES.values() if s.image_list]


def check_image_list(name: str) -> None:
    """Refuse ``--image-list`` with a strategy whose record does not take one (a usage error: exit 2)."""
    if name in STRATEGIES and not STRATEGIES[name].image_list:
        takers = " or ".join(image_list_strategies())
        raise UsageError(
            f"--image-list with --strategy {name}",
            f"a list names whole images to label: use --strategy {takers}" if takers else "no strategy takes a list",
        )


def strategy(name: str) -> Strategy:
    """The registered strategy ``name``; an unknown one is refused with the choices."""
    if name not in STRATEGIES:
        raise CrowdtkError(f"--strategy {name}: unknown strategy", f"use one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


@dataclass(frozen=True)
class SelectConfig:
    """Defaults of ``crowdtk select``."""

    budget: float = 0.1
    budget_heads: float | None = (
        None  # a head budget instead of ``budget``: the heads the vectors predict in the regions
    )
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
    # The whole images to label, by manifest id (select --image-list, crowdtk.selection.image_list): they decide
    # the selection instead of ``budget``, which is then not used.
    images: tuple[str, ...] | None = None

    def validate(self) -> None:
        if not (isinstance(self.budget, (int, float)) and 0 < self.budget <= 1):
            raise CrowdtkError(
                f"--budget {self.budget}: budget outside (0, 1]",
                "give the fraction of the pool's area to label, e.g. 0.1 for 10%",
            )
        if self.budget_heads is not None:
            self._validate_heads()
        chosen = strategy(self.strategy)
        if self.images is not None:
            self._validate_images()
        if self.shape not in SHAPES:
            raise CrowdtkError(f"--shape {self.shape}: unknown shape", f"use one of {', '.join(SHAPES)}")
        if self.engine not in ENGINES:
            raise CrowdtkError(f"--engine {self.engine}: unknown engine", f"use one of {', '.join(ENGINES)}")
        strip_count(self.strip_frac)  # validates --strip-frac
        check_scale(self.scale)
        if not 0 <= self.warmup_frac <= 1:
            raise CrowdtkError(
                f"--warmup-frac {self.warmup_frac} outside [0, 1]",
                "use e.g. 0.2 (the paper's warm-up share), or 0 for none",
            )
        if self.warmup_frac > 0 and not chosen.warmup:
            warmup = " or ".join(s.name for s in STRATEGIES.values() if s.warmup)
            raise CrowdtkError(
                f"--warmup-frac with --strategy {self.strategy}",
                f"the warm-up round picks {warmup} strips: use --strategy {warmup}",
            )
        if self.shape not in chosen.shapes:
            # The strategies that could pick these cells, bar those that ignore cells (whole images).
            others = [s.name for s in STRATEGIES.values() if self.shape in s.shapes and not s.whole_images]
            why = "strip vectors describe vertical strips: " if chosen.needs_vectors else ""
            raise CrowdtkError(
                f"--strategy {self.strategy} with --shape {self.shape}",
                f"{why}use --shape {' or '.join(chosen.shapes)}"
                + (f", or --strategy {' or '.join(others)}" if others else ""),
            )
        if self.workers < 1:
            raise CrowdtkError(f"--workers {self.workers} must be at least 1", "use 1 or more")
        if self.n_init < 1:
            raise CrowdtkError(f"--n-init {self.n_init} must be at least 1", "use e.g. 3")
        if not self.reg_covar > 0:
            raise CrowdtkError(f"reg_covar {self.reg_covar} must be positive", "use e.g. 1e-4")

    def _validate_images(self) -> None:
        check_image_list(self.strategy)
        if self.budget_heads is not None:
            raise UsageError(
                "--budget-heads with --image-list", "the list decides the images: leave --budget-heads out"
            )
        if not self.images:
            raise CrowdtkError("the image list names no image", "list one image name a line")

    def _validate_heads(self) -> None:
        heads = self.budget_heads
        if not (isinstance(heads, (int, float)) and math.isfinite(heads) and heads > 0):
            raise CrowdtkError(
                f"--budget-heads {heads}: not a positive number of heads", "give the heads to label, e.g. 2000"
            )
        if self.warmup_frac > 0:
            raise CrowdtkError(
                "--budget-heads with --warmup-frac",
                "the warm-up round has no vectors to price heads with: give it --budget",
            )
        if self.shape != "strip":
            raise CrowdtkError(
                f"--budget-heads with --shape {self.shape}", "the vectors price vertical strips: use --shape strip"
            )


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
