"""How good are `export --prelabel` suggestions? Precision and recall against the true heads.

    .venv/bin/python -m benchmarks.prelabel --bench bench-out/partB --out bench-out/prelabel
        [--seed 0] [--budget 0.1] [--radius 8] [--counter 'NAME=CKPT' ... --feature-cache DIR]

Needs a finished `crowdtk bench … --methods mdc+cap` folder (its warm-up counter, its final
counter and the regions MDC chose). Two sets of regions are pre-labeled by each counter:

- the pool regions MDC chose after the warm-up round: the round the warm-up counter pre-labels
  in the paper's loop. The warm-up counter has not seen them; the final counter was trained on
  them, so its row there is optimistic;
- random strips at the same budget on the test images, which neither counter has seen.

Other counters (``--counter``, e.g. ones trained at another ``--scale``) replace the bench's two, with
their own ``--feature-cache``. Each is a real `crowdtk export --to labelstudio --link --prelabel CKPT`
package; the suggestions are read back from its tasks.json and matched one-to-one to the oracle's heads
within ``--radius`` px (the pairing of ``labels diff``). Clicks saved = matched suggestions / heads (each a
head the labeler need not click); net of deletions subtracts the wrong suggestions the labeler deletes.
Writes OUT/prelabel.json and OUT/prelabel.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from crowdtk.formats import read_labels, read_regions
from crowdtk.labeling.diff import match_points

CROWDTK = [sys.executable, "-m", "crowdtk"]


def crowdtk(*args: str) -> None:
    print("+ crowdtk " + " ".join(args), file=sys.stderr, flush=True)
    subprocess.run([*CROWDTK, *args], check=True)


def suggested_points(tasks: Path) -> dict[str, np.ndarray]:
    """Per image id, the suggested heads of a Label Studio package, in full-image pixels."""
    out = {}
    for task in json.loads(tasks.read_text()):
        points = [
            (r["value"]["x"] * r["original_width"] / 100, r["value"]["y"] * r["original_height"] / 100)
            for p in task["predictions"]
            for r in p["result"]
            if r["type"] == "keypointlabels"
        ]
        out[task["data"]["crowdtk_id"]] = np.array(points, dtype=np.float64).reshape(-1, 2)
    return out


def score(regions: Path, truth: Path, package: Path, radius: float) -> dict[str, float]:
    """Precision, recall and clicks saved of one package's suggestions against the true heads inside its regions
    (and recall within twice ``radius``, for a sense of how far off the unmatched ones are)."""
    _, entries = read_regions(regions)
    _, labels = read_labels(truth)
    heads_of = {e.id: e.points for e in labels}
    suggested = suggested_points(package / "tasks.json")
    n_suggested = n_heads = n_matched = n_near = 0
    for entry in entries:
        truth_points = heads_of.get(entry.id, np.zeros((0, 2)))
        inside = np.zeros(len(truth_points), dtype=bool)
        for region in entry.regions:
            inside |= region.contains(truth_points)
        mine = suggested.get(entry.id, np.zeros((0, 2)))
        n_suggested, n_heads = n_suggested + len(mine), n_heads + int(inside.sum())
        n_matched += len(match_points(mine, truth_points[inside], radius)[0])
        n_near += len(match_points(mine, truth_points[inside], 2 * radius)[0])
    return {
        "n_regions": sum(len(e.regions) for e in entries),
        "heads": n_heads,
        "recall_at_2x_radius": n_near / max(n_heads, 1),
        "suggested": n_suggested,
        "matched": n_matched,
        "precision": n_matched / max(n_suggested, 1),
        "recall": n_matched / max(n_heads, 1),
        "clicks_saved": n_matched / max(n_heads, 1),
        "net_of_deletions": (2 * n_matched - n_suggested) / max(n_heads, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, required=True, help="a finished bench folder with mdc+cap")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=float, default=0.1)
    parser.add_argument("--radius", type=float, default=8.0)
    parser.add_argument("--scale", default="0.5", help="the bench's --scale (strip edges on its cell grid)")
    parser.add_argument(
        "--counter",
        action="append",
        default=[],
        metavar="NAME=CKPT",
        help="a counter to measure instead of the bench's",
    )
    parser.add_argument(
        "--feature-cache", type=Path, help="the feature cache of --counter's training [default: the bench's]"
    )
    args = parser.parse_args()
    run = args.bench / "runs" / f"budget-{args.budget:g}" / f"seed-{args.seed}"
    cache = str(args.feature_cache or args.bench / "feature-cache")
    counters = {
        "warm-up": run / "warmup" / "model.safetensors",
        "final (mdc+cap)": run / "mdc+cap" / "infer.safetensors",
    }
    if args.counter:
        counters = {name: Path(ckpt) for name, ckpt in (c.split("=", 1) for c in args.counter)}
    args.out.mkdir(parents=True, exist_ok=True)
    test_regions, test_truth = args.out / "test-regions.jsonl", args.out / "test-labels.jsonl"
    if not test_truth.exists():
        test = args.bench / "data" / "test.manifest.jsonl"
        crowdtk(
            "select",
            str(test),
            "--budget",
            f"{args.budget:g}",
            "--strategy",
            "random",
            "--scale",
            args.scale,
            "--seed",
            str(args.seed),
            "-o",
            str(test_regions),
            "--force",
            "-q",
        )
        crowdtk("import", str(test_regions), "--oracle", str(test), "-o", str(test_truth), "--force", "-q")
    sets = {
        "pool, MDC's regions": (run / "select-mdc" / "regions.jsonl", run / "select-mdc" / "labels.jsonl"),
        "test, random strips": (test_regions, test_truth),
    }
    rows = []
    for set_name, (regions, truth) in sets.items():
        for counter_name, checkpoint in counters.items():
            package = args.out / f"{set_name.split(',')[0]}-{''.join(c if c.isalnum() else '-' for c in counter_name)}"
            if not (package / "tasks.json").exists():
                crowdtk(
                    "export",
                    str(regions),
                    "--to",
                    "labelstudio",
                    "--link",
                    "--prelabel",
                    str(checkpoint),
                    "--feature-cache",
                    cache,
                    "-o",
                    str(package),
                    "--force",
                    "-q",
                )
            rows.append({"regions": set_name, "counter": counter_name, **score(regions, truth, package, args.radius)})
    command = "python -m benchmarks.prelabel " + " ".join(sys.argv[1:])
    (args.out / "prelabel.json").write_text(
        json.dumps({"command": command, "radius": args.radius, "rows": rows}, indent=1) + "\n"
    )
    lines = [
        f"`{command}` (matched one-to-one within {args.radius:g} px)",
        "",
        "| regions | counter | heads | suggested | precision | recall = clicks saved | net of deletions | "
        f"recall within {2 * args.radius:g} px |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['regions']} ({r['n_regions']}) | {r['counter']} | {r['heads']} | {r['suggested']} | "
        f"{r['precision']:.2f} | {r['recall']:.2f} | {r['net_of_deletions']:.2f} | {r['recall_at_2x_radius']:.2f} |"
        for r in rows
    ]
    (args.out / "prelabel.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
