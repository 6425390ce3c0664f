"""Pre-labels: `export --prelabel CKPT` puts a counter's suggested heads into each tool's package; what the labeler
leaves imports as labels, and a package whose suggestions nobody confirmed does not import as labels."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_clean_failure, run

from crowdtk.formats import Region, RegionsEntry, read_labels, read_regions
from crowdtk.labeling import export_regions
from crowdtk.prelabel import Prelabels, Suggestions, peak_points, region_suggestions, suggest_heads

TOOLS = ("labelstudio", "cvat", "labelme", "crops")


def blobs(shape: tuple[int, int], centres: list[tuple[float, float]], sigma: float = 0.6) -> np.ndarray:
    """A density map (cells) holding one unit-mass Gaussian head at each (row, col) centre, in cell units (cell i spans
    [i, i+1))."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]] + 0.5
    out = np.zeros(shape)
    for r, c in centres:
        g = np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * sigma**2))
        out += g / g.sum()
    return out


# --------------------------------------------------------------------------- the peak extraction


def test_isolated_heads_are_found_where_they_are():
    centres = [(3.2, 4.7), (10.5, 2.5), (6.8, 12.1), (14.3, 9.9), (2.6, 14.4)]
    cells, scores = peak_points(blobs((18, 18), centres), 5)
    assert len(cells) == 5
    for r, c in centres:
        assert (
            np.min(np.hypot(cells[:, 0] - r, cells[:, 1] - c)) < 0.3
        )  # sub-cell: a cell is 16 px at the bench's scale
    assert scores.min() > 0.7


def test_two_heads_in_one_blob_give_two_points():
    # One cell apart: the smoothed map has a single maximum, so local maxima would give one point.
    cells, _ = peak_points(blobs((10, 10), [(5.0, 4.5), (5.0, 5.5)]), 2)
    assert len(cells) == 2 and abs(cells[0, 1] - cells[1, 1]) > 0.5


def test_as_many_points_as_asked_and_extra_ones_score_low():
    density = blobs((12, 12), [(4.0, 4.0), (8.0, 8.0)])
    assert len(peak_points(density, 0)[0]) == 0
    assert len(peak_points(np.zeros((5, 5)), 3)[0]) == 0  # no density, no points
    cells, scores = peak_points(density, 4)
    assert len(cells) == 4 and scores[:2].min() > 0.7 and scores[2:].max() < 0.3


def test_region_suggestions_are_in_full_image_pixels_and_inside_their_region():
    # A model run at scale 0.5: a stride-8 cell spans 16 px of the image.
    density = blobs((12, 20), [(5.5, 3.5), (5.5, 12.5)])
    entry = RegionsEntry("a", "/x/a.jpg", "0" * 64, 320, 192, "random", (Region(160, 240, 0, 192),))
    found = region_suggestions(density, 0.5, 0.5, entry)
    assert found.points.shape == (1, 2)  # the head at column 3.5 (x = 56 px) lies outside the region
    np.testing.assert_allclose(found.points[0], [12.5 * 16, 5.5 * 16], atol=4)


class MapPredictor:
    """A predictor whose density map of every image is given (the peak extraction is what is under test)."""

    def __init__(self, density: np.ndarray, sx: float) -> None:
        self.density_map, self.sx = density, sx

    def density(self, image, sha256=None):
        return self.density_map, self.sx, self.sx


def test_suggest_heads_refuses_an_image_of_another_size():
    entry = RegionsEntry("a", "/x/a.jpg", "0" * 64, 64, 48, "random", (Region(0, 32, 0, 48),))
    predictor = MapPredictor(np.zeros((6, 8)), 1.0)
    assert len(suggest_heads(predictor, [entry], [("a", np.zeros((48, 64, 3), np.uint8))])["a"].points) == 0
    with pytest.raises(Exception, match="regions file says 64x48"):
        suggest_heads(predictor, [entry], [("a", np.zeros((40, 64, 3), np.uint8))])


# --------------------------------------------------------------------------- the packages


def oracle_prelabels(labeled) -> tuple[list[RegionsEntry], Prelabels]:
    """Suggestions that are exactly the true heads of each region (so a confirmed package must import as the oracle's
    labels)."""
    _, entries = read_regions(labeled["regions"])
    _, labels = read_labels(labeled["oracle"])
    images = {e.id: Suggestions(e.points, np.linspace(0.2, 0.9, len(e.points))) for e in labels}
    return entries, Prelabels("crowdtk prelabel lite test.safetensors", images)


def write_package(labeled, fmt: str) -> Path:
    entries, prelabels = oracle_prelabels(labeled)
    out = labeled["tmp"] / f"prelabel-{fmt}"
    out.mkdir()
    export_regions(entries, out, fmt, {"format": "labeling-export"}, prelabels=prelabels)
    return out


def imported(labeled, fmt: str, source: Path):
    out = labeled["tmp"] / f"labels-{fmt}.jsonl"
    return run("import", labeled["regions"], "--from", fmt, source, "-o", out), out


def assert_oracle_labels(labeled, out: Path) -> None:
    _, want = read_labels(labeled["oracle"])
    _, got = read_labels(out)
    assert [e.id for e in got] == [e.id for e in want]
    for g, w in zip(got, want):
        np.testing.assert_allclose(
            np.sort(g.points, axis=0), np.sort(w.points, axis=0), atol=0.006
        )  # CVAT writes 2 decimals


def test_each_tool_gets_the_suggestions_marked_as_the_model_s(labeled):
    _, prelabels = oracle_prelabels(labeled)
    n = {k: len(s.points) for k, s in prelabels.images.items()}
    # Label Studio: one prediction per task, of the counter's model_version, holding the regions and scored head
    # keypoints
    out = write_package(labeled, "labelstudio")
    for task in json.loads((out / "tasks.json").read_text()):
        (prediction,) = task["predictions"]
        heads = [r for r in prediction["result"] if r["type"] == "keypointlabels"]
        assert prediction["model_version"] == prelabels.model_version and len(heads) == n[task["data"]["crowdtk_id"]]
        assert all(0 <= r["score"] <= 1 for r in heads) and any(
            r["type"] == "rectanglelabels" for r in prediction["result"]
        )
        assert "annotations" not in task
    assert json.loads((out / "index.json").read_text())["prelabel"] == prelabels.model_version
    assert "Pre-labels" in (out / "README.txt").read_text()
    # CVAT: head points of source auto, no image tagged done
    root = ET.parse(write_package(labeled, "cvat") / "annotations.xml").getroot()
    for image in root.findall("image"):
        points = image.findall("points")
        assert (
            points
            and all(p.get("source") == "auto" and p.get("label") == "head" for p in points)
            and not image.findall("tag")
        )
    # LabelMe: point shapes flagged suggested, with the model and score in their description
    for file in sorted((write_package(labeled, "labelme") / "images").glob("*.json")):
        record = json.loads(file.read_text())
        points = [s for s in record["shapes"] if s["shape_type"] == "point"]
        assert points and all(
            s["flags"] == {"suggested": True} and prelabels.model_version in s["description"] for s in points
        )
        assert record["flags"]["done"] is False
    # crops: the points files hold the suggestions behind the mark
    out = write_package(labeled, "crops")
    texts = [p.read_text() for p in sorted((out / "crops").glob("*.txt"))]
    assert texts and all(t.startswith(f"# suggested by {prelabels.model_version}") for t in texts)


@pytest.mark.parametrize("fmt", ("cvat", "labelme", "crops"))
def test_unconfirmed_suggestions_do_not_import_as_labels(labeled, fmt):
    out = write_package(labeled, fmt)
    result, labels = imported(labeled, fmt, out)
    assert_clean_failure(result, "only suggestions nobody confirmed", labels)
    assert "README.txt" in result.stderr


def confirm(out: Path, fmt: str) -> Path:
    """What a labeler does to a package whose suggestions are right: submit (Label Studio), tag done, delete the
    mark."""
    if fmt == "labelstudio":
        tasks = json.loads((out / "tasks.json").read_text())
        for task in tasks:
            task["annotations"] = [{"result": task["predictions"][0]["result"], "was_cancelled": False}]
        (out / "export.json").write_text(json.dumps(tasks))
        return out / "export.json"
    if fmt == "cvat":
        tree = ET.parse(out / "annotations.xml")
        for image in tree.getroot().findall("image"):
            ET.SubElement(image, "tag", label="done", source="manual")
        tree.write(out / "annotations.xml")
    elif fmt == "labelme":
        for file in (out / "images").glob("*.json"):
            record = json.loads(file.read_text())
            record["flags"]["done"] = True
            file.write_text(json.dumps(record))
    else:
        for file in (out / "crops").glob("*.txt"):
            file.write_text(file.read_text().split("\n", 1)[1])
    return out


@pytest.mark.parametrize("fmt", TOOLS)
def test_confirmed_suggestions_are_ordinary_labels(labeled, fmt):
    out = write_package(labeled, fmt)
    result, labels = imported(labeled, fmt, confirm(out, fmt))
    assert result.exit_code == 0, result.output
    assert_oracle_labels(labeled, labels)


def test_a_label_studio_task_not_submitted_is_missing(labeled):
    out = write_package(labeled, "labelstudio")
    result, labels = imported(labeled, "labelstudio", out / "tasks.json")  # predictions only: nobody submitted
    assert_clean_failure(result, "no annotation", labels)


# --------------------------------------------------------------------------- the command


def test_export_prelabel_with_a_trained_counter(labeled, warm_ckpt):
    out = labeled["tmp"] / "with-counter"
    result = run("export", labeled["regions"], "--to", "labelstudio", "--prelabel", warm_ckpt, "-o", out)
    assert result.exit_code == 0, result.output
    tasks = json.loads((out / "tasks.json").read_text())
    heads = sum(r["type"] == "keypointlabels" for t in tasks for r in t["predictions"][0]["result"])
    assert f"with {heads} suggested heads (crowdtk prelabel lite {warm_ckpt.name})" in result.stderr
    assert json.loads((out / "index.json").read_text())["prelabel"] == f"crowdtk prelabel lite {warm_ckpt.name}"
    # every suggestion lies inside a region of its image
    _, entries = read_regions(labeled["regions"])
    by_id = {e.id: e for e in entries}
    for task in tasks:
        entry = by_id[task["data"]["crowdtk_id"]]
        for r in task["predictions"][0]["result"]:
            if r["type"] == "keypointlabels":
                xy = np.array([[r["value"]["x"] * entry.width / 100, r["value"]["y"] * entry.height / 100]])
                assert any(region.contains(xy)[0] for region in entry.regions)


def test_export_prelabel_refusals(labeled, tmp_path):
    out = tmp_path / "out"
    result = run("export", labeled["oracle"], "--to", "cvat", "--prelabel", tmp_path / "none.safetensors", "-o", out)
    assert_clean_failure(result, "none.safetensors", out)  # the checkpoint is checked before anything is read
    (tmp_path / "m.safetensors").write_bytes(b"x")
    result = run("export", labeled["oracle"], "--to", "cvat", "--prelabel", tmp_path / "m.safetensors", "-o", out)
    assert_clean_failure(result, "a labels file", out, code=2)  # a review round's points are labels already
