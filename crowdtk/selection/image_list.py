"""``select --image-list FILE``: the images a published split labels, matched to the pool's manifest.

Semi-supervised counting papers fix their labeled images as lists (``label_list/shb-5.txt``: 20 names of
ShanghaiTech Part B's training images), read by :func:`crowdtk.formats.read_image_list`. An entry names an
image by its manifest id (``IMG_12``), its file name (``IMG_12.jpg``) or a path ending in its file name
(``part_B/train_data/images/IMG_12.jpg``, also with backslashes). A path's folders only choose between images
of the same file name (the one whose path shares the most trailing folders with the entry), so lists written
on another machine still match. An entry that matches no image, or several equally well, is refused naming
its line; an image named twice is labeled once, with a note (public lists hold such repeats).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePath

from crowdtk.errors import CrowdtkError
from crowdtk.formats import ImageList, ManifestEntry, read_image_list

_SEPARATORS = re.compile(r"[\\/]+")


@dataclass(frozen=True)
class ListedImages:
    """The pool's images a list names: ``ids`` in the list's order, each once; ``notes`` for the user."""

    source: str
    sha256: str
    ids: tuple[str, ...]
    notes: list[str] = field(default_factory=list)


def _parts(path: str) -> list[str]:
    """A path's names, last one last, whatever the separator it was written with; '.' left out."""
    return [p for p in _SEPARATORS.split(path) if p not in ("", ".")]


def _shared_tail(a: list[str], b: list[str]) -> int:
    """How many trailing names two paths share."""
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


class _PoolNames:
    """The pool's images by manifest id and by file name, to look entries up in."""

    def __init__(self, entries: Sequence[ManifestEntry]) -> None:
        self.entries = entries
        self.by_id: dict[str, int] = {e.id: i for i, e in enumerate(entries)}
        self.by_name: dict[str, list[int]] = {}
        for i, e in enumerate(entries):
            self.by_name.setdefault(PurePath(e.image).name, []).append(i)
        self.image_parts = [_parts(e.image) for e in entries]

    def matches(self, entry: str) -> list[int]:
        """The images ``entry`` names: by id, by file name, the path's folders breaking ties."""
        found = set()
        if entry in self.by_id:
            found.add(self.by_id[entry])
        parts = _parts(entry)
        named = self.by_name.get(parts[-1], []) if parts else []
        if len(named) > 1 and len(parts) > 1:
            tails = [_shared_tail(parts, self.image_parts[i]) for i in named]
            named = [i for i, t in zip(named, tails) if t == max(tails)]
        found.update(named)
        return sorted(found)


def match_image_list(
    image_list: ImageList, entries: Sequence[ManifestEntry], manifest_name: str = "MANIFEST"
) -> ListedImages:
    """The pool's images ``image_list`` names (:class:`ListedImages`); refused naming the line when an entry
    matches none or several of them."""
    names = _PoolNames(entries)
    first_line: dict[int, int] = {}
    notes: list[str] = []
    for line, entry in image_list.entries:
        found = names.matches(entry)
        where = f"{image_list.source}:{line}"
        if not found:
            raise CrowdtkError(f"{where}: '{entry}' names no image of {manifest_name}", _no_match_fix(entry, names))
        if len(found) > 1:
            shown = ", ".join(f"'{entries[i].id}' ({entries[i].image})" for i in found[:3])
            raise CrowdtkError(
                f"{where}: '{entry}' names {len(found)} images of {manifest_name}: {shown}",
                "write the image's manifest id, or more of its path, on that line",
            )
        i = found[0]
        if i in first_line:
            notes.append(
                f"{where}: '{entry}' names image '{entries[i].id}' again (first on line {first_line[i]}); "
                "it is labeled once"
            )
            continue
        first_line[i] = line
    ids = tuple(entries[i].id for i in first_line)
    return ListedImages(image_list.source, image_list.sha256, ids, notes)


def _no_match_fix(entry: str, names: _PoolNames) -> str:
    """How to mend an entry that names no image: say what is near it."""
    if len(entry.split()) > 1:
        return f"one image a line: this line holds {len(entry.split())} names separated by spaces"
    parts = _parts(entry)
    stem = os.path.splitext(parts[-1])[0] if parts else entry
    if stem in names.by_id:
        near = names.entries[names.by_id[stem]]
        return f"the pool's image '{stem}' is {PurePath(near.image).name}: check the list's file extensions"
    return "check the line's spelling, and that the list is of this pool: a split's list names its training images"


def read_listed_images(
    path: str | os.PathLike[str], entries: Sequence[ManifestEntry], manifest_name: str = "MANIFEST"
) -> ListedImages:
    """Read the image list ``path`` and match it to the pool ``entries`` (:func:`match_image_list`)."""
    return match_image_list(read_image_list(path), entries, manifest_name)
