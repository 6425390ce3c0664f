"""An experiment's numbers: each run's result, the mean ± std over seeds, the paper's claims with a
verdict, and the tables of results.md."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from crowdtk.experiment.plan import SHAPES, Experiment, Run, Step, bench_methods
from crowdtk.formats import read_labels, read_manifest


def run_result(experiment: Experiment, run: Run, timings: dict[str, float], steps: Sequence[Step]) -> dict[str, Any]:
    """One finished run's numbers: test errors, what was labeled, and the time its steps took."""
    import json

    from crowdtk.checkpoint import read_header

    scores = json.loads((experiment.run_dir(run) / run.name / "eval.json").read_text(encoding="utf-8"))
    _, labels = read_labels(experiment.selection_dir(run) / "labels.jsonl")
    _, pool = read_manifest(experiment.train_manifest)
    pool_area = sum(m.width * m.height for m in pool)
    supervision = read_header(experiment.run_dir(run) / run.name / "model.safetensors").get("supervision") or {}
    labeled, supervised = supervision.get("heads_labeled", 0), supervision.get("heads_supervised", 0)
    return {
        "seed": run.seed,
        "mae": scores["mae"],
        "rmse": scores["rmse"],
        "non_finite": len(scores.get("non_finite", [])),
        "heads_labeled": sum(len(e.points) for e in labels),
        # The heads inside cells the loss sees, over those labeled (training's own count).
        "heads_supervised_fraction": supervised / labeled if labeled else 1.0,
        "images_labeled": sum(1 for e in labels if e.regions),
        "area_fraction": sum(e.labeled_area for e in labels) / pool_area,
        "wall_s": sum(timings.get(str(s.output), 0.0) for s in steps),
    }


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def aggregate(rows: dict[tuple[str, float, str], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Mean and spread over seeds for each (method, budget, shape)."""
    out = []
    for (method, budget, shape), runs in rows.items():
        out.append(
            {
                "method": method,
                "budget": budget,
                "shape": shape,
                "seeds": [r["seed"] for r in runs],
                "mae": _mean_std([r["mae"] for r in runs]),
                "rmse": _mean_std([r["rmse"] for r in runs]),
                "heads_labeled": statistics.fmean(r["heads_labeled"] for r in runs),
                "heads_supervised_fraction": min(r["heads_supervised_fraction"] for r in runs),
                "images_labeled": statistics.fmean(r["images_labeled"] for r in runs),
                "area_fraction": statistics.fmean(r["area_fraction"] for r in runs),
                "wall_s": statistics.fmean(r["wall_s"] for r in runs),
                "runs": runs,
            }
        )
    return out


def paper_claims() -> list[tuple[str, str, str]]:
    """The paper's claims as (should be better, should be worse, the claim), from the methods' records
    (:attr:`~crowdtk.experiment.plan.Method.beats`), in the methods' order; lower MAE is better."""
    return [(m.name, worse, claim) for m in bench_methods().values() for worse, claim in m.beats]


CONFIDENCE = 0.95


def paired_interval(better: Sequence[dict[str, Any]], worse: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The MAE gain of ``better`` over ``worse`` seed by seed (worse's MAE − better's, on the seeds both ran):
    the mean gain and its 95% Student-t interval over those seeds (n − 1 degrees of freedom).

    Pairing removes what a seed does to both methods alike (which images and strips it draws, the
    initialisation); a t interval rather than a bootstrap because 3–5 seeds are too few for a
    bootstrap's percentiles to mean anything. With one common seed there is no interval (None)."""
    import math

    from scipy import stats

    mae_of = {r["seed"]: r["mae"] for r in better}
    gains = [r["mae"] - mae_of[r["seed"]] for r in worse if r["seed"] in mae_of]
    if not gains:
        return {"seeds": 0, "mean": None, "low": None, "high": None}
    mean = statistics.fmean(gains)
    if len(gains) < 2:
        return {"seeds": 1, "mean": mean, "low": None, "high": None}
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, len(gains) - 1)) * statistics.stdev(gains) / math.sqrt(len(gains))
    return {"seeds": len(gains), "mean": mean, "low": mean - half, "high": mean + half}


def verdict_of(interval: dict[str, Any]) -> str:
    """ "holds" when the whole interval favours the claim, "refuted" when it is wholly against it."""
    if interval["low"] is None:
        return "one seed: not settled" if interval["seeds"] else "no common seed"
    return "holds" if interval["low"] > 0 else "refuted" if interval["high"] < 0 else "undecided"


def claims(
    results: list[dict[str, Any]], claim_list: Sequence[tuple[str, str, str]] | None = None
) -> list[dict[str, Any]]:
    """Each claim (by default :func:`paper_claims`) whose two methods ran, per budget, with its verdict from the
    paired seed differences (:func:`paired_interval`, :func:`verdict_of`)."""
    claim_list = paper_claims() if claim_list is None else claim_list
    out = []
    strips = {(r["method"], r["budget"]): r for r in results if r["shape"] == "strip"}
    for budget in sorted({b for _, b in strips}):
        for better, worse, claim in claim_list:
            a, b = strips.get((better, budget)), strips.get((worse, budget))
            if a is None or b is None:
                continue
            interval = paired_interval(a["runs"], b["runs"])
            gain = interval["mean"] if interval["mean"] is not None else b["mae"]["mean"] - a["mae"]["mean"]
            out.append(
                {
                    "budget": budget,
                    "claim": claim,
                    "better": better,
                    "worse": worse,
                    "mae_gain": gain,
                    "relative_gain": gain / b["mae"]["mean"] if b["mae"]["mean"] else 0.0,
                    "seeds": interval["seeds"],
                    "ci_low": interval["low"],
                    "ci_high": interval["high"],
                    "verdict": verdict_of(interval),
                }
            )
    return out


def schedule_change(short: list[dict[str, Any]], long: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The doubling check: for each method (budget, shape) in both results, the MAE change from the
    ``short`` schedule to the ``long`` one, paired by seed, with its 95% interval. A method has
    converged when the interval contains zero: doubling moved its mean by no more than the seeds
    can tell apart."""
    long_of = {(r["method"], r["budget"], r["shape"]): r for r in long}
    out = []
    for r in short:
        other = long_of.get((r["method"], r["budget"], r["shape"]))
        if other is None:
            continue
        gain = paired_interval(other["runs"], r["runs"])  # short's MAE − long's, seed by seed
        low, high = (None, None) if gain["low"] is None else (-gain["high"], -gain["low"])
        out.append(
            {
                "method": r["method"],
                "budget": r["budget"],
                "shape": r["shape"],
                "short": r["mae"],
                "long": other["mae"],
                "seeds": gain["seeds"],
                "change": None if gain["mean"] is None else -gain["mean"],
                "ci_low": low,
                "ci_high": high,
                "converged": None if low is None or high is None else low <= 0 <= high,
            }
        )
    return out


def interval_text(c: dict[str, Any]) -> str:
    """A claim's interval as results.md and demo print it."""
    return "–" if c["ci_low"] is None else f"[{c['ci_low']:+.2f}, {c['ci_high']:+.2f}]"


def _score(row: dict[str, Any], key: str) -> str:
    m = row[key]
    return f"{m['mean']:.2f}" + (f" ± {m['std']:.2f}" if len(row["seeds"]) > 1 else "")


def markdown_table(results: list[dict[str, Any]], title: str) -> str:
    """results.md: one table per budget (methods as rows), then the paper's layouts when
    several budgets (Table 2, Fig. 4) or shapes (Table 1) were run."""
    lines = [f"# {title}", ""]
    budgets = sorted({r["budget"] for r in results})
    for budget in budgets:
        lines += [
            f"## Budget {100 * budget:g}%",
            "",
            "| method | MAE | RMSE | images labeled | heads labeled | heads supervised | area labeled | wall time |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in results:
            if r["budget"] != budget:
                continue
            name = r["method"] if r["shape"] == "strip" else f"{r['method']} ({r['shape']}s)"
            lines.append(
                f"| {name} | {_score(r, 'mae')} | {_score(r, 'rmse')} | {r['images_labeled']:.0f} | "
                f"{r['heads_labeled']:.0f} | {100 * r['heads_supervised_fraction']:.2f}% | "
                f"{100 * r['area_fraction']:.2f}% | {r['wall_s'] / 60:.1f} min |"
            )
        lines.append("")
        verdicts = [c for c in claims(results) if c["budget"] == budget]
        if verdicts:
            lines += [
                "The paper's claims: the MAE gain, mean of the paired differences over the seeds both methods ran, "
                f"with its {100 * CONFIDENCE:g}% Student-t interval; a claim holds when the interval lies above zero, "
                "is refuted when it lies below, and is undecided otherwise.",
                "",
                "| claim | seeds | MAE gain | 95% interval | verdict |",
                "|---|---|---|---|---|",
            ]
            lines += [
                f"| {c['claim']} | {c['seeds']} | {c['mae_gain']:+.2f} ({100 * c['relative_gain']:+.0f}%) | "
                f"{interval_text(c)} | {c['verdict']} |"
                for c in verdicts
            ]
            lines.append("")
    if len(budgets) > 1:
        lines += [
            "## MAE / RMSE against the budget (Table 2, Fig. 4)",
            "",
            "| method | " + " | ".join(f"{100 * b:g}%" for b in budgets) + " |",
            "|---|" + "---|" * len(budgets),
        ]
        for method in dict.fromkeys(r["method"] for r in results if r["shape"] == "strip"):
            cells = {
                r["budget"]: f"{r['mae']['mean']:.2f}/{r['rmse']['mean']:.2f}"
                for r in results
                if r["method"] == method and r["shape"] == "strip"
            }
            lines.append(f"| {method} | " + " | ".join(cells.get(b, "–") for b in budgets) + " |")
        lines.append("")
    shapes = [s for s in SHAPES if any(r["shape"] == s and r["method"] == "random" for r in results)]
    if len(shapes) > 1:
        lines += [
            "## Random regions of other shapes (Table 1), MAE / RMSE",
            "",
            "| budget | " + " | ".join(shapes) + " |",
            "|---|" + "---|" * len(shapes),
        ]
        for budget in budgets:
            cells = {
                r["shape"]: f"{r['mae']['mean']:.2f}/{r['rmse']['mean']:.2f}"
                for r in results
                if r["method"] == "random" and r["budget"] == budget
            }
            lines.append(f"| {100 * budget:g}% | " + " | ".join(cells.get(s, "–") for s in shapes) + " |")
        lines.append("")
    return "\n".join(lines)


def demo_report(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """report.json's per-method numbers (crowdtk demo): mean ± std over seeds and what was labeled."""
    return {
        r["method"]: {
            "mae": r["mae"]["mean"],
            "mae_std": r["mae"]["std"],
            "rmse": r["rmse"]["mean"],
            "rmse_std": r["rmse"]["std"],
            "seeds": r["seeds"],
            "area_fraction": r["area_fraction"],
            "heads_labeled": r["heads_labeled"],
            "images_labeled": r["images_labeled"],
            "wall_s": r["wall_s"],
        }
        for r in results
    }


def demo_table(report: dict[str, dict[str, Any]], verdicts: list[dict[str, Any]]) -> str:
    """What crowdtk demo prints: MAE, RMSE and what was labeled per method (``report``), then each claim's verdict."""
    lines = [f"{'method':<13}{'MAE':>15}{'RMSE':>15}{'area':>8}{'heads':>8}{'images':>8}"]
    lines += [
        f"{name:<13}{r['mae']:>7.2f} ± {r['mae_std']:<5.2f}{r['rmse']:>7.2f} ± {r['rmse_std']:<5.2f}"
        f"{100 * r['area_fraction']:>7.2f}%{r['heads_labeled']:>8.0f}{r['images_labeled']:>8.0f}"
        for name, r in report.items()
    ]
    lines += [
        f"{c['claim']}: {c['verdict']} (MAE gain {c['mae_gain']:+.2f}, 95% interval {interval_text(c)})"
        for c in verdicts
    ]
    return "\n".join(lines)
