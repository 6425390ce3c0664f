"""Reading a labeling tool's output back: matching its images to the regions, checking it, turning it into labels.

Matching a tool's image reference to a regions entry (:class:`Matcher`: export file name, id,
stem; :func:`image_reference`), the strict JSON helpers for tools'
exports, :class:`Collector` (points per image, for the tools that annotate whole images) and
:func:`assemble`, which keeps the points inside their regions and builds the labels.

Which image references are read (:func:`allowed_folders`, :func:`image_file`): a relative
reference starts at the folder of the file that holds it (a LabelMe JSON's folder; a CVAT
XML's), an absolute one stands as it is; either is normalised (``..`` applied). A reference
that then lies inside a folder the user named (the folder given as PATH, for a file its folder,
or the export package around it, i.e. PATH's parent when that holds crowdtk's export
``index.json``, a ``labeling-export`` header) names a file that is read: where it exists, its
sha256 must be the regions entry's (a name match is confirmed by it; without a name match, the
sha256 alone finds the entry). A LabelMe ``imagePath`` outside those folders is never opened:
the image is matched by its file name (and the JSON's image size) alone, so ``labelme images/
--output labels/`` (``"imagePath": "../images/IMG_1.jpg"`` in ``labels/IMG_1.json``) imports
from ``labels/`` wherever the two folders lie, and ``../../x.jpg`` or ``/etc/passwd`` reads
nothing outside them. CVAT's and Label Studio's references, never opened, are refused as path
traversal when they point outside (:func:`image_reference`).

Shapes that are not points (:func:`shape_centre`): a shape labeled ``head`` that the labeler
drew around the head (LabelMe rectangle, circle, polygon, line; CVAT box, ellipse, polygon,
polyline; Label Studio rectangle, ellipse, polygon) is taken as one head point at its centre,
and the import reports how many it converted (:attr:`Collector.converted`). A rectangle's
centre is the middle of its corners (Label Studio's rotation, about the top-left corner, is
applied), a circle's or an ellipse's is its centre, a polygon's is the centroid of its area:
unlike the mean of its vertices, it does not move towards the side where the outline has more
vertices (a freehand or traced outline). A polygon without area (a line, collinear vertices)
takes the mean of its vertices. A ``head`` shape of a kind without such a centre (a mask, a
brush stroke) is refused, never dropped.

Suggestions nobody confirmed (:func:`unconfirmed_suggestions`): ``export --prelabel`` keeps in
``index.json`` the digest of each image's suggested points (:func:`~crowdtk.labeling.common.suggestions_digest`).
An image of a tool with a ``done`` mark (CVAT, LabelMe) that came back without the mark and
holding exactly its suggestions counts as unconfirmed, whatever the tool kept of the suggestions'
own marks (Datumaro's CVAT reader and writer drop ``source="auto"``).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np

from crowdtk.errors import CrowdtkError
from crowdtk.files import file_digest
from crowdtk.formats import LABELING_EXPORT, LabelsEntry, RegionsEntry
from crowdtk.labeling.common import (
    INDEX,
    SUGGESTIONS_SHA256,
    Found,
    Returned,
    export_names,
    suggestions_digest,
)

REEXPORT = "re-export from the labeling tool"  # the fix for most malformed tool output


@dataclass
class ImportResult:
    """Labels read back, with what was dropped, missing, or not recognised."""

    entries: list[LabelsEntry]
    dropped: dict[str, int] = field(default_factory=dict)  # image id -> points outside its regions
    missing: list[str] = field(default_factory=list)  # images (crops: regions) without an annotation
    unknown: list[str] = field(default_factory=list)  # annotated images that are not in the regions file
    ignored: int = 0  # annotations of other kinds (labels other than 'head')
    notes: list[str] = field(
        default_factory=list
    )  # what the reader reports, e.g. which file of a folder or archive it read
    converted: dict[str, int] = field(default_factory=dict)  # 'head' shapes that are not points, per kind

    @property
    def heads(self) -> int:
        return sum(len(e.points) for e in self.entries)


class Matcher:
    """Finds the regions entry of a tool's image name: by export file name, else by id, else by stem."""

    def __init__(self, entries: Sequence[RegionsEntry]) -> None:
        names = export_names(entries)
        self.entries = entries
        self.by_id = {e.id: e for e in entries}
        self.by_file = {n.lower(): e for n, e in zip(names, entries)}
        self.by_stem = {Path(n).stem.lower(): e for n, e in zip(names, entries)}
        self.names = dict(zip((e.id for e in entries), names))
        digests = [e.sha256 for e in entries]
        self.by_sha = {e.sha256: e for e in entries if digests.count(e.sha256) == 1}  # identical images: by name only

    def find(self, name: str) -> RegionsEntry | None:
        base = PurePosixPath(name).name
        stem = PurePosixPath(base).stem
        return self.by_file.get(base.lower()) or self.by_id.get(stem) or self.by_stem.get(stem.lower())


def allowed_folders(folder: Path) -> list[Path]:
    """The folders image references may be read from: ``folder`` (PATH, or the folder of the file given as PATH)
    and the export package around it.

    The package is ``folder``'s parent when that holds crowdtk's export ``index.json``; nothing is searched further up.
    """
    folders = [folder]
    parent = Path(os.path.abspath(folder)).parent
    if parent != Path(os.path.abspath(folder)) and export_record(parent) is not None:
        folders.append(parent)
    return folders


def export_record(folder: Path) -> dict[str, Any] | None:
    """The ``index.json`` of the export package ``folder``, or None when it holds none (or not crowdtk's)."""
    try:
        record = json.loads((folder / INDEX).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) and record.get("format") == LABELING_EXPORT else None


def image_reference(ref: Any, folder: Path, root: Path | Sequence[Path], source: str) -> str:
    """The file name an annotation tool gives for an image, checked against path traversal.

    ``folder`` is where relative references start; ``root`` is the folder (or the folders) they must stay in.
    URLs (``http://…``) and Label Studio's ``/data/upload/…`` keep only their last component;
    ``/data/local-files/?d=…`` must be a relative path without ``..``.
    """
    name, _, outside = image_file(ref, folder, root, source)
    if outside:
        inside = " or ".join(str(r) for r in ([root] if isinstance(root, Path) else root))
        raise CrowdtkError(
            f"{source}: image reference '{ref}' points outside {inside} (path traversal)",
            "image references may point only into the folder given as PATH, or the export folder that holds it; "
            "pass a folder that holds both the labels and the images",
        )
    return name


def image_file(ref: Any, folder: Path, root: Path | Sequence[Path], source: str) -> tuple[str, Path | None, bool]:
    """:func:`image_reference`'s file name; the local file the reference names when it lies inside ``root``, the
    only one that may be read (None for URLs, Label Studio's paths and references outside); and whether it is a local
    reference outside ``root`` (then its name alone matches the image: the file is never opened)."""
    if not isinstance(ref, str) or not ref.strip():
        raise CrowdtkError(f"{source}: an image reference is not a file name ({ref!r})", REEXPORT)
    text = ref.strip().replace("\\", "/")
    roots = [root] if isinstance(root, Path) else list(root)
    try:
        return _reference_name(ref, text, folder, roots, source)
    except ValueError as exc:  # urlparse: e.g. an invalid IPv6 host; a NUL character in a path
        raise CrowdtkError(f"{source}: image reference {ref!r} is not a usable URL or path ({exc})", REEXPORT) from None


def _reference_name(ref: str, text: str, folder: Path, roots: list[Path], source: str) -> tuple[str, Path | None, bool]:
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text):
        return PurePosixPath(unquote(urlparse(text).path)).name, None, False
    if text.startswith("/data/local-files/"):
        inner = parse_qs(urlparse(text).query).get("d", [""])[0].replace("\\", "/")
        if not inner or inner.startswith("/") or ".." in PurePosixPath(inner).parts:
            raise CrowdtkError(
                f"{source}: image reference '{ref}' points outside Label Studio's document root", REEXPORT
            )
        return PurePosixPath(inner).name, None, False
    if text.startswith("/data/upload/"):
        return re.sub(r"^[0-9a-f]{8}-", "", PurePosixPath(text).name), None, False
    path = Path(text)
    target = path if path.is_absolute() else folder / path
    resolved = Path(os.path.normpath(os.path.abspath(target)))
    tops = [Path(os.path.normpath(os.path.abspath(root))) for root in roots]
    if not any(resolved == top or top in resolved.parents for top in tops):
        return resolved.name, None, True
    return resolved.name, resolved, False


def points_array(values: list[tuple[float, float]], source: str) -> np.ndarray:
    """(N, 2) finite float64 points, or a CrowdtkError naming ``source``."""
    try:
        points = np.asarray(values, dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        raise CrowdtkError(f"{source}: point coordinates are not numbers", "fix or re-export the annotations") from None
    if not np.isfinite(points).all():
        raise CrowdtkError(f"{source}: point coordinates are NaN or infinite", "fix or re-export the annotations")
    return points


def box_centre(corners: np.ndarray) -> tuple[float, float]:
    """The middle of an axis-aligned box given by its corners (two or more (x, y))."""
    low, high = corners.min(axis=0), corners.max(axis=0)
    with np.errstate(all="ignore"):  # coordinates near the float limit overflow: points_array refuses the result
        return float((low[0] + high[0]) / 2), float((low[1] + high[1]) / 2)


def rotated_box_centre(x: float, y: float, width: float, height: float, degrees: float) -> tuple[float, float]:
    """The centre of a box of top-left corner (x, y) turned by ``degrees`` about that corner (clockwise on the image,
    whose y axis points down), as Label Studio stores a rectangle."""
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    return x + (width * cos - height * sin) / 2, y + (width * sin + height * cos) / 2


def polygon_centre(vertices: np.ndarray) -> tuple[float, float]:
    """The centroid of the area a closed outline encloses; the mean of its vertices when it encloses none (a line)."""
    with np.errstate(all="ignore"):  # coordinates near the float limit overflow: points_array refuses the result
        return _area_centroid(vertices)


def _area_centroid(vertices: np.ndarray) -> tuple[float, float]:
    origin = vertices.mean(axis=0)
    x, y = (vertices - origin).T  # about the mean, so that the cross products stay small far from (0, 0)
    xn, yn = np.roll(x, -1), np.roll(y, -1)
    cross = x * yn - xn * y
    area = cross.sum() / 2
    extent = float(np.ptp(x) * np.ptp(y))
    if len(vertices) < 3 or abs(area) <= 1e-9 * extent:
        return float(origin[0]), float(origin[1])
    return (
        float(origin[0] + ((x + xn) * cross).sum() / (6 * area)),
        float(origin[1] + ((y + yn) * cross).sum() / (6 * area)),
    )


def vertices_array(values: Any, least: int, source: str, fix: str) -> np.ndarray:
    """A shape's (N, 2) finite vertices, N >= ``least``, or a CrowdtkError naming ``source``."""
    try:
        vertices = np.asarray(values, dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError, OverflowError):
        raise CrowdtkError(f"{source}: the shape's points are not [x, y] numbers", fix) from None
    if len(vertices) < least or not np.isfinite(vertices).all():
        raise CrowdtkError(f"{source}: the shape holds fewer than {least} finite [x, y] points", fix)
    return vertices


def unconfirmed_suggestions(returned: Returned, path: Path, entries: Sequence[RegionsEntry]) -> None:
    """Move to the missing (as unreviewed) each image returned without the tool's ``done`` mark whose points are exactly
    the suggestions ``index.json`` recorded for it: a tool or converter that lost the suggestions' own marks (Datumaro
    drops CVAT's ``source="auto"``) would otherwise turn an untouched package into labels."""
    if returned.confirmed is None:
        return
    digests = suggestion_digests(path, entries)
    for image_id in [i for i in returned.found if i in digests and i not in returned.confirmed]:
        points = np.concatenate([p for _, p in returned.found[image_id]])
        if suggestions_digest(points) == digests[image_id]:
            del returned.found[image_id]
            returned.unconfirmed.append(image_id)
    if returned.unconfirmed:
        returned.unreviewed += len(returned.unconfirmed)
        order = {e.id: k for k, e in enumerate(entries)}
        returned.missing = sorted(returned.missing + returned.unconfirmed, key=lambda i: order.get(i, len(order)))


def suggestion_digests(path: Path, entries: Sequence[RegionsEntry]) -> Mapping[str, str]:
    """Per image id, the digest of its suggestions in the ``index.json`` of the export package PATH lies in (PATH's
    folder or the one around it, as :func:`allowed_folders`); empty without one, or for an index written before the
    digests were (or without ``--prelabel``). Records of another image (id or sha256) are not taken."""
    folder = Path(os.path.abspath(path if path.is_dir() else path.parent))
    record = next((r for r in map(export_record, allowed_folders(folder)) if r is not None), None)
    images = record.get("images") if record is not None else None
    if not isinstance(images, list):
        return {}
    by_id = {e.id: e for e in entries}
    digests = {}
    for image in images:
        if not isinstance(image, dict) or not isinstance(image.get(SUGGESTIONS_SHA256), str):
            continue
        entry = by_id.get(image["id"]) if isinstance(image.get("id"), str) else None
        if entry is not None and image.get("sha256") == entry.sha256:
            digests[entry.id] = image[SUGGESTIONS_SHA256]
    return digests


def load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CrowdtkError(f"{path}: no such file", "check the path") from None
    except IsADirectoryError:
        raise CrowdtkError(f"{path}: is a folder, expected a JSON file", "pass the exported JSON file") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, or an integer of > 4300 digits
        raise CrowdtkError(f"{path}: not JSON ({exc})", "pass the file the labeling tool exported") from None
    except RecursionError:
        raise CrowdtkError(
            f"{path}: not usable JSON (nested too deeply)", "pass the file the labeling tool exported"
        ) from None


def list_of(value: Any, name: str, where: str) -> list:
    """A JSON list field of a tool's export (missing or null: empty); anything else is refused."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise CrowdtkError(f"{where}: '{name}' is not a list", REEXPORT)
    return value


class Collector:
    """Points per image (full-image pixels) of the tools that annotate whole images,
    refusing an image annotated twice."""

    def __init__(self, entries: Sequence[RegionsEntry], done_mark: bool = False) -> None:
        """``done_mark``: the tool marks a finished image explicitly (CVAT's tag, LabelMe's flag 'done')."""
        self.matcher = Matcher(entries)
        self.points: dict[str, np.ndarray] = {}
        self.unknown: list[str] = []
        self.ignored = 0
        self.unreviewed = 0  # images left out because they hold only unconfirmed suggestions (export --prelabel)
        self.converted: Counter[str] = Counter()  # 'head' shapes that are not points, taken at their centres, per kind
        self.notes: list[str] = []
        self.confirmed: set[str] | None = set() if done_mark else None  # the images marked 'done' (Returned.confirmed)

    def find(self, name: str, file: Path | None, source: str) -> RegionsEntry | None:
        """The regions entry of an image: by ``name``; where the reference names a ``file`` that exists,
        checked against its sha256 (or, without a name match, found by it)."""
        entry = self.matcher.find(name)
        if file is None or not file.is_file():
            return entry
        try:
            digest = file_digest(file)
        except OSError:  # unreadable: the name alone decides
            return entry
        if entry is None:
            return self.matcher.by_sha.get(digest)
        if digest != entry.sha256:
            raise CrowdtkError(
                f"{source}: {file} is not the image '{entry.id}' of the regions file (sha256 differs)",
                "label the images the regions were selected on (the export folder's images/)",
            )
        return entry

    def add(self, name: str, entry: RegionsEntry | None, points: np.ndarray, source: str, done: bool = False) -> None:
        """The points of an image; ``done``: it carries the tool's 'done' mark."""
        if entry is None:
            self.unknown.append(name)
            return
        if entry.id in self.points:
            raise CrowdtkError(f"{source}: image '{entry.id}' is annotated twice", "keep one annotation per image")
        self.points[entry.id] = points
        if done and self.confirmed is not None:
            self.confirmed.add(entry.id)

    def check_size(self, entry: RegionsEntry | None, width: Any, height: Any, source: str) -> None:
        if entry is None or width is None or height is None:
            return
        try:
            size = (int(float(width)), int(float(height)))
        except (TypeError, ValueError, OverflowError):
            raise CrowdtkError(f"{source}: image size of '{entry.id}' is not a number", REEXPORT) from None
        if size != (entry.width, entry.height):
            raise CrowdtkError(
                f"{source}: image '{entry.id}' is {size[0]}x{size[1]} "
                f"there, {entry.width}x{entry.height} in the regions file",
                "label the images the regions were selected on",
            )

    def returned(self) -> Returned:
        """Every annotated image as labeled in all its regions; an image never annotated is missing."""
        found = {image_id: whole(self.matcher.by_id[image_id], points) for image_id, points in self.points.items()}
        missing = [e.id for e in self.matcher.entries if e.id not in self.points]
        return Returned(
            found,
            missing,
            self.unknown,
            self.ignored,
            notes=list(self.notes),
            unreviewed=self.unreviewed,
            converted=dict(self.converted),
            confirmed=self.confirmed,
        )


def whole(entry: RegionsEntry, points: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """An annotation of the whole image: every region returned, the points given to the first."""
    return [(0, points)] + [(k, np.zeros((0, 2))) for k in range(1, len(entry.regions))]


def assemble(entries: Sequence[RegionsEntry], found: Found, result: ImportResult) -> None:
    """Append to ``result`` the labels of each entry that came back, keeping only points inside its regions."""
    for entry in entries:
        parts = found.get(entry.id)
        if not parts:
            continue
        regions = tuple(entry.regions[k] for k, _ in parts)
        points = np.concatenate([p for _, p in parts]) if parts else np.zeros((0, 2))
        keep = np.zeros(len(points), dtype=bool)
        for region in regions:
            keep |= region.contains(points)
        if (~keep).any():
            result.dropped[entry.id] = int((~keep).sum())
        result.entries.append(
            LabelsEntry(entry.id, entry.image, entry.sha256, entry.width, entry.height, regions, points[keep])
        )
