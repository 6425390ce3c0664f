"""Foundation: file contracts, `index`, `gen-density`, the CLI conventions, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
from scipy.ndimage import gaussian_filter
from typer.testing import CliRunner

from crowdtk import __version__
from crowdtk.cli import app
from crowdtk.data import read_image, read_points
from crowdtk.density import DensityConfig, density_map
from crowdtk.errors import CrowdtkError
from crowdtk.formats import (
    MANIFEST,
    Provenance,
    load_density_map,
    make_header,
    read_density_index,
    read_jsonl,
    read_manifest,
    write_jsonl,
)
from crowdtk.files import atomic_path

from conftest import assert_clean_failure, write_generic

runner = CliRunner()


def jsonl(text: str) -> tuple[dict, list[dict]]:
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    return lines[0], lines[1:]


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


# --------------------------------------------------------------------------- formats


def test_header_records_provenance_and_round_trips(tmp_path):
    header = make_header(MANIFEST, Provenance("index", {"root": Path("/x")}, seed=7))
    write_jsonl(tmp_path / "m.jsonl", header, [{"a": 1}])
    back, records = read_jsonl(tmp_path / "m.jsonl", MANIFEST)
    assert back["format"] == "manifest" and back["format_version"] == 1
    assert back["crowdtk_version"] == __version__
    assert back["command"] == "index" and back["params"] == {"root": "/x"} and back["seed"] == 7
    assert records[0]["a"] == 1


def test_reader_refuses_newer_version_and_other_formats(tmp_path):
    header = make_header(MANIFEST, Provenance("index"))
    header["format_version"] = 99
    write_jsonl(tmp_path / "new.jsonl", header, [])
    with pytest.raises(CrowdtkError, match=r"new.jsonl.*version 99 is newer"):
        read_jsonl(tmp_path / "new.jsonl", MANIFEST)
    header["format_version"] = 1
    header["format"] = "regions"
    write_jsonl(tmp_path / "other.jsonl", header, [])
    with pytest.raises(CrowdtkError, match="'regions' artifact, expected 'manifest'"):
        read_jsonl(tmp_path / "other.jsonl", MANIFEST)


def test_atomic_write_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


# --------------------------------------------------------------------------- readers


@pytest.mark.parametrize("suffix", [".txt", ".csv", ".json", ".npy"])
def test_generic_point_formats_read_the_same_points(tmp_path, suffix):
    points = np.array([[1.5, 2.25], [30.0, 10.0], [0.0, 0.0]])
    root = write_generic(tmp_path / suffix[1:], {"img": (20, 40, points)}, suffix=suffix)
    np.testing.assert_allclose(read_points(root / "points" / f"img{suffix}"), points)


def test_mat_layouts(tmp_path):
    pts = np.array([[3.0, 4.0], [5.0, 6.0]])
    info = np.empty((1, 1), dtype=object)
    inner = np.empty((1, 1), dtype=[("location", "O"), ("number", "O")])
    inner[0, 0] = (pts, np.array([[2]]))
    info[0, 0] = inner
    scipy.io.savemat(tmp_path / "GT_IMG_1.mat", {"image_info": info})
    np.testing.assert_allclose(read_points(tmp_path / "GT_IMG_1.mat"), pts)
    scipy.io.savemat(tmp_path / "1_ann.mat", {"annPoints": pts})
    np.testing.assert_allclose(read_points(tmp_path / "1_ann.mat"), pts)
    scipy.io.savemat(tmp_path / "bad.mat", {"something": pts})
    with pytest.raises(CrowdtkError, match="neither 'image_info'"):
        read_points(tmp_path / "bad.mat")


def test_nan_points_are_refused(tmp_path):
    (tmp_path / "p.txt").write_text("1 2\nnan 3\n")
    with pytest.raises(CrowdtkError, match=r"p.txt: 1 point\(s\) are NaN"):
        read_points(tmp_path / "p.txt")


def test_grayscale_image_reads_as_three_channels(tmp_path):
    cv2.imwrite(str(tmp_path / "g.png"), np.full((10, 12), 77, np.uint8))
    image = read_image(tmp_path / "g.png")
    assert image.shape == (10, 12, 3) and (image == 77).all()


# --------------------------------------------------------------------------- index


def test_index_lists_images_with_counts_and_digests(small_set):
    result = run("index", small_set)
    assert result.exit_code == 0, result.output
    header, records = jsonl(result.stdout)
    assert header["format"] == "manifest" and header["layout"] == "generic"
    assert [r["id"] for r in records] == ["a", "b", "c"]
    assert [r["count"] for r in records] == [30, 5, 0]
    assert [(r["width"], r["height"]) for r in records] == [(96, 64), (80, 48), (40, 40)]
    import hashlib

    assert records[0]["sha256"] == hashlib.sha256((small_set / "images" / "a.jpg").read_bytes()).hexdigest()


def test_index_drops_points_outside_the_image_with_a_warning(tmp_path):
    points = np.array([[1, 1], [50, 5], [5, 30], [-1, 2], [3, 3]], dtype=float)
    root = write_generic(tmp_path / "d", {"x": (20, 40, points)})
    result = run("index", root)
    assert result.exit_code == 0
    assert jsonl(result.stdout)[1][0]["count"] == 2
    assert "dropped 3 point(s)" in result.stderr


def test_index_natural_order_and_shanghaitech_layout(tmp_path):
    root = tmp_path / "train_data"
    (root / "images").mkdir(parents=True)
    (root / "ground-truth").mkdir()
    for n in (10, 2, 1):
        cv2.imwrite(str(root / "images" / f"IMG_{n}.jpg"), np.zeros((16, 16, 3), np.uint8))
        scipy.io.savemat(root / "ground-truth" / f"GT_IMG_{n}.mat", {"annPoints": np.full((n, 2), 4.0)})
    header, records = jsonl(run("index", root).stdout)
    assert header["layout"] == "shanghaitech"
    assert [r["id"] for r in records] == ["IMG_1", "IMG_2", "IMG_10"]
    assert [r["count"] for r in records] == [1, 2, 10]


# --------------------------------------------------------------------------- gen-density


def textbook(points: np.ndarray, height: int, width: int, sigma: float) -> np.ndarray:
    out = np.zeros((height, width))
    for x, y in points:
        delta = np.zeros((height, width))
        delta[int(y), int(x)] = 1.0
        blurred = gaussian_filter(delta, sigma, mode="constant")
        out += blurred / blurred.sum()
    return out


def test_density_matches_the_textbook_method_and_keeps_mass_at_borders():
    rng = np.random.default_rng(3)
    points = np.c_[rng.uniform(0, 70, 40), rng.uniform(0, 50, 40)]
    points[:3] = [[0.1, 0.2], [69.9, 49.9], [0.5, 49.0]]  # corners: kernels cut by the border
    ours = density_map(points, 50, 70, DensityConfig(stride=1))
    np.testing.assert_allclose(ours, textbook(points, 50, 70, 4.0), atol=1e-6)
    assert abs(ours.sum() - 40) < 1e-4


def test_density_stride_is_sum_pooling():
    rng = np.random.default_rng(4)
    points = np.c_[rng.uniform(0, 61, 25), rng.uniform(0, 45, 25)]
    full = density_map(points, 45, 61, DensityConfig(stride=1))
    pooled = density_map(points, 45, 61, DensityConfig(stride=8))
    assert pooled.shape == (6, 8)  # ceil(45/8), ceil(61/8)
    padded = np.zeros((48, 64))
    padded[:45, :61] = full
    np.testing.assert_allclose(pooled, padded.reshape(6, 8, 8, 8).sum(axis=(1, 3)), atol=1e-5)


def test_adaptive_kernels_widen_in_sparse_areas_and_keep_counts():
    dense = np.c_[np.linspace(10, 20, 20), np.full(20, 10.0)]
    sparse = np.array([[150.0, 100.0], [190.0, 100.0], [170.0, 140.0], [120.0, 60.0]])
    points = np.vstack([dense, sparse])
    config = DensityConfig(adaptive=True, stride=1)
    from crowdtk.density import head_sigmas

    sigmas = head_sigmas(points, config)
    assert sigmas[:20].max() < sigmas[20:].min()
    assert abs(density_map(points, 160, 200, config).sum() - len(points)) < 1e-3


def test_zero_and_many_heads():
    assert density_map(np.zeros((0, 2)), 30, 30).sum() == 0
    rng = np.random.default_rng(5)
    many = np.c_[rng.uniform(0, 1024, 6000), rng.uniform(0, 768, 6000)]
    for config in (DensityConfig(), DensityConfig(adaptive=True)):
        assert abs(density_map(many, 768, 1024, config).sum(dtype=np.float64) - 6000) < 1e-2


def test_gen_density_cli_writes_maps_and_index(small_set, tmp_path):
    manifest = tmp_path / "m.jsonl"
    assert run("index", small_set, "-o", manifest).exit_code == 0
    result = run("gen-density", manifest, "-o", tmp_path / "dens", "--workers", "2")
    assert result.exit_code == 0, result.output
    assert "largest |sum - count|" in result.stderr
    _, entries = read_density_index(tmp_path / "dens" / "index.jsonl")
    assert [e.id for e in entries] == ["a", "b", "c"]
    for entry in entries:
        header, density = load_density_map(entry.density)
        assert density.dtype == np.float32
        assert density.shape == (-(-entry.height // 8), -(-entry.width // 8))
        assert abs(density.sum() - entry.count) < 1e-3
        assert header["image_id"] == entry.id and header["params"]["sigma"] == 4.0


def test_pipe_index_into_gen_density(small_set, tmp_path):
    crowdtk = [sys.executable, "-m", "crowdtk"]
    index = subprocess.Popen([*crowdtk, "index", str(small_set)], stdout=subprocess.PIPE)
    done = subprocess.run([*crowdtk, "gen-density", "-", "-o", str(tmp_path / "d"), "-q"], stdin=index.stdout, capture_output=True, text=True)
    index.stdout.close()
    assert index.wait() == 0 and done.returncode == 0, done.stderr
    assert len((tmp_path / "d" / "index.jsonl").read_text().splitlines()) == 4


# --------------------------------------------------------------------------- CLI conventions


def test_version_and_usage_errors():
    assert run("--version").stdout.strip() == f"crowdtk {__version__}"
    assert run("no-such-command").exit_code == 2
    assert run("gen-density").exit_code == 2  # missing argument


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
    root = tmp_path / "train_data"
    (root / "images").mkdir(parents=True)
    (root / "ground-truth").mkdir()
    cv2.imwrite(str(root / "images" / "IMG_1.jpg"), np.zeros((16, 16, 3), np.uint8))
    out = tmp_path / "m.jsonl"
    assert_clean_failure(run("index", root, "-o", out), "GT_IMG_1.mat", out)


def test_empty_points_file(small_set, tmp_path):
    (small_set / "points" / "b.txt").write_text("")
    out = tmp_path / "m.jsonl"
    assert_clean_failure(run("index", small_set, "-o", out), "b.txt: empty points file", out)


def test_manifest_line_that_is_not_json(small_set, tmp_path):
    manifest = tmp_path / "m.jsonl"
    run("index", small_set, "-o", manifest)
    lines = manifest.read_text().splitlines()
    lines[2] = lines[2][:-5]
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "dens"
    assert_clean_failure(run("gen-density", manifest, "-o", out), "m.jsonl:3: line is not JSON", out)


def test_manifest_of_newer_format_version(small_set, tmp_path):
    manifest = tmp_path / "m.jsonl"
    run("index", small_set, "-o", manifest)
    lines = manifest.read_text().splitlines()
    header = json.loads(lines[0])
    header["format_version"] = 2
    manifest.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    out = tmp_path / "dens"
    assert_clean_failure(run("gen-density", manifest, "-o", out), "version 2 is newer", out)


def test_points_changed_after_indexing_leaves_no_output(small_set, tmp_path):
    manifest = tmp_path / "m.jsonl"
    run("index", small_set, "-o", manifest)
    (small_set / "points" / "c.txt").write_text("1 1\n")
    out = tmp_path / "dens"
    assert_clean_failure(run("gen-density", manifest, "-o", out), "c.txt", out)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# --------------------------------------------------------------------------- real data


def test_real_part_b_index_and_densities(part_b, tmp_path):
    manifest = tmp_path / "m.jsonl"
    result = run("index", part_b / "train_data", "-o", manifest, "-q")
    assert result.exit_code == 0, result.output
    _, entries = read_manifest(manifest)
    assert len(entries) == 400
    for entry in entries[::20]:
        mat = scipy.io.loadmat(entry.points)["image_info"][0, 0][0, 0][0]
        assert entry.count == len(mat) and (entry.width, entry.height) == (1024, 768)
    subset = tmp_path / "sub.jsonl"
    lines = manifest.read_text().splitlines()
    subset.write_text("\n".join(lines[:31]) + "\n")
    assert run("gen-density", subset, "-o", tmp_path / "dens", "-q", "--workers", "2").exit_code == 0
    _, dens = read_density_index(tmp_path / "dens" / "index.jsonl")
    assert len(dens) == 30
    assert max(abs(d.sum - d.count) for d in dens) < 1e-3


def test_outputs_get_ordinary_permissions(small_set, tmp_path):
    out = tmp_path / "m.jsonl"
    assert run("index", small_set, "-o", out).exit_code == 0
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask
    # safetensors writes a file of its own (0600) in place of the temporary one
    import torch

    from crowdtk.checkpoint import save_tensors

    ckpt = tmp_path / "c.safetensors"
    save_tensors(ckpt, {"w": torch.zeros(2)}, {"format": "checkpoint", "format_version": 1})
    assert ckpt.stat().st_mode & 0o777 == 0o666 & ~umask
