"""`crowdtk count`: one JSON line per image or video frame, overlays, and tiles that add up to the whole image."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import assert_clean_failure, constant_counter, run

from crowdtk.data import read_image
from crowdtk.predict import Predictor, load_counter


def test_count_images_video_and_overlays(strip_pool, warm_ckpt, tmp_path):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (80, 48))
    for i in range(3):
        writer.write(np.full((48, 80, 3), 40 * i, np.uint8))
    writer.release()
    images = strip_pool["root"] / "data" / "images"
    result = run("count", warm_ckpt, images, video, "--overlay", tmp_path / "ov", "-q")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 6 + 3
    assert all(isinstance(line["count"], float) for line in lines)
    assert [line["frame"] for line in lines if "video" in line] == [0, 1, 2]
    assert len(list((tmp_path / "ov").glob("*.png"))) == 9
    # each image's count is the sum of the counter's density map for it
    predictor = Predictor(load_counter(warm_ckpt), device="cpu", fast=False)
    for line in (entry for entry in lines if "video" not in entry):
        assert line["count"] == pytest.approx(
            float(predictor.density(read_image(line["image"]))[0].sum()), rel=1e-3, abs=1e-3
        )


def test_tiles_add_up_to_the_whole_image(warm_ckpt):
    loaded = load_counter(warm_ckpt)
    image = np.random.default_rng(1).integers(0, 255, (200, 264, 3), dtype=np.uint8)
    whole, _, _ = Predictor(loaded, device="cpu", max_side=4096).density(image)
    tiled, _, _ = Predictor(loaded, device="cpu", max_side=192).density(image)
    assert whole.shape == tiled.shape == (25, 33)
    # With 64 px of context the receptive field is mostly covered: counts agree closely.
    assert abs(whole.sum() - tiled.sum()) <= 0.05 * abs(whole.sum()) + 0.05


def test_a_video_without_frames_is_said_not_silently_skipped(warm_ckpt, tmp_path):
    """A writer closed before its first frame: an AVI that opens with no frame is a warning (the command's
    output would otherwise be empty without a word); an MP4 that OpenCV cannot open at all is an error that
    says why, though FFmpeg said nothing."""
    avi = tmp_path / "empty.avi"
    cv2.VideoWriter(str(avi), cv2.VideoWriter_fourcc(*"MJPG"), 5, (80, 48)).release()
    result = run("count", warm_ckpt, avi)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert result.stderr == f"crowdtk count: warning: {avi}: the video has no frames; nothing was counted for it\n"

    mp4 = tmp_path / "empty.mp4"
    writer = cv2.VideoWriter(str(mp4), cv2.VideoWriter_fourcc(*"mp4v"), 5, (80, 48))
    writer.release()
    result = run("count", warm_ckpt, mp4)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"crowdtk count: error: {mp4}: cannot open video ("), result.stderr
    assert result.stderr.count("\n") == 1 and "()" not in result.stderr and "re-encode it" in result.stderr, (
        result.stderr
    )

    nothing = tmp_path / "nothing.mp4"
    nothing.write_bytes(b"")
    result = run("count", warm_ckpt, nothing, "--skip-bad")
    assert result.exit_code == 0 and f"{nothing}: cannot open video (" in result.stderr, result.output


def test_nwpu_submission_lines_in_input_order(strip_pool, warm_ckpt, tmp_path):
    images = strip_pool["root"] / "data" / "images"
    counts = [json.loads(line) for line in run("count", warm_ckpt, images, "-q").stdout.splitlines()]
    result = run("count", warm_ckpt, images, "--format", "nwpu", "-q")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split(" ")[0] for line in lines] == [f"im{i}" for i in range(6)]  # the file stems, in name order
    for line, record in zip(lines, counts):
        stem, value = line.split(" ")
        assert len(value.split(".")[1]) == 4 and float(value) == pytest.approx(record["count"], abs=1e-3)
    # a file given twice under one stem would name two lines alike; video frames have no NWPU id
    again = tmp_path / "again"
    again.mkdir()
    first = next(images.glob("im0.*"))
    (again / first.name).write_bytes(first.read_bytes())
    result = run("count", warm_ckpt, images, again, "--format", "nwpu")
    assert_clean_failure(result, "same file stem 'im0'")
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (80, 48))
    writer.write(np.zeros((48, 80, 3), np.uint8))
    writer.release()
    assert_clean_failure(run("count", warm_ckpt, video, "--format", "nwpu"), "holds images only", code=2)
    assert_clean_failure(run("count", warm_ckpt, images, "--format", "nwpu", "--points"), "--points", code=2)


def test_head_points_in_the_json_lines_and_as_text_files(strip_pool, warm_ckpt, tmp_path):
    images = strip_pool["root"] / "data" / "images"
    # A counter predicting 0.25 heads per output cell: 15 heads on each 80x48 image.
    constant = constant_counter(warm_ckpt, tmp_path / "constant.safetensors", 0.25)
    out = tmp_path / "points"
    result = run("count", constant, images, "--points", "--points-dir", out, "-q")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(p.name for p in out.iterdir()) == [f"im{i}.txt" for i in range(6)]
    for record in records:
        points = np.array(record["points"])
        assert points.shape == (round(record["count"]), 2) == (15, 2)
        assert (points >= 0).all() and (points[:, 0] < 80).all() and (points[:, 1] < 48).all()
        text = (out / f"{Path(record['image']).stem}.txt").read_text()
        assert text.endswith("\n") and len(text.splitlines()) == 15
        np.testing.assert_allclose(np.loadtxt(out / f"{Path(record['image']).stem}.txt"), points, atol=0.006)
    # the folder is an output like the others: refused when it exists, replaced with --force
    assert_clean_failure(run("count", constant, images, "--points-dir", out), "output already exists")
    (out / "stale.txt").write_text("1 2\n")
    result = run("count", constant, images, "--points-dir", out, "--force", "-q")
    assert result.exit_code == 0, result.output
    assert "points" not in json.loads(result.stdout.splitlines()[0])  # --points-dir alone leaves the lines as they are
    assert not (out / "stale.txt").exists() and len(list(out.iterdir())) == 6
