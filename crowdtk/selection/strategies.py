"""The strategies (paper 3.4): which cells of each image to label, and the regions records written.

``random``: random cells per image. ``none-or-all``: whole images drawn by the seed until
their area reaches the budget (the budget's own draw, :func:`crowdtk.selection.budget.plan_budget`),
one region each. ``max``: the strips with the largest predicted count (ties: the leftmost).
``mdc``: the paper's clustering (:mod:`crowdtk.selection.mdc`). Warm-up rows are random
cells, marked ``warmup``. A head budget (``budget_heads``) decides how many cells each image
gets, or which whole images, from the heads the strategy's picks predict
(:mod:`crowdtk.selection.heads`); the strategies pick as under an area budget.

**Records.** Adjacent selected cells merge into one region (strips left to right, bands top
to bottom, blocks along a row). Each region records ``cells`` (indices of the cells it
covers: strips left to right, bands top to bottom, blocks row by row), ``predicted_count``
(the warm-up counter's heads in the region, summed over its strips, when vectors were
given) and, for MDC, ``component`` and ``distance`` (per strip, in vector units: heads).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from crowdtk.formats import ManifestEntry, Region, RegionsEntry, StripVectors
from crowdtk.selection.budget import CellGrids, Plan, plan_budget
from crowdtk.selection.checks import Exclusion, check_request, earlier_rounds, vector_rows
from crowdtk.selection.config import WARMUP, SelectConfig, Selection
from crowdtk.selection.heads import plan_heads
from crowdtk.selection.mdc import Picks, mdc_all
from crowdtk.selection.streams import image_keys, keyed_uniforms


@dataclass
class _Job:
    """What a strategy picks from: the pool, the cells each image gets, and the images' vector rows."""

    entries: Sequence[ManifestEntry]
    config: SelectConfig
    vectors: StripVectors | None
    capacity: np.ndarray  # cells per image
    share: np.ndarray  # cells to pick per image
    rows_of: dict[int, np.ndarray]
    on_progress: Callable[[int], None] | None

    @property
    def chosen(self) -> np.ndarray:
        return np.flatnonzero(self.share)


def _pick_random(job: _Job) -> Picks:
    # One keyed stream per image: an image's cells do not depend on the rest of the pool.
    keys = image_keys(job.config.seed, [job.entries[i].id for i in job.chosen], "random")
    uniforms = keyed_uniforms(keys, int(job.capacity.max()))
    return {i: (sorted(np.argsort(u[: job.capacity[i]], kind="stable")[: job.share[i]].tolist()), None)
            for i, u in zip(job.chosen.tolist(), uniforms)}


def _pick_max(job: _Job) -> Picks:
    assert job.vectors is not None  # check_request
    picks: Picks = {}
    for i in job.chosen.tolist():
        c = job.vectors.counts[job.rows_of[i]].astype(np.float64)
        picks[i] = (sorted(np.argsort(-c, kind="stable")[: job.share[i]].tolist()), None)  # stable: ties go to the leftmost
    return picks


def _pick_mdc(job: _Job) -> Picks:
    assert job.vectors is not None  # check_request
    return mdc_all(job.entries, job.chosen, job.share, job.capacity, job.rows_of, job.vectors, job.config, job.on_progress)


def _pick_none(job: _Job) -> Picks:
    return {}  # none-or-all picks no cells: the budget drew whole images (Plan.whole)


# The choice inside each image, by --strategy (the warm-up round is --strategy random).
_PICKERS: dict[str, Callable[[_Job], Picks]] = {"random": _pick_random, "none-or-all": _pick_none, "max": _pick_max, "mdc": _pick_mdc}


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
    check_request(entries, config, vectors, manifest_name)
    grids = CellGrids(config, manifest_name)
    capacity = np.array([len(grids.of(e)) for e in entries], dtype=np.int64)
    image_area = np.array([e.width * e.height for e in entries], dtype=np.int64)
    pool_area = sum(e.width * e.height for e in entries)
    excluded = earlier_rounds(exclusions, entries, manifest_name)
    excluded_area = sum(sum(r.area for r in regions) for regions in excluded.values())
    remaining = np.array([i for i, e in enumerate(entries) if e.id not in excluded], dtype=np.int64)
    if config.budget_heads is None:
        plan = plan_budget(config, image_area, capacity, remaining, pool_area, excluded_area)
        rows_of = vector_rows(entries, config, vectors, plan.targets, grids) if vectors is not None else {}
    else:
        assert vectors is not None  # check_request
        rows_of = vector_rows(entries, config, vectors, remaining, grids)  # every image the budget may spend on is priced
        plan = _plan_heads(_Job(entries, config, vectors, capacity, np.zeros_like(capacity), rows_of, None), remaining)
    job = _Job(entries, config, vectors, capacity, plan.share, rows_of, on_progress)
    picks = _PICKERS[config.strategy](job)
    out, cells_placed, expected = _records(job, plan, picks, grids)
    area = sum(e.area for e in out)
    notes = list(plan.notes)
    if area == 0 and config.budget_heads is not None:
        if not notes:  # else the plan said why (no heads left)
            notes.append(f"--budget-heads {config.budget_heads:g} is less than half the heads predicted in one region: nothing was selected")
    elif area == 0 and config.budget > 0:
        notes.append(f"the budget of {100 * config.budget:g}% of the pool's area is less than one region: nothing was selected")
    return Selection(out, len(entries), pool_area, area, len(excluded), excluded_area, cells_placed, expected, notes)


def _plan_heads(job: _Job, remaining: np.ndarray) -> Plan:
    """A head budget: the strategy's picks priced at their predicted heads (:mod:`crowdtk.selection.heads`)."""
    assert job.config.budget_heads is not None and job.vectors is not None
    counts = {i: job.vectors.counts[rows].astype(np.float64) for i, rows in job.rows_of.items()}
    image_heads = np.zeros(len(job.entries), dtype=np.float64)
    for i, c in counts.items():
        image_heads[i] = c.sum()
    picker = _PICKERS[job.config.strategy]

    def heads_at(images: np.ndarray, cells: np.ndarray) -> np.ndarray:
        share = np.zeros_like(job.capacity)
        share[images] = cells
        picks = picker(dataclasses.replace(job, share=share))
        return np.array([counts[i][picks[i][0]].sum() for i in images.tolist()], dtype=np.float64)

    return plan_heads(job.config.budget_heads, job.config.strategy, job.config.seed, job.capacity, remaining, image_heads, heads_at)


# --------------------------------------------------------------------------- records


def _counts_of(job: _Job, i: int) -> list[float] | None:
    """Image ``i``'s predicted heads per strip, when vectors describe its cells."""
    if job.vectors is None or i not in job.rows_of or job.config.shape != "strip":
        return None
    return job.vectors.counts[job.rows_of[i]].astype(np.float64).tolist()


def _records(job: _Job, plan: Plan, picks: Picks, grids: CellGrids) -> tuple[list[RegionsEntry], int, float | None]:
    """The regions records in manifest order, the cells they place, and the heads predicted in them."""
    strategy = WARMUP if job.config.warmup_frac > 0 else job.config.strategy
    out: list[RegionsEntry] = []
    whole_set = set(plan.whole.tolist())
    cells_placed = 0
    expected: float | None = 0.0 if job.vectors is not None else None
    for i, m in enumerate(job.entries):
        if i in whole_set:
            counts = _counts_of(job, i)
            detail = {"predicted_count": _rounded(sum(counts))} if counts is not None else {}
            out.append(RegionsEntry(m.id, m.image, m.sha256, m.width, m.height, strategy, (Region(0, m.width, 0, m.height),), (detail,)))
            cells_placed += int(job.capacity[i])
        elif i in picks:
            picked, mdc = picks[i]
            out.append(_entry(m, strategy, grids.of(m), picked, job.config.shape, _counts_of(job, i), mdc))
            cells_placed += len(picked)
        else:
            continue
        if expected is not None:
            expected += sum(float(d.get("predicted_count", 0.0)) for d in out[-1].details)
    return out, cells_placed, expected


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
    return float(f"{x:.4f}")  # heads and distances to 4 decimals: finer digits are noise and only lengthen the records


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
