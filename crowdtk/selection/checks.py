"""The inputs of ``select``, checked before anything is chosen: earlier rounds' files and strip vectors.

Each check refuses, with a :class:`~crowdtk.errors.CrowdtkError` naming the file, inputs that
would silently select the wrong regions: an earlier round of another pool (its area would be
subtracted from this pool's budget), or vectors of another manifest, other image bytes or
another strip geometry (MDC and MAX would rank strips that are not the ones written).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from crowdtk.errors import CrowdtkError
from crowdtk.formats import (
    LABELS,
    LabelsEntry,
    ManifestEntry,
    Region,
    RegionsEntry,
    StripVectors,
    peek_format,
    read_labels,
    read_regions,
)
from crowdtk.selection.budget import CellGrids
from crowdtk.selection.config import STRATEGIES, SelectConfig


@dataclass
class Exclusion:
    """Images an earlier round already labeled (from a regions or labels file)."""

    source: str
    entries: list[RegionsEntry] | list[LabelsEntry]


def read_exclusion(path: str | os.PathLike[str]) -> Exclusion:
    """An earlier round's regions or labels file (the format is read from its header)."""
    fmt = peek_format(path)
    if fmt is None:
        raise CrowdtkError(
            f"{path}: not a crowdtk regions or labels file",
            "pass the regions.jsonl or labels.jsonl of the earlier round",
        )
    if fmt == LABELS:
        return Exclusion(str(path), read_labels(path)[1])
    return Exclusion(str(path), read_regions(path)[1])


def check_exclusion(exclusion: Exclusion, entries: Sequence[ManifestEntry], manifest_name: str) -> None:
    """Refuse an earlier round's file of another pool: every image it names must be in the manifest,
    with the same bytes."""
    by_id = {e.id: e for e in entries}
    unknown = [x.id for x in exclusion.entries if x.id not in by_id]
    if unknown:
        raise CrowdtkError(
            f"{exclusion.source}: names {len(unknown)} image(s) absent from {manifest_name}, e.g. '{unknown[0]}'",
            "pass the regions or labels of the same pool",
        )
    for x in exclusion.entries:
        if x.sha256 != by_id[x.id].sha256:
            raise CrowdtkError(
                f"{exclusion.source}: image '{x.id}' differs from the one in {manifest_name} (sha256)",
                "pass the regions or labels of the same pool",
            )


def excluded_ids(path: str | os.PathLike[str], entries: Sequence[ManifestEntry], manifest_name: str) -> set[str]:
    """Image ids of a regions or labels file (the images already labeled); refused when it is of another pool."""
    exclusion = read_exclusion(path)
    check_exclusion(exclusion, entries, manifest_name)
    return {entry.id for entry in exclusion.entries}


def check_vectors(
    header: dict[str, Any],
    data: StripVectors,
    source: str,
    manifest_digest: str | None,
    manifest_name: str,
    entries: Sequence[ManifestEntry],
    config: SelectConfig,
) -> None:
    """Refuse vectors of another manifest, another strip geometry, or other image bytes."""
    if manifest_digest is None:
        raise CrowdtkError(
            f"{manifest_name}: --vectors needs the manifest as a file (its digest is compared with the vectors')",
            "pass the manifest file instead of '-'",
        )
    if header.get("manifest_sha256") != manifest_digest:
        raise CrowdtkError(
            f"{source}: a vectors file from another manifest (its "
            f"manifest_sha256 differs from {manifest_name}'s digest)",
            "compute the vectors from this manifest with crowdtk vectors, or pass the manifest they were made from",
        )
    frac, scale = header.get("strip_frac"), float(header.get("scale", 1.0))
    if frac is not None and abs(float(frac) - config.strip_frac) > 1e-12:
        raise CrowdtkError(
            f"{source}: vectors describe strips of strip_frac {frac}, not --strip-frac {config.strip_frac}",
            f"pass --strip-frac {frac}, or recompute the vectors",
        )
    if abs(scale - config.scale) > 1e-12:
        raise CrowdtkError(
            f"{source}: vectors describe strips on the cell grid of --scale {scale:g}, not --scale {config.scale:g}",
            f"pass --scale {scale:g}, or recompute the vectors with --scale {config.scale:g}",
        )
    by_id = {e.id: e for e in entries}
    for image_id, sha in zip(data.ids.tolist(), data.sha256.tolist()):
        entry = by_id.get(image_id)
        if entry is None:
            raise CrowdtkError(
                f"{source}: has vectors of image '{image_id}', absent from {manifest_name}",
                "pass the manifest the vectors were made from",
            )
        if entry.sha256 != sha:
            raise CrowdtkError(
                f"{source}: image '{image_id}' changed since its vectors were computed (sha256 differs)",
                "recompute the vectors with crowdtk vectors",
            )


def check_request(
    entries: Sequence[ManifestEntry], config: SelectConfig, vectors: StripVectors | None, manifest_name: str
) -> None:
    """Refuse an empty pool, and a strategy that needs vectors (MAX, MDC) or a head budget without them."""
    if not entries:
        raise CrowdtkError(f"{manifest_name}: no images", "select from a manifest with images")
    if STRATEGIES[config.strategy].needs_vectors and vectors is None:
        raise CrowdtkError(
            f"--strategy {config.strategy} needs --vectors",
            "compute strip vectors with crowdtk vectors and pass them with --vectors",
        )
    if config.budget_heads is not None and vectors is None:
        raise CrowdtkError(
            "--budget-heads needs --vectors", "the heads are the vectors' predicted counts: pass them with --vectors"
        )


def earlier_rounds(
    exclusions: Sequence[Exclusion], entries: Sequence[ManifestEntry], manifest_name: str
) -> dict[str, set[Region]]:
    """Image id -> its regions in the earlier rounds: a union over the files, so a file named twice counts once."""
    excluded: dict[str, set[Region]] = {}
    for exclusion in exclusions:
        check_exclusion(exclusion, entries, manifest_name)
        for x in exclusion.entries:
            excluded.setdefault(x.id, set()).update(x.regions)
    return excluded


def vector_rows(
    entries: Sequence[ManifestEntry], config: SelectConfig, vectors: StripVectors, targets: np.ndarray, grids: CellGrids
) -> dict[int, np.ndarray]:
    """Image index -> the rows of its strips in ``vectors``, left to right, for the ``targets`` images.

    The strategies that need vectors (MAX, MDC) and a head budget refuse targets without vectors; the others
    (random, none-or-all) under an area budget only lose the predicted counts."""
    rows_of: dict[int, np.ndarray] = {}
    # Rows grouped by image with one stable sort, instead of a scan of all rows per image.
    order = np.argsort(vectors.strip_image, kind="stable")
    bounds = np.searchsorted(vectors.strip_image[order], np.arange(len(vectors.ids) + 1))
    vec_index = {image_id: v for v, image_id in enumerate(vectors.ids.tolist())}
    missing = [entries[i].id for i in targets if entries[i].id not in vec_index]
    if missing and (STRATEGIES[config.strategy].needs_vectors or config.budget_heads is not None):
        raise CrowdtkError(
            f"the vectors have no strips of {len(missing)} image(s) to select from, e.g. '{missing[0]}'",
            "compute the vectors over the images not yet labeled (crowdtk vectors with the same --exclude)",
        )
    for i in targets:
        v = vec_index.get(entries[i].id)
        if v is None:
            continue
        rows = order[bounds[v] : bounds[v + 1]]
        rows = rows[np.argsort(vectors.strip_x0[rows], kind="stable")]
        rows_of[int(i)] = rows
        if config.shape == "strip":
            x0, x1 = grids.edges(entries[i])
            if not (np.array_equal(vectors.strip_x0[rows], x0) and np.array_equal(vectors.strip_x1[rows], x1)):
                raise CrowdtkError(
                    f"the vectors' strips of image '{entries[i].id}' are not this strip geometry "
                    f"(--strip-frac {config.strip_frac}, --scale {config.scale:g})",
                    "recompute the vectors, or match --strip-frac and --scale",
                )
    return rows_of
