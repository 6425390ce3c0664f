"""One-to-one matching of two point sets within a radius: ``labels diff`` pairs a labeling's points with a
reviewed one's, and ``eval --localization`` predicted heads with the ground truth.

The rule. The points of ``a`` and ``b`` are paired one to one so that the sum of the paired distances
plus ``radius / 2`` for every point left unpaired is smallest; only points at most ``radius`` apart can
be paired. A pair never costs more than leaving both of its points unpaired, so two points within
``radius`` of each other with no other candidate are always paired, and where several pairings are
possible the closest overall wins. This is the assignment problem
(``scipy.optimize.linear_sum_assignment``'s), solved apart for each group of points that pairs within
``radius`` link, so dense crowds of thousands of heads take milliseconds.

It is not always the pairing with the most pairs: a point of ``a`` at 1 px from a point of ``b``
whose only other candidates are each at ``radius`` from one of them is paired with the close one
(cost 1 + radius) rather than giving two pairs at ``radius`` (cost 2 radius).
"""

from __future__ import annotations

import numpy as np

MAX_DENSE_PAIRS = 3000 * 3000  # a group of linked points larger than this is matched on its sparse graph (memory)


def match_points(a: np.ndarray, b: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """The one-to-one pairing of the module's rule: indices ``(i, j)`` of the paired points of ``a`` and ``b``,
    in increasing ``i``.

    Pairs are at most ``radius`` apart; an unpaired point costs ``radius / 2``, a pair its distance.
    """
    none = np.zeros(0, dtype=np.int64)
    if not len(a) or not len(b):
        return none, none
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    pairs = cKDTree(a).sparse_distance_matrix(cKDTree(b), radius, output_type="ndarray")
    i, j = pairs["i"].astype(np.int64), pairs["j"].astype(np.int64)
    if not len(i):
        return none, none
    n, m = len(a), len(b)
    # Points that no chain of pairs within `radius` links are independent problems. Each group of linked points
    # is solved as a dense assignment, in which a pair farther than `radius` costs a hair more than leaving both
    # points unpaired (radius/2 each; the hair so that a pair exactly `radius` apart is paired) and is dropped.
    # Not scipy's sparse min_weight_full_bipartite_matching for all: with scipy 1.17 it never returned on a
    # 76-point region of Part B pre-labels, where the dense one takes 0.1 ms. It remains for a group too large
    # for a dense matrix in bounded memory (3000 points in one group: 1.9 s, 72 MB dense).
    graph = coo_matrix((np.ones(len(i)), (i, n + j)), shape=(n + m, n + m))
    _, group = connected_components(graph, directed=False)
    by_a, by_b = np.argsort(group[:n], kind="stable"), np.argsort(group[n:], kind="stable")
    sorted_a, sorted_b = group[:n][by_a], group[n:][by_b]
    found_i, found_j = [], []
    for g in np.unique(group[i]):  # the groups holding a pair
        rows = by_a[np.searchsorted(sorted_a, g) : np.searchsorted(sorted_a, g, side="right")]
        cols = by_b[np.searchsorted(sorted_b, g) : np.searchsorted(sorted_b, g, side="right")]
        solve = _dense_pairs if len(rows) * len(cols) <= MAX_DENSE_PAIRS else _sparse_pairs
        r, c = solve(a[rows], b[cols], radius)
        found_i.append(rows[r])
        found_j.append(cols[c])
    order = np.argsort(np.concatenate(found_i), kind="stable")
    return np.concatenate(found_i)[order], np.concatenate(found_j)[order]


def _dense_pairs(a: np.ndarray, b: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    from scipy.optimize import linear_sum_assignment

    cost = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2)
    cost = np.where(cost <= radius, cost, radius * (1 + 1e-9))
    r, c = linear_sum_assignment(cost)
    keep = cost[r, c] <= radius
    return r[keep], c[keep]


def _sparse_pairs(a: np.ndarray, b: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching
    from scipy.spatial import cKDTree

    pairs = cKDTree(a).sparse_distance_matrix(cKDTree(b), radius, output_type="ndarray")
    i, j, d = pairs["i"].astype(np.int64), pairs["j"].astype(np.int64), pairs["v"]
    n, m = len(a), len(b)
    # Rows: a's points, then a stand-in per point of b; columns: b's points, then a stand-in per point of a.
    # A point paired with its stand-in is unpaired (cost radius/2, a hair more as above); the stand-ins of a
    # pair (i, j) pair with each other at no cost. Every weight is one more than its cost: a full matching has
    # n + m edges whatever it pairs, and the graph needs no zeros.
    unpaired = radius / 2 * (1 + 1e-9) + 1.0
    rows = np.concatenate([i, np.arange(n), n + j, n + np.arange(m)])
    cols = np.concatenate([j, m + np.arange(n), m + i, np.arange(m)])
    weights = np.concatenate([d + 1.0, np.full(n, unpaired), np.ones(len(i)), np.full(m, unpaired)])
    _, partner = min_weight_full_bipartite_matching(coo_matrix((weights, (rows, cols)), shape=(n + m, m + n)).tocsr())
    partner = partner[:n]
    paired = partner < m
    return np.flatnonzero(paired), partner[paired].astype(np.int64)
