"""Every option and argument alias that more than one subcommand takes, one section per group of
commands, so that an option means the same and reads the same wherever it appears; and the groups
of options that several commands take as one value (crowdtk.cli.groups).

Options with a fixed set of values are enums (Click choices): ``--help`` lists the values, and a
wrong one is a usage error (exit 2) before any work starts. The options that choose a registered
extension (a model, a labeling tool; select's strategy, bench's methods) are :func:`Deferred`: their
choices and help are read from the registry each time the command is built, never at import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeAlias, TypeVar

import typer

from crowdtk.cli.common import Log
from crowdtk.cli.groups import Deferred, Group
from crowdtk.experiment import Schedule
from crowdtk.labeling import TOOLS
from crowdtk.model_records import MODELS
from crowdtk.predict_config import PredictConfig
from crowdtk.registry import Registry, listing
from crowdtk.selection import STRATEGIES
from crowdtk.train.loss import LOSSES
from crowdtk.train_config import FREEZE_LEVELS, KEEP, LR_SCHEDULES, TrainConfig

T = TypeVar("T")


def choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A str-valued enum of ``values``, named after the option, for Click's choice type.

    A type checker cannot follow an enum made from a tuple at import, so where one is an option's type it is
    declared Any for type checking: the command receives a member (``.value``, the name), its default is a name."""
    return Enum(name, [(v, v) for v in values], type=str)  # type: ignore[return-value]


def registered(name: str, registry: Registry[Any]) -> type[Enum]:
    """The names in ``registry`` now, as choices (call it in a Deferred's annotation, when the command is built)."""
    return choices(name, tuple(registry))


# --------------------------------------------------------------------------- every command

OutputFile = Annotated[
    str, typer.Option("-o", "--output", help="Output file; '-' writes to stdout.", show_default=True)
]
OutputDir = Annotated[
    Path, typer.Option("-o", "--output", help="Output folder (must not exist unless --force).", show_default=False)
]
Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="No progress or log messages on stderr. [default: off]")]
Verbose = Annotated[
    bool, typer.Option("-v", "--verbose", help="More log messages, and a traceback on errors. [default: off]")
]
Seed = Annotated[int, typer.Option("--seed", help="Random seed; recorded in every output.")]
Workers = Annotated[int, typer.Option("--workers", min=1, help="Parallel worker processes or threads.")]
Force = Annotated[bool, typer.Option("--force", help="Replace an existing output. [default: off]")]
SkipBad = Annotated[
    bool, typer.Option("--skip-bad", help="Skip and list bad images instead of stopping. [default: off]")
]
Manifest = Annotated[
    str, typer.Argument(help="Manifest file from 'crowdtk index'; '-' reads stdin.", show_default=False)
]

if TYPE_CHECKING:  # see choices()
    DeviceName: TypeAlias = Any
else:
    DeviceName = choices("DeviceName", ("auto", "cpu", "cuda"))
Device = Annotated[DeviceName, typer.Option("--device", help="Where the network runs (auto picks CUDA when present).")]


@dataclass(frozen=True)
class Session:
    """A command's run: its Log (-q, -v), and --force and --skip-bad (False where it takes neither)."""

    log: Log
    force: bool = False
    skip_bad: bool = False

    def warn_skipped(self, problems: Iterable[str]) -> None:
        """A warning for each image left out with --skip-bad (the library's ``skipped`` list)."""
        for problem in problems:
            self.log.warn(f"skipped {problem}")

    def skipping(
        self, total: int, description: str, work: Callable[..., T], *args: Any, **kwargs: Any
    ) -> tuple[T, list[str]]:
        """``work(*args, **kwargs)`` over ``total`` images under a progress bar, passed --skip-bad and a list that
        receives what it skipped; each skipped image is warned about. Returns its result and that list."""
        skipped: list[str] = []
        with self.log.progress(total, description) as advance:
            result = work(*args, on_progress=advance, skip_bad=self.skip_bad, skipped=skipped, **kwargs)
        self.warn_skipped(skipped)
        return result, skipped


def _session(
    command: str, /, skip_bad: SkipBad = False, force: Force = False, quiet: Quiet = False, verbose: Verbose = False
) -> Session:
    return Session(Log(command, quiet, verbose), force=force, skip_bad=skip_bad)


# The options every command ends with; one that writes no output that may exist leaves out --force, one
# that reads no set of images --skip-bad. The groups are typed Any, as Deferred is: a command's parameter
# whose default is a group receives the group's value (here a Session).
SESSION: Any = Group(_session)

# --------------------------------------------------------------------------- training (train, warmup, bench, demo)

TRAIN_DEFAULTS = TrainConfig()  # the defaults of train and warmup


def model_help() -> str:
    return f"Counter: {listing(MODELS)}."


def model_option(default: str) -> Any:
    """--model with ``default``: the registered models (crowdtk.model_records)."""
    return Deferred(
        lambda: Annotated[registered("ModelName", MODELS), typer.Option("--model", help=model_help())], default
    )


BatchSize = Annotated[
    int, typer.Option(help="Images (whole, or crops with --crop) per optimizer step (per process under torchrun).")
]
Crop = Annotated[
    int,
    typer.Option(
        help="Random square crop side in pixels (after --scale), a "
        "multiple of 8, for --freeze none; 0 trains on whole images."
    ),
]
Lr = Annotated[float, typer.Option(help="Adam learning rate (targets are scaled by --density-scale).")]

if TYPE_CHECKING:  # see choices()
    Freeze: TypeAlias = Any
    LrSchedule: TypeAlias = Any
    Keep: TypeAlias = Any
else:
    Freeze = choices("Freeze", FREEZE_LEVELS)
    LrSchedule = choices("LrSchedule", LR_SCHEDULES)
    Keep = choices("Keep", KEEP)

Labels = Annotated[
    Path,
    typer.Argument(help="Labels file from 'crowdtk import' (regions and the points inside them).", show_default=False),
]
Checkpoint = Annotated[
    Path,
    typer.Option(
        "-o",
        "--output",
        help="Checkpoint to write (.safetensors); the best epoch by validation MAE.",
        show_default=False,
    ),
]
NoPretrained = Annotated[
    bool, typer.Option("--no-pretrained", help="Start from random weights instead of ImageNet ones. [default: off]")
]
BackboneWeights = Annotated[
    Path | None,
    typer.Option(
        help="ImageNet weights file for the front end (.safetensors, or a torchvision .pth state dict). "
        "[default: the cached torchvision weights]"
    ),
]
Epochs = Annotated[int, typer.Option(help="Training epochs.")]
Scale = Annotated[
    float, typer.Option("--scale", help="Resize images by this factor first (recorded; eval and count apply it).")
]
DensityScale = Annotated[float, typer.Option(help="Factor on density targets.")]
if TYPE_CHECKING:  # see choices()
    LossName: TypeAlias = Any
else:
    LossName = choices("LossName", tuple(LOSSES))
LossOpt = Annotated[
    LossName,
    typer.Option(
        "--loss",
        help="The density loss (crowdtk/train/loss.py): "
        + "; ".join(f"{loss.name}: {loss.help}" for loss in LOSSES.values()),
    ),
]
ValFrac = Annotated[float, typer.Option(help="Share of labeled images held out for validation.")]
ValEvery = Annotated[
    int,
    typer.Option(
        help="Validate (and keep the best checkpoint) every N epochs and after the last; 0 = about 20 times per run."
    ),
]
Compile = Annotated[
    bool,
    typer.Option("--compile", help="torch.compile the network for training (CUDA; slower to start). [default: off]"),
]
FreezeOpt = Annotated[
    Freeze,
    typer.Option(
        "--freeze",
        help="none: fine-tune the whole counter on random crops. encoder: keep the ImageNet front end frozen, compute "
        "its features once per image and flip, and train the rest on whole images (the fast CPU tier; --crop is not "
        "used). early: freeze only the layers up to stride 8 and fine-tune the deeper ones.",
    ),
]
TrainFeatureCache = Annotated[
    Path | None,
    typer.Option(
        "--feature-cache",
        help="Folder that keeps the frozen front end's features (with --freeze), shared by runs with the same model, "
        "scale and images. [default: in memory]",
    ),
]
LrScheduleOpt = Annotated[
    LrSchedule, typer.Option("--lr-schedule", help="constant, or cosine: decay to 0 over the run.")
]
KeepOpt = Annotated[
    Keep, typer.Option("--keep", help="The epoch the checkpoint holds: best (by validation MAE) or last.")
]
CpuBf16 = Annotated[
    bool,
    typer.Option(
        "--cpu-bf16",
        help="Train in bfloat16 autocast on the CPU too (needs "
        "AVX512-BF16 or AMX; about 2x faster there). [default: off]",
    ),
]
Resume = Annotated[
    bool, typer.Option("--resume", help="Continue an interrupted run from its saved state. [default: off]")
]


@dataclass(frozen=True)
class Training:
    """The options train and warmup share, as one value: their TrainConfig (its model and cap are each command's own),
    --device, --resume."""

    config: TrainConfig
    device: str
    resume: bool


def _training(
    no_pretrained: NoPretrained = False,
    backbone_weights: BackboneWeights = None,
    epochs: Epochs = TRAIN_DEFAULTS.epochs,
    lr: Lr = TRAIN_DEFAULTS.lr,
    batch_size: BatchSize = TRAIN_DEFAULTS.batch_size,
    crop: Crop = TRAIN_DEFAULTS.crop,
    scale: Scale = TRAIN_DEFAULTS.scale,
    density_scale: DensityScale = TRAIN_DEFAULTS.density_scale,
    loss: LossOpt = TRAIN_DEFAULTS.loss,
    val_frac: ValFrac = TRAIN_DEFAULTS.val_frac,
    val_every: ValEvery = TRAIN_DEFAULTS.val_every,
    freeze: FreezeOpt = TRAIN_DEFAULTS.freeze,
    feature_cache: TrainFeatureCache = None,
    lr_schedule: LrScheduleOpt = TRAIN_DEFAULTS.lr_schedule,
    keep: KeepOpt = TRAIN_DEFAULTS.keep,
    cpu_bf16: CpuBf16 = False,
    compile_: Compile = False,
    seed: Seed = TRAIN_DEFAULTS.seed,
    device: Device = "auto",
    resume: Resume = False,
) -> Training:
    config = TrainConfig(
        pretrained=not no_pretrained,
        backbone_weights=str(backbone_weights) if backbone_weights else None,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        crop=crop,
        scale=scale,
        density_scale=density_scale,
        loss=loss.value,
        val_frac=val_frac,
        val_every=val_every,
        compile=compile_,
        seed=seed,
        freeze=freeze.value,
        feature_cache=str(feature_cache) if feature_cache else None,
        lr_schedule=lr_schedule.value,
        keep=keep.value,
        cpu_bf16=cpu_bf16,
    )
    return Training(config, device.value, resume)


TRAINING: Any = Group(_training)  # the options of train and warmup after --model

# ---------------------------------------------------------------------- running a counter (eval, count, vectors, show)

CounterCheckpoint = Annotated[Path, typer.Argument(help="Counter checkpoint (.safetensors).", show_default=False)]

MaxSide = Annotated[
    int,
    typer.Option(
        "--max-side", help="Images larger than this (pixels, after --scale) are run in tiles whose counts add up."
    ),
]
FeatureCache = Annotated[
    Path | None,
    typer.Option(
        "--feature-cache",
        help="Folder of cached front-end features (train --feature-cache): a checkpoint trained with --freeze reuses "
        "them for images that need no tiling. [default: none]",
    ),
]


FlipAverage = Annotated[
    bool,
    typer.Option(
        "--flip-average",
        help="Average each density with the mirrored density of the mirrored "
        "image (test-time flip; twice the compute). [default: off]",
    ),
]


def _prediction(
    max_side: MaxSide = PredictConfig.max_side,
    feature_cache: FeatureCache = None,
    device: Device = "auto",
    flip_average: FlipAverage = PredictConfig.flip_average,
) -> PredictConfig:
    return PredictConfig(
        max_side=max_side,
        feature_cache=str(feature_cache) if feature_cache else None,
        device=device.value,
        flip_average=flip_average,
    )


PREDICTION: Any = Group(_prediction)  # eval, count, vectors: how the counter runs

# --------------------------------------------------------------------------- experiments (bench, demo)

Steps = Annotated[
    int,
    typer.Option(
        help="Optimizer steps of every training run (the same for every method: fewer labeled images, more epochs)."
    ),
]


def warmup_strategies() -> str:
    """The strategies a bench runs a warm-up round for (those that need vectors), for a --help text: ``max, mdc``."""
    return ", ".join(s.name for s in STRATEGIES.values() if s.needs_vectors)


def _warmup_steps() -> Any:
    return Annotated[int, typer.Option(help=f"Optimizer steps of the warm-up counter ({warmup_strategies()}).")]


def _strip_frac() -> Any:
    # The strategies that pick cells of images (not whole images): those the strips are cut for.
    cells = ", ".join(s.name for s in STRATEGIES.values() if not s.whole_images)
    return Annotated[
        float,
        typer.Option(
            help=f"Strip width as a fraction of the image width ({cells}; the budget sets how many per image)."
        ),
    ]


def strip_frac_option(default: float) -> Any:
    """--strip-frac of bench and demo (with ``default``), naming the strategies that pick strips."""
    return Deferred(_strip_frac, default)


BenchFreeze = Annotated[
    Freeze,
    typer.Option(
        "--freeze",
        help="encoder: the frozen-encoder CPU tier (features cached in DIR/feature-cache, whole images); early: "
        "freeze the layers up to stride 8; none: fine-tune everything on --crop crops.",
    ),
]
CpuBf16Auto = Annotated[
    bool | None,
    typer.Option(
        "--cpu-bf16/--no-cpu-bf16",
        help="Train in bfloat16 autocast on the CPU (train --cpu-bf16; about 2x faster with AMX). "
        "[default: on where the CPU runs bfloat16 natively and --device is not cuda]",
        show_default=False,
    ),
]


def schedule_options(defaults: Schedule) -> Any:
    """--model, --steps, --warmup-steps, --batch-size and --crop of bench and demo, each with its ``defaults``:
    they replace those in it."""

    def schedule(
        model: str = model_option(defaults.model),
        steps: Steps = defaults.steps,
        warmup_steps: int = Deferred(_warmup_steps, defaults.warmup_steps),
        batch_size: BatchSize = defaults.batch_size,
        crop: Crop = defaults.crop,
    ) -> Schedule:
        return replace(defaults, model=model, steps=steps, warmup_steps=warmup_steps, batch_size=batch_size, crop=crop)

    return Group(schedule)


# --------------------------------------------------------------------------- export / import

Regions = Annotated[
    str,
    typer.Argument(
        help="Regions file from 'crowdtk select', or a labels file for a review round; '-' reads stdin.",
        show_default=False,
    ),
]


def tool_choices() -> type[Enum]:
    """--to and --from: the registered labeling tools (crowdtk.labeling.TOOLS), in their order."""
    return registered("Tool", TOOLS)


# select and campaign init: clicks instead of area (each command's --help says how it spends them).
BudgetHeads = Annotated[
    float | None,
    typer.Option(
        metavar="N",
        help="A head budget instead of --budget: regions are chosen until the heads the counter predicts in them "
        "reach N. [default: none]",
        show_default=False,
    ),
]

# bench and campaign: the features of a frozen front end, kept for every run in the folder (and beyond it).
SharedFeatureCache = Annotated[
    Path | None,
    typer.Option(
        "--feature-cache",
        help="Folder of the frozen front end's features, shareable between bench folders and campaigns (a CI job can "
        "keep it across runs). [default: DIR/feature-cache]",
        show_default=False,
    ),
]
