"""The settings of `train` and `warmup`, kept free of torch so the CLI starts fast."""

from __future__ import annotations

import math
from dataclasses import dataclass

from crowdtk.errors import CrowdtkError, UsageError
from crowdtk.geometry import STRIDE, check_scale
from crowdtk.model_records import model_record
from crowdtk.train.loss import DEFAULT_LOSS, density_loss

FREEZE_LEVELS = ("none", "early", "encoder")  # crowdtk.models.Counter.encode explains them
LR_SCHEDULES = ("constant", "cosine")
KEEP = ("best", "last")
# CAP's affinity forms (crowdtk.cap): the paper's Eq. 9, and two extensions with a temperature τ.
CAP_AFFINITIES = ("paper", "temperature", "cosine")
# Default τ per extension, chosen so that a row's logits span a few units to ~10 on the features CAP
# meets, which makes affinity maps pick out regions (hundreds of positions) rather than a handful.
# Measured on the 64-channel stride-8 features of lite on Part B images at scale 0.5 (2784 unlabeled
# positions, a 10% strip labeled), median over rows:
# - softmax dot products (paper, temperature) do not sit near 1/C there: mean 0.09 (ImageNet front
#   end, fresh back end) to 0.24-0.34 (a trained counter), row range 0.73-0.99, because the softmax
#   of real features is dominated by a few channels. At τ = 0.1 the largest/smallest affinity of a
#   row is 2e3-2e4 (paper: <= e) and a row spreads over 7-12% (fresh) or 26-41% (trained) of the
#   positions (exp of its entropy); at τ = 0.01 it is 0.5-1.3% (fresh), near-hard attention. Only
#   i.i.d. N(0, 1) features give dots near 1/C (0.016, row range 0.019), where τ = 0.1 hardly
#   sharpens (ratio 1.2) and τ = 0.01 gives ratio 7.
# - cosine of the raw features: row range 0.5 (fresh) to 1.0 (trained); at τ = 0.1 the ratio is
#   170-2e4 and a row spreads over 43-78% of the positions (65% on i.i.d. ReLU(N(0, 1)) features).
CAP_TEMPERATURES = {"temperature": 0.1, "cosine": 0.1}


@dataclass(frozen=True)
class TrainConfig:
    """Defaults of `train` and `warmup` (the paper's settings where it states them)."""

    model: str = "csrnet"
    pretrained: bool = True
    backbone_weights: str | None = None
    cap: bool = False
    # CAP's affinity form and its temperature (None: the form's default in CAP_TEMPERATURES; the
    # paper's form takes none). Used only with cap.
    cap_affinity: str = "paper"
    cap_temperature: float | None = None
    epochs: int = 100
    lr: float = 1e-4  # Adam; the paper's 1e-8 belongs to an unscaled sum loss
    weight_decay: float = 0.0
    batch_size: int = 1  # the paper's batch size; crops of one size make larger batches possible
    crop: int = 256  # random square crop side in pixels (multiple of 8); 0 = whole image
    flip: bool = True
    density_scale: float = 100.0  # targets are multiplied by this so a stride-8 cell is O(1..10)
    loss: str = DEFAULT_LOSS  # a name in crowdtk.train.loss.LOSSES
    scale: float = 1.0  # resize images (and points) by this factor before anything else
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
        check_scale(self.scale)
        if not 0 <= self.val_frac < 1:
            raise CrowdtkError(f"--val-frac must be in [0, 1), got {self.val_frac}", "pass e.g. 0.1")
        if self.val_every < 0:
            raise CrowdtkError(
                f"--val-every must be 0 (auto) or positive, got {self.val_every}", "pass e.g. --val-every 1"
            )
        if self.freeze not in FREEZE_LEVELS:
            raise CrowdtkError(
                f"--freeze must be one of {', '.join(FREEZE_LEVELS)}, got {self.freeze!r}", "pass e.g. --freeze encoder"
            )
        if self.freeze != "none" and not model_record(self.model).frozen_encoder:
            raise CrowdtkError(
                f"--freeze {self.freeze} with --model {self.model}, which has no front end to keep frozen",
                "pass --freeze none",
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise CrowdtkError(
                f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}", "pass e.g. cosine"
            )
        if self.keep not in KEEP:
            raise CrowdtkError(f"--keep must be one of {', '.join(KEEP)}, got {self.keep!r}", "pass best or last")
        if not self.lr > 0:
            raise CrowdtkError(f"--lr must be positive, got {self.lr}", "pass e.g. 1e-4")
        if not (math.isfinite(self.density_scale) and self.density_scale > 0):  # 0 makes every validation 0/0
            raise UsageError(
                f"--density-scale must be finite and positive, got {self.density_scale}",
                f"pass e.g. --density-scale {TrainConfig.density_scale:g}",
            )
        check_cap_options(self.cap, self.cap_affinity, self.cap_temperature)
        density_loss(self.loss)  # a name registered there

    def cap_tau(self) -> float | None:
        """The temperature CAP's affinities run with: --cap-temperature, or the form's default (None for paper)."""
        if self.cap_affinity == "paper":
            return None
        return CAP_TEMPERATURES[self.cap_affinity] if self.cap_temperature is None else self.cap_temperature

    def lr_at(self, step: int, total: int) -> float:
        """The learning rate of 0-based optimizer ``step`` out of ``total``."""
        if self.lr_schedule == "cosine":
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * step / max(total, 1)))
        return self.lr

    def validates_after(self, epoch: int) -> bool:
        """Whether validation (and so the choice of the best checkpoint) runs after 1-based ``epoch``."""
        every = self.val_every or max(1, self.epochs // 20)
        return epoch % every == 0 or epoch == self.epochs


def check_cap_options(cap: bool, affinity: str, temperature: float | None) -> None:
    """Refuse CAP settings that cannot run as given (usage errors: exit 2 from the CLI)."""
    if affinity not in CAP_AFFINITIES:
        raise UsageError(
            f"--cap-affinity must be one of {', '.join(CAP_AFFINITIES)}, got {affinity!r}",
            "pass e.g. --cap-affinity cosine",
        )
    if temperature is not None and not (math.isfinite(temperature) and temperature > 0):
        raise UsageError(
            f"--cap-temperature must be finite and positive, got {temperature}",
            f"pass e.g. --cap-temperature {CAP_TEMPERATURES['cosine']:g}",
        )
    if not cap and (affinity != "paper" or temperature is not None):
        given = "--cap-affinity" if affinity != "paper" else "--cap-temperature"
        raise UsageError(f"{given} without --cap", "add --cap, or leave the CAP options out")
    if affinity == "paper" and temperature is not None:
        raise UsageError(
            "--cap-temperature with --cap-affinity paper: the paper's affinities (Eq. 9) take no temperature",
            "pass --cap-affinity temperature or cosine, or leave --cap-temperature out",
        )
