"""crowdtk import REGIONS (--from FORMAT PATH | --oracle MANIFEST) -o labels.jsonl: labels back from labelers."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Any

import typer

from crowdtk.cli.common import claim, params_of, run_command
from crowdtk.cli.groups import Deferred
from crowdtk.cli.options import SESSION, OutputFile, Regions, Session, tool_choices
from crowdtk.errors import UsageError
from crowdtk.files import STDIO, file_digest
from crowdtk.formats import Provenance, labels_header, read_manifest, write_jsonl
from crowdtk.labeling import TOOLS, earlier_rounds, import_round, read_to_label
from crowdtk.registry import names


# PATH and --from, made from the tools' records when the command is built (crowdtk.cli.groups.Deferred).
def _path() -> Any:
    returned = "; ".join(f"{t.name}: {t.reads}" for t in TOOLS.values())
    return Annotated[
        Path | None,
        typer.Argument(
            help=f"What the labeling tool returned ({returned}). [default: none, with --oracle]", show_default=False
        ),
    ]


def _source() -> Any:
    return Annotated[
        tool_choices() | None,
        typer.Option(
            "--from",
            help=f"Format of PATH: {names(TOOLS, 'or')}. [default: none]",
            show_default=False,
        ),
    ]


@run_command("import")
def command(
    regions: Regions,
    path: Path | None = Deferred(_path, None),
    source: str | None = Deferred(_source, None),
    oracle: Annotated[
        str | None,
        typer.Option(
            metavar="FILE",
            help="Simulated labeler: fill the regions with the ground-truth points of this manifest. [default: none]",
        ),
    ] = None,
    output: OutputFile = "-",
    merge: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="FILE",
            help="Labels file of an earlier round to combine with these "
            "(repeatable), e.g. the warm-up labels. [default: none]",
        ),
    ] = None,
    allow_missing: Annotated[
        bool,
        typer.Option(
            "--allow-missing",
            help="Leave out regions nobody labeled instead of stopping (they are never taken as empty). [default: off]",
        ),
    ] = False,
    session: Session = SESSION.without("skip_bad"),
) -> None:
    """Read labeled regions back (or simulate the labeler) and write a labels file:
    the regions and the head points inside them.

    Points outside their regions are dropped and counted; an image (crops: a region) that came back
    without an annotation stops the import unless --allow-missing. --merge adds earlier rounds, so that
    warm-up and MDC labels go to 'train' as one file.

    Review rounds: REGIONS may be a labels file, the one 'crowdtk export LABELS' sent out with its points
    pre-filled. Its regions are read back; a point within 0.01 px of a pre-filled one is that point
    (exact coordinates, its order), so a package returned without edits gives the same labels.
    'crowdtk labels diff LABELS NEW' lists what the reviewer changed.
    """
    log = session.log
    if (source is None) == (oracle is None):
        raise UsageError(
            "give either --from FORMAT PATH (labels from a tool) or --oracle MANIFEST (simulated labeler)",
            "see crowdtk import --help",
        )
    if source is not None and path is None:
        raise UsageError(f"--from {source} needs PATH, what the labeling tool exported", "add it after REGIONS")
    if oracle is not None and path is not None:
        raise UsageError(
            f"PATH {path} is given with --oracle", "drop PATH, or use --from FORMAT PATH instead of --oracle"
        )
    claim(output, session.force, inputs=(regions, path, oracle, *(merge or [])))
    regions_name = "<stdin>" if regions == STDIO else regions
    to_label = read_to_label(regions)  # a regions file, or a labels file to review
    regions_header, entries = to_label.header, to_label.entries
    pool = regions_header.get("manifest_sha256")
    earlier = earlier_rounds(merge or [], pool, str(regions_name))
    manifest = read_manifest(oracle)[1] if oracle is not None else None
    # Only the oracle reports progress (a tool's output is read in one go).
    progress = log.progress(len(entries), "oracle labels") if oracle is not None else contextlib.nullcontext(None)
    with progress as advance:
        labeled = import_round(
            entries,
            earlier,
            fmt=source,
            path=path,
            manifest=manifest,
            allow_missing=allow_missing,
            manifest_name=oracle or "MANIFEST",
            regions_name=regions_name,
            on_progress=advance,
            prefill=to_label.prefill,
        )
    for note in labeled.notes:
        log.warn(note)
    params = params_of(
        regions=regions,
        path=path,
        source=source,
        oracle=oracle,
        merge=[str(p) for p in merge or []],
        allow_missing=allow_missing,
    )
    header = labels_header(Provenance("import", params), None if regions == STDIO else file_digest(regions), pool)
    write_jsonl(output, header, (e.to_record() for e in labeled.labels))
    done = f"{labeled.result.heads} heads in {labeled.regions} regions of {len(labeled.result.entries)} images"
    if labeled.pool_area is not None:
        pool = labeled.pool_area
        log.info(
            f"oracle labeled {done}"
            + (
                f" (the regions file expected {regions_header['expected_heads']:.0f})"
                if regions_header.get("expected_heads") is not None
                else ""
            )
            + f": {100 * labeled.area / pool:.2f}% of the pool's area"
            + (
                f" ({100 * labeled.labels_area / pool:.2f}% with the merged labels, {labeled.labels_heads} heads)"
                if labeled.merged
                else ""
            )
        )
    else:
        log.info(
            f"imported {done} ({100 * labeled.area / max(labeled.image_area, 1):.2f}% of these images' area)"
            + (f"; {len(labeled.labels)} images after merging" if labeled.merged else "")
        )
