"""What a command may do to files: --force never deletes an input, one run at a time writes an output,
"wrote X" only when this run wrote X, killed writers' leftovers are removed, and a refused start leaves
nothing behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import FAST_TRAIN, assert_clean_failure, run

import crowdtk.train.loop
from crowdtk.errors import CrowdtkError
from crowdtk.files import atomic_dir, atomic_path, claim_output


@pytest.fixture
def synth_set(tmp_path: Path) -> Path:
    """`crowdtk synth` of 6 + 2 scenes of 128×96 (it writes S/train/manifest.jsonl) and random strips in
    S/train/r.jsonl."""
    s = tmp_path / "S"
    assert run("synth", "-o", s, "--train", 6, "--test", 2, "--width", 128, "--height", 96, "-q").exit_code == 0
    result = run("select", s / "train" / "manifest.jsonl", "--budget", "0.2", "-o", s / "train" / "r.jsonl", "-q")
    assert result.exit_code == 0, result.output
    return s


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- --force spares the inputs


def test_gen_density_refuses_to_replace_the_folder_holding_its_manifest(synth_set: Path) -> None:
    before = files_under(synth_set)
    result = run("gen-density", synth_set / "train" / "manifest.jsonl", "-o", synth_set / "train", "--force")
    assert_clean_failure(result, "manifest.jsonl")
    assert "an input of this command" in result.stderr
    assert files_under(synth_set) == before


def test_export_refuses_to_replace_the_data_set_holding_its_regions_and_images(synth_set: Path) -> None:
    before = files_under(synth_set)
    result = run("export", synth_set / "train" / "r.jsonl", "--to", "crops", "-o", synth_set, "--force")
    assert_clean_failure(result, "r.jsonl")
    assert files_under(synth_set) == before


def test_an_output_named_as_an_image_of_the_manifest_is_refused(synth_set: Path) -> None:
    image = sorted((synth_set / "train" / "images").iterdir())[0]
    data = image.read_bytes()
    result = run("select", synth_set / "train" / "manifest.jsonl", "-o", image, "--force")
    assert_clean_failure(result, image.name)
    assert image.read_bytes() == data


def test_an_output_inside_an_input_folder_is_refused(synth_set: Path, strip_pool, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    result = run(
        "train",
        strip_pool["labels"],
        "--freeze",
        "encoder",
        "--feature-cache",
        cache,
        "-o",
        cache / "m.safetensors",
        "--epochs",
        "1",
        *FAST_TRAIN,
    )
    assert_clean_failure(result, "lies inside")


def test_select_over_its_own_manifest_is_refused(synth_set: Path) -> None:
    manifest = synth_set / "train" / "manifest.jsonl"
    text = manifest.read_text()
    assert_clean_failure(run("select", manifest, "-o", manifest, "--force"), "manifest.jsonl")
    assert manifest.read_text() == text


# --------------------------------------------------------------------------- one writer per output


def test_a_second_run_on_a_held_checkpoint_stops_at_once_naming_the_holder(strip_pool, tmp_path: Path) -> None:
    out = tmp_path / "same.safetensors"
    with claim_output(out, force=False):  # what a first `train -o same.safetensors` holds while it runs
        for extra in ((), ("--cap",), ("--resume",)):
            result = run("train", strip_pool["labels"], *extra, "--epochs", "1", "-o", out, *FAST_TRAIN)
            assert_clean_failure(result, f"process {os.getpid()}")
            assert "writing this output" in result.stderr
        assert not out.exists()
    result = run("train", strip_pool["labels"], "--epochs", "1", "-o", out, *FAST_TRAIN)  # free again
    assert result.exit_code == 0, result.output


def test_a_second_export_on_a_held_folder_stops_at_once(synth_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "package"
    with claim_output(out, force=False, folder=True):
        assert_clean_failure(
            run("export", synth_set / "train" / "r.jsonl", "--to", "crops", "-o", out), "writing this output"
        )
        assert not out.exists()
    assert not list(tmp_path.glob(".package*")), "the lock file is removed with the claim"


def test_an_output_that_appears_during_the_run_still_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    with claim_output(out, force=False):
        out.write_text("written by another program\n")
        with pytest.raises(CrowdtkError, match="another program"), atomic_path(out) as tmp:
            tmp.write_text("ours\n")
    assert out.read_text() == "written by another program\n"
    folder = tmp_path / "package"
    with claim_output(folder, force=False, folder=True):
        folder.mkdir()
        with pytest.raises(CrowdtkError, match="another program"), atomic_dir(folder, force=True) as tmp:
            (tmp / "x").write_text("ours")
    assert not (folder / "x").exists()
    with claim_output(out, force=True):  # with --force the run replaces it, and rewrites its own output freely
        for text in ("epoch 1\n", "epoch 2\n"):
            with atomic_path(out) as tmp:
                tmp.write_text(text)
    assert out.read_text() == "epoch 2\n"


# --------------------------------------------------------------------------- "wrote X" only when X was written


def test_resume_refuses_when_the_best_checkpoint_was_deleted(strip_pool, tmp_path: Path) -> None:
    out = tmp_path / "n.safetensors"
    result = run("train", strip_pool["labels"], "--epochs", "2", "--keep", "best", "-o", out, *FAST_TRAIN)
    assert result.exit_code == 0, result.output
    out.unlink()
    result = run(
        "train",
        strip_pool["labels"],
        "--epochs",
        "3",
        "--keep",
        "best",
        "--lr-schedule",
        "constant",
        "--resume",
        "-o",
        out,
        *FAST_TRAIN,
    )
    assert_clean_failure(result, "missing")
    assert "wrote" not in result.output
    assert not out.exists()


def test_density_scale_must_be_finite_and_positive(strip_pool, tmp_path: Path) -> None:
    for value in ("0", "-1", "nan", "inf"):
        result = run(
            "train",
            strip_pool["labels"],
            "--density-scale",
            value,
            "--epochs",
            "1",
            "-o",
            tmp_path / "m.safetensors",
            *FAST_TRAIN,
        )
        assert_clean_failure(result, "--density-scale", code=2)
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("keep", ["best", "last"])
def test_a_run_whose_every_validation_is_nan_fails_and_leaves_the_older_checkpoint_alone(
    strip_pool, tmp_path: Path, monkeypatch, keep: str
) -> None:
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"an older checkpoint")
    monkeypatch.setattr(crowdtk.train.loop, "validate", lambda *args, **kwargs: float("nan"))
    result = run("train", strip_pool["labels"], "--epochs", "2", "--keep", keep, "--force", "-o", out, *FAST_TRAIN)
    assert_clean_failure(result, "NaN")
    assert "wrote" not in result.output
    if keep == "best":  # never replaced: the older file is as it was, and not announced as this run's
        assert out.read_bytes() == b"an older checkpoint"
    else:  # replaced after every epoch by this run's counter, which predicts NaN: removed
        assert not out.exists()


# --------------------------------------------------------------------------- leftovers of killed writers


def test_a_rerun_removes_the_temporaries_of_killed_writers_and_keeps_live_ones(synth_set: Path, tmp_path: Path) -> None:
    dead = 2**22 + 12345  # above Linux's largest pid: no such process
    out = tmp_path / "r.jsonl"
    stale_file = tmp_path / f".r.jsonl.{dead}.abcd1234.tmp"
    stale_file.write_text("half a regions file")
    stale_dir = tmp_path / f".package.{dead}.abcd1234.tmp"
    (stale_dir / "images").mkdir(parents=True)
    live = tmp_path / f".r.jsonl.{os.getpid()}.abcd1234.tmp"  # a writer that is still running
    live.write_text("in progress")
    assert run("select", synth_set / "train" / "manifest.jsonl", "-o", out, "-q").exit_code == 0
    assert not stale_file.exists() and live.exists()
    assert run("export", out, "--to", "crops", "-o", tmp_path / "package", "-q").exit_code == 0
    assert not stale_dir.exists()


# --------------------------------------------------------------------------- refused before any work


def test_an_output_name_too_long_for_the_temporaries_is_refused_before_the_work(
    synth_set: Path, tmp_path: Path
) -> None:
    out = tmp_path / ("r" * 240 + ".jsonl")
    result = run("select", synth_set / "train" / "manifest.jsonl", "-o", out)
    assert_clean_failure(result, "shorten the name")
    assert [p.name for p in tmp_path.iterdir()] == ["S"]


def test_bench_with_a_missing_baseline_creates_nothing(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "x7"
    result = run(
        "bench",
        "--train",
        tiny_data / "data" / "train",
        "--test",
        tiny_data / "data" / "test",
        "--check",
        tmp_path / "missing.json",
        "-o",
        out,
        "--seeds",
        1,
        "--steps",
        2,
    )
    assert_clean_failure(result, "missing.json")
    assert not out.exists()


def test_demo_with_no_training_images_creates_nothing(tmp_path: Path) -> None:
    out = tmp_path / "x7"
    assert_clean_failure(run("demo", "--synth-train", 0, "-o", out), "--synth-train", code=2)
    assert not out.exists()
