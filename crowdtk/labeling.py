"""The labeling loop: regions go out to labeling tools (``export``) and come back as labels (``import``).

Export folders (``crowdtk export REGIONS --to FORMAT -o DIR``) hold ``README.txt`` (the
instruction and the steps for the tool), ``index.json`` (a ``labeling-export`` header, the
tool, the instruction, and per image its file and regions; for crops each crop's offset) and:

- ``crops``: ``crops/<image>__r<k>.png``, one PNG per region. Labelers write a points file
  beside each crop, named like it: ``crops/<image>__r<k>.txt`` ("x y" per line, ``#``
  comments; also ``.json`` or ``.csv``), in crop pixels; import adds the offsets
  (``x``, ``y`` in ``index.json``, i.e. the region's ``x0``, ``y0``).
- ``labelstudio``: ``images/``, ``config.xml`` (a KeyPointLabels ``kp`` with the label ``head``
  and a RectangleLabels ``region``; the instruction as a Header) and ``tasks.json``: one task
  per image, ``data`` = ``{"image": <--image-url>images/<file>, "crowdtk_id", "regions",
  "instruction"}`` and the regions as pre-annotation rectangles (``predictions``) in Label
  Studio's percent convention (x, y, width, height in 0–100 of the image's width/height).
  Import reads Label Studio's JSON export (a list of tasks; per task the ground-truth
  annotation, else the last one not cancelled; its ``keypointlabels`` results, percent).
- ``cvat``: ``images/``, ``labels.json`` (CVAT's label constructor: ``head`` points, ``region``
  rectangles) and ``annotations.xml`` in "CVAT for images 1.1" with one ``<image>`` per image
  and each region as ``<box label="region">``. Import reads the same format back:
  ``<points label="head" points="x,y;x,y">`` per image, pixels. CVAT lists every image of a
  task, so an image without head points counts as labeled only with the image tag ``done``.
- ``labelme``: ``images/<file>`` with ``images/<stem>.json`` beside each: ``imagePath``,
  ``imageWidth``, ``imageHeight`` and ``shapes``, the regions as ``rectangle`` shapes labeled
  ``region`` (the instruction in their ``description``). Import reads every LabelMe JSON
  under PATH and takes its ``point`` shapes. The export writes every JSON, so an image
  without point shapes counts as labeled only with its flag ``done`` ticked.

Images are matched to the regions file by ``crowdtk_id`` (Label Studio), else by file name
(``images/<file>``), else by stem = image id. Image references are checked against path
traversal: a reference that resolves outside the folder of the labeled files is refused.
Points go to full-image pixels; points outside their image's regions are dropped and
counted. An image (crops: a region) without any returned annotation is an error unless
``allow_missing``; then it is left out of the labels, never taken as "no heads". XML is
parsed only after a pass that refuses any DOCTYPE or ENTITY declaration (no entity
expansion, no external entities).
"""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse
from xml.parsers import expat
from xml.sax.saxutils import quoteattr

import cv2
import numpy as np

from crowdtk.data import decode_image, read_points, read_points_on_image
from crowdtk.errors import CrowdtkError
from crowdtk.formats import LabelsEntry, ManifestEntry, RegionsEntry, atomic_path

FORMATS = ("crops", "labelstudio", "cvat", "labelme")
INSTRUCTION = ("Label every head whose centre lies inside the region: click once on the centre of each such head, "
               "also partly hidden or very small ones; ignore heads whose centre lies outside the region.")
HEAD = "head"
REGION = "region"
DONE = "done"  # CVAT tag / LabelMe flag: "this image is finished", needed when it has no head points
INDEX = "index.json"
README = "README.txt"
LABELSTUDIO_TASKS = "tasks.json"
LABELSTUDIO_CONFIG = "config.xml"
CVAT_XML = "annotations.xml"
CVAT_LABELS = "labels.json"
CROPS = "crops"
IMAGES = "images"
POINTS_SUFFIXES = (".txt", ".json", ".csv")


# --------------------------------------------------------------------------- names


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


def crop_stem(name: str, k: int) -> str:
    return f"{Path(name).stem}__r{k}"


def _pct(value: float, total: int) -> float:
    return 100.0 * value / total


# --------------------------------------------------------------------------- export


@dataclass
class ExportSummary:
    images: int
    regions: int
    files: list[str] = field(default_factory=list)


def _image_bytes(entry: RegionsEntry) -> bytes:
    import hashlib

    try:
        data = Path(entry.image).read_bytes()
    except FileNotFoundError:
        raise CrowdtkError(f"{entry.image}: image not found (image '{entry.id}' of the regions file)", "check the path, or re-run index and select") from None
    except OSError as exc:
        raise CrowdtkError(f"{entry.image}: cannot read image ({exc.strerror})", "check the file's permissions") from None
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise CrowdtkError(f"{entry.image}: image changed since it was selected (sha256 differs)", "re-run index and select on the current images")
    return data


def _place_image(entry: RegionsEntry, target: Path, link: bool) -> bytes:
    data = _image_bytes(entry)
    target.parent.mkdir(parents=True, exist_ok=True)
    if link:
        os.symlink(Path(entry.image).resolve(), target)
    else:
        target.write_bytes(data)
    return data


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _write_json(path: Path, obj: Any) -> None:
    _write_text(path, json.dumps(obj, indent=1) + "\n")


def export_regions(entries: Sequence[RegionsEntry], out: Path, fmt: str, header: dict[str, Any], link: bool = False,
                   image_url: str = "", on_progress: Callable[[int], None] | None = None) -> ExportSummary:
    """Write the labeling package for ``fmt`` into the (new, empty) folder ``out``."""
    if fmt not in FORMATS:
        raise CrowdtkError(f"--to {fmt}: unknown format", f"use one of {', '.join(FORMATS)}")
    if not entries:
        raise CrowdtkError("the regions file has no regions", "select some regions first")
    names = export_names(entries)
    index_images = []
    tasks, cvat_images = [], []
    for entry, name in zip(entries, names):
        record: dict[str, Any] = {"id": entry.id, "width": entry.width, "height": entry.height, "sha256": entry.sha256,
                                  "regions": [{"x0": r.x0, "x1": r.x1, "y0": r.y0, "y1": r.y1} for r in entry.regions]}
        if fmt == "crops":
            image = decode_image(_image_bytes(entry), entry.image)
            if image.shape[:2] != (entry.height, entry.width):
                raise CrowdtkError(f"{entry.image}: image is {image.shape[1]}x{image.shape[0]}, the regions file says {entry.width}x{entry.height}",
                                   "re-run index and select")
            for k, (region, rr) in enumerate(zip(entry.regions, record["regions"])):
                stem = crop_stem(name, k)
                crop = np.ascontiguousarray(image[region.y0:region.y1, region.x0:region.x1, ::-1])
                target = out / CROPS / f"{stem}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                if not cv2.imwrite(str(target), crop):
                    raise CrowdtkError(f"{target}: cannot write the crop", "check the output folder")
                rr.update(crop=f"{CROPS}/{stem}.png", points=f"{CROPS}/{stem}.txt", x=region.x0, y=region.y0,
                          crop_width=region.x1 - region.x0, crop_height=region.y1 - region.y0)
        else:
            _place_image(entry, out / IMAGES / name, link)
            record["file"] = f"{IMAGES}/{name}"
        if fmt == "labelstudio":
            tasks.append(_labelstudio_task(entry, f"{image_url}{IMAGES}/{name}"))
        elif fmt == "cvat":
            cvat_images.append((entry, name))
        elif fmt == "labelme":
            _write_json(out / IMAGES / f"{Path(name).stem}.json", _labelme_record(entry, name))
        index_images.append(record)
        if on_progress:
            on_progress(1)
    if fmt == "labelstudio":
        _write_json(out / LABELSTUDIO_TASKS, tasks)
        _write_text(out / LABELSTUDIO_CONFIG, labelstudio_config())
    elif fmt == "cvat":
        _write_text(out / CVAT_XML, _cvat_xml(cvat_images))
        _write_json(out / CVAT_LABELS, [{"name": HEAD, "color": "#ff0000", "type": "points", "attributes": []},
                                        {"name": REGION, "color": "#ffa500", "type": "rectangle", "attributes": []},
                                        {"name": DONE, "color": "#00a000", "type": "tag", "attributes": []}])
    _write_json(out / INDEX, {**header, "tool": fmt, "instruction": INSTRUCTION, "images": index_images})
    _write_text(out / README, _readme(fmt, image_url))
    files = sorted(str(p.relative_to(out)) for p in out.iterdir())
    return ExportSummary(len(entries), sum(len(e.regions) for e in entries), files)


def labelstudio_config() -> str:
    return (
        "<View>\n"
        f"  <Header value={quoteattr(INSTRUCTION)}/>\n"
        '  <Image name="image" value="$image" zoom="true"/>\n'
        '  <KeyPointLabels name="kp" toName="image">\n'
        f'    <Label value="{HEAD}" background="red"/>\n'
        "  </KeyPointLabels>\n"
        f'  <RectangleLabels name="{REGION}" toName="image">\n'
        f'    <Label value="{REGION}" background="orange"/>\n'
        "  </RectangleLabels>\n"
        "</View>\n"
    )


def _labelstudio_task(entry: RegionsEntry, image: str) -> dict[str, Any]:
    results = [{
        "id": f"region{k}",
        "from_name": REGION,
        "to_name": "image",
        "type": "rectanglelabels",
        "original_width": entry.width,
        "original_height": entry.height,
        "image_rotation": 0,
        "value": {"x": _pct(r.x0, entry.width), "y": _pct(r.y0, entry.height), "width": _pct(r.x1 - r.x0, entry.width),
                  "height": _pct(r.y1 - r.y0, entry.height), "rotation": 0, "rectanglelabels": [REGION]},
    } for k, r in enumerate(entry.regions)]
    return {
        "data": {"image": image, "crowdtk_id": entry.id, "instruction": INSTRUCTION,
                 "regions": [[r.x0, r.y0, r.x1, r.y1] for r in entry.regions]},
        "predictions": [{"model_version": "crowdtk select", "result": results}],
    }


def _cvat_xml(images: list[tuple[RegionsEntry, str]]) -> str:
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    meta = ET.SubElement(root, "meta")
    task = ET.SubElement(meta, "task")
    ET.SubElement(task, "name").text = "crowdtk regions"
    ET.SubElement(task, "size").text = str(len(images))
    ET.SubElement(task, "mode").text = "annotation"
    labels = ET.SubElement(task, "labels")
    for name, color, kind in ((HEAD, "#ff0000", "points"), (REGION, "#ffa500", "rectangle"), (DONE, "#00a000", "tag")):
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


def _labelme_record(entry: RegionsEntry, name: str) -> dict[str, Any]:
    shapes = [{"label": REGION, "points": [[float(r.x0), float(r.y0)], [float(r.x1), float(r.y1)]], "group_id": None,
               "description": INSTRUCTION, "shape_type": "rectangle", "flags": {}} for r in entry.regions]
    return {"version": "5.4.1", "flags": {DONE: False}, "shapes": shapes, "imagePath": name, "imageData": None,
            "imageHeight": entry.height, "imageWidth": entry.width}


def _readme(fmt: str, image_url: str) -> str:
    steps = {
        "crops": (
            "Each region is one PNG in crops/. For crops/NAME.png write crops/NAME.txt with one 'x y' line per head,\n"
            "in the crop's pixels (origin at the crop's top-left corner); write '# no heads' for a crop without heads.\n"
            "index.json gives each crop's offset (x, y) in its image."
        ),
        "labelstudio": (
            "1. Create a Label Studio project; paste config.xml under Settings > Labeling Interface.\n"
            "2. Make images/ reachable by Label Studio and import tasks.json (Import > Upload files). The tasks'\n"
            f"   image URLs are '{image_url}images/<file>'; set them with crowdtk export --image-url, e.g. an http://\n"
            "   server of this folder, or '/data/local-files/?d=<path under LOCAL_FILES_DOCUMENT_ROOT>/'.\n"
            "3. The orange rectangles (pre-annotations) are the regions; add a 'head' keypoint on every head inside.\n"
            "4. Export as JSON (not JSON-MIN) and run crowdtk import REGIONS --from labelstudio EXPORT.json."
        ),
        "cvat": (
            "1. Create a CVAT task with the labels of labels.json (Raw label constructor) and the images of images/.\n"
            "2. Upload annotations.xml (Actions > Upload annotations, format 'CVAT 1.1'): the orange boxes are the regions.\n"
            "3. Add 'head' points on every head inside a region. An image whose regions hold no head at all needs the\n"
            "   image tag 'done' (otherwise it reads as not labeled yet).\n"
            "4. Export the task as 'CVAT for images 1.1', unzip it, and run\n"
            "   crowdtk import REGIONS --from cvat annotations.xml."
        ),
        "labelme": (
            "Open images/ in LabelMe (labelme images/ --nodata). Each image's JSON already holds its regions as\n"
            "rectangles labeled 'region'; add a point labeled 'head' on every head inside them, tick the flag\n"
            "'done' when an image is finished (needed when it has no heads: otherwise it reads as not labeled yet), and save.\n"
            "Then run crowdtk import REGIONS --from labelme images/."
        ),
    }[fmt]
    return (f"crowdtk labeling package ({fmt})\n\nInstruction for labelers:\n  {INSTRUCTION}\n\n"
            "A point counts for the region that contains it; points outside every region are dropped on import.\n\n"
            f"{steps}\n")


# --------------------------------------------------------------------------- import


@dataclass
class ImportResult:
    """Labels read back, with what was dropped, missing, or not recognised."""

    entries: list[LabelsEntry]
    dropped: dict[str, int] = field(default_factory=dict)  # image id -> points outside its regions
    missing: list[str] = field(default_factory=list)  # images (crops: regions) without an annotation
    unknown: list[str] = field(default_factory=list)  # annotated images that are not in the regions file
    ignored: int = 0  # annotations of other kinds (labels other than 'head')

    @property
    def heads(self) -> int:
        return sum(len(e.points) for e in self.entries)


class _Matcher:
    def __init__(self, entries: Sequence[RegionsEntry]) -> None:
        names = export_names(entries)
        self.by_id = {e.id: e for e in entries}
        self.by_file = {n.lower(): e for n, e in zip(names, entries)}
        self.by_stem = {Path(n).stem.lower(): e for n, e in zip(names, entries)}
        self.names = dict(zip((e.id for e in entries), names))

    def find(self, name: str) -> RegionsEntry | None:
        base = PurePosixPath(name).name
        stem = PurePosixPath(base).stem
        return self.by_file.get(base.lower()) or self.by_id.get(stem) or self.by_stem.get(stem.lower())


def image_reference(ref: Any, folder: Path, root: Path, source: str) -> str:
    """The file name an annotation tool gives for an image, checked against path traversal.

    ``folder`` is where relative references start; ``root`` is the folder they must stay in.
    URLs (``http://…``) and Label Studio's ``/data/upload/…`` keep only their last component;
    ``/data/local-files/?d=…`` must be a relative path without ``..``.
    """
    if not isinstance(ref, str) or not ref.strip():
        raise CrowdtkError(f"{source}: an image reference is not a file name ({ref!r})", "re-export from the labeling tool")
    text = ref.strip().replace("\\", "/")
    try:
        return _reference_name(ref, text, folder, root, source)
    except ValueError as exc:  # urlparse: e.g. an invalid IPv6 host; a NUL character in a path
        raise CrowdtkError(f"{source}: image reference {ref!r} is not a usable URL or path ({exc})", "re-export from the labeling tool") from None


def _reference_name(ref: str, text: str, folder: Path, root: Path, source: str) -> str:
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text):
        return PurePosixPath(unquote(urlparse(text).path)).name
    if text.startswith("/data/local-files/"):
        inner = parse_qs(urlparse(text).query).get("d", [""])[0].replace("\\", "/")
        if not inner or inner.startswith("/") or ".." in PurePosixPath(inner).parts:
            raise CrowdtkError(f"{source}: image reference '{ref}' points outside Label Studio's document root", "re-export from the labeling tool")
        return PurePosixPath(inner).name
    if text.startswith("/data/upload/"):
        return re.sub(r"^[0-9a-f]{8}-", "", PurePosixPath(text).name)
    path = Path(text)
    target = path if path.is_absolute() else folder / path
    resolved, top = Path(os.path.normpath(os.path.abspath(target))), Path(os.path.normpath(os.path.abspath(root)))
    if resolved != top and top not in resolved.parents:
        raise CrowdtkError(f"{source}: image reference '{ref}' points outside {root} (path traversal)",
                           "image names must stay inside the labeled folder; re-export from the labeling tool")
    return resolved.name


def _points(values: list[tuple[float, float]], source: str) -> np.ndarray:
    try:
        points = np.asarray(values, dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        raise CrowdtkError(f"{source}: point coordinates are not numbers", "fix or re-export the annotations") from None
    if not np.isfinite(points).all():
        raise CrowdtkError(f"{source}: point coordinates are NaN or infinite", "fix or re-export the annotations")
    return points


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CrowdtkError(f"{path}: no such file", "check the path") from None
    except IsADirectoryError:
        raise CrowdtkError(f"{path}: is a folder, expected a JSON file", "pass the exported JSON file") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, or an integer of > 4300 digits
        raise CrowdtkError(f"{path}: not JSON ({exc})", "pass the file the labeling tool exported") from None
    except RecursionError:
        raise CrowdtkError(f"{path}: not usable JSON (nested too deeply)", "pass the file the labeling tool exported") from None


def _list_of(value: Any, name: str, where: str) -> list:
    """A JSON list field of a tool's export (missing or null: empty); anything else is refused."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise CrowdtkError(f"{where}: '{name}' is not a list", "re-export from the labeling tool")
    return value


def parse_xml_safely(path: Path) -> ET.Element:
    """Parse XML, refusing DOCTYPE and ENTITY declarations (entity expansion, external entities)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CrowdtkError(f"{path}: no such file", "check the path") from None
    except IsADirectoryError:
        raise CrowdtkError(f"{path}: is a folder, expected an XML file", f"pass the {CVAT_XML} of the CVAT export") from None

    def refuse(*_: Any) -> None:
        raise CrowdtkError(f"{path}: XML with a DOCTYPE or ENTITY declaration is refused (entity expansion)",
                           "export the annotations again from CVAT; its files have no DOCTYPE")

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


class _Collector:
    """Points per image (full-image pixels), refusing an image annotated twice."""

    def __init__(self, entries: Sequence[RegionsEntry]) -> None:
        self.matcher = _Matcher(entries)
        self.points: dict[str, np.ndarray] = {}
        self.unknown: list[str] = []
        self.ignored = 0

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
            raise CrowdtkError(f"{source}: image size of '{entry.id}' is not a number", "re-export from the labeling tool") from None
        if size != (entry.width, entry.height):
            raise CrowdtkError(f"{source}: image '{entry.id}' is {size[0]}x{size[1]} there, {entry.width}x{entry.height} in the regions file",
                               "label the images the regions were selected on")


def _read_labelstudio(path: Path, entries: Sequence[RegionsEntry]) -> _Collector:
    found = _Collector(entries)
    tasks = _load_json(path)
    if isinstance(tasks, dict):
        tasks = [tasks]
    if not isinstance(tasks, list):
        raise CrowdtkError(f"{path}: not a Label Studio JSON export (a list of tasks)", "export the project as JSON")
    for n, task in enumerate(tasks):
        where = f"{path}: task {task.get('id', n) if isinstance(task, dict) else n}"
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise CrowdtkError(f"{where}: not a Label Studio task (no 'data')", "export the project as JSON (not JSON-MIN or CSV)")
        data = task["data"]
        name = image_reference(data.get("image"), path.parent, path.parent, where)
        entry = found.matcher.by_id.get(data["crowdtk_id"]) if isinstance(data.get("crowdtk_id"), str) else found.matcher.find(name)
        annotations = _list_of(task.get("annotations"), "annotations", where)
        annotations = [a for a in annotations if isinstance(a, dict) and not a.get("was_cancelled")]
        if not annotations:
            continue  # not labeled: reported as missing
        chosen = next((a for a in annotations if a.get("ground_truth")), annotations[-1])
        points = []
        for result in _list_of(chosen.get("result"), "result", where):
            if not isinstance(result, dict) or result.get("type") != "keypointlabels":
                continue
            value = result.get("value") or {}
            if not isinstance(value, dict):
                raise CrowdtkError(f"{where}: a keypoint's 'value' is not an object", "re-export from Label Studio")
            labels = _list_of(value.get("keypointlabels"), "keypointlabels", where) or [HEAD]
            if HEAD not in labels:
                found.ignored += 1
                continue
            if entry is not None:
                found.check_size(entry, result.get("original_width"), result.get("original_height"), where)
                try:
                    points.append((float(value["x"]) * entry.width / 100.0, float(value["y"]) * entry.height / 100.0))
                except (KeyError, TypeError, ValueError, OverflowError):
                    raise CrowdtkError(f"{where}: a keypoint lacks numeric x/y", "re-export from Label Studio") from None
        crowdtk_id = data.get("crowdtk_id")
        found.add(crowdtk_id if isinstance(crowdtk_id, str) and crowdtk_id else name, entry, _points(points, where), where)
    return found


def _read_cvat(path: Path, entries: Sequence[RegionsEntry]) -> _Collector:
    if path.is_dir():
        path = path / CVAT_XML
    root = parse_xml_safely(path)
    if root.tag != "annotations":
        raise CrowdtkError(f"{path}: not a CVAT for images 1.1 file (root <{root.tag}>)", "export the task as 'CVAT for images 1.1'")
    found = _Collector(entries)
    for image in root.iter("image"):
        where = f"{path}: image '{image.get('name')}'"
        name = image_reference(image.get("name"), path.parent, path.parent, where)
        entry = found.matcher.find(name)
        found.check_size(entry, image.get("width"), image.get("height"), where)
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
        if points or any(tag.get("label") == DONE for tag in image.iter("tag")):
            found.add(name, entry, _points(points, where), where)
        # else: untouched (CVAT lists every image of a task): reported as missing
    return found


def _read_labelme(path: Path, entries: Sequence[RegionsEntry]) -> _Collector:
    root = path if path.is_dir() else path.parent
    if not path.exists():
        raise CrowdtkError(f"{path}: no such file or folder", "pass the folder of LabelMe JSON files")
    files = sorted(path.rglob("*.json")) if path.is_dir() else [path]
    found = _Collector(entries)
    for file in files:
        record = _load_json(file)
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
                    found.ignored += 1
                continue
            try:
                (x, y), = shape["points"]
                points.append((float(x), float(y)))
            except (KeyError, TypeError, ValueError, OverflowError):
                raise CrowdtkError(f"{file}: a point shape does not hold one [x, y]", "fix it in LabelMe") from None
        flags = record.get("flags") if isinstance(record.get("flags"), dict) else {}
        if points or flags.get(DONE) is True:
            found.add(name, entry, _points(points, str(file)), str(file))
        # else: untouched, reported as missing
    return found


def _read_crops(path: Path, entries: Sequence[RegionsEntry]) -> tuple[dict[str, list[tuple[int, np.ndarray]]], list[str]]:
    """Per image, (region index, full-image points) of each crop that has a points file; and the missing crops."""
    folder = path / CROPS if (path / CROPS).is_dir() else path
    if not folder.is_dir():
        raise CrowdtkError(f"{path}: not a folder", "pass the export folder of --to crops")
    found: dict[str, list[tuple[int, np.ndarray]]] = {}
    missing = []
    for entry, name in zip(entries, export_names(entries)):
        for k, region in enumerate(entry.regions):
            stem = crop_stem(name, k)
            candidates = [folder / f"{stem}{s}" for s in POINTS_SUFFIXES if (folder / f"{stem}{s}").is_file()]
            if len(candidates) > 1:
                raise CrowdtkError(f"{folder}: crop {stem} has several points files ({', '.join(c.name for c in candidates)})", "keep one")
            if not candidates:
                missing.append(f"{entry.id} region {k} ({stem})")
                continue
            points = read_points(candidates[0]) + np.array([region.x0, region.y0], dtype=np.float64)
            found.setdefault(entry.id, []).append((k, points))
    return found, missing


def _whole(entry: RegionsEntry, points: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """An annotation of the whole image: every region returned, the points given to the first."""
    return [(0, points)] + [(k, np.zeros((0, 2))) for k in range(1, len(entry.regions))]


def _assemble(entries: Sequence[RegionsEntry], found: dict[str, list[tuple[int, np.ndarray]]], result: ImportResult) -> None:
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
        result.entries.append(LabelsEntry(entry.id, entry.image, entry.sha256, entry.width, entry.height, regions, points[keep]))


def import_labels(entries: Sequence[RegionsEntry], fmt: str, path: Path, allow_missing: bool = False, regions_name: str = "REGIONS") -> ImportResult:
    """Read a labeling tool's output for the regions ``entries`` back as labels."""
    if fmt not in FORMATS:
        raise CrowdtkError(f"--from {fmt}: unknown format", f"use one of {', '.join(FORMATS)}")
    if not path.exists():
        raise CrowdtkError(f"{path}: no such file or folder", "pass what the labeling tool exported")
    result = ImportResult([])
    if fmt == "crops":
        found, result.missing = _read_crops(path, entries)
    else:
        reader = {"labelstudio": _read_labelstudio, "cvat": _read_cvat, "labelme": _read_labelme}[fmt]
        collected = reader(path, entries)
        result.unknown, result.ignored = collected.unknown, collected.ignored
        found = {image_id: _whole(collected.matcher.by_id[image_id], points) for image_id, points in collected.points.items()}
        result.missing = [e.id for e in entries if e.id not in collected.points]
    if result.missing and not allow_missing:
        shown = ", ".join(result.missing[:3]) + (", …" if len(result.missing) > 3 else "")
        raise CrowdtkError(f"{path}: no annotation for {len(result.missing)} {'region' if fmt == 'crops' else 'image'}(s) of {regions_name}: {shown}",
                           "label them, or pass --allow-missing to leave them out (they are never taken as 'no heads')")
    _assemble(entries, found, result)
    return result


def oracle_labels(entries: Sequence[RegionsEntry], manifest: Sequence[ManifestEntry], manifest_name: str = "MANIFEST",
                  regions_name: str = "REGIONS", on_progress: Callable[[int], None] | None = None) -> ImportResult:
    """The simulated labeler: fill each region with the ground-truth points of the manifest."""
    by_id = {m.id: m for m in manifest}
    unknown = [e.id for e in entries if e.id not in by_id]
    if unknown:
        raise CrowdtkError(f"{regions_name}: names {len(unknown)} image(s) absent from {manifest_name}, e.g. '{unknown[0]}'",
                           "pass the manifest the regions were selected from")
    found: dict[str, list[tuple[int, np.ndarray]]] = {}
    for entry in entries:
        m = by_id[entry.id]
        if m.sha256 != entry.sha256 or (m.width, m.height) != (entry.width, entry.height):
            raise CrowdtkError(f"{regions_name}: image '{entry.id}' differs from the one in {manifest_name}", "pass the manifest the regions were selected from")
        if m.points is None:
            raise CrowdtkError(f"{manifest_name}: image '{entry.id}' has no points file", "the oracle needs ground-truth points for every selected image")
        points, _ = read_points_on_image(m.points, m.width, m.height)
        found[entry.id] = _whole(entry, points)
        if on_progress:
            on_progress(1)
    result = ImportResult([])
    _assemble(entries, found, result)
    result.dropped = {}  # ground truth outside the regions is simply not labeled
    return result


def merge_labels(new: Sequence[LabelsEntry], earlier: Sequence[tuple[str, Sequence[LabelsEntry]]]) -> list[LabelsEntry]:
    """Combine earlier rounds' labels with new ones: one record per image, regions and points united.

    An image in several files keeps all distinct regions; a point of a later file is added only
    when no earlier region of that image already covered it (no double counting).
    """
    merged: dict[str, LabelsEntry] = {}
    order: list[str] = []
    for source, entries in [*earlier, ("the new labels", new)]:
        seen_here: set[str] = set()
        for entry in entries:
            if entry.id in seen_here:
                raise CrowdtkError(f"{source}: image '{entry.id}' appears twice", "regenerate the labels")
            seen_here.add(entry.id)
            old = merged.get(entry.id)
            if old is None:
                merged[entry.id] = entry
                order.append(entry.id)
                continue
            if old.sha256 != entry.sha256:
                raise CrowdtkError(f"{source}: image '{entry.id}' differs from the one in the labels merged before (sha256)",
                                   "merge labels of the same images")
            covered = np.zeros(len(entry.points), dtype=bool)
            for region in old.regions:
                covered |= region.contains(entry.points)
            regions = old.regions + tuple(r for r in entry.regions if r not in old.regions)
            points = np.concatenate([old.points, entry.points[~covered]])
            merged[entry.id] = LabelsEntry(old.id, old.image, old.sha256, old.width, old.height, regions, points)
    return [merged[i] for i in order]
