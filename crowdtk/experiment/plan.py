"""The paper's experiments (section 4.2) as chains of crowdtk commands, for `bench` and `demo`.

Every method is a chain of ordinary subcommands (select → import --oracle → warmup →
vectors → select → import → train → strip-cap → eval) writing into its own folder, so
each step can be rerun by hand from the printed command line. A step is finished when its
output exists (every output is written atomically), which is how a rerun reuses work.

The methods are records (:class:`Method`, :func:`register_method`): every registered selection
strategy is a method of its own name, and a record adds the others (full, the CAP variants)
and the paper's claims, which results.md gives a verdict on.

All methods train the same model from the same ImageNet start for the same number of
optimizer steps (``Schedule.steps``): a method that labels fewer images runs more epochs,
so the comparison is about which pixels are labeled, not about compute.

The CPU default is the frozen-encoder tier (``--freeze encoder``: ImageNet features computed
once per image and flip, kept in ``DIR/feature-cache`` and shared by every method and seed;
the back end, + CAP, trains on whole images). Model selection is one rule for every method:
a cosine learning-rate decay to 0 and the last epoch's model (``--keep last``), with no
images held out, so no method's checkpoint depends on how a handful of validation images
happen to score (None-or-All at 10% of Part B had 2 of them).

``RECIPES`` names whole configurations for ``bench --recipe``: ``default`` (the CPU tier above)
and ``paper`` (the paper's CSRNet fine-tuned at full resolution, for a GPU; the comment above
it says which of its values the paper states and why the others were chosen).
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from crowdtk.errors import CrowdtkError
from crowdtk.formats import read_labels, read_regions
from crowdtk.registry import RegistrationError, Registry
from crowdtk.selection import STRATEGIES

SHAPES = ("strip", "band", "block")


@dataclass(frozen=True)
class Method:
    """A bench method: the regions it labels (a strategy's, at the run's budget or its own) and how its counter trains.

    Every registered strategy is a method of its own name as well (:func:`bench_methods`), labeled by it and
    trained without CAP; a record is registered for a method that is more than that (``full``, ``mdc+cap``), or
    to give a strategy's method the paper's claims about it."""

    name: str
    help: str  # one line, for bench --help
    strategy: str  # select --strategy of its regions; one that needs vectors gets a warm-up round first
    budget: float | None = None  # its own budget instead of the run's (full: 1, every image)
    cap: tuple[str, ...] | None = None  # train --cap with these further options (CAP's affinity form); None: no CAP
    regions_of: str | None = (
        None  # the method whose regions (and warm-up) it trains on instead of its own (mdc+cap: mdc's)
    )
    default: bool = True  # run when bench --methods is not given
    beats: tuple[
        tuple[str, str], ...
    ] = ()  # the paper's claims: (a method it should beat at the same budget, the claim)

    def check(self) -> None:
        if self.strategy not in STRATEGIES:
            raise RegistrationError(f"the bench method {self.name!r}: no strategy {self.strategy!r} is registered")
        if self.budget is not None and not 0 < self.budget <= 1:
            raise RegistrationError(f"the bench method {self.name!r}: budget {self.budget} outside (0, 1]")
        known = bench_methods()
        if self.regions_of is not None and (
            self.regions_of not in known or known[self.regions_of].strategy != self.strategy
        ):
            raise RegistrationError(
                f"the bench method {self.name!r}: regions of "
                f"{self.regions_of!r}, no method of strategy {self.strategy!r}"
            )
        unknown = [worse for worse, _ in self.beats if worse not in known]
        if unknown:
            raise RegistrationError(
                f"the bench method {self.name!r}: claims to beat {', '.join(unknown)}, which are no methods (yet)"
            )

    @property
    def takes_image_list(self) -> bool:
        """Whether bench --image-list decides its images: its strategy takes a list (none-or-all) and the run's
        budget would draw them (full, at its own budget of every image, does not)."""
        return self.budget is None and STRATEGIES[self.strategy].image_list

    @property
    def warmup(self) -> bool:
        """Whether its strategy ranks strips by a warm-up counter's vectors (Algorithm 1, lines 1-4 run first)."""
        return STRATEGIES[self.strategy].needs_vectors


# The methods registered for themselves, in the order bench lists and runs them.
METHODS: Registry[Method] = Registry("bench method")


def register_method(method: Method) -> Method:
    """Register a bench method; a name registered twice, or one naming an unknown strategy or method, fails here."""
    return METHODS.register(method)


def bench_methods() -> dict[str, Method]:
    """Every method the bench offers, by name: the registered ones, then each strategy without a method of its name
    (labeled by that strategy, trained without CAP), in the strategies' order. Read when asked, so that a strategy
    registered from the user's own code is offered."""
    methods = dict(METHODS)
    for s in STRATEGIES.values():
        methods.setdefault(s.name, Method(s.name, s.help, s.name))
    return methods


def bench_method(name: str) -> Method:
    """The bench method ``name``; an unknown one is refused with the choices."""
    methods = bench_methods()
    if name not in methods:
        raise CrowdtkError(f"unknown method {name!r}", f"choose from {', '.join(methods)}")
    return methods[name]


def default_methods() -> list[str]:
    """The methods bench runs when --methods is not given."""
    return [m.name for m in bench_methods().values() if m.default]


# The bench's methods (and the paper's). Each mdc+cap-* is MDC's regions trained with one of CAP's labelled affinity
# extensions (train --cap-affinity), run only when asked for by --methods.
register_method(Method("full", "every image labeled: none-or-all at budget 1", "none-or-all", budget=1.0))
register_method(Method("none-or-all", "whole images", "none-or-all"))
register_method(
    Method(
        "random", "random strips", "random", beats=(("none-or-all", "region-level labels beat None-or-All (Fig. 4)"),)
    )
)
register_method(Method("max", "largest predicted counts", "max"))
register_method(
    Method(
        "mdc", "the paper's clustering", "mdc", beats=(("random", "MDC beats random strips"), ("max", "MDC beats MAX"))
    )
)
register_method(
    Method(
        "mdc+cap",
        "mdc's regions, trained with CAP",
        "mdc",
        cap=(),
        regions_of="mdc",
        beats=(
            ("mdc", "CAP improves MDC"),
            ("none-or-all", "the gap to full shrinks: MDC+CAP is nearer full than None-or-All"),
        ),
    )
)
# The CAP extensions (train --cap-affinity), each on MDC's regions: method-name suffix, affinity form, and
# what the form changes in the paper's CAP.
for suffix, affinity, what in (
    ("temp", "temperature", "a temperature on the affinity logits"),
    ("cos", "cosine", "cosine affinities of the raw features"),
):
    register_method(
        Method(
            f"mdc+cap-{suffix}",
            f"mdc's regions, CAP with train --cap-affinity {affinity}",
            "mdc",
            cap=("--cap-affinity", affinity),
            regions_of="mdc",
            default=False,
            beats=(
                ("mdc", f"CAP with {what} (extension) improves MDC"),
                ("mdc+cap", f"the {affinity} extension beats the paper's CAP"),
            ),
        )
    )


def exact(value: float) -> str:
    """A number as a step's command line gets it: every digit (repr), so that the command a bench or demo
    prints and runs passes the value it was given; ``:g`` kept six significant digits (0.1234567 became 0.123457)."""
    return repr(float(value))


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
    pretrained: bool = (
        True  # False: train/warmup --no-pretrained (random front end; a dry run without the ImageNet weights)
    )

    def validate(self) -> None:
        if self.steps < 1 or self.warmup_steps < 1:
            raise CrowdtkError("--steps and --warmup-steps must be at least 1", "pass positive numbers")
        if not 0 < self.strip_frac <= 1:
            raise CrowdtkError(f"--strip-frac must be in (0, 1], got {self.strip_frac}", "pass e.g. 0.1")
        if not 0 < self.warmup_frac < 1:
            raise CrowdtkError(f"--warmup-frac must be in (0, 1), got {self.warmup_frac}", "pass e.g. 0.2")


@dataclass(frozen=True)
class Recipe:
    """A named bench configuration (``bench --recipe NAME``): the schedule every run trains with, the
    budgets, the seeds and the device. Options given on the command line replace its values
    (:meth:`with_options`), so a recipe is a starting point, never a lock; the bench records its name."""

    name: str
    help: str  # one line, for the bench's --help
    schedule: Schedule
    budgets: tuple[float, ...] = (0.1,)
    seeds: int = 3
    device: str = "auto"
    # Choose the schedule's scale from the training images' sizes (geometry.scale_for_pixels) unless
    # --scale is given: one factor for every data set shrank 400-px images' heads to a few pixels.
    auto_scale: bool = False

    def with_options(self, given: Mapping[str, Any]) -> Recipe:
        """This recipe with ``given`` in place of its own values:
        keys are Schedule fields, or budgets, seeds, device."""
        names = {f.name for f in fields(Schedule)}
        unknown = set(given) - names - {"budgets", "seeds", "device"}
        if unknown:
            raise ValueError(f"a recipe has no setting {', '.join(sorted(unknown))}")
        schedule = replace(self.schedule, **{k: v for k, v in given.items() if k in names})
        rest: dict[str, Any] = {k: (tuple(v) if k == "budgets" else v) for k, v in given.items() if k not in names}
        return replace(self, schedule=schedule, **rest)


DEFAULT_RECIPE = Recipe(
    "default",
    "the CPU tier: lite with its ImageNet front end frozen and cached, the scale chosen by a pixel budget (0.5 on "
    "Part B), 3000 Adam steps of 4 whole images (lr 1e-3, cosine), 10% budget, 5 seeds (README, Benchmarks)",
    Schedule(),
    budgets=(0.1,),
    seeds=5,
    device="auto",
    auto_scale=True,
)

# The paper's configuration for a GPU (section 4.1, "Implementation Details", and Table 5).
#
# From the paper: CSRNet with a VGG16 ImageNet front end ("all the comparison methods are based on CSRNet
# with a VGG16 backbone"), the whole network trained (no frozen part is mentioned), images at their own
# resolution, batch size 1, random cropping and horizontal flipping, Adam, strips 10% of the width, 20% of
# the budget for the warm-up, 5 runs per method (the bench's seeds). Table 5 reports ShanghaiTech Part B at
# one budget, 10%, so the recipe runs that one (Part A's Tables 2 and 4 add 20%, 50% and 90%; --budgets runs
# them). Flips and σ = 4 are train's own defaults.
#
# Chosen here, because the paper does not say (each can be overridden on the command line):
# - Crop 448 px: the paper names no size. CSRNet, its counter, trains on patches a quarter of the image
#   (512×384 on Part B's 1024×768, 196,608 px); crops here are square, and 448² (200,704 px) is the
#   nearest multiple of the stride 8 with that area. Every crop holds a labeled cell (train's rule), so a
#   strip of ~100 px sits with about three strip widths of unlabeled context for CAP.
# - Learning rate 1e-5: the paper's 1e-8 belongs to an unscaled loss, and Adam's step size does not
#   depend on the loss's scale, so at 1e-8 the VGG weights would barely move; 1e-5 is the rate Adam-trained
#   VGG counters of the field fine-tune with (Bayesian Loss and DM-Count on ShanghaiTech). Not tuned here:
#   no GPU was at hand.
# - 40,000 steps (100 epochs of Part B's 400 images at batch 1) for every method, and 20,000 for the
#   warm-up counter (the default tier's ratio of one half): the paper gives no length. The CPU tier's
#   doubling check (README, Benchmarks) found full and mdc+cap still improving at its length, and a short
#   schedule biases the comparison against the methods that keep improving. Estimated, not measured,
#   at 10–20 ms a step on one H100/H200: 7–13 min a run, 6 methods × 5 seeds plus 5 warm-ups in about
#   4–7.5 hours (benchmarks/gpu_check.sh prints csrnet's s/step to check this).
# - Cosine decay to 0, the last epoch's model and no held-out images: the paper does not say how its
#   checkpoints were chosen; this is the default tier's rule, one for every method, so no checkpoint
#   depends on a handful of validation images.
# - --device cuda: on a CPU the schedule would take weeks; a missing GPU fails at the first step instead.
#   The CUDA path trains in bfloat16 autocast (the paper's precision is not stated).
PAPER_RECIPE = Recipe(
    "paper",
    "the paper's setting, for a GPU: csrnet (VGG16 ImageNet front end) fine-tuned whole at full resolution on random "
    "448-px crops with flips, batch 1, Adam lr 1e-5 (cosine), 40000 "
    "steps, 10% budget (Table 5's Part B), 5 seeds, --device cuda",
    Schedule(
        model="csrnet",
        steps=40000,
        warmup_steps=20000,
        batch_size=1,
        crop=448,
        lr=1e-5,
        scale=1.0,
        val_frac=0.0,
        freeze="none",
        lr_schedule="cosine",
        keep="last",
    ),
    budgets=(0.1,),
    seeds=5,
    device="cuda",
)

RECIPES: dict[str, Recipe] = {r.name: r for r in (DEFAULT_RECIPE, PAPER_RECIPE)}


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
    backbone_weights: Path | None = None  # train/warmup --backbone-weights [default: the model's own ImageNet weights]
    image_list: Path | None = None  # select --image-list for the methods that take one (none-or-all): a fixed split

    def run_dir(self, run: Run) -> Path:
        return self.out / "runs" / f"budget-{exact(run.budget)}" / f"seed-{run.seed}"

    @property
    def feature_cache(self) -> Path:
        """Shared by every method and seed (and by other bench folders given the same folder): the frozen
        front end's features depend only on the images, the scale and the frozen weights."""
        return self.cache_dir if self.cache_dir is not None else self.out / "feature-cache"

    def train_options(self, steps: int, labels: Path, seed: int) -> list[str]:
        s = self.schedule
        epochs = epochs_for(steps, s.batch_size, labeled_images(labels), s.val_frac)
        options = [
            "--model",
            s.model,
            "--epochs",
            str(epochs),
            "--batch-size",
            str(s.batch_size),
            "--crop",
            str(s.crop),
            "--lr",
            exact(s.lr),
            "--scale",
            exact(s.scale),
            "--val-frac",
            exact(s.val_frac),
            "--lr-schedule",
            s.lr_schedule,
            "--keep",
            s.keep,
        ]
        if s.keep == "last":
            options += ["--val-every", str(epochs)]  # validation chooses nothing: once, at the end, as a report
        if s.freeze != "none":
            options += ["--freeze", s.freeze, *self.cache_option()]
        if s.cpu_bf16:
            options.append("--cpu-bf16")
        if not s.pretrained:
            options.append("--no-pretrained")
        if self.backbone_weights is not None:
            options += ["--backbone-weights", str(self.backbone_weights)]
        return options + ["--seed", str(seed), "--device", self.device, "-q"]

    def cache_option(self) -> list[str]:
        return ["--feature-cache", str(self.feature_cache)] if self.schedule.freeze != "none" else []

    def grid_options(self) -> list[str]:
        """Strip edges on the output-cell grid of the training scale, so every labeled head is supervised."""
        return [] if self.schedule.scale == 1.0 else ["--scale", exact(self.schedule.scale)]

    def strip_option(self) -> list[str]:
        """Passed only when not the default, so the printed commands stay the plain ones."""
        return (
            [] if self.schedule.strip_frac == Schedule.strip_frac else ["--strip-frac", exact(self.schedule.strip_frac)]
        )

    def warmup_chain(self, run: Run) -> Iterator[Step]:
        """Algorithm 1, lines 1–4: random strips on a share of the images, a counter, vectors."""
        s, d = self.schedule, self.run_dir(run) / "warmup"
        pool = str(self.train_manifest)
        yield Step(
            (
                "select",
                pool,
                "--budget",
                exact(run.budget),
                "--warmup-frac",
                exact(s.warmup_frac),
                "--strategy",
                "random",
                *self.strip_option(),
                *self.grid_options(),
                "--seed",
                str(run.seed),
                "-o",
                str(d / "regions.jsonl"),
                "-q",
            ),
            d / "regions.jsonl",
        )
        yield Step(
            ("import", str(d / "regions.jsonl"), "--oracle", pool, "-o", str(d / "labels.jsonl"), "-q"),
            d / "labels.jsonl",
        )
        yield Step(
            (
                "warmup",
                str(d / "labels.jsonl"),
                *self.train_options(s.warmup_steps, d / "labels.jsonl", run.seed),
                "-o",
                str(d / "model.safetensors"),
            ),
            d / "model.safetensors",
        )
        yield Step(
            (
                "vectors",
                str(d / "model.safetensors"),
                pool,
                "--exclude",
                str(d / "regions.jsonl"),
                *self.strip_option(),
                *self.grid_options(),
                *self.cache_option(),
                "--device",
                self.device,
                "-o",
                str(d / "vectors.npz"),
                "-q",
            ),
            d / "vectors.npz",
        )

    def selection_dir(self, run: Run) -> Path:
        """A method that trains on another's regions (mdc+cap* on mdc's) shares its folder;
        every other labels its own."""
        key = bench_method(run.method).regions_of or run.name
        return self.run_dir(run) / f"select-{key}"

    def selection_chain(self, run: Run) -> Iterator[Step]:
        method = bench_method(run.method)
        strategy = STRATEGIES[method.strategy]
        pool, d = str(self.train_manifest), self.selection_dir(run)
        # The run's budget with every digit; a method's own as declared (full: "1", not "1.0").
        budget = exact(run.budget) if method.budget is None else repr(method.budget).removesuffix(".0")
        # A fixed split (bench --image-list) decides the images instead of the budget, which is then not passed.
        listed = self.image_list is not None and method.takes_image_list
        spend = ["--image-list", str(self.image_list)] if listed else ["--budget", budget]
        base = [
            "select",
            pool,
            "--seed",
            str(run.seed),
            "-o",
            str(d / "regions.jsonl"),
            "-q",
            *spend,
            "--strategy",
            strategy.name,
        ]
        merge: list[str] = []
        if method.warmup:
            yield from self.warmup_chain(run)
            w = self.run_dir(run) / "warmup"
            base += ["--vectors", str(w / "vectors.npz"), "--exclude", str(w / "regions.jsonl")]
            merge = ["--merge", str(w / "labels.jsonl")]
        if not strategy.whole_images:  # whole images have no cells to shape
            base += ["--shape", run.shape] if len(strategy.shapes) > 1 else []
            base += [*self.strip_option(), *self.grid_options()]
        yield Step(tuple(base), d / "regions.jsonl")
        yield Step(
            ("import", str(d / "regions.jsonl"), "--oracle", pool, *merge, "-o", str(d / "labels.jsonl"), "-q"),
            d / "labels.jsonl",
        )

    def chain(self, run: Run) -> Iterator[Step]:
        """All steps of one run, ending with its ``eval.json``; training options are decided
        after the labels exist (the epochs depend on how many images were labeled)."""
        yield from self.selection_chain(run)
        labels = self.selection_dir(run) / "labels.jsonl"
        d = self.run_dir(run) / run.name
        cap = bench_method(run.method).cap
        yield Step(
            (
                "train",
                str(labels),
                *(["--cap", *cap] if cap is not None else []),
                *self.train_options(self.schedule.steps, labels, run.seed),
                "-o",
                str(d / "model.safetensors"),
            ),
            d / "model.safetensors",
        )
        model = d / "model.safetensors"
        if cap is not None:
            yield Step(("strip-cap", str(model), "-o", str(d / "infer.safetensors"), "-q"), d / "infer.safetensors")
            model = d / "infer.safetensors"
        yield Step(
            (
                "eval",
                str(model),
                str(self.test_manifest),
                "--json",
                *self.cache_option(),
                "--device",
                self.device,
                "-q",
            ),
            d / "eval.json",
            stdout=True,
        )

    def first_chosen(self, run: Run) -> str | None:
        """The first image whose regions the run's own strategy chose (its labels also hold the
        warm-up round's random strips): the image the pictures show."""
        return next((e.id for e in read_regions(self.selection_dir(run) / "regions.jsonl")[1] if e.regions), None)

    def model_of(self, run: Run) -> Path:
        """The inference checkpoint of a finished run."""
        d = self.run_dir(run) / run.name
        return d / ("infer.safetensors" if bench_method(run.method).cap is not None else "model.safetensors")


def labeled_images(labels: Path) -> int:
    return sum(1 for e in read_labels(labels)[1] if e.regions)


def epochs_for(steps: int, batch_size: int, images: int, val_frac: float) -> int:
    """Epochs that give about ``steps`` optimizer steps on the training part of ``images``."""
    n_val = int(round(images * val_frac)) if images >= 5 else 0
    per_epoch = math.ceil(max(images - n_val, 1) / batch_size)
    return max(1, round(steps / per_epoch))
