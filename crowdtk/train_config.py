"""The settings of `train` and `warmup`, kept free of torch so the CLI starts fast."""

from __future__ import annotations

from dataclasses import dataclass

from crowdtk.errors import CrowdtkError

STRIDE = 8  # output stride of every counter


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
        if not self.lr > 0:
            raise CrowdtkError(f"--lr must be positive, got {self.lr}", "pass e.g. 1e-4")

    def validates_after(self, epoch: int) -> bool:
        """Whether validation (and so the choice of the best checkpoint) runs after 1-based ``epoch``."""
        every = self.val_every or max(1, self.epochs // 20)
        return epoch % every == 0 or epoch == self.epochs
