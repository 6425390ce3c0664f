"""The labeling loop: regions go out to labeling tools (``export``) and come back as labels (``import``).

Export folders (``crowdtk export REGIONS --to FORMAT -o DIR``) hold ``README.txt`` (the
instruction and the steps for the tool), ``index.json`` (a ``labeling-export`` header, the
tool, the instruction, and per image its file and regions; for crops each crop's offset) and
the tool's own files, described in its module: :mod:`~crowdtk.labeling.crops`,
:mod:`~crowdtk.labeling.labelstudio`, :mod:`~crowdtk.labeling.cvat`,
:mod:`~crowdtk.labeling.labelme`.

Images are matched to the regions file by ``crowdtk_id`` (Label Studio), else by file name
(``images/<file>``), else by stem = image id. No file outside the folder of the labeled files
(or the export folder holding it) is opened: a LabelMe ``imagePath`` there is matched by name
alone, a CVAT or Label Studio reference there is refused (see :mod:`~crowdtk.labeling.reading`).
A ``head`` drawn as a shape around the head counts as one point at its centre (the rule is in
:mod:`~crowdtk.labeling.reading`; the import reports how many were converted).
Points go to full-image pixels; points outside their image's regions are dropped and
counted. An image (crops: a region) without any returned annotation is an error unless
``allow_missing``; then it is left out of the labels, never taken as "no heads".

Review rounds (:mod:`~crowdtk.labeling.diff`): a labels file goes where a regions file goes
(:func:`read_to_label`). ``export LABELS`` sends its regions with their points pre-filled as
annotations (each tool's exporter says how), so that a second labeler corrects them; ``import
LABELS --from FORMAT PATH`` reads the reviewed package back for the labels file's regions,
untouched points keeping their exact coordinates and order; ``labels diff`` compares the two.

Pre-labels (:mod:`crowdtk.prelabel`, ``export --prelabel CKPT``): a counter's suggested heads go
into the package as the tool's own kind of suggestion (each exporter says how). What the labeler
leaves is imported as ordinary labels; an image (crops: a region) still holding unconfirmed
suggestions counts as missing, so a package nobody opened never imports as labels. ``index.json``
keeps a digest of each image's suggestions, so that an image returned exactly as suggested and
without the tool's ``done`` mark counts as unconfirmed even after a tool lost the suggestions' marks.

Adding a tool is one record: a module with its export (a :class:`~crowdtk.labeling.common.BaseExport`), its
README steps and its reader, ending with :func:`~crowdtk.labeling.common.register_tool` of a
:class:`~crowdtk.labeling.common.LabelingTool` (name, one-line help, what import reads, its unit, whether it
takes suggestions and review rounds); the built-in modules name those parts alike and end with
:func:`~crowdtk.labeling.common.register_tool_module`. ``export --to`` and ``import --from`` offer it, with
its help, from :data:`TOOLS`; a tool of the user's own is registered the same way from their code.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from crowdtk.errors import CrowdtkError
from crowdtk.files import STDIO
from crowdtk.formats import (
    LABELS,
    LabelsEntry,
    ManifestEntry,
    Prelabels,
    RegionsEntry,
    peek_format,
    read_labels,
    read_regions,
)
from crowdtk.labeling.common import (
    INDEX,
    INSTRUCTION,
    README,
    SUGGESTIONS_SHA256,
    TOOLS,
    ExportSummary,
    LabelingTool,
    export_names,
    index_record,
    readme,
    register_tool,
    suggestions_digest,
    write_json,
    write_text,
)

# Each tool module registers its tool when imported: in this order, the order --to/--from list them.
from crowdtk.labeling import crops, labelstudio, cvat, labelme  # noqa: F401  # isort: skip
from crowdtk.labeling.crops import crop_stem
from crowdtk.labeling.cvat import parse_xml_safely
from crowdtk.labeling.diff import LabelsDiff, RegionDiff, diff_labels, in_prefilled_order, snap_found
from crowdtk.labeling.labels import ImportRound, earlier_rounds, merge_labels, oracle_labels
from crowdtk.labeling.labelstudio import labelstudio_config
from crowdtk.labeling.reading import ImportResult, assemble, image_reference, unconfirmed_suggestions

# The exporters' record builders under their former private names (tests/test_fuzz.py imports them).
_cvat_xml = cvat.cvat_xml
_labelme_record = labelme.labelme_record
_labelstudio_task = labelstudio.labelstudio_task

__all__ = [
    "INSTRUCTION",
    "TOOLS",
    "LabelingTool",
    "ExportSummary",
    "ImportResult",
    "ImportRound",
    "LabelsDiff",
    "RegionDiff",
    "ToLabel",
    "crop_stem",
    "diff_labels",
    "earlier_rounds",
    "export_names",
    "export_regions",
    "image_reference",
    "import_labels",
    "import_round",
    "labelstudio_config",
    "merge_labels",
    "oracle_labels",
    "parse_xml_safely",
    "read_to_label",
    "register_tool",
    "tool",
]


def tool(fmt: str, option: str) -> LabelingTool:
    """The registered tool ``fmt``; ``option`` (``--to``/``--from``) names where the format came from."""
    if fmt not in TOOLS:
        raise CrowdtkError(f"{option} {fmt}: unknown format", f"use one of {', '.join(TOOLS)}")
    return TOOLS[fmt]


@dataclass
class ToLabel:
    """What export and import work on: the regions of a regions file, or of a labels file (a review round)."""

    header: dict[str, Any]
    entries: list[RegionsEntry]
    prefill: dict[str, np.ndarray] | None = None  # a labels file's points per image id; None for a regions file


def review_regions(labels: Sequence[LabelsEntry]) -> list[RegionsEntry]:
    """The regions of labels, as export and import take them (strategy ``review``)."""
    return [RegionsEntry(e.id, e.image, e.sha256, e.width, e.height, "review", e.regions) for e in labels]


def read_to_label(path: str, stdin: IO[str] | None = None) -> ToLabel:
    """A regions file, or a labels file (its header says which; '-' reads ``stdin``, by default sys.stdin)."""
    stream = None
    if str(path) == STDIO:
        text = (stdin if stdin is not None else sys.stdin).read()
        stream = io.StringIO(text)
        try:
            first = json.loads(next((line for line in text.splitlines() if line.strip()), "null"))
        except (ValueError, RecursionError):
            first = None
        fmt = first.get("format") if isinstance(first, dict) else None
    else:
        fmt = (
            peek_format(path) if Path(path).is_file() else None
        )  # errors for a missing file: those of the reader below
    if fmt == LABELS:
        header, labels = read_labels(path, stream)
        return ToLabel(header, review_regions(labels), {e.id: e.points for e in labels})
    header, entries = read_regions(path, stream)
    return ToLabel(header, entries)


def export_regions(
    entries: Sequence[RegionsEntry],
    out: Path,
    fmt: str,
    header: dict[str, Any],
    link: bool = False,
    image_url: str = "",
    on_progress: Callable[[int], None] | None = None,
    prefill: Mapping[str, np.ndarray] | None = None,
    prelabels: Prelabels | None = None,
) -> ExportSummary:
    """Write the labeling package for ``fmt`` into the (new, empty) folder ``out``.

    ``prefill`` (a review round: :attr:`ToLabel.prefill`) holds per image the points the package starts from;
    ``prelabels`` a counter's suggested heads (not with ``prefill``: a review round's points are labels already).
    """
    chosen = tool(fmt, "--to")
    if not entries:
        if prefill is not None:
            raise CrowdtkError("the labels file has no images", "export a labels file that holds labels")
        raise CrowdtkError("the regions file has no regions", "select some regions first")
    if prefill is not None and prelabels is not None:
        raise CrowdtkError(
            "suggestions (--prelabel) for a labels file: its regions are labeled already",
            "export the regions file for pre-labels, or the labels file without --prelabel for review",
        )
    if prelabels is not None and chosen.suggestions is None:
        able = [t.name for t in TOOLS.values() if t.suggestions is not None]
        raise CrowdtkError(
            f"--prelabel with --to {fmt}: {fmt} takes no suggestions",
            f"export for {' or '.join(able)}, or leave --prelabel out",
        )
    if prefill is not None and not chosen.review:
        able = [t.name for t in TOOLS.values() if t.review]
        raise CrowdtkError(
            f"a labels file (a review round) with --to {fmt}: {fmt} takes no pre-filled points",
            f"export for {' or '.join(able)}, or export the regions file",
        )
    export = chosen.export(out, link, image_url, prefill, prelabels)
    index_images = []
    for entry, name in zip(entries, export_names(entries)):
        record = index_record(entry)
        if prelabels is not None:  # import knows an untouched image by it, whatever a tool keeps of the marks
            record[SUGGESTIONS_SHA256] = suggestions_digest(prelabels.images[entry.id].points)
        export.add(entry, name, record)
        index_images.append(record)
        if on_progress:
            on_progress(1)
    export.finish()
    write_json(
        out / INDEX,
        {
            **header,
            "tool": fmt,
            "instruction": INSTRUCTION,
            "review": prefill is not None,
            "prelabel": None if prelabels is None else prelabels.model_version,
            "images": index_images,
        },
    )
    write_text(
        out / README,
        readme(
            fmt,
            chosen.steps(image_url),
            review=prefill is not None,
            suggestions=None if prelabels is None else chosen.suggestions,
        ),
    )
    files = sorted(str(p.relative_to(out)) for p in out.iterdir())
    return ExportSummary(len(entries), sum(len(e.regions) for e in entries), files)


def import_labels(
    entries: Sequence[RegionsEntry],
    fmt: str,
    path: Path,
    allow_missing: bool = False,
    regions_name: str = "REGIONS",
    prefill: Mapping[str, np.ndarray] | None = None,
) -> ImportResult:
    """Read a labeling tool's output for the regions ``entries`` back as labels.

    ``prefill`` (a review round): the points the package was exported with; returned points within
    :data:`~crowdtk.labeling.diff.SNAP_PX` of one of them take its exact coordinates, and its order.
    """
    chosen = tool(fmt, "--from")
    if not path.exists():
        raise CrowdtkError(f"{path}: no such file or folder", "pass what the labeling tool exported")
    returned = chosen.read(path, entries)
    unconfirmed_suggestions(returned, path, entries)
    result = ImportResult(
        [],
        missing=returned.missing,
        unknown=returned.unknown,
        ignored=returned.ignored,
        notes=returned.notes,
        converted=returned.converted,
    )
    if result.missing and not allow_missing:
        shown = ", ".join(result.missing[:3]) + (", …" if len(result.missing) > 3 else "")
        unreviewed, fix = "", "label them"
        if returned.unreviewed:
            unconfirmed = ", ".join(returned.unconfirmed[:5]) + (", …" if len(returned.unconfirmed) > 5 else "")
            unreviewed = f" ({returned.unreviewed} of them hold only suggestions nobody confirmed" + (
                f"; {unconfirmed} came back exactly as suggested (index.json) without the 'done' mark"
                if returned.unconfirmed
                else ""
            )
            unreviewed += ")"
            fix = (
                "confirm the reviewed ones as README.txt of the package says (CVAT, LabelMe: mark them 'done'), "
                "label the others"
            )
        raise CrowdtkError(
            f"{path}: no annotation for {len(result.missing)} {chosen.unit}(s) of {regions_name}: {shown}{unreviewed}",
            f"{fix}, or pass --allow-missing to leave them out (they are never taken as 'no heads')",
        )
    if prefill is None:
        assemble(entries, returned.found, result)
        return result
    assemble(entries, snap_found(returned.found, prefill), result)
    result.entries = in_prefilled_order(result.entries, prefill)
    return result


def import_round(
    entries: Sequence[RegionsEntry],
    earlier: Sequence[tuple[str, Sequence[LabelsEntry]]] = (),
    *,
    fmt: str | None = None,
    path: Path | None = None,
    manifest: Sequence[ManifestEntry] | None = None,
    allow_missing: bool = False,
    manifest_name: str = "MANIFEST",
    regions_name: str = "REGIONS",
    on_progress: Callable[[int], None] | None = None,
    prefill: Mapping[str, np.ndarray] | None = None,
) -> ImportRound:
    """One round of labels for ``entries``: from the oracle (``manifest``) or from a tool (``fmt``, ``path``),
    merged with ``earlier``.

    ``earlier`` holds (source name, labels) of previous rounds; ``on_progress`` advances per image (oracle only);
    ``prefill``: a review round's (:func:`import_labels`).
    """
    if manifest is not None:
        result = oracle_labels(
            entries, manifest, manifest_name=manifest_name, regions_name=regions_name, on_progress=on_progress
        )
        return ImportRound.of(
            result, earlier, "image", regions_name, pool_area=sum(m.width * m.height for m in manifest)
        )
    if fmt is None or path is None:
        raise CrowdtkError(
            "labels need either a manifest (the oracle) or a format and a path (a tool's output)",
            "give --oracle MANIFEST or --from FORMAT PATH",
        )
    result = import_labels(entries, fmt, path, allow_missing=allow_missing, regions_name=regions_name, prefill=prefill)
    return ImportRound.of(result, earlier, TOOLS[fmt].unit, regions_name)
