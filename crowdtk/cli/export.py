"""crowdtk export REGIONS --to FORMAT -o DIR: a labeling package for a registered tool (crops, Label Studio, CVAT,
LabelMe, ...; REGIONS may be labels, to review)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from crowdtk.cli.common import claim, params_of, run_command
from crowdtk.cli.groups import Deferred
from crowdtk.cli.options import PREDICTION, SESSION, OutputDir, Regions, Session, tool_choices
from crowdtk.errors import UsageError
from crowdtk.files import STDIO, atomic_dir, check_inputs_exist, file_digest
from crowdtk.formats import Provenance, export_header
from crowdtk.labeling import TOOLS, export_regions, read_to_label
from crowdtk.predict_config import PredictConfig
from crowdtk.registry import listing


def _to() -> Any:
    # Made from the tools' records when the command is built (crowdtk.cli.groups.Deferred).
    return Annotated[tool_choices(), typer.Option("--to", help=f"{listing(TOOLS)}.", show_default=False)]


@run_command("export")
def command(
    regions: Regions,
    *,  # keyword-only: --to (required) is deferred, so it has a default in Python's eyes
    to: str = Deferred(_to),
    output: OutputDir,
    link: Annotated[
        bool, typer.Option("--link", help="Symlink the images instead of copying them. [default: off]")
    ] = False,
    image_url: Annotated[
        str,
        typer.Option(
            help="Label Studio: prefix of the tasks' image URLs (before 'images/<file>'). [default: none, relative]"
        ),
    ] = "",
    prelabel: Annotated[
        Path | None,
        typer.Option(
            "--prelabel",
            help="Counter checkpoint whose predicted head points go into the package as suggestions for the labelers "
            "to correct. [default: none]",
            show_default=False,
        ),
    ] = None,
    predict: PredictConfig = PREDICTION.without("flip_average"),
    session: Session = SESSION.without("skip_bad"),
) -> None:
    """Write the images (or crops) with their regions for a labeling tool, and the instruction for labelers.

    DIR/README.txt says how to load the package into the tool and how to bring the labels back
    with 'crowdtk import REGIONS --from FORMAT PATH'.

    Review rounds: REGIONS may be a labels file ('crowdtk import' output). Its regions go out with
    their head points pre-filled as annotations (Label Studio: the task's annotation; CVAT, LabelMe:
    head points, the images tagged 'done'; crops: the points files), for a second labeler to
    correct; 'crowdtk import LABELS --from FORMAT PATH' reads them back.

    Pre-labels: --prelabel CKPT adds the counter's predicted heads in each region (as many as its
    rounded predicted count) as suggestions (Label Studio: the task's prediction; CVAT: points of
    source 'auto'; LabelMe: points flagged 'suggested'; crops: the points files, marked). What the
    labelers leave is imported; an image still holding unconfirmed suggestions counts as missing.
    """
    if prelabel is not None:
        check_inputs_exist(prelabel)
    claim(output, session.force, folder=True, inputs=(regions, prelabel, predict.feature_cache))
    log = session.log
    to_label = read_to_label(regions)  # a regions file, or a labels file to review
    entries = to_label.entries
    if prelabel is not None and to_label.prefill is not None:
        raise UsageError(
            f"--prelabel with {regions}, a labels file: its regions are labeled already",
            "export the regions file for pre-labels, or the labels file without --prelabel for review",
        )
    header = export_header(
        Provenance("export", params_of(regions=regions, to=to, link=link, image_url=image_url, prelabel=prelabel)),
        None if regions == STDIO else file_digest(regions),
    )
    with atomic_dir(output, session.force) as tmp:
        prelabels = None
        if prelabel is not None:  # loads torch: only with --prelabel
            from crowdtk.prelabel import prelabel as suggest

            with log.progress(len(entries), "suggesting heads") as advance:
                prelabels, unfinished = suggest(
                    prelabel,
                    entries,
                    device=predict.device,
                    max_side=predict.max_side,
                    feature_cache=predict.feature_cache,
                    on_progress=advance,
                )
            if unfinished:
                log.warn(unfinished)
        with log.progress(len(entries), "exporting") as advance:
            summary = export_regions(
                entries,
                Path(tmp),
                to,
                header,
                link=link,
                image_url=image_url,
                on_progress=advance,
                prefill=to_label.prefill,
                prelabels=prelabels,
            )
    review = (
        ""
        if to_label.prefill is None
        else f" with their {sum(len(p) for p in to_label.prefill.values())} head points pre-filled for review"
    )
    if prelabels is not None:
        review = (
            f" with {sum(len(s.points) for s in prelabels.images.values())} suggested heads ({prelabels.model_version})"
        )
    log.info(
        f"wrote {output}: {summary.regions} regions in {summary.images} images{review} for {to} "
        f"({', '.join(summary.files)}); see {output}/README.txt"
    )
