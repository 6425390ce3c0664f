"""CVAT: the export package ("CVAT for images 1.1" with the regions as boxes) and the reader of its annotations.xml.

Export: ``images/``, ``labels.json`` (CVAT's label constructor: ``head`` points, ``region``
rectangles, the ``done`` tag) and ``annotations.xml`` in "CVAT for images 1.1" with one
``<image>`` per image and each region as ``<box label="region">``.

Import reads the same format back: ``<points label="head" points="x,y;x,y">`` per image,
pixels. CVAT lists every image of a task, so an image without head points counts as labeled
only with the image tag ``done``. The XML is parsed only after a pass that refuses any
DOCTYPE or ENTITY declaration (no entity expansion, no external entities).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.parsers import expat

from crowdtk.errors import CrowdtkError
from crowdtk.formats import RegionsEntry
from crowdtk.labeling.common import DONE, HEAD, INSTRUCTION, REGION, BaseExport, Returned, write_json, write_text
from crowdtk.labeling.reading import Collector, image_reference, points_array

UNIT = "image"
XML = "annotations.xml"
LABELS = "labels.json"
# The labels of a task, in both the label constructor (labels.json) and the XML's <meta>.
_LABELS = ((HEAD, "#ff0000", "points"), (REGION, "#ffa500", "rectangle"), (DONE, "#00a000", "tag"))


def cvat_xml(images: list[tuple[RegionsEntry, str]]) -> str:
    """annotations.xml for (entry, file name) pairs: the task's labels and each region as a box."""
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    meta = ET.SubElement(root, "meta")
    task = ET.SubElement(meta, "task")
    ET.SubElement(task, "name").text = "crowdtk regions"
    ET.SubElement(task, "size").text = str(len(images))
    ET.SubElement(task, "mode").text = "annotation"
    labels = ET.SubElement(task, "labels")
    for name, color, kind in _LABELS:
        label = ET.SubElement(labels, "label")
        ET.SubElement(label, "name").text = name
        ET.SubElement(label, "color").text = color
        ET.SubElement(label, "type").text = kind
        ET.SubElement(label, "attributes")
    root.append(ET.Comment(f" {INSTRUCTION} "))
    for i, (entry, name) in enumerate(images):
        image = ET.SubElement(root, "image", id=str(i), name=name, width=str(entry.width), height=str(entry.height))
        for r in entry.regions:
            ET.SubElement(image, "box", label=REGION, source="manual", occluded="0", xtl=f"{r.x0:.2f}", ytl=f"{r.y0:.2f}",
                          xbr=f"{r.x1:.2f}", ybr=f"{r.y1:.2f}", z_order="0")
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


class Export(BaseExport):
    """The placed images; one XML file for all of them is written at the end."""

    def finish(self) -> None:
        write_text(self.out / XML, cvat_xml(self.placed))
        write_json(self.out / LABELS, [{"name": name, "color": color, "type": kind, "attributes": []} for name, color, kind in _LABELS])


def steps(image_url: str) -> str:
    return (
        "1. Create a CVAT task with the labels of labels.json (Raw label constructor) and the images of images/.\n"
        "2. Upload annotations.xml (Actions > Upload annotations, format 'CVAT 1.1'): the orange boxes are the regions.\n"
        "3. Add 'head' points on every head inside a region. An image whose regions hold no head at all needs the\n"
        "   image tag 'done' (otherwise it reads as not labeled yet).\n"
        "4. Export the task as 'CVAT for images 1.1', unzip it, and run\n"
        "   crowdtk import REGIONS --from cvat annotations.xml."
    )


def parse_xml_safely(path: Path) -> ET.Element:
    """Parse XML, refusing DOCTYPE and ENTITY declarations (entity expansion, external entities)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CrowdtkError(f"{path}: no such file", "check the path") from None
    except IsADirectoryError:
        raise CrowdtkError(f"{path}: is a folder, expected an XML file", f"pass the {XML} of the CVAT export") from None

    def refuse(*_: Any) -> None:
        raise CrowdtkError(f"{path}: XML with a DOCTYPE or ENTITY declaration is refused (entity expansion)",
                           "export the annotations again from CVAT; its files have no DOCTYPE")

    # A first pass with expat's own handlers sees declarations before ElementTree would expand them.
    guard = expat.ParserCreate()
    guard.StartDoctypeDeclHandler = refuse
    guard.EntityDeclHandler = refuse
    guard.UnparsedEntityDeclHandler = refuse
    guard.ExternalEntityRefHandler = lambda *_: refuse()
    try:
        guard.Parse(data, True)
        return ET.fromstring(data)
    except (expat.ExpatError, ET.ParseError, ValueError, LookupError) as exc:  # LookupError: an unknown encoding
        raise CrowdtkError(f"{path}: not well-formed XML ({exc})", "pass the annotations file the labeling tool exported") from None


def _head_points(image: ET.Element, found: Collector, where: str) -> list[tuple[float, float]]:
    """The 'x,y;x,y' pairs of the image's head <points> shapes; other labels are counted as ignored."""
    points = []
    for shape in image.iter("points"):
        if shape.get("label") != HEAD:
            found.ignored += 1
            continue
        for pair in (shape.get("points") or "").split(";"):
            if pair.strip():
                xy = pair.split(",")
                if len(xy) != 2:
                    raise CrowdtkError(f"{where}: points '{pair}' is not 'x,y'", "re-export from CVAT")
                try:
                    points.append((float(xy[0]), float(xy[1])))
                except ValueError:
                    raise CrowdtkError(f"{where}: points '{pair}' is not numbers", "re-export from CVAT") from None
    return points


def read(path: Path, entries: Sequence[RegionsEntry]) -> Returned:
    if path.is_dir():
        path = path / XML
    root = parse_xml_safely(path)
    if root.tag != "annotations":
        raise CrowdtkError(f"{path}: not a CVAT for images 1.1 file (root <{root.tag}>)", "export the task as 'CVAT for images 1.1'")
    found = Collector(entries)
    for image in root.iter("image"):
        where = f"{path}: image '{image.get('name')}'"
        name = image_reference(image.get("name"), path.parent, path.parent, where)
        entry = found.matcher.find(name)
        found.check_size(entry, image.get("width"), image.get("height"), where)
        points = _head_points(image, found, where)
        if points or any(tag.get("label") == DONE for tag in image.iter("tag")):
            found.add(name, entry, points_array(points, where), where)
        # else: untouched (CVAT lists every image of a task): reported as missing
    return found.returned()
