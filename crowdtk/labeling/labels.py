"""Labels that need no labeling tool: the simulated labeler (oracle), merging rounds, and what one import returns.

:func:`oracle_labels` fills the regions with a manifest's ground-truth points (the paper's
simulated labeler); :func:`merge_labels` combines rounds (warm-up + MDC) into one labels file;
:class:`ImportRound` is what ``crowdtk import`` writes and reports, built by
:func:`crowdtk.labeling.import_round`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crowdtk.data import check_unchanged, read_points_on_image
from crowdtk.errors import CrowdtkError
from crowdtk.formats import LabelsEntry, ManifestEntry, RegionsEntry, read_labels
from crowdtk.labeling.common import Found
from crowdtk.labeling.reading import ImportResult, assemble, whole


def oracle_labels(
    entries: Sequence[RegionsEntry],
    manifest: Sequence[ManifestEntry],
    manifest_name: str = "MANIFEST",
    regions_name: str = "REGIONS",
    on_progress: Callable[[int], None] | None = None,
) -> ImportResult:
    """The simulated labeler: fill each region with the ground-truth points of the manifest."""
    by_id = {m.id: m for m in manifest}
    unknown = [e.id for e in entries if e.id not in by_id]
    if unknown:
        raise CrowdtkError(
            f"{regions_name}: names {len(unknown)} image(s) absent from {manifest_name}, e.g. '{unknown[0]}'",
            "pass the manifest the regions were selected from",
        )
    found: Found = {}
    for entry in entries:
        m = by_id[entry.id]
        if m.sha256 != entry.sha256 or (m.width, m.height) != (entry.width, entry.height):
            raise CrowdtkError(
                f"{regions_name}: image '{entry.id}' differs from the one in {manifest_name}",
                "pass the manifest the regions were selected from",
            )
        if m.points is None:
            raise CrowdtkError(
                f"{manifest_name}: image '{entry.id}' has no points file",
                "the oracle needs ground-truth points for every selected image",
            )
        # The labels go with the image file: points of an image replaced since indexing would be
        # trained on its new pixels.
        check_unchanged(m.image, m.sha256, m.size_bytes, m.mtime_ns)
        points, _ = read_points_on_image(m.points, m.width, m.height, m.points_sha256)
        found[entry.id] = whole(entry, points)
        if on_progress:
            on_progress(1)
    result = ImportResult([])
    assemble(entries, found, result)
    result.dropped = {}  # ground truth outside the regions is simply not labeled
    return result


def merge_labels(new: Sequence[LabelsEntry], earlier: Sequence[tuple[str, Sequence[LabelsEntry]]]) -> list[LabelsEntry]:
    """Combine earlier rounds' labels with new ones: one record per image, regions and points united.

    An image in several files keeps all distinct regions; a point of a later file is added only
    when no earlier region of that image already covered it (no double counting).
    """
    merged: dict[str, LabelsEntry] = {}
    order: list[str] = []
    for source, entries in [*earlier, ("the new labels", new)]:
        seen_here: set[str] = set()
        for entry in entries:
            if entry.id in seen_here:
                raise CrowdtkError(f"{source}: image '{entry.id}' appears twice", "regenerate the labels")
            seen_here.add(entry.id)
            old = merged.get(entry.id)
            if old is None:
                merged[entry.id] = entry
                order.append(entry.id)
                continue
            if old.sha256 != entry.sha256:
                raise CrowdtkError(
                    f"{source}: image '{entry.id}' differs from the one in the labels merged before (sha256)",
                    "merge labels of the same images",
                )
            covered = np.zeros(len(entry.points), dtype=bool)
            for region in old.regions:
                covered |= region.contains(entry.points)
            regions = old.regions + tuple(r for r in entry.regions if r not in old.regions)
            points = np.concatenate([old.points, entry.points[~covered]])
            merged[entry.id] = LabelsEntry(old.id, old.image, old.sha256, old.width, old.height, regions, points)
    return [merged[i] for i in order]


def _some(items: Sequence[str]) -> str:
    """The first five of a list for a one-line message."""
    return ", ".join(items[:5]) + (", …" if len(items) > 5 else "")


@dataclass
class ImportRound:
    """One import: this round's labels (``result``), the labels file's entries (``labels``: merged with earlier rounds),
    the sums the CLI reports."""

    result: ImportResult
    labels: list[LabelsEntry]
    merged: bool  # earlier rounds were merged in
    pool_area: int | None = None  # the oracle's manifest: the pool's total image area
    notes: list[str] = field(default_factory=list)  # warnings: what was left out, dropped or ignored

    @classmethod
    def of(
        cls,
        result: ImportResult,
        earlier: Sequence[tuple[str, Sequence[LabelsEntry]]],
        unit: str,
        regions_name: str,
        pool_area: int | None = None,
    ) -> ImportRound:
        """Merge ``result`` with the ``earlier`` rounds and note what did not make it into the labels."""
        notes = list(result.notes)
        if result.missing:
            notes.append(f"left out {len(result.missing)} unlabeled {unit}(s): {_some(result.missing)}")
        if result.dropped:
            notes.append(
                f"dropped {sum(result.dropped.values())} point(s) outside their regions in {len(result.dropped)} "
                "image(s): " + ", ".join(f"{k} ({v})" for k, v in list(result.dropped.items())[:5])
            )
        if result.unknown:
            notes.append(
                f"ignored annotations of {len(result.unknown)} image(s) not in {regions_name}: "
                + ", ".join(result.unknown[:5])
            )
        if result.ignored:
            notes.append(f"ignored {result.ignored} annotation(s) that are not 'head' points")
        if result.converted:
            kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(result.converted.items()))
            notes.append(
                f"took {sum(result.converted.values())} 'head' shape(s) that are not points as one head each, "
                f"at the shape's centre ({kinds})"
            )
        labels = merge_labels(result.entries, earlier) if earlier else result.entries
        return cls(result, labels, bool(earlier), pool_area, notes)

    @property
    def regions(self) -> int:
        return sum(len(e.regions) for e in self.result.entries)

    @property
    def area(self) -> int:
        """The area labeled in this round."""
        return sum(e.labeled_area for e in self.result.entries)

    @property
    def image_area(self) -> int:
        """The total area of the images labeled in this round."""
        return sum(e.width * e.height for e in self.result.entries)

    @property
    def labels_area(self) -> int:
        """The area labeled in all rounds together."""
        return sum(e.labeled_area for e in self.labels)

    @property
    def labels_heads(self) -> int:
        return sum(len(e.points) for e in self.labels)


def earlier_rounds(
    paths: Sequence[str | Path], pool: str | None, regions_name: str
) -> list[tuple[str, list[LabelsEntry]]]:
    """The labels files of earlier rounds (import --merge), refused when one is of another pool than
    this round's regions (``pool``: their manifest_sha256). Files from before the field was recorded
    are taken as they are."""
    rounds = []
    for path in paths:
        header, labels = read_labels(path)
        other = header.get("manifest_sha256")
        if pool and other and other != pool:
            raise CrowdtkError(
                f"{path}: labels of another pool (their manifest_sha256 differs from {regions_name}'s)",
                "merge the labels of earlier rounds over the same manifest",
            )
        rounds.append((str(path), labels))
    return rounds
