"""The doubling check: has every method of a bench converged?

    .venv/bin/python -m benchmarks.doubling SHORT_BENCH_DIR LONG_BENCH_DIR

Reads two `crowdtk bench` folders made with the same seeds and data, the second with twice the
steps (`--steps`, `--warmup-steps`), and prints a Markdown table: each method's MAE under both
schedules, the change paired by seed with its 95% Student-t interval, and whether the interval
contains zero (converged: doubling moved the mean by no more than the seeds can tell apart).
Exits 1 when a method has not converged.
"""

from __future__ import annotations

import sys
from pathlib import Path

from crowdtk.experiment.results import interval_text, schedule_change
from crowdtk.formats import BENCH_RESULTS, read_json


def main(short_dir: Path, long_dir: Path) -> int:
    short, long = (read_json(d / "results.json", BENCH_RESULTS) for d in (short_dir, long_dir))
    steps = [d["settings"]["steps"] for d in (short, long)]
    rows = schedule_change(short["results"], long["results"])
    print(f"| method | {steps[0]} steps | {steps[1]} steps | seeds | change | 95% interval | converged |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        name = r["method"] if r["shape"] == "strip" else f"{r['method']} ({r['shape']}s)"
        verdict = "–" if r["converged"] is None else "yes" if r["converged"] else "**no**"
        change = "–" if r["change"] is None else f"{r['change']:+.2f}"
        print(
            f"| {name} at {100 * r['budget']:g}% | {r['short']['mean']:.2f} ± {r['short']['std']:.2f} | "
            f"{r['long']['mean']:.2f} ± {r['long']['std']:.2f} | {r['seeds']} | {change} | {interval_text(r)} | "
            f"{verdict} |"
        )
    return 1 if any(r["converged"] is False for r in rows) else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
