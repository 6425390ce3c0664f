"""crowdtk demo [-o DIR]: the whole method on generated data, next to None-or-All at the same budget."""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated

import typer

from crowdtk.cli.common import Log, run_command
from crowdtk.cli.options import BatchSize, CpuBf16Auto, Crop, Device, Model, Quiet, Seed, Steps, StripFrac, Verbose, WarmupSteps
from crowdtk.cli.pipeline import Runner
from crowdtk.experiment import METHODS, Experiment, Run, Schedule, Step, check_same_settings, claims, demo_report, draw_figures, parse_list, resolve_cpu_bf16
from crowdtk.synth import SynthConfig
from crowdtk.formats import DEMO_REPORT, Provenance, make_header, write_json

# The demo's schedule: generated 384×256 images at full size on the frozen-encoder tier (whole cached
# images, cosine decay, the last epoch kept), as the bench (README, "What the demo shows").
DEMO = Schedule(model="lite", steps=600, warmup_steps=300, batch_size=4, crop=0, scale=1.0)
DEMO_METHODS = "none-or-all,random,mdc,mdc+cap"


@run_command("demo")
def command(
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the data, every step's files, report.json and the pictures; rerunning reuses finished steps.")] = Path("demo-out"),
    budget: Annotated[float, typer.Option(help="Labeling budget: fraction of the pool's area.")] = 0.1,
    methods: Annotated[str, typer.Option(help="Comma-separated methods out of " + ", ".join(METHODS) + ".")] = DEMO_METHODS,
    model: Model = DEMO.model,
    steps: Steps = DEMO.steps,
    warmup_steps: WarmupSteps = DEMO.warmup_steps,
    batch_size: BatchSize = DEMO.batch_size,
    crop: Crop = DEMO.crop,
    strip_frac: StripFrac = DEMO.strip_frac,
    cpu_bf16: CpuBf16Auto = None,
    synth_train: Annotated[int, typer.Option(help="Generated training images (the pool).")] = SynthConfig.train,
    synth_test: Annotated[int, typer.Option(help="Generated test images.")] = SynthConfig.test,
    seed: Seed = 0,
    seeds: Annotated[int, typer.Option(min=1, help="Training seeds per method (--seed, --seed + 1, …; the data stay those of --seed); the table gives mean ± std.")] = 3,
    device: Device = "auto",
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Generate a small crowd data set and run Algorithm 1 on it (warm-up, MDC, CAP) with the lite model.

    Prints each step as the shell command that does it, then a table of MAE, RMSE and what
    was labeled for every method; writes DIR/report.json and pictures of the selected strips
    (regions.png), a prediction (prediction.png) and CAP's affinity maps (affinity.png).
    """
    log = Log("demo", quiet, verbose)
    started = time.perf_counter()
    method_list = parse_list(methods, "--methods", METHODS)
    schedule = replace(DEMO, model=model.value, steps=steps, warmup_steps=warmup_steps, batch_size=batch_size, crop=crop, strip_frac=strip_frac,
                       cpu_bf16=resolve_cpu_bf16(cpu_bf16, device.value))
    schedule.validate()
    output.mkdir(parents=True, exist_ok=True)
    check_same_settings(output, {**asdict(schedule), "synth_train": synth_train, "synth_test": synth_test, "seed": seed})
    runner = Runner(output, log)
    data = output / "data"
    runner.execute(Step(("synth", "-o", str(data), "--train", str(synth_train), "--test", str(synth_test), "--seed", str(seed), "-q"), data))
    experiment = Experiment(data / "train" / "manifest.jsonl", data / "test" / "manifest.jsonl", output, schedule, device.value)
    runs = [Run(m, budget, "strip", seed + k) for k in range(seeds) for m in method_list]
    results = runner.run_all(experiment, runs)

    report = demo_report(results)
    header = make_header(DEMO_REPORT, Provenance("demo", {"output": output, "budget": budget, "methods": method_list,
                                                          "steps": steps, "model": model.value, "strip_frac": strip_frac, "seeds": seeds}, seed))
    write_json(output / "report.json", header, {"methods": report, "claims": claims(results), "wall_s": time.perf_counter() - started})
    mdc = next((r for r in runs if r.method == "mdc+cap"), None) or next((r for r in runs if r.method == "mdc"), None)
    if mdc is not None:
        draw_figures(experiment, mdc, {"regions": "regions.png", "prediction": "prediction.png", "affinity": "affinity.png"})

    typer.echo(f"{'method':<13}{'MAE':>15}{'RMSE':>15}{'area':>8}{'heads':>8}{'images':>8}")
    for name, r in report.items():
        typer.echo(f"{name:<13}{r['mae']:>7.2f} ± {r['mae_std']:<5.2f}{r['rmse']:>7.2f} ± {r['rmse_std']:<5.2f}"
                   f"{100 * r['area_fraction']:>7.2f}%{r['heads_labeled']:>8.0f}{r['images_labeled']:>8.0f}")
    for c in claims(results):
        typer.echo(f"{c['claim']}: {c['verdict']} (MAE {c['mae_gain']:+.2f}, spread {c['spread']:.2f})")
    log.info(f"wrote {output / 'report.json'} and the pictures in {output} ({time.perf_counter() - started:.0f} s)")
