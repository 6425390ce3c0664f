"""CVAT: the export package ("CVAT for images 1.1" with the regions as boxes) and the reader of CVAT's XML.

Export: ``images/``, ``labels.json`` (CVAT's label constructor: ``head`` points, ``region``
rectangles, the ``done`` tag) and ``annotations.xml`` in "CVAT for images 1.1" with one
``<image>`` per image and each region as ``<box label="region">``. With ``--prelabel`` each
suggested head is a ``<points label="head" source="auto">`` shape (CVAT's mark of an automatic
annotation).

Import reads the same format back: ``<points label="head" points="x,y;x,y">`` per image,
pixels, and one point at the centre of each other shape labeled ``head`` (``<box>``: the middle
of its corners, which CVAT's rotation keeps; ``<ellipse>``: ``cx, cy``; ``<polygon>`` and
``<polyline>``: the centroid of the enclosed area, for a two-point line its middle; see
:mod:`~crowdtk.labeling.reading`); a ``head`` mask, cuboid or skeleton is refused. CVAT lists
every image of a task, so an image without head points counts as labeled only with the image
tag ``done``; so does an image holding any ``source="auto"`` head point (an unreviewed
suggestion: a labeler who has corrected them tags the image ``done``), or, after ``export
--prelabel``, exactly its suggestions (the digest in ``index.json``: Datumaro's CVAT reader and
writer drop ``source``). The XML is parsed only after a pass
that refuses any DOCTYPE or ENTITY declaration (no entity expansion, no external entities).

PATH may be the XML file; a folder holding one CVAT XML directly or in its ``annotations/``
subfolder (``annotations.xml`` of an unzipped CVAT export; Datumaro's "cvat" exporter writes
one ``<subset>.xml``, e.g. ``default.xml``, beside ``images/``); or the ``.zip`` that CVAT's
"CVAT for images 1.1" export downloads (``annotations.xml`` plus, optionally, ``images/``).
A folder or archive with several such XML files is refused, naming them. An archive is read
in memory, nothing extracted; one with a member whose name is absolute or holds ``..`` is
refused whole. For a folder or an archive, the report (:attr:`Returned.notes`) names the file
read. Image names are resolved against the XML's folder (an archive: the folder holding it)
under the rule of :mod:`~crowdtk.labeling.reading`.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn
from xml.parsers import expat

import numpy as np

from crowdtk.errors import CrowdtkError
from crowdtk.formats import RegionsEntry, Suggestions
from crowdtk.labeling import common
from crowdtk.labeling.common import (
    DONE,
    HEAD,
    INSTRUCTION,
    REGION,
)
from crowdtk.labeling.reading import (
    Collector,
    allowed_folders,
    box_centre,
    image_reference,
    points_array,
    polygon_centre,
    vertices_array,
)

XML = "annotations.xml"
LABELS = "labels.json"
ANNOTATIONS = "annotations"  # the subfolder an XML may also sit in
MAX_XML_BYTES = 1 << 30  # an archive member larger than this (uncompressed) is refused, not read into memory
# The labels of a task, in both the label constructor (labels.json) and the XML's <meta>.
_LABELS = ((HEAD, "#ff0000", "points"), (REGION, "#ffa500", "rectangle"), (DONE, "#00a000", "tag"))


AUTO = "auto"  # the <points> source of a suggested head

SUGGESTIONS = (
    "The suggested heads are 'head' points of source 'auto': move or delete the wrong ones, add the missed\n"
    "ones, and tag each image 'done' when it is reviewed (an image with suggestions imports only when tagged)."
)


def cvat_xml(
    images: list[tuple[RegionsEntry, str]],
    heads: Mapping[str, np.ndarray] | None = None,
    suggested: Mapping[str, Suggestions] | None = None,
) -> str:
    """annotations.xml for (entry, file name) pairs: the task's labels and each region as a box (and, a
    review round, the ``heads`` per image id; ``--prelabel``, the ``suggested`` heads)."""
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
            ET.SubElement(
                image,
                "box",
                label=REGION,
                source="manual",
                occluded="0",
                xtl=f"{r.x0:.2f}",
                ytl=f"{r.y0:.2f}",
                xbr=f"{r.x1:.2f}",
                ybr=f"{r.y1:.2f}",
                z_order="0",
            )
        if heads is not None:
            _prefilled_heads(image, heads.get(entry.id, np.zeros((0, 2))))
        if suggested is not None:
            for x, y in suggested[entry.id].points:
                ET.SubElement(
                    image,
                    "points",
                    label=HEAD,
                    source=AUTO,
                    occluded="0",
                    points=f"{float(x):.2f},{float(y):.2f}",
                    z_order="0",
                )
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _prefilled_heads(image: ET.Element, points: np.ndarray) -> None:
    """A review round (``export LABELS``): one ``head`` <points> shape per labeled head (``repr`` floats, exact), and
    the image tagged ``done``, so that an image whose regions hold no head reads as labeled."""
    for x, y in points:
        ET.SubElement(
            image, "points", label=HEAD, source="manual", occluded="0", points=f"{float(x)!r},{float(y)!r}", z_order="0"
        )
    ET.SubElement(image, "tag", label=DONE, source="manual")


class Export(common.BaseExport):
    """The placed images; one XML file for all of them is written at the end."""

    def finish(self) -> None:
        common.write_text(
            self.out / XML,
            cvat_xml(self.placed, self.prefill, None if self.prelabels is None else self.prelabels.images),
        )
        common.write_json(
            self.out / LABELS,
            [{"name": name, "color": color, "type": kind, "attributes": []} for name, color, kind in _LABELS],
        )


def steps(image_url: str) -> str:
    return (
        "1. Create a CVAT task with the labels of labels.json (Raw label constructor) and the images of images/.\n"
        "2. Upload annotations.xml (Actions > Upload annotations, format 'CVAT 1.1'): the orange boxes are the "
        "regions.\n"
        "3. Add 'head' points on every head inside a region. An image whose regions hold no head at all needs the\n"
        "   image tag 'done' (otherwise it reads as not labeled yet).\n"
        "4. Export the task as 'CVAT for images 1.1' and run crowdtk import REGIONS --from cvat on the\n"
        "   downloaded .zip (or on its annotations.xml, or the folder it was unzipped to)."
    )


def parse_xml_safely(path: Path) -> ET.Element:
    """Parse XML, refusing DOCTYPE and ENTITY declarations (entity expansion, external entities)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CrowdtkError(f"{path}: no such file", "check the path") from None
    except IsADirectoryError:
        raise CrowdtkError(f"{path}: is a folder, expected an XML file", f"pass the {XML} of the CVAT export") from None
    return parse_xml_bytes(data, str(path))


def parse_xml_bytes(data: bytes, source: str) -> ET.Element:
    """:func:`parse_xml_safely` of XML already read; ``source`` names it in errors."""

    def refuse(*_: Any) -> NoReturn:
        raise CrowdtkError(
            f"{source}: XML with a DOCTYPE or ENTITY declaration is refused (entity expansion)",
            "export the annotations again from CVAT; its files have no DOCTYPE",
        )

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
        raise CrowdtkError(
            f"{source}: not well-formed XML ({exc})", "pass the annotations file the labeling tool exported"
        ) from None


def _is_xml(name: str) -> bool:
    """A CVAT XML's place in a folder or an archive: directly in it, or in its annotations/ subfolder."""
    parts = PurePosixPath(name).parts
    return name.lower().endswith(".xml") and (len(parts) == 1 or (len(parts) == 2 and parts[0] == ANNOTATIONS))


def _only_one(names: list[str], where: Path, choose: str) -> str:
    if not names:
        raise CrowdtkError(
            f"{where}: holds no CVAT XML (annotations.xml, or Datumaro's <subset>.xml, in it or in {ANNOTATIONS}/)",
            "pass the XML file, or the .zip of CVAT's 'CVAT for images 1.1' export",
        )
    if len(names) > 1:
        raise CrowdtkError(f"{where}: holds {len(names)} XML files ({', '.join(names)}), expected one", choose)
    return names[0]


def _folder_xml(folder: Path) -> Path:
    names = sorted(
        p.relative_to(folder).as_posix()
        for d in (folder, folder / ANNOTATIONS)
        if d.is_dir()
        for p in d.iterdir()
        if p.is_file() and _is_xml(p.relative_to(folder).as_posix())
    )
    return folder / _only_one(names, folder, "pass the one to import as PATH")


def _archive_xml(path: Path) -> tuple[str, bytes]:
    """The one CVAT XML of an export archive (member name, bytes), read in memory;
    an archive with path traversal is refused."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            for member in members:
                name = member.filename.replace("\\", "/")
                if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in PurePosixPath(name).parts:
                    raise CrowdtkError(
                        f"{path}: archive member '{member.filename}' points outside the archive (path traversal)",
                        "export the task from CVAT again",
                    )
            xmls = [m.filename for m in members if not m.is_dir() and _is_xml(m.filename)]
            name = _only_one(xmls, path, "unzip it and pass the one to import as PATH")
            info = archive.getinfo(name)
            if info.file_size > MAX_XML_BYTES:
                raise CrowdtkError(
                    f"{path}: {name} is {info.file_size} bytes uncompressed, more than {MAX_XML_BYTES}",
                    "pass a smaller export, or the unzipped XML",
                )
            return name, archive.read(info)
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        NotImplementedError,
        RuntimeError,
        EOFError,
        zlib.error,
        ValueError,
    ) as exc:
        raise CrowdtkError(
            f"{path}: not a readable zip archive ({exc})", "pass the .zip CVAT exported, or the annotations XML"
        ) from None


def _annotations(path: Path) -> tuple[ET.Element, Path, list[Path], str, list[str]]:
    """The XML PATH names: (its root, the folder image names start at, the folders they may point into,
    its name in errors, notes)."""
    if path.is_dir():
        xml = _folder_xml(path)
        notes = [f"read {xml.relative_to(path).as_posix()}, the CVAT XML in {path}"]
        return parse_xml_safely(xml), xml.parent, allowed_folders(path), str(xml), notes
    if path.suffix.lower() == ".zip" or (path.is_file() and zipfile.is_zipfile(path)):
        name, data = _archive_xml(path)
        source = f"{path}:{name}"
        return (
            parse_xml_bytes(data, source),
            path.parent,
            allowed_folders(path.parent),
            source,
            [f"read {name} from {path}"],
        )
    return parse_xml_safely(path), path.parent, allowed_folders(path.parent), str(path), []


def _pairs(text: str | None, where: str) -> list[tuple[float, float]]:
    """The (x, y) of CVAT's 'x,y;x,y' text."""
    points = []
    for pair in (text or "").split(";"):
        if pair.strip():
            xy = pair.split(",")
            if len(xy) != 2:
                raise CrowdtkError(f"{where}: points '{pair}' is not 'x,y'", "re-export from CVAT")
            try:
                points.append((float(xy[0]), float(xy[1])))
            except ValueError:
                raise CrowdtkError(f"{where}: points '{pair}' is not numbers", "re-export from CVAT") from None
    return points


def _attributes(shape: ET.Element, names: tuple[str, ...], where: str) -> list[float]:
    try:
        return [float(shape.get(name, "")) for name in names]
    except ValueError:
        raise CrowdtkError(
            f"{where}: a 'head' <{shape.tag}> lacks numeric {', '.join(names)}", "re-export from CVAT"
        ) from None


# The shapes a 'head' may be drawn as around the head, taken at their centres.
AROUND = ("box", "ellipse", "polygon", "polyline")
FIX = "mark each head as a point (or a box, ellipse or polygon around it) in CVAT"


def _centre(shape: ET.Element, where: str) -> tuple[float, float]:
    """The head point of a 'head' shape that is not <points>: the centre of the shape (see the module's rule)."""
    if shape.tag not in AROUND:
        raise CrowdtkError(f"{where}: a 'head' <{shape.tag}> has no centre crowdtk can take", FIX)
    if shape.tag == "box":  # CVAT turns a box's 'rotation' about its centre: the corners' middle stays
        return box_centre(np.array(_attributes(shape, ("xtl", "ytl", "xbr", "ybr"), where)).reshape(2, 2))
    if shape.tag == "ellipse":
        cx, cy = _attributes(shape, ("cx", "cy"), where)
        return cx, cy
    vertices = vertices_array(_pairs(shape.get("points"), where), 1, f"{where}: a 'head' <{shape.tag}>", FIX)
    return polygon_centre(vertices)


def _head_points(image: ET.Element, found: Collector, where: str) -> tuple[list[tuple[float, float]], bool]:
    """The 'x,y;x,y' pairs of the image's head <points> shapes and the centres of its other head shapes, and whether
    one of them is automatic (a suggestion); <points> of other labels are counted as ignored."""
    points, automatic = [], False
    for shape in image.iter("points"):
        if shape.get("label") != HEAD:
            found.ignored += 1
            continue
        automatic |= shape.get("source") == AUTO
        points += _pairs(shape.get("points"), where)
    for shape in image:
        if shape.tag in ("points", "tag") or shape.get("label") != HEAD:
            continue  # other shapes of other labels (the region boxes among them) are not read
        points.append(_centre(shape, where))
        found.converted[shape.tag] += 1
        automatic |= shape.get("source") == AUTO
    return points, automatic


def read(path: Path, entries: Sequence[RegionsEntry]) -> common.Returned:
    root, folder, roots, source, notes = _annotations(path)
    if root.tag != "annotations":
        raise CrowdtkError(
            f"{source}: not a CVAT for images 1.1 file (root <{root.tag}>)", "export the task as 'CVAT for images 1.1'"
        )
    found = Collector(entries, done_mark=True)
    for image in root.iter("image"):
        where = f"{source}: image '{image.get('name')}'"
        name = image_reference(image.get("name"), folder, roots, where)
        entry = found.matcher.find(name)
        found.check_size(entry, image.get("width"), image.get("height"), where)
        points, automatic = _head_points(image, found, where)
        done = any(tag.get("label") == DONE for tag in image.iter("tag"))
        if done or (points and not automatic):
            found.add(name, entry, points_array(points, where), where, done=done)
        elif automatic:
            found.unreviewed += 1  # suggestions nobody has confirmed: reported as missing
        # else: untouched (CVAT lists every image of a task): reported as missing
    returned = found.returned()
    returned.notes.extend(notes)
    return returned


# The tool's record: export --to cvat and import --from cvat run the parts above.
TOOL = common.register_tool_module(
    __name__, "cvat", help="CVAT for images 1.1", reads="a CVAT XML, or its folder, or the export .zip"
)
