"""crowdtk campaign init|next|status: the labeling loop (Algorithm 1) as rounds of crowdtk commands in one folder."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from crowdtk.campaign import (
    EXPORT,
    IN_PLACE_TOOLS,
    LABELING,
    Campaign,
    Settings,
    counter_error,
    plan_rounds,
    validate,
)
from crowdtk.cli.common import claim, run_command
from crowdtk.cli.groups import Deferred
from crowdtk.cli.options import (
    SESSION,
    BenchFreeze,
    BudgetHeads,
    CpuBf16Auto,
    Device,
    NoPretrained,
    Seed,
    Session,
    SharedFeatureCache,
    registered,
    schedule_options,
    strip_frac_option,
    tool_choices,
)
from crowdtk.errors import CrowdtkError, UsageError
from crowdtk.experiment import RECIPES, resolve_cpu_bf16
from crowdtk.files import atomic_dir
from crowdtk.labeling import TOOLS
from crowdtk.registry import listing, names
from crowdtk.selection import STRATEGIES

app = typer.Typer(
    name="campaign",
    help="A labeling campaign in one folder: the warm-up round, its counter, then rounds chosen with it (MDC), "
    "each an ordinary crowdtk command.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

_S = RECIPES["default"].schedule  # the bench's default tier; --scale is chosen from the pool as the bench does

Folder = Annotated[Path, typer.Argument(help="The campaign folder ('campaign init -o DIR').", show_default=False)]


def _tool() -> Any:
    return Annotated[
        tool_choices(), typer.Option("--tool", help=f"Labeling tool: {names(TOOLS, 'or')}.", show_default=False)
    ]


def _strategy() -> Any:
    return Annotated[
        registered("Strategy", STRATEGIES),
        typer.Option(help=f"Strategy of the rounds after the warm-up round: {listing(STRATEGIES)}."),
    ]


@app.command("init")
@run_command("campaign init")
def init(
    pool: Annotated[str, typer.Argument(help="Manifest of the images to label ('crowdtk index').", show_default=False)],
    *,
    output: Annotated[Path, typer.Option("-o", "--output", help="Campaign folder to create.", show_default=False)],
    tool: str = Deferred(_tool),
    budget: Annotated[
        float | None,
        typer.Option(help="Share of the pool's area labeled by all rounds together, in (0, 1]. [default: 0.1]"),
    ] = None,
    budget_heads: BudgetHeads = None,
    warmup_budget: Annotated[
        float, typer.Option(help="With --budget-heads: the warm-up round's per-image share of the area.")
    ] = 0.1,
    rounds: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Rounds: the warm-up round and rounds-1 more, each choosing with the counter of the round before; "
            "the budget left after the warm-up round is spread evenly over them. With --init: rounds of --strategy "
            "only, the budget spread evenly. [default: 2, or 1 with --init]",
            show_default=False,
        ),
    ] = None,
    init: Annotated[
        Path | None,
        typer.Option(
            "--init",
            metavar="CKPT",
            help="Start from this counter (e.g. one trained on a public data set): its vectors choose the first "
            "round's strips, and there is no warm-up round. [default: none]",
        ),
    ] = None,
    finetune: Annotated[
        bool,
        typer.Option(
            "--finetune",
            help="With --init: every round's counter starts from its weights instead of ImageNet's. [default: off]",
        ),
    ] = False,
    strategy: str = Deferred(_strategy, "mdc"),
    oracle: Annotated[
        Path | None,
        typer.Option(
            metavar="MANIFEST",
            help="Play the labeler: label every round from this manifest's ground truth (import --oracle) instead of "
            "exporting packages. [default: none]",
        ),
    ] = None,
    schedule: Any = schedule_options(_S),
    scale: Annotated[
        float | None,
        typer.Option(
            help="Resize images by this factor for training and selection. [default: from the pool's sizes, as bench]"
        ),
    ] = None,
    freeze: BenchFreeze = _S.freeze,
    warmup_frac: Annotated[float, typer.Option(help="Share of the images in the warm-up round.")] = _S.warmup_frac,
    strip_frac: float = strip_frac_option(_S.strip_frac),
    cap: Annotated[bool, typer.Option("--cap/--no-cap", help="Train the final counter with CAP.")] = True,
    feature_cache: SharedFeatureCache = None,
    holdout: Annotated[
        float,
        typer.Option(
            help="Share of the labeled images the final counter does not train on; 'campaign status' reports its "
            "error on their regions (needs 5 labeled images or more). 0: train on all."
        ),
    ] = 0.1,
    no_pretrained: NoPretrained = False,
    cpu_bf16: CpuBf16Auto = None,
    seed: Seed = 0,
    device: Device = "auto",
    session: Session = SESSION.without("skip_bad"),
) -> None:
    """Plan a campaign in DIR/campaign.json; 'crowdtk campaign next DIR' then runs it step by step.

    With --budget-heads N, the warm-up round labels --warmup-budget of its images' area and the later rounds
    spend the heads left (select --budget-heads)."""
    if budget is not None and budget_heads is not None:
        raise UsageError("--budget and --budget-heads together", "give one budget: area (--budget) or heads")
    if not Path(pool).is_file():
        raise CrowdtkError(f"{pool}: no such file", "pass a manifest from crowdtk index")
    if oracle is not None and not oracle.is_file():
        raise CrowdtkError(f"{oracle}: no such file", "pass the manifest whose ground truth plays the labeler")
    if init is not None and not init.is_file():
        raise CrowdtkError(f"{init}: no such file", "pass a counter's checkpoint (crowdtk train -o)")
    if rounds is None:
        rounds = 1 if init is not None else 2
    if init is None and rounds < 2:
        raise UsageError(f"--rounds {rounds}: a campaign without --init has at least 2", "a warm-up round and one more")
    from crowdtk.formats import read_manifest
    from crowdtk.geometry import scale_for_pixels

    if scale is None:
        scale = scale_for_pixels([(e.width, e.height) for e in read_manifest(pool)[1]])
    sched = replace(
        schedule,
        scale=scale,
        freeze=freeze.value,
        warmup_frac=warmup_frac,
        strip_frac=strip_frac,
        pretrained=not no_pretrained,
        cpu_bf16=resolve_cpu_bf16(cpu_bf16, device.value),
    )
    settings = Settings(
        pool=str(Path(pool).resolve()),
        tool=tool,
        rounds=rounds,
        strategy=strategy,
        budget=(0.1 if budget is None and budget_heads is None else budget),
        budget_heads=budget_heads,
        warmup_budget=warmup_budget,
        oracle=None if oracle is None else str(oracle.resolve()),
        seed=seed,
        device=device.value,
        cap=cap,
        holdout=holdout,
        init=None if init is None else str(init.resolve()),
        finetune=finetune,
        feature_cache=None if feature_cache is None else str(feature_cache.resolve()),
        schedule=sched,
    )
    validate(settings)  # every check before DIR is made: a refused start leaves nothing behind
    claim(output, session.force, folder=True, inputs=(pool, oracle, init))
    plan = plan_rounds(settings)
    with atomic_dir(output, session.force) as tmp:
        Campaign(Path(tmp), settings, plan).save()
    for p in plan:
        if p.warmup:
            spend = f"random strips on {warmup_frac:g} of the images, {p.budget:g} of each image's area"
        elif p.budget is not None:
            spend = f"{p.strategy}, up to {100 * p.budget:.4g}% of the pool's area with the rounds before"
        else:
            spend = f"{p.strategy}, {p.heads_share:.3g} of the heads left"
        session.log.info(f"round {p.round}: {spend}")
    typer.echo(f"planned {rounds} rounds in {output / 'campaign.json'}; run: crowdtk campaign next {output}")


def _waiting(c: Campaign, k: int) -> str:
    folder, package = c.folder, c.package(k)
    after = f"crowdtk campaign next {folder}"
    if c.settings.tool in IN_PLACE_TOOLS:
        return (
            f"round {k}: waiting for labels: label the regions in {package} with {c.settings.tool} "
            f"(see {package / 'README.txt'}), then run: {after}"
        )
    return (
        f"round {k}: waiting for labels: label the regions in {package} with {c.settings.tool} "
        f"(see {package / 'README.txt'}), then run: {after} --package PATH (PATH: what {c.settings.tool} exported)"
    )


@app.command("next")
@run_command("campaign next")
def next_(
    folder: Folder,
    package: Annotated[
        Path | None,
        typer.Option(
            "--package",
            metavar="PATH",
            help="What the labeling tool returned for the round waiting for labels (a Label Studio JSON export, a "
            "CVAT XML or .zip, a folder). [default: the round's package folder, labeled in place]",
        ),
    ] = None,
    until_blocked: Annotated[
        bool,
        typer.Option(
            "--until-blocked", help="Keep going until the labeler is needed or the campaign is done. [default: off]"
        ),
    ] = False,
    session: Session = SESSION.without("skip_bad", "force"),
) -> None:
    """Run the campaign's next step (each printed as the crowdtk command it runs, on stderr).

    Steps: select a round's regions (excluding earlier rounds'), export its package for the tool (or, with
    --oracle, import the oracle's labels), import the returned labels merged with earlier rounds', train the
    round's counter, its strip vectors for the next round; after the last round the final counter. A step whose
    output exists is not redone; two 'next' on one folder never run at once. When the labeler is needed, says
    which folder to label and what to run after, and exits 0.
    """
    from crowdtk.cli.pipeline import Runner

    log = session.log
    if not (folder / "campaign.json").is_file():
        raise CrowdtkError(f"{folder}: no campaign.json here", "start a campaign with crowdtk campaign init")
    claim(folder, True, folder=True, lock_only=True)  # one step of a campaign at a time
    c = Campaign.load(folder)
    k = c.current()
    if package is not None:
        if k is None or c.phase(k) != LABELING:
            raise UsageError(
                f"--package {package}: no round is waiting for labels", "leave --package out (see campaign status)"
            )
        if not package.exists():
            raise CrowdtkError(f"{package}: no such file or folder", "pass what the labeling tool exported")
    runner, ran = Runner(folder, log), 0
    while True:
        k = c.current()
        if k is None:
            what = "done" if ran else "already done: nothing to run"
            typer.echo(f"campaign {what}; the final counter is {c.final_model()}")
            return
        phase = c.phase(k)
        given = package.resolve() if package is not None else None
        step = c.step(k, phase, given)
        if step is None:  # labels are out with a tool that returns a file of its own
            typer.echo(_waiting(c, k))
            return
        if phase == LABELING:
            returned = c.returned_path(k, given)
            try:
                runner.execute(step)
            except CrowdtkError as exc:
                raise CrowdtkError(
                    f"round {k}: the labels in {returned} could not be imported ({exc.what})",
                    f"finish labeling {c.package(k)} (its README.txt says how), then rerun crowdtk campaign next",
                ) from None
            if given is not None:
                c.returned[k] = str(given)
        else:
            runner.execute(step)
        c.save()
        ran += 1
        if phase == EXPORT:
            typer.echo(_waiting(c, k))
            return
        if not until_blocked:
            k = c.current()
            if k is None:
                typer.echo(f"campaign done; the final counter is {c.final_model()}")
            else:
                typer.echo(f"next: round {k} {c.phase(k)} (crowdtk campaign next {folder})")
            return


def _status(c: Campaign) -> dict[str, Any]:
    st = c.settings
    rounds = [c.round_state(p.round) for p in c.plan]
    k = c.current()
    counters = [r["model"] for r in rounds if "model" in r]
    counter = str(c.final_model()) if k is None else (counters[-1] if counters else st.init)
    error = counter_error(c.model(c.last)) if k is None else None
    budget: dict[str, Any] = {"area": st.budget, "heads": st.budget_heads}
    return {
        "folder": str(c.folder),
        "tool": st.tool,
        "oracle": st.oracle,
        "budget": budget,
        "spent": c.spent(),
        "rounds": rounds,
        "counter": counter,
        "final": k is None,
        "held_out_error": error,
        "next": None if k is None else {"round": k, "phase": c.phase(k)},
    }


@app.command("status")
@run_command("campaign status")
def status(
    folder: Folder,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout. [default: off]")] = False,
    session: Session = SESSION.without("skip_bad", "force"),
) -> None:
    """Rounds, the budget spent and left, packages out and back, the current counter and its held-out error."""
    c = Campaign.load(folder)
    s = _status(c)
    if as_json:
        typer.echo(json.dumps(s, indent=1))
        return
    st, spent = c.settings, s["spent"]
    budget = f"{100 * st.budget:g}% of the pool's area" if st.budget is not None else f"{st.budget_heads:g} heads"
    labeler = "the oracle " + str(st.oracle) if st.oracle else st.tool
    lines = [f"campaign {folder}: {st.rounds} rounds, budget {budget}, labeled by {labeler}"]
    if st.init is not None:
        lines.append(f"initial counter: {st.init}" + (" (every counter starts from it)" if st.finetune else ""))
    for r in s["rounds"]:
        kind = "warm-up, random" if c.plan[r["round"] - 1].warmup else r["strategy"]
        parts = [r["phase"]]
        if "area_fraction" in r:
            parts.append(f"{100 * r['area_fraction']:.2f}% of the area in {r['images']} images")
        if "heads" in r:
            parts.append(f"{r['heads']} heads")
        if "package" in r:
            parts.append(f"package {r['package_state']}: {r['package']}")
        lines.append(f"round {r['round']} ({kind}): " + "; ".join(parts))
    left = ""
    if "area_left" in spent:
        left = f" ({100 * spent['area_left']:.2f}% left)"
    elif "heads_left" in spent:
        left = f" ({spent['heads_left']:g} heads left)"
    lines.append(f"spent: {100 * spent['area_fraction']:.2f}% of the area, {spent['heads']} heads{left}")
    lines.append(f"counter: {s['counter'] or 'none yet'}" + (" (final)" if s["final"] else ""))
    error = s["held_out_error"]
    if error is not None:
        if error["val_mae"] is not None:
            lines.append(f"error on the held-out labeled images: MAE {error['val_mae']:.2f}")
        else:
            lines.append("error on held-out labeled images: none held out (--holdout 0, or fewer than 5 labeled)")
    nxt = s["next"]
    lines.append(
        "done" if nxt is None else f"next: round {nxt['round']} {nxt['phase']} (crowdtk campaign next {folder})"
    )
    typer.echo("\n".join(lines))
