"""A training run's resumable state: the weights, the optimizer and where the run stands, written
atomically after every epoch beside the checkpoint (``checkpoint.state_path``).

The optimizer's state is saved as one piece: its tensors under ``optim.<param index>.<slot>``
and its parameter groups (learning rate, betas, …) in the header, so that nothing can be
pickled and the file is read like any other crowdtk safetensors file.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from crowdtk.cap import TrainNet
from crowdtk.checkpoint import load_tensors, save_tensors
from crowdtk.errors import CrowdtkError
from crowdtk.formats import training_settings
from crowdtk.train_config import TrainConfig

# Options a resumed run may change: its length (with a constant learning rate; a cosine schedule is
# laid over the whole run), and where the cached features are kept.
MAY_CHANGE_ON_RESUME = ("epochs", "feature_cache")
# What a state written before a setting existed ran with.
SETTINGS_BEFORE = {"cap_affinity": "paper", "cap_temperature": None, "loss": "mse"}


@dataclass
class Progress:
    """Where a run stands after its last finished epoch."""

    epochs_done: int = 0
    best_val_mae: float = math.inf
    history: list[dict[str, Any]] = field(default_factory=list)
    cpu_phase_split: bool | None = None  # the run's first choice (train.cpu), kept when resumed
    # Names the run in its checkpoint and state, so that the end of a run can tell its own checkpoint from
    # an older file under the same name (states written before run ids existed: None).
    run_id: str | None = field(default_factory=lambda: uuid.uuid4().hex)


def save_state(
    path: str | Path, net: TrainNet, optimizer: torch.optim.Optimizer, header: dict[str, Any], progress: Progress
) -> None:
    """``header`` is the checkpoint header of the epoch just finished."""
    optim_state = optimizer.state_dict()
    tensors = {f"model.{k}": v for k, v in net.weights().items()}
    for index, slots in optim_state["state"].items():
        for name, value in slots.items():
            tensors[f"optim.{index}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in optim_state["param_groups"]]
    save_tensors(path, tensors, {**header, "history": progress.history, "optimizer_groups": groups, "state": True})


def restore_state(
    path: Path, config: TrainConfig, labels_sha256: str, net: TrainNet, optimizer: torch.optim.Optimizer
) -> Progress:
    """Load the saved weights and optimizer into ``net`` and ``optimizer``; refuse a state made with other
    labels or other settings (beyond MAY_CHANGE_ON_RESUME), which would not continue the same run."""
    if not path.exists():
        raise CrowdtkError(f"{path}: no training state to resume", "start without --resume")
    header, tensors = load_tensors(path)
    free = MAY_CHANGE_ON_RESUME if config.lr_schedule == "constant" else ("feature_cache",)
    same = {k: v for k, v in asdict(config).items() if k not in free}
    saved = {k: v for k, v in {**SETTINGS_BEFORE, **training_settings(header)}.items() if k not in free}
    if header.get("labels_sha256") != labels_sha256 or saved != same:
        raise CrowdtkError(
            f"{path}: was made with other labels or settings", "resume with the same labels and options, or start anew"
        )
    net.load_weights({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, str(path))
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            slots.setdefault(int(index), {})[name] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in header["optimizer_groups"]]
    optimizer.load_state_dict({"state": slots, "param_groups": groups})
    return Progress(
        header["epochs_done"],
        header["best_val_mae"],
        header["history"],
        header.get("cpu_phase_split"),
        header.get("run_id"),
    )
