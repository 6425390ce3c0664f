"""Reliability: the bad-input matrix, --skip-bad, no code from files, interruptions, numerical faults, load.

Every failure test checks the same promise (``fails_cleanly``): exit 1 with exactly one stderr
line ``crowdtk <command>: error: …`` naming the file and the problem, no traceback, no output
left behind (not even a temporary file), and with ``--force`` an existing output survives the
failure byte for byte.

Decisions recorded here (and in the module docstring of ``crowdtk/data.py``):

- points outside the image (negative, or at/after its width or height) are *dropped, never
  clipped*, by every point reader alike; ``index`` warns with the count per image, later stages
  drop the same points (gen-density's sums and eval's true counts equal the manifest's count);
  label-tool points outside their regions are dropped with a warning the same way;
- a NaN or infinite coordinate is an error naming the file;
- an image with zero heads is valid data everywhere;
- an image smaller than the output stride (8 px) on a side is a bad image (an error naming it
  and its size; ``--skip-bad`` leaves it out);
- a manifest with no images is an error for every stage that reads one.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
import torch
from conftest import HANG_GUARD_S, REPO, jsonl, run, run_in_own_cache, write_generic

from crowdtk.checkpoint import load_tensors, save_tensors
from crowdtk.errors import CrowdtkError
from crowdtk.files import file_digest
from crowdtk.formats import (
    MANIFEST,
    VECTORS,
    ManifestEntry,
    Provenance,
    load_density_map,
    load_npz,
    load_vectors,
    make_header,
    read_density_index,
    read_labels,
    read_manifest,
    save_npz,
    write_jsonl,
)
from crowdtk.predict import load_counter

FAST = ["--model", "lite", "--crop", "32", "--batch-size", "2", "--epochs", "1"]


# --------------------------------------------------------------------------- a small pool


@dataclass
class Pool:
    root: Path
    data: Path
    manifest: Path
    regions: Path
    labels: Path

    def image(self, name: str) -> Path:
        return self.data / "images" / f"{name}.jpg"

    def points(self, name: str) -> Path:
        return next(self.data.glob(f"points/{name}.*"))


def make_pool(root: Path) -> Pool:
    """Six 80×48 images (im0..im4 with heads, 'empty' with none); im2's points are a UCF-style .mat.

    Indexed, with random regions on 30% of the area and the oracle's labels for them."""
    rng = np.random.default_rng(0)
    scenes = {f"im{i}": (48, 80, np.c_[rng.uniform(0, 80, 6 + 4 * i), rng.uniform(0, 48, 6 + 4 * i)]) for i in range(5)}
    scenes["empty"] = (48, 80, np.zeros((0, 2)))
    data = write_generic(root / "data", scenes)
    (data / "points" / "im2.txt").unlink()
    scipy.io.savemat(data / "points" / "im2.mat", {"annPoints": scenes["im2"][2]})
    pool = Pool(root, data, root / "m.jsonl", root / "r.jsonl", root / "l.jsonl")
    for args in (
        ("index", data, "-o", pool.manifest),
        ("select", pool.manifest, "--budget", "0.3", "-o", pool.regions),
        ("import", pool.regions, "--oracle", pool.manifest, "-o", pool.labels),
    ):
        result = run(*args, "-q")
        assert result.exit_code == 0, result.output
    return pool


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A pool taken through gen-density and train (all six images trained on, the empty one included)."""
    root = tmp_path_factory.mktemp("world")
    pool = make_pool(root)
    dens = root / "dens"
    assert run("gen-density", pool.manifest, "-o", dens, "-q").exit_code == 0
    ckpt = root / "model.safetensors"
    result = run_in_own_cache(tmp_path_factory, "train", pool.labels, "-o", ckpt, "--val-frac", "0", *FAST, "-q")
    assert result.exit_code == 0, result.output
    return {"pool": pool, "dens": dens, "ckpt": ckpt, "root": root}


@pytest.fixture
def pool(tmp_path) -> Pool:
    return make_pool(tmp_path / "pool")


@pytest.fixture
def ckpt(world) -> Path:
    return world["ckpt"]


# --------------------------------------------------------------------------- the promise


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(folder.rglob("*"))
    }


def plant(out: Path) -> None:
    """An old output where the command will write: a file, or a folder with a file."""
    if out.suffix:
        out.write_text("old output\n")
    else:
        out.mkdir()
        (out / "old.txt").write_text("old output\n")


def fails_cleanly(command: str, args: list, out: Path, *names: str, force: bool = True) -> str:
    """Run twice: with no output there, then over a planted old output with --force.

    Both times: exit 1, one stderr line `crowdtk <command>: error: …` holding every `names`,
    nothing left in the output's folder (no output, no temporary file), the old output intact.
    Returns the error line."""
    folder = out.parent
    folder.mkdir(parents=True, exist_ok=True)
    line = ""
    for with_old in (False, True) if force else (False,):
        if with_old:
            plant(out)
        before = snapshot(folder)
        result = run(*args, *(["--force"] if with_old else []), "-q")
        assert result.exit_code == 1, (result.exit_code, result.output)
        line = result.stderr
        assert line.startswith(f"crowdtk {command}: error: ") and line.count("\n") == 1, line
        assert "Traceback" not in line and "unexpected" not in line, line
        for name in names:
            assert name in line, (name, line)
        assert snapshot(folder) == before, (
            f"{command} left output behind: {sorted(set(snapshot(folder)) ^ set(before))}"
        )
        if with_old:
            assert (out.read_text() if out.is_file() else (out / "old.txt").read_text()) == "old output\n"
            shutil.rmtree(out) if out.is_dir() else out.unlink()  # as it was before the call
    return line


def out_option(stage: str) -> str:
    return {"eval": "--csv", "count": "--overlay"}.get(stage, "-o")


def out_path(tmp_path: Path, stage: str) -> Path:
    name = {
        "gen-density": "dens",
        "export": "package",
        "count": "overlays",
        "eval": "per_image.csv",
        "vectors": "v.npz",
        "warmup": "w.safetensors",
        "train": "t.safetensors",
        "strip-cap": "s.safetensors",
        "synth": "synth",
    }.get(stage, "out.jsonl")
    return tmp_path / "out" / name


def stage_args(stage: str, pool: Pool, model: Path, out: Path, **inputs: Path) -> list:
    """The command line of `stage` on the pool with the checkpoint `model` (`inputs` replace the pool's
    manifest, regions, labels, the checkpoint (ckpt), or name the exclude and vectors files)."""
    manifest, regions = inputs.get("manifest", pool.manifest), inputs.get("regions", pool.regions)
    labels, ckpt = inputs.get("labels", pool.labels), inputs.get("ckpt", model)
    o = [out_option(stage), out]
    return {
        "index": ["index", pool.data, *o],
        "gen-density": ["gen-density", manifest, *o],
        "select": ["select", manifest, "--budget", "0.3", *o],
        "select --exclude": [
            "select",
            pool.manifest,
            "--budget",
            "0.3",
            "--exclude",
            inputs.get("exclude", regions),
            *o,
        ],
        "select --vectors": [
            "select",
            pool.manifest,
            "--strategy",
            "mdc",
            "--budget",
            "0.3",
            "--vectors",
            inputs.get("vectors"),
            *o,
        ],
        "export": ["export", regions, "--to", "crops", *o],
        "import": ["import", regions, "--oracle", manifest, *o],
        "import --merge": ["import", pool.regions, "--oracle", pool.manifest, "--merge", labels, *o],
        "warmup": ["warmup", labels, *FAST, *o],
        "train": ["train", labels, "--init", ckpt, *FAST, *o],
        "vectors": ["vectors", ckpt, manifest, *o],
        "vectors --exclude": ["vectors", ckpt, pool.manifest, "--exclude", inputs.get("exclude", regions), *o],
        "strip-cap": ["strip-cap", ckpt, *o],
        "eval": ["eval", ckpt, manifest, "--json", *o],
        "count": ["count", ckpt, pool.data / "images", *o],
        "synth": ["synth", "--train", "2", "--test", "1", "--width", "96", "--height", "64", *o],
    }[stage]


def command_of(stage: str) -> str:
    return stage.split()[0]


def stage_fails_cleanly(
    stage: str, pool: Pool, model: Path, tmp_path: Path, *names: str, force: bool = True, **inputs: Path
) -> str:
    """fails_cleanly of `stage`'s command line (stage_args, with `inputs`) writing to its out_path."""
    out = out_path(tmp_path, command_of(stage))
    return fails_cleanly(command_of(stage), stage_args(stage, pool, model, out, **inputs), out, *names, force=force)


# --------------------------------------------------------------------------- bad images


def corrupt_image(path: Path, kind: str) -> None:
    if kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(b"this is not an image\n" * 10)


@pytest.mark.parametrize("kind", ["truncated", "not-an-image"])
@pytest.mark.parametrize("stage", ["index", "eval", "count", "vectors", "warmup", "train", "export"])
def test_bad_image_stops_every_stage_that_reads_images(stage, kind, pool, ckpt, tmp_path):
    """A truncated or non-image file: each stage that decodes it names the file and the problem.
    (export compares the image's digest with the one indexed before it decodes, so it reports the change.)"""
    corrupt_image(pool.image("im3"), kind)
    problem = {"truncated": "truncated JPEG", "not-an-image": "not a readable image"}[kind]
    if stage == "export":
        problem = "changed since it was indexed (sha256 differs)"
    stage_fails_cleanly(stage, pool, ckpt, tmp_path, "im3.jpg", problem)


# --------------------------------------------------------------------------- bad point files


def corrupt_mat(path: Path) -> None:
    """The points' element type set to 0: scipy 1.17's reader ends the process with SIGSEGV on such a file."""
    n_values = scipy.io.loadmat(path)["annPoints"].size
    data = bytearray(path.read_bytes())
    real_part = data.rindex((9).to_bytes(4, "little") + (8 * n_values).to_bytes(4, "little"), 128)  # miDOUBLE tag
    data[real_part : real_part + 4] = (0).to_bytes(4, "little")
    path.write_bytes(bytes(data))


def corrupt_points(pool: Pool, kind: str) -> str:
    """Break one image's points; return the text the error must hold."""
    if kind == "nan":
        pool.points("im1").write_text("1 2\nnan 3\n")
        return "im1.txt: 1 point(s) are NaN"
    if kind == "inf":
        pool.points("im1").write_text("1 2\n3 -inf\n")
        return "im1.txt: 1 point(s) are NaN or infinite"
    if kind == "mat-without-key":
        scipy.io.savemat(pool.points("im2"), {"heads": np.ones((3, 2))})
        return "im2.mat: .mat file has neither 'image_info' (ShanghaiTech) nor 'annPoints'"
    if kind == "mat-crashing-scipy":
        corrupt_mat(pool.points("im2"))
        return "im2.mat: corrupt .mat file"
    pool.points("im4").write_text("this is not,a points file\n")
    return "im4.txt: unreadable points file"


@pytest.mark.parametrize("kind", ["nan", "inf", "mat-without-key", "mat-crashing-scipy", "garbage"])
@pytest.mark.parametrize("stage", ["index", "gen-density", "eval", "import"])
def test_bad_points_stop_every_stage_that_reads_points(stage, kind, pool, ckpt, tmp_path):
    """NaN/infinite coordinates, a .mat without 'image_info'/'annPoints', a .mat that crashes
    scipy's reader (refused before scipy sees it), and unparsable text: an error naming the file."""
    problem = corrupt_points(pool, kind)
    stage_fails_cleanly(stage, pool, ckpt, tmp_path, problem)


def test_points_outside_the_image_are_dropped_the_same_way_everywhere(pool, ckpt, tmp_path):
    """Negative points, points at x == width or y == height, and far-away points are dropped (not
    clipped) by index (with a warning), gen-density, eval and the oracle alike; a labeler's point
    outside its region is dropped on import with a warning."""
    inside = np.loadtxt(pool.points("im1"))
    outside = np.array([[-3.0, 5.0], [80.0, 10.0], [5.0, 48.0], [1e9, 1e9], [-0.01, -0.01]])
    pool.points("im1").write_text("".join(f"{x} {y}\n" for x, y in np.vstack([inside, outside])))
    manifest = tmp_path / "m2.jsonl"
    result = run("index", pool.data, "-o", manifest)
    assert result.exit_code == 0 and "dropped 5 point(s) outside their image in 1 image(s): im1 (5)" in result.stderr
    _, entries = read_manifest(manifest)
    count = {e.id: e.count for e in entries}["im1"]
    assert count == len(inside)
    assert run("gen-density", manifest, "-o", tmp_path / "dens", "-q").exit_code == 0
    _, maps = read_density_index(tmp_path / "dens" / "index.jsonl")
    assert abs({m.id: m.sum for m in maps}["im1"] - count) < 1e-3
    assert run("eval", ckpt, manifest, "--csv", tmp_path / "e.csv", "-q").exit_code == 0
    rows = {r.split(",")[0]: r.split(",") for r in (tmp_path / "e.csv").read_text().splitlines()[1:]}
    assert int(rows["im1"][1]) == count
    regions = tmp_path / "r_all.jsonl"
    assert run("select", manifest, "--budget", "1", "--strategy", "none-or-all", "-o", regions, "-q").exit_code == 0
    assert run("import", regions, "--oracle", manifest, "-o", tmp_path / "l.jsonl", "-q").exit_code == 0
    _, labels = read_labels(tmp_path / "l.jsonl")
    assert len({e.id: e for e in labels}["im1"].points) == count
    # a labeler's point outside its crop (negative crop coordinates) is dropped with a warning
    assert run("export", pool.regions, "--to", "crops", "-o", tmp_path / "pkg", "-q").exit_code == 0
    for crop in (tmp_path / "pkg" / "crops").glob("*.png"):
        crop.with_suffix(".txt").write_text("2 3\n-1 4\n")
    result = run("import", pool.regions, "--from", "crops", tmp_path / "pkg", "-o", tmp_path / "l2.jsonl")
    assert result.exit_code == 0, result.output
    n_crops = len(list((tmp_path / "pkg" / "crops").glob("*.png")))
    assert f"dropped {n_crops} point(s) outside their regions" in result.stderr
    _, labels = read_labels(tmp_path / "l2.jsonl")
    assert sum(len(e.points) for e in labels) == n_crops


# --------------------------------------------------------------------------- valid but unusual data


def test_an_image_with_zero_heads_goes_through_every_stage(world):
    """Zero heads is valid data: indexed with count 0, an all-zero density map, strips selected,
    labels with no points, trained on (the module's checkpoint trained on all six images), evaluated."""
    pool = world["pool"]
    _, entries = read_manifest(pool.manifest)
    assert {e.id: e.count for e in entries}["empty"] == 0
    _, maps = read_density_index(world["dens"] / "index.jsonl")
    empty = {m.id: m for m in maps}["empty"]
    _, density = load_density_map(empty.density)
    assert density.shape == (6, 10) and float(np.abs(density).sum()) == 0.0
    _, regions = jsonl(pool.regions.read_text())
    assert any(r["id"] == "empty" and r["regions"] for r in regions)
    _, labels = read_labels(pool.labels)
    assert {e.id: len(e.points) for e in labels}["empty"] == 0
    header, _ = load_tensors(world["ckpt"])
    assert header["labels_sha256"] == file_digest(pool.labels) and header["val_on"] == "train"
    result = run("eval", world["ckpt"], pool.manifest, "--json", "-q")
    assert result.exit_code == 0 and json.loads(result.stdout)["n_images"] == 6


@pytest.mark.parametrize("size", [(1, 40), (40, 1), (5, 5), (7, 64)])
def test_an_image_smaller_than_the_output_stride_is_a_bad_image(size, ckpt, tmp_path):
    """An image narrower or lower than 8 px (the output stride) holds no whole output cell: index
    and count refuse it naming the file and its size (--skip-bad leaves it out); a manifest that
    holds one (written by another tool) is refused by gen-density, select and eval."""
    width, height = size
    root = write_generic(
        tmp_path / "d",
        {"ok": (48, 80, np.array([[3.0, 4.0]])), "tiny": (height, width, np.zeros((0, 2)))},
        suffix=".json",
    )
    cv2.imwrite(str(root / "images" / "tiny.png"), np.zeros((height, width, 3), np.uint8))
    (root / "images" / "tiny.jpg").unlink()
    what = f"tiny.png: image is {width}x{height} px, smaller than the counters' output stride (8 px)"
    out = tmp_path / "out" / "m.jsonl"
    fails_cleanly("index", ["index", root, "-o", out], out, what)
    result = run("index", root, "--skip-bad", "-o", out, "--force")
    assert result.exit_code == 0 and what in result.stderr
    header, records = jsonl(out.read_text())
    assert [r["id"] for r in records] == ["ok"] and len(header["skipped"]) == 1 and what in header["skipped"][0]
    fails_cleanly(
        "count",
        ["count", ckpt, root / "images" / "tiny.png", "--overlay", tmp_path / "out" / "ov"],
        tmp_path / "out" / "ov",
        what,
    )
    # a manifest from elsewhere holding the tiny image
    manifest = tmp_path / "other.jsonl"
    entries = [
        ManifestEntry(
            "tiny",
            str(root / "images" / "tiny.png"),
            str(root / "points" / "tiny.json"),
            width,
            height,
            0,
            file_digest(root / "images" / "tiny.png"),
        )
    ]
    write_jsonl(manifest, make_header(MANIFEST, Provenance("another tool")), (e.to_record() for e in entries))
    for args in (
        ["gen-density", manifest, "-o", tmp_path / "out" / "dens"],
        ["eval", ckpt, manifest, "--csv", tmp_path / "out" / "e.csv"],
    ):
        fails_cleanly(args[0], args, args[-1], "tiny.png", f"{width}x{height} px")
    for shape in ("strip", "block"):
        out = tmp_path / "out" / f"r-{shape}.jsonl"
        fails_cleanly(
            "select", ["select", manifest, "--shape", shape, "-o", out], out, "image 'tiny'", f"{width}x{height} px"
        )


# --------------------------------------------------------------------------- broken artifacts


def rewrite_jsonl(src: Path, dst: Path, defect: str) -> Path:
    lines = src.read_text().splitlines()
    if defect == "newer":
        header = json.loads(lines[0])
        header["format_version"] = 9
        lines[0] = json.dumps(header)
    elif defect == "not-json":
        lines[1] = lines[1][:-7]
    else:  # a record without its id
        record = json.loads(lines[1])
        del record["id"]
        lines[1] = json.dumps(record)
    dst.write_text("\n".join(lines) + "\n")
    return dst


def rewrite_npz(src: Path, dst: Path, loader_fmt: str) -> Path:
    header, arrays = load_npz(src, loader_fmt)
    header["format_version"] = 9
    save_npz(dst, header, arrays)
    return dst


def rewrite_checkpoint(src: Path, dst: Path, **changes) -> Path:
    header, tensors = load_tensors(src)
    header.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del header[key]
    save_tensors(dst, tensors, header)
    return dst


JSONL_CONSUMERS = {
    "manifest": ["gen-density", "select", "eval", "vectors", "import"],
    "regions": ["export", "import", "select --exclude", "vectors --exclude"],
    "labels": ["warmup", "train", "import --merge", "select --exclude", "vectors --exclude"],
}
JSONL_CASES = [(artifact, stage) for artifact, stages in JSONL_CONSUMERS.items() for stage in stages]


@pytest.mark.parametrize("defect", ["newer", "not-json", "no-id"])
@pytest.mark.parametrize("artifact,stage", JSONL_CASES, ids=[f"{a}-{s}" for a, s in JSONL_CASES])
def test_broken_jsonl_artifacts_are_refused_by_every_reader(artifact, stage, defect, pool, ckpt, tmp_path):
    """A manifest, regions or labels file of a newer format version, with a line that is not JSON,
    or with a record lacking its 'id': every stage that reads it names the file (and line) and the problem."""
    src = {"manifest": pool.manifest, "regions": pool.regions, "labels": pool.labels}[artifact]
    broken = rewrite_jsonl(src, tmp_path / f"broken-{artifact}.jsonl", defect)
    key = "exclude" if "--exclude" in stage else artifact
    problem = {
        "newer": f"'{artifact}' format version 9 is newer than this crowdtk reads (up to 1)",
        "not-json": f"broken-{artifact}.jsonl:2: line is not JSON",
        "no-id": f"broken-{artifact}.jsonl:2: record lacks the field 'id'",
    }[defect]
    stage_fails_cleanly(stage, pool, ckpt, tmp_path, f"broken-{artifact}.jsonl", problem, **{key: broken})


CHECKPOINT_CONSUMERS = ["eval", "count", "strip-cap", "vectors", "train"]


@pytest.mark.parametrize("stage", CHECKPOINT_CONSUMERS)
def test_a_checkpoint_of_a_newer_format_is_refused(stage, pool, ckpt, tmp_path):
    newer = rewrite_checkpoint(ckpt, tmp_path / "newer.safetensors", format_version=9)
    stage_fails_cleanly(
        stage, pool, ckpt, tmp_path, "newer.safetensors", "'checkpoint' format version 9 is newer", ckpt=newer
    )


def test_a_training_state_of_a_newer_format_is_refused_on_resume(pool, ckpt, tmp_path):
    out = tmp_path / "out" / "t.safetensors"
    rewrite_checkpoint(ckpt, tmp_path / "out" / "t.state.safetensors", format_version=9)
    result = run("train", pool.labels, *FAST, "-o", out, "--resume", "-q")
    assert result.exit_code == 1 and "t.state.safetensors: 'checkpoint' format version 9 is newer" in result.stderr
    assert not out.exists()


def test_vectors_and_density_artifacts_of_a_newer_format_are_refused(world, pool, ckpt, tmp_path):
    """select --vectors, and the density index and maps (read by library users and other tools)."""
    vectors = tmp_path / "v.npz"
    assert run("vectors", ckpt, pool.manifest, "-o", vectors, "-q").exit_code == 0
    newer = rewrite_npz(vectors, tmp_path / "newer.npz", VECTORS)
    out = tmp_path / "out" / "r.jsonl"
    fails_cleanly(
        "select",
        stage_args("select --vectors", pool, ckpt, out, vectors=newer),
        out,
        "newer.npz",
        "'vectors' format version 9 is newer",
    )
    index = rewrite_jsonl(world["dens"] / "index.jsonl", tmp_path / "index.jsonl", "newer")
    with pytest.raises(CrowdtkError, match=r"index.jsonl: 'density-index' format version 9 is newer"):
        read_density_index(index)
    _, maps = read_density_index(world["dens"] / "index.jsonl")
    newer_map = rewrite_npz(Path(maps[0].density), tmp_path / "map.npz", "density-map")
    with pytest.raises(CrowdtkError, match=r"map.npz: 'density-map' format version 9 is newer"):
        load_density_map(newer_map)


# --------------------------------------------------------------------------- inputs of another pool or model


def test_regions_naming_images_that_are_not_there(pool, ckpt, tmp_path):
    """export: a regions file whose image file is gone; vectors --exclude: ids absent from the manifest,
    or the same ids with other image bytes (another pool)."""
    lines = pool.regions.read_text().splitlines()
    record = json.loads(lines[1])
    record["image"] = str(tmp_path / "gone.jpg")
    gone = tmp_path / "gone.jsonl"
    gone.write_text("\n".join([lines[0], json.dumps(record), *lines[2:]]) + "\n")
    stage_fails_cleanly("export", pool, ckpt, tmp_path, "gone.jpg: image not found", regions=gone)

    record = json.loads(lines[1])
    record["id"] = "ghost"
    ghost = tmp_path / "ghost.jsonl"
    ghost.write_text("\n".join([lines[0], json.dumps(record)]) + "\n")
    stage_fails_cleanly(
        "vectors --exclude", pool, ckpt, tmp_path, "ghost.jsonl: names 1 image(s) absent from", "'ghost'", exclude=ghost
    )

    other = make_pool(tmp_path / "other")  # same ids, other image bytes
    cv2.imwrite(str(other.image("im0")), np.full((48, 80, 3), 7, np.uint8))
    assert run("index", other.data, "-o", other.manifest, "--force", "-q").exit_code == 0
    assert run("select", other.manifest, "--budget", "0.3", "-o", other.regions, "--force", "-q").exit_code == 0
    differs = "r.jsonl: image 'im0' differs from the one in"
    stage_fails_cleanly("vectors --exclude", pool, ckpt, tmp_path, differs, "(sha256)", exclude=other.regions)


def test_train_init_checkpoint_of_another_model(pool, ckpt, tmp_path):
    """--init must be a checkpoint of --model when --model is given; a header naming no model is refused."""
    csrnet = rewrite_checkpoint(ckpt, tmp_path / "csrnet.safetensors", model={"name": "csrnet", "config": {}})
    out = tmp_path / "out" / "t.safetensors"
    fails_cleanly(
        "train",
        ["train", pool.labels, "--init", csrnet, *FAST, "-o", out],
        out,
        "csrnet.safetensors: is a checkpoint of model 'csrnet', not of --model lite",
    )
    nameless = rewrite_checkpoint(ckpt, tmp_path / "nameless.safetensors", model=None)
    fails_cleanly(
        "train",
        ["train", pool.labels, "--init", nameless, *FAST, "-o", out],
        out,
        "nameless.safetensors: checkpoint header names no model",
    )


@pytest.mark.parametrize("stage", ["train", "eval"])
def test_weights_that_do_not_fit_the_model_their_header_names(stage, pool, ckpt, tmp_path):
    """A checkpoint whose header names csrnet but holds lite weights (a corrupt or hand-edited file):
    the model is built from the header, and the weights must be refused with a message."""
    csrnet = rewrite_checkpoint(ckpt, tmp_path / "csrnet.safetensors", model={"name": "csrnet", "config": {}})
    out = out_path(tmp_path, stage)
    args = (
        ["train", pool.labels, "--init", csrnet, "--crop", "32", "--epochs", "1", "-o", out]
        if stage == "train"
        else stage_args("eval", pool, ckpt, out, ckpt=csrnet)
    )
    fails_cleanly(stage, args, out, "csrnet.safetensors: weights do not fit the model")


@pytest.mark.parametrize("stage", ["eval", "count", "strip-cap", "vectors", "train"])
def test_a_training_state_where_a_checkpoint_belongs_names_its_checkpoint(stage, pool, ckpt, tmp_path):
    """The .state.safetensors train writes beside its checkpoint (for --resume) is a checkpoint-format file holding
    the weights under other names: refused as a training state, naming the checkpoint it belongs to."""
    state = ckpt.with_name("model.state.safetensors")
    assert state.is_file()
    line = stage_fails_cleanly(
        stage,
        pool,
        ckpt,
        tmp_path,
        f"{state}: is a training state (what train and warmup --resume continue from), not a checkpoint",
        f"pass {ckpt}, the checkpoint it belongs to",
        ckpt=state,
    )
    assert "weights do not fit" not in line
    # Renamed, it is still a state; its checkpoint is then not named.
    renamed = tmp_path / "renamed.safetensors"
    shutil.copy(state, renamed)
    belongs = "pass the checkpoint its training run wrote beside it"
    stage_fails_cleanly(
        stage, pool, ckpt, tmp_path, f"{renamed}: is a training state", belongs, force=False, ckpt=renamed
    )


@pytest.mark.parametrize("budget", ["nan", "inf", "-inf"])
def test_budget_that_is_not_a_fraction(budget, pool, tmp_path):
    """(0, 1.5 and -0.1 are in test_select.py.)"""
    out = tmp_path / "out" / "r.jsonl"
    fails_cleanly(
        "select",
        ["select", pool.manifest, "--budget", budget, "-o", out],
        out,
        f"--budget {budget}: budget outside (0, 1]",
    )


# --------------------------------------------------------------------------- empty data sets


def test_index_of_an_empty_folder(tmp_path):
    out = tmp_path / "out" / "m.jsonl"
    (tmp_path / "nothing").mkdir()
    fails_cleanly("index", ["index", tmp_path / "nothing", "-o", out], out, "nothing: no known data set layout")
    (tmp_path / "set" / "images").mkdir(parents=True)
    (tmp_path / "set" / "points").mkdir()
    out = tmp_path / "out" / "m2.jsonl"
    fails_cleanly("index", ["index", tmp_path / "set", "-o", out], out, "set: no images found")


@pytest.mark.parametrize("stage", ["gen-density", "select", "eval", "vectors", "import"])
@pytest.mark.parametrize("kind", ["header-only", "zero-bytes"])
def test_an_empty_manifest_is_refused(stage, kind, pool, ckpt, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text(pool.manifest.read_text().splitlines()[0] + "\n" if kind == "header-only" else "")
    problem = (
        "empty.jsonl: empty file"
        if kind == "zero-bytes"
        else ("names 6 image(s) absent from" if stage == "import" else "empty.jsonl: no images")
    )
    stage_fails_cleanly(stage, pool, ckpt, tmp_path, problem, "empty.jsonl", manifest=empty)


# --------------------------------------------------------------------------- existing outputs

WRITERS = [
    "index",
    "gen-density",
    "select",
    "export",
    "import",
    "warmup",
    "train",
    "vectors",
    "strip-cap",
    "eval",
    "count",
    "synth",
]


@pytest.mark.parametrize("stage", WRITERS)
def test_an_existing_output_is_refused_without_force(stage, pool, ckpt, tmp_path):
    """Every command that writes refuses an existing output (eval's --csv, count's --overlay folder
    included) and leaves it as it was; --force replaces it (train and warmup: see test_train.py)."""
    out = out_path(tmp_path, stage)
    out.parent.mkdir()
    plant(out)
    fails_cleanly(stage, stage_args(stage, pool, ckpt, out), out, f"{out}: output already exists", force=False)
    if stage in ("warmup", "train"):
        out.unlink()
        (tmp_path / "out" / f"{out.stem}.state.safetensors").write_text("old state\n")
        fails_cleanly(
            stage, stage_args(stage, pool, ckpt, out), out, "state.safetensors: a training state exists", force=False
        )
        return
    result = run(*stage_args(stage, pool, ckpt, out), "--force", "-q")
    assert result.exit_code == 0, result.output
    assert not (out / "old.txt").exists() if out.is_dir() else out.read_bytes() != b"old output\n"


# --------------------------------------------------------------------------- --skip-bad


@pytest.mark.parametrize("stage", ["index", "gen-density", "vectors", "eval", "count"])
def test_skip_bad_leaves_bad_images_out_and_lists_them(stage, pool, ckpt, tmp_path):
    """Without --skip-bad the first bad image stops the command; with it the command completes,
    warns about each bad image on stderr, lists them in its output's header ("skipped"), and
    processes the others."""
    if stage == "gen-density":
        corrupt_points(pool, "nan")  # im1
        bad = {"im1": "im1.txt: 1 point(s) are NaN"}
    else:
        corrupt_image(pool.image("im3"), "truncated")
        bad = {"im3": "im3.jpg: truncated JPEG"}
        if stage == "eval":  # and a bad points file, met first (im2 comes before im3)
            corrupt_points(pool, "mat-without-key")
            bad = {"im2": "im2.mat: .mat file has neither", **bad}
    out = out_path(tmp_path, stage)
    args = stage_args(stage, pool, ckpt, out)
    fails_cleanly(command_of(stage), args, out, next(iter(bad.values())))
    result = run(*args, "--skip-bad", "--force")
    assert result.exit_code == 0, result.output
    for problem in bad.values():
        assert f"crowdtk {stage}: warning: skipped " in result.stderr and problem in result.stderr
    good = [i for i in ("im0", "im1", "im2", "im3", "im4", "empty") if i not in bad]
    if stage == "index":
        header, records = jsonl(out.read_text())
        skipped, done = header["skipped"], [r["id"] for r in records]
    elif stage == "gen-density":
        header, maps = read_density_index(out / "index.jsonl")
        skipped, done = header["skipped"], [m.id for m in maps]
        assert sorted(p.stem for p in (out / "maps").iterdir()) == sorted(good)
    elif stage == "vectors":
        header, data = load_vectors(out)
        skipped, done = header["skipped"], data.ids.tolist()
        assert len(data.vectors) == 10 * len(good) and np.isfinite(data.vectors).all()
    elif stage == "eval":
        summary = json.loads(result.stdout)
        skipped, done = summary["skipped"], [r.split(",")[0] for r in out.read_text().splitlines()[1:]]
        assert summary["n_images"] == len(good)
    else:
        skipped = [line for line in result.stderr.splitlines() if "skipped" in line][:-1]
        done = [Path(json.loads(line)["image"]).stem for line in result.stdout.splitlines()]
        assert sorted(p.stem for p in out.glob("*.png")) == sorted(good)
    assert sorted(done) == sorted(good)
    assert len(skipped) == len(bad) and all(any(problem in s for s in skipped) for problem in bad.values())


# --------------------------------------------------------------------------- no code from files


class Payload:
    """Unpickling this runs `touch MARKER`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def evil(tmp_path) -> dict[str, Path]:
    marker = tmp_path / "code-ran"
    pt = tmp_path / "evil.pt"
    torch.save({"model": Payload(marker)}, pt)
    pth = tmp_path / "evil.pth"
    torch.save({"features.0.weight": Payload(marker)}, pth)
    npz = tmp_path / "evil.npz"
    np.savez(
        npz,
        __meta__=np.array(json.dumps(make_header(VECTORS, Provenance("x")))),
        ids=np.array([Payload(marker)], dtype=object),
    )
    return {"marker": marker, "pt": pt, "pth": pth, "npz": npz}


@pytest.mark.parametrize("stage", ["train", "eval", "count", "strip-cap", "vectors", "backbone-weights"])
def test_pickle_weights_are_refused_and_never_run(stage, evil, pool, ckpt, tmp_path):
    """A torch.save file whose unpickling would run a command, wherever crowdtk takes weights:
    refused with a message, and the command never ran. (--backbone-weights reads torchvision
    .pth state dicts with torch.load(weights_only=True), which refuses the payload.)"""
    out = out_path(tmp_path, "warmup" if stage == "backbone-weights" else stage)
    if stage == "backbone-weights":
        args = ["warmup", pool.labels, *FAST, "--backbone-weights", evil["pth"], "-o", out]
        fails_cleanly("warmup", args, out, "evil.pth: cannot read weights", "UnpicklingError")
    else:
        fails_cleanly(
            stage,
            stage_args(stage, pool, ckpt, out, ckpt=evil["pt"]),
            out,
            "evil.pt: is a pickle-based PyTorch file, which could run code when loaded",
        )
    assert not evil["marker"].exists()


def test_pickle_npz_is_refused_and_never_run(evil, pool, ckpt, tmp_path):
    """An .npz holding a pickled object array: select --vectors, and the vectors and density-map loaders."""
    out = tmp_path / "out" / "r.jsonl"
    fails_cleanly(
        "select",
        stage_args("select --vectors", pool, ckpt, out, vectors=evil["npz"]),
        out,
        "evil.npz: holds data that needs unpickling",
    )
    for load in (load_vectors, load_density_map):
        with pytest.raises(CrowdtkError, match="evil.npz: holds data that needs unpickling"):
            load(evil["npz"])
    assert not evil["marker"].exists()


# --------------------------------------------------------------------------- interruptions

WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from crowdtk.formats import MANIFEST, Provenance, make_header, save_npz, write_jsonl
    kind, path = sys.argv[1], sys.argv[2]
    if kind == "jsonl":
        def records():
            for i in range(10 ** 9):
                if i % 1000 == 0:
                    time.sleep(0.001)
                yield {"id": f"img{i}", "padding": "x" * 200}
        write_jsonl(path, make_header(MANIFEST, Provenance("writer")), records())
    else:
        block = np.ones(2 ** 20)  # 8 MB, written under 40 names: the write takes a while
        save_npz(path, make_header(MANIFEST, Provenance("writer")), {f"a{i}": block for i in range(40)})
""")


@pytest.mark.parametrize("kind", ["jsonl", "npz"])
def test_sigkill_during_a_write_never_leaves_a_partial_file(kind, tmp_path):
    """A process killed (SIGKILL) while writing a large artifact through crowdtk.formats: the final
    path holds the complete old file; the write goes to a temporary file beside it."""
    target = tmp_path / ("big.jsonl" if kind == "jsonl" else "big.npz")
    if kind == "jsonl":
        write_jsonl(target, make_header(MANIFEST, Provenance("old")), [{"id": "old"}])
    else:
        save_npz(target, make_header(MANIFEST, Provenance("old")), {"a": np.arange(3)})
    old = target.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", WRITER, kind, str(target)], cwd=REPO)
    deadline = time.time() + HANG_GUARD_S
    grown = False
    while time.time() < deadline and proc.poll() is None and not grown:
        temps = [p for p in tmp_path.iterdir() if p.name.startswith(f".{target.name}.")]
        grown = any(p.stat().st_size > 1 << 20 for p in temps if p.exists())
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert grown, "the writer never got going"
    assert target.read_bytes() == old
    # and the next write still works
    if kind == "jsonl":
        write_jsonl(target, make_header(MANIFEST, Provenance("new")), [{"id": "new"}])
    else:
        save_npz(target, make_header(MANIFEST, Provenance("new")), {"a": np.arange(4)})
    assert target.read_bytes() != old


# --------------------------------------------------------------------------- numerical faults


def test_training_that_diverges_at_once_stops_and_writes_nothing(pool, tmp_path):
    """--density-scale 1e38 makes the squared error overflow float32 at the first step."""
    out = tmp_path / "out" / "t.safetensors"
    line = fails_cleanly(
        "train",
        ["train", pool.labels, *FAST, "--density-scale", "1e38", "-o", out],
        out,
        "training loss became",
        "at epoch 1 (step 1) on image(s) ",
        "this run wrote no checkpoint",
    )
    assert any(name in line for name in ("im0", "im1", "im2", "im3", "im4", "empty"))
    assert not (tmp_path / "out" / "t.state.safetensors").exists()


def test_training_that_diverges_later_keeps_the_last_good_checkpoint(pool, tmp_path, monkeypatch):
    """From epoch 2 on, the density targets are scaled to overflow (as an absurd label or setting
    would): train stops with exit 1 naming the epoch and the images, and the checkpoint of epoch 1
    is kept, loads, and predicts finite counts."""
    import crowdtk.train.loop as loop
    import crowdtk.train.steps as steps

    finished = {"epochs": 0}
    real_validate, real_crop = loop.validate, steps.random_crop

    def validate(*args, **kwargs):
        finished["epochs"] += 1
        return real_validate(*args, **kwargs)

    def random_crop(*args, **kwargs):
        image, target, mask = real_crop(*args, **kwargs)
        return image, target * np.float32(3e38) if finished["epochs"] >= 1 else target, mask

    monkeypatch.setattr(loop, "validate", validate)
    monkeypatch.setattr(steps, "random_crop", random_crop)
    out = tmp_path / "t.safetensors"
    result = run("train", pool.labels, *FAST[:-1], "3", "-o", out, "-q")
    assert result.exit_code == 1
    assert "training loss became" in result.stderr and "at epoch 2 (step 1) on image(s) " in result.stderr
    assert "the checkpoint of the best finished epoch is kept in" in result.stderr
    header, _ = load_tensors(out)
    assert header["epochs_done"] == 1
    state, _ = load_tensors(tmp_path / "t.state.safetensors")
    assert state["epochs_done"] == 1
    monkeypatch.undo()
    result = run("eval", out, pool.manifest, "--json", "-q")
    assert result.exit_code == 0 and math.isfinite(json.loads(result.stdout)["mae"])


def poisoned(ckpt: Path, dst: Path, value: float) -> Path:
    header, tensors = load_tensors(ckpt)
    tensors["output.bias"] = torch.full_like(tensors["output.bias"], value)
    save_tensors(dst, tensors, header)
    return dst


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_predictions_that_are_not_finite_are_reported_not_averaged(value, pool, ckpt, tmp_path):
    """A checkpoint whose output bias is NaN/inf: eval fails naming it (no average of NaN), count
    prints "count": null with a warning, vectors stops naming the image."""
    bad = poisoned(ckpt, tmp_path / "bad.safetensors", value)
    message = "bad.safetensors: the prediction is not finite (NaN or inf) for all 6 image(s)"
    stage_fails_cleanly("eval", pool, ckpt, tmp_path, message, ckpt=bad)
    result = run("count", bad, pool.image("im0"))
    assert result.exit_code == 0 and json.loads(result.stdout)["count"] is None
    assert "warning: prediction for" in result.stderr and "im0.jpg is not finite" in result.stderr
    stage_fails_cleanly("vectors", pool, ckpt, tmp_path, "empty.jpg: the predicted density is not finite", ckpt=bad)


def test_eval_leaves_a_non_finite_image_out_of_the_averages(pool, ckpt, tmp_path):
    """Output weights that overflow to inf on one image's features but not on a black image's:
    eval warns, lists it under "non_finite", and averages over the others."""
    loaded = load_counter(ckpt)

    black = np.zeros((48, 80, 3), np.uint8)
    with torch.inference_mode():
        feats = {
            name: loaded.counter.forward_features(loaded.counter.to_input(img[None], torch.device("cpu")))[0]
            for name, img in (
                ("black", black),
                ("im0", cv2.cvtColor(cv2.imread(str(pool.image("im0"))), cv2.COLOR_BGR2RGB)),
            )
        }
    quiet = (feats["black"].amax(dim=(1, 2)) == 0) & (feats["im0"].amax(dim=(1, 2)) > 1)
    if not quiet.any():
        pytest.skip("no feature channel is silent on a black image and active on im0 for this checkpoint")
    channel = int(torch.nonzero(quiet)[0])
    header, tensors = load_tensors(ckpt)
    weight = torch.zeros_like(tensors["output.weight"])
    weight[0, channel] = 3e38
    tensors.update({"output.weight": weight, "output.bias": torch.zeros_like(tensors["output.bias"])})
    bad = tmp_path / "half.safetensors"
    save_tensors(bad, tensors, header)
    cv2.imwrite(str(pool.image("empty")), black)
    manifest = tmp_path / "m.jsonl"
    assert run("index", pool.data, "-o", manifest, "-q").exit_code == 0
    result = run("eval", bad, manifest, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert "empty" not in summary["non_finite"] and "im0" in summary["non_finite"]
    assert summary["n_images"] == 6 - len(summary["non_finite"]) and math.isfinite(summary["mae"])
    assert "prediction for im0 is not finite (NaN or inf); left out of the averages" in result.stderr


# --------------------------------------------------------------------------- load


def _bench_load():
    return importlib.import_module("benchmarks.load")


def test_eval_and_count_memory_does_not_grow_with_the_number_of_images(tmp_path):
    """benchmarks/load.py at a small scale: 30 vs 300 images, peak RSS ratio < 1.2 and growth < 30 MB."""
    bench = _bench_load()
    rows = bench.measure([30, 300], tmp_path)
    by = {(name, n): peak for name, n, peak, _, _ in rows}
    for name in ("eval", "count"):
        small, large = by[(name, 30)], by[(name, 300)]
        assert large / small < 1.2 and large - small < 30, (name, small, large)
