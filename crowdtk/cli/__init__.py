"""The `crowdtk` command: one module per subcommand, registered here and nowhere else."""

from __future__ import annotations

from typing import Annotated

import typer

from crowdtk import __version__
from crowdtk.cli import bench, count, demo, eval, export, gen_density, import_, index, labels, select, show, strip_cap, synth, train, vectors, warmup

app = typer.Typer(
    name="crowdtk",
    help="Semi-supervised crowd counting with a small labeling budget (strip selection + Crowd Affinity Propagation).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.command("index")(index.command)
app.command("gen-density")(gen_density.command)
app.command("synth")(synth.command)
app.command("select")(select.command)
app.command("export")(export.command)
app.command("import")(import_.command)
app.add_typer(labels.app, name="labels")
app.command("warmup")(warmup.command)
app.command("vectors")(vectors.command)
app.command("train")(train.command)
app.command("strip-cap")(strip_cap.command)
app.command("eval")(eval.command)
app.command("count")(count.command)
app.command("bench")(bench.command)
app.command("demo")(demo.command)
app.command("show")(show.command)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"crowdtk {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Semi-supervised crowd counting with a small labeling budget."""


def main() -> None:
    app(prog_name="crowdtk")
