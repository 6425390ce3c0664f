"""`synth`: the generated data set's layout, determinism, and the structure the method relies on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import jsonl, run
from scipy.spatial import cKDTree

from crowdtk.data import read_image, read_points
from crowdtk.formats import read_manifest
from crowdtk.synth import SynthConfig, render_scene

SMALL = ("--train", "4", "--test", "2")


def files_of(root: Path) -> dict[str, bytes]:
    """Every image and points file under ``root`` (manifests hold a creation time)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.parent.name in {"images", "points"}
    }


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    result = run("synth", "-o", out, *SMALL, "--seed", 3)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def scenes() -> list:
    """Twelve scenes at the default size, straight from the library (with head radii)."""
    config = SynthConfig()
    return [render_scene(config, split, i) for split in ("train", "test") for i in range(6)]


# --------------------------------------------------------------------------- layout


def test_writes_generic_layout_with_manifests_per_split(small):
    assert sorted(p.name for p in small.iterdir()) == ["synth.json", "test", "train"]
    assert not (small / "manifest.jsonl").exists()  # splits stay separate
    for split, n in (("train", 4), ("test", 2)):
        header, entries = read_manifest(small / split / "manifest.jsonl")
        assert header["command"] == "synth" and header["seed"] == 3
        assert header["params"]["split"] == split and header["params"]["width"] == 384
        assert [e.id for e in entries] == [f"{split}_{i:04d}" for i in range(n)]
        for entry in entries:
            image = read_image(entry.image)
            assert image.shape == (256, 384, 3) and (entry.width, entry.height) == (384, 256)
            points = read_points(entry.points)
            assert len(points) == entry.count
            assert ((points >= 0) & (points < [384, 256])).all()
            assert Path(entry.points).read_text().startswith("# x y\n")
        raw = [json.loads(line) for line in (small / split / "manifest.jsonl").read_text().splitlines()[1:]]
        assert all(not Path(r["image"]).is_absolute() and not Path(r["points"]).is_absolute() for r in raw)
    config = json.loads((small / "synth.json").read_text())
    assert config["command"] == "synth" and config["seed"] == 3
    assert config["params"]["train"] == 4 and config["params"]["test"] == 2
    assert config["splits"]["train"]["images"] == 4


def test_moved_folder_still_reads(small, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.copytree(small, moved)
    _, entries = read_manifest(moved / "train" / "manifest.jsonl")
    assert all(Path(e.image).is_relative_to(moved) and Path(e.image).exists() for e in entries)


def test_index_agrees_with_the_written_manifest(small):
    result = run("index", small / "train")
    assert result.exit_code == 0, result.output
    header, records = jsonl(result.stdout)
    assert header["layout"] == "generic"
    _, written = read_manifest(small / "train" / "manifest.jsonl")
    assert [(r["id"], r["count"], r["sha256"]) for r in records] == [(e.id, e.count, e.sha256) for e in written]


def test_zero_head_images_have_valid_points_files(tmp_path):
    out = tmp_path / "empty"
    result = run("synth", "-o", out, "--train", 1, "--test", 1, "--crowd", 0, "-q")
    assert result.exit_code == 0, result.output
    for split in ("train", "test"):
        _, entries = read_manifest(out / split / "manifest.jsonl")
        assert entries[0].count == 0
        assert read_points(entries[0].points).shape == (0, 2)


def test_help_shows_every_default():
    result = run("synth", "--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())  # help wraps lines
    for default in (
        "[default: 48]",
        "[default: 24]",
        "[default: 384]",
        "[default: 256]",
        "[default: 0]",
        "[default: 1.0]",
        "[default: 2;",
    ):
        assert default in text
    assert text.count("[default: off]") == 3  # --force, --quiet, --verbose


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_other_seed_differs(small, tmp_path):
    again = tmp_path / "again"
    assert run("synth", "-o", again, *SMALL, "--seed", 3, "--workers", 1, "-q").exit_code == 0
    assert files_of(again) == files_of(small)  # and independent of the worker count
    assert [e.sha256 for e in read_manifest(again / "test" / "manifest.jsonl")[1]] == [
        e.sha256 for e in read_manifest(small / "test" / "manifest.jsonl")[1]
    ]
    other = tmp_path / "other"
    assert run("synth", "-o", other, *SMALL, "--seed", 4, "-q").exit_code == 0
    a, b = files_of(other), files_of(small)
    assert a.keys() == b.keys()
    assert sum(a[k] != b[k] for k in a if k.endswith(".png")) == 6


def test_existing_output_is_refused_without_force(small, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("keep me")
    result = run("synth", "-o", out, *SMALL)
    assert result.exit_code == 1 and "already exists" in result.stderr
    assert (out / "keep.txt").read_text() == "keep me"
    assert run("synth", "-o", out, *SMALL, "--seed", 3, "--force", "-q").exit_code == 0
    assert not (out / "keep.txt").exists()
    assert files_of(out) == files_of(small)


@pytest.mark.parametrize(
    "args, says",
    [
        (("--width", 8), "outside 32..8192"),
        (("--train", 0, "--test", 0), "at least one image"),
        (("--seed", -1), "--seed"),
    ],
)
def test_bad_options_fail_cleanly_and_write_nothing(tmp_path, args, says):
    out = tmp_path / "bad"
    result = run("synth", "-o", out, *args)
    assert result.exit_code == 1 and says in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


# --------------------------------------------------------------------------- scene structure


def test_perspective_denser_and_smaller_toward_the_top(scenes):
    top = bottom = 0
    gaps_top, gaps_bottom = [], []
    smaller_at_top = compared = 0
    for scene in scenes:
        p, r = scene.points, scene.radii
        upper = p[:, 1] < 128
        top, bottom = top + upper.sum(), bottom + (~upper).sum()
        if len(p) >= 4:
            gap = cKDTree(p).query(p, k=2)[0][:, 1]
            gaps_top += list(gap[upper])
            gaps_bottom += list(gap[~upper])
        if upper.any() and (~upper).any():
            compared += 1
            smaller_at_top += r[upper].mean() < r[~upper].mean()
    assert top > 1.3 * bottom  # more heads per unit area in the top half
    assert np.mean(gaps_top) < 0.8 * np.mean(gaps_bottom)  # and closer together
    assert compared >= 6 and smaller_at_top == compared  # and smaller


def test_density_varies_across_the_width(scenes):
    crowded = [s.points for s in scenes if len(s.points) >= 10]
    assert len(crowded) >= 6
    uneven = 0
    for p in crowded:
        thirds = np.histogram(p[:, 0], bins=[0, 128, 256, 384])[0]
        uneven += thirds.max() >= 1.5 * thirds.min() + 3
    assert uneven >= 0.75 * len(crowded)


def test_counts_vary_from_empty_to_dense():
    config = SynthConfig()
    counts = np.array([len(render_scene(config, "train", i).points) for i in range(24)])
    assert counts.min() <= 5 and counts.max() >= 150
    # A counter must beat the mean-count predictor by a clear margin to look good.
    assert np.abs(counts - counts.mean()).mean() >= 40


def test_people_look_like_people_not_noise(scenes):
    """Heads are drawn where the points are: the image differs from its surroundings there."""
    scene = max(scenes, key=lambda s: len(s.points))
    image = scene.image.astype(np.float64)
    x, y = np.floor(scene.points).astype(int).T
    r = scene.radii
    big = r >= 4
    assert big.sum() >= 5
    # The hair cap (above the centre) is darker than the face (the centre) for most heads.
    cap = image[np.clip(y[big] - (0.75 * r[big]).astype(int), 0, 255), x[big]].mean(axis=1)
    face = image[y[big], x[big]].mean(axis=1)
    assert (cap < face).mean() >= 0.5
