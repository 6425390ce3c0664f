"""crowdtk train LABELS [--cap] [--init CKPT] -o model.safetensors (Algorithm 1, line 7)."""

from __future__ import annotations

from dataclasses import asdict, replace
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from crowdtk.cli.common import Device, Force, Log, Quiet, Seed, Verbose, run_command
from crowdtk.errors import CrowdtkError
from crowdtk.formats import Provenance, check_output_free
from crowdtk.train_config import TrainConfig

_T = TrainConfig()

# The training options, shared with `warmup`.
Labels = Annotated[Path, typer.Argument(help="Labels file from 'crowdtk import' (regions and the points inside them).", show_default=False)]
Output = Annotated[Path, typer.Option("-o", "--output", help="Checkpoint to write (.safetensors); the best epoch by validation MAE.", show_default=False)]
Model = Annotated[str, typer.Option(help="Counter: csrnet (the paper's), or lite, lite1, lite2 (EfficientNet-Lite0/1/2 front ends, fast on CPU).")]
NoPretrained = Annotated[bool, typer.Option("--no-pretrained", help="Start from random weights instead of ImageNet ones. [default: off]")]
BackboneWeights = Annotated[Optional[Path], typer.Option(help="ImageNet weights file for the front end (.safetensors, or a torchvision .pth state dict). [default: the cached torchvision weights]")]
Epochs = Annotated[int, typer.Option(help="Training epochs.")]
Lr = Annotated[float, typer.Option(help="Adam learning rate (targets are scaled by --density-scale).")]
BatchSize = Annotated[int, typer.Option(help="Crops per step (per process under torchrun).")]
Crop = Annotated[int, typer.Option(help="Random square crop side in pixels, a multiple of 8; 0 trains on whole images.")]
Scale = Annotated[float, typer.Option("--scale", help="Resize images by this factor first (recorded; eval and count apply it).")]
DensityScale = Annotated[float, typer.Option(help="Factor on density targets.")]
ValFrac = Annotated[float, typer.Option(help="Share of labeled images held out for validation.")]
ValEvery = Annotated[int, typer.Option(help="Validate (and keep the best checkpoint) every N epochs and after the last; 0 = about 20 times per run.")]
Compile = Annotated[bool, typer.Option("--compile", help="torch.compile the network for training (CUDA; slower to start). [default: off]")]

class Freeze(str, Enum):
    none = "none"
    early = "early"
    encoder = "encoder"


class LrSchedule(str, Enum):
    constant = "constant"
    cosine = "cosine"


class Keep(str, Enum):
    best = "best"
    last = "last"


FreezeOpt = Annotated[Freeze, typer.Option("--freeze", help="none: fine-tune the whole counter on random crops. encoder: keep the ImageNet front end frozen, compute its features once per image and flip, and train the rest on whole images (the fast CPU tier; --crop is not used). early: freeze only the layers up to stride 8 and fine-tune the deeper ones.")]
FeatureCacheOpt = Annotated[Optional[Path], typer.Option("--feature-cache", help="Folder that keeps the frozen front end's features (with --freeze), shared by runs with the same model, scale and images. [default: in memory]")]
LrScheduleOpt = Annotated[LrSchedule, typer.Option("--lr-schedule", help="constant, or cosine: decay to 0 over the run.")]
KeepOpt = Annotated[Keep, typer.Option("--keep", help="The epoch the checkpoint holds: best (by validation MAE) or last.")]
CpuBf16 = Annotated[bool, typer.Option("--cpu-bf16", help="Train in bfloat16 autocast on the CPU too (needs AVX512-BF16 or AMX; about 2x faster there). [default: off]")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its saved state. [default: off]")]


def check_init(init: Path, model: str | None) -> str:
    """The model of an --init checkpoint; refuse one that is not a crowdtk checkpoint, or of another model than --model."""
    from crowdtk.checkpoint import model_of, read_header

    name, _ = model_of(read_header(init), str(init))
    if model is not None and model != name:
        raise CrowdtkError(f"{init}: is a checkpoint of model '{name}', not of --model {model}",
                           f"drop --model (the --init checkpoint's model is used), or pass a checkpoint of a '{model}' model")
    return name


def run_training(command: str, labels: Path, output: Path, config: TrainConfig, init: Path | None,
                 resume: bool, device: str, force: bool, log: Log, model_given: bool = True) -> None:
    from crowdtk.checkpoint import state_path
    from crowdtk.train import EpochReport, train

    if init is not None:
        config = replace(config, model=check_init(init, config.model if model_given else None))
    if not resume:
        check_output_free(output, force)
        if state_path(output).exists() and not force:
            raise CrowdtkError(f"{state_path(output)}: a training state exists", "pass --resume to continue it, or --force to start anew")
    provenance = Provenance(command, {"labels": labels, "init": init, **asdict(config)}, seed=config.seed)
    with log.progress(config.epochs, f"{command} epochs") as advance:
        def on_epoch(report: "EpochReport") -> None:
            advance(1)
            mark = " *" if report.improved else ""
            val = "-" if report.val_mae is None else f"{report.val_mae:.2f}"
            log.info(f"epoch {report.epoch}/{report.epochs}: loss {report.train_loss:.4f}, val MAE {val}{mark}")

        result = train(labels, output, config, provenance, init=str(init) if init else None, resume=resume,
                       device=device, on_epoch=on_epoch)
    sup = result.supervision
    if sup["heads_labeled"] and sup["heads_supervised"] < 0.995 * sup["heads_labeled"]:
        log.warn(f"only {sup['heads_supervised']} of the {sup['heads_labeled']} labeled heads lie in supervised cells: the regions' "
                 f"edges are not on the output-cell grid of --scale {config.input_scale:g} (select and vectors take --scale)")
    kept = (f"best validation MAE {result.best_val_mae:.2f}" if config.keep == "best"
            else f"the last epoch (validation MAE {result.history[-1]['val_mae']:.2f})")
    log.info(f"wrote {output}: {kept} (validated on {result.val_on} images)")


@run_command("train")
def command(
    labels: Labels,
    output: Output,
    cap: Annotated[bool, typer.Option("--cap", help="Train with Crowd Affinity Propagation. [default: off]")] = False,
    init: Annotated[Optional[Path], typer.Option(help="Start from this checkpoint's weights (e.g. the warm-up counter); it must be of --model when that is given. [default: none]")] = None,
    model: Annotated[Optional[str], typer.Option(help=f"Counter: csrnet (the paper's), or lite, lite1, lite2 (EfficientNet-Lite0/1/2 front ends, fast on CPU). [default: {_T.model}, or the model of --init]", show_default=False)] = None,
    no_pretrained: NoPretrained = False,
    backbone_weights: BackboneWeights = None,
    epochs: Epochs = _T.epochs,
    lr: Lr = _T.lr,
    batch_size: BatchSize = _T.batch_size,
    crop: Crop = _T.crop,
    scale: Scale = _T.input_scale,
    density_scale: DensityScale = _T.density_scale,
    val_frac: ValFrac = _T.val_frac,
    val_every: ValEvery = _T.val_every,
    freeze: FreezeOpt = Freeze(_T.freeze),
    feature_cache: FeatureCacheOpt = None,
    lr_schedule: LrScheduleOpt = LrSchedule(_T.lr_schedule),
    keep: KeepOpt = Keep(_T.keep),
    cpu_bf16: CpuBf16 = False,
    compile_: Compile = False,
    seed: Seed = _T.seed,
    device: Device = "auto",
    resume: Resume = False,
    force: Force = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Train a counter on labeled regions; with --cap the unlabeled regions learn through CAP."""
    config = TrainConfig(model=model or _T.model, pretrained=not no_pretrained, backbone_weights=str(backbone_weights) if backbone_weights else None,
                         cap=cap, epochs=epochs, lr=lr, batch_size=batch_size, crop=crop, input_scale=scale,
                         density_scale=density_scale, val_frac=val_frac, val_every=val_every, compile=compile_, seed=seed,
                         freeze=freeze.value, feature_cache=str(feature_cache) if feature_cache else None,
                         lr_schedule=lr_schedule.value, keep=keep.value, cpu_bf16=cpu_bf16)
    run_training("train", labels, output, config, init, resume, device, force, Log("train", quiet, verbose), model_given=model is not None)
