"""A head budget (``--budget-heads N``): spend an expected number of heads instead of a share of the area.

Annotation cost is clicks, not area: at the same area MDC labels fewer heads than MAX. A
head budget prices every candidate strip at the warm-up counter's predicted heads in it
(``StripVectors.counts``) and spends until the heads expected in this file's regions reach N.

The strategies keep their meaning: they choose which strips of an image to label, and in
which order the cells are handed out; the budget only decides when to stop. Cells are handed
out as the area budget spreads them, the same share of every image's cells: level by level
(every image's first cell, then every image's second, ...; on images with different numbers
of cells, in the order of the share of the image they bring it to), within a level in an
order of the images drawn by the seed (:data:`~crowdtk.selection.streams.HEAD_ORDER`). A
step gives one image one cell more, and costs what the strategy's picks with that many cells
predict minus what they predicted before: for random and max one more strip's count (their
picks with k + 1 cells are those with k plus one), for MDC the difference between its
k + 1 and its k picks (MDC re-clusters the image). ``none-or-all`` spends whole images
priced at their predicted heads (the sum over their strips), drawn by the seed as the area
budget draws them (:func:`~crowdtk.selection.budget.fill_area`, with heads for areas).

Earlier rounds (``--exclude``) only leave their images out: their heads are not subtracted
from N, which counts the heads expected in this file's regions (a labels file's heads are
clicks made, a regions file's are predictions or unknown; the two do not add up).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from crowdtk.selection.budget import Plan, fill_area
from crowdtk.selection.config import STRATEGIES
from crowdtk.selection.streams import HEAD_ORDER, WHOLE_IMAGES, pool_stream

# (images, cells per image) -> the heads the strategy's picks of that many cells predict in each image
HeadsAt = Callable[[np.ndarray, np.ndarray], np.ndarray]


def spending_order(
    capacity: np.ndarray, remaining: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The steps a head budget takes, in order: (image, its cells after the step, level).

    Steps are ordered by the share of the image's cells they bring it to, then by the seed's
    order of the images. ``level`` groups the steps of one level (for equal capacities, step
    k of every image), so that a strategy can price a whole level in one batch; an image
    takes at most one step per level."""
    capacity = np.asarray(capacity, dtype=np.int64)
    visit = remaining[rng.permutation(len(remaining))]
    caps = capacity[visit]
    image = np.repeat(visit, caps)
    position = np.repeat(np.arange(len(visit)), caps)
    starts = np.repeat(np.cumsum(caps) - caps, caps)
    cells = np.arange(int(caps.sum()), dtype=np.int64) - starts + 1
    cap = capacity[image]
    order = np.lexsort((position, cells / cap))  # share first (equal fractions are equal floats), then the seed's order
    widest = int(caps.max()) if caps.size else 1
    level = -(
        -(cells * widest) // cap
    )  # ceil(share x widest): increasing with the share, one value per step of an image
    return image[order], cells[order], level[order]


def spend_heads(
    wanted: float, capacity: np.ndarray, remaining: np.ndarray, heads_at: HeadsAt, rng: np.random.Generator
) -> tuple[np.ndarray, float, bool]:
    """Cells per image so that the heads the strategy's picks predict come nearest ``wanted``.

    Returns (cells per image, the heads expected, whether ``wanted`` was reached)."""
    share = np.zeros(len(capacity), dtype=np.int64)
    current = np.zeros(len(capacity), dtype=np.float64)  # heads of each image's picks at its cells so far
    image, cells, level = spending_order(capacity, remaining, rng)
    bounds = np.flatnonzero(np.diff(level)) + 1
    spent = 0.0
    for part in np.split(np.arange(len(image)), bounds):
        if not part.size:
            continue
        imgs, ks = image[part], cells[part]
        heads = np.asarray(heads_at(imgs, ks), dtype=np.float64)
        total = spent + np.cumsum(heads - current[imgs])
        current[imgs] = heads
        crossed = np.flatnonzero(total >= wanted)
        if crossed.size:
            # Stop at the step whose heads cross N, or just before it, whichever total is nearer
            # N (a tie takes the step, as fill_area rounds a tie up): the heads spent are then
            # within half of one step of N, for random and max half of one strip's count. Steps
            # are not skipped to find a cheaper one that still fits: that would change which
            # strips the strategy labels (max would trade its largest counts for small ones).
            j = int(crossed[0])
            before = total[j - 1] if j else spent
            take = j + 1 if abs(total[j] - wanted) <= abs(before - wanted) else j
            share[imgs[:take]] = ks[:take]
            return share, float(total[take - 1]) if take else spent, True
        share[imgs] = ks
        spent = float(total[-1])
    return share, spent, False


def plan_heads(
    wanted: float,
    strategy: str,
    seed: int,
    capacity: np.ndarray,
    remaining: np.ndarray,
    image_heads: np.ndarray,
    heads_at: HeadsAt,
) -> Plan:
    """How a head budget of ``wanted`` heads is spent on the ``remaining`` images.

    ``image_heads``: predicted heads per image of the pool (the prices of a whole-image strategy, none-or-all);
    ``heads_at``: the strategy's heads at a number of cells (the other strategies)."""
    plan = Plan(np.zeros(len(capacity), dtype=np.int64), np.zeros(0, dtype=np.int64))
    if STRATEGIES[strategy].whole_images:  # none-or-all
        prices = np.asarray(image_heads, dtype=np.float64)[remaining]
        taken = fill_area(prices, wanted, pool_stream(seed, WHOLE_IMAGES))
        plan.whole = np.sort(remaining[taken])
        reached, available = bool(prices[taken].sum() >= wanted or not taken.all()), float(prices.sum())
    else:
        plan.share, _, reached = spend_heads(wanted, capacity, remaining, heads_at, pool_stream(seed, HEAD_ORDER))
        available = float(np.asarray(image_heads, dtype=np.float64)[remaining].sum())
    if not reached:
        plan.notes.append(
            f"--budget-heads {wanted:g}: the vectors predict only {available:.0f} heads in the "
            f"{len(remaining)} images left; all are selected"
        )
    return plan
