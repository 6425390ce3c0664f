"""LabelMe: the export package (one LabelMe JSON beside each image) and the reader of those JSON files.

Export: ``images/<file>`` with ``images/<stem>.json`` beside each: ``imagePath``,
``imageWidth``, ``imageHeight`` and ``shapes``, the regions as ``rectangle`` shapes labeled
``region`` (the instruction in their ``description``).

Import reads every LabelMe JSON under PATH and takes its ``point`` shapes. The export writes
every JSON, so an image without point shapes counts as labeled only with its flag ``done``
ticked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crowdtk.errors import CrowdtkError
from crowdtk.formats import RegionsEntry
from crowdtk.labeling.common import DONE, IMAGES, INSTRUCTION, REGION, BaseExport, Returned, write_json
from crowdtk.labeling.reading import Collector, image_reference, load_json, points_array

UNIT = "image"


def labelme_record(entry: RegionsEntry, name: str) -> dict[str, Any]:
    """The LabelMe JSON of one image: its regions as rectangles, the flag ``done`` not yet ticked."""
    shapes = [{"label": REGION, "points": [[float(r.x0), float(r.y0)], [float(r.x1), float(r.y1)]], "group_id": None,
               "description": INSTRUCTION, "shape_type": "rectangle", "flags": {}} for r in entry.regions]
    return {"version": "5.4.1", "flags": {DONE: False}, "shapes": shapes, "imagePath": name, "imageData": None,
            "imageHeight": entry.height, "imageWidth": entry.width}


class Export(BaseExport):
    """Writes each image's JSON as the image is placed (LabelMe opens a folder of image + JSON pairs)."""

    def add(self, entry: RegionsEntry, name: str, record: dict[str, Any]) -> None:
        super().add(entry, name, record)
        write_json(self.out / IMAGES / f"{Path(name).stem}.json", labelme_record(entry, name))


def steps(image_url: str) -> str:
    return (
        "Open images/ in LabelMe (labelme images/ --nodata). Each image's JSON already holds its regions as\n"
        "rectangles labeled 'region'; add a point labeled 'head' on every head inside them, tick the flag\n"
        "'done' when an image is finished (needed when it has no heads: otherwise it reads as not labeled yet), and save.\n"
        "Then run crowdtk import REGIONS --from labelme images/."
    )


def read(path: Path, entries: Sequence[RegionsEntry]) -> Returned:
    root = path if path.is_dir() else path.parent
    if not path.exists():
        raise CrowdtkError(f"{path}: no such file or folder", "pass the folder of LabelMe JSON files")
    files = sorted(path.rglob("*.json")) if path.is_dir() else [path]
    found = Collector(entries)
    for file in files:
        record = load_json(file)
        if not isinstance(record, dict) or not isinstance(record.get("shapes"), list):
            continue  # not a LabelMe file (e.g. index.json)
        image_path = record.get("imagePath") or f"{file.stem}"
        name = image_reference(image_path, file.parent, root, str(file))
        entry = found.matcher.find(name)
        found.check_size(entry, record.get("imageWidth"), record.get("imageHeight"), str(file))
        points = []
        for shape in record["shapes"]:
            if not isinstance(shape, dict) or shape.get("shape_type", "polygon") != "point":
                if not (isinstance(shape, dict) and shape.get("label") == REGION):
                    found.ignored += 1  # the exported region rectangles are not "other annotations"
                continue
            try:
                (x, y), = shape["points"]
                points.append((float(x), float(y)))
            except (KeyError, TypeError, ValueError, OverflowError):
                raise CrowdtkError(f"{file}: a point shape does not hold one [x, y]", "fix it in LabelMe") from None
        flags = record.get("flags") if isinstance(record.get("flags"), dict) else {}
        if points or flags.get(DONE) is True:
            found.add(name, entry, points_array(points, str(file)), str(file))
        # else: untouched, reported as missing
    return found.returned()
