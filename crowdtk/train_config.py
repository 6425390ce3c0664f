"""The settings of `train` and `warmup`, kept free of torch so the CLI starts fast."""

from __future__ import annotations

import math
from dataclasses import dataclass

from crowdtk.errors import CrowdtkError
from crowdtk.geometry import STRIDE

MODEL_NAMES = ("csrnet", "lite", "lite1", "lite2")  # crowdtk.models builds them
FREEZE_LEVELS = ("none", "early", "encoder")  # crowdtk.models.Counter.encode explains them
LR_SCHEDULES = ("constant", "cosine")
KEEP = ("best", "last")


@dataclass(frozen=True)
class TrainConfig:
    """Defaults of `train` and `warmup` (the paper's settings where it states them)."""

    model: str = "csrnet"
    pretrained: bool = True
    backbone_weights: str | None = None
    cap: bool = False
    epochs: int = 100
    lr: float = 1e-4  # Adam; the paper's 1e-8 belongs to an unscaled sum loss
    weight_decay: float = 0.0
    batch_size: int = 1  # the paper's batch size; crops of one size make larger batches possible
    crop: int = 256  # random square crop side in pixels (multiple of 8); 0 = whole image
    flip: bool = True
    density_scale: float = 100.0  # targets are multiplied by this so a stride-8 cell is O(1..10)
    input_scale: float = 1.0  # resize images (and points) by this factor before anything else
    sigma: float = 4.0
    val_frac: float = 0.1  # share of labeled images held out for validation (never the test set)
    # Validate every this many epochs (and after the last); 0 = about 20 times per run. Runs on few
    # labeled images (None-or-All) have many short epochs: validating each one took 40% of the
    # demo's None-or-All training.
    val_every: int = 0
    # "none": fine-tune the whole counter on random crops. "encoder" / "early": the ImageNet front
    # end (all of it / its layers up to stride 8) stays frozen, its features are computed once
    # per image and flip (crowdtk.features), and the rest trains on whole cached images.
    freeze: str = "none"
    feature_cache: str | None = None  # folder for the frozen part's features (None: in memory)
    lr_schedule: str = "constant"  # or "cosine": decays to 0 over the run, step by step
    # Which epoch the checkpoint holds: "best" by validation MAE, or "last" (with a cosine
    # schedule the last is a converged model, and the choice depends on no validation images).
    keep: str = "best"
    # bfloat16 autocast on CPU (CUDA always uses it). Measured: the frozen tier's training step
    # (back end + CAP, 4 whole Part B images at half size) 2.0x faster on an Intel Xeon with AMX.
    cpu_bf16: bool = False
    # torch.compile the training network: off by default; meant for CUDA (on CPU see README, speed).
    compile: bool = False
    seed: int = 0

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise CrowdtkError("--epochs and --batch-size must be at least 1", "pass positive numbers")
        if self.crop < 0 or self.crop % STRIDE:
            raise CrowdtkError(f"--crop must be 0 or a multiple of {STRIDE}, got {self.crop}", "pass e.g. --crop 256")
        if not 0 < self.input_scale <= 4:
            raise CrowdtkError(f"--scale must be in (0, 4], got {self.input_scale}", "pass e.g. --scale 0.5")
        if not 0 <= self.val_frac < 1:
            raise CrowdtkError(f"--val-frac must be in [0, 1), got {self.val_frac}", "pass e.g. 0.1")
        if self.val_every < 0:
            raise CrowdtkError(f"--val-every must be 0 (auto) or positive, got {self.val_every}", "pass e.g. --val-every 1")
        if self.freeze not in FREEZE_LEVELS:
            raise CrowdtkError(f"--freeze must be one of {', '.join(FREEZE_LEVELS)}, got {self.freeze!r}", "pass e.g. --freeze encoder")
        if self.lr_schedule not in LR_SCHEDULES:
            raise CrowdtkError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}", "pass e.g. cosine")
        if self.keep not in KEEP:
            raise CrowdtkError(f"--keep must be one of {', '.join(KEEP)}, got {self.keep!r}", "pass best or last")
        if not self.lr > 0:
            raise CrowdtkError(f"--lr must be positive, got {self.lr}", "pass e.g. 1e-4")

    def lr_at(self, step: int, total: int) -> float:
        """The learning rate of 0-based optimizer ``step`` out of ``total``."""
        if self.lr_schedule == "cosine":
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * step / max(total, 1)))
        return self.lr

    def validates_after(self, epoch: int) -> bool:
        """Whether validation (and so the choice of the best checkpoint) runs after 1-based ``epoch``."""
        every = self.val_every or max(1, self.epochs // 20)
        return epoch % every == 0 or epoch == self.epochs
