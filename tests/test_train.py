"""`crowdtk train` and `crowdtk warmup` (the same trainer without CAP): supervision, checkpoints, validation, resume,
torchrun."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import FAST_TRAIN, HANG_GUARD_S, best_validated_epoch, run
from safetensors.torch import load_file

from crowdtk.checkpoint import load_tensors
from crowdtk.files import file_digest
from crowdtk.formats import LabelsEntry, Provenance, Region, read_labels
from crowdtk.train import prepare_sample, random_crop, train
from crowdtk.train_config import TrainConfig

# --------------------------------------------------------------------------- what the loss sees


def test_mask_and_crop_follow_the_labeled_strips(strip_pool):
    _, entries = read_labels(strip_pool["labels"])
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


def test_strip_off_the_cell_grid_supervises_only_whole_cells_with_exact_counts(strip_pool):
    """A strip whose edges cut output cells: the cut cells are left out, and the cells kept
    hold exactly the heads inside them, not a share of those beside the strip."""
    _, entries = read_labels(strip_pool["labels"])
    e = entries[0]  # fully labeled: all its heads are known
    strip = Region(12, 36, 0, e.height)
    sample = prepare_sample(
        LabelsEntry(e.id, e.image, e.sha256, e.width, e.height, (strip,), e.points[strip.contains(e.points)]),
        TrainConfig(model="lite"),
    )
    assert sample.mask.any(axis=0).nonzero()[0].tolist() == [2, 3]  # cells 16–32 px; 8–16 and 32–40 stick out
    inside = ((e.points[:, 0] >= 16) & (e.points[:, 0] < 32)).sum()
    assert sample.target[sample.mask].sum() == pytest.approx(inside, abs=1e-4)


# --------------------------------------------------------------------------- the checkpoint


def test_train_with_cap_writes_the_best_validated_epoch(strip_pool, cap_ckpt):
    header, tensors = load_tensors(cap_ckpt)
    assert header["format"] == "checkpoint" and header["cap"] is True and header["model"]["name"] == "lite"
    assert (
        header["cap_affinity"] == "paper" and header["cap_temperature"] is None
    )  # the paper's Eq. 9 unless asked otherwise
    assert header["labels_sha256"] == file_digest(strip_pool["labels"]) and header["seed"] == 0
    assert "cap.gamma" in tensors
    history = load_tensors(cap_ckpt.with_name("cap.state.safetensors"))[0]["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    best = best_validated_epoch(history)
    assert header["epochs_done"] == best["epoch"] and header["best_val_mae"] == best["val_mae"]


def test_validation_runs_every_n_epochs_and_after_the_last(strip_pool, tmp_path):
    ckpt = tmp_path / "v.safetensors"
    result = run("train", strip_pool["labels"], "--epochs", "5", "--val-every", "2", "-o", ckpt, *FAST_TRAIN)
    assert result.exit_code == 0, result.output
    history = load_tensors(tmp_path / "v.state.safetensors")[0]["history"]
    assert [h["val_mae"] is not None for h in history] == [False, True, False, True, True]
    # the best checkpoint comes from a validated epoch: the first with the lowest validation MAE
    assert load_tensors(ckpt)[0]["epochs_done"] == best_validated_epoch(history)["epoch"]
    assert [
        TrainConfig(epochs=n).validates_after(e) for n, e in ((17, 3), (120, 5), (120, 6), (120, 119), (120, 120))
    ] == [True, False, True, False, True]  # auto: about 20 validations per run


def test_compile_flag_compiles_the_training_network(strip_pool, tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module: compiled.append(type(module).__name__) or module)
    ckpt = tmp_path / "c.safetensors"
    assert run("train", strip_pool["labels"], "--epochs", "1", "--compile", "-o", ckpt, *FAST_TRAIN).exit_code == 0
    assert compiled == ["TrainNet"] and load_tensors(ckpt)[0]["training"]["compile"] is True
    assert (
        run("warmup", strip_pool["labels"], "--epochs", "1", "-o", tmp_path / "w.safetensors", *FAST_TRAIN).exit_code
        == 0
    )
    assert compiled == ["TrainNet"]  # off unless asked


# --------------------------------------------------------------------------- interruptions and processes


def test_resume_after_interruption_matches_an_uninterrupted_run(strip_pool, tmp_path, monkeypatch):
    monkeypatch.setattr("crowdtk.train.cpu._phase_split_is_faster", lambda *a: False)  # two runs, one arithmetic
    config = TrainConfig(model="lite", epochs=3, crop=32, batch_size=2, cap=True)
    full = tmp_path / "full.safetensors"
    train(strip_pool["labels"], full, config, Provenance("train"))

    cut = tmp_path / "cut.safetensors"

    def stop_after_first(report):
        if report.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(strip_pool["labels"], cut, config, Provenance("train"), on_epoch=stop_after_first)
    train(strip_pool["labels"], cut, config, Provenance("train"), resume=True)
    a, b = load_file(str(tmp_path / "full.state.safetensors")), load_file(str(tmp_path / "cut.state.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_torchrun_two_processes_match_one(strip_pool, tmp_path):
    pytest.importorskip("torch.distributed.run")
    common = [
        "train",
        str(strip_pool["labels"]),
        "--model",
        "lite",
        "--crop",
        "32",
        "--epochs",
        "2",
        "--cap",
        "-q",
        "--device",
        "cpu",
    ]
    one = subprocess.run(
        [sys.executable, "-m", "crowdtk", *common, "--batch-size", "2", "-o", str(tmp_path / "one.safetensors")],
        capture_output=True,
        text=True,
    )
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "crowdtk",
            *common,
            "--batch-size",
            "1",
            "-o",
            str(tmp_path / "two.safetensors"),
        ],
        capture_output=True,
        text=True,
    )
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


def test_sigkill_mid_run_then_resume_finishes(strip_pool, tmp_path):
    out = tmp_path / "k.safetensors"
    args = [
        sys.executable,
        "-m",
        "crowdtk",
        "train",
        str(strip_pool["labels"]),
        *FAST_TRAIN,
        "--epochs",
        "40",
        "-o",
        str(out),
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "k.state.safetensors"
    deadline = time.time() + HANG_GUARD_S
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
    assert (
        f"epoch {done_before + 1}/40:" in resumed.stderr and "epoch 1/40:" not in resumed.stderr
    )  # continued, not restarted
    header, _ = load_tensors(state)
    assert header["epochs_done"] == 40 and header["history"][0]["epoch"] == 1
    assert load_tensors(out)[0]["format"] == "checkpoint"


def test_checkpoints_that_call_the_scale_input_scale_are_read_alike() -> None:
    """Checkpoints and states written before the training scale had the command line's name keep working."""
    from crowdtk.formats import trained_scale, training_settings

    old = {"input_scale": 0.5, "training": {"input_scale": 0.5, "epochs": 3}}
    new = {"scale": 0.5, "training": {"scale": 0.5, "epochs": 3}}
    assert trained_scale(old) == trained_scale(new) == 0.5
    assert trained_scale({}, default=0.25) == 0.25
    assert training_settings(old) == training_settings(new) == {"scale": 0.5, "epochs": 3}
