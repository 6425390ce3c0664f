"""crowdtk bench --train TRAIN --test TEST -o DIR: the paper's comparisons at one or more budgets."""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional

import typer

from crowdtk.cli.common import Log, run_command
from crowdtk.cli.options import BatchSize, BenchFreeze, CpuBf16Auto, Crop, Device, Lr, Model, Quiet, Steps, StripFrac, Verbose, WarmupSteps
from crowdtk.errors import CrowdtkError, UsageError
from crowdtk.experiment import (DEFAULT_TOLERANCE, METHODS, SHAPES, Experiment, Run, Schedule, check_report, check_same_settings, data_digest,
                                manifest_step, parse_budgets, parse_list, read_baseline, resolve_cpu_bf16, write_bench_results, write_check)
from crowdtk.files import file_digest

_S = Schedule()


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
    freeze: BenchFreeze = _S.freeze,
    cpu_bf16: CpuBf16Auto = None,
    feature_cache: Annotated[Optional[Path], typer.Option("--feature-cache", help="Folder of the frozen front end's features, shareable between bench folders (a CI job can keep it across runs). [default: DIR/feature-cache]", show_default=False)] = None,
    warmup_frac: Annotated[float, typer.Option(help="Share of the images in the warm-up round (max, mdc).")] = _S.warmup_frac,
    strip_frac: StripFrac = _S.strip_frac,
    val_frac: Annotated[float, typer.Option(help="Share of each method's labeled images held out (validation only reports: the checkpoint is the last epoch's).")] = _S.val_frac,
    check: Annotated[Optional[Path], typer.Option("--check", help="A results.json to gate on (CI): exit 1 when a method's mean MAE grows by more than --tolerance and the combined seed spread; the comparison goes to DIR/check.json. [default: none]", show_default=False)] = None,
    tolerance: Annotated[Optional[float], typer.Option(min=0, help=f"With --check: the MAE growth allowed, relative to the baseline's (0.05 = 5%). [default: {DEFAULT_TOLERANCE}]", show_default=False)] = None,
    device: Device = "auto",
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Run the paper's comparisons (full, none-or-all, random, max, mdc, mdc+cap) with one model and schedule.

    Writes DIR/results.json, DIR/results.md (tables in the paper's layout) and DIR/fig4-budget.png; with mdc or
    mdc+cap also fig5-regions.png, fig6-prediction.png and (mdc+cap) fig5-affinity.png.
    Every step is an ordinary crowdtk command, printed as it runs. With --check BASELINE.json (a results.json made with
    the same settings on the same data) the command also exits 1 on an MAE regression, with a table of them on stderr.
    """
    from crowdtk.cli.pipeline import Runner

    log = Log("bench", quiet, verbose)
    started = time.perf_counter()
    budget_list = parse_budgets(budgets) if budgets else parse_budgets(f"{budget}")
    method_list = parse_list(methods, "--methods", METHODS)
    shape_list = parse_list(shapes, "--shapes", SHAPES[1:]) if shapes else []
    if tolerance is not None and check is None:
        raise UsageError("--tolerance without --check", "pass --check BASELINE.json, or leave --tolerance out")
    schedule = Schedule(model=model.value, steps=steps, warmup_steps=warmup_steps, batch_size=batch_size, crop=crop, lr=lr,
                        scale=scale, val_frac=val_frac, warmup_frac=warmup_frac, strip_frac=strip_frac, freeze=freeze.value,
                        cpu_bf16=resolve_cpu_bf16(cpu_bf16, device.value))
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
    settings |= {"train_data_sha256": data_digest(manifests[0]), "test_data_sha256": data_digest(manifests[1])}  # results.json only
    baseline = read_baseline(check, settings) if check is not None else None
    experiment = Experiment(manifests[0], manifests[1], output, schedule, device.value, feature_cache)
    runs = [Run(m, b, "strip", s) for b in budget_list for s in range(seeds) for m in method_list]
    runs += [Run("random", b, shape, s) for b in budget_list for s in range(seeds) for shape in shape_list]
    results = runner.run_all(experiment, runs)

    command_line = shlex.join(["crowdtk", *sys.argv[1:]]) if sys.argv[1:2] == ["bench"] else "crowdtk bench"
    params = {"train": train, "test": test, "budgets": budget_list, "methods": method_list, "shapes": shape_list, "seeds": seeds}
    table = write_bench_results(experiment, runs, results, settings, params, command_line, started)
    typer.echo(table)
    log.info(f"wrote {output / 'results.json'}, {output / 'results.md'} and pictures in {time.perf_counter() - started:.0f} s")
    if baseline is not None:
        verdict = write_check(output / "check.json", baseline, results, tolerance, params)
        if not verdict["passed"]:
            log.console.print(check_report(verdict), markup=False)  # shown even with --quiet: it is why the command fails
            raise CrowdtkError(f"{verdict['regressions']} MAE regression(s) against {check}", f"the table above; all in {output / 'check.json'}")
        log.info(check_report(verdict))
