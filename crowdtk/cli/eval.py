"""crowdtk eval CKPT MANIFEST: MAE, RMSE and GAME of a counter on a labeled set (Eq. 11)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from crowdtk.cli.common import Device, Force, Log, Manifest, Quiet, SkipBad, Verbose, run_command
from crowdtk.data import check_image_size
from crowdtk.errors import CrowdtkError
from crowdtk.formats import STDIO, atomic_path, check_output_free, read_manifest

FeatureCacheOpt = Annotated[Optional[Path], typer.Option("--feature-cache", help="Folder of cached front-end features (train --feature-cache): a checkpoint trained with --freeze reuses them for images that need no tiling. [default: none]")]
MaxSide = Annotated[int, typer.Option(help="Images larger than this (pixels, after --scale) are run in tiles whose counts add up.")]


@run_command("eval")
def command(
    checkpoint: Annotated[Path, typer.Argument(help="Counter checkpoint (.safetensors).", show_default=False)],
    manifest: Manifest,
    csv_path: Annotated[Optional[Path], typer.Option("--csv", help="Write per-image results (image, true, predicted, error) here. [default: none]")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (mae, rmse, game, n_images) instead of a table. [default: off]")] = False,
    max_side: MaxSide = 2048,
    feature_cache: FeatureCacheOpt = None,
    device: Device = "auto",
    skip_bad: SkipBad = False,
    force: Force = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Count every image of MANIFEST (sum of the predicted map) and compare with its head points.

    An image whose prediction is NaN or infinite is reported (a warning, and "non_finite" in --json)
    and left out of the averages; when no prediction is finite the command fails.
    """
    from crowdtk.predict import Predictor, evaluate, load_counter, summarize
    from crowdtk.train import Processes

    log = Log("eval", quiet, verbose)
    if csv_path is not None:
        check_output_free(csv_path, force)
    name = "<stdin>" if manifest == STDIO else manifest
    _, entries = read_manifest(manifest)
    if not entries:
        raise CrowdtkError(f"{name}: no images", "index a data set with images first")
    skipped: list[str] = []
    good = []
    for entry in entries:  # the manifest's sizes are checked before any model runs
        try:
            check_image_size(entry.width, entry.height, entry.image)
            good.append(entry)
        except CrowdtkError as exc:
            if not skip_bad:
                raise
            skipped.append(str(exc))
    entries = good
    predictor = Predictor(load_counter(checkpoint), device=device, max_side=max_side, feature_cache=feature_cache)
    procs = Processes.from_env()
    procs.start(predictor.device)
    shard = (procs.rank, procs.world)
    with log.progress(len(entries[procs.rank::procs.world]), "evaluating") as advance:
        if not skip_bad:
            results = evaluate(predictor, entries, on_progress=advance, shard=shard)
        else:  # one image at a time, so that a bad one is left out instead of stopping the run
            results = []
            for entry in entries[procs.rank::procs.world]:
                try:
                    results.extend(evaluate(predictor, [entry]))
                except CrowdtkError as exc:
                    skipped.append(str(exc))
                advance(1)
    if procs.world > 1:
        import torch.distributed as dist

        gathered: list = [None] * procs.world
        dist.all_gather_object(gathered, (results, skipped))  # between this job's own processes, not from files
        order = {e.id: i for i, e in enumerate(entries)}
        results = sorted((r for part, _ in gathered for r in part), key=lambda r: order[r.id])
        skipped = list(dict.fromkeys(problem for _, part in gathered for problem in part))
    if not procs.writer:
        return
    for problem in skipped:
        log.warn(f"skipped {problem}")
    if not results:
        raise CrowdtkError(f"{name}: every image was bad", "see the list of skipped images")
    if not any(math.isfinite(r.predicted) for r in results):
        raise CrowdtkError(f"{checkpoint}: the prediction is not finite (NaN or inf) for all {len(results)} image(s) of {name}",
                           "the checkpoint's weights have diverged; use an earlier checkpoint, or retrain with a lower --lr")
    summary = summarize(results)
    summary["skipped"] = skipped
    for image_id in summary["non_finite"]:
        log.warn(f"prediction for {image_id} is not finite (NaN or inf); left out of the averages")
    if csv_path is not None:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["image", "true_count", "predicted_count", "error", "game1", "game2", "game3"])
        for r in results:
            writer.writerow([r.id, r.true_count, f"{r.predicted:.3f}", f"{r.error:.3f}", *(f"{g:.3f}" for g in r.game)])
        with atomic_path(csv_path) as tmp:
            tmp.write_text(buffer.getvalue())
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(f"{'images':<10}{summary['n_images']}")
        typer.echo(f"{'MAE':<10}{summary['mae']:.2f}")
        typer.echo(f"{'RMSE':<10}{summary['rmse']:.2f}")
        for level, value in summary["game"].items():
            typer.echo(f"{'GAME(' + level + ')':<10}{value:.2f}")
