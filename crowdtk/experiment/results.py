"""An experiment's numbers: each run's result, the mean ± std over seeds, the paper's claims with a
verdict, and the tables of results.md."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from crowdtk.experiment.plan import SHAPES, Experiment, Run, Step
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
        out.append({
            "method": method, "budget": budget, "shape": shape, "seeds": [r["seed"] for r in runs],
            "mae": _mean_std([r["mae"] for r in runs]), "rmse": _mean_std([r["rmse"] for r in runs]),
            "heads_labeled": statistics.fmean(r["heads_labeled"] for r in runs),
            "heads_supervised_fraction": min(r["heads_supervised_fraction"] for r in runs),
            "images_labeled": statistics.fmean(r["images_labeled"] for r in runs),
            "area_fraction": statistics.fmean(r["area_fraction"] for r in runs),
            "wall_s": statistics.fmean(r["wall_s"] for r in runs),
            "runs": runs,
        })
    return out


# The paper's claims as (should be better, should be worse, the claim) at one budget; lower MAE is better.
CLAIMS = (
    ("random", "none-or-all", "region-level labels beat None-or-All (Fig. 4)"),
    ("mdc", "random", "MDC beats random strips"),
    ("mdc", "max", "MDC beats MAX"),
    ("mdc+cap", "mdc", "CAP improves MDC"),
    ("mdc+cap", "none-or-all", "the gap to full shrinks: MDC+CAP is nearer full than None-or-All"),
)


def claims(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each claim whose two methods ran, per budget, with its verdict on the MAE means.

    A difference counts only beyond the combined spread (the sum of the two seed standard
    deviations): "holds" when the claimed order wins by more than that, "contradicted" when
    the other order does, "within the spread" otherwise; one seed has no spread to judge by."""
    out = []
    strips = {(r["method"], r["budget"]): r for r in results if r["shape"] == "strip"}
    for budget in sorted({b for _, b in strips}):
        for better, worse, claim in CLAIMS:
            a, b = strips.get((better, budget)), strips.get((worse, budget))
            if a is None or b is None:
                continue
            gain = b["mae"]["mean"] - a["mae"]["mean"]
            spread = a["mae"]["std"] + b["mae"]["std"]
            if min(len(a["seeds"]), len(b["seeds"])) < 2:
                verdict = "one seed: not settled"
            else:
                verdict = "holds" if gain > spread else "contradicted" if -gain > spread else "within the spread"
            out.append({"budget": budget, "claim": claim, "better": better, "worse": worse, "mae_gain": gain,
                        "relative_gain": gain / b["mae"]["mean"] if b["mae"]["mean"] else 0.0, "spread": spread, "verdict": verdict})
    return out


def _score(row: dict[str, Any], key: str) -> str:
    m = row[key]
    return f"{m['mean']:.2f}" + (f" ± {m['std']:.2f}" if len(row["seeds"]) > 1 else "")


def markdown_table(results: list[dict[str, Any]], title: str) -> str:
    """results.md: one table per budget (methods as rows), then the paper's layouts when
    several budgets (Table 2, Fig. 4) or shapes (Table 1) were run."""
    lines = [f"# {title}", ""]
    budgets = sorted({r["budget"] for r in results})
    for budget in budgets:
        lines += [f"## Budget {100 * budget:g}%", "",
                  "| method | MAE | RMSE | images labeled | heads labeled | heads supervised | area labeled | wall time |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in results:
            if r["budget"] != budget:
                continue
            name = r["method"] if r["shape"] == "strip" else f"{r['method']} ({r['shape']}s)"
            lines.append(f"| {name} | {_score(r, 'mae')} | {_score(r, 'rmse')} | {r['images_labeled']:.0f} | "
                         f"{r['heads_labeled']:.0f} | {100 * r['heads_supervised_fraction']:.2f}% | {100 * r['area_fraction']:.2f}% | "
                         f"{r['wall_s'] / 60:.1f} min |")
        lines.append("")
        verdicts = [c for c in claims(results) if c["budget"] == budget]
        if verdicts:
            lines += ["The paper's claims (MAE; a difference counts only beyond the sum of the two seed std's):", "",
                      "| claim | MAE gain | combined spread | verdict |", "|---|---|---|---|"]
            lines += [f"| {c['claim']} | {c['mae_gain']:+.2f} ({100 * c['relative_gain']:+.0f}%) | {c['spread']:.2f} | {c['verdict']} |"
                      for c in verdicts]
            lines.append("")
    if len(budgets) > 1:
        lines += ["## MAE / RMSE against the budget (Table 2, Fig. 4)", "",
                  "| method | " + " | ".join(f"{100 * b:g}%" for b in budgets) + " |",
                  "|---|" + "---|" * len(budgets)]
        for method in dict.fromkeys(r["method"] for r in results if r["shape"] == "strip"):
            cells = {r["budget"]: f"{r['mae']['mean']:.2f}/{r['rmse']['mean']:.2f}"
                     for r in results if r["method"] == method and r["shape"] == "strip"}
            lines.append(f"| {method} | " + " | ".join(cells.get(b, "–") for b in budgets) + " |")
        lines.append("")
    shapes = [s for s in SHAPES if any(r["shape"] == s and r["method"] == "random" for r in results)]
    if len(shapes) > 1:
        lines += ["## Random regions of other shapes (Table 1), MAE / RMSE", "",
                  "| budget | " + " | ".join(shapes) + " |", "|---|" + "---|" * len(shapes)]
        for budget in budgets:
            cells = {r["shape"]: f"{r['mae']['mean']:.2f}/{r['rmse']['mean']:.2f}"
                     for r in results if r["method"] == "random" and r["budget"] == budget}
            lines.append(f"| {100 * budget:g}% | " + " | ".join(cells.get(s, "–") for s in shapes) + " |")
        lines.append("")
    return "\n".join(lines)


def demo_report(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """report.json's per-method numbers (crowdtk demo): mean ± std over seeds and what was labeled."""
    return {r["method"]: {"mae": r["mae"]["mean"], "mae_std": r["mae"]["std"], "rmse": r["rmse"]["mean"], "rmse_std": r["rmse"]["std"],
                          "seeds": r["seeds"], "area_fraction": r["area_fraction"], "heads_labeled": r["heads_labeled"],
                          "images_labeled": r["images_labeled"], "wall_s": r["wall_s"]}
            for r in results}


def demo_table(report: dict[str, dict[str, Any]], verdicts: list[dict[str, Any]]) -> str:
    """What crowdtk demo prints: MAE, RMSE and what was labeled per method (``report``), then each claim's verdict."""
    lines = [f"{'method':<13}{'MAE':>15}{'RMSE':>15}{'area':>8}{'heads':>8}{'images':>8}"]
    lines += [f"{name:<13}{r['mae']:>7.2f} ± {r['mae_std']:<5.2f}{r['rmse']:>7.2f} ± {r['rmse_std']:<5.2f}"
              f"{100 * r['area_fraction']:>7.2f}%{r['heads_labeled']:>8.0f}{r['images_labeled']:>8.0f}" for name, r in report.items()]
    lines += [f"{c['claim']}: {c['verdict']} (MAE {c['mae_gain']:+.2f}, spread {c['spread']:.2f})" for c in verdicts]
    return "\n".join(lines)
