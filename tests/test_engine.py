"""The counter engine: train (with and without CAP), resume, strip-cap, eval, count, vectors, torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from crowdtk.checkpoint import load_tensors
from crowdtk.cli import app
from crowdtk.errors import CrowdtkError
from crowdtk.formats import LABELS, LabelsEntry, Provenance, Region, load_vectors, make_header, read_manifest, write_jsonl
from crowdtk.files import file_digest
from crowdtk.predict import Predictor, load_counter
from crowdtk.train import random_crop, prepare_sample, train
from crowdtk.train_config import TrainConfig

from conftest import write_generic

runner = CliRunner()
FAST = ["--model", "lite", "--crop", "32", "--batch-size", "2", "-q"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> dict[str, Path]:
    """Six small images; strips labeled in four, two fully labeled; a manifest and a labels file."""
    root = tmp_path_factory.mktemp("pool")
    rng = np.random.default_rng(0)
    scenes = {f"im{i}": (48, 80, np.c_[rng.uniform(0, 80, 6 + 4 * i), rng.uniform(0, 48, 6 + 4 * i)]) for i in range(6)}
    write_generic(root / "data", scenes)
    manifest = root / "m.jsonl"
    assert run("index", root / "data", "-o", manifest).exit_code == 0
    _, entries = read_manifest(manifest)
    labels = []
    for i, e in enumerate(entries):
        pts = scenes[e.id][2]
        regions = (Region(0, e.width, 0, e.height),) if i < 2 else (Region(16, 32, 0, e.height), Region(56, 72, 0, e.height))
        keep = np.zeros(len(pts), bool)
        for r in regions:
            keep |= r.contains(pts)
        labels.append(LabelsEntry(e.id, e.image, e.sha256, e.width, e.height, regions, pts[keep]))
    path = root / "labels.jsonl"
    write_jsonl(path, make_header(LABELS, Provenance("test")), (l.to_record() for l in labels))
    return {"root": root, "manifest": manifest, "labels": path}


def test_mask_and_crop_follow_the_labeled_strips(pool):
    from crowdtk.formats import read_labels

    _, entries = read_labels(pool["labels"])
    sample = prepare_sample(entries[3], TrainConfig(model="lite"))
    assert sample.mask.shape == (6, 10)
    assert sample.mask[:, 2:4].all() and sample.mask[:, 7:9].all() and sample.mask.sum() == 6 * 4
    # Each strip's heads keep their whole mass inside the strip: the target counts them exactly.
    assert sample.target.sum() == pytest.approx(len(entries[3].points), abs=1e-4)
    assert not sample.target[~sample.mask].any()
    rng = np.random.default_rng(0)
    for _ in range(20):
        image, target, mask = random_crop(sample, 32, True, rng)
        assert image.shape == (32, 32, 3) and target.shape == mask.shape == (4, 4)
        assert mask.any()  # a crop always holds labeled cells


def test_strip_off_the_cell_grid_supervises_only_whole_cells_with_exact_counts(pool):
    """A strip whose edges cut output cells: the cut cells are left out, and the cells kept
    hold exactly the heads inside them, not a share of those beside the strip."""
    from crowdtk.formats import read_labels

    _, entries = read_labels(pool["labels"])
    e = entries[0]  # fully labeled: all its heads are known
    strip = Region(12, 36, 0, e.height)
    sample = prepare_sample(LabelsEntry(e.id, e.image, e.sha256, e.width, e.height, (strip,), e.points[strip.contains(e.points)]),
                            TrainConfig(model="lite"))
    assert sample.mask.any(axis=0).nonzero()[0].tolist() == [2, 3]  # cells 16–32 px; 8–16 and 32–40 stick out
    inside = ((e.points[:, 0] >= 16) & (e.points[:, 0] < 32)).sum()
    assert sample.target[sample.mask].sum() == pytest.approx(inside, abs=1e-4)


def test_train_with_cap_strip_and_eval(pool, tmp_path):
    ckpt = tmp_path / "cap.safetensors"
    result = run("train", pool["labels"], "--cap", "--epochs", "2", "-o", ckpt, *FAST)
    assert result.exit_code == 0, result.output
    header, tensors = load_tensors(ckpt)
    assert header["format"] == "checkpoint" and header["cap"] is True and header["model"]["name"] == "lite"
    assert header["labels_sha256"] == file_digest(pool["labels"]) and header["seed"] == 0
    assert "cap.gamma" in tensors
    assert header["epochs_done"] >= 1 and header["best_val_mae"] >= 0

    infer = tmp_path / "infer.safetensors"
    assert run("strip-cap", ckpt, "-o", infer, "-q").exit_code == 0
    stripped_header, stripped = load_tensors(infer)
    assert stripped_header["inference_only"] is True and stripped_header["cap"] is False
    assert not any(k.startswith("cap.") for k in stripped)
    x = torch.rand(1, 3, 48, 80)
    with torch.inference_mode():
        before = load_counter(ckpt).counter(x)
        after = load_counter(infer).counter(x)
    assert torch.equal(before, after)

    csv_path = tmp_path / "per_image.csv"
    result = run("eval", infer, pool["manifest"], "--json", "--csv", csv_path, "-q")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["n_images"] == 6 and set(summary["game"]) == {"1", "2", "3"}
    assert summary["rmse"] >= summary["mae"] >= 0
    rows = csv_path.read_text().splitlines()
    assert rows[0].startswith("image,true_count,predicted_count,error") and len(rows) == 7


def test_validation_runs_every_n_epochs_and_after_the_last(pool, tmp_path):
    ckpt = tmp_path / "v.safetensors"
    result = run("train", pool["labels"], "--epochs", "5", "--val-every", "2", "-o", ckpt, *FAST)
    assert result.exit_code == 0, result.output
    history = load_tensors(tmp_path / "v.state.safetensors")[0]["history"]
    assert [h["val_mae"] is not None for h in history] == [False, True, False, True, True]
    assert load_tensors(ckpt)[0]["epochs_done"] in (2, 4, 5)  # the best checkpoint comes from a validated epoch
    assert [TrainConfig(epochs=n).validates_after(e) for n, e in ((17, 3), (120, 5), (120, 6), (120, 119), (120, 120))] == \
        [True, False, True, False, True]  # auto: about 20 validations per run


def test_compile_flag_compiles_the_training_network(pool, tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module: compiled.append(type(module).__name__) or module)
    ckpt = tmp_path / "c.safetensors"
    assert run("train", pool["labels"], "--epochs", "1", "--compile", "-o", ckpt, *FAST).exit_code == 0
    assert compiled == ["TrainNet"] and load_tensors(ckpt)[0]["training"]["compile"] is True
    assert run("warmup", pool["labels"], "--epochs", "1", "-o", tmp_path / "w.safetensors", *FAST).exit_code == 0
    assert compiled == ["TrainNet"]  # off unless asked


def test_tiles_add_up_to_the_whole_image(pool, tmp_path):
    ckpt = tmp_path / "m.safetensors"
    assert run("warmup", pool["labels"], "--epochs", "1", "-o", ckpt, *FAST).exit_code == 0
    loaded = load_counter(ckpt)
    image = np.random.default_rng(1).integers(0, 255, (200, 264, 3), dtype=np.uint8)
    whole, _, _ = Predictor(loaded, device="cpu", max_side=4096).density(image)
    tiled, _, _ = Predictor(loaded, device="cpu", max_side=192).density(image)
    assert whole.shape == tiled.shape == (25, 33)
    # With 64 px of context the receptive field is mostly covered: counts agree closely.
    assert abs(whole.sum() - tiled.sum()) <= 0.05 * abs(whole.sum()) + 0.05


def test_resume_after_interruption_matches_an_uninterrupted_run(pool, tmp_path, monkeypatch):
    monkeypatch.setattr("crowdtk.train.cpu._phase_split_is_faster", lambda *a: False)  # two runs, one arithmetic
    config = TrainConfig(model="lite", epochs=3, crop=32, batch_size=2, cap=True)
    full = tmp_path / "full.safetensors"
    train(pool["labels"], full, config, Provenance("train"))

    cut = tmp_path / "cut.safetensors"

    def stop_after_first(report):
        if report.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(pool["labels"], cut, config, Provenance("train"), on_epoch=stop_after_first)
    train(pool["labels"], cut, config, Provenance("train"), resume=True)
    a, b = load_file(str(tmp_path / "full.state.safetensors")), load_file(str(tmp_path / "cut.state.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_pickle_checkpoints_are_refused_and_never_run(pool, tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.safetensors"
    torch.save({"x": Evil()}, bad)
    with pytest.raises(CrowdtkError, match="pickle-based"):
        load_tensors(bad)
    result = run("eval", bad, pool["manifest"], "--json")
    assert result.exit_code == 1 and "pickle-based" in result.stderr
    assert not marker.exists()


def test_count_images_video_and_overlays(pool, tmp_path):
    ckpt = tmp_path / "m.safetensors"
    assert run("warmup", pool["labels"], "--epochs", "1", "-o", ckpt, *FAST).exit_code == 0
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (80, 48))
    for i in range(3):
        writer.write(np.full((48, 80, 3), 40 * i, np.uint8))
    writer.release()
    result = run("count", ckpt, pool["root"] / "data" / "images", video, "--overlay", tmp_path / "ov", "-q")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 6 + 3
    assert all(isinstance(l["count"], float) for l in lines)
    assert [l["frame"] for l in lines if "video" in l] == [0, 1, 2]
    assert len(list((tmp_path / "ov").glob("*.png"))) == 9


def test_vectors_are_multilevel_strip_sums(pool, tmp_path):
    ckpt = tmp_path / "m.safetensors"
    assert run("warmup", pool["labels"], "--epochs", "1", "-o", ckpt, *FAST).exit_code == 0
    out = tmp_path / "v.npz"
    result = run("vectors", ckpt, pool["manifest"], "-o", out, "--levels", "4", "-q")
    assert result.exit_code == 0, result.output
    header, data = load_vectors(out)
    assert header["manifest_sha256"] == file_digest(pool["manifest"]) and header["levels"] == 4
    assert data.vectors.shape == (6 * 10, 10)
    # Level k sums to the strip count scaled by k/L.
    for k, (lo, hi) in enumerate([(0, 1), (1, 3), (3, 6), (6, 10)], start=1):
        np.testing.assert_allclose(data.vectors[:, lo:hi].sum(1), data.counts * k / 4, rtol=1e-4, atol=1e-4)
    assert (data.strip_x1 > data.strip_x0).all()


def test_torchrun_two_processes_match_one(pool, tmp_path):
    pytest.importorskip("torch.distributed.run")
    common = ["train", str(pool["labels"]), "--model", "lite", "--crop", "32", "--epochs", "2", "--cap", "-q", "--device", "cpu"]
    one = subprocess.run([sys.executable, "-m", "crowdtk", *common, "--batch-size", "2", "-o", str(tmp_path / "one.safetensors")],
                         capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "crowdtk",
                          *common, "--batch-size", "1", "-o", str(tmp_path / "two.safetensors")], capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    a = load_file(str(tmp_path / "one.state.safetensors"))
    b = load_file(str(tmp_path / "two.state.safetensors"))
    # Adam moves a weight by about lr (1e-4) per step whatever its gradient's size, so a weight
    # whose gradient is near zero can step the other way when the all-reduce rounds differently:
    # allow one lr per step (6 steps) elementwise, and require the whole model to agree closely.
    keys = [k for k in a if k.startswith("model.")]
    for key in keys:
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=6e-4)
    diff = sum(float((a[k] - b[k]).double().norm() ** 2) for k in keys) ** 0.5
    assert diff < 1e-4 * sum(float(a[k].double().norm() ** 2) for k in keys) ** 0.5


def test_sigkill_mid_run_then_resume_finishes(pool, tmp_path):
    import signal
    import time

    out = tmp_path / "k.safetensors"
    args = [sys.executable, "-m", "crowdtk", "train", str(pool["labels"]), "--model", "lite", "--crop", "32",
            "--batch-size", "2", "--epochs", "40", "-q", "-o", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "k.state.safetensors"
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)  # somewhere inside a later epoch, perhaps mid-write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.exists(), "no epoch finished before the kill"
    done_before = load_tensors(state)[0]["epochs_done"]
    assert done_before < 40
    resumed = subprocess.run([a for a in args if a != "-q"] + ["--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"epoch {done_before + 1}/40:" in resumed.stderr and "epoch 1/40:" not in resumed.stderr  # continued, not restarted
    header, _ = load_tensors(state)
    assert header["epochs_done"] == 40 and header["history"][0]["epoch"] == 1
    assert load_tensors(out)[0]["format"] == "checkpoint"
