"""``select`` from the files the user names: the vectors, earlier rounds and image list read and checked, then
:func:`select_regions`.

This is the one library call behind ``crowdtk select``: the command parses its options and
the manifest, calls :func:`select_files`, and writes and reports what it returns (:class:`SelectRun`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from crowdtk.files import STDIO, file_digest
from crowdtk.formats import ManifestEntry, load_vectors
from crowdtk.selection.checks import check_vectors, read_exclusion
from crowdtk.selection.config import SelectConfig, Selection, check_image_list
from crowdtk.selection.image_list import ListedImages, read_listed_images
from crowdtk.selection.strategies import select_regions


@dataclass
class SelectRun:
    """A selection and what its regions file's header records about it."""

    selection: Selection
    config: SelectConfig  # as run: the scale resolved from the vectors when not given
    manifest_sha256: str | None  # None: the manifest came from stdin
    listed: ListedImages | None = None  # select --image-list: the images it named

    def header_fields(self) -> dict[str, Any]:
        """The regions header's fields after the provenance (docs/formats.md), in their order."""
        c, s = self.config, self.selection
        fields = dict(
            budget=c.budget if c.budget_heads is None and c.images is None else None,  # None: not what decided
            strip_frac=c.strip_frac,
            scale=c.scale,
            shape=c.shape,
            manifest_sha256=self.manifest_sha256,
            pool_images=s.pool_images,
            pool_area=s.pool_area,
            area_fraction=s.area_fraction,
            cumulative_area_fraction=s.cumulative_area_fraction,
        )
        if c.budget_heads is not None:  # only then: an area budget's header stays as it was
            fields.update(budget_heads=c.budget_heads, expected_heads=float(f"{s.expected_heads or 0.0:.4f}"))
        return fields

    def params(self) -> dict[str, Any]:
        """The settings the regions file's provenance records after its files, in their order."""
        c = self.config
        # An area budget's params stay as they were; a head budget records budget None and budget_heads.
        budgets: dict[str, Any] = (
            {"budget": c.budget} if c.budget_heads is None else {"budget": None, "budget_heads": c.budget_heads}
        )
        if self.listed is not None:  # the list decided, not the budget
            budgets = {"budget": None, "image_list": self.listed.source, "image_list_sha256": self.listed.sha256}
        return {
            **budgets,
            "strategy": c.strategy,
            "warmup_frac": c.warmup_frac,
            "strip_frac": c.strip_frac,
            "shape": c.shape,
            "engine": c.engine,
            "scale": c.scale,
            "n_init": c.n_init,
            "workers": c.workers,
        }

    def summary(self, excluded: bool) -> str:
        """The one line ``select`` reports: regions, images, cells, area spent (``excluded``: with earlier rounds')
        and heads expected."""
        c, s = self.config, self.selection
        label = "warm-up, random" if c.warmup_frac > 0 else c.strategy
        if self.listed is not None:
            label += f", the {len(self.listed.ids)} images of {self.listed.source}"
        spent = f"{100 * s.area_fraction:.2f}% of the pool's area"
        if excluded:
            spent += f" ({100 * s.cumulative_area_fraction:.2f}% with the {s.excluded_images} excluded images' regions)"
        heads = (
            f"; {s.expected_heads:.0f} heads expected in them (vectors' predicted counts)"
            if s.expected_heads is not None
            else ""
        )
        if c.budget_heads is not None:
            heads = heads[:-1] + f", --budget-heads {c.budget_heads:g})"
        return (
            f"selected {sum(len(e.regions) for e in s.entries)} regions in {len(s.entries)} of {s.pool_images} images "
            f"({label}, {s.cells} {c.shape}s): {spent}{heads}"
        )


def select_files(
    entries: Sequence[ManifestEntry],
    manifest: str,
    config: SelectConfig,
    *,
    scale: float | None = None,
    vectors: str | os.PathLike[str] | None = None,
    exclude: Sequence[str | os.PathLike[str]] = (),
    image_list: str | os.PathLike[str] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> SelectRun:
    """Select from the pool ``entries`` of the manifest file ``manifest`` ('-': stdin).

    ``scale`` replaces ``config.scale``; None takes the vectors' scale (else 1), so that cells
    match the strips the vectors describe without repeating --scale. ``exclude``: regions or
    labels files of earlier rounds. ``image_list``: a list of the whole images to label
    (:mod:`crowdtk.selection.image_list`); it replaces ``config.images``, and the budget is not used."""
    listed = None
    if image_list is not None:
        check_image_list(config.strategy)  # a usage error, before the list is read
        listed = read_listed_images(image_list, entries, manifest)
        config = dataclasses.replace(config, images=listed.ids)
    digest = None if manifest == STDIO else file_digest(manifest)
    data = None
    vectors_header: dict[str, Any] = {}
    if vectors is not None:
        vectors_header, data = load_vectors(vectors)
    config = dataclasses.replace(config, scale=float(vectors_header.get("scale", 1.0)) if scale is None else scale)
    config.validate()  # before the vectors are compared with the settings
    if data is not None:
        check_vectors(vectors_header, data, str(vectors), digest, manifest, entries, config)
    exclusions = [read_exclusion(path) for path in exclude]
    selection = select_regions(entries, config, data, exclusions, manifest_name=manifest, on_progress=on_progress)
    if listed is not None:
        selection.notes[:0] = listed.notes
    return SelectRun(selection, config, digest, listed)
