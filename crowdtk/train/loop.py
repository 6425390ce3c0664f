"""The training loop of `warmup` and `train` (paper 3.5): fit a counter on labeled regions,
optionally with CAP, and write the checkpoint.

Determinism and resuming: every random choice of epoch ``e`` comes from generators seeded
with ``(seed, e, …)``, and the full training state (train.state) is written atomically after
every epoch. A run killed at any point and resumed therefore repeats exactly the epochs an
uninterrupted run would have made.

Multi-process: under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in
DistributedDataParallel (gloo on CPU, NCCL on CUDA). Each step's global batch is the same
as in a one-process run with ``batch_size × world_size``; each rank takes its share, the
loss is a mean of per-image losses, so gradients match the one-process run. Only rank 0
writes files.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from crowdtk.cap import TrainNet
from crowdtk.checkpoint import (
    load_tensors,
    read_header,
    refuse_training_state,
    save_tensors,
    state_path,
)
from crowdtk.errors import CrowdtkError
from crowdtk.features import FeatureCache
from crowdtk.files import file_digest
from crowdtk.formats import LabelsEntry, Provenance, checkpoint_header, read_labels, trained_scale
from crowdtk.geometry import STRIDE
from crowdtk.models import build_model
from crowdtk.runtime import Processes, cpu_bf16_supported, resolve_device
from crowdtk.train.cpu import example_batch, speed_up_cpu_training
from crowdtk.train.loss import density_loss
from crowdtk.train.samples import Sample, prepare_sample, split_validation, working_image
from crowdtk.train.state import Progress, restore_state, save_state
from crowdtk.train.steps import crop_batch, crop_batches, feature_batch, freeze_batchnorm, whole_image_batches
from crowdtk.train_config import TrainConfig


@dataclass
class EpochReport:
    epoch: int  # 1-based
    epochs: int
    train_loss: float
    val_mae: float | None  # None: no validation after this epoch (--val-every)
    best_val_mae: float
    improved: bool


@dataclass
class TrainResult:
    epochs_done: int
    best_val_mae: float
    val_on: str
    history: list[dict[str, float]] = field(default_factory=list)
    supervision: dict[str, int] = field(default_factory=dict)  # heads_labeled, heads_supervised
    features_computed: int = 0  # front-end maps computed (not found in the cache folder)


def train(
    labels_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    config: TrainConfig,
    provenance: Provenance,
    *,
    init: str | None = None,
    resume: bool = False,
    device: str = "auto",
    on_epoch: Callable[[EpochReport], None] | None = None,
    prepared: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train and write the checkpoint to ``output``: the best epoch by validation MAE
    (``config.keep == "best"``) or the last one (``"last"``).

    ``on_epoch(report)`` and ``prepared(n)`` report progress.
    """
    # Where it runs, checked before any work: the device, and this process's place in a torchrun job.
    config.validate()
    procs = Processes.from_env()
    dev = resolve_device(device, procs.local_rank)
    if config.cpu_bf16 and dev.type == "cpu" and not cpu_bf16_supported():
        raise CrowdtkError(
            "--cpu-bf16: this CPU has no bfloat16 support in oneDNN (AVX512-BF16 or AMX)", "drop --cpu-bf16"
        )
    procs.start(dev)
    if config.freeze != "none" and procs.world > 1:
        raise CrowdtkError(
            "--freeze trains in one process (its cached features make a step cheap)", "run it without torchrun"
        )

    # What it learns from: the images with labeled regions, and the images it validates on.
    _, entries = read_labels(labels_path)
    entries = [e for e in entries if e.regions]
    if not entries:
        raise CrowdtkError(f"{labels_path}: no labeled regions", "import labels first (crowdtk import)")
    labels_sha256 = file_digest(labels_path)
    train_entries, val_entries, val_on = split_validation(entries, config)

    # The network: ImageNet front end (or the --init checkpoint), CAP when asked for.
    config, net = _network(config, init)
    counter = net.counter
    net.to(dev).to(memory_format=torch.channels_last)
    loss_of = density_loss(config.loss)
    optimizer = torch.optim.Adam(
        [p for p in net.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
    )

    # A resumed run continues from the state saved after its last finished epoch.
    state_file = state_path(output)
    progress = restore_state(state_file, config, labels_sha256, net, optimizer) if resume else Progress()

    # Targets and masks at the working resolution; with a frozen front part, its features
    # (computed once, or found in the cache folder) replace the images.
    cache = FeatureCache(counter, config.freeze, dev, config.feature_cache) if config.freeze != "none" else None

    def prepare(entry: LabelsEntry) -> Sample:
        sample = prepare_sample(entry, config)
        if cache is not None:
            assert sample.image is not None  # a prepared sample holds its image
            # The image is let go; a damaged cache file is computed again from the image file.
            sample.features = cache.maps(
                sample.image, entry.sha256, config.scale, source=lambda: working_image(entry, config)[0]
            )
            sample.image = None
        if prepared:
            prepared(1)
        return sample

    samples = [prepare(e) for e in train_entries]
    val_samples = samples if val_on == "train" else [prepare(e) for e in val_entries]
    every = samples + (val_samples if val_samples is not samples else [])
    supervision = {
        "heads_labeled": sum(s.heads_labeled for s in every),
        "heads_supervised": sum(s.heads_supervised for s in every),
    }

    # How a step runs here: CPU settings timed on this run's batch shape, several processes, compiling, bfloat16.
    batches_of = whole_image_batches if cache is not None else crop_batches
    global_batch = config.batch_size * procs.world
    steps = len(batches_of(samples, global_batch, np.random.default_rng(0)))
    if dev.type == "cpu":
        progress.cpu_phase_split = _choose_phase_split(net, samples[0], config, progress.cpu_phase_split, procs)
    model: nn.Module = net
    if procs.world > 1:
        model = nn.parallel.DistributedDataParallel(
            net, device_ids=[dev.index] if dev.type == "cuda" else None, find_unused_parameters=config.cap
        )
    if config.compile:
        # torch.compile of a Module returns an OptimizedModule (a Module); its annotation says only a callable.
        model = torch.compile(model)  # type: ignore[assignment]
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda" or config.cpu_bf16)

    def header(epochs_done: int) -> dict[str, Any]:
        return checkpoint_header(
            provenance,
            model=counter.name,
            model_config=counter.config,
            cap=config.cap,
            training=asdict(config),
            labels_sha256=labels_sha256,
            epochs_done=epochs_done,
            best_val_mae=progress.best_val_mae,
            val_on=val_on,
            supervision=supervision,
            finished=epochs_done >= config.epochs,
            cpu_phase_split=progress.cpu_phase_split,
            cap_affinity=config.cap_affinity,
            cap_temperature=config.cap_tau(),
            run_id=progress.run_id,
        )

    def ours() -> bool:
        """Whether ``output`` holds a checkpoint of this run (or of the run it resumes)."""
        return Path(output).exists() and (
            progress.run_id is None or read_header(output).get("run_id") == progress.run_id
        )

    # The epochs. Every random choice of the epoch comes from (seed, epoch, ...): a resumed run repeats it.
    kept = progress.epochs_done > 0 and ours()  # a checkpoint of this run (or the run it resumes) is in output
    if resume and config.keep == "best" and np.isfinite(progress.best_val_mae) and not kept:
        raise CrowdtkError(
            f"{output}: the checkpoint of the best epoch so far (validation MAE {progress.best_val_mae:.2f}) is "
            "missing or was replaced; resuming cannot restore it",
            "put the file back, or start anew with --force instead of --resume",
        )
    for epoch in range(progress.epochs_done, config.epochs):
        batches = batches_of(samples, global_batch, np.random.default_rng([config.seed, epoch]))
        model.train()
        freeze_batchnorm(model)
        loss_sum = 0.0
        for step, batch in enumerate(batches):
            picks = batch[procs.rank * config.batch_size : (procs.rank + 1) * config.batch_size]
            rngs = [np.random.default_rng([config.seed, epoch, step, int(i)]) for i in picks]
            if cache is not None:
                x, target, mask = feature_batch([samples[i] for i in picks], config.flip, rngs, dev)
            else:
                x, target, mask = crop_batch([samples[i] for i in picks], config, rngs, counter, dev)
            lr = config.lr_at(epoch * steps + step, config.epochs * steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast:
                pred = model(x, mask)
            loss = loss_of(pred, target, mask.float(), config.density_scale)
            if not torch.isfinite(loss):
                names = ", ".join(samples[i].id for i in picks)
                raise CrowdtkError(
                    f"training loss became {loss.item()} at epoch {epoch + 1} (step {step + 1}) on image(s) {names}",
                    (
                        "lower --lr (or --density-scale); the checkpoint of "
                        f"the {config.keep} finished epoch is kept in {output}"
                        if kept
                        else "lower --lr (or --density-scale); this run wrote no checkpoint"
                    ),
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item()

        # Validation reports progress; with keep="best" it also chooses the checkpoint.
        val_mae = validate(net, val_samples, config, dev, procs) if config.validates_after(epoch + 1) else None
        train_loss = procs.sum([loss_sum / max(steps, 1)])[0] / procs.world
        improved = val_mae is not None and val_mae < progress.best_val_mae
        if improved:
            assert val_mae is not None  # improved only when validated
            progress.best_val_mae = val_mae
        progress.history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_mae": val_mae})
        progress.epochs_done = epoch + 1

        # Written after every epoch, atomically: the checkpoint when it is the one to keep,
        # and the state to resume from.
        if procs.writer:
            if config.keep == "last" or improved:
                save_tensors(output, net.weights(), header(epoch + 1))
                kept = True
            save_state(state_file, net, optimizer, header(epoch + 1), progress)
        procs.barrier()
        if on_epoch:
            on_epoch(EpochReport(epoch + 1, config.epochs, train_loss, val_mae, progress.best_val_mae, improved))
    validated = [h["val_mae"] for h in progress.history if h["val_mae"] is not None]
    if validated and not any(np.isfinite(v) for v in validated):
        if procs.writer and kept and config.keep == "last":  # this run's own checkpoint of a counter that predicts NaN
            Path(output).unlink(missing_ok=True)
        raise CrowdtkError(
            f"every validation of this run was NaN (the counter predicts no number); {output} was not written",
            "lower --lr, check the labels and --density-scale, or start anew with --force",
        )
    if procs.writer and not ours():
        raise CrowdtkError(f"{output}: no checkpoint of this run was written", "start anew with --force")
    # The kept epoch (keep="best") may be an earlier one, saved as unfinished then: the run is finished now.
    if procs.writer and Path(output).exists() and not read_header(output).get("finished", True):
        kept_header, kept_tensors = load_tensors(output)
        save_tensors(output, kept_tensors, {**kept_header, "finished": True})
    return TrainResult(
        epochs_done=config.epochs,
        best_val_mae=progress.best_val_mae,
        val_on=val_on,
        history=progress.history,
        supervision=supervision,
        features_computed=cache.computed if cache is not None else 0,
    )


def _network(config: TrainConfig, init: str | None) -> tuple[TrainConfig, TrainNet]:
    """The counter to train, from ImageNet weights or from the ``--init`` checkpoint (whose model and
    input scale the run then takes), with CAP (of ``config.cap_affinity``) when ``config.cap``."""
    init_header = None
    init_tensors: dict[str, torch.Tensor] = {}
    if init is not None:
        init_header, init_tensors = load_tensors(init)
        refuse_training_state(init_header, init)
        config = replace(config, model=init_header["model"]["name"], scale=trained_scale(init_header, config.scale))
    torch.manual_seed(config.seed)
    if init_header is not None:
        counter = build_model(config.model, pretrained=False, **init_header["model"]["config"])
    else:
        counter = build_model(config.model, pretrained=config.pretrained, backbone_weights=config.backbone_weights)
    net = TrainNet(
        counter, config.cap, config.freeze, cap_affinity=config.cap_affinity, cap_temperature=config.cap_tau()
    )
    if init_header is not None:
        net.load_weights(init_tensors, str(init), counter_only=True)
    return config, net


def _choose_phase_split(
    net: TrainNet, first: Sample, config: TrainConfig, earlier: bool | None, procs: Processes
) -> bool:
    """The CPU convolution backward for this run, timed on a batch shaped like its batches (a resumed
    run passes its earlier choice); under torchrun every rank takes the majority's choice."""
    if first.features is not None:
        h = first.features[0].load()
        example = example_batch((config.batch_size, *h.shape), first.mask.shape)
    else:
        assert first.image is not None  # a sample lets its image go only for cached features
        side_h, side_w = (config.crop, config.crop) if config.crop else first.image.shape[:2]  # multiples of the stride
        example = example_batch((config.batch_size, 3, side_h, side_w), (side_h // STRIDE, side_w // STRIDE))
    phase_split = speed_up_cpu_training(net, example, earlier)
    if procs.world > 1:  # every rank computes alike
        phase_split = speed_up_cpu_training(net, example, procs.sum([float(phase_split)])[0] * 2 > procs.world)
    return phase_split


@torch.inference_mode()
def validate(
    net: TrainNet, samples: list[Sample], config: TrainConfig, device: torch.device, procs: Processes
) -> float:
    """MAE of the count inside each validation image's labeled regions (whole image, no CAP)."""
    counter = net.counter
    counter.eval()
    errors, n = 0.0, 0
    for sample in samples[procs.rank :: procs.world]:
        if sample.features is not None:
            x = sample.features[0].load()[None].to(device).float()
        else:
            assert sample.image is not None  # a sample lets its image go only for cached features
            x = counter.to_input(sample.image[None], device)
        pred = net(x)[0, 0].float().cpu().numpy() / config.density_scale
        errors += abs(float((pred * sample.mask).sum()) - float((sample.target * sample.mask).sum()))
        n += 1
    total_errors, total = procs.sum([errors, float(n)])
    return total_errors / max(total, 1)
