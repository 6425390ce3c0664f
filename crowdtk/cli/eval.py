"""crowdtk eval CKPT MANIFEST: MAE, RMSE and GAME of a counter on a labeled set (Eq. 11)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from crowdtk.cli.common import claim, run_command
from crowdtk.cli.options import PREDICTION, SESSION, Manifest, Session
from crowdtk.errors import CrowdtkError
from crowdtk.files import STDIO, atomic_path, check_inputs_exist
from crowdtk.formats import read_manifest
from crowdtk.predict_config import PredictConfig


@run_command("eval")
def command(
    checkpoint: Annotated[Path, typer.Argument(help="Counter checkpoint (.safetensors).", show_default=False)],
    manifest: Manifest,
    csv_path: Annotated[
        Path | None,
        typer.Option("--csv", help="Write per-image results (image, true, predicted, error) here. [default: none]"),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print one JSON object (mae, rmse, game, n_images) instead of a table. [default: off]"
        ),
    ] = False,
    predict: PredictConfig = PREDICTION,
    session: Session = SESSION,
) -> None:
    """Count every image of MANIFEST (sum of the predicted map) and compare with its head points.

    An image whose prediction is NaN or infinite is reported (a warning, and "non_finite" in --json)
    and left out of the averages; when no prediction is finite the command fails.
    """
    check_inputs_exist(checkpoint, manifest)
    from crowdtk.evaluate import evaluate_manifest, results_csv
    from crowdtk.predict import Predictor, load_counter
    from crowdtk.runtime import Processes, stray_launch_note

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
            predictor, entries, str(name), skip_bad=session.skip_bad, procs=procs, on_progress=advance
        )
    if not evaluation.writer:
        return
    for problem in evaluation.skipped:
        log.warn(f"skipped {problem}")
    summary = evaluation.summary()
    for image_id in summary["non_finite"]:
        log.warn(f"prediction for {image_id} is not finite (NaN or inf); left out of the averages")
    if csv_path is not None:
        with atomic_path(csv_path) as tmp:
            tmp.write_text(results_csv(evaluation.results))
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(f"{'images':<10}{summary['n_images']}")
        typer.echo(f"{'MAE':<10}{summary['mae']:.2f}")
        typer.echo(f"{'RMSE':<10}{summary['rmse']:.2f}")
        for level, value in summary["game"].items():
            typer.echo(f"{'GAME(' + level + ')':<10}{value:.2f}")
