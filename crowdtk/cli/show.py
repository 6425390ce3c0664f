"""crowdtk show ARTIFACT -o picture.png: draw an artifact as the paper's figures (Fig. 4, 5, 6)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crowdtk.cli.common import claim, run_command
from crowdtk.cli.options import SESSION, MaxSide, Session
from crowdtk.errors import CrowdtkError, UsageError
from crowdtk.predict_config import PredictConfig

ARTIFACT_HELP = (
    "What to draw: a regions file (select) or labels file (import) -> the image with its regions in red; "
    "a checkpoint with --manifest -> image, true and predicted density (Fig. 6); a checkpoint trained with --cap "
    "and --labels -> CAP's affinity maps (Fig. 5); a bench results.json -> MAE against budget (Fig. 4)."
)


@run_command("show")
def command(
    artifact: Annotated[Path, typer.Argument(help=ARTIFACT_HELP, show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="PNG file to write.", show_default=False)],
    image: Annotated[
        str | None, typer.Option("--image", help="Id of the image to draw. [default: the first image (with regions)]")
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            help="With a regions/labels file: also draw this (warm-up) counter's predicted density. [default: none]",
        ),
    ] = None,
    manifest: Annotated[
        Path | None,
        typer.Option(
            "--manifest",
            help="With a checkpoint: draw image, ground truth and "
            "prediction for an image of this manifest. [default: none]",
        ),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            "--labels",
            help="With a checkpoint trained with --cap: draw affinity "
            "maps for an image of this labels file. [default: none]",
        ),
    ] = None,
    positions: Annotated[
        int, typer.Option("--positions", min=1, help="Number of labeled positions whose affinity maps are drawn.")
    ] = 2,
    max_side: MaxSide = PredictConfig.max_side,
    session: Session = SESSION.without("skip_bad"),
) -> None:
    """Draw ARTIFACT as a PNG picture; the kind of picture follows from what ARTIFACT is."""
    from crowdtk import pictures
    from crowdtk.formats import BENCH_RESULTS, CHECKPOINT, LABELS, REGIONS, peek_format

    log = session.log
    if output.suffix.lower() != ".png":
        raise UsageError(f"{output}: crowdtk show writes PNG pictures", "name the output *.png")
    claim(output, session.force, inputs=(artifact, checkpoint, manifest, labels))
    kind = peek_format(artifact)
    if kind is None:
        raise CrowdtkError(
            f"{artifact}: not a crowdtk artifact crowdtk show can draw",
            "pass a regions or labels file, a checkpoint (.safetensors) or a bench results.json",
        )

    def refuse(option: str, value: object, use: str) -> None:
        if value is not None:
            raise UsageError(f"{artifact}: {option} does not apply to a '{kind}' file", use)

    if kind in (REGIONS, LABELS):
        refuse("--manifest", manifest, "drop it; --manifest goes with a checkpoint")
        refuse("--labels", labels, "drop it; --labels goes with a checkpoint")
        drawn = pictures.show_regions(output, artifact, image_id=image, checkpoint=checkpoint, max_side=max_side)
        what = f"{kind} of image {drawn}" + (" with the predicted density" if checkpoint is not None else "")
    elif kind == CHECKPOINT:
        refuse("--checkpoint", checkpoint, "the checkpoint is the ARTIFACT itself; drop --checkpoint")
        if (manifest is None) == (labels is None):
            raise UsageError(
                f"{artifact}: a checkpoint needs "
                f"{'one of' if manifest is None else 'only one of'} --manifest or --labels",
                "pass --manifest MANIFEST for image/ground "
                "truth/prediction, or --labels LABELS for CAP's affinity maps",
            )
        if manifest is not None:
            drawn = pictures.show_prediction(output, artifact, manifest, image_id=image, max_side=max_side)
            what = f"ground truth and prediction for image {drawn}"
        else:
            assert labels is not None  # exactly one of --manifest and --labels, checked above
            drawn = pictures.show_affinity(output, artifact, labels, image_id=image, positions=positions)
            what = f"{positions} affinity map(s) for image {drawn}"
    elif kind == BENCH_RESULTS:
        for option, value in (
            ("--image", image),
            ("--checkpoint", checkpoint),
            ("--manifest", manifest),
            ("--labels", labels),
        ):
            refuse(option, value, f"drop {option}; the budget plot uses the results file only")
        pictures.show_budget(output, artifact)
        what = "MAE against labeling budget"
    else:
        raise CrowdtkError(
            f"{artifact}: crowdtk show cannot draw a '{kind}' artifact",
            "pass a regions or labels file, a checkpoint (.safetensors) or a bench results.json",
        )
    log.info(f"wrote {output}: {what}")
