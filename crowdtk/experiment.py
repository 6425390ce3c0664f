"""The paper's experiments (section 4.2) as chains of crowdtk commands, for `bench` and `demo`.

Every method is a chain of ordinary subcommands (select → import --oracle → warmup →
vectors → select → import → train → strip-cap → eval) writing into its own folder, so
each step can be rerun by hand from the printed command line. A step is finished when its
output exists (every output is written atomically), which is how a rerun reuses work.

All methods train the same model from the same ImageNet start for the same number of
optimizer steps (``Schedule.steps``): a method that labels fewer images runs more epochs,
so the comparison is about which pixels are labeled, not about compute.
"""

from __future__ import annotations

import math
import shlex
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crowdtk.errors import CrowdtkError
from crowdtk.formats import read_json, read_labels, read_manifest, read_regions, BENCH_RESULTS

METHODS = ("full", "none-or-all", "random", "max", "mdc", "mdc+cap")
SHAPES = ("strip", "band", "block")
WARMUP_METHODS = {"max", "mdc", "mdc+cap"}  # those that need the warm-up counter's vectors
DEFAULT_METHODS = METHODS


@dataclass(frozen=True)
class Schedule:
    """How every method's counter is trained and evaluated (the same for all methods)."""

    model: str = "lite"
    steps: int = 800  # optimizer steps of each training run
    warmup_steps: int = 400  # optimizer steps of the warm-up counter
    batch_size: int = 8
    crop: int = 128
    lr: float = 1e-4
    scale: float = 0.5  # images (and points) resized by this before training and evaluation
    val_frac: float = 0.05
    warmup_frac: float = 0.2  # the paper's share of the budget spent on warm-up images
    strip_frac: float = 0.1  # strip width / image width; at a 10% budget 0.1 gives one strip (n_l = 1) per image

    def validate(self) -> None:
        if self.steps < 1 or self.warmup_steps < 1:
            raise CrowdtkError("--steps and --warmup-steps must be at least 1", "pass positive numbers")
        if not 0 < self.strip_frac <= 1:
            raise CrowdtkError(f"--strip-frac must be in (0, 1], got {self.strip_frac}", "pass e.g. 0.1")
        if not 0 < self.warmup_frac < 1:
            raise CrowdtkError(f"--warmup-frac must be in (0, 1), got {self.warmup_frac}", "pass e.g. 0.2")


@dataclass(frozen=True)
class Step:
    """One crowdtk command line; finished when ``output`` exists."""

    argv: tuple[str, ...]
    output: Path
    stdout: bool = False  # the command's standard output is the output file (eval --json)

    def shell(self) -> str:
        line = "crowdtk " + shlex.join(self.argv)
        return f"{line} > {shlex.quote(str(self.output))}" if self.stdout else line


@dataclass(frozen=True)
class Run:
    """One method at one budget, shape and seed."""

    method: str
    budget: float
    shape: str
    seed: int

    @property
    def name(self) -> str:
        return self.method if self.shape == "strip" else f"{self.method}-{self.shape}"


@dataclass
class Experiment:
    """The inputs and folder of a bench (or demo) run; ``chain`` yields each run's steps."""

    train_manifest: Path
    test_manifest: Path
    out: Path
    schedule: Schedule = field(default_factory=Schedule)
    device: str = "auto"

    def run_dir(self, run: Run) -> Path:
        return self.out / "runs" / f"budget-{run.budget:g}" / f"seed-{run.seed}"

    def _train_options(self, steps: int, labels: Path, seed: int) -> list[str]:
        s = self.schedule
        return ["--model", s.model, "--epochs", str(epochs_for(steps, s.batch_size, labeled_images(labels), s.val_frac)),
                "--batch-size", str(s.batch_size), "--crop", str(s.crop), "--lr", f"{s.lr:g}", "--scale", f"{s.scale:g}",
                "--val-frac", f"{s.val_frac:g}", "--seed", str(seed), "--device", self.device, "-q"]

    def _strip_option(self) -> list[str]:
        """Passed only when not the default, so the printed commands stay the plain ones."""
        return [] if self.schedule.strip_frac == Schedule.strip_frac else ["--strip-frac", f"{self.schedule.strip_frac:g}"]

    def warmup_chain(self, run: Run) -> Iterator[Step]:
        """Algorithm 1, lines 1–4: random strips on a share of the images, a counter, vectors."""
        s, d = self.schedule, self.run_dir(run) / "warmup"
        pool = str(self.train_manifest)
        yield Step(("select", pool, "--budget", f"{run.budget:g}", "--warmup-frac", f"{s.warmup_frac:g}", "--strategy", "random",
                    *self._strip_option(), "--seed", str(run.seed), "-o", str(d / "regions.jsonl"), "-q"), d / "regions.jsonl")
        yield Step(("import", str(d / "regions.jsonl"), "--oracle", pool, "-o", str(d / "labels.jsonl"), "-q"), d / "labels.jsonl")
        yield Step(("warmup", str(d / "labels.jsonl"), *self._train_options(s.warmup_steps, d / "labels.jsonl", run.seed),
                    "-o", str(d / "model.safetensors")), d / "model.safetensors")
        yield Step(("vectors", str(d / "model.safetensors"), pool, "--exclude", str(d / "regions.jsonl"), *self._strip_option(),
                    "--device", self.device, "-o", str(d / "vectors.npz"), "-q"), d / "vectors.npz")

    def selection_dir(self, run: Run) -> Path:
        """mdc and mdc+cap label the same regions; every other method labels its own."""
        key = "mdc" if run.method == "mdc+cap" else run.name
        return self.run_dir(run) / f"select-{key}"

    def selection_chain(self, run: Run) -> Iterator[Step]:
        pool, d = str(self.train_manifest), self.selection_dir(run)
        base = ["select", pool, "--seed", str(run.seed), "-o", str(d / "regions.jsonl"), "-q"]
        merge: list[str] = []
        if run.method == "full":
            base += ["--budget", "1", "--strategy", "none-or-all"]
        elif run.method == "none-or-all":
            base += ["--budget", f"{run.budget:g}", "--strategy", "none-or-all"]
        elif run.method == "random":
            base += ["--budget", f"{run.budget:g}", "--strategy", "random", "--shape", run.shape, *self._strip_option()]
        elif run.method in WARMUP_METHODS:
            yield from self.warmup_chain(run)
            w = self.run_dir(run) / "warmup"
            strategy = "max" if run.method == "max" else "mdc"
            base += ["--budget", f"{run.budget:g}", "--strategy", strategy, "--vectors", str(w / "vectors.npz"),
                     "--exclude", str(w / "regions.jsonl"), *self._strip_option()]
            merge = ["--merge", str(w / "labels.jsonl")]
        else:
            raise CrowdtkError(f"unknown method {run.method!r}", f"choose from {', '.join(METHODS)}")
        yield Step(tuple(base), d / "regions.jsonl")
        yield Step(("import", str(d / "regions.jsonl"), "--oracle", pool, *merge, "-o", str(d / "labels.jsonl"), "-q"),
                   d / "labels.jsonl")

    def chain(self, run: Run) -> Iterator[Step]:
        """All steps of one run, ending with its ``eval.json``; training options are decided
        after the labels exist (the epochs depend on how many images were labeled)."""
        yield from self.selection_chain(run)
        labels = self.selection_dir(run) / "labels.jsonl"
        d = self.run_dir(run) / run.name
        cap = run.method == "mdc+cap"
        yield Step(("train", str(labels), *(["--cap"] if cap else []), *self._train_options(self.schedule.steps, labels, run.seed),
                    "-o", str(d / "model.safetensors")), d / "model.safetensors")
        model = d / "model.safetensors"
        if cap:
            yield Step(("strip-cap", str(model), "-o", str(d / "infer.safetensors"), "-q"), d / "infer.safetensors")
            model = d / "infer.safetensors"
        yield Step(("eval", str(model), str(self.test_manifest), "--json", "--device", self.device, "-q"), d / "eval.json", stdout=True)

    def first_chosen(self, run: Run) -> str | None:
        """The first image whose regions the run's own strategy chose (its labels also hold the
        warm-up round's random strips): the image the pictures show."""
        return next((e.id for e in read_regions(self.selection_dir(run) / "regions.jsonl")[1] if e.regions), None)

    def model_of(self, run: Run) -> Path:
        """The inference checkpoint of a finished run."""
        d = self.run_dir(run) / run.name
        return d / ("infer.safetensors" if run.method == "mdc+cap" else "model.safetensors")


def labeled_images(labels: Path) -> int:
    return sum(1 for e in read_labels(labels)[1] if e.regions)


def epochs_for(steps: int, batch_size: int, images: int, val_frac: float) -> int:
    """Epochs that give about ``steps`` optimizer steps on the training part of ``images``."""
    n_val = int(round(images * val_frac)) if images >= 5 else 0
    per_epoch = math.ceil(max(images - n_val, 1) / batch_size)
    return max(1, round(steps / per_epoch))


# --------------------------------------------------------------------------- results


def run_result(experiment: Experiment, run: Run, timings: dict[str, float], steps: Sequence[Step]) -> dict[str, Any]:
    """One finished run's numbers: test errors, what was labeled, and the time its steps took."""
    import json

    scores = json.loads((experiment.run_dir(run) / run.name / "eval.json").read_text(encoding="utf-8"))
    _, labels = read_labels(experiment.selection_dir(run) / "labels.jsonl")
    _, pool = read_manifest(experiment.train_manifest)
    pool_area = sum(m.width * m.height for m in pool)
    return {
        "seed": run.seed,
        "mae": scores["mae"],
        "rmse": scores["rmse"],
        "non_finite": len(scores.get("non_finite", [])),
        "heads_labeled": sum(len(e.points) for e in labels),
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
            "images_labeled": statistics.fmean(r["images_labeled"] for r in runs),
            "area_fraction": statistics.fmean(r["area_fraction"] for r in runs),
            "wall_s": statistics.fmean(r["wall_s"] for r in runs),
            "runs": runs,
        })
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
                  "| method | MAE | RMSE | images labeled | heads labeled | area labeled | wall time |",
                  "|---|---|---|---|---|---|---|"]
        for r in results:
            if r["budget"] != budget:
                continue
            name = r["method"] if r["shape"] == "strip" else f"{r['method']} ({r['shape']}s)"
            lines.append(f"| {name} | {_score(r, 'mae')} | {_score(r, 'rmse')} | {r['images_labeled']:.0f} | "
                         f"{r['heads_labeled']:.0f} | {100 * r['area_fraction']:.2f}% | {r['wall_s'] / 60:.1f} min |")
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


def load_results(path: Path) -> dict[str, Any]:
    return read_json(path, BENCH_RESULTS)


def schedule_params(schedule: Schedule) -> dict[str, Any]:
    return asdict(schedule)
