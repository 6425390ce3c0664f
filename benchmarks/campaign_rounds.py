"""Clicks and test error round by round: the labeling loop as a campaign with the oracle, in two, five, and five
pre-labeled rounds, all at one total budget.

    .venv/bin/python -m benchmarks.campaign_rounds --train TRAIN --test TEST --out DIR
        [--budget 0.1] [--seeds 1] [--rounds 5] [--steps N] [--warmup-steps N] [--scale F]
        [--feature-cache DIR] [--radius 8] [--batch-size N] [--no-pretrained] [--device auto]

TRAIN and TEST are split folders (indexed into DIR/data) or manifests; TRAIN is the pool and its ground truth the
oracle. The arms, per seed (``campaign init --seed S``, seeds 0 .. --seeds - 1):

- ``2 rounds``: the paper's loop (``campaign init --rounds 2``): a warm-up round of random strips on 20% of the images
  (``--warmup-frac``) at the budget's per-image rate, i.e. 0.2 × budget of the pool's area, then one MDC round up to
  the budget;
- ``5 rounds`` (``--rounds 5``): the same warm-up round, then four MDC rounds, each chosen by the counter of the round
  before. ``plan_rounds`` (crowdtk/campaign.py) takes the labeled share of the pool to
  budget × (0.2 + 0.8 (k - 1) / 4) after round k ≥ 2, so every later round labels 0.2 × budget more: at budget 0.1,
  2%, 4%, 6%, 8% and 10% of the pool's area after rounds 1 to 5;
- ``5 rounds with pre-labels``: the same campaign folder (the oracle's labels do not depend on suggestions), its
  clicks counted as if every round k ≥ 2 had been exported with ``--prelabel`` of round k - 1's counter.

Clicks of a round: without pre-labels, the heads it labeled (its merged labels minus the round before's); with them,
heads + suggestions deleted - suggestions accepted, the suggestions being those of a real
``crowdtk export ROUND_REGIONS --to labelstudio --link --prelabel PREVIOUS_COUNTER`` package, matched one-to-one to
the oracle's heads within ``--radius`` px (benchmarks/prelabel.py's ``score``): a matched suggestion is a head the
labeler accepts instead of clicking, an unmatched one a click to delete it. Round 1 has no counter before it: its
clicks are its heads in every arm.

Test error: ``crowdtk eval`` of every round's counter on TEST, with the feature cache and device the campaign trains
with. Rounds before the last train like the warm-up counter (``--warmup-steps``, no CAP); the last round trains the
final counter (``--steps``, CAP; its inference checkpoint is evaluated), so the last point of a line is a longer,
CAP-trained counter. Both campaigns of a seed share their first round: it is the same commands in both (same
settings but ``--rounds``), so the longer campaign gets the two-round one's round-1 files (regions, labels,
counter, vectors; byte-identical copies) instead of training that counter again, and the evaluation of a counter
whose bytes were evaluated already is reused.

Every step is a campaign step (``campaign init``, ``campaign next --until-blocked``) or a file already written
(evaluations, pre-label packages): rerunning skips what exists. Each crowdtk command is printed on stderr and run in
this process (torch loads once, as in ``crowdtk bench``). Writes
DIR/rounds.json (every seed's rows and the table of means over seeds), DIR/rounds.md and DIR/rounds.png (test MAE
against cumulative clicks, one line per arm, a marker per round).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.prelabel import score
from crowdtk.campaign import DONE, Campaign, labeled_heads
from crowdtk.experiment import Experiment, manifest_step
from crowdtk.experiment.plan import exact
from crowdtk.files import atomic_path, file_digest
from crowdtk.formats import read_regions

PAPER_ROUNDS = 2
RADIUS = 8.0  # benchmarks/prelabel.py's default --radius
TOOL = "labelstudio"  # campaign init names a tool; with --oracle no package is ever exported for it


def arm_names(rounds: int) -> tuple[str, str, str]:
    return f"{PAPER_ROUNDS} rounds", f"{rounds} rounds", f"{rounds} rounds with pre-labels"


def crowdtk(*args: object, output: bool = False) -> str:
    """Run ``crowdtk ARGS`` in this process, printed first as benchmarks/prelabel.py prints its commands (torch and the
    models load once for every command, as in ``campaign next`` and ``bench``); its standard output with ``output``."""
    from crowdtk.cli import app

    argv = [str(a) for a in args]
    print("+ crowdtk " + " ".join(argv), file=sys.stderr, flush=True)
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured) if output else contextlib.nullcontext():
        code = app(args=argv, prog_name="crowdtk", standalone_mode=False)
    if code:
        raise SystemExit(f"benchmarks/campaign_rounds.py: error: crowdtk {argv[0]} failed (exit {code}); see above")
    return captured.getvalue()


def manifests(args: argparse.Namespace) -> tuple[Path, Path]:
    """The pool's and the test set's manifests: split folders are indexed into OUT/data, as the bench does."""
    out = []
    for source, split in ((args.train, "train"), (args.test, "test")):
        path, step = manifest_step(source, args.out, split)
        if step is not None and not step.output.exists():
            crowdtk(*step.argv)
        out.append(path.resolve())
    return out[0], out[1]


# --------------------------------------------------------------------------- the campaigns


def wanted_settings(args: argparse.Namespace, rounds: int, seed: int) -> dict[str, Any]:
    """What this script passes to `campaign init`, as the campaign's settings record it (options not given are the
    campaign's defaults and are not compared)."""
    want: dict[str, Any] = {
        "budget": args.budget,
        "rounds": rounds,
        "seed": seed,
        "holdout": 0.0,
        "feature_cache": str(args.feature_cache),
    }
    schedule = {"steps": args.steps, "warmup_steps": args.warmup_steps, "scale": args.scale}
    schedule |= {"batch_size": args.batch_size, "pretrained": False if args.no_pretrained else None}
    want |= {f"schedule.{k}": v for k, v in schedule.items() if v is not None}
    return want


def start(folder: Path, pool: Path, rounds: int, seed: int, args: argparse.Namespace) -> Campaign:
    """`campaign init` of one arm's campaign, or the one made before when its settings are this run's."""
    if not (folder / "campaign.json").is_file():
        options: list[object] = ["--steps", args.steps] if args.steps is not None else []
        options += ["--warmup-steps", args.warmup_steps] if args.warmup_steps is not None else []
        options += ["--scale", exact(args.scale)] if args.scale is not None else []
        options += ["--batch-size", args.batch_size] if args.batch_size is not None else []
        options += ["--no-pretrained"] if args.no_pretrained else []
        crowdtk("campaign", "init", str(pool), "--budget", exact(args.budget), "--tool", TOOL, "--oracle", str(pool),
                "--rounds", str(rounds), "--seed", str(seed), "--holdout", "0", "--feature-cache",
                str(args.feature_cache), *map(str, options), "--device", args.device, "-o", str(folder))  # fmt: skip
    c = Campaign.load(folder)
    have = {k: v for k, v in c.settings.to_record().items() if k != "schedule"}
    have |= {f"schedule.{k}": v for k, v in c.settings.to_record()["schedule"].items()}
    changed = sorted(k for k, v in wanted_settings(args, rounds, seed).items() if have.get(k) != v)
    if changed:
        raise SystemExit(
            f"benchmarks/campaign_rounds.py: error: {folder} holds a campaign made with other settings "
            f"({', '.join(changed)} differ); choose another --out, or remove it to start anew"
        )
    return c


def finish(c: Campaign) -> Campaign:
    """Every round of the campaign (the oracle labels them, so nothing waits for a labeler)."""
    if c.current() is not None:
        crowdtk("campaign", "next", str(c.folder), "--until-blocked")
    c = Campaign.load(c.folder)
    if c.current() is not None:
        raise SystemExit(f"benchmarks/campaign_rounds.py: error: {c.folder} stopped before its end; see above")
    return c


def round_one_files(c: Campaign) -> list[Path]:
    """What round 1 leaves for the rounds after it, in the order the campaign makes them (copying them in that order,
    each atomically, leaves a folder a campaign can go on from at every point)."""
    return [c.regions(1), c.labels(1), c.model(1), c.vectors(1)]


def share_round_one(source: Campaign, target: Campaign) -> bool:
    """Give ``target`` the finished round 1 of ``source`` when it is the same commands in both (settings equal but the
    rounds, same first round planned) and ``target`` has not started it; whether the two hold the same round 1."""
    same = (
        replace(source.settings, rounds=target.settings.rounds) == target.settings
        and source.plan[0] == target.plan[0]
        and source.needs_vectors(2) == target.needs_vectors(2)
    )
    if not same or source.phase(1) != DONE:
        return False
    if not target.round_dir(1).exists():
        for src, dst in zip(round_one_files(source), round_one_files(target)):
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
    pairs = zip(round_one_files(source), round_one_files(target))
    return all(dst.is_file() and file_digest(src) == file_digest(dst) for src, dst in pairs)


# --------------------------------------------------------------------------- measuring a campaign's rounds


def counter_of(c: Campaign, k: int) -> Path:
    """The counter round k ends with: the last round's inference checkpoint (CAP removed), else its model."""
    return c.final_model() if k == c.last else c.model(k)


def inference_options(c: Campaign, test: Path) -> list[str]:
    """--feature-cache and --device for running the campaign's counters, from the option builder its steps use."""
    st = c.settings
    cache = None if st.feature_cache is None else Path(st.feature_cache)
    e = Experiment(Path(st.pool), test, c.folder, st.schedule, st.device, cache)
    return [*e.cache_option(), "--device", st.device]


def evaluation(c: Campaign, k: int, test: Path, evaluated: dict[str, Path]) -> dict[str, Any]:
    """`crowdtk eval` of round k's counter on the test set (DIR/round-k/test-eval.json); ``evaluated`` maps a counter
    file's digest to its evaluation, reused for a counter of the same bytes."""
    counter, out = counter_of(c, k), c.round_dir(k) / "test-eval.json"
    digest = file_digest(counter)
    if not out.exists():
        if digest in evaluated:
            text = evaluated[digest].read_text()
        else:
            text = crowdtk("eval", counter, test, "--json", *inference_options(c, test), "-q", output=True)
        with atomic_path(out) as tmp:
            tmp.write_text(text)
    evaluated.setdefault(digest, out)
    return json.loads(out.read_text())


def suggestion_counts(c: Campaign, k: int, test: Path, packages: Path, radius: float) -> dict[str, int]:
    """Round k's regions exported with round k - 1's counter's suggestions, scored against the oracle's heads."""
    package = packages / f"round-{k}"
    if not any(e.regions for e in read_regions(c.regions(k))[1]):  # a round the budget left nothing to label
        return {"heads_in_regions": 0, "suggested": 0, "accepted": 0}
    if not (package / "tasks.json").exists():
        crowdtk("export", str(c.regions(k)), "--to", "labelstudio", "--link", "--prelabel", str(c.model(k - 1)),
                *inference_options(c, test), "-o", str(package), "--force", "-q")  # fmt: skip
    s = score(c.regions(k), c.labels(k), package, radius)
    return {"heads_in_regions": int(s["heads"]), "suggested": int(s["suggested"]), "accepted": int(s["matched"])}


def campaign_rows(
    c: Campaign, arm: str, seed: int, test: Path, evaluated: dict[str, Path], prelabels: tuple[Path, float] | None
) -> list[dict[str, Any]]:
    """One row per round: area, heads, suggestions (with ``prelabels``: the packages' folder and the radius), clicks,
    cumulative clicks and the test error of the round's counter."""
    rows, total = [], 0
    for p in c.plan:
        k = p.round
        heads = labeled_heads(c.labels(k)) - (labeled_heads(c.labels(k - 1)) if k > 1 else 0)
        row: dict[str, Any] = {
            "arm": arm,
            "seed": seed,
            "round": k,
            "strategy": p.strategy,
            "area_fraction": read_regions(c.regions(k))[0].get("cumulative_area_fraction"),
            "heads": heads,
            "suggested": None,
            "accepted": None,
            "deleted": None,
            "clicks": heads,
        }
        if prelabels is not None and k > 1:
            counts = suggestion_counts(c, k, test, *prelabels)
            deleted = counts["suggested"] - counts["accepted"]
            row |= counts | {"deleted": deleted, "clicks": heads + deleted - counts["accepted"]}
            if counts["heads_in_regions"] != heads:
                print(
                    f"benchmarks/campaign_rounds.py: warning: {c.regions(k)}: {counts['heads_in_regions']} oracle "
                    f"heads inside the regions, {heads} labeled in the round",
                    file=sys.stderr,
                )
        total += row["clicks"]
        scores = evaluation(c, k, test, evaluated)
        row |= {
            "cumulative_clicks": total,
            "mae": scores["mae"],
            "rmse": scores["rmse"],
            "counter": str(counter_of(c, k)),
        }
        rows.append(row)
    return rows


def seed_rows(seed: int, pool: Path, test: Path, args: argparse.Namespace) -> tuple[list[dict[str, Any]], bool]:
    """Every arm's rows of one seed, and whether its two campaigns share round 1."""
    paper_arm, many_arm, prelabeled_arm = arm_names(args.rounds)
    d = args.out / f"seed-{seed}"
    paper = finish(start(d / f"rounds-{PAPER_ROUNDS}", pool, PAPER_ROUNDS, seed, args))
    many = start(d / f"rounds-{args.rounds}", pool, args.rounds, seed, args)
    shared = share_round_one(paper, many)
    many = finish(many)
    evaluated: dict[str, Path] = {}
    rows = campaign_rows(paper, paper_arm, seed, test, evaluated, None)
    rows += campaign_rows(many, many_arm, seed, test, evaluated, None)
    rows += campaign_rows(many, prelabeled_arm, seed, test, evaluated, (d / "prelabels", args.radius))
    return rows, shared


# --------------------------------------------------------------------------- the report


def mean_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per arm and round, the mean over seeds (and the MAE's standard deviation, with two seeds or more)."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["arm"], r["round"]), []).append(r)
    table = []
    for (arm, k), group in groups.items():
        out: dict[str, Any] = {"arm": arm, "round": k, "seeds": len(group)}
        for key in ("area_fraction", "heads", "suggested", "accepted", "deleted", "clicks", "cumulative_clicks"):
            values = [r[key] for r in group if r[key] is not None]
            out[key] = statistics.fmean(values) if values else None
        out["mae"] = statistics.fmean(r["mae"] for r in group)
        out["mae_std"] = statistics.stdev([r["mae"] for r in group]) if len(group) > 1 else None
        out["rmse"] = statistics.fmean(r["rmse"] for r in group)
        table.append(out)
    return table


def number(x: float | None) -> str:
    return "–" if x is None else f"{x:.0f}"


def markdown(table: list[dict[str, Any]], command: str, seeds: int, radius: float) -> str:
    lines = [
        f"`{command}`",
        "",
        f"Means over {seeds} seed(s); pre-label suggestions matched to the oracle's heads within {radius:g} px. "
        "clicks = heads (without pre-labels), heads + deleted - accepted (with them); the last round of each arm is "
        "the final counter (CAP, --steps), the rounds before it warm-up counters (--warmup-steps).",
        "",
        "| arm | round | area labeled | heads | suggested | accepted | deleted | clicks | cumulative clicks | "
        "test MAE | test RMSE |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table:
        area = "–" if r["area_fraction"] is None else f"{100 * r['area_fraction']:.2f}%"
        mae = f"{r['mae']:.2f}" + ("" if r["mae_std"] is None else f" ± {r['mae_std']:.2f}")
        lines.append(
            f"| {r['arm']} | {r['round']} | {area} | {number(r['heads'])} | {number(r['suggested'])} | "
            f"{number(r['accepted'])} | {number(r['deleted'])} | {number(r['clicks'])} | "
            f"{number(r['cumulative_clicks'])} | {mae} | {r['rmse']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot(table: list[dict[str, Any]], path: Path, title: str) -> None:
    """Test MAE against cumulative clicks: a line per arm, a marker per round (numbered)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.add_subplot()
    arms = list(dict.fromkeys(r["arm"] for r in table))
    # Arms share round 1's point (and the pre-labeled arm its MAEs): each numbers its points on another side.
    for arm, marker, offset in zip(arms, ("o", "s", "^"), ((5, 5), (5, -12), (-12, 5))):
        mine = sorted((r for r in table if r["arm"] == arm), key=lambda r: r["round"])
        xs, ys = [r["cumulative_clicks"] for r in mine], [r["mae"] for r in mine]
        errors = [r["mae_std"] for r in mine]
        line = ax.errorbar(
            xs, ys, yerr=None if None in errors else errors, marker=marker, capsize=3, label=arm, linewidth=1.5
        )
        for r in mine:
            ax.annotate(
                str(r["round"]),
                (r["cumulative_clicks"], r["mae"]),
                textcoords="offset points",
                xytext=offset,
                fontsize=8,
                color=line[0].get_color(),
            )
    ax.set_xlabel("cumulative clicks (heads clicked + suggestions deleted - suggestions accepted)")
    ax.set_ylabel("test MAE")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def main(argv: list[str] | None = None) -> None:
    assert __doc__ is not None
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=Path, required=True, help="the pool: a split folder or its manifest (the oracle)")
    p.add_argument("--test", type=Path, required=True, help="the test set: a split folder or its manifest")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--budget", type=float, default=0.1, help="share of the pool's area, all rounds together")
    p.add_argument("--seeds", type=int, default=1, help="campaigns of seeds 0 .. N-1")
    p.add_argument("--rounds", type=int, default=5, help="rounds of the longer campaign (the paper's has 2)")
    p.add_argument("--steps", type=int, help="final counter's steps [default: the campaign's]")
    p.add_argument("--warmup-steps", type=int, help="every earlier round's counter's steps [default: the campaign's]")
    p.add_argument("--scale", type=float, help="[default: the campaign's, from the pool's image sizes]")
    p.add_argument("--feature-cache", type=Path, help="shared by every campaign [default: OUT/feature-cache]")
    p.add_argument("--radius", type=float, default=RADIUS, help="px within which a suggestion matches a true head")
    p.add_argument("--batch-size", type=int, help="[default: the campaign's]")
    p.add_argument("--no-pretrained", action="store_true", help="random front end (a dry run)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error(f"--seeds {args.seeds}: at least 1")
    if args.rounds <= PAPER_ROUNDS:
        p.error(f"--rounds {args.rounds}: the longer campaign needs more than {PAPER_ROUNDS}")
    args.out.mkdir(parents=True, exist_ok=True)
    args.feature_cache = (args.feature_cache or args.out / "feature-cache").resolve()
    pool, test = manifests(args)
    rows, shared = [], {}
    for seed in range(args.seeds):
        mine, shared[seed] = seed_rows(seed, pool, test, args)
        rows += mine
    table = mean_table(rows)
    command = "python -m benchmarks.campaign_rounds " + " ".join(sys.argv[1:] if argv is None else argv)
    record = {
        "command": command,
        "arms": list(arm_names(args.rounds)),
        "budget": args.budget,
        "seeds": args.seeds,
        "radius": args.radius,
        "round_one_shared": shared,
        "rows": rows,
        "table": table,
    }
    with atomic_path(args.out / "rounds.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")
    text = markdown(table, command, args.seeds, args.radius)
    with atomic_path(args.out / "rounds.md") as tmp:
        tmp.write_text(text)
    title = f"{args.train.name}, budget {args.budget:g}, {args.seeds} seed(s): test MAE after each round"
    plot(table, args.out / "rounds.png", title)
    print(text)


if __name__ == "__main__":
    main()
