"""Reading a labeling tool's output back: matching its images to the regions, checking it, turning it into labels.

Matching a tool's image reference to a regions entry (:class:`Matcher`: export file name, id,
stem; :func:`image_reference`, refusing path traversal), the strict JSON helpers for tools'
exports, :class:`Collector` (points per image, for the tools that annotate whole images) and
:func:`assemble`, which keeps the points inside their regions and builds the labels.

Which image references are allowed (:func:`allowed_folders`, :func:`image_file`): a relative
reference starts at the folder of the file that holds it (a LabelMe JSON's folder; a CVAT
XML's), an absolute one stands as it is; either is normalised (``..`` applied) and must then
lie inside a folder the user named: the folder given as PATH (for a file, its folder) or the
export package around it, i.e. PATH's parent when that holds crowdtk's export ``index.json``
(a ``labeling-export`` header). So ``labelme images/ --output labels/`` inside an export folder
(``"imagePath": "../images/IMG_1.jpg"`` in ``labels/IMG_1.json``) imports from ``labels/``,
while ``../../x.jpg`` there, or ``/etc/passwd``, is refused as path traversal. Where the
reference names a file that exists, its sha256 must be the regions entry's (a name match is
confirmed by it; without a name match, the sha256 alone finds the entry).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np

from crowdtk.errors import CrowdtkError
from crowdtk.files import file_digest
from crowdtk.formats import LABELING_EXPORT, LabelsEntry, RegionsEntry
from crowdtk.labeling.common import INDEX, Found, Returned, export_names

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
    """The folders image references may point into: ``folder`` (PATH, or the folder of the file given as PATH) and the export package around it.

    The package is ``folder``'s parent when that holds crowdtk's export ``index.json``; nothing is searched further up.
    """
    folders = [folder]
    parent = Path(os.path.abspath(folder)).parent
    if parent != Path(os.path.abspath(folder)) and _is_export_folder(parent):
        folders.append(parent)
    return folders


def _is_export_folder(folder: Path) -> bool:
    try:
        record = json.loads((folder / INDEX).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(record, dict) and record.get("format") == LABELING_EXPORT


def image_reference(ref: Any, folder: Path, root: Path | Sequence[Path], source: str) -> str:
    """The file name an annotation tool gives for an image, checked against path traversal.

    ``folder`` is where relative references start; ``root`` is the folder (or the folders) they must stay in.
    URLs (``http://…``) and Label Studio's ``/data/upload/…`` keep only their last component;
    ``/data/local-files/?d=…`` must be a relative path without ``..``.
    """
    return image_file(ref, folder, root, source)[0]


def image_file(ref: Any, folder: Path, root: Path | Sequence[Path], source: str) -> tuple[str, Path | None]:
    """:func:`image_reference`'s file name, and the local path the reference resolves to (None for URLs and Label Studio's paths)."""
    if not isinstance(ref, str) or not ref.strip():
        raise CrowdtkError(f"{source}: an image reference is not a file name ({ref!r})", REEXPORT)
    text = ref.strip().replace("\\", "/")
    roots = [root] if isinstance(root, Path) else list(root)
    try:
        return _reference_name(ref, text, folder, roots, source)
    except ValueError as exc:  # urlparse: e.g. an invalid IPv6 host; a NUL character in a path
        raise CrowdtkError(f"{source}: image reference {ref!r} is not a usable URL or path ({exc})", REEXPORT) from None


def _reference_name(ref: str, text: str, folder: Path, roots: list[Path], source: str) -> tuple[str, Path | None]:
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text):
        return PurePosixPath(unquote(urlparse(text).path)).name, None
    if text.startswith("/data/local-files/"):
        inner = parse_qs(urlparse(text).query).get("d", [""])[0].replace("\\", "/")
        if not inner or inner.startswith("/") or ".." in PurePosixPath(inner).parts:
            raise CrowdtkError(
                f"{source}: image reference '{ref}' points outside Label Studio's document root", REEXPORT
            )
        return PurePosixPath(inner).name, None
    if text.startswith("/data/upload/"):
        return re.sub(r"^[0-9a-f]{8}-", "", PurePosixPath(text).name), None
    path = Path(text)
    target = path if path.is_absolute() else folder / path
    resolved = Path(os.path.normpath(os.path.abspath(target)))
    tops = [Path(os.path.normpath(os.path.abspath(root))) for root in roots]
    if not any(resolved == top or top in resolved.parents for top in tops):
        inside = " or ".join(str(root) for root in roots)
        raise CrowdtkError(
            f"{source}: image reference '{ref}' points outside {inside} (path traversal)",
            "image references may point only into the folder given as PATH, or the export folder that holds it; "
            "pass a folder that holds both the labels and the images",
        )
    return resolved.name, resolved


def points_array(values: list[tuple[float, float]], source: str) -> np.ndarray:
    """(N, 2) finite float64 points, or a CrowdtkError naming ``source``."""
    try:
        points = np.asarray(values, dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        raise CrowdtkError(f"{source}: point coordinates are not numbers", "fix or re-export the annotations") from None
    if not np.isfinite(points).all():
        raise CrowdtkError(f"{source}: point coordinates are NaN or infinite", "fix or re-export the annotations")
    return points


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
    """Points per image (full-image pixels) of the tools that annotate whole images, refusing an image annotated twice."""

    def __init__(self, entries: Sequence[RegionsEntry]) -> None:
        self.matcher = Matcher(entries)
        self.points: dict[str, np.ndarray] = {}
        self.unknown: list[str] = []
        self.ignored = 0
        self.unreviewed = 0  # images left out because they hold only unconfirmed suggestions (export --prelabel)

    def find(self, name: str, file: Path | None, source: str) -> RegionsEntry | None:
        """The regions entry of an image: by ``name``; where the reference names a ``file`` that exists, checked against its sha256 (or, without a name match, found by it)."""
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

    def add(self, name: str, entry: RegionsEntry | None, points: np.ndarray, source: str) -> None:
        if entry is None:
            self.unknown.append(name)
            return
        if entry.id in self.points:
            raise CrowdtkError(f"{source}: image '{entry.id}' is annotated twice", "keep one annotation per image")
        self.points[entry.id] = points

    def check_size(self, entry: RegionsEntry | None, width: Any, height: Any, source: str) -> None:
        if entry is None or width is None or height is None:
            return
        try:
            size = (int(float(width)), int(float(height)))
        except (TypeError, ValueError, OverflowError):
            raise CrowdtkError(f"{source}: image size of '{entry.id}' is not a number", REEXPORT) from None
        if size != (entry.width, entry.height):
            raise CrowdtkError(
                f"{source}: image '{entry.id}' is {size[0]}x{size[1]} there, {entry.width}x{entry.height} in the regions file",
                "label the images the regions were selected on",
            )

    def returned(self) -> Returned:
        """Every annotated image as labeled in all its regions; an image never annotated is missing."""
        found = {image_id: whole(self.matcher.by_id[image_id], points) for image_id, points in self.points.items()}
        missing = [e.id for e in self.matcher.entries if e.id not in self.points]
        return Returned(found, missing, self.unknown, self.ignored, unreviewed=self.unreviewed)


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
