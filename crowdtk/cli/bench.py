"""crowdtk bench --train TRAIN --test TEST -o DIR: the paper's comparisons at one or more budgets."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from crowdtk.cli.common import Device, Log, Quiet, Verbose, run_command
from crowdtk.cli.train import Freeze
from crowdtk.errors import CrowdtkError
from crowdtk.experiment import METHODS, SHAPES, Experiment, Run, Schedule, Step, claims, markdown_table
from crowdtk.formats import BENCH_RESULTS, Provenance, atomic_path, file_digest, make_header, write_json

_S = Schedule()

# The schedule options, shared with `demo`.
Steps = Annotated[int, typer.Option(help="Optimizer steps of every training run (the same for every method: fewer labeled images, more epochs).")]
WarmupSteps = Annotated[int, typer.Option(help="Optimizer steps of the warm-up counter (max, mdc).")]
Model = Annotated[str, typer.Option(help="Counter for every method: lite, lite1, lite2 or csrnet.")]
BatchSize = Annotated[int, typer.Option(help="Images (whole, or crops with --crop) per optimizer step.")]
Crop = Annotated[int, typer.Option(help="Training crop side in pixels (after --scale), for --freeze none; 0 = whole images.")]
Lr = Annotated[float, typer.Option(help="Adam learning rate.")]
FreezeOpt = Annotated[Freeze, typer.Option("--freeze", help="encoder: the frozen-encoder CPU tier (features cached in DIR/feature-cache, whole images); early: freeze the layers up to stride 8; none: fine-tune everything on --crop crops.")]
CpuBf16Opt = Annotated[Optional[bool], typer.Option("--cpu-bf16/--no-cpu-bf16", help="Train in bfloat16 autocast on the CPU (train --cpu-bf16; about 2x faster with AMX). [default: on where the CPU runs bfloat16 natively and --device is not cuda]", show_default=False)]


def resolve_cpu_bf16(choice: bool | None, device: str) -> bool:
    """--cpu-bf16 as given, else on when training runs on a CPU that computes bfloat16 natively."""
    if choice is not None:
        return choice
    import torch

    from crowdtk.train import cpu_bf16_supported

    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    return on_cpu and cpu_bf16_supported()


StripFrac = Annotated[float, typer.Option(help="Strip width as a fraction of the image width (random, max, mdc; the budget sets how many per image).")]


def parse_list(text: str, option: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise CrowdtkError(f"{option} is empty", f"pass a comma-separated list{', e.g. ' + ','.join(allowed) if allowed else ''}")
    if allowed:
        unknown = [t for t in items if t not in allowed]
        if unknown:
            raise CrowdtkError(f"{option}: unknown {', '.join(unknown)}", f"choose from {', '.join(allowed)}")
    return items


def parse_budgets(text: str) -> list[float]:
    try:
        budgets = [float(t) for t in parse_list(text, "--budgets")]
    except ValueError:
        raise CrowdtkError(f"--budgets {text!r}: not numbers", "pass e.g. --budgets 0.05,0.1,0.2") from None
    for b in budgets:
        if not 0 < b <= 1:
            raise CrowdtkError(f"budget {b:g} is outside (0, 1]", "pass fractions of the pool's area, e.g. 0.1")
    return budgets


def manifest_step(source: Path, out: Path, split: str) -> tuple[Path, Step | None]:
    """A split folder is indexed into DIR/data/; a manifest file is used as it is."""
    if source.is_dir():
        target = out / "data" / f"{split}.manifest.jsonl"
        return target, Step(("index", str(source), "-o", str(target), "-q"), target)
    if not source.exists():
        raise CrowdtkError(f"{source}: no such file or folder", f"pass the {split} split folder or its manifest")
    return source, None


# Settings added after a folder may have been made: absent from its settings.json means their default.
# They hold the value the code had before the setting existed (a folder of fine-tuned runs stays one).
LATER_SETTINGS = {"strip_frac": _S.strip_frac, "freeze": "none", "lr_schedule": "constant", "keep": "best", "cpu_bf16": False}


def check_same_settings(out: Path, settings: dict[str, Any]) -> None:
    """Runs in DIR are reused only when they were made with the same schedule and data."""
    path = out / "settings.json"
    if path.exists():
        before = {**LATER_SETTINGS, **json.loads(path.read_text(encoding="utf-8"))}
        changed = sorted(k for k in settings.keys() | before.keys() if settings.get(k) != before.get(k))
        if changed:
            raise CrowdtkError(f"{out}: holds runs made with other settings ({', '.join(changed)} differ)",
                               "choose another -o folder, or remove this one to start anew")
        return
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(settings, indent=1), encoding="utf-8")


def machine() -> dict[str, Any]:
    import torch

    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


@run_command("bench")
def command(
    train: Annotated[Path, typer.Option("--train", help="Training pool: a split folder (indexed into DIR/data) or a manifest.", show_default=False)],
    test: Annotated[Path, typer.Option("--test", help="Test set: a split folder or a manifest.", show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for all runs and results; rerunning with the same folder reuses finished runs.", show_default=False)],
    budget: Annotated[float, typer.Option(help="Labeling budget (fraction of the pool's area) when --budgets is not given.")] = 0.1,
    budgets: Annotated[str, typer.Option(help="Comma-separated budgets for the Fig. 4 / Table 2 sweep, e.g. 0.05,0.1,0.2,0.5. [default: --budget]")] = "",
    methods: Annotated[str, typer.Option(help="Comma-separated methods out of " + ", ".join(METHODS) + ".")] = ",".join(METHODS),
    shapes: Annotated[str, typer.Option(help="Extra region shapes for random selection (Table 1): band, block. [default: none]")] = "",
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per method (selection and training); results give mean ± std.")] = 3,
    scale: Annotated[float, typer.Option(help="Resize images and points by this factor for training and evaluation (CPU-affordable runs).")] = _S.scale,
    model: Model = _S.model,
    steps: Steps = _S.steps,
    warmup_steps: WarmupSteps = _S.warmup_steps,
    batch_size: BatchSize = _S.batch_size,
    crop: Crop = _S.crop,
    lr: Lr = _S.lr,
    freeze: FreezeOpt = Freeze(_S.freeze),
    cpu_bf16: CpuBf16Opt = None,
    feature_cache: Annotated[Optional[Path], typer.Option("--feature-cache", help="Folder of the frozen front end's features, shareable between bench folders (a CI job can keep it across runs). [default: DIR/feature-cache]", show_default=False)] = None,
    warmup_frac: Annotated[float, typer.Option(help="Share of the images in the warm-up round (max, mdc).")] = _S.warmup_frac,
    strip_frac: StripFrac = _S.strip_frac,
    val_frac: Annotated[float, typer.Option(help="Share of each method's labeled images held out (validation only reports: the checkpoint is the last epoch's).")] = _S.val_frac,
    device: Device = "auto",
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Run the paper's comparisons (full, none-or-all, random, max, mdc, mdc+cap) with one model and schedule.

    Writes DIR/results.json, DIR/results.md (tables in the paper's layout) and DIR/fig4-budget.png; with mdc or
    mdc+cap also fig5-regions.png, fig6-prediction.png and (mdc+cap) fig5-affinity.png.
    Every step is an ordinary crowdtk command, printed as it runs.
    """
    from crowdtk.cli.pipeline import Runner

    log = Log("bench", quiet, verbose)
    started = time.perf_counter()
    budget_list = parse_budgets(budgets) if budgets else parse_budgets(f"{budget}")
    method_list = parse_list(methods, "--methods", METHODS)
    shape_list = parse_list(shapes, "--shapes", SHAPES[1:]) if shapes else []
    schedule = Schedule(model=model, steps=steps, warmup_steps=warmup_steps, batch_size=batch_size, crop=crop, lr=lr,
                        scale=scale, val_frac=val_frac, warmup_frac=warmup_frac, strip_frac=strip_frac, freeze=freeze.value,
                        cpu_bf16=resolve_cpu_bf16(cpu_bf16, device))
    schedule.validate()
    output.mkdir(parents=True, exist_ok=True)
    runner = Runner(output, log)
    manifests = []
    for source, split in ((train, "train"), (test, "test")):
        path, step = manifest_step(source, output, split)
        if step is not None:
            runner.execute(step)
        manifests.append(path)
    settings = {**asdict(schedule), "train_sha256": file_digest(manifests[0]), "test_sha256": file_digest(manifests[1])}
    check_same_settings(output, settings)
    experiment = Experiment(manifests[0], manifests[1], output, schedule, device, feature_cache)
    runs = [Run(m, b, "strip", s) for b in budget_list for s in range(seeds) for m in method_list]
    runs += [Run("random", b, shape, s) for b in budget_list for s in range(seeds) for shape in shape_list]
    results = runner.run_all(experiment, runs)

    command_line = shlex.join(["crowdtk", *sys.argv[1:]]) if sys.argv[1:2] == ["bench"] else "crowdtk bench"
    images = f"{batch_size} whole images" if crop == 0 else f"{batch_size} crops of {crop} px"
    tier = f", --freeze {freeze.value}" if freeze.value != "none" else ""
    title = f"crowdtk bench: {manifests[0]} → {manifests[1]}, {model}{tier}, scale {scale:g}, {steps} steps × {images}, {seeds} seed(s)"
    body = {"command_line": command_line, "settings": settings, "machine": machine(), "results": results, "claims": claims(results),
            "wall_s": time.perf_counter() - started}
    header = make_header(BENCH_RESULTS, Provenance("bench", {"train": train, "test": test, "budgets": budget_list,
                                                              "methods": method_list, "shapes": shape_list, "seeds": seeds}))
    write_json(output / "results.json", header, body)
    table = markdown_table(results, title) + f"\nCommand: `{command_line}`\n"
    with atomic_path(output / "results.md") as tmp:
        tmp.write_text(table, encoding="utf-8")
    from crowdtk import pictures

    pictures.show_budget(output / "fig4-budget.png", output / "results.json")
    first = runs[0]
    if "mdc" in method_list or "mdc+cap" in method_list:
        mdc_run = Run("mdc+cap" if "mdc+cap" in method_list else "mdc", first.budget, "strip", 0)
        pictures.show_regions(output / "fig5-regions.png", experiment.selection_dir(mdc_run) / "labels.jsonl", experiment.first_chosen(mdc_run),
                              checkpoint=experiment.run_dir(mdc_run) / "warmup" / "model.safetensors")
        pictures.show_prediction(output / "fig6-prediction.png", experiment.model_of(mdc_run), experiment.test_manifest)
        if mdc_run.method == "mdc+cap":
            pictures.show_affinity(output / "fig5-affinity.png", experiment.run_dir(mdc_run) / mdc_run.name / "model.safetensors",
                                   experiment.selection_dir(mdc_run) / "labels.jsonl")
    typer.echo(table)
    log.info(f"wrote {output / 'results.json'}, {output / 'results.md'} and pictures in {time.perf_counter() - started:.0f} s")
