"""File contracts: artifact headers and versions, atomic writes and permissions, the point and image readers."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
from conftest import run, write_generic

from crowdtk import __version__
from crowdtk.data import read_image, read_points
from crowdtk.errors import CrowdtkError
from crowdtk.files import atomic_path
from crowdtk.formats import MANIFEST, Provenance, make_header, read_jsonl, write_jsonl

# --------------------------------------------------------------------------- artifacts


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


# --------------------------------------------------------------------------- point files and images


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
