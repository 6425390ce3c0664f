"""Anything among the inputs that is not a regular file (a FIFO named like an image, a folder, a broken link)
is refused by name before it is opened, or left out and listed with --skip-bad: opening a FIFO waits for a
writer forever, so such a file once made `count --skip-bad` hang, SIGTERM included.

Each command runs as a subprocess with a generous timeout, so that a hang fails the test instead of
blocking the suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import small_checkpoint

HANG = 120  # seconds: far more than any of these commands takes


def crowdtk(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crowdtk", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=HANG,
        stdin=subprocess.DEVNULL,
    )


def data_set(root: Path, fifo: str = "images/x.jpg") -> Path:
    """Two small images with points (generic layout), and a FIFO at ``fifo``."""
    (root / "images").mkdir(parents=True)
    (root / "points").mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        cv2.imwrite(str(root / "images" / f"{name}.jpg"), rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
        (root / "points" / f"{name}.txt").write_text("3 4\n10 12\n")
    if fifo.startswith("images/"):
        (root / "points" / f"{Path(fifo).stem}.txt").write_text("1 1\n")
    (root / fifo).unlink(missing_ok=True)
    os.mkfifo(root / fifo)
    return root


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_count_skips_a_fifo_among_the_images_or_refuses_it(tmp_path: Path) -> None:
    data = data_set(tmp_path / "data")
    ckpt = small_checkpoint(tmp_path / "m.safetensors")
    fifo = data / "images" / "x.jpg"
    done = crowdtk("count", ckpt, data / "images", "--skip-bad")
    assert done.returncode == 0, done.stderr
    assert sorted(Path(json.loads(line)["image"]).name for line in done.stdout.splitlines()) == ["a.jpg", "b.jpg"]
    assert "skipped" in done.stderr and f"{fifo}: is a FIFO (named pipe), not a regular file" in done.stderr, (
        done.stderr
    )
    done = crowdtk("count", ckpt, data / "images")
    assert done.returncode == 1, done.stderr
    assert (
        done.stderr.startswith("crowdtk count: error: ")
        and f"{fifo}: is a FIFO (named pipe), not a regular file" in done.stderr
    )
    done = crowdtk("count", ckpt, fifo)  # named on the command line
    assert done.returncode == 1 and f"{fifo}: is a FIFO" in done.stderr, done.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
@pytest.mark.parametrize("fifo", ["images/x.jpg", "points/a.txt"])
def test_index_skips_a_fifo_image_or_points_file_or_refuses_it(tmp_path: Path, fifo: str) -> None:
    data = data_set(tmp_path / "data", fifo)
    done = crowdtk("index", data, "-o", tmp_path / "m.jsonl")
    assert done.returncode == 1 and not (tmp_path / "m.jsonl").exists(), done.stderr
    assert (
        done.stderr.startswith("crowdtk index: error: ") and f"{data / fifo}: is a FIFO (named pipe)" in done.stderr
    ), done.stderr
    done = crowdtk("index", data, "-o", tmp_path / "m.jsonl", "--skip-bad")
    assert done.returncode == 0, done.stderr
    assert f"{data / fifo}: is a FIFO (named pipe)" in done.stderr
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 1 + (2 if fifo.startswith("images/") else 1)


def test_a_folder_or_a_broken_link_named_like_an_image_is_named(tmp_path: Path) -> None:
    from crowdtk.data import read_image, read_points
    from crowdtk.errors import CrowdtkError

    (tmp_path / "d.jpg").mkdir()
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    with pytest.raises(CrowdtkError, match="d.jpg: is a folder, not a regular file"):
        read_image(tmp_path / "d.jpg")
    with pytest.raises(CrowdtkError, match="gone.jpg: image not found"):
        read_image(tmp_path / "gone.jpg")
    (tmp_path / "p.txt").mkdir()
    with pytest.raises(CrowdtkError, match="p.txt: is a folder, not a regular file"):
        read_points(tmp_path / "p.txt")
