"""crowdtk index ROOT: list a data set's images and head counts as a manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from crowdtk.cli.common import claim, params_of, run_command
from crowdtk.cli.groups import Deferred
from crowdtk.cli.options import SESSION, OutputFile, Session, Workers, choices
from crowdtk.formats import Provenance, manifest_header, write_jsonl
from crowdtk.index import LAYOUTS, SPLITS, build_manifest
from crowdtk.registry import listing, names

Split = choices("Split", SPLITS)


# ROOT and --split, made from the layouts' records when the command is built (crowdtk.cli.groups.Deferred).
def _root() -> Any:
    return Annotated[
        Path, typer.Argument(help=f"Data set folder, in one of these layouts: {listing(LAYOUTS)}.", show_default=False)
    ]


def _split() -> Any:
    with_lists = names([layout for layout in LAYOUTS.values() if layout.split is not None], "or")
    return Annotated[
        Split | None,
        typer.Option(
            "--split",
            help=f"Index only the images the layout's list of this split names, with the list's attributes "
            f"(layouts with split lists: {with_lists}; NWPU-Crowd's ROOT/val.txt). [default: every image]",
            show_default=False,
        ),
    ]


@run_command("index")
def command(
    root: Path = Deferred(_root),
    output: OutputFile = "-",
    split: str | None = Deferred(_split, None),
    workers: Workers = 2,
    session: Session = SESSION,
) -> None:
    """List every image of a data set with its size, head count and sha256 (JSON Lines)."""
    log = session.log
    claim(output, session.force)  # the data set's folder usually holds its manifest: it is no input to keep apart
    with log.progress(None, "indexing") as advance:
        result = build_manifest(root, workers=workers, skip_bad=session.skip_bad, on_progress=advance, split=split)
    if result.ignored:
        log.warn(
            f"ignored {len(result.ignored)} annotation picture(s), not images of the data set: "
            f"{', '.join(result.ignored[:5])}"
        )
    session.warn_skipped(result.skipped)
    if result.dropped_points:
        total = sum(result.dropped_points.values())
        log.warn(
            f"dropped {total} point(s) outside their image in {len(result.dropped_points)} image(s): "
            + ", ".join(f"{k} ({v})" for k, v in list(result.dropped_points.items())[:5])
        )
    header = manifest_header(
        Provenance("index", params_of(root=root.resolve(), split=split, workers=workers, skip_bad=session.skip_bad)),
        result.layout,
        result.skipped,
    )
    write_jsonl(output, header, (e.to_record() for e in result.entries))
    unannotated = (
        f", {result.unannotated} without annotations (counted and selected from, never evaluated)"
        if result.unannotated
        else ""
    )
    log.info(
        f"indexed {len(result.entries)} images ({result.layout} layout), "
        f"{sum(e.count for e in result.entries)} heads{unannotated}"
    )
