"""`crowdtk import`: the oracle, merging rounds, and each labeling tool's output read back into labels
(export → labeler → import)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import (
    add_cvat_heads,
    assert_clean_failure,
    cvat_export,
    export_package,
    import_from,
    labelstudio_export,
    run,
    truth,
    write_generic,
)

from crowdtk.data import read_points
from crowdtk.formats import read_labels, read_manifest, read_regions
from crowdtk.labeling.labelstudio import keypoint_results


def assert_same_labels(imported: Path, expected: Path) -> None:
    _, got = read_labels(imported)
    _, want = read_labels(expected)
    assert [e.id for e in got] == [e.id for e in want]
    for g, w in zip(got, want):
        assert g.regions == w.regions
        np.testing.assert_allclose(
            np.array(sorted(map(tuple, g.points))), np.array(sorted(map(tuple, w.points))), atol=1e-6
        )


def points_inside(points: np.ndarray, regions) -> np.ndarray:
    inside = np.zeros(len(points), bool)
    for region in regions:
        inside |= region.contains(points)
    return inside


# --------------------------------------------------------------------------- oracle


def test_oracle_keeps_exactly_the_points_inside_the_regions(labeled):
    _, entries = read_labels(labeled["oracle"])
    _, regions = read_regions(labeled["regions"])
    everything = truth(labeled)
    assert [e.id for e in entries] == [r.id for r in regions]
    for entry, selected in zip(entries, regions):
        assert entry.regions == selected.regions
        assert len(entry.points) == points_inside(everything[entry.id], entry.regions).sum() > 0


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
    result = run(
        "import", second, "--oracle", labeled["manifest"], "--merge", tmp / "warm-labels.jsonl", "-o", tmp / "all.jsonl"
    )
    assert result.exit_code == 0, result.output
    _, merged = read_labels(tmp / "all.jsonl")
    _, first = read_labels(tmp / "warm-labels.jsonl")
    assert len(merged) == 4 and {e.id for e in first} < {e.id for e in merged}
    area = sum(e.labeled_area for e in merged) / sum(e.width * e.height for e in merged)
    assert abs(area - 0.2) < 0.03
    # merging a file with itself adds nothing
    again = tmp / "again.jsonl"
    assert (
        run("import", second, "--oracle", labeled["manifest"], "--merge", tmp / "all.jsonl", "-o", again).exit_code == 0
    )
    assert [len(e.points) for e in read_labels(again)[1]] == [len(e.points) for e in merged]


# --------------------------------------------------------------------------- export -> labeler -> import, per tool


def test_labelstudio_round_trip(labeled):
    tasks, regions, everything = labelstudio_export(labeled)
    exported = []
    for n, (task, entry) in enumerate(zip(tasks, regions)):
        rects = task["predictions"][0]["result"]
        # the labeler: a keypoint on every head (those outside the regions too, as careless labelers do)
        result = list(rects) + keypoint_results(entry, everything[entry.id], "k")
        exported.append(
            {
                "id": n + 1,
                "data": task["data"],
                "predictions": task["predictions"],
                "annotations": [{"id": n + 100, "result": result, "was_cancelled": False, "ground_truth": False}],
            }
        )
    ls_json = labeled["tmp"] / "ls.json"
    ls_json.write_text(json.dumps(exported))
    labels = labeled["tmp"] / "ls-labels.jsonl"
    result = import_from(labeled, "labelstudio", ls_json, labels)
    assert result.exit_code == 0, result.output
    assert "dropped" in result.stderr and "outside their regions" in result.stderr
    assert_same_labels(labels, labeled["oracle"])
    header = json.loads(labels.read_text().splitlines()[0])
    assert header["format"] == "labels" and header["command"] == "import"

    # an unlabeled task is an error, unless --allow-missing (which leaves it out)
    exported[1]["annotations"] = []
    ls_json.write_text(json.dumps(exported))
    missing = labeled["tmp"] / "missing.jsonl"
    assert_clean_failure(import_from(labeled, "labelstudio", ls_json, missing), "no annotation for 1 image(s)", missing)
    result = import_from(labeled, "labelstudio", ls_json, missing, "--allow-missing")
    assert result.exit_code == 0 and "left out 1 unlabeled image(s)" in result.stderr
    assert regions[1].id not in {e.id for e in read_labels(missing)[1]}


def test_cvat_round_trip(labeled):
    _, tree, images = cvat_export(labeled)
    for image, pts in images:
        half = len(pts) // 2  # two <points> shapes, as two labeling sessions would leave
        for part in (pts[:half], pts[half:]):
            add_cvat_heads(image, part)
    tree.write(labeled["tmp"] / "cvat.xml", encoding="utf-8", xml_declaration=True)
    labels = labeled["tmp"] / "cvat-labels.jsonl"
    result = import_from(labeled, "cvat", labeled["tmp"] / "cvat.xml", labels)
    assert result.exit_code == 0, result.output
    assert_same_labels(labels, labeled["oracle"])


def test_labelme_round_trip_and_done_flag(labeled):
    out = export_package(labeled, "labelme")
    _, regions = read_regions(labeled["regions"])
    everything = truth(labeled)
    for file in sorted((out / "images").glob("*.json")):
        record = json.loads(file.read_text())
        entry = next(e for e in regions if e.id.replace(" ", "_") == Path(record["imagePath"]).stem)
        record["shapes"] += [
            {"label": "head", "points": [[float(x), float(y)]], "group_id": None, "shape_type": "point", "flags": {}}
            for x, y in everything[entry.id]
        ]
        file.write_text(json.dumps(record))
    labels = labeled["tmp"] / "labelme-labels.jsonl"
    result = import_from(labeled, "labelme", out / "images", labels)
    assert result.exit_code == 0, result.output
    assert_same_labels(labels, labeled["oracle"])
    # an image left without any point is 'not labeled yet' unless its 'done' flag is ticked
    file = sorted((out / "images").glob("*.json"))[0]
    record = json.loads(file.read_text())
    record["shapes"] = [s for s in record["shapes"] if s["shape_type"] != "point"]
    file.write_text(json.dumps(record))
    again = labeled["tmp"] / "again.jsonl"
    assert_clean_failure(import_from(labeled, "labelme", out / "images", again), "no annotation for 1 image(s)", again)
    record["flags"]["done"] = True
    file.write_text(json.dumps(record))
    assert import_from(labeled, "labelme", out / "images", again).exit_code == 0
    assert sorted(len(e.points) == 0 for e in read_labels(again)[1]) == [False, False, False, True]


def test_crops_round_trip(labeled):
    out = export_package(labeled, "crops")
    index = json.loads((out / "index.json").read_text())
    everything = truth(labeled)
    _, regions = read_regions(labeled["regions"])
    for record, entry in zip(index["images"], regions):
        for crop in record["regions"]:
            width, height = crop["x1"] - crop["x0"], crop["y1"] - crop["y0"]
            local = everything[entry.id] - [crop["x"], crop["y"]]
            keep = (local[:, 0] >= 0) & (local[:, 0] < width) & (local[:, 1] >= 0) & (local[:, 1] < height)
            lines = (
                "".join(f"{float(x)!r} {float(y)!r}\n" for x, y in local[keep]) + "-2.5 3\n"
            )  # one click beside the crop
            (out / crop["points"]).write_text("# x y\n" + lines)
    labels = labeled["tmp"] / "crops-labels.jsonl"
    result = import_from(labeled, "crops", out, labels)
    assert result.exit_code == 0, result.output
    assert "dropped" in result.stderr
    assert_same_labels(labels, labeled["oracle"])
    first = index["images"][0]["regions"][0]["points"]
    (out / first).unlink()
    missing = labeled["tmp"] / "missing.jsonl"
    assert_clean_failure(import_from(labeled, "crops", out, missing), "no annotation for 1 region(s)", missing)


# --------------------------------------------------------------------------- bad input


def test_path_traversal_is_rejected(labeled):
    # LabelMe: an imagePath outside PATH and the export folder is never opened; its name alone (no image of the
    # regions here) decides, so the image counts as unknown and its own entry as missing
    out = export_package(labeled, "labelme")
    file = sorted((out / "images").glob("*.json"))[0]
    record = json.loads(file.read_text())
    record["flags"]["done"] = True
    for k, reference in enumerate(("../../x.jpg", "/etc/passwd")):
        record["imagePath"] = reference
        file.write_text(json.dumps(record))
        result = import_from(labeled, "labelme", out / "images", labeled["tmp"] / f"{k}.jsonl", "--allow-missing")
        assert result.exit_code == 0, result.output
        assert f"not opened (e.g. {reference})" in result.stderr
        assert f"not in {labeled['regions']}: {Path(reference).name}" in result.stderr
    ls = export_package(labeled, "labelstudio")
    tasks = json.loads((ls / "tasks.json").read_text())
    for task in tasks:
        task["annotations"] = [{"result": [], "was_cancelled": False}]
    tasks[0]["data"]["image"] = "../../../etc/x.jpg"
    (labeled["tmp"] / "ls.json").write_text(json.dumps(tasks))
    bad = labeled["tmp"] / "bad.jsonl"
    assert_clean_failure(import_from(labeled, "labelstudio", labeled["tmp"] / "ls.json", bad), "path traversal", bad)


def test_xml_with_an_entity_declaration_is_rejected(labeled):
    xml = labeled["tmp"] / "evil.xml"
    xml.write_text(
        '<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>\n'
        '<annotations><version>1.1</version><image id="0" name="s1.jpg" width="176" height="96">'
        '<points label="head" points="&lol2;"/></image></annotations>\n'
    )
    bad = labeled["tmp"] / "bad.jsonl"
    assert_clean_failure(import_from(labeled, "cvat", xml, bad), "ENTITY", bad)


def test_regions_naming_images_absent_from_the_manifest(labeled, tmp_path):
    other = write_generic(tmp_path / "other", {"zz": (64, 96, np.array([[3.0, 4.0]]))})
    manifest = tmp_path / "other.jsonl"
    assert run("index", other, "-o", manifest, "-q").exit_code == 0
    out = tmp_path / "l.jsonl"
    assert_clean_failure(
        run("import", labeled["regions"], "--oracle", manifest, "-o", out), "r.jsonl: names 4 image(s) absent from", out
    )
    assert_clean_failure(
        run("select", manifest, "--exclude", labeled["regions"], "-o", out),
        "r.jsonl: names 4 image(s) absent from",
        out,
    )


def test_import_needs_exactly_one_source(labeled):
    out = labeled["tmp"] / "l.jsonl"
    assert_clean_failure(run("import", labeled["regions"], "-o", out), "--from", out, code=2)
    assert_clean_failure(run("import", labeled["regions"], "--from", "cvat", "-o", out), "needs PATH", out, code=2)


# --------------------------------------------------------------------------- real data


def test_real_part_b_oracle_warmup_and_second_round_spend_the_budget(part_b_manifest, tmp_path):
    manifest = part_b_manifest
    warm, second = tmp_path / "warm.jsonl", tmp_path / "second.jsonl"
    assert run("select", manifest, "--budget", "0.1", "--warmup-frac", "0.2", "--seed", "3", "-o", warm).exit_code == 0
    assert run("import", warm, "--oracle", manifest, "-o", tmp_path / "warm-labels.jsonl").exit_code == 0
    result = run("select", manifest, "--budget", "0.1", "--exclude", warm, "--seed", "3", "-o", second)
    assert result.exit_code == 0, result.output
    result = run(
        "import",
        second,
        "--oracle",
        manifest,
        "--merge",
        tmp_path / "warm-labels.jsonl",
        "-o",
        tmp_path / "labels.jsonl",
    )
    assert result.exit_code == 0, result.output
    _, entries = read_manifest(manifest)
    _, labels = read_labels(tmp_path / "labels.jsonl")
    assert len(entries) == 400 and len(labels) == 400 and len(read_regions(warm)[1]) == 80
    area = sum(e.labeled_area for e in labels) / sum(e.width * e.height for e in entries)
    assert abs(area - 0.10) <= 0.005, area
    by_id = {e.id: e for e in entries}
    for label in labels[::25]:
        assert len(label.points) == points_inside(read_points(by_id[label.id].points), label.regions).sum()
    heads = sum(len(e.points) for e in labels)
    assert 0.05 < heads / sum(e.count for e in entries) < 0.2
