"""Review rounds: `export LABELS` pre-fills each tool's package with the labels, `import LABELS` reads the
reviewed package back (untouched points exactly as they were), `labels diff` says what the reviewer changed."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from conftest import HANG_GUARD_S, assert_clean_failure, jsonl, run
from typer.testing import CliRunner

from crowdtk.cli import app
from crowdtk.files import file_digest
from crowdtk.formats import LABELS, LabelsEntry, Provenance, Region, make_header, read_labels, write_jsonl
from crowdtk.labeling import diff_labels
from crowdtk.labeling.diff import match_points

TOOLS = ("labelstudio", "cvat", "labelme", "crops")


def export_labels(labeled, fmt: str, labels: Path | None = None) -> Path:
    out = labeled["tmp"] / f"review-{fmt}"
    result = run("export", labels or labeled["oracle"], "--to", fmt, "-o", out)
    assert result.exit_code == 0, result.output
    assert "pre-filled for review" in result.stderr
    return out


def returned(out: Path, fmt: str) -> Path:
    """What the tool gives back when nobody edits anything: the package's own annotation files."""
    return out / "tasks.json" if fmt == "labelstudio" else out


def records(path: Path) -> list[dict]:
    return jsonl(path.read_text())[1]


def import_review(labeled, fmt: str, source: Path, out: Path, labels: Path | None = None):
    return run("import", labels or labeled["oracle"], "--from", fmt, source, "-o", out)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt", TOOLS)
def test_round_trip_without_edits_gives_the_same_labels(labeled, fmt):
    out = export_labels(labeled, fmt)
    index = json.loads((out / "index.json").read_text())
    assert index["review"] is True and index["regions_sha256"] == file_digest(labeled["oracle"])
    assert "Review round" in (out / "README.txt").read_text()
    again = labeled["tmp"] / "again.jsonl"
    result = import_review(labeled, fmt, returned(out, fmt), again)
    assert result.exit_code == 0, result.output
    assert "dropped" not in result.stderr and "left out" not in result.stderr
    # identical records: ids, regions, and every point with its exact coordinates, in its order
    assert records(again) == records(labeled["oracle"])
    header = json.loads(again.read_text().splitlines()[0])
    assert header["format"] == "labels" and header["regions_sha256"] == file_digest(labeled["oracle"])
    diff = run("labels", "diff", labeled["oracle"], again)
    assert diff.exit_code == 0, diff.output
    rows = [json.loads(line) for line in diff.stdout.splitlines()]
    assert len(rows) == sum(len(r["regions"]) for r in records(labeled["oracle"]))
    assert all(r["added"] == r["removed"] == r["moved"] == 0 for r in rows)


def test_round_trip_of_merged_labels_with_empty_regions(labeled):
    # Two rounds merged: images with several regions from two files, some regions without any head.
    tmp = labeled["tmp"]
    second = tmp / "second.jsonl"
    assert (
        run(
            "select",
            labeled["manifest"],
            "--budget",
            "0.2",
            "--exclude",
            labeled["regions"],
            "--seed",
            "4",
            "-o",
            second,
        ).exit_code
        == 0
    )
    merged = tmp / "merged.jsonl"
    assert (
        run("import", second, "--oracle", labeled["manifest"], "--merge", labeled["oracle"], "-o", merged).exit_code
        == 0
    )
    header, entries = read_labels(merged)
    empty = LabelsEntry(
        entries[0].id,
        entries[0].image,
        entries[0].sha256,
        entries[0].width,
        entries[0].height,
        (Region(0, 4, 0, entries[0].height),),
        np.zeros((0, 2)),
    )
    entries = [empty, *entries[1:]]
    write_jsonl(merged, header, (e.to_record() for e in entries))
    for fmt in TOOLS:
        out = export_labels(labeled, fmt, merged)
        again = tmp / f"again-{fmt}.jsonl"
        result = import_review(labeled, fmt, returned(out, fmt), again, merged)
        assert result.exit_code == 0, result.output
        assert records(again) == records(merged), fmt


def test_labels_on_stdin(labeled):
    out = labeled["tmp"] / "from-stdin"
    runner = CliRunner()
    result = runner.invoke(app, ["export", "-", "--to", "crops", "-o", str(out)], input=labeled["oracle"].read_text())
    assert result.exit_code == 0, result.output
    again = labeled["tmp"] / "again.jsonl"
    result = runner.invoke(
        app, ["import", "-", "--from", "crops", str(out), "-o", str(again)], input=labeled["oracle"].read_text()
    )
    assert result.exit_code == 0, result.output
    assert records(again) == records(labeled["oracle"])


# --------------------------------------------------------------------------- what each tool gets


def test_each_tool_gets_the_points_pre_filled(labeled):
    _, labels = read_labels(labeled["oracle"])
    heads = {e.id: len(e.points) for e in labels}
    # Label Studio: an annotation per task with the regions and one head keypoint per point
    tasks = json.loads((export_labels(labeled, "labelstudio") / "tasks.json").read_text())
    for task in tasks:
        (annotation,) = task["annotations"]
        kinds = [r["type"] for r in annotation["result"]]
        assert kinds.count("keypointlabels") == heads[task["data"]["crowdtk_id"]] and "rectanglelabels" in kinds
    # CVAT: one head <points> per point, every image tagged done
    root = ET.parse(export_labels(labeled, "cvat") / "annotations.xml").getroot()
    for image, entry in zip(root.findall("image"), labels):
        assert len(image.findall("points")) == len(entry.points) and [t.get("label") for t in image.findall("tag")] == [
            "done"
        ]
    # LabelMe: point shapes and the flag done ticked
    out = export_labels(labeled, "labelme")
    for file in sorted(out.rglob("*.json")):
        record = json.loads(file.read_text())
        if "shapes" in record:
            entry = next(e for e in labels if e.id.replace(" ", "_") == Path(record["imagePath"]).stem)
            assert (
                sum(s["shape_type"] == "point" for s in record["shapes"]) == len(entry.points)
                and record["flags"]["done"] is True
            )
    # crops: a points file beside every crop, in crop pixels
    out = export_labels(labeled, "crops")
    index = json.loads((out / "index.json").read_text())
    total = 0
    for record in index["images"]:
        for crop in record["regions"]:
            text = (out / crop["points"]).read_text()
            local = [tuple(map(float, line.split())) for line in text.splitlines() if not line.startswith("#")]
            assert all(0 <= x < crop["crop_width"] and 0 <= y < crop["crop_height"] for x, y in local)
            total += len(local)
    assert total == sum(heads.values())
    # a regions file still exports without annotations
    plain = labeled["tmp"] / "plain"
    assert run("export", labeled["regions"], "--to", "labelstudio", "-o", plain).exit_code == 0
    assert all("annotations" not in t for t in json.loads((plain / "tasks.json").read_text()))
    assert json.loads((plain / "index.json").read_text())["review"] is False


def test_cvat_two_decimals_keep_the_exact_points(labeled):
    # CVAT writes coordinates with two decimals: within 0.01 px of a pre-filled point is that point.
    out = export_labels(labeled, "cvat")
    tree = ET.parse(out / "annotations.xml")
    for shape in tree.getroot().iter("points"):
        x, y = map(float, shape.get("points").split(","))
        shape.set("points", f"{x:.2f},{y:.2f}")
    xml = labeled["tmp"] / "cvat.xml"
    tree.write(xml, encoding="utf-8", xml_declaration=True)
    again = labeled["tmp"] / "again.jsonl"
    assert import_review(labeled, "cvat", xml, again).exit_code == 0
    assert records(again) == records(labeled["oracle"])


# --------------------------------------------------------------------------- a reviewer's edits


def test_review_edits_show_in_the_diff(labeled):
    # The labels to review: image 1's first region holds three heads 40 px apart, so each edit means one thing.
    header, labels = read_labels(labeled["oracle"])
    target, region = labels[1], labels[1].regions[0]
    x = region.x0 + 8.25
    p1, p2, p3 = [x, 10.5], [x, 50.5], [x, 88.5]
    points = np.concatenate([[p1, p2, p3], target.points[~region.contains(target.points)]])
    labels[1] = LabelsEntry(target.id, target.image, target.sha256, target.width, target.height, target.regions, points)
    before = labeled["tmp"] / "before.jsonl"
    write_jsonl(before, header, (e.to_record() for e in labels))
    out = export_labels(labeled, "labelme", before)
    file = next(
        f
        for f in out.rglob("*.json")
        if Path(json.loads(f.read_text()).get("imagePath", "")).stem == target.id.replace(" ", "_")
    )
    record = json.loads(file.read_text())
    shapes = [
        s for s in record["shapes"] if s["points"][0] not in (p1, p3)
    ]  # p1 deleted; p3 clicked on, and set again below
    next(s for s in shapes if s["points"][0] == p2)["points"] = [[x, 59.5]]  # p2 moved 9 px down
    added = [x, 30.5]  # 20 px from p1 and from p2: a head of its own
    shapes += [
        {"label": "head", "points": [pt], "group_id": None, "shape_type": "point", "flags": {}}
        for pt in ([x + 0.004, 88.5], added)
    ]
    record["shapes"] = shapes
    file.write_text(json.dumps(record))
    reviewed = labeled["tmp"] / "reviewed.jsonl"
    assert import_review(labeled, "labelme", out, reviewed, before).exit_code == 0
    _, after = read_labels(reviewed)
    assert [x, 88.5] in after[1].points.tolist()  # within 0.01 px: the pre-filled point, exactly
    result = run("labels", "diff", before, reviewed)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == sum(len(e.regions) for e in labels)
    (row,) = [r for r in rows if r["added"] or r["removed"] or r["moved"]]
    assert row["id"] == target.id and row["labeled"] == "both"
    assert row["region"] == {"x0": region.x0, "x1": region.x1, "y0": region.y0, "y1": region.y1}
    assert (row["added"], row["removed"], row["moved"], row["unchanged"]) == (1, 1, 1, 1)
    assert row["points"] == {
        "added": [added],
        "removed": [p1],
        "moved": [{"from": p2, "to": [x, 59.5], "distance": 9.0}],
    }
    summary = result.stderr.strip().splitlines()
    unchanged = sum(len(e.points) for e in labels) - 2
    assert summary == [
        f"{before} -> {reviewed}: {len(labels)} images, {len(rows)} regions: 1 added, 1 removed, 1 moved, "
        f"{unchanged} unchanged"
    ]


# --------------------------------------------------------------------------- the matching rule


def entry(points, regions=((0, 200, 0, 100),), image_id="im", sha="s" * 64) -> LabelsEntry:
    return LabelsEntry(
        image_id,
        "/x.jpg",
        sha,
        200,
        100,
        tuple(Region(*r) for r in regions),
        np.asarray(points, dtype=np.float64).reshape(-1, 2),
    )


def counts(region_diff) -> tuple[int, int, int, int]:
    return len(region_diff.added), len(region_diff.removed), len(region_diff.moved), region_diff.unchanged


def test_matching_thresholds():
    a = [[10, 10], [50, 10], [90, 10], [130, 10], [170, 10]]
    b = [
        [13, 10],
        [54, 10],
        [100, 10],
        [146, 10],
        [187, 10],
    ]  # 3 px, 4 px: unchanged; 10, 16 px: moved; 17 px: removed + added
    (d,) = diff_labels([entry(a)], [entry(b)]).regions
    assert counts(d) == (1, 1, 2, 2)
    assert d.added.tolist() == [[187.0, 10.0]] and d.removed.tolist() == [[170.0, 10.0]]
    assert sorted(m[2] for m in d.moved) == [10.0, 16.0]


def test_a_head_that_stayed_put_stays_unchanged():
    # a1 = b1 (1 px); a1-b2 and a2-b1 are 15 px: pairing both would be 30 px against 1 + 8 + 8.
    a, b = [[50, 50], [65, 50]], [[51, 50], [36, 50]]
    (d,) = diff_labels([entry(a)], [entry(b)]).regions
    assert counts(d) == (1, 1, 0, 1) and d.removed.tolist() == [[65.0, 50.0]] and d.added.tolist() == [[36.0, 50.0]]


def test_matching_is_one_to_one_and_optimal_against_brute_force():
    from itertools import permutations

    rng = np.random.default_rng(5)
    for _ in range(60):
        a, b = rng.uniform(0, 40, (int(rng.integers(0, 5)), 2)), rng.uniform(0, 40, (int(rng.integers(0, 5)), 2))
        i, j = match_points(a, b)
        d = np.linalg.norm(a[i] - b[j], axis=1)
        assert len(set(i)) == len(i) and len(set(j)) == len(j) and (d <= 16).all()
        cost = d.sum() + 8 * (len(a) + len(b) - 2 * len(i))
        best = 8.0 * (len(a) + len(b))
        for perm in permutations(
            range(len(b) + len(a)), len(a)
        ):  # a point of a to a point of b, or to none (index >= len(b))
            pairs = [(p, q) for p, q in enumerate(perm) if q < len(b)]
            dist = [np.linalg.norm(a[p] - b[q]) for p, q in pairs]
            if all(x <= 16 for x in dist):
                best = min(best, sum(dist) + 8 * (len(a) + len(b) - 2 * len(pairs)))
        assert cost == pytest.approx(best)


def test_a_dense_crowd_matches_quickly_and_right():
    rng = np.random.default_rng(6)
    a = np.c_[rng.uniform(0, 4000, 5000), rng.uniform(0, 100, 5000)]
    shift = a + [2.0, 0.0]  # every head 2 px off: all unchanged, whatever the crowd's density
    i, j = match_points(a, shift)
    assert len(i) == 5000 and (np.linalg.norm(a[i] - shift[j], axis=1) <= 2 + 1e-9).all()


def full_cost(a: np.ndarray, b: np.ndarray, radius: float = 16.0) -> float:
    """The rule's optimum over all points at once: a dense assignment with a stand-in ("unpaired", radius/2) per
    point."""
    from scipy.optimize import linear_sum_assignment

    n, m = len(a), len(b)
    cost = np.full((n + m, m + n), 1e9)
    d = np.linalg.norm(a[:, None] - b[None], axis=2)
    cost[:n, :m] = np.where(d <= radius, d, 1e9)
    cost[:n, m:] = np.where(np.eye(n, dtype=bool), radius / 2, 1e9)
    cost[n:, :m] = np.where(np.eye(m, dtype=bool), radius / 2, 1e9)
    cost[n:, m:] = 0.0
    r, c = linear_sum_assignment(cost)
    return float(cost[r, c].sum())


def pairing_cost(a: np.ndarray, b: np.ndarray, i: np.ndarray, j: np.ndarray, radius: float = 16.0) -> float:
    return float(np.linalg.norm(a[i] - b[j], axis=1).sum() + radius / 2 * (len(a) + len(b) - 2 * len(i)))


def test_matching_returns_where_scipy_s_sparse_solver_never_did():
    # Run apart with a time limit: the failure this guards against is a call that never returns.
    code = (
        "import json, numpy as np; from crowdtk.labeling.diff import match_points; "
        "d = json.load(open('tests/data/matching-hang.json')); "
        "i, j = match_points(np.array(d['a']), np.array(d['b'])); "
        "print(json.dumps([i.tolist(), j.tolist()]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        cwd=Path(__file__).parents[1],
    )
    assert done.returncode == 0, done.stderr
    data = json.loads((Path(__file__).parent / "data" / "matching-hang.json").read_text())
    a, b = np.array(data["a"]), np.array(data["b"])
    i, j = (np.array(x, dtype=np.int64) for x in json.loads(done.stdout))
    assert pairing_cost(a, b, i, j) == pytest.approx(full_cost(a, b))


def test_large_groups_take_the_sparse_solver_with_the_same_optimum(monkeypatch):
    rng = np.random.default_rng(7)
    a = rng.uniform(0, 120, (150, 2))
    b = np.concatenate([a[:120] + rng.normal(0, 4, (120, 2)), rng.uniform(0, 120, (20, 2))])
    dense = match_points(a, b)
    monkeypatch.setattr("crowdtk.matching.MAX_DENSE_PAIRS", 0)
    sparse = match_points(a, b)
    assert pairing_cost(a, b, *dense) == pytest.approx(full_cost(a, b)) == pytest.approx(pairing_cost(a, b, *sparse))


def test_regions_and_images_in_one_file_only():
    a = [entry([[10, 10], [110, 10]], regions=((0, 100, 0, 100), (100, 200, 0, 100))), entry([[5, 5]], image_id="gone")]
    b = [entry([[12, 10], [150, 50]], regions=((0, 100, 0, 100), (140, 160, 0, 100))), entry([[7, 7]], image_id="new")]
    result = diff_labels(a, b)
    got = [(r.id, (r.region.x0, r.region.x1), r.labeled, counts(r)) for r in result.regions]
    assert got == [
        ("im", (0, 100), "both", (0, 0, 0, 1)),
        ("im", (100, 200), "a", (0, 1, 0, 0)),
        ("im", (140, 160), "b", (1, 0, 0, 0)),
        ("gone", (0, 200), "a", (0, 1, 0, 0)),
        ("new", (0, 200), "b", (1, 0, 0, 0)),
    ]
    assert result.only("a") == 2 and result.only("b") == 2 and result.images == 3


def write_labels(path: Path, entries) -> Path:
    write_jsonl(path, make_header(LABELS, Provenance("test")), (e.to_record() for e in entries))
    return path


def test_diff_command_output_and_errors(tmp_path):
    a = write_labels(tmp_path / "a.jsonl", [entry([[10, 10], [50, 10], [90, 10]])])
    b = write_labels(tmp_path / "b.jsonl", [entry([[10, 10], [60, 10], [150, 80]])])
    result = run("labels", "diff", a, b)
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert row == {
        "id": "im",
        "region": {"x0": 0, "x1": 200, "y0": 0, "y1": 100},
        "labeled": "both",
        "added": 1,
        "removed": 1,
        "moved": 1,
        "unchanged": 1,
        "points": {
            "added": [[150.0, 80.0]],
            "removed": [[90.0, 10.0]],
            "moved": [{"from": [50.0, 10.0], "to": [60.0, 10.0], "distance": 10.0}],
        },
    }
    assert result.stderr.strip() == f"{a} -> {b}: 1 images, 1 regions: 1 added, 1 removed, 1 moved, 1 unchanged"
    assert run("labels", "diff", a, b, "-q").stderr == ""
    other = write_labels(tmp_path / "other.jsonl", [entry([[10, 10]], sha="t" * 64)])
    assert_clean_failure(run("labels", "diff", a, other), "image 'im' differs")
    assert_clean_failure(run("labels", "diff", "-", "-"), "both '-'", code=2)
    assert_clean_failure(run("labels", "diff", a, tmp_path / "missing.jsonl"), "missing.jsonl")
