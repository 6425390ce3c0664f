"""crowdtk eval CKPT MANIFEST: MAE, RMSE, NAE and GAME of a counter on a labeled set (Eq. 11), MAE per level, and
the localization of its heads (docs/metrics.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer

from crowdtk.cli.common import claim, run_command
from crowdtk.cli.options import PREDICTION, SESSION, CounterCheckpoint, Manifest, Session
from crowdtk.errors import CrowdtkError, UsageError
from crowdtk.files import STDIO, atomic_path, check_inputs_exist
from crowdtk.formats import read_manifest
from crowdtk.predict_config import PredictConfig


def localization_radii(values: list[str] | None) -> tuple[float, ...]:
    """--localization's values (repeated, or comma lists: 4,8,16) as radii in pixels, in order, each once."""
    radii: dict[float, None] = {}
    for item in (part.strip() for value in values or () for part in value.split(",")):
        try:
            radius = float(item)
        except ValueError:
            radius = math.nan
        if not math.isfinite(radius) or radius <= 0:
            raise UsageError(f"--localization {item!r}: not a radius", "give radii in pixels above 0, e.g. 4,8,16")
        radii[radius] = None
    return tuple(radii)


@run_command("eval")
def command(
    checkpoint: CounterCheckpoint,
    manifest: Manifest,
    csv_path: Annotated[
        Path | None,
        typer.Option(
            "--csv",
            help="Write per-image results (image, true, predicted, error, GAME, relative error, level attributes, "
            "matched heads) here. [default: none]",
        ),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print one JSON object (mae, rmse, nae, game, levels, localization, n_images) instead of a table. "
            "[default: off]",
        ),
    ] = False,
    localization: Annotated[
        list[str] | None,
        typer.Option(
            "--localization",
            metavar="RADIUS",
            help="Also locate the heads (count-preserving peaks of the predicted density, as export --prelabel) and "
            "report precision, recall and F1 against the true points, matched one to one within RADIUS pixels "
            "(full-resolution); repeat it or give a comma list: 4,8,16. [default: none]",
            show_default=False,
        ),
    ] = None,
    predict: PredictConfig = PREDICTION,
    session: Session = SESSION,
) -> None:
    """Count every image of MANIFEST (sum of the predicted map) and compare with its head points.

    NAE averages |predicted - true| / true over the images with at least one head. When the manifest's
    images carry level attributes (scene_level, count_level, weather, ...), MAE is also reported per
    level and as the mean of the levels' MAEs. An image whose prediction is NaN or infinite is reported
    (a warning, and "non_finite" in --json) and left out of the averages; when no prediction is finite
    the command fails. Images without head points are refused (count them with crowdtk count).
    """
    check_inputs_exist(checkpoint, manifest)
    from crowdtk.evaluate import check_points, evaluate_manifest, results_csv
    from crowdtk.predict import Predictor, load_counter
    from crowdtk.runtime import Processes, stray_launch_note

    radii = localization_radii(localization)
    log = session.log
    procs = Processes.from_env()  # a malformed torchrun environment is refused before any work
    if (note := stray_launch_note()) is not None:
        log.warn(note)
    if procs.writer:  # under torchrun rank 0 writes the CSV
        claim(csv_path, session.force, inputs=(checkpoint, manifest, predict.feature_cache))
    name = "<stdin>" if manifest == STDIO else manifest
    _, entries = read_manifest(manifest)
    if not entries:
        raise CrowdtkError(f"{name}: no images", "index a data set with images first")
    check_points(entries, str(name))  # before the model loads
    loaded = load_counter(checkpoint)
    if loaded.unfinished:
        log.warn(loaded.unfinished)
    predictor = Predictor(
        loaded,
        device=predict.device,
        max_side=predict.max_side,
        feature_cache=predict.feature_cache,
        flip_average=predict.flip_average,
    )
    procs.start(predictor.device)
    with log.progress(len(entries[procs.rank :: procs.world]), "evaluating") as advance:
        evaluation = evaluate_manifest(
            predictor, entries, str(name), skip_bad=session.skip_bad, procs=procs, on_progress=advance, radii=radii
        )
    if not evaluation.writer:
        return
    session.warn_skipped(evaluation.skipped)
    summary = evaluation.summary()
    for image_id in summary["non_finite"]:
        log.warn(f"prediction for {image_id} is not finite (NaN or inf); left out of the averages")
    if csv_path is not None:
        with atomic_path(csv_path) as tmp:
            tmp.write_text(results_csv(evaluation.results, radii))
    if as_json:
        typer.echo(json.dumps(summary))
        return
    for line in summary_table(summary):
        typer.echo(line)


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary_table(summary: dict) -> list[str]:
    """The printed table: counting errors, then MAE per level, then localization per radius."""
    lines = [
        f"{'images':<10}{summary['n_images']}",
        f"{'MAE':<10}{summary['mae']:.2f}",
        f"{'RMSE':<10}{summary['rmse']:.2f}",
        f"{'NAE':<10}{_number(summary['nae'], 3)}" + ("" if summary["nae"] is not None else "  (no image has heads)"),
    ]
    lines += [f"{'GAME(' + level + ')':<10}{value:.2f}" for level, value in summary["game"].items()]
    for attribute, levels in summary["levels"].items():
        lines.append("")
        lines.append(f"MAE by {attribute} (mean of the levels: {levels['mean_mae']:.2f})")
        lines += [
            f"  {value:<8}{mae:>10.2f}  ({levels['n_images'][value]} images)" for value, mae in levels["mae"].items()
        ]
    if summary["localization"]:
        lines.append("")
        lines.append(f"{'radius':<10}{'precision':>10}{'recall':>10}{'F1':>10}")
        for radius, scores in summary["localization"].items():
            lines.append(
                f"{radius + ' px':<10}{_number(scores['precision'], 3):>10}{_number(scores['recall'], 3):>10}"
                f"{_number(scores['f1'], 3):>10}"
            )
    return lines
