"""What the labeling tools share: the names, the tool record and its registry, and writing a package.

The tool interface: a tool module defines its export (a :class:`BaseExport`), the steps of its
README and its reader (returning :class:`Returned`), and registers them as one :class:`LabelingTool`
record in :data:`TOOLS` (:func:`register_tool`, or :func:`register_tool_module` for a module that names
its parts as the built-in tools do), which ``export --to`` and ``import --from`` offer.

Export side: the file name of each image (:func:`export_names`), its record in ``index.json``,
placing the image (copy or symlink, checked against its sha256), the points a review round
pre-fills (:meth:`BaseExport.prefilled`), a counter's suggested heads (:meth:`BaseExport.suggested`), atomic text/JSON
writes and the frame of ``README.txt``. The import side is in :mod:`crowdtk.labeling.reading`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crowdtk.data import read_image_bytes
from crowdtk.files import atomic_path
from crowdtk.formats import Prelabels, RegionsEntry, Suggestions
from crowdtk.registry import RegistrationError, Registry

INSTRUCTION = (
    "Label every head whose centre lies inside the region: click once on the centre of each such head, "
    "also partly hidden or very small ones; ignore heads whose centre lies outside the region."
)
HEAD = "head"
REGION = "region"
DONE = "done"  # CVAT tag / LabelMe flag: "this image is finished", needed when it has no head points


SUGGESTED = "suggested"  # LabelMe shape flag of a pre-label (export --prelabel): a point the labeler has not confirmed
SUGGESTED_MARK = (
    "# suggested by"  # crops: the first line of a points file of pre-labels, deleted by the labeler when reviewed
)
INDEX = "index.json"
# index.json, per image of an export with --prelabel: suggestions_digest() of its suggested heads
SUGGESTIONS_SHA256 = "suggestions_sha256"
README = "README.txt"
IMAGES = "images"

# Per image, (region index, full-image points) of each region that came back labeled.
Found = dict[str, list[tuple[int, np.ndarray]]]


# --------------------------------------------------------------------------- the tool interface


@dataclass(frozen=True)
class ExportedImage:
    """What a tool's file for one image carries besides the image: its regions (``entry``), the head points a review
    round pre-fills (None outside one), and a counter's ``suggested`` heads (None without ``--prelabel``), named by
    that counter's ``model_version``."""

    entry: RegionsEntry
    points: np.ndarray | None = None
    suggested: Suggestions | None = None
    model_version: str = ""


class BaseExport:
    """One export run of a tool: :meth:`add` each image (in the regions file's order), then :meth:`finish`.

    The default places the image under ``images/``, records it as the index's ``file`` and keeps
    (entry, file name) in :attr:`placed`, for the tools that write one file for all images in
    :meth:`finish`; a tool that writes a file per image extends :meth:`add`.

    ``prefill`` (a review round: ``export LABELS``) holds per image id the head points already
    labeled; each tool writes :meth:`prefilled` as annotations its labelers start from.
    ``prelabels`` (``export --prelabel``) holds a counter's suggested heads; each tool writes
    :meth:`suggested` as suggestions marked as the model's, for its labelers to correct.
    """

    def __init__(
        self,
        out: Path,
        link: bool,
        image_url: str,
        prefill: Mapping[str, np.ndarray] | None = None,
        prelabels: Prelabels | None = None,
    ) -> None:
        self.out, self.link, self.image_url = out, link, image_url
        self.prefill = prefill
        self.prelabels = prelabels
        self.placed: list[tuple[RegionsEntry, str]] = []

    def prefilled(self, entry: RegionsEntry) -> np.ndarray | None:
        """The points to pre-fill for ``entry`` ((N, 2) full-image pixels), or None outside a review round."""
        if self.prefill is None:
            return None
        return self.prefill.get(entry.id, np.zeros((0, 2)))

    def suggested(self, entry: RegionsEntry) -> Suggestions | None:
        """The counter's suggested heads for ``entry``, or None without ``--prelabel``."""
        return None if self.prelabels is None else self.prelabels.images[entry.id]

    def exported(self, entry: RegionsEntry) -> ExportedImage:
        """``entry`` with its :meth:`prefilled` points and :meth:`suggested` heads."""
        version = "" if self.prelabels is None else self.prelabels.model_version
        return ExportedImage(entry, self.prefilled(entry), self.suggested(entry), version)

    def add(self, entry: RegionsEntry, name: str, record: dict[str, Any]) -> None:
        place_image(entry, self.out / IMAGES / name, self.link)
        record["file"] = f"{IMAGES}/{name}"
        self.placed.append((entry, name))

    def finish(self) -> None:
        pass


@dataclass
class Returned:
    """What a tool's output held for the regions: labeled regions, and what was missing or foreign."""

    found: Found
    missing: list[str]  # images (crops: regions) without an annotation
    unknown: list[str] = field(default_factory=list)  # annotated images that are not in the regions file
    ignored: int = 0  # annotations of other kinds (labels other than 'head')
    notes: list[str] = field(
        default_factory=list
    )  # what the reader reports, e.g. which file of a folder or archive it read
    unreviewed: int = 0  # of the missing: those holding only a counter's suggestions, not yet marked as reviewed
    converted: dict[str, int] = field(default_factory=dict)  # 'head' shapes that are not points, per kind: taken at
    # their centres
    # Images that carry the tool's explicit 'done' mark; None: every annotation the tool returns is explicit
    # (Label Studio: submitted; crops: the mark line deleted). Only images outside it are checked against the
    # suggestions' digests of index.json (crowdtk.labeling.reading.unconfirmed_suggestions).
    confirmed: set[str] | None = None
    unconfirmed: list[str] = field(default_factory=list)  # of the unreviewed: returned exactly as suggested, unmarked


@dataclass(frozen=True)
class LabelingTool:
    """A labeling tool (:func:`register_tool` registers one, in the module that implements it)."""

    name: str  # as in --to/--from and index.json's "tool"
    help: str  # one line: what export writes for it (export --help)
    reads: str  # one line: what import reads back from it (import --help)
    export: type[BaseExport]  # the package writer
    steps: Callable[[str], str]  # README.txt's steps for the tool, given export --image-url
    read: Callable[[Path, Sequence[RegionsEntry]], Returned]  # what the tool returned, for the regions
    unit: str = "image"  # what one annotation covers, in messages: "image", or "region" for crops
    # README.txt of a package with --prelabel: where the suggestions are and how a labeler confirms them;
    # None: the tool takes no suggestions (export --prelabel refuses it).
    suggestions: str | None = None
    review: bool = True  # writes a labels file's points as annotations to correct (export LABELS, BaseExport.prefilled)

    def check(self) -> None:
        if not (isinstance(self.export, type) and issubclass(self.export, BaseExport)):
            raise RegistrationError(
                f"the labeling tool {self.name!r}: its export {self.export!r} is no BaseExport subclass"
            )
        if not (callable(self.steps) and callable(self.read)):
            raise RegistrationError(f"the labeling tool {self.name!r} needs its README steps and its reader")
        if not self.unit or not self.reads.strip() or "\n" in self.reads:
            raise RegistrationError(
                f"the labeling tool {self.name!r} needs its unit and a one-line text of what import reads"
            )


# Every labeling tool by name, in the order --to/--from list them (crowdtk.labeling imports the tools in it).
TOOLS: Registry[LabelingTool] = Registry("labeling tool")


def register_tool(tool: LabelingTool) -> LabelingTool:
    """Register a labeling tool; a name registered twice, or a record missing a part, fails here."""
    return TOOLS.register(tool)


def register_tool_module(module: str, name: str, help: str, reads: str, unit: str = "image") -> LabelingTool:
    """Register the labeling tool that the module named ``module`` implements, from the parts it names as every
    built-in tool module does: ``Export``, ``steps``, ``read`` and, where it takes suggestions, ``SUGGESTIONS``.
    A module calls it last, with its ``__name__``; a part it lacks fails here, as with :func:`register_tool`."""
    parts = vars(sys.modules[module])
    found: dict[str, Any] = {attribute: parts.get(part) for attribute, part in _MODULE_PARTS.items()}
    return register_tool(LabelingTool(name, help, reads, unit=unit, **found))


# LabelingTool's fields that register_tool_module takes from a tool module, and the module's names for them.
_MODULE_PARTS = {"export": "Export", "steps": "steps", "read": "read", "suggestions": "SUGGESTIONS"}


# --------------------------------------------------------------------------- export


@dataclass
class ExportSummary:
    """What an export wrote: images, regions, and the top-level entries of the folder."""

    images: int
    regions: int
    files: list[str] = field(default_factory=list)


def export_names(entries: Sequence[RegionsEntry]) -> list[str]:
    """The file name of each image in an export folder: its id made filename-safe, plus its suffix.

    Deterministic in the regions file's order, so ``import`` finds the same names."""
    names, stems = [], set()
    for entry in entries:
        base = re.sub(r"[^A-Za-z0-9._-]", "_", entry.id).lstrip(".") or "image"
        suffix = Path(entry.image).suffix.lower() or ".jpg"
        stem, n = base, 1
        while stem.lower() in stems:  # ids differing only in unsafe characters or case
            n += 1
            stem = f"{base}-{n}"
        stems.add(stem.lower())
        names.append(f"{stem}{suffix}")
    return names


def index_record(entry: RegionsEntry) -> dict[str, Any]:
    """An image's entry in ``index.json`` before the tool adds to it (``file``; crops: per region)."""
    return {
        "id": entry.id,
        "width": entry.width,
        "height": entry.height,
        "sha256": entry.sha256,
        "regions": [{"x0": r.x0, "x1": r.x1, "y0": r.y0, "y1": r.y1} for r in entry.regions],
    }


def suggestions_digest(points: np.ndarray) -> str:
    """sha256 of head points at 0.01 px (the two decimals CVAT writes), sorted: the same for the suggestions as exported
    and as a tool returns them untouched, whatever order it keeps them in."""
    lines = sorted(f"{_hundredths(x)},{_hundredths(y)}" for x, y in np.asarray(points, dtype=np.float64).reshape(-1, 2))
    return hashlib.sha256("\n".join(lines).encode("ascii")).hexdigest()


def _hundredths(value: float) -> str:
    text = f"{float(value):.2f}"  # correctly rounded, so formatting a value parsed from its own text gives that text
    return "0.00" if text == "-0.00" else text


def image_bytes(entry: RegionsEntry) -> bytes:
    """The image's bytes, refused when they are not the ones indexed (the regions file records their sha256)."""
    return read_image_bytes(entry.image, entry.sha256)


def place_image(entry: RegionsEntry, target: Path, link: bool) -> bytes:
    # The bytes are read (and checked) even for a symlink, so a package never points at a changed image.
    data = image_bytes(entry)
    target.parent.mkdir(parents=True, exist_ok=True)
    if link:
        os.symlink(Path(entry.image).resolve(), target)
    else:
        target.write_bytes(data)
    return data


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=1) + "\n")


def readme(fmt: str, steps: str, review: bool = False, suggestions: str | None = None) -> str:
    """README.txt: the instruction, the rule every tool shares, then the tool's own steps (and, ``review``, how a review
    round differs; ``suggestions``, the tool's paragraph on pre-labels)."""
    return (
        f"crowdtk labeling package ({fmt})\n\nInstruction for labelers:\n  {INSTRUCTION}\n\n"
        "A point counts for the region that contains it; points outside every region are dropped on import.\n\n"
        f"{steps}\n"
        + (f"\n{REVIEW_STEPS.format(fmt=fmt)}\n" if review else "")
        + (
            f"\nPre-labels: a counter has suggested the heads (crowdtk export --prelabel). {suggestions}\n"
            if suggestions
            else ""
        )
    )


REVIEW_STEPS = (
    "Review round: this package was exported from a labels file (crowdtk export LABELS), and every head already\n"
    "labeled is pre-filled (Label Studio: each task's annotation; CVAT and LabelMe: the images' head points, the\n"
    "images already tagged 'done'; crops: the points files beside the crops). Check every region: delete wrong\n"
    "points, move misplaced ones, add the heads that were missed. Then import with the labels file in place of\n"
    "REGIONS, and see what changed:\n"
    "  crowdtk import LABELS --from {fmt} PATH -o reviewed.jsonl\n"
    "  crowdtk labels diff LABELS reviewed.jsonl > changes.jsonl"
)
