"""`crowdtk index`: the manifest of a data set (ids, sizes, head counts, digests), layouts, and bad input."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import scipy.io
from conftest import assert_clean_failure, jsonl, run, write_generic

from crowdtk.formats import read_manifest


def shanghaitech(root, counts):
    """A ShanghaiTech-layout folder (images/IMG_n.jpg, ground-truth/GT_IMG_n.mat) of 16-px images with n heads each."""
    (root / "images").mkdir(parents=True)
    (root / "ground-truth").mkdir()
    for n in counts:
        cv2.imwrite(str(root / "images" / f"IMG_{n}.jpg"), np.zeros((16, 16, 3), np.uint8))
        scipy.io.savemat(root / "ground-truth" / f"GT_IMG_{n}.mat", {"annPoints": np.full((n, 2), 4.0)})
    return root


def test_index_lists_images_with_counts_and_digests(small_set):
    result = run("index", small_set)
    assert result.exit_code == 0, result.output
    header, records = jsonl(result.stdout)
    assert header["format"] == "manifest" and header["layout"] == "generic"
    assert [r["id"] for r in records] == ["a", "b", "c"]
    assert [r["count"] for r in records] == [30, 5, 0]
    assert [(r["width"], r["height"]) for r in records] == [(96, 64), (80, 48), (40, 40)]
    assert records[0]["sha256"] == hashlib.sha256((small_set / "images" / "a.jpg").read_bytes()).hexdigest()


def test_index_drops_points_outside_the_image_with_a_warning(tmp_path):
    points = np.array([[1, 1], [50, 5], [5, 30], [-1, 2], [3, 3]], dtype=float)
    root = write_generic(tmp_path / "d", {"x": (20, 40, points)})
    result = run("index", root)
    assert result.exit_code == 0
    assert jsonl(result.stdout)[1][0]["count"] == 2
    assert "dropped 3 point(s)" in result.stderr


def test_index_natural_order_and_shanghaitech_layout(tmp_path):
    root = shanghaitech(tmp_path / "train_data", (10, 2, 1))
    header, records = jsonl(run("index", root).stdout)
    assert header["layout"] == "shanghaitech"
    assert [r["id"] for r in records] == ["IMG_1", "IMG_2", "IMG_10"]
    assert [r["count"] for r in records] == [1, 2, 10]


def test_existing_output_is_refused_without_force(small_set, tmp_path):
    out = tmp_path / "m.jsonl"
    out.write_text("keep me")
    result = run("index", small_set, "-o", out)
    assert result.exit_code == 1 and "already exists" in result.stderr
    assert out.read_text() == "keep me"
    assert run("index", small_set, "-o", out, "--force").exit_code == 0
    assert read_manifest(out)[1][0].id == "a"


# --------------------------------------------------------------------------- bad input


def test_truncated_jpeg(small_set, tmp_path):
    data = (small_set / "images" / "a.jpg").read_bytes()
    (small_set / "images" / "a.jpg").write_bytes(data[: len(data) // 2])
    out = tmp_path / "m.jsonl"
    assert_clean_failure(run("index", small_set, "-o", out), "a.jpg: truncated JPEG", out)
    # --skip-bad leaves it out and says so.
    result = run("index", small_set, "--skip-bad")
    assert result.exit_code == 0 and "skipped" in result.stderr
    assert [r["id"] for r in jsonl(result.stdout)[1]] == ["b", "c"]


def test_missing_mat(tmp_path):
    root = shanghaitech(tmp_path / "train_data", (1,))
    (root / "ground-truth" / "GT_IMG_1.mat").unlink()
    out = tmp_path / "m.jsonl"
    assert_clean_failure(run("index", root, "-o", out), "GT_IMG_1.mat", out)


def test_empty_points_file(small_set, tmp_path):
    (small_set / "points" / "b.txt").write_text("")
    out = tmp_path / "m.jsonl"
    assert_clean_failure(run("index", small_set, "-o", out), "b.txt: empty points file", out)


# --------------------------------------------------------------------------- real data


def test_real_part_b_index(part_b_manifest):
    _, entries = read_manifest(part_b_manifest)
    assert len(entries) == 400
    for entry in entries[::20]:
        mat = scipy.io.loadmat(entry.points)["image_info"][0, 0][0, 0][0]
        assert entry.count == len(mat) and (entry.width, entry.height) == (1024, 768)
