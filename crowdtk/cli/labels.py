"""crowdtk labels diff A B: what a review round changed, per region, as JSON Lines on stdout."""

from __future__ import annotations

from typing import Annotated

import typer

from crowdtk.cli.common import run_command
from crowdtk.cli.options import SESSION, Session
from crowdtk.errors import UsageError
from crowdtk.files import STDIO
from crowdtk.formats import dumps_record, read_labels
from crowdtk.labeling import diff_labels

app = typer.Typer(
    name="labels",
    help="Work with labels files: compare two labelings of the same regions (review rounds).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@app.command("diff")
@run_command("labels diff")
def diff(
    a: Annotated[
        str,
        typer.Argument(
            help="Labels file before, e.g. the one exported for review; '-' reads stdin.", show_default=False
        ),
    ],
    b: Annotated[
        str,
        typer.Argument(
            help="Labels file after, e.g. 'crowdtk import A --from "
            "FORMAT PATH' of the reviewed package; '-' reads stdin.",
            show_default=False,
        ),
    ],
    session: Session = SESSION.without("skip_bad", "force"),
) -> None:
    """Per region, the head points B added, removed and moved against A.

    One JSON line per region on stdout (docs/formats.md, 'labels diff'), a summary on stderr.

    Per region the points of A and B are paired one to one, minimizing the sum of the paired
    distances plus 8 px for each point left unpaired; only points at most 16 px apart can pair.
    A pair at most 4 px apart is unchanged, a pair farther apart is moved; an unpaired point of
    A is removed, one of B added. A region labeled in only one file lists its points as removed
    (only in A) or added (only in B).
    """
    log = session.log
    if a == STDIO and b == STDIO:
        raise UsageError("A and B are both '-' (stdin)", "pass at most one of them as '-'")
    _, before = read_labels(a)
    _, after = read_labels(b)
    name_a, name_b = ("<stdin>" if a == STDIO else a), ("<stdin>" if b == STDIO else b)
    result = diff_labels(before, after, name_a, name_b)
    for region in result.regions:
        typer.echo(dumps_record(region.to_record()))
    only = [f"{n} labeled only in {name}" for n, name in ((result.only("a"), name_a), (result.only("b"), name_b)) if n]
    totals = result.totals()
    log.info(
        f"{name_a} -> {name_b}: {result.images} images, {len(result.regions)} regions"
        + (f" ({', '.join(only)})" if only else "")
        + ": "
        + ", ".join(f"{n} {what}" for what, n in totals.items())
    )
    for name, n in result.outside.items():
        log.warn(f"{name}: {n} point(s) lie outside every region of their image; they were not compared")
