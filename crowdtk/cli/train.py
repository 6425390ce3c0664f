"""crowdtk train LABELS [--cap [--cap-affinity FORM] [--cap-temperature T]] [--init CKPT] -o model.safetensors
(Algorithm 1, line 7)."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeAlias

import typer

from crowdtk.cli.common import claim, run_command
from crowdtk.cli.groups import Deferred
from crowdtk.cli.options import (
    SESSION,
    TRAIN_DEFAULTS,
    TRAINING,
    Checkpoint,
    Labels,
    Session,
    Training,
    choices,
    model_help,
    registered,
)
from crowdtk.errors import CrowdtkError
from crowdtk.files import check_inputs_exist, check_output_free
from crowdtk.formats import Provenance
from crowdtk.model_records import MODELS
from crowdtk.train_config import CAP_AFFINITIES, CAP_TEMPERATURES, check_cap_options

if TYPE_CHECKING:  # see crowdtk.cli.options.choices
    CapAffinity: TypeAlias = Any
else:
    CapAffinity = choices("CapAffinity", CAP_AFFINITIES)
_TEMPERATURE_DEFAULTS = (
    f"{next(iter(CAP_TEMPERATURES.values())):g} for both forms"
    if len(set(CAP_TEMPERATURES.values())) == 1
    else ", ".join(f"{t:g} for {form}" for form, t in CAP_TEMPERATURES.items())
)


def run_training(
    labels: Path,
    output: Path,
    model: str | None,
    training: Training,
    session: Session,
    *,
    cap: bool = False,
    cap_affinity: str = "paper",
    cap_temperature: float | None = None,
    init: Path | None = None,
) -> None:
    """What train and warmup (the session's command) do; ``model`` None: the default one, or that of ``init``."""
    check_cap_options(cap, cap_affinity, cap_temperature)  # a usage error, before any file is looked at
    check_inputs_exist(labels, init)
    from crowdtk.checkpoint import init_model, read_header, state_path
    from crowdtk.runtime import Processes, stray_launch_note
    from crowdtk.train import EpochReport, train

    log, command = session.log, session.log.command
    procs = Processes.from_env()  # a malformed torchrun environment is refused before any work (train reads it again)
    if (note := stray_launch_note()) is not None:
        log.warn(note)
    config = replace(
        training.config,
        cap=cap,
        cap_affinity=cap_affinity,
        cap_temperature=cap_temperature,
        model=init_model(init, model) if init is not None else model or TRAIN_DEFAULTS.model,
    )
    # The form's default temperature written out, so that the recorded settings say what ran.
    config = replace(config, cap_temperature=config.cap_tau())
    # One run at a time writes this checkpoint and its training state (under torchrun, rank 0 writes and holds it);
    # the existing-output rules follow.
    if procs.writer:
        claim(output, session.force or training.resume, lock_only=True, inputs=(labels, init, config.feature_cache))
    if not training.resume and procs.writer:
        # The resumable state first: "pass --force" alone would throw an interrupted run's epochs away.
        if state_path(output).exists() and not session.force:
            raise CrowdtkError(
                f"{state_path(output)}: a training state exists (of an unfinished or an earlier run)",
                "continue it with --resume, or pass --force to start anew",
            )
        check_output_free(output, session.force)
    provenance = Provenance(command, {"labels": labels, "init": init, **asdict(config)}, seed=config.seed)
    with log.progress(config.epochs, f"{command} epochs") as advance:

        def on_epoch(report: EpochReport) -> None:
            advance(1)
            mark = " *" if report.improved else ""
            val = "-" if report.val_mae is None else f"{report.val_mae:.2f}"
            log.info(f"epoch {report.epoch}/{report.epochs}: loss {report.train_loss:.4f}, val MAE {val}{mark}")

        try:
            result = train(
                labels,
                output,
                config,
                provenance,
                init=str(init) if init else None,
                resume=training.resume,
                device=training.device,
                on_epoch=on_epoch,
            )
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: every finished epoch is saved
            done = read_header(state_path(output)).get("epochs_done", 0) if state_path(output).exists() else 0
            raise type(exc)(
                f"after epoch {done} of {config.epochs}; continue with --resume"
                if done
                else "before the first epoch finished; nothing was saved"
            ) from None
    sup = result.supervision
    if sup["heads_labeled"] and sup["heads_supervised"] < 0.995 * sup["heads_labeled"]:
        log.warn(
            f"only {sup['heads_supervised']} of the {sup['heads_labeled']} labeled heads lie in supervised cells: the "
            "regions' edges are not on the output-cell grid of "
            f"--scale {config.scale:g} (select and vectors take --scale)"
        )
    kept = (
        f"best validation MAE {result.best_val_mae:.2f}"
        if config.keep == "best"
        else f"the last epoch (validation MAE {result.history[-1]['val_mae']:.2f})"
    )
    log.info(f"wrote {output}: {kept} (validated on {result.val_on} images)")


@run_command("train")
def command(
    labels: Labels,
    output: Checkpoint,
    cap: Annotated[bool, typer.Option("--cap", help="Train with Crowd Affinity Propagation. [default: off]")] = False,
    cap_affinity: Annotated[
        CapAffinity,
        typer.Option(
            "--cap-affinity",
            help="With --cap: CAP's affinities. paper: Eq. 9 as written (dot products of softmax-normalised features; "
            "no affinity in a row exceeds e times another). Extensions, not in the paper: temperature: those dot "
            "products divided by --cap-temperature; cosine: cosine "
            "similarity of the raw features divided by --cap-temperature.",
        ),
    ] = "paper",
    cap_temperature: Annotated[
        float | None,
        typer.Option(
            "--cap-temperature",
            help="With --cap-affinity temperature or cosine: the temperature τ of the affinities (smaller: sharper). "
            f"[default: {_TEMPERATURE_DEFAULTS}]",
            show_default=False,
        ),
    ] = None,
    init: Annotated[
        Path | None,
        typer.Option(
            help="Start from this checkpoint's weights (e.g. the warm-up counter); "
            "it must be of --model when that is given. [default: none]"
        ),
    ] = None,
    model: str | None = Deferred(
        lambda: Annotated[
            registered("ModelName", MODELS) | None,
            typer.Option(
                help=f"{model_help()} [default: {TRAIN_DEFAULTS.model}, or the model of --init]", show_default=False
            ),
        ],
        None,
    ),
    training: Training = TRAINING,
    session: Session = SESSION.without("skip_bad"),
) -> None:
    """Train a counter on labeled regions; with --cap the unlabeled regions learn through CAP."""
    run_training(
        labels,
        output,
        model,
        training,
        session,
        cap=cap,
        cap_affinity=cap_affinity.value,
        cap_temperature=cap_temperature,
        init=init,
    )
