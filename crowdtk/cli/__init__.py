"""The `crowdtk` command: one module per subcommand, registered here and nowhere else."""

from __future__ import annotations

from typing import Annotated

import typer

from crowdtk import __version__
from crowdtk.cli import (
    bench,
    campaign,
    count,
    demo,
    eval,
    export,
    export_model,
    gen_density,
    import_,
    index,
    labels,
    select,
    serve,
    show,
    strip_cap,
    synth,
    train,
    vectors,
    warmup,
)

app = typer.Typer(
    name="crowdtk",
    help="Semi-supervised crowd counting with a small labeling budget (strip selection + Crowd Affinity Propagation).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# In the order of --help (Typer lists the command groups, here labels, after the commands).
for module in (
    index,
    gen_density,
    synth,
    select,
    export,
    import_,
    warmup,
    vectors,
    train,
    strip_cap,
    export_model,
    eval,
    count,
    bench,
    demo,
    show,
    serve,
):
    app.command(module.command.name)(module.command)
app.add_typer(labels.app, name="labels")
app.add_typer(campaign.app, name="campaign")


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
