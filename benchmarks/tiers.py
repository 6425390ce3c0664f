"""Training tiers compared at about equal wall time on ShanghaiTech Part B.

    .venv/bin/python -m benchmarks.tiers --out bench-out/tiers [--labels random,full] [--only NAME,...]

For each labels set (random strips at a 10% budget, or all images) and each tier, one `crowdtk
train` run (seed 0) from a cold feature cache, timed as a whole (cache included), then `crowdtk
eval` on the 316 test images. Tiers: today's fine-tuning of the whole lite counter on random
crops (800 steps, the bench default before the frozen tier), the frozen-encoder tier on Lite0
and Lite2 (Lite1, between them, is `--model lite1`), and the partly frozen tier (the dilated
80/112-channel stages fine-tuned on whole images). Writes OUT/tiers.json and OUT/tiers.md. Runs
one command at a time: run nothing else
alongside, the wall times are the result.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
from pathlib import Path

from benchmarks.harness import CROWDTK, PART_B, REPO, timed

# The frozen tiers as the bench runs them (bfloat16 autocast: this machine's CPU has AMX).
FROZEN = [
    "--crop",
    "0",
    "--batch-size",
    "4",
    "--lr",
    "1e-3",
    "--lr-schedule",
    "cosine",
    "--keep",
    "last",
    "--val-frac",
    "0",
    "--cpu-bf16",
]
# name -> (model, options, epochs on 400 images); epochs are chosen for about 5 minutes of training
# each, the wall time of today's 800-step fine-tuning, so that the table compares equal budgets.
TIERS = {
    "fine-tune (800 steps of 8 crops of 128 px)": (
        "lite",
        [
            "--freeze",
            "none",
            "--crop",
            "128",
            "--batch-size",
            "8",
            "--lr",
            "1e-4",
            "--val-frac",
            "0.05",
            "--keep",
            "best",
        ],
        17,
    ),
    "frozen Lite0 (the bench default)": ("lite", ["--freeze", "encoder", *FROZEN], 30),
    "frozen Lite2": ("lite2", ["--freeze", "encoder", *FROZEN], 30),
    "early-frozen Lite0 (80/112 stages fine-tuned)": ("lite", ["--freeze", "early", *FROZEN], 8),
}


def crowdtk(*args: str, stdout: Path | None = None) -> float:
    """Run one crowdtk command, its standard output into the file ``stdout`` when given; its wall seconds."""
    with open(stdout, "w") if stdout else contextlib.nullcontext() as out:
        seconds, _ = timed(subprocess.run, [*CROWDTK, *args], check=True, stdout=out)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "bench-out" / "tiers")
    parser.add_argument("--labels", default="random,full")
    parser.add_argument("--only", default="", help="comma-separated tier names (default: all)")
    parser.add_argument("--scale", default="0.5")
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    train_m, test_m = out / "train.jsonl", out / "test.jsonl"
    for split, path in (("train_data", train_m), ("test_data", test_m)):
        if not path.exists():
            crowdtk("index", str(PART_B / split), "-o", str(path), "-q")
    labels = {}
    for name in args.labels.split(","):
        regions, lab = out / f"{name}.regions.jsonl", out / f"{name}.labels.jsonl"
        if not lab.exists():
            select = (
                ["--budget", "1", "--strategy", "none-or-all"]
                if name == "full"
                else ["--budget", "0.1", "--strategy", "random"]
            )
            crowdtk("select", str(train_m), *select, "--scale", args.scale, "--seed", "0", "-o", str(regions), "-q")
            crowdtk("import", str(regions), "--oracle", str(train_m), "-o", str(lab), "-q")
        labels[name] = lab
    results_path = out / "tiers.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else []
    done = {(r["labels"], r["tier"]) for r in results}
    only = [t for t in args.only.split(",") if t] or list(TIERS)
    for lab_name, lab in labels.items():
        for tier in only:
            if (lab_name, tier) in done:
                continue
            model, options, epochs = TIERS[tier]
            key = f"{lab_name}-{model}-{options[1]}"
            ckpt = out / f"{key}.safetensors"
            cache = out / f"cache-{key}"  # cold: each tier pays for its own features
            train_s = crowdtk(
                "train",
                str(lab),
                "--model",
                model,
                *options,
                "--epochs",
                str(epochs),
                "--scale",
                args.scale,
                "--feature-cache",
                str(cache),
                "--seed",
                "0",
                "--force",
                "-q",
                "-o",
                str(ckpt),
            )
            scores_path = out / f"{key}.eval.json"
            eval_s = crowdtk("eval", str(ckpt), str(test_m), "--json", "-q", stdout=scores_path)
            scores = json.loads(scores_path.read_text())
            results.append(
                {
                    "labels": lab_name,
                    "tier": tier,
                    "model": model,
                    "epochs": epochs,
                    "train_s": train_s,
                    "eval_s": eval_s,
                    "mae": scores["mae"],
                    "rmse": scores["rmse"],
                    "command": " ".join(
                        ["crowdtk", "train", str(lab), "--model", model, *options, "--epochs", str(epochs)]
                    ),
                }
            )
            results_path.write_text(json.dumps(results, indent=1))
            print(
                f"{lab_name:7} {tier:48} train {train_s:6.0f} s  MAE {scores['mae']:.2f}  RMSE {scores['rmse']:.2f}",
                flush=True,
            )
    lines = [
        "| labels | tier | epochs | train wall time (cold cache) | test MAE | test RMSE |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['labels']} | {r['tier']} | {r['epochs']} | {r['train_s'] / 60:.1f} min | "
        f"{r['mae']:.2f} | {r['rmse']:.2f} |"
        for r in results
    ]
    (out / "tiers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
