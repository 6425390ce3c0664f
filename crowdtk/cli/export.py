"""crowdtk export REGIONS --to FORMAT -o DIR: a labeling package for crops, Label Studio, CVAT or LabelMe (REGIONS may be labels, to review)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crowdtk.cli.common import Log, params_of, run_command
from crowdtk.cli.options import Force, OutputDir, Quiet, Verbose
from crowdtk.cli.options import Regions, Tool
from crowdtk.files import STDIO, atomic_dir, file_digest
from crowdtk.formats import Provenance, export_header
from crowdtk.labeling import export_regions, read_to_label


@run_command("export")
def command(
    regions: Regions,
    to: Annotated[Tool, typer.Option("--to", help="crops (one PNG per region), labelstudio (tasks.json + config.xml), cvat (CVAT for images 1.1) or labelme.", show_default=False)],
    output: OutputDir,
    link: Annotated[bool, typer.Option("--link", help="Symlink the images instead of copying them. [default: off]")] = False,
    image_url: Annotated[str, typer.Option(help="Label Studio: prefix of the tasks' image URLs (before 'images/<file>'). [default: none, relative]")] = "",
    force: Force = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Write the images (or crops) with their regions for a labeling tool, and the instruction for labelers.

    DIR/README.txt says how to load the package into the tool and how to bring the labels back
    with 'crowdtk import REGIONS --from FORMAT PATH'.

    Review rounds: REGIONS may be a labels file ('crowdtk import' output). Its regions go out with
    their head points pre-filled as annotations (Label Studio: the task's annotation; CVAT, LabelMe:
    head points, the images tagged 'done'; crops: the points files), for a second labeler to
    correct; 'crowdtk import LABELS --from FORMAT PATH' reads them back.
    """
    log = Log("export", quiet, verbose)
    to_label = read_to_label(regions)  # a regions file, or a labels file to review
    entries = to_label.entries
    header = export_header(Provenance("export", params_of(regions=regions, to=to.value, link=link, image_url=image_url)),
                           None if regions == STDIO else file_digest(regions))
    with atomic_dir(output, force) as tmp, log.progress(len(entries), "exporting") as advance:
        summary = export_regions(entries, Path(tmp), to.value, header, link=link, image_url=image_url, on_progress=advance,
                                 prefill=to_label.prefill)
    review = "" if to_label.prefill is None else f" with their {sum(len(p) for p in to_label.prefill.values())} head points pre-filled for review"
    log.info(f"wrote {output}: {summary.regions} regions in {summary.images} images{review} for {to.value} ({', '.join(summary.files)}); "
             f"see {output}/README.txt")
