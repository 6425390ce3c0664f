"""Harsher inputs and actions, each a case that went wrong before: signals mid-run, paths read from stdin, repeated
and foreign records, file system errors, one very large image, and what the native video decoders print."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import FAST_TRAIN, HANG_GUARD_S, run, small_checkpoint
from typer.testing import CliRunner

from crowdtk.cap import TrainNet
from crowdtk.checkpoint import save_tensors
from crowdtk.cli import app
from crowdtk.models import build_model

runner = CliRunner()


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


# --------------------------------------------------------------------------- Fig. 6 at --scale 0.5


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_fig6_draws_the_predicted_density_in_heads_per_8_pixels_at_any_scale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scale: float
) -> None:
    from crowdtk import pictures
    from crowdtk.formats import read_manifest
    from crowdtk.predict import Predictor, load_counter

    manifest = image_pool(tmp_path)
    ckpt = small_checkpoint(tmp_path / "m.safetensors", scale=scale)
    bars = []
    real = pictures._colorbar

    def recording_colorbar(fig, shown, ax, **kw):
        bars.append(shown.norm.vmax)
        return real(fig, shown, ax, **kw)

    monkeypatch.setattr(pictures, "_colorbar", recording_colorbar)
    pictures.show_prediction(tmp_path / "fig6.png", ckpt, manifest)
    _, entries = read_manifest(manifest)
    bgr = cv2.imread(entries[0].image)
    assert bgr is not None, entries[0].image
    density, sx, sy = Predictor(load_counter(ckpt)).density(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    # A model cell at scale s covers (8/s)² original pixels: per 8×8 original pixels it holds s² of its heads.
    assert bars[1] == pytest.approx(float(density.max()) * sx * sy, rel=1e-5)


# --------------------------------------------------------------------------- signals, and how to continue


@pytest.fixture(scope="module")
def labeled_pool(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pool")
    manifest = image_pool(root, n=4, size=(64, 96))
    regions, labels = root / "regions.jsonl", root / "labels.jsonl"
    half = ("--budget", "0.5", "--strip-frac", "0.25")
    assert run("select", manifest, "--strategy", "random", *half, "-o", regions, "-q").exit_code == 0
    assert (
        runner.invoke(app, ["import", str(regions), "--oracle", str(manifest), "-o", str(labels), "-q"]).exit_code == 0
    )
    return {"manifest": manifest, "labels": labels}


def hidden_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("sig, code, word", [("SIGTERM", 143, "terminated"), ("SIGINT", 130, "interrupted")])
def test_a_signal_mid_training_keeps_the_epochs_and_says_how_to_continue(
    labeled_pool: dict[str, Path], tmp_path: Path, sig: str, code: int, word: str
) -> None:
    import signal
    import subprocess
    import sys
    import time

    from crowdtk.checkpoint import read_header

    out = tmp_path / "m.safetensors"
    args = [
        sys.executable,
        "-m",
        "crowdtk",
        "train",
        str(labeled_pool["labels"]),
        "--model",
        "lite",
        "--no-pretrained",
        "--crop",
        "32",
        "--batch-size",
        "2",
        "--epochs",
        "500",
        "--keep",
        "last",
        "-q",
        "-o",
        str(out),
    ]
    # A job started in the background inherits SIGINT ignored, and Python then keeps ignoring it:
    # the child gets the default disposition back, as a command typed at a terminal has.
    proc = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        state = tmp_path / "m.state.safetensors"
        deadline = time.time() + HANG_GUARD_S
        while not state.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert state.exists(), "no epoch finished"
        proc.send_signal(getattr(signal, sig))
        _, stderr = proc.communicate(timeout=HANG_GUARD_S)
    finally:
        proc.kill()  # never leave a 500-epoch run behind a failed assertion
    assert proc.returncode == code, stderr
    done = read_header(state)["epochs_done"]
    assert 0 < done < 500
    assert stderr.strip().splitlines()[-1] == f"crowdtk train: {word} after epoch {done} of 500; continue with --resume"
    assert read_header(out)["finished"] is False and hidden_leftovers(tmp_path) == []
    again = runner.invoke(app, ["train", str(labeled_pool["labels"]), "-o", str(out), "--epochs", "500"])
    assert again.exit_code == 1 and "--resume" in again.stderr and "m.state.safetensors" in again.stderr
    evaluated = runner.invoke(app, ["eval", str(out), str(labeled_pool["manifest"]), "--json"])
    # The checkpoint is written just before the state: a signal between the two leaves it one epoch ahead.
    assert evaluated.exit_code == 0 and "unfinished training run" in evaluated.stderr
    assert f"epoch {done} of 500" in evaluated.stderr or f"epoch {done + 1} of 500" in evaluated.stderr


def test_a_finished_run_keeping_its_best_epoch_is_marked_finished(
    labeled_pool: dict[str, Path], tmp_path: Path
) -> None:
    from crowdtk.checkpoint import read_header

    out = tmp_path / "m.safetensors"
    keep_best = ("--epochs", "3", "--keep", "best", "--val-every", "1")
    result = run("train", labeled_pool["labels"], "--no-pretrained", *keep_best, "-o", out, *FAST_TRAIN)
    assert result.exit_code == 0, result.output
    header = read_header(out)
    assert header["finished"] is True and header["training"]["epochs"] == 3
    evaluated = runner.invoke(app, ["eval", str(out), str(labeled_pool["manifest"]), "--json"])
    assert evaluated.exit_code == 0 and "unfinished" not in evaluated.stderr


@pytest.mark.parametrize("error", ["Terminated", "KeyboardInterrupt"])
@pytest.mark.parametrize("stage", ["synth", "gen-density", "export", "count"])
def test_a_signal_in_a_folder_writing_stage_removes_its_temporaries(
    labeled_pool: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str, error: str
) -> None:
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
        import crowdtk.synth as synth_module

        monkeypatch.setattr(synth_module, "render_scene", second_call_interrupts(synth_module.render_scene))
        args = [
            "synth",
            "-o",
            str(out),
            "--train",
            "3",
            "--test",
            "1",
            "--width",
            "64",
            "--height",
            "64",
            "--workers",
            "1",
        ]
    elif stage == "gen-density":
        import crowdtk.density as density_module

        monkeypatch.setattr(density_module, "density_map", second_call_interrupts(density_module.density_map))
        args = ["gen-density", str(labeled_pool["manifest"]), "-o", str(out)]
    elif stage == "export":
        import crowdtk.labeling.common as labeling_module

        monkeypatch.setattr(labeling_module, "place_image", second_call_interrupts(labeling_module.place_image))
        regions = tmp_path / "regions.jsonl"
        half = ("--budget", "0.5", "--strip-frac", "0.25")
        assert run("select", labeled_pool["manifest"], *half, "-o", regions, "-q").exit_code == 0
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
    result = runner.invoke(
        app,
        ["synth", "-o", str(out), "--train", "2", "--test", "1", "--width", "64", "--height", "64", "-q", "--force"],
    )
    assert result.exit_code == 0, result.output
    assert out.is_dir() and hidden_leftovers(tmp_path) == []


# --------------------------------------------------------------------------- strip-cap checks what it strips


def test_strip_cap_refuses_a_file_that_is_no_counter_and_warns_when_there_is_no_cap(tmp_path: Path) -> None:
    from crowdtk.checkpoint import load_tensors

    real = small_checkpoint(tmp_path / "plain.safetensors")
    header, _ = load_tensors(real)
    payload = tmp_path / "payload.safetensors"
    save_tensors(payload, {"payload": torch.zeros(3)}, header)  # a checkpoint header over foreign tensors
    out = tmp_path / "out.safetensors"
    result = runner.invoke(app, ["strip-cap", str(payload), "-o", str(out)])
    assert result.exit_code == 1 and str(payload) in result.stderr and "do not fit" in result.stderr
    assert not out.exists()
    result = runner.invoke(app, ["strip-cap", str(real), "-o", str(out)])
    assert result.exit_code == 0 and "has no CAP module to remove" in result.stderr
    with_cap = small_checkpoint(tmp_path / "cap.safetensors", cap=True)
    result = runner.invoke(app, ["strip-cap", str(with_cap), "-o", str(tmp_path / "stripped.safetensors")])
    assert result.exit_code == 0 and "warning" not in result.stderr and "removed 1 CAP tensor" in result.stderr


# --------------------------------------------------------------------------- paths read from stdin


def relative_pool(root: Path) -> Path:
    """A manifest whose image paths are relative to its own folder, as synth writes them."""
    assert (
        runner.invoke(
            app, ["synth", "-o", str(root), "--train", "2", "--test", "1", "--width", "96", "--height", "64", "-q"]
        ).exit_code
        == 0
    )
    manifest = root / "test" / "manifest.jsonl"
    assert '"image": "images/' in manifest.read_text()
    return manifest


@pytest.mark.parametrize("command", ["eval", "select", "vectors"])
def test_a_relative_path_read_from_stdin_is_refused_with_a_fix(tmp_path: Path, command: str) -> None:
    manifest = relative_pool(tmp_path / "syn")
    ckpt = small_checkpoint(tmp_path / "m.safetensors")
    out = tmp_path / "out.jsonl"
    args = {
        "eval": ["eval", str(ckpt), "-"],
        "select": ["select", "-", "-o", str(out)],
        "vectors": ["vectors", str(ckpt), "-", "-o", str(tmp_path / "v.npz")],
    }[command]
    result = runner.invoke(app, args, input=manifest.read_text())
    assert result.exit_code == 1, result.output
    assert "<stdin>:2: relative path 'images/" in result.stderr and "instead of '-'" in result.stderr
    assert not out.exists() and not (tmp_path / "v.npz").exists()


def test_vectors_reads_an_absolute_manifest_from_stdin_and_records_its_digest(tmp_path: Path) -> None:
    from crowdtk.files import file_digest
    from crowdtk.formats import load_vectors

    manifest = image_pool(tmp_path)  # index writes absolute paths
    ckpt = small_checkpoint(tmp_path / "m.safetensors")
    result = runner.invoke(
        app, ["vectors", str(ckpt), "-", "-o", str(tmp_path / "v.npz"), "-q"], input=manifest.read_text()
    )
    assert result.exit_code == 0, result.output
    header, _ = load_vectors(tmp_path / "v.npz")
    assert header["manifest_sha256"] == file_digest(manifest)  # so select --vectors accepts them with the manifest file
    selected = runner.invoke(
        app,
        [
            "select",
            str(manifest),
            "--strategy",
            "mdc",
            "--vectors",
            str(tmp_path / "v.npz"),
            "-o",
            str(tmp_path / "r.jsonl"),
            "-q",
        ],
    )
    assert selected.exit_code == 0, selected.output


# --------------------------------------------------------------------------- duplicates and foreign data


def test_a_repeated_record_names_its_file_and_lines(labeled_pool: dict[str, Path], tmp_path: Path) -> None:
    def doubled(source: Path) -> tuple[Path, int]:
        lines = source.read_text().splitlines()
        out = tmp_path / source.name
        out.write_text("\n".join([*lines, lines[1]]) + "\n")
        return out, len(lines) + 1

    labels, labels_line = doubled(labeled_pool["labels"])
    regions, regions_line = doubled(labeled_pool["labels"].parent / "regions.jsonl")
    for command, path, line in (
        (["train", str(labels), "-o", str(tmp_path / "m.safetensors")], labels, labels_line),
        (["export", str(regions), "--to", "labelme", "-o", str(tmp_path / "x")], regions, regions_line),
        (
            ["import", str(regions), "--oracle", str(labeled_pool["manifest"]), "-o", str(tmp_path / "l.jsonl")],
            regions,
            regions_line,
        ),
    ):
        result = runner.invoke(app, command)
        assert result.exit_code == 1, result.output
        assert f"{path}:{line}: image " in result.stderr and "listed twice (also on line 2)" in result.stderr
    assert not any((tmp_path / name).exists() for name in ("m.safetensors", "x", "l.jsonl"))


def test_merge_refuses_another_pools_labels(labeled_pool: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    manifest = image_pool(other, n=3, size=(64, 96))
    regions, labels = other / "regions.jsonl", other / "labels.jsonl"
    for args in (
        ["select", str(manifest), "--budget", "0.5", "--strip-frac", "0.25", "--seed", "3", "-o", str(regions), "-q"],
        ["import", str(regions), "--oracle", str(manifest), "-o", str(labels), "-q"],
    ):
        assert runner.invoke(app, args).exit_code == 0
    ours = labeled_pool["labels"].parent / "regions.jsonl"
    out = tmp_path / "merged.jsonl"
    result = runner.invoke(
        app, ["import", str(ours), "--oracle", str(labeled_pool["manifest"]), "--merge", str(labels), "-o", str(out)]
    )
    assert result.exit_code == 1 and f"{labels}: labels of another pool" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("point, message", [(["12.5", 3.0], "not a number"), ([500.0, 3.0], "outside the 96x64 image")])
def test_a_foreign_point_in_a_labels_file_is_an_error_naming_the_line(
    labeled_pool: dict[str, Path], tmp_path: Path, point: list, message: str
) -> None:
    import json

    lines = labeled_pool["labels"].read_text().splitlines()
    record = json.loads(lines[1])
    record["points"] = [*record["points"], point]
    bad = tmp_path / "labels.jsonl"
    bad.write_text("\n".join([lines[0], json.dumps(record), *lines[2:]]) + "\n")
    result = runner.invoke(app, ["train", str(bad), "-o", str(tmp_path / "m.safetensors")])
    assert result.exit_code == 1 and f"{bad}:2:" in result.stderr and message in result.stderr, result.output


# --------------------------------------------------------------------------- ordinary filesystem errors


def test_an_output_that_cannot_be_written_is_refused_before_the_work(
    labeled_pool: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As root every folder is writable, so the permission is simulated; the check is os.access's."""
    import os

    from crowdtk import vectors

    ran = []
    monkeypatch.setattr(vectors, "compute_vectors", lambda *a, **k: ran.append(1))
    real_access = os.access
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    ckpt = small_checkpoint(tmp_path / "m.safetensors")
    result = runner.invoke(app, ["vectors", str(ckpt), str(labeled_pool["manifest"]), "-o", str(locked / "v.npz")])
    assert result.exit_code == 1 and f"no permission to write in {locked}" in result.stderr and not ran


def test_a_folder_where_a_file_goes_and_the_working_folder_are_refused(
    labeled_pool: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "existing"
    folder.mkdir()
    result = runner.invoke(app, ["select", str(labeled_pool["manifest"]), "-o", str(folder), "--force"])
    assert result.exit_code == 1 and f"{folder}: is a folder, and this output is a file" in result.stderr
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["synth", "-o", ".", "--force", "--train", "2", "--test", "1"])
    assert result.exit_code == 1 and "is the working folder" in result.stderr and "unexpected" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]


def test_a_full_disk_is_a_one_line_error_with_a_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import crowdtk.checkpoint as checkpoint

    def full(tensors, path, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    ckpt = small_checkpoint(tmp_path / "m.safetensors", cap=True)
    monkeypatch.setattr(checkpoint, "save_file", full)
    result = runner.invoke(app, ["strip-cap", str(ckpt), "-o", str(tmp_path / "s.safetensors")])
    assert result.exit_code == 1, result.output
    assert result.stderr.count("\n") == 1 and "No space left on device (the disk is full" in result.stderr
    assert "unexpected" not in result.stderr and not (tmp_path / "s.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------- runs of one command compute alike


def test_the_cpu_backward_is_chosen_once_per_machine_and_shape(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Under load the timing flipped between two runs of one command; the first choice is remembered."""
    from crowdtk.train import cpu

    answers = iter([True, False, False])
    timed = []

    def timed_answer(*a: object) -> bool:
        timed.append(1)
        return next(answers)

    monkeypatch.setattr(cpu, "_phase_split_is_faster", timed_answer)
    net = TrainNet(build_model("lite", pretrained=False), cap=False)
    example = cpu.example_batch((1, 3, 64, 64), (8, 8))
    assert cpu.speed_up_cpu_training(net, example) is True
    assert (
        cpu.speed_up_cpu_training(TrainNet(build_model("lite", pretrained=False), cap=False), example) is True
    )  # not timed again
    assert timed == [1] and cpu.choices_path().exists()
    other = cpu.example_batch((2, 3, 64, 96), (8, 12))  # another batch shape is its own question
    assert cpu.speed_up_cpu_training(net, other) is False and timed == [1, 1]


def test_the_checkpoint_records_the_backward_it_trained_with(labeled_pool: dict[str, Path], tmp_path: Path) -> None:
    from crowdtk.checkpoint import read_header

    out = tmp_path / "m.safetensors"
    result = run("train", labeled_pool["labels"], "--no-pretrained", "--epochs", "1", "-o", out, *FAST_TRAIN)
    assert result.exit_code == 0, result.output
    assert isinstance(read_header(out)["cpu_phase_split"], bool)


# --------------------------------------------------------------------------- one very large image


def peak_rss_mb(args: list[str]) -> tuple[int, str, float]:
    """Run a crowdtk command in a child process: exit code, stderr, the child's peak resident memory (MB)."""
    import subprocess
    import sys

    code = (
        "import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024); sys.stderr.write(p.stderr); "
        "sys.exit(p.returncode)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, sys.executable, "-m", "crowdtk", *args], capture_output=True, text=True
    )
    return done.returncode, done.stderr, float(done.stdout.strip().splitlines()[-1])


def test_a_20000_px_image_is_indexed_from_its_header_and_refused_by_training(tmp_path: Path) -> None:
    from PIL import Image

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "points").mkdir()
    Image.new("1", (20000, 20000)).save(
        data / "images" / "huge.png"
    )  # 1 bit per pixel: a few MB on disk, 1.2 GB decoded
    (data / "points" / "huge.txt").write_text("100 100\n15000 12000\n")
    manifest = tmp_path / "manifest.jsonl"
    code, stderr, rss = peak_rss_mb(["index", str(data), "-o", str(manifest), "-q"])
    assert code == 0, stderr
    assert '"width": 20000, "height": 20000' in manifest.read_text() and rss < 600
    regions, labels = tmp_path / "regions.jsonl", tmp_path / "labels.jsonl"
    assert runner.invoke(app, ["select", str(manifest), "--budget", "0.1", "-o", str(regions), "-q"]).exit_code == 0
    assert (
        runner.invoke(app, ["import", str(regions), "--oracle", str(manifest), "-o", str(labels), "-q"]).exit_code == 0
    )
    for command in (
        ["warmup", str(labels), "-o", str(tmp_path / "m.safetensors"), "--no-pretrained", "--epochs", "1"],
        [
            "train",
            str(labels),
            "-o",
            str(tmp_path / "m.safetensors"),
            "--no-pretrained",
            "--epochs",
            "1",
            "--freeze",
            "encoder",
            "--scale",
            "0.5",
        ],
    ):
        code, stderr, rss = peak_rss_mb(command)
        assert code == 1 and "huge.png: image is 20000x20000 px (400 Mpx), more than the 100 Mpx" in stderr, stderr
        assert rss < 1500 and not (tmp_path / "m.safetensors").exists()


# --------------------------------------------------------------------------- smaller ones


def test_a_skipped_image_is_not_told_to_pass_skip_bad(tmp_path: Path) -> None:
    data = tmp_path / "data"
    image_pool(tmp_path)  # data/ with one good image
    (data / "images" / "bad.png").write_bytes(b"not an image")
    (data / "points" / "bad.txt").write_text("1 1\n")
    result = runner.invoke(app, ["index", str(data), "--skip-bad", "-o", str(tmp_path / "m2.jsonl")])
    assert result.exit_code == 0 and "skipped" in result.stderr and "bad.png" in result.stderr
    assert "--skip-bad" not in result.stderr


def test_ucf_annotation_pictures_are_ignored_with_one_warning(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in (1, 2):
        cv2.imwrite(str(tmp_path / f"{i}.jpg"), rng.integers(0, 255, (64, 80, 3), dtype=np.uint8))
        import scipy.io

        scipy.io.savemat(tmp_path / f"{i}_ann.mat", {"annPoints": np.array([[10.0, 10.0], [20.0, 30.0]])})
    cv2.imwrite(str(tmp_path / "2_ann.png"), np.zeros((64, 80, 3), np.uint8))  # a density preview, as UCF_CC_50 ships
    result = runner.invoke(app, ["index", str(tmp_path), "-o", str(tmp_path / "m.jsonl")])
    assert result.exit_code == 0, result.output
    assert "ignored 1 annotation picture(s), not images of the data set: 2_ann.png" in result.stderr
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 3


def test_count_says_that_it_does_not_look_into_subfolders(tmp_path: Path) -> None:
    (tmp_path / "day1").mkdir()
    cv2.imwrite(str(tmp_path / "day1" / "a.png"), np.zeros((64, 64, 3), np.uint8))
    ckpt = small_checkpoint(tmp_path / "m.safetensors")
    result = runner.invoke(app, ["count", str(ckpt), str(tmp_path)])
    assert result.exit_code == 1 and "does not look into subfolders" in result.stderr


def test_a_budget_too_small_for_one_region_is_said(labeled_pool: dict[str, Path], tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["select", str(labeled_pool["manifest"]), "--budget", "1e-9", "-o", str(tmp_path / "r.jsonl")]
    )
    assert result.exit_code == 0 and "nothing was selected" in result.stderr


def test_a_missing_input_is_reported_before_torch_is_imported(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys; from crowdtk.cli import app\n"
        "try:\n    app(['eval', sys.argv[1], sys.argv[1]], prog_name='crowdtk')\n"
        "except SystemExit as e:\n    print(e.code, 'torch' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "missing.safetensors")], capture_output=True, text=True
    )
    assert done.stdout.split() == ["1", "False"], done.stdout + done.stderr
    assert "missing.safetensors: no such file" in done.stderr


# ------------------------------------------------------ what the native video decoders print (images: test_decoding.py)


def mjpeg_clip(path: Path, frames: int = 5) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 5, (80, 48))
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8))
    writer.release()
    return path


@pytest.mark.parametrize("damage", ["no-index", "truncated"])
def test_a_corrupt_video_fails_in_one_line_with_ffmpeg_s_reason(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], damage: str
) -> None:
    """An .mp4 without its index (moov atom) does not open; an AVI cut inside its third frame yields two frames, then
    stops."""
    from conftest import assert_clean_failure

    ckpt = small_checkpoint(tmp_path / "m.safetensors")
    if damage == "no-index":
        video = tmp_path / "clip.mp4"
        video.write_bytes(
            b"\x00\x00\x00\x18ftypmp42" + bytes(np.random.default_rng(0).integers(0, 255, 4000, dtype=np.uint8))
        )
        expected = "clip.mp4: cannot open video (mov,mp4,m4a,3gp,3g2,mj2: moov atom not found)"
    else:
        whole = mjpeg_clip(tmp_path / "whole.avi").read_bytes()
        movi = whole.index(b"movi")  # the frames' chunks (00dc) follow it; the stream header names 00dc too
        third = [i for i in range(movi, len(whole)) if whole.startswith(b"00dc", i)][2]
        video = tmp_path / "clip.avi"
        video.write_bytes(whole[: third + 200])  # the third frame's chunk, cut after 200 bytes
        expected = "clip.avi: cannot decode frame 2 of frames 0-4 (mjpeg: "
    capfd.readouterr()
    result = runner.invoke(app, ["count", str(ckpt), str(video), "--overlay", str(tmp_path / "ov")])
    assert_clean_failure(result, expected, tmp_path / "ov")
    assert result.stderr.count("\n") == 1, result.stderr
    native = capfd.readouterr().err
    assert "@ 0x" not in native and "mjpeg" not in native and "moov" not in native, native
    frames = [line for line in result.stdout.splitlines() if '"frame"' in line]
    assert len(frames) == (0 if damage == "no-index" else 2)  # the good frames were counted first
    skipped = runner.invoke(app, ["count", str(ckpt), str(video), "--skip-bad"])
    assert skipped.exit_code == 0 and "skipped" in skipped.stderr and expected in skipped.stderr, skipped.output
