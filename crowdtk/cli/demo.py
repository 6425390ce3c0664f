"""crowdtk demo [-o DIR]: the whole method on generated data, next to None-or-All at the same budget."""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated

import typer

from crowdtk.cli.common import claim, run_command
from crowdtk.cli.groups import Deferred
from crowdtk.cli.options import SESSION, CpuBf16Auto, Device, Seed, Session, schedule_options, strip_frac_option
from crowdtk.cli.pipeline import Runner
from crowdtk.errors import UsageError
from crowdtk.experiment import (
    Experiment,
    Run,
    Schedule,
    Step,
    check_same_settings,
    default_methods,
    parse_list,
    resolve_cpu_bf16,
    write_demo_results,
)
from crowdtk.synth import SynthConfig

# The demo's schedule: generated 384×256 images at full size on the frozen-encoder tier (whole cached
# images, cosine decay, the last epoch kept), as the bench (README, "What the demo shows").
DEMO = Schedule(model="lite", steps=600, warmup_steps=300, batch_size=4, crop=0, scale=1.0)
DEMO_METHODS = "none-or-all,random,mdc,mdc+cap"


@run_command("demo")
def command(
    output: Annotated[
        Path,
        typer.Option(
            "-o",
            "--output",
            help="Folder for the data, every step's files, report.json "
            "and the pictures; rerunning reuses finished steps.",
        ),
    ] = Path("demo-out"),
    budget: Annotated[float, typer.Option(help="Labeling budget: fraction of the pool's area.")] = 0.1,
    methods: str = Deferred(
        lambda: Annotated[str, typer.Option(help=f"Comma-separated methods out of {', '.join(default_methods())}.")],
        DEMO_METHODS,
    ),
    schedule: Schedule = schedule_options(DEMO),
    strip_frac: float = strip_frac_option(DEMO.strip_frac),
    cpu_bf16: CpuBf16Auto = None,
    synth_train: Annotated[int, typer.Option(help="Generated training images (the pool).")] = SynthConfig.train,
    synth_test: Annotated[int, typer.Option(help="Generated test images.")] = SynthConfig.test,
    seed: Seed = 0,
    seeds: Annotated[
        int,
        typer.Option(
            min=1,
            help="Training seeds per method (--seed, --seed + 1, …; the "
            "data stay those of --seed); the table gives mean ± std.",
        ),
    ] = 3,
    device: Device = "auto",
    session: Session = SESSION.without("skip_bad", "force"),
) -> None:
    """Generate a small crowd data set and run Algorithm 1 on it (warm-up, MDC, CAP) with the lite model.

    Prints each step as the shell command that does it, then a table of MAE, RMSE and what
    was labeled for every method; writes DIR/report.json and pictures of the selected strips
    (regions.png), a prediction (prediction.png) and CAP's affinity maps (affinity.png).
    """
    started = time.perf_counter()
    method_list = parse_list(methods, "--methods", tuple(default_methods()))
    schedule = replace(schedule, strip_frac=strip_frac, cpu_bf16=resolve_cpu_bf16(cpu_bf16, device.value))
    schedule.validate()
    # Checked before DIR is made: a refused start leaves nothing behind. The pool needs a warm-up share and the rest.
    if synth_train < 5 or synth_test < 1:
        raise UsageError(
            f"--synth-train {synth_train} --synth-test {synth_test}: the demo needs at least 5 training images "
            "(a warm-up round and the rest) and 1 test image",
            "pass e.g. --synth-train 48 --synth-test 24",
        )
    SynthConfig(train=synth_train, test=synth_test, seed=seed).validate()
    claim(output, True, folder=True, lock_only=True)  # a folder the demo adds to, one demo at a time
    output.mkdir(parents=True, exist_ok=True)
    check_same_settings(
        output, {**asdict(schedule), "synth_train": synth_train, "synth_test": synth_test, "seed": seed}
    )
    runner = Runner(output, session.log)
    data = output / "data"
    runner.execute(
        Step(
            (
                "synth",
                "-o",
                str(data),
                "--train",
                str(synth_train),
                "--test",
                str(synth_test),
                "--seed",
                str(seed),
                "-q",
            ),
            data,
        )
    )
    experiment = Experiment(
        data / "train" / "manifest.jsonl", data / "test" / "manifest.jsonl", output, schedule, device.value
    )
    runs = [Run(m, budget, "strip", seed + k) for k in range(seeds) for m in method_list]
    results = runner.run_all(experiment, runs)
    params = {
        "output": output,
        "budget": budget,
        "methods": method_list,
        "steps": schedule.steps,
        "model": schedule.model,
        "strip_frac": strip_frac,
        "seeds": seeds,
    }
    typer.echo(write_demo_results(experiment, runs, results, params, seed, started))
    session.log.info(
        f"wrote {output / 'report.json'} and the pictures in {output} ({time.perf_counter() - started:.0f} s)"
    )
