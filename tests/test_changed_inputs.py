"""Inputs changed after indexing: every stage that reads an image or a points file checks it against what
`index` recorded (its sha256, and the size and modification time of the image file) and refuses a changed
one with one message, `FILE: changed since it was indexed (sha256 differs) (re-run crowdtk index, then the
later steps)`. An unchanged file passes, also when it was copied (new modification times) or when the
manifest is older than the recorded size and time."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import assert_clean_failure, run, small_checkpoint

CHANGED = "changed since it was indexed (sha256 differs) (re-run crowdtk index, then the later steps)"


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    """`crowdtk synth` of 12 + 4 scenes of 256x192 (each split indexed into its manifest.jsonl, paths relative to it),
    and a small counter trained with a frozen encoder (so that eval can use a feature cache)."""
    root = tmp_path_factory.mktemp("changed")
    result = run("synth", "-o", root / "data", "--train", 12, "--test", 4, "--width", 256, "--height", 192, "-q")
    assert result.exit_code == 0, result.output
    small_checkpoint(root / "frozen.safetensors", scale=0.5, freeze="encoder")
    return root


@pytest.fixture
def world(original: Path, tmp_path: Path) -> dict[str, Path]:
    """This test's own copy of the data set (modification times kept) with regions and the oracle's labels for them."""
    data = tmp_path / "data"
    shutil.copytree(original / "data", data)
    w = {
        "manifest": data / "train" / "manifest.jsonl",
        "ckpt": original / "frozen.safetensors",
        "tmp": tmp_path,
        "regions": tmp_path / "r.jsonl",
        "labels": tmp_path / "l.jsonl",
    }
    for args in (
        ("select", w["manifest"], "--budget", "0.3", "--seed", "1", "-o", w["regions"]),
        ("import", w["regions"], "--oracle", w["manifest"], "-o", w["labels"]),
    ):
        result = run(*args, "-q")
        assert result.exit_code == 0, result.output
    return w


def selected(w: dict[str, Path]) -> tuple[str, Path, Path]:
    """An image with heads that the regions file selected: its id, image file and points file."""
    chosen = {json.loads(line)["id"] for line in w["regions"].read_text().splitlines()[1:]}
    records = [json.loads(line) for line in w["manifest"].read_text().splitlines()[1:]]
    record = next(r for r in records if r["id"] in chosen and r["count"] > 0)
    folder = w["manifest"].parent
    return record["id"], folder / record["image"], folder / record["points"]


def replace_pixels(image: Path) -> None:
    """Other pixels, the same size: the manifest's width, height and points still fit the file."""
    pixels = cv2.imread(str(image))
    assert pixels is not None, image
    cv2.imwrite(str(image), np.ascontiguousarray(pixels[::-1, ::-1]))


def move_a_point(points: Path) -> None:
    """One head moved by a pixel: the count stays what the manifest says."""
    lines = points.read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
    x, y = (float(v) for v in lines[row].split()[:2])
    lines[row] = f"{x - 1 if x >= 1 else x + 1} {y}"
    points.write_text("\n".join(lines) + "\n")


def stage_args(stage: str, w: dict[str, Path], image_id: str) -> tuple[list, Path]:
    """The command line of ``stage`` on the world, and its output."""
    out = (
        w["tmp"]
        / "out"
        / {
            "gen-density": "dens",
            "train": "t.safetensors",
            "vectors": "v.npz",
            "show": "s.png",
            "show regions": "s.png",
            "eval": "e.csv",
            "eval --feature-cache": "e.csv",
            "export": "pkg",
        }.get(stage, "l.jsonl")
    )
    ckpt, manifest = w["ckpt"], w["manifest"]
    return {
        "import --oracle": ["import", w["regions"], "--oracle", manifest, "-o", out],
        "gen-density": ["gen-density", manifest, "-o", out],
        "train": [
            "train",
            w["labels"],
            "--model",
            "lite",
            "--freeze",
            "encoder",
            "--scale",
            "0.5",
            "--epochs",
            "1",
            "-o",
            out,
        ],
        "vectors": ["vectors", ckpt, manifest, "-o", out],
        "eval": ["eval", ckpt, manifest, "--csv", out],
        "eval --feature-cache": ["eval", ckpt, manifest, "--csv", out, "--feature-cache", w["tmp"] / "features"],
        "show": ["show", ckpt, "--manifest", manifest, "--image", image_id, "-o", out],
        "show regions": ["show", w["regions"], "--image", image_id, "-o", out],
        "export": ["export", w["regions"], "--to", "crops", "-o", out],
    }[stage], out


@pytest.mark.parametrize(
    "stage",
    [
        "import --oracle",
        "gen-density",
        "train",
        "vectors",
        "eval",
        "eval --feature-cache",
        "show",
        "show regions",
        "export",
    ],
)
def test_an_image_replaced_after_indexing_is_refused_by_every_stage_that_reads_it(
    world: dict[str, Path], stage: str
) -> None:
    image_id, image, _ = selected(world)
    args, out = stage_args(stage, world, image_id)
    if stage == "eval --feature-cache":  # the cache holds the features of the indexed pixels
        warm = run(
            "eval", world["ckpt"], world["manifest"], "--json", "--feature-cache", world["tmp"] / "features", "-q"
        )
        assert warm.exit_code == 0, warm.output
        assert any((world["tmp"] / "features").rglob("*.safetensors"))
    replace_pixels(image)
    assert_clean_failure(run(*args, "-q"), f"{image}: {CHANGED}", out)


@pytest.mark.parametrize("stage", ["import --oracle", "gen-density", "eval", "show"])
def test_a_points_file_edited_after_indexing_is_refused(world: dict[str, Path], stage: str) -> None:
    image_id, _, points = selected(world)
    move_a_point(points)
    args, out = stage_args(stage, world, image_id)
    assert_clean_failure(run(*args, "-q"), f"{points}: {CHANGED}", out)


def test_an_image_of_the_same_size_in_bytes_is_told_by_its_digest(world: dict[str, Path]) -> None:
    """A change that keeps the file's size (one byte flipped in a PNG's metadata) is found by the sha256,
    also by the stages that do not read the image (the modification time differs)."""
    image_id, image, _ = selected(world)
    data = bytearray(image.read_bytes())
    data[20] ^= 0x01  # inside IHDR: width and height stay, the chunk's CRC no longer matches
    image.write_bytes(bytes(data))
    args, out = stage_args("gen-density", world, image_id)
    assert_clean_failure(run(*args, "-q"), f"{image}: {CHANGED}", out)


def test_unchanged_inputs_pass_when_copied_or_listed_by_an_older_manifest(world: dict[str, Path]) -> None:
    """New modification times (a copy without them) send the check to the sha256, which passes; a manifest
    without the recorded size, time and points digest (written before them) is still read and checked by sha256."""
    folder = world["manifest"].parent
    for f in folder.rglob("*"):
        os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    args, _ = stage_args("gen-density", world, "")
    assert run(*args, "-q").exit_code == 0
    lines = world["manifest"].read_text().splitlines()
    records = [json.loads(line) for line in lines[1:]]
    assert all({"size_bytes", "mtime_ns", "points_sha256"} <= set(r) for r in records)
    older = [{k: v for k, v in r.items() if k not in ("size_bytes", "mtime_ns", "points_sha256")} for r in records]
    world["manifest"].write_text("\n".join([lines[0], *(json.dumps(r) for r in older)]) + "\n")
    args, out = stage_args("gen-density", world, "")
    assert run(*args, "-q", "--force").exit_code == 0
    _, image, _ = selected(world)
    replace_pixels(image)
    assert_clean_failure(run(*args, "-q", "--force"), f"{image}: {CHANGED}")
