"""Does a counter one already has replace the warm-up round? Two campaigns on the same pool and budget, per seed:

- ``two rounds``: the paper's loop from ImageNet features (``campaign init`` defaults: a warm-up round of random
  strips on 20% of the images, its counter, then an MDC round);
- ``initial counter``: one MDC round chosen by a counter trained beforehand on generated ``crowdtk synth`` scenes
  (``campaign init --init CKPT --rounds 1``): no image of the pool is labeled before MDC chooses.

Both label with the oracle (the pool's ground truth), train the final counter the same way (CAP, 10% of the labeled
images held out), and are scored on the test manifest (``crowdtk eval``). The claim "an initial counter beats the
warm-up round" is judged from the paired MAE differences over the seeds (crowdtk.experiment.results).

    .venv/bin/python -m benchmarks.campaign_init --train POOL.jsonl --test TEST.jsonl --out DIR
        [--seeds 3] [--budget 0.1] [--steps 1500] [--warmup-steps 750] [--scale 0.5] [--feature-cache DIR]
        [--synth-images 200] [--synth-width 1024] [--synth-height 768]

Every step is a crowdtk command, printed on stderr; rerunning skips the outputs that exist (the campaigns' own
steps, the scenes, the counter and each evaluation). Writes DIR/campaign_init.json and DIR/campaign_init.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from crowdtk.experiment.plan import epochs_for, exact
from crowdtk.experiment.results import interval_text, paired_interval, verdict_of

CROWDTK = [sys.executable, "-m", "crowdtk"]
ARMS = ("two rounds", "initial counter")


def crowdtk(*args: object) -> subprocess.CompletedProcess[str]:
    argv = [str(a) for a in args]
    print("+ crowdtk " + " ".join(argv), file=sys.stderr, flush=True)
    return subprocess.run([*CROWDTK, *argv], check=True, text=True, stdout=subprocess.PIPE)


def synth_counter(args: argparse.Namespace) -> Path:
    """A counter trained on generated scenes of the pool's size, with the campaigns' schedule and front end."""
    scenes, counter = args.out / "synth", args.out / "synth-counter.safetensors"
    if not (scenes / "train" / "manifest.jsonl").is_file():
        crowdtk("synth", "-o", scenes, "--train", args.synth_images, "--test", 1, "--width", args.synth_width,
                "--height", args.synth_height, "--seed", 0, "--force")  # fmt: skip
    manifest, regions, labels = scenes / "train" / "manifest.jsonl", scenes / "all.jsonl", scenes / "labels.jsonl"
    if not labels.is_file():  # every scene labeled whole, as the bench's `full`
        crowdtk("select", manifest, "--strategy", "none-or-all", "--budget", 1, "-q", "-o", regions)
        crowdtk("import", regions, "--oracle", manifest, "-q", "-o", labels)
    if not counter.is_file():
        epochs = epochs_for(args.steps, 4, args.synth_images, 0.0)
        crowdtk("train", labels, "--model", "lite", "--freeze", "encoder",
                "--feature-cache", args.out / "synth-feature-cache", "--scale", exact(args.scale), "--epochs", epochs,
                "--batch-size", 4, "--lr", "0.001", "--lr-schedule", "cosine", "--keep", "last", "--val-frac", "0",
                "--val-every", epochs, "--seed", 0, "-q", "-o", counter)  # fmt: skip
    return counter


def campaign(args: argparse.Namespace, arm: str, seed: int, counter: Path) -> dict[str, float]:
    """One campaign run to its end, and its final counter's test error."""
    folder = args.out / arm.replace(" ", "-") / f"seed-{seed}"
    if not (folder / "campaign.json").is_file():
        initial = ["--init", counter, "--rounds", 1] if arm == "initial counter" else []
        cache = ["--feature-cache", args.feature_cache] if args.feature_cache else []
        crowdtk("campaign", "init", args.train, "--budget", exact(args.budget), "--tool", "crops",
                "--oracle", args.train, "--steps", args.steps, "--warmup-steps", args.warmup_steps,
                "--scale", exact(args.scale), "--seed", seed, *cache, *initial, "-o", folder)  # fmt: skip
    crowdtk("campaign", "next", folder, "--until-blocked")
    scored = folder / "eval.json"
    if not scored.is_file():
        status = json.loads(crowdtk("campaign", "status", folder, "--json").stdout)
        cache = ["--feature-cache", args.feature_cache] if args.feature_cache else []
        result = crowdtk("eval", status["counter"], args.test, "--json", *cache, "-q")
        scored.write_text(result.stdout)
        (folder / "spent.json").write_text(json.dumps(status["spent"]))
    record = json.loads(scored.read_text())
    spent = json.loads((folder / "spent.json").read_text())
    return {"seed": seed, "mae": record["mae"], "rmse": record["rmse"], **spent}


def report(rows: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> str:
    lines = [
        f"# An initial counter against the warm-up round: {args.train}, budget {args.budget:g}, "
        f"{len(args.seeds)} seed(s)",
        "",
        "| arm | seed | MAE | RMSE | area labeled | heads labeled |",
        "|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        for r in rows[arm]:
            lines.append(
                f"| {arm} | {r['seed']} | {r['mae']:.2f} | {r['rmse']:.2f} | {100 * r['area_fraction']:.2f}% "
                f"| {r['heads']} |"
            )
    c = paired_interval(rows["initial counter"], rows["two rounds"])
    gain = "–" if c["mean"] is None else f"{c['mean']:+.2f}"
    interval = interval_text({"ci_low": c["low"], "ci_high": c["high"]})
    lines += [
        "",
        "| claim | seeds | MAE gain | 95% interval | verdict |",
        "|---|---|---|---|---|",
        f"| an initial counter beats the warm-up round | {c['seeds']} | {gain} | {interval} | {verdict_of(c)} |",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=Path, required=True, help="the pool's manifest (its ground truth is the oracle)")
    p.add_argument("--test", type=Path, required=True, help="the test manifest")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--budget", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--warmup-steps", type=int, default=750)
    p.add_argument("--scale", type=float, default=0.5)
    p.add_argument("--feature-cache", type=Path)
    p.add_argument("--synth-images", type=int, default=200)
    p.add_argument("--synth-width", type=int, default=1024)
    p.add_argument("--synth-height", type=int, default=768)
    args = p.parse_args()
    args.seeds = list(range(args.seeds))
    args.out.mkdir(parents=True, exist_ok=True)
    counter = synth_counter(args)
    rows = {arm: [campaign(args, arm, s, counter) for s in args.seeds] for arm in ARMS}
    (args.out / "campaign_init.json").write_text(json.dumps(rows, indent=1))
    text = report(rows, args)
    (args.out / "campaign_init.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
