"""Review rounds: comparing two labelings of the same regions point by point (``crowdtk labels diff``), and
keeping a reviewed package's untouched points exactly as they were.

The matching rule. Per region, the points of A (before) and B (after) are paired one to one so
that the sum of the paired distances plus :data:`UNPAIRED_PX` (8 px) for every point left
unpaired is smallest; only points at most :data:`MOVED_PX` (16 px) apart can be paired. So two
points closer than 16 px are always worth pairing rather than leaving both alone, and where
several pairings are possible the closest overall wins (a head that stayed put stays
"unchanged" even when a neighbour was moved next to it). A pair at most :data:`UNCHANGED_PX`
(4 px) apart is *unchanged*, a pair farther apart is *moved*; an unpaired point of A is
*removed*, an unpaired point of B *added*. The pairing is :func:`crowdtk.matching.match_points`, which
``eval --localization`` shares.

Regions are compared as rectangles: an image's records are the union of its regions in A and
in B, A's order first; a point belongs to the first of them, in that order, that its own file
labeled and that contains it. A region labeled in only one file lists its points as removed
(only in A) or added (only in B), with ``labeled`` saying which; points outside every region of
their file (a hand-edited file) are not compared, only counted.

Importing a review package (:func:`snap_found`, :func:`in_prefilled_order`): a returned point
within :data:`SNAP_PX` (0.01 px) of a pre-filled point is that point, with its exact
coordinates (Label Studio keeps percent of the image size, CVAT writes two decimals), and the
labels keep the pre-filled points' order, new points after them; so a package imported
without edits gives the labels it was exported from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crowdtk import matching
from crowdtk.errors import CrowdtkError
from crowdtk.formats import LabelsEntry, Region
from crowdtk.labeling.common import Found

UNCHANGED_PX = 4.0  # a pair at most this far apart is the same point
MOVED_PX = 16.0  # the farthest two points can be apart and still be one point, moved
UNPAIRED_PX = MOVED_PX / 2  # the cost of leaving a point unpaired: pairing pays for any pair within MOVED_PX
SNAP_PX = 0.01  # import of a review package: a returned point this close to a pre-filled one is that point

BOTH, ONLY_A, ONLY_B = "both", "a", "b"


# --------------------------------------------------------------------------- matching


def match_points(a: np.ndarray, b: np.ndarray, radius: float = MOVED_PX) -> tuple[np.ndarray, np.ndarray]:
    """The one-to-one pairing of the module's rule (:func:`crowdtk.matching.match_points` at ``radius``, 16 px):
    indices ``(i, j)`` of the paired points of ``a`` and ``b``."""
    return matching.match_points(a, b, radius)


# --------------------------------------------------------------------------- labels diff


@dataclass
class RegionDiff:
    """One region of one image: what B added, removed and moved against A, and how many points it left alone."""

    id: str
    region: Region
    labeled: str  # BOTH, or ONLY_A / ONLY_B: the region is labeled in that file only
    added: np.ndarray  # (K, 2) points of B
    removed: np.ndarray  # (K, 2) points of A
    moved: list[tuple[np.ndarray, np.ndarray, float]]  # (point of A, point of B, distance)
    unchanged: int

    def to_record(self) -> dict[str, Any]:
        r = self.region
        return {
            "id": self.id,
            "region": {"x0": r.x0, "x1": r.x1, "y0": r.y0, "y1": r.y1},
            "labeled": self.labeled,
            "added": len(self.added),
            "removed": len(self.removed),
            "moved": len(self.moved),
            "unchanged": self.unchanged,
            "points": {
                "added": [[float(x), float(y)] for x, y in self.added],
                "removed": [[float(x), float(y)] for x, y in self.removed],
                "moved": [
                    {"from": [float(p[0]), float(p[1])], "to": [float(q[0]), float(q[1])], "distance": float(d)}
                    for p, q, d in self.moved
                ],
            },
        }


@dataclass
class LabelsDiff:
    """Every region's :class:`RegionDiff`, in the order of the records, and the points that were not compared."""

    regions: list[RegionDiff] = field(default_factory=list)
    outside: dict[str, int] = field(default_factory=dict)  # file name -> points outside every region of their file

    def totals(self) -> dict[str, int]:
        """Points added, removed, moved and unchanged over all regions."""
        return {
            "added": sum(len(r.added) for r in self.regions),
            "removed": sum(len(r.removed) for r in self.regions),
            "moved": sum(len(r.moved) for r in self.regions),
            "unchanged": sum(r.unchanged for r in self.regions),
        }

    @property
    def images(self) -> int:
        return len({r.id for r in self.regions})

    def only(self, which: str) -> int:
        return sum(r.labeled == which for r in self.regions)


def _by_region(entry: LabelsEntry | None, regions: Sequence[Region]) -> tuple[list[np.ndarray], int]:
    """The points of ``entry`` per region of ``regions`` (the first of its own regions that contains each), and how
    many lie in none."""
    if entry is None:
        return [np.zeros((0, 2)) for _ in regions], 0
    left = np.ones(len(entry.points), dtype=bool)
    parts = []
    for region in regions:
        take = (
            left & region.contains(entry.points) if region in entry.regions else np.zeros(len(entry.points), dtype=bool)
        )
        parts.append(entry.points[take])
        left &= ~take
    return parts, int(left.sum())


def _compare(image_id: str, region: Region, labeled: str, a: np.ndarray, b: np.ndarray) -> RegionDiff:
    i, j = match_points(a, b)
    distance = np.linalg.norm(a[i] - b[j], axis=1) if len(i) else np.zeros(0)
    moved = distance > UNCHANGED_PX
    removed = np.ones(len(a), dtype=bool)
    removed[i] = False
    added = np.ones(len(b), dtype=bool)
    added[j] = False
    return RegionDiff(
        image_id,
        region,
        labeled,
        b[added],
        a[removed],
        [(a[p], b[q], d) for p, q, d in zip(i[moved], j[moved], distance[moved])],
        int((~moved).sum()),
    )


def diff_labels(a: Sequence[LabelsEntry], b: Sequence[LabelsEntry], a_name: str = "A", b_name: str = "B") -> LabelsDiff:
    """Compare the labels ``b`` with ``a`` region by region (the rule: the module's docstring)."""
    by_a, by_b = {e.id: e for e in a}, {e.id: e for e in b}
    result = LabelsDiff()
    outside = {a_name: 0, b_name: 0}
    for image_id in [*by_a, *(i for i in by_b if i not in by_a)]:
        ea, eb = by_a.get(image_id), by_b.get(image_id)
        if ea is not None and eb is not None and (ea.sha256, ea.width, ea.height) != (eb.sha256, eb.width, eb.height):
            raise CrowdtkError(
                f"{b_name}: image '{image_id}' differs from the one in {a_name} (sha256 or size)",
                "compare labels of the same images",
            )
        regions = list(ea.regions if ea is not None else ())
        regions += [r for r in (eb.regions if eb is not None else ()) if r not in regions]
        parts_a, off_a = _by_region(ea, regions)
        parts_b, off_b = _by_region(eb, regions)
        outside[a_name] += off_a
        outside[b_name] += off_b
        for region, pa, pb in zip(regions, parts_a, parts_b):
            in_a, in_b = ea is not None and region in ea.regions, eb is not None and region in eb.regions
            result.regions.append(
                _compare(image_id, region, BOTH if in_a and in_b else ONLY_A if in_a else ONLY_B, pa, pb)
            )
    result.outside = {name: n for name, n in outside.items() if n}
    return result


# --------------------------------------------------------------------------- importing a review package


def snap_found(found: Found, prefilled: Mapping[str, np.ndarray], tolerance: float = SNAP_PX) -> Found:
    """``found`` with each returned point within ``tolerance`` of a pre-filled point of its image replaced by that
    point (one to one, nearest first)."""
    from scipy.spatial import cKDTree

    snapped: Found = {}
    for image_id, parts in found.items():
        originals = prefilled.get(image_id)
        if originals is None or not len(originals):
            snapped[image_id] = parts
            continue
        tree, taken = cKDTree(originals), set()
        snapped[image_id] = []
        for k, points in parts:
            points = np.array(points, dtype=np.float64).reshape(-1, 2)
            if len(points):
                distance, nearest = tree.query(points, distance_upper_bound=tolerance)
                for n in np.argsort(distance, kind="stable"):
                    if np.isfinite(distance[n]) and nearest[n] not in taken:
                        taken.add(int(nearest[n]))
                        points[n] = originals[nearest[n]]
            snapped[image_id].append((k, points))
    return snapped


def in_prefilled_order(entries: Sequence[LabelsEntry], prefilled: Mapping[str, np.ndarray]) -> list[LabelsEntry]:
    """``entries`` with each image's points ordered as its pre-filled points, the points not among them after those
    in their order."""
    ordered = []
    for entry in entries:
        originals = prefilled.get(entry.id)
        if originals is None or not len(entry.points):
            ordered.append(entry)
            continue
        place: dict[tuple[float, float], list[int]] = {}
        for n, point in enumerate(map(tuple, originals.tolist())):
            place.setdefault(point, []).append(n)
        rank = [place[p].pop(0) if place.get(p) else len(originals) for p in map(tuple, entry.points.tolist())]
        points = entry.points[np.argsort(rank, kind="stable")]
        ordered.append(
            LabelsEntry(entry.id, entry.image, entry.sha256, entry.width, entry.height, entry.regions, points)
        )
    return ordered
