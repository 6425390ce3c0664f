"""`crowdtk gen-density`: density maps by the textbook method (fixed and adaptive kernels, sum pooling), the index,
bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import assert_clean_failure, run
from scipy.ndimage import gaussian_filter

from crowdtk.density import DensityConfig, density_map, head_sigmas
from crowdtk.formats import load_density_map, read_density_index

# --------------------------------------------------------------------------- the maps


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
    sigmas = head_sigmas(points, config)
    assert sigmas[:20].max() < sigmas[20:].min()
    assert abs(density_map(points, 160, 200, config).sum() - len(points)) < 1e-3


def test_zero_and_many_heads():
    assert density_map(np.zeros((0, 2)), 30, 30).sum() == 0
    rng = np.random.default_rng(5)
    many = np.c_[rng.uniform(0, 1024, 6000), rng.uniform(0, 768, 6000)]
    for config in (DensityConfig(), DensityConfig(adaptive=True)):
        assert abs(density_map(many, 768, 1024, config).sum(dtype=np.float64) - 6000) < 1e-2


# --------------------------------------------------------------------------- the command


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
    done = subprocess.run(
        [*crowdtk, "gen-density", "-", "-o", str(tmp_path / "d"), "-q"],
        stdin=index.stdout,
        capture_output=True,
        text=True,
    )
    index.stdout.close()
    assert index.wait() == 0 and done.returncode == 0, done.stderr
    assert len((tmp_path / "d" / "index.jsonl").read_text().splitlines()) == 4


# --------------------------------------------------------------------------- bad input


def cut_third_line(lines: list[str]) -> list[str]:
    return [*lines[:2], lines[2][:-5], *lines[3:]]


def newer_header(lines: list[str]) -> list[str]:
    header = json.loads(lines[0])
    header["format_version"] = 2
    return [json.dumps(header), *lines[1:]]


@pytest.mark.parametrize(
    "edit, says",
    [(cut_third_line, "m.jsonl:3: line is not JSON"), (newer_header, "version 2 is newer")],
    ids=["line-not-json", "newer-format-version"],
)
def test_a_broken_manifest_leaves_no_output(small_set, tmp_path, edit, says):
    manifest = tmp_path / "m.jsonl"
    run("index", small_set, "-o", manifest)
    manifest.write_text("\n".join(edit(manifest.read_text().splitlines())) + "\n")
    out = tmp_path / "dens"
    assert_clean_failure(run("gen-density", manifest, "-o", out), says, out)


def test_points_changed_after_indexing_leaves_no_output(small_set, tmp_path):
    manifest = tmp_path / "m.jsonl"
    run("index", small_set, "-o", manifest)
    (small_set / "points" / "c.txt").write_text("1 1\n")
    out = tmp_path / "dens"
    assert_clean_failure(run("gen-density", manifest, "-o", out), "c.txt", out)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# --------------------------------------------------------------------------- real data


def test_real_part_b_densities(part_b_manifest, tmp_path):
    subset = tmp_path / "sub.jsonl"
    lines = part_b_manifest.read_text().splitlines()
    subset.write_text("\n".join(lines[:31]) + "\n")
    assert run("gen-density", subset, "-o", tmp_path / "dens", "-q", "--workers", "2").exit_code == 0
    _, dens = read_density_index(tmp_path / "dens" / "index.jsonl")
    assert len(dens) == 30
    assert max(abs(d.sum - d.count) for d in dens) < 1e-3
