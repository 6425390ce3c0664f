"""crowdtk warmup LABELS -o warmup.safetensors (Algorithm 1, lines 1-2)."""

from __future__ import annotations

from crowdtk.cli.common import Log, run_command
from crowdtk.cli.options import (
    TRAINING, BackboneWeights, BatchSize, Checkpoint, Compile, CpuBf16, Crop, DensityScale, Device, Epochs, Force, FreezeOpt, KeepOpt,
    Labels, Lr, LrScheduleOpt, Model, NoPretrained, Quiet, Resume, Scale, Seed, TrainFeatureCache, ValEvery, ValFrac, Verbose,
)
from crowdtk.cli.train import run_training, training_config


@run_command("warmup")
def command(
    labels: Labels,
    output: Checkpoint,
    model: Model = TRAINING.model,
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
    """Train the warm-up counter on the warm-up labels (no CAP); 'vectors' uses it to rank the rest."""
    config = training_config(model=model.value, cap=False, no_pretrained=no_pretrained, backbone_weights=backbone_weights, epochs=epochs,
                             lr=lr, batch_size=batch_size, crop=crop, scale=scale, density_scale=density_scale, val_frac=val_frac,
                             val_every=val_every, freeze=freeze.value, feature_cache=feature_cache, lr_schedule=lr_schedule.value,
                             keep=keep.value, cpu_bf16=cpu_bf16, compile_=compile_, seed=seed)
    run_training("warmup", labels, output, config, None, resume, device.value, force, Log("warmup", quiet, verbose))
