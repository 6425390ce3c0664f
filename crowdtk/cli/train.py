"""crowdtk train LABELS [--cap] [--init CKPT] -o model.safetensors (Algorithm 1, line 7)."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from crowdtk.cli.common import Log, run_command
from crowdtk.cli.options import (
    TRAINING, BackboneWeights, BatchSize, Checkpoint, Compile, CpuBf16, Crop, DensityScale, Device, Epochs, Force, FreezeOpt, KeepOpt,
    Labels, Lr, LrScheduleOpt, ModelName, NoPretrained, Quiet, Resume, Scale, Seed, TrainFeatureCache, ValEvery, ValFrac, Verbose,
)
from crowdtk.errors import CrowdtkError
from crowdtk.formats import Provenance
from crowdtk.files import check_inputs_exist, check_output_free
from crowdtk.train_config import TrainConfig

def run_training(command: str, labels: Path, output: Path, config: TrainConfig, init: Path | None,
                 resume: bool, device: str, force: bool, log: Log, model_given: bool = True) -> None:
    check_inputs_exist(labels, init)
    from crowdtk.checkpoint import init_model, read_header, state_path
    from crowdtk.train import EpochReport, train

    if init is not None:
        config = replace(config, model=init_model(init, config.model if model_given else None))
    if not resume:
        # The resumable state first: "pass --force" alone would throw an interrupted run's epochs away.
        if state_path(output).exists() and not force:
            raise CrowdtkError(f"{state_path(output)}: a training state exists (of an unfinished or an earlier run)",
                               "continue it with --resume, or pass --force to start anew")
        check_output_free(output, force)
    provenance = Provenance(command, {"labels": labels, "init": init, **asdict(config)}, seed=config.seed)
    with log.progress(config.epochs, f"{command} epochs") as advance:
        def on_epoch(report: "EpochReport") -> None:
            advance(1)
            mark = " *" if report.improved else ""
            val = "-" if report.val_mae is None else f"{report.val_mae:.2f}"
            log.info(f"epoch {report.epoch}/{report.epochs}: loss {report.train_loss:.4f}, val MAE {val}{mark}")

        try:
            result = train(labels, output, config, provenance, init=str(init) if init else None, resume=resume,
                           device=device, on_epoch=on_epoch)
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: every finished epoch is saved
            done = read_header(state_path(output)).get("epochs_done", 0) if state_path(output).exists() else 0
            raise type(exc)(f"after epoch {done} of {config.epochs}; continue with --resume" if done
                            else "before the first epoch finished; nothing was saved") from None
    sup = result.supervision
    if sup["heads_labeled"] and sup["heads_supervised"] < 0.995 * sup["heads_labeled"]:
        log.warn(f"only {sup['heads_supervised']} of the {sup['heads_labeled']} labeled heads lie in supervised cells: the regions' "
                 f"edges are not on the output-cell grid of --scale {config.input_scale:g} (select and vectors take --scale)")
    kept = (f"best validation MAE {result.best_val_mae:.2f}" if config.keep == "best"
            else f"the last epoch (validation MAE {result.history[-1]['val_mae']:.2f})")
    log.info(f"wrote {output}: {kept} (validated on {result.val_on} images)")


def training_config(*, model: str, cap: bool, no_pretrained: bool, backbone_weights: Path | None, epochs: int, lr: float,
                    batch_size: int, crop: int, scale: float, density_scale: float, val_frac: float, val_every: int,
                    freeze: str, feature_cache: Path | None, lr_schedule: str, keep: str, cpu_bf16: bool, compile_: bool,
                    seed: int) -> TrainConfig:
    """The TrainConfig of `train` and `warmup` from their options (the one place it is built from a command line)."""
    return TrainConfig(model=model, pretrained=not no_pretrained, backbone_weights=str(backbone_weights) if backbone_weights else None,
                       cap=cap, epochs=epochs, lr=lr, batch_size=batch_size, crop=crop, input_scale=scale,
                       density_scale=density_scale, val_frac=val_frac, val_every=val_every, compile=compile_, seed=seed,
                       freeze=freeze, feature_cache=str(feature_cache) if feature_cache else None,
                       lr_schedule=lr_schedule, keep=keep, cpu_bf16=cpu_bf16)


@run_command("train")
def command(
    labels: Labels,
    output: Checkpoint,
    cap: Annotated[bool, typer.Option("--cap", help="Train with Crowd Affinity Propagation. [default: off]")] = False,
    init: Annotated[Optional[Path], typer.Option(help="Start from this checkpoint's weights (e.g. the warm-up counter); it must be of --model when that is given. [default: none]")] = None,
    model: Annotated[Optional[ModelName], typer.Option(help=f"Counter: csrnet (the paper's), or lite, lite1, lite2 (EfficientNet-Lite0/1/2 front ends, fast on CPU). [default: {TRAINING.model}, or the model of --init]", show_default=False)] = None,
    no_pretrained: NoPretrained = False,
    backbone_weights: BackboneWeights = None,
    epochs: Epochs = TRAINING.epochs,
    lr: Lr = TRAINING.lr,
    batch_size: BatchSize = TRAINING.batch_size,
    crop: Crop = TRAINING.crop,
    scale: Scale = TRAINING.input_scale,
    density_scale: DensityScale = TRAINING.density_scale,
    val_frac: ValFrac = TRAINING.val_frac,
    val_every: ValEvery = TRAINING.val_every,
    freeze: FreezeOpt = TRAINING.freeze,
    feature_cache: TrainFeatureCache = None,
    lr_schedule: LrScheduleOpt = TRAINING.lr_schedule,
    keep: KeepOpt = TRAINING.keep,
    cpu_bf16: CpuBf16 = False,
    compile_: Compile = False,
    seed: Seed = TRAINING.seed,
    device: Device = "auto",
    resume: Resume = False,
    force: Force = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Train a counter on labeled regions; with --cap the unlabeled regions learn through CAP."""
    config = training_config(model=model.value if model else TRAINING.model, cap=cap, no_pretrained=no_pretrained,
                             backbone_weights=backbone_weights, epochs=epochs, lr=lr, batch_size=batch_size, crop=crop, scale=scale,
                             density_scale=density_scale, val_frac=val_frac, val_every=val_every, freeze=freeze.value,
                             feature_cache=feature_cache, lr_schedule=lr_schedule.value, keep=keep.value, cpu_bf16=cpu_bf16,
                             compile_=compile_, seed=seed)
    run_training("train", labels, output, config, init, resume, device.value, force, Log("train", quiet, verbose), model_given=model is not None)
