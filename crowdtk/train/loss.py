"""The density loss that training minimises (Eq. 2), and the registry ``train --loss`` chooses from.

A loss is the thing a researcher most often changes, so it has one home and one interface: it takes
the counter's output (N×1×h×w, carrying the density scale), the target density in heads per output
cell (N×h×w), the mask of supervised cells (N×h×w, 1 on cells lying wholly inside a labeled region,
0 elsewhere: unlabeled cells get no target) and the density scale, and returns the scalar to minimise.
Training, the benchmark scripts and the tests all call it through :func:`density_loss`.

To add one, decorate a function of that signature with ``@register_loss(name, help)`` in this
module; ``train --loss NAME`` then runs it, its help text shows in ``train --help``, and the name is
recorded in the checkpoint's training settings. The module imports no torch: the command line reads
the names without paying for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from crowdtk.errors import UsageError

if TYPE_CHECKING:
    import torch

LossFunction = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor", float], "torch.Tensor"]


@dataclass(frozen=True)
class DensityLoss:
    name: str
    help: str  # one line, shown by train --help
    compute: LossFunction

    def __call__(
        self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, density_scale: float
    ) -> torch.Tensor:
        return self.compute(pred, target, mask, density_scale)


LOSSES: dict[str, DensityLoss] = {}
DEFAULT_LOSS = "mse"


def register_loss(name: str, help: str) -> Callable[[LossFunction], LossFunction]:
    """Register the decorated function as the loss ``name`` (a name registered twice fails at import)."""

    def add(compute: LossFunction) -> LossFunction:
        if name in LOSSES:
            raise ValueError(f"the loss {name!r} is registered twice")
        LOSSES[name] = DensityLoss(name, help, compute)
        return compute

    return add


def density_loss(name: str = DEFAULT_LOSS) -> DensityLoss:
    if name not in LOSSES:
        raise UsageError(f"--loss must be one of {', '.join(LOSSES)}, got {name!r}", f"pass e.g. --loss {DEFAULT_LOSS}")
    return LOSSES[name]


@register_loss(
    "mse",
    "Eq. 2: the squared error on the labeled cells, summed over the batch's labeled cells and divided by its images.",
)
def labeled_cells_squared_error(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, density_scale: float
) -> torch.Tensor:
    """Every labeled cell weighs the same (Eq. 2 is a sum): a per-image mean over labeled cells made an image with one
    supervised column weigh as much as one with six. Targets are scaled by ``density_scale`` so that a stride-8 cell's
    value is O(1..10), where the optimiser's default step sizes work."""
    err = (pred[:, 0].float() - target * density_scale) ** 2 * mask
    return err.sum() / pred.shape[0]
