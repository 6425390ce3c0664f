"""Reliability, round two (issue 14): harsher inputs and actions, each a case that went wrong before."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from crowdtk.cap import TrainNet
from crowdtk.checkpoint import save_tensors
from crowdtk.cli import app
from crowdtk.formats import Provenance, checkpoint_header
from crowdtk.models import build_model
from crowdtk.train_config import TrainConfig

runner = CliRunner()


def small_checkpoint(path: Path, input_scale: float = 1.0, cap: bool = False, finished: bool = True) -> Path:
    """A small random `lite` counter saved as a crowdtk checkpoint trained at ``input_scale``."""
    torch.manual_seed(0)
    counter = build_model("lite", pretrained=False, dilated=False, backend_channels=[16])
    config = TrainConfig(model="lite", pretrained=False, input_scale=input_scale, cap=cap, epochs=1)
    header = checkpoint_header(Provenance("test"), model=counter.name, model_config=counter.config, cap=cap, training=asdict(config),
                               labels_sha256="0" * 64, epochs_done=1 if finished else 0, best_val_mae=0.0, val_on="train")
    save_tensors(path, TrainNet(counter, cap=cap).weights(), header)
    return path


def image_pool(root: Path, n: int = 1, size: tuple[int, int] = (96, 128)) -> Path:
    """``n`` textured images with heads, indexed into root/manifest.jsonl."""
    rng = np.random.default_rng(1)
    (root / "data" / "images").mkdir(parents=True)
    (root / "data" / "points").mkdir()
    h, w = size
    for i in range(n):
        cv2.imwrite(str(root / "data" / "images" / f"im{i}.png"), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        points = np.c_[rng.uniform(0, w, 20), rng.uniform(0, h, 20)]
        (root / "data" / "points" / f"im{i}.txt").write_text("".join(f"{x} {y}\n" for x, y in points))
    manifest = root / "manifest.jsonl"
    assert runner.invoke(app, ["index", str(root / "data"), "-o", str(manifest), "-q"]).exit_code == 0
    return manifest


# --------------------------------------------------------------------------- 2. Fig. 6 at --scale 0.5


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_fig6_draws_the_predicted_density_in_heads_per_8_pixels_at_any_scale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                            scale: float) -> None:
    from crowdtk import pictures
    from crowdtk.formats import read_manifest
    from crowdtk.predict import Predictor, load_counter

    manifest = image_pool(tmp_path)
    ckpt = small_checkpoint(tmp_path / "m.safetensors", input_scale=scale)
    bars = []
    real = pictures._colorbar
    monkeypatch.setattr(pictures, "_colorbar", lambda fig, shown, ax, **kw: bars.append(shown.norm.vmax) or real(fig, shown, ax, **kw))
    pictures.show_prediction(tmp_path / "fig6.png", ckpt, manifest)
    _, entries = read_manifest(manifest)
    density, sx, sy = Predictor(load_counter(ckpt)).density(cv2.cvtColor(cv2.imread(entries[0].image), cv2.COLOR_BGR2RGB))
    # A model cell at scale s covers (8/s)² original pixels: per 8×8 original pixels it holds s² of its heads.
    assert bars[1] == pytest.approx(float(density.max()) * sx * sy, rel=1e-5)


# --------------------------------------------------------------------------- 6, 7. signals, and how to continue


@pytest.fixture(scope="module")
def labeled_pool(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pool")
    manifest = image_pool(root, n=4, size=(64, 96))
    regions, labels = root / "regions.jsonl", root / "labels.jsonl"
    assert runner.invoke(app, ["select", str(manifest), "--strategy", "random", "--budget", "0.5", "--strip-frac", "0.25", "-o", str(regions), "-q"]).exit_code == 0
    assert runner.invoke(app, ["import", str(regions), "--oracle", str(manifest), "-o", str(labels), "-q"]).exit_code == 0
    return {"manifest": manifest, "labels": labels}


def hidden_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("sig, code, word", [("SIGTERM", 143, "terminated"), ("SIGINT", 130, "interrupted")])
def test_a_signal_mid_training_keeps_the_epochs_and_says_how_to_continue(labeled_pool: dict[str, Path], tmp_path: Path,
                                                                          sig: str, code: int, word: str) -> None:
    import signal
    import subprocess
    import sys
    import time

    from crowdtk.checkpoint import read_header

    out = tmp_path / "m.safetensors"
    args = [sys.executable, "-m", "crowdtk", "train", str(labeled_pool["labels"]), "--model", "lite", "--no-pretrained", "--crop", "32",
            "--batch-size", "2", "--epochs", "500", "--keep", "last", "-q", "-o", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state = tmp_path / "m.state.safetensors"
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert state.exists(), "no epoch finished"
    proc.send_signal(getattr(signal, sig))
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    done = read_header(state)["epochs_done"]
    assert 0 < done < 500
    assert stderr.strip().splitlines()[-1] == f"crowdtk train: {word} after epoch {done} of 500; continue with --resume"
    assert read_header(out)["finished"] is False and hidden_leftovers(tmp_path) == []
    again = runner.invoke(app, ["train", str(labeled_pool["labels"]), "-o", str(out), "--epochs", "500"])
    assert again.exit_code == 1 and "--resume" in again.stderr and "m.state.safetensors" in again.stderr
    evaluated = runner.invoke(app, ["eval", str(out), str(labeled_pool["manifest"]), "--json"])
    assert evaluated.exit_code == 0 and "unfinished training run" in evaluated.stderr and f"epoch {done} of 500" in evaluated.stderr


def test_a_finished_run_keeping_its_best_epoch_is_marked_finished(labeled_pool: dict[str, Path], tmp_path: Path) -> None:
    from crowdtk.checkpoint import read_header

    out = tmp_path / "m.safetensors"
    result = runner.invoke(app, ["train", str(labeled_pool["labels"]), "--model", "lite", "--no-pretrained", "--crop", "32",
                                 "--batch-size", "2", "--epochs", "3", "--keep", "best", "--val-every", "1", "-q", "-o", str(out)])
    assert result.exit_code == 0, result.output
    header = read_header(out)
    assert header["finished"] is True and header["training"]["epochs"] == 3
    evaluated = runner.invoke(app, ["eval", str(out), str(labeled_pool["manifest"]), "--json"])
    assert evaluated.exit_code == 0 and "unfinished" not in evaluated.stderr


@pytest.mark.parametrize("error", ["Terminated", "KeyboardInterrupt"])
@pytest.mark.parametrize("stage", ["synth", "gen-density", "export", "count"])
def test_a_signal_in_a_folder_writing_stage_removes_its_temporaries(labeled_pool: dict[str, Path], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch, stage: str, error: str) -> None:
    """The signal arrives in the middle of the work (the second image); what the stage built so far is in a
    temporary folder, which goes; an output it was told to replace (--force) stays as it was."""
    from crowdtk import errors

    exc = getattr(errors, error) if error == "Terminated" else KeyboardInterrupt
    calls = {"n": 0}

    def second_call_interrupts(real):
        def wrapped(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 2:
                raise exc()
            return real(*args, **kwargs)
        return wrapped

    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old output\n")
    if stage == "synth":
        import crowdtk.synth as target
        monkeypatch.setattr(target, "render_scene", second_call_interrupts(target.render_scene))
        args = ["synth", "-o", str(out), "--train", "3", "--test", "1", "--width", "64", "--height", "64", "--workers", "1"]
    elif stage == "gen-density":
        import crowdtk.density as target
        monkeypatch.setattr(target, "density_map", second_call_interrupts(target.density_map))
        args = ["gen-density", str(labeled_pool["manifest"]), "-o", str(out)]
    elif stage == "export":
        import crowdtk.labeling.common as target
        monkeypatch.setattr(target, "place_image", second_call_interrupts(target.place_image))
        regions = tmp_path / "regions.jsonl"
        assert runner.invoke(app, ["select", str(labeled_pool["manifest"]), "--budget", "0.5", "--strip-frac", "0.25", "-o", str(regions), "-q"]).exit_code == 0
        args = ["export", str(regions), "--to", "labelme", "-o", str(out)]
    else:
        from crowdtk.predict import Predictor
        monkeypatch.setattr(Predictor, "density", second_call_interrupts(Predictor.density))
        ckpt = small_checkpoint(tmp_path / "m.safetensors")
        args = ["count", str(ckpt), str(labeled_pool["manifest"].parent / "data" / "images"), "--overlay", str(out)]
    result = runner.invoke(app, [*args, "--force"])
    code, word = (143, "terminated") if error == "Terminated" else (130, "interrupted")
    assert calls["n"] == 2, "the interruption never came"
    assert result.exit_code == code and f": {word}" in result.stderr, result.output
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    assert hidden_leftovers(tmp_path) == []


def test_force_over_a_file_with_a_folder_leaves_no_old_copy(tmp_path: Path) -> None:
    out = tmp_path / "f"
    out.write_text("a file where a folder goes\n")
    result = runner.invoke(app, ["synth", "-o", str(out), "--train", "2", "--test", "1", "--width", "64", "--height", "64", "-q", "--force"])
    assert result.exit_code == 0, result.output
    assert out.is_dir() and hidden_leftovers(tmp_path) == []
