"""What ``crowdtk select`` is asked for (:class:`SelectConfig`) and what it returns (:class:`Selection`).

Kept apart from the strategies so that every part of the package (budget, MDC, checks) can
read the settings and names without importing the code that runs them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from crowdtk.errors import CrowdtkError
from crowdtk.formats import RegionsEntry
from crowdtk.geometry import check_scale, strip_count

STRATEGIES = ("random", "none-or-all", "max", "mdc")
SHAPES = ("strip", "band", "block")
ENGINES = ("numpy", "sklearn")
WARMUP = "warmup"  # the strategy recorded on warm-up rows
CHUNK = 2048  # images per MDC task; fixed, so results do not depend on the number of workers


@dataclass(frozen=True)
class SelectConfig:
    """Defaults of ``crowdtk select``."""

    budget: float = 0.1
    budget_heads: float | None = None  # a head budget instead of ``budget``: the heads the vectors predict in the regions
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
        if self.budget_heads is not None:
            self._validate_heads()
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

    def _validate_heads(self) -> None:
        heads = self.budget_heads
        if not (isinstance(heads, (int, float)) and math.isfinite(heads) and heads > 0):
            raise CrowdtkError(f"--budget-heads {heads}: not a positive number of heads", "give the heads to label, e.g. 2000")
        if self.warmup_frac > 0:
            raise CrowdtkError("--budget-heads with --warmup-frac", "the warm-up round has no vectors to price heads with: give it --budget")
        if self.shape != "strip":
            raise CrowdtkError(f"--budget-heads with --shape {self.shape}", "the vectors price vertical strips: use --shape strip")


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
