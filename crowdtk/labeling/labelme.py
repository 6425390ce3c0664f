"""LabelMe: the export package (one LabelMe JSON beside each image) and the reader of those JSON files.

Export: ``images/<file>`` with ``images/<stem>.json`` beside each: ``imagePath``,
``imageWidth``, ``imageHeight`` and ``shapes``, the regions as ``rectangle`` shapes labeled
``region`` (the instruction in their ``description``). With ``--prelabel`` each suggested head
is a ``point`` shape labeled ``head`` with the shape flag ``suggested`` and the counter's name and
score in its ``description``.

Import reads every LabelMe JSON under PATH (a folder, searched with its subfolders, or one
JSON file) and takes its ``point`` shapes, and one point at the centre of each other shape
labeled ``head`` (rectangle: the middle of its corners; circle: its centre; polygon, line and
linestrip: the centroid of the enclosed area, for a line the mean of its points; see
:mod:`~crowdtk.labeling.reading`); a ``head`` shape of another kind (a mask) is refused. The
export writes every JSON, so an image without head shapes counts as labeled only with its flag
``done`` ticked; so does an image still holding a shape flagged ``suggested`` (an unreviewed
suggestion), or, after ``export --prelabel``, exactly its suggestions (the digest in
``index.json``) when the flags were lost. Both of LabelMe's layouts import: the JSON beside the
image (``labelme images/``: ``"imagePath": "IMG_1.jpg"``) and a separate labels folder
(``labelme images/ --output labels/``: ``"imagePath": "../images/IMG_1.jpg"``), wherever the
two folders lie. ``imagePath`` is resolved against the JSON's folder: inside PATH or the export
folder around it the image file is read and must have the regions entry's sha256; outside them
it is never opened, and the image is matched by its name alone (the report says how many); the
JSON's image size must be the entry's either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crowdtk.errors import CrowdtkError
from crowdtk.formats import RegionsEntry
from crowdtk.labeling import common
from crowdtk.labeling.common import (
    DONE,
    HEAD,
    IMAGES,
    INSTRUCTION,
    REGION,
    SUGGESTED,
    ExportedImage,
)
from crowdtk.labeling.reading import (
    Collector,
    allowed_folders,
    box_centre,
    image_file,
    load_json,
    points_array,
    polygon_centre,
    vertices_array,
)

SUGGESTIONS = (
    "The suggested heads are points labeled 'head' with the shape flag 'suggested': move or delete the wrong\n"
    "ones, add the missed ones, and tick 'done' when an image is reviewed (an image with suggestions imports "
    "only then)."
)


def labelme_record(image: ExportedImage, name: str) -> dict[str, Any]:
    """The LabelMe JSON of one image (file ``name``): its regions as rectangles, the flag ``done`` not yet ticked (and,
    ``--prelabel``, the suggested heads of the counter's model version)."""
    entry, points, suggested = image.entry, image.points, image.suggested
    shapes: list[dict[str, Any]] = [
        {
            "label": REGION,
            "points": [[float(r.x0), float(r.y0)], [float(r.x1), float(r.y1)]],
            "group_id": None,
            "description": INSTRUCTION,
            "shape_type": "rectangle",
            "flags": {},
        }
        for r in entry.regions
    ]
    record = {
        "version": "5.4.1",
        "flags": {DONE: False},
        "shapes": shapes,
        "imagePath": name,
        "imageData": None,
        "imageHeight": entry.height,
        "imageWidth": entry.width,
    }
    if (
        points is not None
    ):  # a review round (export LABELS): the labeled heads as point shapes, the image already 'done'
        shapes += [_head_shape(x, y, "", {}) for x, y in points]
        record["flags"] = {DONE: True}
    if suggested is not None:
        shapes += [
            _head_shape(x, y, f"{image.model_version} score {score:.2f}", {SUGGESTED: True})
            for (x, y), score in zip(suggested.points, suggested.scores)
        ]
    return record


def _head_shape(x: float, y: float, description: str, flags: dict[str, bool]) -> dict[str, Any]:
    return {
        "label": HEAD,
        "points": [[float(x), float(y)]],
        "group_id": None,
        "description": description,
        "shape_type": "point",
        "flags": flags,
    }


class Export(common.BaseExport):
    """Writes each image's JSON as the image is placed (LabelMe opens a folder of image + JSON pairs)."""

    def add(self, entry: RegionsEntry, name: str, record: dict[str, Any]) -> None:
        super().add(entry, name, record)
        common.write_json(self.out / IMAGES / f"{Path(name).stem}.json", labelme_record(self.exported(entry), name))


def steps(image_url: str) -> str:
    return (
        "Open images/ in LabelMe (labelme images/ --nodata). Each image's JSON already holds its regions as\n"
        "rectangles labeled 'region'; add a point labeled 'head' on every head inside them, tick the flag\n"
        "'done' when an image is finished (needed when it has no heads: otherwise it reads as not labeled yet), "
        "and save.\n"
        "Then run crowdtk import REGIONS --from labelme images/ (after labelme images/ --output labels/:\n"
        "crowdtk import REGIONS --from labelme labels/)."
    )


# The shape types of a 'head' drawn around the head, and how many [x, y] each needs.
AROUND = {"rectangle": 2, "circle": 2, "polygon": 1, "line": 2, "linestrip": 1}
FIX = "mark each head as a point (or a rectangle, circle or polygon around it) in LabelMe"


def _centre(kind: str, shape: dict[str, Any], source: str) -> tuple[float, float]:
    """The head point of a 'head' shape that is not a point: the centre of the shape (see the module's rule)."""
    if kind not in AROUND:
        raise CrowdtkError(f"{source}: a 'head' shape of type '{kind}' has no centre crowdtk can take", FIX)
    vertices = vertices_array(shape.get("points"), AROUND[kind], f"{source}: a 'head' {kind}", FIX)
    if kind == "rectangle":
        return box_centre(vertices)
    if kind == "circle":  # LabelMe's circle: its centre, then a point on its edge
        return float(vertices[0, 0]), float(vertices[0, 1])
    return polygon_centre(vertices)


def read(path: Path, entries: Sequence[RegionsEntry]) -> common.Returned:
    if not path.exists():
        raise CrowdtkError(f"{path}: no such file or folder", "pass the folder of LabelMe JSON files")
    roots = allowed_folders(path if path.is_dir() else path.parent)
    files = sorted(path.rglob("*.json")) if path.is_dir() else [path]
    found = Collector(entries, done_mark=True)
    by_name: list[str] = []  # image references outside PATH and the export folder: matched by name, never opened
    for file in files:
        record = load_json(file)
        if not isinstance(record, dict) or not isinstance(record.get("shapes"), list):
            continue  # not a LabelMe file (e.g. index.json)
        image_path = record.get("imagePath") or f"{file.stem}"
        name, image, outside = image_file(image_path, file.parent, roots, str(file))
        if outside:
            by_name.append(str(image_path))
        entry = found.find(name, image, str(file))
        found.check_size(entry, record.get("imageWidth"), record.get("imageHeight"), str(file))
        points, suggested = [], False
        for shape in record["shapes"]:
            kind = (shape.get("shape_type") or "polygon") if isinstance(shape, dict) else None
            if isinstance(shape, dict) and kind == "point":
                try:
                    ((x, y),) = shape["points"]
                    points.append((float(x), float(y)))
                except (KeyError, TypeError, ValueError, OverflowError):
                    raise CrowdtkError(f"{file}: a point shape does not hold one [x, y]", "fix it in LabelMe") from None
            elif isinstance(shape, dict) and isinstance(kind, str) and shape.get("label") == HEAD:
                points.append(_centre(kind, shape, str(file)))
                found.converted[kind] += 1
            else:
                if not (isinstance(shape, dict) and shape.get("label") == REGION):
                    found.ignored += 1  # the exported region rectangles are not "other annotations"
                continue
            suggested |= isinstance(shape.get("flags"), dict) and shape["flags"].get(SUGGESTED) is True
        given = record.get("flags")
        flags = given if isinstance(given, dict) else {}
        done = flags.get(DONE) is True
        if done or (points and not suggested):
            found.add(name, entry, points_array(points, str(file)), str(file), done=done)
        elif suggested:
            found.unreviewed += 1  # suggestions nobody has confirmed: reported as missing
        # else: untouched, reported as missing
    if by_name:
        found.notes.append(
            f"matched {len(by_name)} image(s) by file name and size only: their imagePath points outside {path} "
            f"and the export folder, so the file was not opened (e.g. {by_name[0]})"
        )
    return found.returned()


# The tool's record: export --to labelme and import --from labelme run the parts above.
TOOL = common.register_tool_module(
    __name__, "labelme", help="a LabelMe JSON beside each image", reads="a folder of LabelMe JSON files"
)
