"""The shared option vocabulary (crowdtk.cli.options): choices are listed and checked before any work,
command lines that cannot run as given are usage errors (exit 2), like Click's own, and the groups
of options (crowdtk.cli.groups) are declared once and taken in their place."""

from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path
from typing import Annotated

import pytest
import typer
import typer.main
from typer import _click  # the Click that Typer bundles
from typer.core import TyperArgument, TyperGroup, TyperOption
from typer.testing import CliRunner

from crowdtk.cli import app
from crowdtk.cli.common import run_command
from crowdtk.cli.groups import Group
from crowdtk.model_records import MODELS
from crowdtk.selection import ENGINES, SHAPES, STRATEGIES
from crowdtk.train_config import CAP_AFFINITIES

runner = CliRunner()


def _commands() -> MutableMapping[str, _click.Command]:
    """crowdtk's commands by name (the app is a group of commands)."""
    group = typer.main.get_command(app)
    assert isinstance(group, TyperGroup)
    return group.commands


COMMANDS = _commands()


def _options(command: str) -> list[tuple]:
    """A command's parameters as --help shows them, in its order."""
    shown = []
    for p in COMMANDS[command].params:
        assert isinstance(p, (TyperOption, TyperArgument)), p  # Typer's parameters, which carry their help
        shown.append((p.name, tuple(p.opts), p.help, p.default))
    return shown


def _pair(
    command: str,
    /,
    size: Annotated[int, typer.Option(help="Size.")] = 3,
    name: Annotated[str, typer.Option(help="Name.")] = "x",
) -> tuple:
    return command, size, name


def _toy(group: Group, seen: dict) -> typer.Typer:
    @run_command("toy")
    def toy(
        first: Annotated[int, typer.Option()] = 1,
        # The group stands for the value it builds, which the command receives in its place (hence the type: ignore).
        pair: tuple = group,  # type: ignore[assignment]
        last: Annotated[int, typer.Option()] = 2,
    ) -> None:
        seen.update(first=first, pair=pair, last=last)

    toy_app = typer.Typer(add_completion=False)
    toy_app.command()(toy)
    return toy_app


def test_a_group_s_options_stand_in_its_place_and_arrive_as_one_value() -> None:
    seen: dict = {}
    toy_app = _toy(Group(_pair), seen)
    assert [p.name for p in typer.main.get_command(toy_app).params] == ["first", "size", "name", "last"]
    result = runner.invoke(toy_app, ["--size", "5", "--last", "4"])
    assert result.exit_code == 0, result.output
    assert seen == {"first": 1, "pair": ("toy", 5, "x"), "last": 4}  # the builder is given the command's name first


def test_a_group_without_an_option_does_not_offer_it_and_keeps_its_default() -> None:
    seen: dict = {}
    toy_app = _toy(Group(_pair).without("name"), seen)
    assert [p.name for p in typer.main.get_command(toy_app).params] == ["first", "size", "last"]
    assert runner.invoke(toy_app, ["--name", "y"]).exit_code == 2
    assert runner.invoke(toy_app, []).exit_code == 0 and seen["pair"] == ("toy", 3, "x")
    with pytest.raises(ValueError, match="colour"):
        Group(_pair).without("colour")


def test_train_and_warmup_take_the_same_training_options() -> None:
    """Declared once: warmup's options are train's less CAP's (--cap, --cap-affinity, --cap-temperature) and --init,
    with the same help and defaults but for --model."""
    train = [p for p in _options("train") if p[0] not in ("cap", "cap_affinity", "cap_temperature", "init")]
    warmup = _options("warmup")
    assert [p[0] for p in train] == [p[0] for p in warmup]
    assert [p for p in train if p[0] != "model"] == [p for p in warmup if p[0] != "model"]


def test_the_commands_that_run_a_counter_take_the_same_prediction_options() -> None:
    def prediction(command: str) -> list[tuple]:
        return [p for p in _options(command) if p[0] in ("max_side", "feature_cache", "device")]

    assert prediction("eval") == prediction("vectors")
    assert prediction("count") == [p for p in prediction("eval") if p[0] != "feature_cache"]


def _command_line(command: str, tmp: Path) -> list[str]:
    return {
        "train": ["train", "x.jsonl", "-o", str(tmp / "m.safetensors")],
        "warmup": ["warmup", "x.jsonl", "-o", str(tmp / "m.safetensors")],
        "bench": ["bench", "--train", "t", "--test", "t", "-o", str(tmp / "b")],
        "demo": ["demo", "-o", str(tmp / "d")],
        "eval": ["eval", "m.safetensors", "x.jsonl"],
        "count": ["count", "m.safetensors", "x.png"],
        "vectors": ["vectors", "m.safetensors", "x.jsonl", "-o", str(tmp / "v.npz")],
        "select": ["select", "x.jsonl", "-o", str(tmp / "r.jsonl")],
    }[command]


@pytest.mark.parametrize(
    "command, option, values, wrong",
    [
        *((command, "--model", tuple(MODELS), "resnet") for command in ("train", "warmup", "bench", "demo")),
        *((command, "--device", ("auto", "cpu", "cuda"), "gpu") for command in ("train", "eval", "count", "vectors")),
        ("train", "--cap-affinity", CAP_AFFINITIES, "dot"),
        ("select", "--strategy", tuple(STRATEGIES), "best"),
        ("select", "--shape", SHAPES, "circle"),
        ("select", "--engine", ENGINES, "torch"),
    ],
)
def test_a_choice_lists_its_values_and_refuses_others(
    command: str, option: str, values: tuple[str, ...], wrong: str, tmp_path: Path
) -> None:
    assert "<" + "|".join(values) + ">" in runner.invoke(app, [command, "--help"]).output
    result = runner.invoke(app, [*_command_line(command, tmp_path), option, wrong])
    assert result.exit_code == 2 and wrong in result.output
    assert not any(tmp_path.iterdir())  # refused before any work


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
