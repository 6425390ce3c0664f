"""crowdtk warmup LABELS -o warmup.safetensors (Algorithm 1, lines 1-2)."""

from __future__ import annotations

from crowdtk.cli.common import Device, Force, Log, Quiet, Seed, Verbose, run_command
from crowdtk.cli.train import (
    BackboneWeights, BatchSize, Compile, CpuBf16, Crop, DensityScale, Epochs, FeatureCacheOpt, Freeze, FreezeOpt, Keep, KeepOpt, Labels, Lr,
    LrSchedule, LrScheduleOpt, Model, NoPretrained, Output, Resume, Scale, ValEvery, ValFrac, run_training, _T,
)
from crowdtk.train_config import TrainConfig


@run_command("warmup")
def command(
    labels: Labels,
    output: Output,
    model: Model = _T.model,
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
    """Train the warm-up counter on the warm-up labels (no CAP); 'vectors' uses it to rank the rest."""
    config = TrainConfig(model=model, pretrained=not no_pretrained, backbone_weights=str(backbone_weights) if backbone_weights else None,
                         cap=False, epochs=epochs, lr=lr, batch_size=batch_size, crop=crop, input_scale=scale,
                         density_scale=density_scale, val_frac=val_frac, val_every=val_every, compile=compile_, seed=seed,
                         freeze=freeze.value, feature_cache=str(feature_cache) if feature_cache else None,
                         lr_schedule=lr_schedule.value, keep=keep.value, cpu_bf16=cpu_bf16)
    run_training("warmup", labels, output, config, None, resume, device, force, Log("warmup", quiet, verbose))
