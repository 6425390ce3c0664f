"""The paper's experiments (section 4.2) as chains of crowdtk commands, for `bench` and `demo`.

Every method is a chain of ordinary subcommands (select → import --oracle → warmup →
vectors → select → import → train → strip-cap → eval) writing into its own folder, so
each step can be rerun by hand from the printed command line. A step is finished when its
output exists (every output is written atomically), which is how a rerun reuses work.

All methods train the same model from the same ImageNet start for the same number of
optimizer steps (``Schedule.steps``): a method that labels fewer images runs more epochs,
so the comparison is about which pixels are labeled, not about compute.

The CPU default is the frozen-encoder tier (``--freeze encoder``: ImageNet features computed
once per image and flip, kept in ``DIR/feature-cache`` and shared by every method and seed;
the back end, + CAP, trains on whole images). Model selection is one rule for every method:
a cosine learning-rate decay to 0 and the last epoch's model (``--keep last``), with no
images held out, so no method's checkpoint depends on how a handful of validation images
happen to score (None-or-All at 10% of Part B had 2 of them).
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from crowdtk.errors import CrowdtkError
from crowdtk.formats import read_labels, read_regions

METHODS = ("full", "none-or-all", "random", "max", "mdc", "mdc+cap")
SHAPES = ("strip", "band", "block")
WARMUP_METHODS = {"max", "mdc", "mdc+cap"}  # those that need the warm-up counter's vectors


@dataclass(frozen=True)
class Schedule:
    """How every method's counter is trained and evaluated (the same for all methods)."""

    model: str = "lite"
    steps: int = 3000  # optimizer steps of each training run (30 epochs of 400 images at batch 4)
    warmup_steps: int = 1500  # optimizer steps of the warm-up counter
    batch_size: int = 4
    crop: int = 0  # whole images (the frozen tier trains on whole cached maps)
    lr: float = 1e-3
    scale: float = 0.5  # images (and points) resized by this before training and evaluation
    val_frac: float = 0.0  # no held-out images: the checkpoint is the last epoch's (keep)
    freeze: str = "encoder"  # the frozen-encoder tier; "none" fine-tunes everything on crops
    lr_schedule: str = "cosine"
    keep: str = "last"
    cpu_bf16: bool = False  # train/warmup --cpu-bf16 (bench and demo turn it on where the CPU runs bfloat16 natively)
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


def bench_runs(budgets: list[float], methods: list[str], shapes: list[str], seeds: int) -> list[Run]:
    """A bench's runs: every method at every budget and seed, then random selection in each extra shape (Table 1)."""
    runs = [Run(m, b, "strip", s) for b in budgets for s in range(seeds) for m in methods]
    return runs + [Run("random", b, shape, s) for b in budgets for s in range(seeds) for shape in shapes]


@dataclass
class Experiment:
    """The inputs and folder of a bench (or demo) run; ``chain`` yields each run's steps."""

    train_manifest: Path
    test_manifest: Path
    out: Path
    schedule: Schedule = field(default_factory=Schedule)
    device: str = "auto"
    cache_dir: Path | None = None  # where the frozen front end's features are kept [default: DIR/feature-cache]

    def run_dir(self, run: Run) -> Path:
        return self.out / "runs" / f"budget-{run.budget:g}" / f"seed-{run.seed}"

    @property
    def feature_cache(self) -> Path:
        """Shared by every method and seed (and by other bench folders given the same folder): the frozen
        front end's features depend only on the images, the scale and the frozen weights."""
        return self.cache_dir if self.cache_dir is not None else self.out / "feature-cache"

    def _train_options(self, steps: int, labels: Path, seed: int) -> list[str]:
        s = self.schedule
        epochs = epochs_for(steps, s.batch_size, labeled_images(labels), s.val_frac)
        options = ["--model", s.model, "--epochs", str(epochs), "--batch-size", str(s.batch_size), "--crop", str(s.crop),
                   "--lr", f"{s.lr:g}", "--scale", f"{s.scale:g}", "--val-frac", f"{s.val_frac:g}",
                   "--lr-schedule", s.lr_schedule, "--keep", s.keep]
        if s.keep == "last":
            options += ["--val-every", str(epochs)]  # validation chooses nothing: once, at the end, as a report
        if s.freeze != "none":
            options += ["--freeze", s.freeze, *self._cache_option()]
        if s.cpu_bf16:
            options.append("--cpu-bf16")
        return options + ["--seed", str(seed), "--device", self.device, "-q"]

    def _cache_option(self) -> list[str]:
        return ["--feature-cache", str(self.feature_cache)] if self.schedule.freeze != "none" else []

    def _grid_options(self) -> list[str]:
        """Strip edges on the output-cell grid of the training scale, so every labeled head is supervised."""
        return [] if self.schedule.scale == 1.0 else ["--scale", f"{self.schedule.scale:g}"]

    def _strip_option(self) -> list[str]:
        """Passed only when not the default, so the printed commands stay the plain ones."""
        return [] if self.schedule.strip_frac == Schedule.strip_frac else ["--strip-frac", f"{self.schedule.strip_frac:g}"]

    def warmup_chain(self, run: Run) -> Iterator[Step]:
        """Algorithm 1, lines 1–4: random strips on a share of the images, a counter, vectors."""
        s, d = self.schedule, self.run_dir(run) / "warmup"
        pool = str(self.train_manifest)
        yield Step(("select", pool, "--budget", f"{run.budget:g}", "--warmup-frac", f"{s.warmup_frac:g}", "--strategy", "random",
                    *self._strip_option(), *self._grid_options(), "--seed", str(run.seed), "-o", str(d / "regions.jsonl"), "-q"), d / "regions.jsonl")
        yield Step(("import", str(d / "regions.jsonl"), "--oracle", pool, "-o", str(d / "labels.jsonl"), "-q"), d / "labels.jsonl")
        yield Step(("warmup", str(d / "labels.jsonl"), *self._train_options(s.warmup_steps, d / "labels.jsonl", run.seed),
                    "-o", str(d / "model.safetensors")), d / "model.safetensors")
        yield Step(("vectors", str(d / "model.safetensors"), pool, "--exclude", str(d / "regions.jsonl"), *self._strip_option(),
                    *self._grid_options(), *self._cache_option(), "--device", self.device, "-o", str(d / "vectors.npz"), "-q"),
                   d / "vectors.npz")

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
            base += ["--budget", f"{run.budget:g}", "--strategy", "random", "--shape", run.shape, *self._strip_option(),
                     *self._grid_options()]
        elif run.method in WARMUP_METHODS:
            yield from self.warmup_chain(run)
            w = self.run_dir(run) / "warmup"
            strategy = "max" if run.method == "max" else "mdc"
            base += ["--budget", f"{run.budget:g}", "--strategy", strategy, "--vectors", str(w / "vectors.npz"),
                     "--exclude", str(w / "regions.jsonl"), *self._strip_option(), *self._grid_options()]
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
        yield Step(("eval", str(model), str(self.test_manifest), "--json", *self._cache_option(), "--device", self.device, "-q"),
                   d / "eval.json", stdout=True)

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
