"""crowdtk eval CKPT MANIFEST: MAE, RMSE and GAME of a counter on a labeled set (Eq. 11)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from crowdtk.cli.common import Device, Log, Manifest, Quiet, Verbose, run_command
from crowdtk.formats import atomic_path, read_manifest

MaxSide = Annotated[int, typer.Option(help="Images larger than this (pixels, after --scale) are run in tiles whose counts add up.")]


@run_command("eval")
def command(
    checkpoint: Annotated[Path, typer.Argument(help="Counter checkpoint (.safetensors).", show_default=False)],
    manifest: Manifest,
    csv_path: Annotated[Optional[Path], typer.Option("--csv", help="Write per-image results (image, true, predicted, error) here. [default: none]")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (mae, rmse, game, n_images) instead of a table. [default: off]")] = False,
    max_side: MaxSide = 2048,
    device: Device = "auto",
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Count every image of MANIFEST (sum of the predicted map) and compare with its head points."""
    from crowdtk.predict import Predictor, evaluate, load_counter, summarize
    from crowdtk.train import Processes

    log = Log("eval", quiet, verbose)
    _, entries = read_manifest(manifest)
    predictor = Predictor(load_counter(checkpoint), device=device, max_side=max_side)
    procs = Processes.from_env()
    procs.start(predictor.device)
    with log.progress(len(entries[procs.rank::procs.world]), "evaluating") as advance:
        results = evaluate(predictor, entries, on_progress=advance, shard=(procs.rank, procs.world))
    if procs.world > 1:
        import torch.distributed as dist

        gathered: list = [None] * procs.world
        dist.all_gather_object(gathered, results)  # between this job's own processes, not from files
        order = {e.id: i for i, e in enumerate(entries)}
        results = sorted((r for part in gathered for r in part), key=lambda r: order[r.id])
    if not procs.writer:
        return
    summary = summarize(results)
    for image_id in summary["non_finite"]:
        log.warn(f"prediction for {image_id} is not finite; left out of the averages")
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
