"""`crowdtk index` on the field's benchmark layouts, each built here in its exact layout from tiny generated images:
ShanghaiTech, UCF_CC_50 / UCF-QNRF, JHU-Crowd++, NWPU-Crowd and the generic one; the layouts' registry; `--split`;
the manifest's optional attributes; images without annotations (NWPU-Crowd's test split)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from conftest import assert_clean_failure, jsonl, run, small_checkpoint
from PIL import Image

from crowdtk.data import EMPTY_SHA256, read_points_on_image
from crowdtk.errors import CrowdtkError
from crowdtk.formats import MANIFEST, ManifestEntry, Provenance, make_header, read_manifest, write_jsonl
from crowdtk.index import LAYOUTS, Layout, Sample, build_manifest, register_layout
from crowdtk.registry import RegistrationError

W, H = 80, 48  # every generated image, unless it says otherwise


def image(path: Path, width: int = W, height: int = H, gray: bool = False) -> Path:
    """A small noisy JPEG (grey: one channel, as some benchmark images are)."""
    rng = np.random.default_rng(len(path.name))
    pixels = rng.integers(0, 255, (height, width) if gray else (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=90)
    return path


# --------------------------------------------------------------------------- the layouts, exactly as published


def shanghaitech(root: Path) -> Path:
    """ShanghaiTech part_B/train_data: images/IMG_n.jpg + ground-truth/GT_IMG_n.mat (image_info)."""
    for n, heads in ((1, 3), (2, 0)):
        image(root / "images" / f"IMG_{n}.jpg")
        points = np.array([[10.0 + i, 20.0] for i in range(heads)]).reshape(-1, 2)
        info = np.empty((1, 1), dtype=object)  # a 1×1 cell holding a struct, as the data set's files do
        info[0, 0] = {"location": points, "number": np.array([[float(heads)]])}
        (root / "ground-truth").mkdir(exist_ok=True)
        scipy.io.savemat(root / "ground-truth" / f"GT_IMG_{n}.mat", {"image_info": info})
    return root


def qnrf(root: Path) -> Path:
    """UCF-QNRF: Train/ and Test/ with img_NNNN.jpg + img_NNNN_ann.mat (annPoints, N×2, x then y)."""
    # On an 80×48 image (70, 5) lies inside and (5, 70) outside: a reader that swapped x and y would count 1 of 2.
    scipy_points = {"img_0001": [[70.0, 5.0], [10.0, 40.0]], "img_0002": [[5.0, 70.0], [1.0, 1.0], [2.0, 2.0]]}
    for split, stems in (("Train", ("img_0001", "img_0002")), ("Test", ("img_0001",))):
        for stem in stems:
            image(root / split / f"{stem}.jpg", gray=stem == "img_0002")
            scipy.io.savemat(root / split / f"{stem}_ann.mat", {"annPoints": np.array(scipy_points[stem])})
    return root


def jhu(root: Path, labels: bool = True) -> Path:
    """JHU-Crowd++: {train,val,test}/images/NNNN.jpg + gt/NNNN.txt ('x y w h o b' a head) + image_labels.txt."""
    for split in ("train", "val", "test"):
        folder = root / split
        image(folder / "images" / "0001.jpg")
        (folder / "gt").mkdir(parents=True)
        # x y first; a head at (70, 5) is inside the 80×48 image, (5, 70) is not.
        (folder / "gt" / "0001.txt").write_text("70 5 12 14 1 0\n10 40 8 9 2 1\n5 70 8 8 1 0\n")
        image(folder / "images" / "0002.jpg", gray=True)
        (folder / "gt" / "0002.txt").write_bytes(b"")  # a distractor: no heads, an empty file
        if labels:
            (folder / "image_labels.txt").write_text("0001,3,stadium,2,0\n0002,0,water,0,1\n")
    return root


NWPU_LISTS = {
    "train": "0001 0 1\n0002 1 2\n",
    "val": "0003 0 3\n0004 1 0\n",
    "test": "0005 0 1\n0006 1 4\n",
}


def nwpu(root: Path) -> Path:
    """NWPU-Crowd: images/NNNN.jpg, jsons/NNNN.json (none for the test split), train.txt, val.txt, test.txt at ROOT."""
    for n in range(1, 7):
        image(root / "images" / f"{n:04d}.jpg", gray=n == 4)
    (root / "jsons").mkdir()
    for n in range(1, 5):
        points = [[1.0 + n, 2.0], [30.0, 40.0 + n]][: 1 + n % 2]
        record = {"img_id": f"{n:04d}.jpg", "human_num": len(points), "points": points, "boxes": [[0, 0, 4, 4]]}
        (root / "jsons" / f"{n:04d}.json").write_text(json.dumps(record))
    for split, text in NWPU_LISTS.items():
        (root / f"{split}.txt").write_text(text)
    # What else the download holds, and a stray file: none of it is an image of the set.
    (root / "readme.md").write_text("NWPU-Crowd\n")
    (root / "mats").mkdir()
    (root / "images" / "Thumbs.db").write_bytes(b"\0" * 16)
    (root / "jsons" / "9999.json").write_text('{"points": []}')
    return root


def records(result) -> list[dict]:
    assert result.exit_code == 0, result.output
    return jsonl(result.stdout)[1]


# --------------------------------------------------------------------------- the registry


def test_layouts_are_registered_in_the_order_they_are_detected():
    assert list(LAYOUTS) == ["shanghaitech", "generic", "jhu_crowd", "nwpu_crowd", "ucf_cc_50"]
    assert [name for name, layout in LAYOUTS.items() if layout.split is not None] == ["nwpu_crowd"]


def test_a_folder_of_no_layout_is_refused_naming_every_registered_layout(tmp_path):
    (tmp_path / "nothing").mkdir()
    result = run("index", tmp_path / "nothing")
    assert_clean_failure(result, "nothing: no known data set layout")
    assert all(name in result.stderr for name in LAYOUTS)


def test_a_layout_registered_from_outside_is_detected_and_a_half_made_one_is_refused(tmp_path):
    root = tmp_path / "custom"
    image(root / "pics" / "a.jpg")
    (root / "pics" / "a.heads.txt").write_text("1 1\n2 2\n")
    layout = Layout(
        "pics-and-heads",
        "pics/NAME.jpg + pics/NAME.heads.txt",
        detect=lambda r: (r / "pics").is_dir(),
        samples=lambda r: [Sample(p, p.with_suffix(".heads.txt"), {"camera": 3}) for p in sorted(r.glob("pics/*.jpg"))],
    )
    register_layout(layout)
    try:
        header, (record,) = jsonl(run("index", root).stdout)
        assert header["layout"] == "pics-and-heads" and record["count"] == 2 and record["attributes"] == {"camera": 3}
        with pytest.raises(RegistrationError, match="registered twice"):
            register_layout(layout)
    finally:
        LAYOUTS.unregister("pics-and-heads")
    with pytest.raises(RegistrationError, match="detect and samples"):
        register_layout(Layout("broken", "no detect function", detect=None, samples=lambda r: []))
    assert "broken" not in LAYOUTS


# --------------------------------------------------------------------------- ShanghaiTech (unchanged)


def test_shanghaitech_split_is_indexed_as_before(tmp_path):
    root = shanghaitech(tmp_path / "part_B" / "train_data")
    header, recs = jsonl(run("index", root).stdout)
    assert header["layout"] == "shanghaitech"
    assert [(r["id"], r["count"], r["width"], r["height"]) for r in recs] == [("IMG_1", 3, W, H), ("IMG_2", 0, W, H)]
    assert recs[0]["points"] == str((root / "ground-truth" / "GT_IMG_1.mat").resolve())
    # No new field in an old layout's records.
    assert set(recs[0]) == {
        "id", "image", "points", "width", "height", "count", "sha256", "size_bytes", "mtime_ns", "points_sha256"
    }  # fmt: skip
    # Its root names the splits.
    result = run("index", tmp_path / "part_B")
    assert_clean_failure(result, "it holds splits: index")
    assert f"{tmp_path / 'part_B' / 'train_data'}" in result.stderr


# --------------------------------------------------------------------------- UCF_CC_50 / UCF-QNRF


def test_ucf_qnrf_split_folder(tmp_path):
    root = qnrf(tmp_path / "UCF-QNRF_ECCV18")
    result = run("index", root / "Train")
    header, recs = jsonl(result.stdout)
    assert header["layout"] == "ucf_cc_50"
    assert [(r["id"], r["count"], r["width"], r["height"]) for r in recs] == [
        ("img_0001", 2, W, H),  # x then y: (70, 5) is on the image
        ("img_0002", 2, W, H),  # a grey image; (5, 70) is off it, and dropped
    ]
    assert "dropped 1 point(s)" in result.stderr
    assert "attributes" not in recs[0]


def test_ucf_qnrf_root_says_to_index_a_split(tmp_path):
    root = qnrf(tmp_path / "UCF-QNRF_ECCV18")
    (root / "README.txt").write_text("UCF-QNRF\n")
    result = run("index", root)
    assert_clean_failure(
        result, f"no known data set layout; it holds splits: index {root / 'Train'} or {root / 'Test'}"
    )


# --------------------------------------------------------------------------- JHU-Crowd++


def test_jhu_crowd_split_with_image_labels(tmp_path):
    root = jhu(tmp_path / "jhu_crowd_v2.0")
    header, recs = jsonl(run("index", root / "train").stdout)
    assert header["layout"] == "jhu_crowd"
    assert [(r["id"], r["count"]) for r in recs] == [("0001", 2), ("0002", 0)]  # the empty txt: no heads
    assert recs[0]["attributes"] == {"scene_type": "stadium", "weather": 2, "distractor": 0}
    assert recs[1]["attributes"] == {"scene_type": "water", "weather": 0, "distractor": 1}
    assert recs[1]["points_sha256"] == EMPTY_SHA256


def test_jhu_crowd_empty_annotation_is_no_heads_in_every_later_stage(tmp_path):
    root = jhu(tmp_path / "jhu")
    out = tmp_path / "m.jsonl"
    assert run("index", root / "val", "-o", out).exit_code == 0
    entry = read_manifest(out)[1][1]
    points, dropped = read_points_on_image(entry.points, entry.width, entry.height, entry.points_sha256)
    assert points.shape == (0, 2) and dropped == 0
    # Without the manifest's word for it an empty file stays an error (a failed export).
    with pytest.raises(CrowdtkError, match="empty points file"):
        read_points_on_image(entry.points, entry.width, entry.height)
    # gen-density reads it too.
    result = run("gen-density", out, "-o", tmp_path / "dens")
    assert result.exit_code == 0, result.output


def test_jhu_crowd_without_image_labels_and_its_root(tmp_path):
    root = jhu(tmp_path / "jhu", labels=False)
    recs = records(run("index", root / "test"))
    assert [r["count"] for r in recs] == [2, 0] and all("attributes" not in r for r in recs)
    result = run("index", root)
    assert_clean_failure(
        result, f"it holds splits: index {root / 'train'} or {root / 'val'} or {root / 'test'}"
    )  # train first, as people index it


def test_jhu_crowd_bad_image_labels_line_is_named(tmp_path):
    root = jhu(tmp_path / "jhu")
    (root / "train" / "image_labels.txt").write_text("0001,3,stadium,2,0\n0002;0;water\n")
    assert_clean_failure(run("index", root / "train"), "image_labels.txt:2: not an image label line")


# --------------------------------------------------------------------------- NWPU-Crowd


def test_nwpu_crowd_whole_folder(tmp_path):
    root = nwpu(tmp_path / "NWPU-Crowd")
    result = run("index", root)
    header, recs = jsonl(result.stdout)
    assert header["layout"] == "nwpu_crowd"
    assert [r["id"] for r in recs] == ["0001", "0002", "0003", "0004", "0005", "0006"]  # no stray file
    assert [r["count"] for r in recs] == [2, 1, 2, 1, 0, 0]
    assert [r["points"] for r in recs[4:]] == [None, None]  # the test split: no annotations published
    assert "points_sha256" not in recs[4]
    assert [r["attributes"]["split"] for r in recs] == ["train", "train", "val", "val", "test", "test"]
    assert "2 without annotations" in result.stderr


def test_nwpu_crowd_split_keeps_the_list_attributes(tmp_path):
    root = nwpu(tmp_path / "NWPU-Crowd")
    out = tmp_path / "val.jsonl"
    result = run("index", root, "--split", "val", "-o", out)
    assert result.exit_code == 0, result.output
    header, entries = read_manifest(out)
    assert header["params"]["split"] == "val"
    assert [(e.id, e.count, e.attributes) for e in entries] == [
        ("0003", 2, {"split": "val", "illumination": 0, "scene_level": 3}),
        ("0004", 1, {"split": "val", "illumination": 1, "scene_level": 0}),  # a grey image
    ]
    train = records(run("index", root, "--split", "train"))
    assert [r["id"] for r in train] == ["0001", "0002"]


def test_nwpu_crowd_test_split_is_counted_but_not_evaluated(tmp_path):
    root = nwpu(tmp_path / "NWPU-Crowd")
    out = tmp_path / "test.jsonl"
    assert run("index", root, "--split", "test", "-o", out).exit_code == 0
    _, entries = read_manifest(out)
    assert [(e.id, e.points, e.count) for e in entries] == [("0005", None, 0), ("0006", None, 0)]
    # Every stage that needs the ground truth is refused, naming the fix.
    with pytest.raises(CrowdtkError, match=r"no annotations.*--split val"):
        read_points_on_image(entries[0].points, entries[0].width, entries[0].height)
    assert_clean_failure(run("gen-density", out, "-o", tmp_path / "dens"), "no annotations")
    ckpt = small_checkpoint(tmp_path / "m.safetensors")
    counted = run("count", ckpt, root / "images" / "0005.jpg", root / "images" / "0006.jpg")
    assert counted.exit_code == 0, counted.output
    assert len(counted.stdout.splitlines()) == 2
    assert_clean_failure(run("eval", ckpt, out), "'0005'")


def test_nwpu_crowd_missing_annotation_of_a_train_image_is_an_error(tmp_path):
    root = nwpu(tmp_path / "NWPU-Crowd")
    (root / "jsons" / "0002.json").unlink()
    assert_clean_failure(run("index", root, "--split", "train"), "0002.json: annotation file for 0002.jpg not found")
    result = run("index", root, "--split", "train", "--skip-bad")
    assert [r["id"] for r in records(result)] == ["0001"] and "skipped" in result.stderr


def test_split_needs_a_layout_with_split_lists(tmp_path):
    root = jhu(tmp_path / "jhu")
    result = run("index", root / "train", "--split", "val")
    assert_clean_failure(result, "--split val", code=2)
    assert "jhu_crowd layout, which has no split lists" in result.stderr and "nwpu_crowd" in result.stderr
    nwpu_root = nwpu(tmp_path / "NWPU-Crowd")
    (nwpu_root / "val.txt").unlink()
    assert_clean_failure(run("index", nwpu_root, "--split", "val"), "val.txt: split list not found")
    assert run("index", nwpu_root, "--split", "nope").exit_code == 2  # not a split name


# --------------------------------------------------------------------------- the manifest's attributes


def test_manifests_with_and_without_attributes_load(tmp_path):
    base = ManifestEntry("a", str(tmp_path / "a.jpg"), str(tmp_path / "a.txt"), 16, 16, 1, "0" * 64)
    old = base.to_record()
    assert "attributes" not in old  # an old manifest's record, unchanged
    with_attributes = replace(base, id="b", attributes={"scene_level": 2, "weather": 0, "scene_type": "street"})
    path = tmp_path / "m.jsonl"
    write_jsonl(path, make_header(MANIFEST, Provenance("test")), [old, with_attributes.to_record()])
    _, (a, b) = read_manifest(path)
    assert a.attributes is None and b.attributes == {"scene_level": 2, "weather": 0, "scene_type": "street"}
    assert len({a, b}) == 2  # entries stay hashable


@pytest.mark.parametrize("bad", [["x"], {"level": True}, {"level": 1.5}, {"level": [1]}, "street"])
def test_attributes_of_the_wrong_type_are_refused(tmp_path, bad):
    record = {**ManifestEntry("a", "/a.jpg", "/a.txt", 16, 16, 1, "0" * 64).to_record(), "attributes": bad}
    path = tmp_path / "m.jsonl"
    write_jsonl(path, make_header(MANIFEST, Provenance("test")), [record])
    with pytest.raises(CrowdtkError, match="field 'attributes' is not an object of strings and integers"):
        read_manifest(path)


def test_build_manifest_of_a_split_directly(tmp_path):
    root = nwpu(tmp_path / "NWPU-Crowd")
    result = build_manifest(root, workers=1, split="test")
    assert result.layout == "nwpu_crowd" and result.unannotated == 2
    assert [e.attributes for e in result.entries] == [
        {"split": "test", "illumination": 0, "scene_level": 1},
        {"split": "test", "illumination": 1, "scene_level": 4},
    ]
