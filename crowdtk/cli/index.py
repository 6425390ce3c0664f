"""crowdtk index ROOT: list a data set's images and head counts as a manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crowdtk.cli.common import claim, params_of, run_command
from crowdtk.cli.options import SESSION, OutputFile, Session, Workers
from crowdtk.formats import Provenance, manifest_header, write_jsonl
from crowdtk.index import build_manifest


@run_command("index")
def command(
    root: Annotated[
        Path,
        typer.Argument(
            help="Data set folder: a ShanghaiTech split, a UCF_CC_50 folder, or images/ + points/.", show_default=False
        ),
    ],
    output: OutputFile = "-",
    workers: Workers = 2,
    session: Session = SESSION,
) -> None:
    """List every image of a data set with its size, head count and sha256 (JSON Lines)."""
    log = session.log
    claim(output, session.force)  # the data set's folder usually holds its manifest: it is no input to keep apart
    with log.progress(None, "indexing") as advance:
        result = build_manifest(root, workers=workers, skip_bad=session.skip_bad, on_progress=advance)
    if result.ignored:
        log.warn(
            f"ignored {len(result.ignored)} annotation picture(s), not images of the data set: {', '.join(result.ignored[:5])}"
        )
    for problem in result.skipped:
        log.warn(f"skipped {problem}")
    if result.dropped_points:
        total = sum(result.dropped_points.values())
        log.warn(
            f"dropped {total} point(s) outside their image in {len(result.dropped_points)} image(s): "
            + ", ".join(f"{k} ({v})" for k, v in list(result.dropped_points.items())[:5])
        )
    header = manifest_header(
        Provenance("index", params_of(root=root.resolve(), workers=workers, skip_bad=session.skip_bad)),
        result.layout,
        result.skipped,
    )
    write_jsonl(output, header, (e.to_record() for e in result.entries))
    log.info(
        f"indexed {len(result.entries)} images ({result.layout} layout), {sum(e.count for e in result.entries)} heads"
    )
