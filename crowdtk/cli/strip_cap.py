"""crowdtk strip-cap CKPT -o model.infer.safetensors (Algorithm 1, line 8)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crowdtk.cli.common import claim, run_command
from crowdtk.cli.options import SESSION, Session
from crowdtk.files import check_inputs_exist


@run_command("strip-cap")
def command(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint trained with --cap.", show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="Inference checkpoint to write.", show_default=False)],
    session: Session = SESSION.without("skip_bad"),
) -> None:
    """Remove CAP and its parameters; the result predicts exactly as before and is marked inference-only."""
    check_inputs_exist(checkpoint)
    from crowdtk.checkpoint import strip_cap
    from crowdtk.predict import load_counter

    log = session.log
    claim(output, session.force, inputs=(checkpoint,))
    load_counter(checkpoint)  # refuse what eval refuses: a header naming no model, weights that do not fit it
    header = strip_cap(checkpoint, output)
    if not header["removed_tensors"]:
        log.warn(
            f"{checkpoint}: has no CAP module to remove (trained without "
            f"--cap, or stripped already); {output} is the same counter"
        )
    log.info(f"wrote {output}: removed {len(header['removed_tensors'])} CAP tensor(s)")
