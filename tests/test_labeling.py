"""The labeling loop: export packages for labeling tools, import their output, the oracle, merging, bad input."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from crowdtk.cli import app
from crowdtk.data import read_image, read_points
from crowdtk.formats import read_labels, read_manifest, read_regions
from crowdtk.labeling import INSTRUCTION

from conftest import assert_clean_failure, write_generic

runner = CliRunner()


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def labeled(tmp_path: Path) -> dict[str, Path]:
    """A small data set with head points, its manifest, and random regions (30%) to label."""
    rng = np.random.default_rng(2)
    scenes = {f"scene {i}" if i == 0 else f"s{i}": (96, 160 + 16 * i, np.c_[rng.uniform(0, 160, 60), rng.uniform(0, 96, 60)])
              for i in range(4)}
    root = write_generic(tmp_path / "set", scenes)
    manifest = tmp_path / "m.jsonl"
    assert run("index", root, "-o", manifest, "-q").exit_code == 0
    regions = tmp_path / "r.jsonl"
    result = run("select", manifest, "--budget", "0.3", "--seed", "1", "-o", regions)
    assert result.exit_code == 0, result.output
    oracle = tmp_path / "oracle.jsonl"
    result = run("import", regions, "--oracle", manifest, "-o", oracle)
    assert result.exit_code == 0, result.output
    return {"root": root, "manifest": manifest, "regions": regions, "oracle": oracle, "tmp": tmp_path}


def truth(paths: dict[str, Path]) -> dict[str, np.ndarray]:
    """Every ground-truth point of each selected image (inside and outside its regions)."""
    _, manifest = read_manifest(paths["manifest"])
    return {m.id: read_points(m.points) for m in manifest}


def export(paths, fmt: str) -> Path:
    out = paths["tmp"] / f"export-{fmt}"
    result = run("export", paths["regions"], "--to", fmt, "-o", out)
    assert result.exit_code == 0, result.output
    assert INSTRUCTION in (out / "README.txt").read_text()
    index = json.loads((out / "index.json").read_text())
    assert index["format"] == "labeling-export" and index["tool"] == fmt and index["instruction"] == INSTRUCTION
    return out


def assert_same_labels(imported: Path, expected: Path) -> None:
    _, got = read_labels(imported)
    _, want = read_labels(expected)
    assert [e.id for e in got] == [e.id for e in want]
    for g, w in zip(got, want):
        assert g.regions == w.regions
        np.testing.assert_allclose(np.array(sorted(map(tuple, g.points))), np.array(sorted(map(tuple, w.points))), atol=1e-6)


# --------------------------------------------------------------------------- oracle


def test_oracle_keeps_exactly_the_points_inside_the_regions(labeled):
    _, entries = read_labels(labeled["oracle"])
    _, regions = read_regions(labeled["regions"])
    everything = truth(labeled)
    assert [e.id for e in entries] == [r.id for r in regions]
    for entry, selected in zip(entries, regions):
        assert entry.regions == selected.regions
        points = everything[entry.id]
        inside = np.zeros(len(points), bool)
        for region in entry.regions:
            inside |= region.contains(points)
        assert len(entry.points) == inside.sum() > 0


def test_oracle_reports_cost_and_area(labeled):
    result = run("import", labeled["regions"], "--oracle", labeled["manifest"], "-o", labeled["tmp"] / "again.jsonl")
    heads = sum(len(e.points) for e in read_labels(labeled["oracle"])[1])
    header = json.loads(labeled["regions"].read_text().splitlines()[0])
    assert f"oracle labeled {heads} heads" in result.stderr
    assert f"{100 * header['area_fraction']:.2f}% of the pool's area" in result.stderr


def test_merge_combines_rounds_without_double_counting(labeled):
    tmp = labeled["tmp"]
    warm = tmp / "warm.jsonl"
    assert run("select", labeled["manifest"], "--budget", "0.2", "--warmup-frac", "0.5", "-o", warm).exit_code == 0
    assert run("import", warm, "--oracle", labeled["manifest"], "-o", tmp / "warm-labels.jsonl").exit_code == 0
    second = tmp / "second.jsonl"
    assert run("select", labeled["manifest"], "--budget", "0.2", "--exclude", warm, "-o", second).exit_code == 0
    result = run("import", second, "--oracle", labeled["manifest"], "--merge", tmp / "warm-labels.jsonl", "-o", tmp / "all.jsonl")
    assert result.exit_code == 0, result.output
    _, merged = read_labels(tmp / "all.jsonl")
    _, first = read_labels(tmp / "warm-labels.jsonl")
    assert len(merged) == 4 and {e.id for e in first} < {e.id for e in merged}
    area = sum(e.labeled_area for e in merged) / sum(e.width * e.height for e in merged)
    assert abs(area - 0.2) < 0.03
    # merging a file with itself adds nothing
    again = tmp / "again.jsonl"
    assert run("import", second, "--oracle", labeled["manifest"], "--merge", tmp / "all.jsonl", "-o", again).exit_code == 0
    assert [len(e.points) for e in read_labels(again)[1]] == [len(e.points) for e in merged]


# --------------------------------------------------------------------------- export -> labeler -> import, per tool


def test_labelstudio_round_trip(labeled):
    out = export(labeled, "labelstudio")
    config = ET.parse(out / "config.xml").getroot()
    assert config.find("Image").attrib == {"name": "image", "value": "$image", "zoom": "true"}
    kp = config.find("KeyPointLabels")
    assert kp.get("name") == "kp" and kp.get("toName") == "image" and kp.find("Label").get("value") == "head"
    assert config.find("Header").get("value") == INSTRUCTION
    tasks = json.loads((out / "tasks.json").read_text())
    _, regions = read_regions(labeled["regions"])
    everything = truth(labeled)
    exported = []
    for n, (task, entry) in enumerate(zip(tasks, regions)):
        assert task["data"]["crowdtk_id"] == entry.id and (out / task["data"]["image"]).is_file()
        rects = task["predictions"][0]["result"]
        assert len(rects) == len(entry.regions)
        for rect, region in zip(rects, entry.regions):
            v = rect["value"]
            assert 0 <= v["x"] < 100 and 0 <= v["y"] < 100 and v["x"] + v["width"] <= 100 + 1e-9 and v["y"] + v["height"] <= 100 + 1e-9
            assert abs(v["x"] * entry.width / 100 - region.x0) < 1e-9 and abs(v["width"] * entry.width / 100 - (region.x1 - region.x0)) < 1e-9
        # the labeler: a keypoint on every head (those outside the regions too, as careless labelers do)
        result = list(rects) + [{"id": f"k{j}", "from_name": "kp", "to_name": "image", "type": "keypointlabels",
                                 "original_width": entry.width, "original_height": entry.height, "image_rotation": 0,
                                 "value": {"x": x / entry.width * 100, "y": y / entry.height * 100, "width": 0.5, "keypointlabels": ["head"]}}
                                for j, (x, y) in enumerate(everything[entry.id])]
        exported.append({"id": n + 1, "data": task["data"], "predictions": task["predictions"],
                         "annotations": [{"id": n + 100, "result": result, "was_cancelled": False, "ground_truth": False}]})
    (labeled["tmp"] / "ls.json").write_text(json.dumps(exported))
    labels = labeled["tmp"] / "ls-labels.jsonl"
    result = run("import", labeled["regions"], "--from", "labelstudio", labeled["tmp"] / "ls.json", "-o", labels)
    assert result.exit_code == 0, result.output
    assert "dropped" in result.stderr and "outside their regions" in result.stderr
    assert_same_labels(labels, labeled["oracle"])
    header = json.loads(labels.read_text().splitlines()[0])
    assert header["format"] == "labels" and header["command"] == "import"

    # an unlabeled task is an error, unless --allow-missing (which leaves it out)
    exported[1]["annotations"] = []
    (labeled["tmp"] / "ls.json").write_text(json.dumps(exported))
    missing = labeled["tmp"] / "missing.jsonl"
    assert_clean_failure(run("import", labeled["regions"], "--from", "labelstudio", labeled["tmp"] / "ls.json", "-o", missing),
                         "no annotation for 1 image(s)", missing)
    result = run("import", labeled["regions"], "--from", "labelstudio", labeled["tmp"] / "ls.json", "-o", missing, "--allow-missing")
    assert result.exit_code == 0 and "left out 1 unlabeled image(s)" in result.stderr
    assert regions[1].id not in {e.id for e in read_labels(missing)[1]}


def test_cvat_round_trip(labeled):
    out = export(labeled, "cvat")
    tree = ET.parse(out / "annotations.xml")
    root = tree.getroot()
    assert root.tag == "annotations" and root.findtext("version") == "1.1"
    kinds = {label.findtext("name"): label.findtext("type") for label in root.iter("label")}
    assert kinds["head"] == "points" and kinds["region"] == "rectangle"
    _, regions = read_regions(labeled["regions"])
    everything = truth(labeled)
    images = root.findall("image")
    assert len(images) == len(regions)
    for image, entry in zip(images, regions):
        assert (out / "images" / image.get("name")).is_file()
        assert (int(image.get("width")), int(image.get("height"))) == (entry.width, entry.height)
        for box, region in zip(image.findall("box"), entry.regions):
            assert box.get("label") == "region"
            assert (float(box.get("xtl")), float(box.get("xbr"))) == (region.x0, region.x1)
            assert 0 <= float(box.get("ytl")) < float(box.get("ybr")) <= entry.height
        pts = everything[entry.id]
        half = len(pts) // 2  # two <points> shapes, as two labeling sessions would leave
        for part in (pts[:half], pts[half:]):
            ET.SubElement(image, "points", label="head", source="manual", occluded="0", z_order="0",
                          points=";".join(f"{float(x)!r},{float(y)!r}" for x, y in part))
    tree.write(labeled["tmp"] / "cvat.xml", encoding="utf-8", xml_declaration=True)
    labels = labeled["tmp"] / "cvat-labels.jsonl"
    result = run("import", labeled["regions"], "--from", "cvat", labeled["tmp"] / "cvat.xml", "-o", labels)
    assert result.exit_code == 0, result.output
    assert_same_labels(labels, labeled["oracle"])


def test_labelme_round_trip_and_done_flag(labeled):
    out = export(labeled, "labelme")
    _, regions = read_regions(labeled["regions"])
    everything = truth(labeled)
    for file in sorted((out / "images").glob("*.json")):
        record = json.loads(file.read_text())
        assert (file.parent / record["imagePath"]).is_file()
        entry = next(e for e in regions if e.id.replace(" ", "_") == Path(record["imagePath"]).stem)
        assert (record["imageWidth"], record["imageHeight"]) == (entry.width, entry.height)
        rects = [s for s in record["shapes"] if s["shape_type"] == "rectangle"]
        assert [(r["points"][0][0], r["points"][1][0]) for r in rects] == [(g.x0, g.x1) for g in entry.regions]
        record["shapes"] += [{"label": "head", "points": [[float(x), float(y)]], "group_id": None, "shape_type": "point", "flags": {}}
                             for x, y in everything[entry.id]]
        file.write_text(json.dumps(record))
    labels = labeled["tmp"] / "labelme-labels.jsonl"
    result = run("import", labeled["regions"], "--from", "labelme", out / "images", "-o", labels)
    assert result.exit_code == 0, result.output
    assert_same_labels(labels, labeled["oracle"])
    # an image left without any point is 'not labeled yet' unless its 'done' flag is ticked
    file = sorted((out / "images").glob("*.json"))[0]
    record = json.loads(file.read_text())
    record["shapes"] = [s for s in record["shapes"] if s["shape_type"] != "point"]
    file.write_text(json.dumps(record))
    again = labeled["tmp"] / "again.jsonl"
    assert_clean_failure(run("import", labeled["regions"], "--from", "labelme", out / "images", "-o", again), "no annotation for 1 image(s)", again)
    record["flags"]["done"] = True
    file.write_text(json.dumps(record))
    assert run("import", labeled["regions"], "--from", "labelme", out / "images", "-o", again).exit_code == 0
    assert sorted(len(e.points) == 0 for e in read_labels(again)[1]) == [False, False, False, True]


def test_crops_round_trip(labeled):
    out = export(labeled, "crops")
    index = json.loads((out / "index.json").read_text())
    everything = truth(labeled)
    _, regions = read_regions(labeled["regions"])
    for record, entry in zip(index["images"], regions):
        image = read_image(entry.image)
        for crop in record["regions"]:
            png = cv2.cvtColor(cv2.imread(str(out / crop["crop"])), cv2.COLOR_BGR2RGB)
            assert png.shape[:2] == (crop["y1"] - crop["y0"], crop["x1"] - crop["x0"])
            np.testing.assert_array_equal(png, image[crop["y0"]:crop["y1"], crop["x0"]:crop["x1"]])
            assert (crop["x"], crop["y"]) == (crop["x0"], crop["y0"])
            local = everything[entry.id] - [crop["x"], crop["y"]]
            keep = (local[:, 0] >= 0) & (local[:, 0] < png.shape[1]) & (local[:, 1] >= 0) & (local[:, 1] < png.shape[0])
            lines = "".join(f"{float(x)!r} {float(y)!r}\n" for x, y in local[keep]) + "-2.5 3\n"  # one click beside the crop
            (out / crop["points"]).write_text("# x y\n" + lines)
    labels = labeled["tmp"] / "crops-labels.jsonl"
    result = run("import", labeled["regions"], "--from", "crops", out, "-o", labels)
    assert result.exit_code == 0, result.output
    assert "dropped" in result.stderr
    assert_same_labels(labels, labeled["oracle"])
    first = index["images"][0]["regions"][0]["points"]
    (out / first).unlink()
    missing = labeled["tmp"] / "missing.jsonl"
    assert_clean_failure(run("import", labeled["regions"], "--from", "crops", out, "-o", missing), "no annotation for 1 region(s)", missing)


# --------------------------------------------------------------------------- bad input


def test_path_traversal_is_rejected(labeled):
    out = export(labeled, "labelme")
    file = sorted((out / "images").glob("*.json"))[0]
    record = json.loads(file.read_text())
    bad = labeled["tmp"] / "bad.jsonl"
    for reference in ("../../x.jpg", "/etc/passwd"):
        record["imagePath"] = reference
        file.write_text(json.dumps(record))
        assert_clean_failure(run("import", labeled["regions"], "--from", "labelme", out / "images", "-o", bad), "path traversal", bad)
    ls = export(labeled, "labelstudio")
    tasks = json.loads((ls / "tasks.json").read_text())
    for task in tasks:
        task["annotations"] = [{"result": [], "was_cancelled": False}]
    tasks[0]["data"]["image"] = "../../../etc/x.jpg"
    (labeled["tmp"] / "ls.json").write_text(json.dumps(tasks))
    assert_clean_failure(run("import", labeled["regions"], "--from", "labelstudio", labeled["tmp"] / "ls.json", "-o", bad), "path traversal", bad)


def test_xml_with_an_entity_declaration_is_rejected(labeled):
    xml = labeled["tmp"] / "evil.xml"
    xml.write_text('<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>\n'
                   '<annotations><version>1.1</version><image id="0" name="s1.jpg" width="176" height="96">'
                   '<points label="head" points="&lol2;"/></image></annotations>\n')
    bad = labeled["tmp"] / "bad.jsonl"
    assert_clean_failure(run("import", labeled["regions"], "--from", "cvat", xml, "-o", bad), "ENTITY", bad)


def test_regions_naming_images_absent_from_the_manifest(labeled, tmp_path):
    other = write_generic(tmp_path / "other", {"zz": (64, 96, np.array([[3.0, 4.0]]))})
    manifest = tmp_path / "other.jsonl"
    assert run("index", other, "-o", manifest, "-q").exit_code == 0
    out = tmp_path / "l.jsonl"
    assert_clean_failure(run("import", labeled["regions"], "--oracle", manifest, "-o", out), "r.jsonl: names 4 image(s) absent from", out)
    assert_clean_failure(run("select", manifest, "--exclude", labeled["regions"], "-o", out), "r.jsonl: names 4 image(s) absent from", out)


def test_import_needs_exactly_one_source(labeled):
    out = labeled["tmp"] / "l.jsonl"
    assert_clean_failure(run("import", labeled["regions"], "-o", out), "--from", out, code=2)
    assert_clean_failure(run("import", labeled["regions"], "--from", "cvat", "-o", out), "needs PATH", out, code=2)


# --------------------------------------------------------------------------- real data


def test_real_part_b_oracle_warmup_and_second_round_spend_the_budget(part_b, tmp_path):
    manifest = tmp_path / "m.jsonl"
    assert run("index", part_b / "train_data", "-o", manifest, "-q", "--workers", "2").exit_code == 0
    warm, second = tmp_path / "warm.jsonl", tmp_path / "second.jsonl"
    assert run("select", manifest, "--budget", "0.1", "--warmup-frac", "0.2", "--seed", "3", "-o", warm).exit_code == 0
    assert run("import", warm, "--oracle", manifest, "-o", tmp_path / "warm-labels.jsonl").exit_code == 0
    result = run("select", manifest, "--budget", "0.1", "--exclude", warm, "--seed", "3", "-o", second)
    assert result.exit_code == 0, result.output
    result = run("import", second, "--oracle", manifest, "--merge", tmp_path / "warm-labels.jsonl", "-o", tmp_path / "labels.jsonl")
    assert result.exit_code == 0, result.output
    _, entries = read_manifest(manifest)
    _, labels = read_labels(tmp_path / "labels.jsonl")
    assert len(entries) == 400 and len(labels) == 400 and len(read_regions(warm)[1]) == 80
    area = sum(e.labeled_area for e in labels) / sum(e.width * e.height for e in entries)
    assert abs(area - 0.10) <= 0.005, area
    by_id = {e.id: e for e in entries}
    for label in labels[::25]:
        points = read_points(by_id[label.id].points)
        inside = np.zeros(len(points), bool)
        for region in label.regions:
            inside |= region.contains(points)
        assert len(label.points) == inside.sum()
    heads = sum(len(e.points) for e in labels)
    assert 0.05 < heads / sum(e.count for e in entries) < 0.2
