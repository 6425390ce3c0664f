"""crowdtk warmup LABELS -o warmup.safetensors (Algorithm 1, lines 1-2)."""

from __future__ import annotations

from crowdtk.cli.common import run_command
from crowdtk.cli.options import SESSION, TRAIN_DEFAULTS, TRAINING, Checkpoint, Labels, Session, Training, model_option
from crowdtk.cli.train import run_training


@run_command("warmup")
def command(
    labels: Labels,
    output: Checkpoint,
    model: str = model_option(TRAIN_DEFAULTS.model),
    training: Training = TRAINING,
    session: Session = SESSION.without("skip_bad"),
) -> None:
    """Train the warm-up counter on the warm-up labels (no CAP); 'vectors' uses it to rank the rest."""
    run_training(labels, output, model, training, session)
