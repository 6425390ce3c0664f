"""The strategies (paper 3.4): which cells of each image to label, and the regions records written.

Each strategy is a picker registered with :func:`~crowdtk.selection.config.register_strategy` (its record:
help, capabilities) and given a :class:`~crowdtk.selection.config.Job`; :func:`select_regions` runs the one
``--strategy`` names.

``random``: random cells per image. ``none-or-all``: whole images drawn by the seed until
their area reaches the budget (the budget's own draw, :func:`crowdtk.selection.budget.plan_budget`),
one region each, or (``images``: ``select --image-list``) exactly the images a list names, whatever the
budget. ``max``: the strips with the largest predicted count (ties: the leftmost).
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
from typing import Any

import numpy as np

from crowdtk.errors import CrowdtkError
from crowdtk.formats import ManifestEntry, Region, RegionsEntry, StripVectors
from crowdtk.selection.budget import CellGrids, Plan, fill_area, plan_budget
from crowdtk.selection.checks import Exclusion, check_request, earlier_rounds, vector_rows
from crowdtk.selection.config import STRATEGIES, WARMUP, Job, Picks, SelectConfig, Selection, register_strategy
from crowdtk.selection.heads import plan_heads, spending_order
from crowdtk.selection.mdc import mdc_all
from crowdtk.selection.streams import AREA_ORDER, image_keys, keyed_uniforms, pool_stream

# The built-in strategies, in the order select --help lists them (the warm-up round is --strategy random).


@register_strategy("random", "random strips", warmup=True)
def pick_random(job: Job) -> Picks:
    # One keyed stream per image: an image's cells do not depend on the rest of the pool.
    keys = image_keys(job.config.seed, [job.entries[i].id for i in job.chosen], "random")
    uniforms = keyed_uniforms(keys, int(job.capacity.max()))
    return {
        i: (sorted(np.argsort(u[: job.capacity[i]], kind="stable")[: job.share[i]].tolist()), None)
        for i, u in zip(job.chosen.tolist(), uniforms)
    }


@register_strategy("none-or-all", "whole images", whole_images=True, image_list=True)
def pick_none(job: Job) -> Picks:
    return {}  # none-or-all picks no cells: the budget drew whole images (Plan.whole)


@register_strategy("max", "largest predicted counts", needs_vectors=True, shapes=("strip",))
def pick_max(job: Job) -> Picks:
    assert job.vectors is not None  # check_request
    picks: Picks = {}
    for i in job.chosen.tolist():
        c = job.vectors.counts[job.rows_of[i]].astype(np.float64)
        picks[i] = (
            sorted(np.argsort(-c, kind="stable")[: job.share[i]].tolist()),
            None,
        )  # stable: ties go to the leftmost
    return picks


@register_strategy("mdc", "the paper's clustering", needs_vectors=True, shapes=("strip",), progress=True)
def pick_mdc(job: Job) -> Picks:
    assert job.vectors is not None  # check_request
    return mdc_all(
        job.entries, job.chosen, job.share, job.capacity, job.rows_of, job.vectors, job.config, job.on_progress
    )


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
    if config.images is not None:
        plan = _plan_listed(entries, config.images, excluded, exclusions, manifest_name)
        rows_of = vector_rows(entries, config, vectors, plan.targets, grids) if vectors is not None else {}
    elif config.budget_heads is None:
        plan = plan_budget(config, image_area, capacity, remaining, pool_area, excluded_area)
        rows_of = vector_rows(entries, config, vectors, plan.targets, grids) if vectors is not None else {}
    else:
        assert vectors is not None  # check_request
        rows_of = vector_rows(
            entries, config, vectors, remaining, grids
        )  # every image the budget may spend on is priced
        plan = _plan_heads(Job(entries, config, vectors, capacity, np.zeros_like(capacity), rows_of, None), remaining)
    job = Job(entries, config, vectors, capacity, plan.share, rows_of, on_progress)
    picks = STRATEGIES[config.strategy].pick(job)
    if plan.spend_on is not None:
        job, plan, picks = _spend_picked_area(job, plan, picks, grids, pool_area)
    out, cells_placed, expected = _records(job, plan, picks, grids)
    area = sum(e.area for e in out)
    notes = list(plan.notes)
    if plan.spend_on is not None and plan.wanted > 0 and abs(area - plan.wanted) > KEEP_WITHIN * pool_area:
        full = bool((plan.share[plan.spend_on] == capacity[plan.spend_on]).all())
        if not full:  # else the plan said so (all are selected)
            cell = float(image_area[plan.spend_on].sum() / capacity[plan.spend_on].sum())
            notes.append(
                f"this round spends {100 * area / pool_area:.2f}% of the pool's area where the budget leaves "
                f"{100 * plan.wanted / pool_area:.2f}%: its cells (about "
                f"{100 * cell / pool_area:.2f}% of the pool each) come no nearer"
            )
    if area == 0 and config.budget_heads is not None:
        if not notes:  # else the plan said why (no heads left)
            notes.append(
                f"--budget-heads {config.budget_heads:g} is less than half "
                "the heads predicted in one region: nothing was selected"
            )
    elif area == 0 and not notes:  # else the plan said why (nothing left, or the budget spent already)
        notes.append(
            f"the budget of {100 * config.budget:g}% of the pool's area is less than one region: nothing was selected"
        )
    return Selection(out, len(entries), pool_area, area, len(excluded), excluded_area, cells_placed, expected, notes)


# An area plan whose picks miss the budget by at most one mean cell and by at most this share of the pool (half a
# percentage point) is kept; a round that ends farther from its budget says so.
KEEP_WITHIN = 0.005


def _spend_picked_area(job: Job, plan: Plan, picks: Picks, grids: CellGrids, pool_area: int) -> tuple[Job, Plan, Picks]:
    """The area plan counted every cell at its image's mean cell area (budget.spread_area); the strategy's picks
    are particular cells, which may be wider than the mean (MAX's and MDC's strips hold more heads, and on the
    coarse grid of a small image at a reduced scale a strip is one or two output cells wide). When their area
    misses ``plan.wanted`` by more than one mean cell or by more than KEEP_WITHIN of the pool, the cells are
    handed out again, each priced at the area of what the strategy picks (:func:`_spread_priced`). Otherwise the
    plan is kept, so that every strategy gets the cells random strips get wherever cells are alike enough (the
    strip widths of a 1024-px image at scale 1 differ by one 8-px cell).

    Returns the job, plan and picks that are spent."""
    spend_on = plan.spend_on
    assert spend_on is not None
    if not spend_on.size or plan.wanted <= 0:
        return job, plan, picks
    areas: dict[int, np.ndarray] = {}

    def picked_area(i: int, cells: list[int]) -> float:
        if i not in areas:
            areas[i] = np.array([c.area for c in grids.of(job.entries[i])], dtype=np.float64)
        return float(areas[i][cells].sum())

    spent = sum(picked_area(i, cells) for i, (cells, _) in picks.items())
    capacity = job.capacity[spend_on]
    cell = sum(job.entries[i].width * job.entries[i].height for i in spend_on.tolist()) / float(capacity.sum())
    everything = spent < plan.wanted and bool((plan.share[spend_on] == capacity).all())
    if abs(spent - plan.wanted) <= min(cell, KEEP_WITHIN * pool_area) or everything:
        return job, plan, picks
    if job.vectors is not None:  # the new shares may give cells to images the plan left out
        job = dataclasses.replace(job, rows_of=vector_rows(job.entries, job.config, job.vectors, spend_on, grids))
    picker = STRATEGIES[job.config.strategy].pick
    # An image's picks depend only on it and its number of cells (keyed streams; MDC clusters each image alone).
    known: dict[tuple[int, int], tuple[list[int], Any]] = {(i, len(p[0])): p for i, p in picks.items()}

    def area_at(images: np.ndarray, cells: np.ndarray) -> np.ndarray:
        todo = [(i, k) for i, k in zip(images.tolist(), cells.tolist()) if (i, k) not in known]
        if todo:
            share = np.zeros_like(job.capacity)
            share[[i for i, _ in todo]] = [k for _, k in todo]
            found = picker(dataclasses.replace(job, share=share, on_progress=None))
            known.update(((i, k), found[i]) for i, k in todo)
        return np.array(
            [picked_area(i, known[(i, k)][0]) for i, k in zip(images.tolist(), cells.tolist())], dtype=np.float64
        )

    share = _spread_priced(plan.wanted, job.capacity, spend_on, area_at, pool_stream(job.config.seed, AREA_ORDER))
    chosen = np.flatnonzero(share).tolist()
    return (
        dataclasses.replace(job, share=share),
        dataclasses.replace(plan, share=share),
        {i: known[(i, int(share[i]))] for i in chosen},
    )


def _spread_priced(
    wanted: float,
    capacity: np.ndarray,
    images: np.ndarray,
    area_at: Callable[[np.ndarray, np.ndarray], np.ndarray],
    rng: np.random.Generator,
) -> np.ndarray:
    """Cells per image so that the area of the strategy's picks comes nearest ``wanted`` px: budget.spread_area with
    every cell priced at what the strategy picks instead of the image's mean cell. The same share of every image's
    cells first, level by level as a head budget hands them out (heads.spending_order: every image's first cell,
    then every image's second, ...); in the level that would pass ``wanted``, the images that get their next cell
    are drawn as spread_area draws its extra cells (budget.fill_area), so the area is within half of that level's
    smallest step of ``wanted`` unless the level runs out."""
    share = np.zeros(len(capacity), dtype=np.int64)
    current = np.zeros(len(capacity), dtype=np.float64)  # the area of each image's picks at its cells so far
    image, cells, level = spending_order(capacity, images, rng)
    spent = 0.0
    for part in np.split(np.arange(len(image)), np.flatnonzero(np.diff(level)) + 1):
        if not part.size:
            continue
        imgs, ks = image[part], cells[part]
        steps = (
            np.asarray(area_at(imgs, ks), dtype=np.float64) - current[imgs]
        )  # MDC re-clusters: a step may move cells
        if spent + steps.sum() <= wanted:
            share[imgs], current[imgs] = ks, current[imgs] + steps
            spent += float(steps.sum())
            continue
        taken = fill_area(steps, wanted - spent, rng)
        share[imgs[taken]] = ks[taken]
        break
    return share


def _plan_listed(
    entries: Sequence[ManifestEntry],
    images: Sequence[str],
    excluded: dict[str, set[Region]],
    exclusions: Sequence[Exclusion],
    manifest_name: str,
) -> Plan:
    """An image list (select --image-list): the whole images it names, in manifest order; the budget is not used.
    An image an earlier round labeled is refused: labeling it again would count its area twice."""
    index = {e.id: i for i, e in enumerate(entries)}
    unknown = [image_id for image_id in images if image_id not in index]
    if unknown:
        raise CrowdtkError(
            f"the image list names {len(unknown)} image(s) absent from {manifest_name}, e.g. '{unknown[0]}'",
            "list images of this pool",
        )
    again = [image_id for image_id in images if image_id in excluded]
    if again:
        source = next(x.source for x in exclusions if any(e.id == again[0] for e in x.entries))
        raise CrowdtkError(
            f"the image list names {len(again)} image(s) an earlier round labeled, e.g. '{again[0]}' (in {source})",
            "leave them out of the list, or leave out --exclude",
        )
    whole = np.array(sorted(index[image_id] for image_id in set(images)), dtype=np.int64)
    return Plan(np.zeros(len(entries), dtype=np.int64), whole)


def _plan_heads(job: Job, remaining: np.ndarray) -> Plan:
    """A head budget: the strategy's picks priced at their predicted heads (:mod:`crowdtk.selection.heads`)."""
    assert job.config.budget_heads is not None and job.vectors is not None
    counts = {i: job.vectors.counts[rows].astype(np.float64) for i, rows in job.rows_of.items()}
    image_heads = np.zeros(len(job.entries), dtype=np.float64)
    for i, c in counts.items():
        image_heads[i] = c.sum()
    picker = STRATEGIES[job.config.strategy].pick

    def heads_at(images: np.ndarray, cells: np.ndarray) -> np.ndarray:
        share = np.zeros_like(job.capacity)
        share[images] = cells
        picks = picker(dataclasses.replace(job, share=share))
        return np.array([counts[i][picks[i][0]].sum() for i in images.tolist()], dtype=np.float64)

    return plan_heads(
        job.config.budget_heads, job.config.strategy, job.config.seed, job.capacity, remaining, image_heads, heads_at
    )


# --------------------------------------------------------------------------- records


def _counts_of(job: Job, i: int) -> list[float] | None:
    """Image ``i``'s predicted heads per strip, when vectors describe its cells."""
    if job.vectors is None or i not in job.rows_of or job.config.shape != "strip":
        return None
    return job.vectors.counts[job.rows_of[i]].astype(np.float64).tolist()


def _records(job: Job, plan: Plan, picks: Picks, grids: CellGrids) -> tuple[list[RegionsEntry], int, float | None]:
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
            out.append(
                RegionsEntry(
                    m.id, m.image, m.sha256, m.width, m.height, strategy, (Region(0, m.width, 0, m.height),), (detail,)
                )
            )
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


def _entry(
    m: ManifestEntry,
    strategy: str,
    cells: list[Region],
    picked: list[int],
    shape: str,
    counts: list[float] | None,
    mdc: tuple[list[int], list[float]] | None,
) -> RegionsEntry:
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
