"""crowdtk bench --train TRAIN --test TEST -o DIR [--recipe NAME]: the paper's comparisons at one or more budgets."""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeAlias

import typer

from crowdtk.cli.common import claim, given_options, run_command
from crowdtk.cli.groups import Deferred
from crowdtk.cli.options import (
    SESSION,
    BackboneWeights,
    BenchFreeze,
    CpuBf16Auto,
    Device,
    Lr,
    NoPretrained,
    Session,
    SharedFeatureCache,
    choices,
    schedule_options,
    strip_frac_option,
    warmup_strategies,
)
from crowdtk.errors import CrowdtkError, UsageError
from crowdtk.experiment import (
    DEFAULT_TOLERANCE,
    RECIPES,
    SHAPES,
    Schedule,
    bench_methods,
    bench_runs,
    check_report,
    default_methods,
    open_bench,
    parse_budgets,
    parse_list,
    read_baseline,
    resolve_cpu_bf16,
    write_bench_results,
    write_check,
)
from crowdtk.registry import listing

_D = RECIPES["default"]
_S = _D.schedule  # the options' defaults are the default recipe's; another recipe replaces those not given
if TYPE_CHECKING:  # see crowdtk.cli.options.choices
    RecipeName: TypeAlias = Any
else:
    RecipeName = choices("RecipeName", tuple(RECIPES))
_RECIPE_HELP = (
    "Named settings; options given on the command line replace the recipe's values (the defaults shown are the "
    "default recipe's). " + " ".join(f"{r.name}: {r.help}." for r in RECIPES.values())
)
_SETTING = {"no_pretrained": "pretrained", "budget": "budgets"}  # options whose recipe setting has another name


def _methods_option() -> Any:
    return Annotated[
        str, typer.Option(help=f"Comma-separated methods: {listing(list(bench_methods().values()), 'and')}.")
    ]


def _image_list_option() -> Any:
    takers = ", ".join(m.name for m in bench_methods().values() if m.takes_image_list)
    return Annotated[
        Path | None,
        typer.Option(
            "--image-list",
            metavar="FILE",
            help=f"A published split's labeled images (one name a line, as select --image-list reads it): {takers} "
            "labels exactly these whole images instead of drawing them by the budget; the other methods keep the "
            "budget. One budget only; the list's digest is a setting of DIR. [default: none]",
            show_default=False,
        ),
    ]


def _warmup_frac_option() -> Any:
    return Annotated[float, typer.Option(help=f"Share of the images in the warm-up round ({warmup_strategies()}).")]


@run_command("bench")
def command(
    ctx: typer.Context,
    train: Annotated[
        Path,
        typer.Option(
            "--train", help="Training pool: a split folder (indexed into DIR/data) or a manifest.", show_default=False
        ),
    ],
    test: Annotated[Path, typer.Option("--test", help="Test set: a split folder or a manifest.", show_default=False)],
    output: Annotated[
        Path,
        typer.Option(
            "-o",
            "--output",
            help="Folder for all runs and results; rerunning with the same folder reuses finished runs.",
            show_default=False,
        ),
    ],
    recipe: Annotated[RecipeName, typer.Option("--recipe", help=_RECIPE_HELP)] = _D.name,
    budget: Annotated[
        float, typer.Option(help="Labeling budget (fraction of the pool's area) when --budgets is not given.")
    ] = _D.budgets[0],
    budgets: Annotated[
        str,
        typer.Option(
            help="Comma-separated budgets for the Fig. 4 / Table 2 sweep, e.g. 0.05,0.1,0.2,0.5. [default: --budget]"
        ),
    ] = "",
    methods: str = Deferred(_methods_option, default_from=lambda: ",".join(default_methods())),
    shapes: Annotated[
        str, typer.Option(help="Extra region shapes for random selection (Table 1): band, block. [default: none]")
    ] = "",
    seeds: Annotated[
        int, typer.Option(min=1, help="Seeds per method (selection and training); results give mean ± std.")
    ] = _D.seeds,
    scale: Annotated[
        float | None,
        typer.Option(
            help="Resize images and points by this factor for training and evaluation. "
            "[default: the default recipe chooses it by a pixel budget: the median training image brought to about "
            "512×384 px, never enlarged (0.5 on ShanghaiTech Part "
            "B, 1 on images of 400 px); other recipes set their own]",
            show_default=False,
        ),
    ] = None,
    schedule: Schedule = schedule_options(_S),
    lr: Lr = _S.lr,
    freeze: BenchFreeze = _S.freeze,
    cpu_bf16: CpuBf16Auto = None,
    no_pretrained: NoPretrained = False,
    backbone_weights: BackboneWeights = None,
    feature_cache: SharedFeatureCache = None,
    warmup_frac: float = Deferred(_warmup_frac_option, _S.warmup_frac),
    image_list: Path | None = Deferred(_image_list_option, None),
    strip_frac: float = strip_frac_option(_S.strip_frac),
    val_frac: Annotated[
        float,
        typer.Option(
            help="Share of each method's labeled images held out (validation "
            "only reports: the checkpoint is the last epoch's)."
        ),
    ] = _S.val_frac,
    check: Annotated[
        Path | None,
        typer.Option(
            "--check",
            help="A results.json to gate on (CI): exit 1 when a method's mean MAE grows by more than --tolerance and "
            "the combined seed spread; the comparison goes to DIR/check.json. [default: none]",
            show_default=False,
        ),
    ] = None,
    tolerance: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="With --check: the MAE growth allowed, relative to the baseline's (0.05 = 5%). "
            f"[default: {DEFAULT_TOLERANCE}]",
            show_default=False,
        ),
    ] = None,
    device: Device = _D.device,
    session: Session = SESSION.without("skip_bad", "force"),
) -> None:
    """Run the paper's comparisons (full, none-or-all, random, max, mdc, mdc+cap) with one model and schedule.

    Writes DIR/results.json, DIR/results.md (tables in the paper's layout) and DIR/fig4-budget.png; with mdc or
    mdc+cap also fig5-regions.png, fig6-prediction.png and (mdc+cap) fig5-affinity.png.
    --recipe names the model, schedule, budgets, seeds and device at once (default: the CPU tier; paper: the paper's
    CSRNet setting for a GPU); every option given on the command line replaces the recipe's value.
    Every step is an ordinary crowdtk command, printed as it runs. With --check BASELINE.json (a results.json made with
    the same settings on the same data) the command also exits 1 on an MAE regression, with a table of them on stderr.
    """
    from crowdtk.cli.pipeline import Runner

    log, started = session.log, time.perf_counter()
    if tolerance is not None and check is None:
        raise UsageError("--tolerance without --check", "pass --check BASELINE.json, or leave --tolerance out")
    if no_pretrained and backbone_weights is not None:
        raise UsageError("--no-pretrained with --backbone-weights", "pass one of the two")
    options = {
        **asdict(
            replace(
                schedule,
                lr=lr,
                scale=scale if scale is not None else _S.scale,
                val_frac=val_frac,
                warmup_frac=warmup_frac,
                strip_frac=strip_frac,
                freeze=freeze.value,
                pretrained=not no_pretrained,
            )
        ),
        "budgets": parse_budgets(budgets or f"{budget}"),
        "seeds": seeds,
        "device": device.value,
    }
    # The options typed on the command line, by the recipe's names for them, replace the recipe's values.
    given = {_SETTING.get(name, name) for name in given_options(ctx)}
    chosen = RECIPES[recipe.value].with_options({k: v for k, v in options.items() if k in given})
    schedule = replace(chosen.schedule, cpu_bf16=resolve_cpu_bf16(cpu_bf16, chosen.device))
    schedule.validate()
    params: dict[str, Any] = {
        "train": train,
        "test": test,
        "recipe": chosen.name,
        "budgets": list(chosen.budgets),
        "methods": parse_list(methods, "--methods", tuple(bench_methods())),
        "shapes": parse_list(shapes, "--shapes", SHAPES[1:]) if shapes else [],
        "seeds": chosen.seeds,
    }
    if image_list is not None:
        _check_image_list(params["methods"], params["budgets"])
    from crowdtk.runtime import resolve_device

    resolve_device(chosen.device)  # a recipe's --device cuda on a machine without one fails here, before any step
    # Every input checked before DIR is made: a failed start leaves nothing that blocks the corrected rerun.
    for source in (train, test):
        if not source.exists():
            raise CrowdtkError(f"{source}: no such file or folder", "pass a split folder or a manifest")
    if image_list is not None:
        from crowdtk.formats import read_image_list

        read_image_list(image_list)  # read and matched to the pool again once the pool is indexed (open_bench)
    if check is not None:
        from crowdtk.formats import BENCH_RESULTS, peek_format

        if peek_format(check) != BENCH_RESULTS:
            raise CrowdtkError(
                f"{check}: not a bench results.json", "pass the results.json of an earlier crowdtk bench run"
            )
    claim(
        output, True, folder=True, lock_only=True, inputs=(train, test, check, image_list)
    )  # a folder the bench adds to, one bench at a time
    runner = Runner(output, log)
    experiment, settings = open_bench(
        train,
        test,
        output,
        schedule,
        runner.execute,
        chosen.device,
        feature_cache,
        chosen.name,
        backbone_weights,
        auto_scale=chosen.auto_scale and "scale" not in given,
        image_list=image_list,
    )
    runs = bench_runs(params["budgets"], params["methods"], params["shapes"], chosen.seeds)
    baseline = read_baseline(check, settings, runs) if check is not None else None
    results = runner.run_all(experiment, runs)
    command_line = shlex.join(["crowdtk", *sys.argv[1:]]) if sys.argv[1:2] == ["bench"] else "crowdtk bench"
    typer.echo(write_bench_results(experiment, runs, results, settings, params, command_line, started))
    log.info(
        f"wrote {output / 'results.json'}, {output / 'results.md'} "
        f"and pictures in {time.perf_counter() - started:.0f} s"
    )
    if baseline is not None:
        verdict = write_check(output / "check.json", baseline, results, tolerance, params)
        if not verdict["passed"]:
            log.console.print(
                check_report(verdict), markup=False
            )  # shown even with --quiet: it is why the command fails
            raise CrowdtkError(
                f"{verdict['regressions']} MAE regression(s) against {check}",
                f"the table above; all in {output / 'check.json'}",
            )
        log.info(check_report(verdict))


def _check_image_list(methods: list[str], budgets: list[float]) -> None:
    """--image-list needs a method that takes it, and one budget: the list is one set of images, and at every
    further budget its method would repeat the same runs."""
    known = bench_methods()
    if not any(known[m].takes_image_list for m in methods):
        takers = ", ".join(m.name for m in known.values() if m.takes_image_list)
        raise UsageError("--image-list without a method that takes it", f"add {takers} to --methods")
    if len(budgets) > 1:
        raise UsageError(
            f"--image-list with {len(budgets)} budgets",
            "a list is one set of images: give one --budget (the other methods' share of the pool's area)",
        )
