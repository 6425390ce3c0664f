"""The shared option vocabulary (crowdtk.cli.options): choices are listed and checked before any work,
and command lines that cannot run as given are usage errors (exit 2), like Click's own."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from crowdtk.cli import app
from crowdtk.train_config import MODEL_NAMES

runner = CliRunner()


@pytest.mark.parametrize("command", ["train", "warmup", "bench", "demo"])
def test_model_lists_its_choices_and_refuses_others(command: str, tmp_path: Path) -> None:
    help_text = runner.invoke(app, [command, "--help"]).output
    assert "<" + "|".join(MODEL_NAMES) + ">" in help_text
    args = {"train": ["train", "x.jsonl", "-o", str(tmp_path / "m.safetensors")],
            "warmup": ["warmup", "x.jsonl", "-o", str(tmp_path / "m.safetensors")],
            "bench": ["bench", "--train", "t", "--test", "t", "-o", str(tmp_path / "b")],
            "demo": ["demo", "-o", str(tmp_path / "d")]}[command]
    result = runner.invoke(app, [*args, "--model", "resnet"])
    assert result.exit_code == 2 and "resnet" in result.output
    assert not any(tmp_path.iterdir())  # refused before any work


@pytest.mark.parametrize("command", ["train", "eval", "count", "vectors"])
def test_device_lists_its_choices_and_refuses_others(command: str, tmp_path: Path) -> None:
    assert "<auto|cpu|cuda>" in runner.invoke(app, [command, "--help"]).output
    args = {"train": ["train", "x.jsonl", "-o", "m.safetensors"], "eval": ["eval", "m.safetensors", "x.jsonl"],
            "count": ["count", "m.safetensors", "x.png"], "vectors": ["vectors", "m.safetensors", "x.jsonl", "-o", "v.npz"]}[command]
    result = runner.invoke(app, [*args, "--device", "gpu"])
    assert result.exit_code == 2 and "gpu" in result.output


def test_import_without_a_source_is_a_usage_error(tmp_path: Path) -> None:
    regions = tmp_path / "regions.jsonl"
    regions.write_text("{}\n")
    result = runner.invoke(app, ["import", str(regions), "-o", str(tmp_path / "labels.jsonl")])
    assert result.exit_code == 2 and "--oracle" in result.stderr
    assert not (tmp_path / "labels.jsonl").exists()


def test_show_refuses_a_non_png_output_as_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["show", str(tmp_path / "regions.jsonl"), "-o", str(tmp_path / "out.jpg")])
    assert result.exit_code == 2 and "PNG" in result.stderr


def test_a_bad_data_file_is_still_exit_1(tmp_path: Path) -> None:
    """Usage errors are 2; a file that is wrong is 1, as before."""
    bad = tmp_path / "regions.jsonl"
    bad.write_text("not json\n")
    result = runner.invoke(app, ["show", str(bad), "-o", str(tmp_path / "out.png")])
    assert result.exit_code == 1 and "not a crowdtk artifact" in result.stderr
