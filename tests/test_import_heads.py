"""`crowdtk import` loses no labels on the way back from a labeling tool.

A 'head' drawn as a shape around the head (LabelMe rectangle/circle/polygon, CVAT box/ellipse/polygon, Label Studio
rectangle/ellipse/polygon) is one head at the shape's centre, and the import says how many it converted; suggestions
of `export --prelabel` that come back untouched after a tool dropped their marks (Datumaro and CVAT's
`source="auto"`) are not labels; `labelme images/ --output labels/` imports from `labels/` wherever it lies.
"""

from __future__ import annotations

import json
import math
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from conftest import assert_clean_failure, export_package, import_from, labelstudio_export, truth

from crowdtk.formats import read_labels, read_regions
from crowdtk.labeling import export_regions
from crowdtk.labeling.common import suggestions_digest
from crowdtk.labeling.reading import polygon_centre
from crowdtk.prelabel import Prelabels, Suggestions

# A square of side 8 around the head with three more vertices on its right edge: the centroid of its area is the head,
# the mean of its vertices lies 12/7 px to the right of it.
SQUARE_WITH_EXTRA_VERTICES = np.array([[-4, -4], [4, -4], [4, -2], [4, 0], [4, 2], [4, 4], [-4, 4]], dtype=float)


def assert_oracle_labels(labels: Path, labeled, ids: list[str] | None = None) -> None:
    """The imported labels are the oracle's (of the images ``ids``, by default all)."""
    _, got = read_labels(labels)
    _, want = read_labels(labeled["oracle"])
    want = [w for w in want if ids is None or w.id in ids]
    assert [e.id for e in got] == [e.id for e in want]
    for g, w in zip(got, want):
        assert g.regions == w.regions
        np.testing.assert_allclose(np.sort(g.points, axis=0), np.sort(w.points, axis=0), atol=1e-6)


def rotated_top_left(x: float, y: float, width: float, height: float, degrees: float) -> tuple[float, float]:
    """The top-left corner of a box centred on (x, y) turned by ``degrees`` about that corner (Label Studio)."""
    a = math.radians(degrees)
    return x - (width * math.cos(a) - height * math.sin(a)) / 2, y - (width * math.sin(a) + height * math.cos(a)) / 2


# --------------------------------------------------------------------------- the rules themselves


def test_polygon_centre_is_the_area_centroid_and_a_line_s_middle():
    centre = polygon_centre(SQUARE_WITH_EXTRA_VERTICES + [1000.0, 2000.0])
    np.testing.assert_allclose(centre, [1000.0, 2000.0], atol=1e-9)
    assert SQUARE_WITH_EXTRA_VERTICES.mean(axis=0)[0] > 1.7  # the vertex mean would be off
    np.testing.assert_allclose(polygon_centre(np.array([[0.0, 0.0], [10.0, 4.0]])), [5.0, 2.0])
    np.testing.assert_allclose(polygon_centre(np.array([[0.0, 0.0], [2.0, 2.0], [4.0, 4.0]])), [2.0, 2.0])
    np.testing.assert_allclose(polygon_centre(np.array([[3.0, 5.0]])), [3.0, 5.0])


def test_suggestions_digest_is_order_free_at_cvat_precision():
    points = np.array([[10.123456, 20.5], [3.0, 4.004999]])
    written = np.array([[float(f"{v:.2f}") for v in p] for p in points])  # as CVAT's XML holds them
    assert suggestions_digest(points) == suggestions_digest(written[::-1])
    assert suggestions_digest(points) != suggestions_digest(points + [0.01, 0.0])
    assert suggestions_digest(np.zeros((0, 2))) == suggestions_digest(np.zeros((0, 2)))


# --------------------------------------------------------------------------- 'head' shapes


def test_labelme_head_shapes_are_taken_at_their_centres(labeled):
    out = export_package(labeled, "labelme")
    _, regions = read_regions(labeled["regions"])
    everything = truth(labeled)
    files = sorted((out / "images").glob("*.json"))
    for file in files:
        record = json.loads(file.read_text())
        entry = next(e for e in regions if e.id.replace(" ", "_") == Path(record["imagePath"]).stem)
        (x0, y0), (x1, y1), (x2, y2), *rest = (tuple(map(float, p)) for p in everything[entry.id])
        record["shapes"] += [
            {"label": "head", "points": [[x0 - 3, y0 - 5], [x0 + 3, y0 + 5]], "shape_type": "rectangle", "flags": {}},
            {"label": "head", "points": [[x1, y1], [x1 + 6, y1]], "shape_type": "circle", "flags": {}},
            {"label": "head", "points": (SQUARE_WITH_EXTRA_VERTICES + [x2, y2]).tolist(), "shape_type": "polygon"},
            {"label": "person", "points": [[0, 0], [9, 0], [9, 9]], "shape_type": "polygon", "flags": {}},
        ] + [{"label": "head", "points": [[x, y]], "shape_type": "point", "flags": {}} for x, y in rest]
        file.write_text(json.dumps(record))
    labels = labeled["tmp"] / "labelme-labels.jsonl"
    result = import_from(labeled, "labelme", out / "images", labels)
    assert result.exit_code == 0, result.output
    assert "took 12 'head' shape(s) that are not points" in result.stderr, result.stderr
    assert "(4 circle, 4 polygon, 4 rectangle)" in result.stderr
    assert "ignored 4 annotation(s)" in result.stderr  # the 'person' polygons: other labels as before
    assert_oracle_labels(labels, labeled)

    # a 'head' of a kind without a centre is refused, never dropped
    record = json.loads(files[0].read_text())
    record["shapes"].append({"label": "head", "points": [[1, 1], [5, 5]], "shape_type": "mask", "mask": "x"})
    files[0].write_text(json.dumps(record))
    bad = labeled["tmp"] / "bad.jsonl"
    assert_clean_failure(import_from(labeled, "labelme", out / "images", bad), "'head' shape of type 'mask'", bad)


def test_cvat_head_boxes_ellipses_and_polygons_are_taken_at_their_centres(labeled):
    out = export_package(labeled, "cvat")
    tree = ET.parse(out / "annotations.xml")
    _, regions = read_regions(labeled["regions"])
    everything = truth(labeled)
    for image, entry in zip(tree.getroot().findall("image"), regions):
        (x0, y0), (x1, y1), (x2, y2), *rest = (tuple(map(float, p)) for p in everything[entry.id])
        common = {"label": "head", "source": "manual", "occluded": "0", "z_order": "0"}
        corners = {"xtl": x0 - 3, "ytl": y0 - 5, "xbr": x0 + 3, "ybr": y0 + 5}
        ET.SubElement(image, "box", **common, rotation="30", **{k: repr(v) for k, v in corners.items()})
        ET.SubElement(image, "ellipse", **common, cx=repr(x1), cy=repr(y1), rx="4", ry="6")
        polygon = ";".join(f"{x!r},{y!r}" for x, y in (SQUARE_WITH_EXTRA_VERTICES + [x2, y2]).tolist())
        ET.SubElement(image, "polygon", **common, points=polygon)
        ET.SubElement(image, "polygon", **{**common, "label": "person"}, points="0,0;9,0;9,9")
        ET.SubElement(image, "points", **common, points=";".join(f"{x!r},{y!r}" for x, y in rest))
    tree.write(out / "annotations.xml", encoding="utf-8", xml_declaration=True)
    labels = labeled["tmp"] / "cvat-labels.jsonl"
    result = import_from(labeled, "cvat", out / "annotations.xml", labels)
    assert result.exit_code == 0, result.output
    assert "took 12 'head' shape(s) that are not points" in result.stderr, result.stderr
    assert "(4 box, 4 ellipse, 4 polygon)" in result.stderr
    assert_oracle_labels(labels, labeled)

    image = tree.getroot().find("image")
    assert image is not None
    ET.SubElement(image, "mask", label="head", source="manual", rle="3, 4", left="1", top="1", width="2", height="2")
    tree.write(out / "annotations.xml", encoding="utf-8", xml_declaration=True)
    bad = labeled["tmp"] / "bad.jsonl"
    assert_clean_failure(import_from(labeled, "cvat", out / "annotations.xml", bad), "'head' <mask>", bad)


def test_labelstudio_head_rectangles_ellipses_and_polygons_are_taken_at_their_centres(labeled):
    tasks, regions, everything = labelstudio_export(labeled)
    exported = []
    for n, (task, entry) in enumerate(zip(tasks, regions)):
        w, h = entry.width / 100, entry.height / 100  # pixels per percent
        (x0, y0), (x1, y1), (x2, y2), *rest = (tuple(map(float, p)) for p in everything[entry.id])
        left, top = rotated_top_left(x0, y0, 6, 10, 30)
        polygon = ((SQUARE_WITH_EXTRA_VERTICES + [x2, y2]) / [w, h]).tolist()
        values = [
            ("rectanglelabels", {"x": left / w, "y": top / h, "width": 6 / w, "height": 10 / h, "rotation": 30}),
            ("ellipselabels", {"x": x1 / w, "y": y1 / h, "radiusX": 2, "radiusY": 3, "rotation": 0}),
            ("polygonlabels", {"points": polygon}),
        ] + [("keypointlabels", {"x": x / w, "y": y / h, "width": 0.5}) for x, y in rest]
        result = list(task["predictions"][0]["result"]) + [
            {"id": f"h{k}", "from_name": "heads", "to_name": "image", "type": kind, "value": {**value, kind: ["head"]}}
            for k, (kind, value) in enumerate(values)
        ]
        exported.append({"id": n + 1, "data": task["data"], "annotations": [{"result": result}]})
    ls_json = labeled["tmp"] / "ls.json"
    ls_json.write_text(json.dumps(exported))
    labels = labeled["tmp"] / "ls-labels.jsonl"
    result = import_from(labeled, "labelstudio", ls_json, labels)
    assert result.exit_code == 0, result.output
    assert "took 12 'head' shape(s) that are not points" in result.stderr, result.stderr
    assert "(4 ellipse, 4 polygon, 4 rectangle)" in result.stderr
    assert_oracle_labels(labels, labeled)

    brush = {"type": "brushlabels", "value": {"format": "rle", "rle": [1, 2], "brushlabels": ["head"]}}
    exported[0]["annotations"][0]["result"].append(brush)
    ls_json.write_text(json.dumps(exported))
    bad = labeled["tmp"] / "bad.jsonl"
    assert_clean_failure(import_from(labeled, "labelstudio", ls_json, bad), "'head' brushlabels", bad)


# --------------------------------------------------------------------------- suggestions whose marks were lost


def prelabeled(labeled, fmt: str) -> tuple[Path, Prelabels]:
    """An `export --prelabel` package whose suggestions are the true heads of each region."""
    _, entries = read_regions(labeled["regions"])
    _, labels = read_labels(labeled["oracle"])
    prelabels = Prelabels(
        "crowdtk prelabel lite test.safetensors",
        {e.id: Suggestions(e.points, np.full(len(e.points), 0.5)) for e in labels},
    )
    out = labeled["tmp"] / f"prelabel-{fmt}"
    out.mkdir()
    export_regions(entries, out, fmt, {"format": "labeling-export"}, prelabels=prelabels)
    return out, prelabels


def test_cvat_suggestions_without_their_source_after_datumaro_do_not_import_as_labels(labeled):
    out, prelabels = prelabeled(labeled, "cvat")
    index = json.loads((out / "index.json").read_text())
    ids = [record["id"] for record in index["images"]]
    for record in index["images"]:
        assert record["suggestions_sha256"] == suggestions_digest(prelabels.images[record["id"]].points)
    # Datumaro's "cvat" reader and writer drop source="auto": default.xml, here in a folder of the package
    text = (out / "annotations.xml").read_text()
    stripped = text.replace(' source="auto"', "")
    assert stripped != text and 'source="auto"' not in stripped
    datumaro = out / "datumaro"
    datumaro.mkdir()
    (datumaro / "default.xml").write_text(stripped)
    labels = labeled["tmp"] / "dm-labels.jsonl"
    result = import_from(labeled, "cvat", datumaro, labels)
    assert_clean_failure(result, "4 of them hold only suggestions nobody confirmed", labels)
    assert f"{', '.join(ids)} came back exactly as suggested (index.json) without the 'done' mark" in result.stderr
    assert "README.txt" in result.stderr

    # a moved point is a labeler's work, a 'done' tag a confirmation; the two untouched images stay out
    root = ET.fromstring(stripped)
    images = root.findall("image")
    moved = images[0].find("points")
    assert moved is not None
    x, y = map(float, moved.get("points", "").split(";")[0].split(","))
    moved.set("points", f"{x + 1:.2f},{y:.2f}")
    ET.SubElement(images[1], "tag", label="done", source="manual")
    (datumaro / "default.xml").write_bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))
    result = import_from(labeled, "cvat", datumaro, labels)
    assert_clean_failure(result, f"{ids[2]}, {ids[3]} came back exactly as suggested", labels)
    result = import_from(labeled, "cvat", datumaro, labels, "--allow-missing")
    assert result.exit_code == 0, result.output
    assert f"left out 2 unlabeled image(s): {ids[2]}, {ids[3]}" in result.stderr
    assert [e.id for e in read_labels(labels)[1]] == ids[:2]

    # an index.json from before the digests: the package imports as it always did
    for record in index["images"]:
        del record["suggestions_sha256"]
    (out / "index.json").write_text(json.dumps(index))
    (datumaro / "default.xml").write_text(stripped)
    old = labeled["tmp"] / "old-labels.jsonl"
    result = import_from(labeled, "cvat", datumaro, old)
    assert result.exit_code == 0, result.output
    assert [e.id for e in read_labels(old)[1]] == ids


def test_labelme_suggestions_that_lost_their_flags_do_not_import_as_labels(labeled):
    out, _ = prelabeled(labeled, "labelme")
    files = sorted((out / "images").glob("*.json"))
    for file in files:
        record = json.loads(file.read_text())
        for shape in record["shapes"]:
            shape["flags"] = {}
        file.write_text(json.dumps(record))
    labels = labeled["tmp"] / "labelme-labels.jsonl"
    result = import_from(labeled, "labelme", out / "images", labels)
    assert_clean_failure(result, "came back exactly as suggested (index.json) without the 'done' mark", labels)
    for file in files:  # the labeler reviewed them and ticked 'done': labels
        record = json.loads(file.read_text())
        record["flags"]["done"] = True
        file.write_text(json.dumps(record))
    result = import_from(labeled, "labelme", out / "images", labels)
    assert result.exit_code == 0, result.output
    assert_oracle_labels(labels, labeled)


# --------------------------------------------------------------------------- LabelMe's labels folder


def test_labelme_labels_folder_imports_wherever_it_lies(labeled):
    """`labelme images/ --output labels/` in a folder of the user's, not the export folder: "imagePath":
    "../images/NAME" points outside labels/, and the image is matched by name and size without being opened."""
    out = export_package(labeled, "labelme")
    _, regions = read_regions(labeled["regions"])
    everything = truth(labeled)
    work = labeled["tmp"] / "work"
    (work / "labels").mkdir(parents=True)
    shutil.copytree(out / "images", work / "images", ignore=shutil.ignore_patterns("*.json"))
    for file in sorted((out / "images").glob("*.json")):
        record = json.loads(file.read_text())
        entry = next(e for e in regions if e.id.replace(" ", "_") == Path(record["imagePath"]).stem)
        record["imagePath"] = f"../images/{record['imagePath']}"
        record["shapes"] += [
            {"label": "head", "points": [[float(x), float(y)]], "shape_type": "point", "flags": {}}
            for x, y in everything[entry.id]
        ]
        (work / "labels" / file.name).write_text(json.dumps(record))
    labels = labeled["tmp"] / "work-labels.jsonl"
    result = import_from(labeled, "labelme", work / "labels", labels)
    assert result.exit_code == 0, result.output
    assert "matched 4 image(s) by file name and size only" in result.stderr, result.stderr
    assert_oracle_labels(labels, labeled)

    # a reference inside the folder named is read, and must be the image the regions were selected on
    first = sorted((work / "labels").glob("*.json"))[0]
    record = json.loads(first.read_text())
    name = Path(record["imagePath"]).name
    (work / "labels" / name).write_bytes((work / "images" / name).read_bytes() + b"\0")
    record["imagePath"] = name
    first.write_text(json.dumps(record))
    bad = labeled["tmp"] / "bad.jsonl"
    assert_clean_failure(import_from(labeled, "labelme", work / "labels", bad), "sha256 differs", bad)
