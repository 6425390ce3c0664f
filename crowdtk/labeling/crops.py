"""Crops: one PNG per region for labeling without a tool, and the reader of the points files written beside them.

Export: ``crops/<image>__r<k>.png``, one PNG per region; ``index.json`` gives each region's
``crop`` and ``points`` file and its offset (``x``, ``y``: the region's ``x0``, ``y0``) with
``crop_width``, ``crop_height``. Labelers write a points file beside each crop, named like it:
``crops/<image>__r<k>.txt`` ("x y" per line, ``#`` comments; also ``.json`` or ``.csv``), in
crop pixels; import adds the offsets. Unlike the other tools, an annotation covers one region,
so "missing" counts regions. A review round (``export LABELS``) writes each crop's points file
with the labeled heads (``repr`` floats, exact), a point where regions overlap in the first
region that contains it; a crop without heads gets ``# no heads``. With ``--prelabel`` each
crop's points file holds the counter's suggested heads under a first line ``# suggested by
<counter> …``; a points file that still starts with it is not imported (the labeler deletes
that line when the crop is reviewed).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from crowdtk.data import decode_image, read_points
from crowdtk.errors import CrowdtkError
from crowdtk.formats import RegionsEntry
from crowdtk.labeling import common
from crowdtk.labeling.common import (
    SUGGESTED_MARK,
    Found,
    export_names,
    image_bytes,
)

CROPS = "crops"
POINTS_SUFFIXES = (".txt", ".json", ".csv")
SUGGESTIONS = (
    "The points files crops/NAME.txt already hold the suggested heads: fix them (delete wrong lines, correct\n"
    "misplaced points, add missed heads), then delete the first line '# suggested by …' (a file that still\n"
    "starts with it is not imported)."
)


def crop_stem(name: str, k: int) -> str:
    """The file stem of region ``k`` of the image exported as ``name``: the crop and its points file share it."""
    return f"{Path(name).stem}__r{k}"


class Export(common.BaseExport):
    """Cuts each region out of its image; the image itself is not copied."""

    def add(self, entry: RegionsEntry, name: str, record: dict[str, Any]) -> None:
        image = decode_image(image_bytes(entry), entry.image)
        # The regions' pixel coordinates are only meaningful on the image size they were selected on.
        if image.shape[:2] != (entry.height, entry.width):
            raise CrowdtkError(
                f"{entry.image}: image is {image.shape[1]}x{image.shape[0]}, the regions file says "
                f"{entry.width}x{entry.height}",
                "re-run index and select",
            )
        points = self.prefilled(entry)
        suggested = self.suggested(entry)
        if suggested is not None:  # --prelabel: the suggestions go where a review round's points go, behind the mark
            points = suggested.points
        unwritten = None if points is None else np.ones(len(points), dtype=bool)
        for k, (region, rr) in enumerate(zip(entry.regions, record["regions"])):
            stem = crop_stem(name, k)
            crop = np.ascontiguousarray(image[region.y0 : region.y1, region.x0 : region.x1, ::-1])  # RGB -> BGR for cv2
            target = self.out / CROPS / f"{stem}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(target), crop):
                raise CrowdtkError(f"{target}: cannot write the crop", "check the output folder")
            rr.update(
                crop=f"{CROPS}/{stem}.png",
                points=f"{CROPS}/{stem}.txt",
                x=region.x0,
                y=region.y0,
                crop_width=region.x1 - region.x0,
                crop_height=region.y1 - region.y0,
            )
            if points is not None and unwritten is not None:  # the crop's labeled heads (a review round) or suggestions
                here = unwritten & region.contains(points)
                unwritten &= ~here
                local = points[here] - np.array(
                    [region.x0, region.y0], dtype=np.float64
                )  # exact: import adds the offset back
                text = (
                    "# x y\n" + "".join(f"{float(x)!r} {float(y)!r}\n" for x, y in local)
                    if len(local)
                    else "# no heads\n"
                )
                if self.prelabels is not None:
                    text = (
                        f"{SUGGESTED_MARK} {self.prelabels.model_version}: "
                        f"correct the points, then delete this line\n{text}"
                    )
                common.write_text(self.out / CROPS / f"{stem}.txt", text)


def steps(image_url: str) -> str:
    return (
        "Each region is one PNG in crops/. For crops/NAME.png write crops/NAME.txt with one 'x y' line per head,\n"
        "in the crop's pixels (origin at the crop's top-left corner); write '# no heads' for a crop without heads.\n"
        "index.json gives each crop's offset (x, y) in its image."
    )


def read(path: Path, entries: Sequence[RegionsEntry]) -> common.Returned:
    """Per image, (region index, full-image points) of each crop that has a points file; and the missing crops."""
    folder = path / CROPS if (path / CROPS).is_dir() else path
    if not folder.is_dir():
        raise CrowdtkError(f"{path}: not a folder", "pass the export folder of --to crops")
    found: Found = {}
    missing, unreviewed = [], 0
    for entry, name in zip(entries, export_names(entries)):
        for k, region in enumerate(entry.regions):
            stem = crop_stem(name, k)
            candidates = [folder / f"{stem}{s}" for s in POINTS_SUFFIXES if (folder / f"{stem}{s}").is_file()]
            if len(candidates) > 1:
                raise CrowdtkError(
                    f"{folder}: crop {stem} has several points files ({', '.join(c.name for c in candidates)})",
                    "keep one",
                )
            if not candidates or _unreviewed(candidates[0]):
                missing.append(f"{entry.id} region {k} ({stem})")
                unreviewed += bool(candidates)
                continue
            points = read_points(candidates[0]) + np.array([region.x0, region.y0], dtype=np.float64)
            found.setdefault(entry.id, []).append((k, points))
    return common.Returned(found, missing, unreviewed=unreviewed)


def _unreviewed(points_file: Path) -> bool:
    """Whether a points file still starts with the mark of suggestions (``export --prelabel``) nobody has confirmed."""
    if points_file.suffix != ".txt":
        return False
    try:
        with points_file.open(encoding="utf-8", errors="replace") as f:
            return f.readline().startswith(SUGGESTED_MARK)
    except OSError:
        return False  # the points reader reports the file


# The tool's record: export --to crops and import --from crops run the parts above.
TOOL = common.register_tool_module(
    __name__,
    "crops",
    help="one PNG per region",
    reads="the export folder, with the points files beside the crops",
    unit="region",
)
