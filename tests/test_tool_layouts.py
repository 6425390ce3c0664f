"""`crowdtk import --from labelme/cvat` on the layouts the tools write by default.

LabelMe with `--output labels/` (`"imagePath": "../images/NAME"`), Datumaro's "cvat" export
(`default.xml` beside `images/`) and CVAT's own "CVAT for images 1.1" download (a `.zip` holding
`annotations.xml`); the folder and archive cases that must be refused.
"""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

from conftest import add_cvat_heads, assert_clean_failure, cvat_export, export_package, run, truth

from crowdtk.formats import read_labels, read_regions


def import_from(labeled, tool: str, source: Path, out: Path):
    return run("import", labeled["regions"], "--from", tool, source, "-o", out)


def assert_oracle_labels(labels: Path, labeled) -> None:
    """The imported labels are the oracle's: every image, its regions, the heads inside them."""
    _, got = read_labels(labels)
    _, want = read_labels(labeled["oracle"])
    assert [e.id for e in got] == [e.id for e in want]
    for g, w in zip(got, want):
        assert g.regions == w.regions
        assert sorted(map(tuple, g.points.round(6))) == sorted(map(tuple, w.points.round(6)))


def labeled_cvat_xml(labeled) -> tuple[bytes, Path]:
    """The CVAT export's annotations.xml with a 'head' point on every head, as a labeler returns it, and the export's
    images/."""
    out, tree, images = cvat_export(labeled)
    for image, pts in images:
        add_cvat_heads(image, pts)
    return ET.tostring(tree.getroot(), encoding="utf-8", xml_declaration=True), out / "images"


# --------------------------------------------------------------------------- LabelMe


def test_labelme_output_folder_layout_imports(labeled):
    """`labelme images/ --output labels/` inside the export folder: labels/NAME.json with
    "imagePath": "../images/NAME"."""
    out = export_package(labeled, "labelme")
    _, regions = read_regions(labeled["regions"])
    everything = truth(labeled)
    (out / "labels").mkdir()
    for file in sorted((out / "images").glob("*.json")):
        record = json.loads(file.read_text())
        entry = next(e for e in regions if e.id.replace(" ", "_") == Path(record["imagePath"]).stem)
        record["imagePath"] = f"../images/{record['imagePath']}"
        record["shapes"] += [
            {"label": "head", "points": [[float(x), float(y)]], "group_id": None, "shape_type": "point", "flags": {}}
            for x, y in everything[entry.id]
        ]
        (out / "labels" / file.name).write_text(json.dumps(record))
        file.unlink()
    labels = labeled["tmp"] / "labelme-labels.jsonl"
    result = import_from(labeled, "labelme", out / "labels", labels)
    assert result.exit_code == 0, result.output
    assert_oracle_labels(labels, labeled)

    # outside the export folder (and outside PATH) the reference is never opened: a different file of that name
    # there is not read, and the image is matched by its name and size alone ...
    record = json.loads(next((out / "labels").glob("*.json")).read_text())
    name = Path(record["imagePath"]).name
    (out.parent / name).write_bytes(b"not the image")
    record["imagePath"] = "../../" + name
    bad_json = next((out / "labels").glob("*.json"))
    good = bad_json.read_text()
    bad_json.write_text(json.dumps(record))
    outside = labeled["tmp"] / "outside.jsonl"
    result = import_from(labeled, "labelme", out / "labels", outside)
    assert result.exit_code == 0, result.output
    assert "matched 1 image(s) by file name and size only" in result.stderr and f"../../{name}" in result.stderr
    assert_oracle_labels(outside, labeled)
    bad_json.write_text(good)
    bad = labeled["tmp"] / "bad.jsonl"
    # ... and an image there that is not the one the regions were selected on is refused by its sha256
    image = out / "images" / Path(json.loads(good)["imagePath"]).name
    image.write_bytes(image.read_bytes() + b"\0")
    assert_clean_failure(import_from(labeled, "labelme", out / "labels", bad), "sha256 differs", bad)


# --------------------------------------------------------------------------- CVAT


def test_datumaro_cvat_folder_with_default_xml_imports(labeled):
    """Datumaro's "cvat" exporter: <subset>.xml (default.xml) beside images/; the report names the file read."""
    folder = labeled["tmp"] / "datumaro"
    xml, images = labeled_cvat_xml(labeled)
    shutil.copytree(images, folder / "images")
    (folder / "default.xml").write_bytes(xml)
    labels = labeled["tmp"] / "dm-labels.jsonl"
    result = import_from(labeled, "cvat", folder, labels)
    assert result.exit_code == 0, result.output
    assert "read default.xml" in result.stderr, result.stderr
    assert_oracle_labels(labels, labeled)


def test_cvat_export_zip_imports_and_names_the_file_read(labeled):
    """CVAT's "CVAT for images 1.1" download: a .zip with annotations.xml (and images/ with "save images")."""
    xml, images = labeled_cvat_xml(labeled)
    archive = labeled["tmp"] / "task_1-cvat for images 1.1.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("annotations.xml", xml)
        for image in sorted(images.iterdir()):
            zf.write(image, f"images/{image.name}")
    labels = labeled["tmp"] / "zip-labels.jsonl"
    result = import_from(labeled, "cvat", archive, labels)
    assert result.exit_code == 0, result.output
    assert f"read annotations.xml from {archive}" in result.stderr, result.stderr
    assert_oracle_labels(labels, labeled)


def test_cvat_folder_with_two_xmls_is_refused_naming_both(labeled):
    folder = labeled["tmp"] / "two"
    (folder / "annotations").mkdir(parents=True)
    xml, _ = labeled_cvat_xml(labeled)
    (folder / "annotations.xml").write_bytes(xml)
    (folder / "annotations" / "default.xml").write_bytes(xml)
    bad = labeled["tmp"] / "bad.jsonl"
    result = import_from(labeled, "cvat", folder, bad)
    assert_clean_failure(result, "annotations.xml", bad)
    assert "annotations/default.xml" in result.stderr and "2 XML files" in result.stderr


def test_cvat_zip_member_with_parent_reference_is_refused(labeled):
    inner = labeled["tmp"] / "inner"
    inner.mkdir()
    archive = inner / "task.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("annotations.xml", labeled_cvat_xml(labeled)[0])
        zf.writestr("../evil.xml", b"<annotations/>")
    bad = labeled["tmp"] / "bad.jsonl"
    assert_clean_failure(
        import_from(labeled, "cvat", archive, bad), "'../evil.xml' points outside the archive (path traversal)", bad
    )
    assert not (labeled["tmp"] / "evil.xml").exists() and sorted(p.name for p in inner.iterdir()) == ["task.zip"]
