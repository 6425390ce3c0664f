"""crowdtk export-model CKPT --onnx model.onnx: a counter as an ONNX model, for ONNX Runtime and other runtimes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crowdtk.cli.common import claim, params_of, run_command
from crowdtk.cli.options import SESSION, CounterCheckpoint, Session
from crowdtk.files import check_inputs_exist


@run_command("export-model")
def command(
    checkpoint: CounterCheckpoint,
    onnx: Annotated[Path, typer.Option("--onnx", "-o", help="ONNX model to write.", show_default=False)],
    session: Session = SESSION.without("skip_bad"),
) -> None:
    """Write the counter as an ONNX model (CAP left out, batch norms folded; batch, height and width dynamic) with
    what a runtime needs to prepare images in its metadata: input mean and std, output stride, input scale and
    density scale. Run it with 'crowdtk count MODEL.onnx … --backend onnxruntime' or any ONNX runtime. Needs the
    onnx extra (pip install 'crowdtk[onnx]')."""
    check_inputs_exist(checkpoint)
    from crowdtk.formats import Provenance
    from crowdtk.onnx_export import export_onnx, require
    from crowdtk.predict import load_counter

    log = session.log
    claim(onnx, session.force, inputs=(checkpoint,))
    # Before loading torch's exporter and the checkpoint: a missing package is the first thing to say.
    require("onnx", "exporting to ONNX")
    require("onnxscript", "exporting to ONNX (torch's exporter)")
    loaded = load_counter(checkpoint)
    if loaded.unfinished:
        log.warn(loaded.unfinished)
    log.info(f"exporting {checkpoint} ({loaded.counter.name}); torch's exporter takes a minute or two")
    header = export_onnx(checkpoint, onnx, Provenance("export-model", params_of(checkpoint=checkpoint)), loaded)
    if header["removed_tensors"]:
        log.info(f"left out CAP ({len(header['removed_tensors'])} tensors): it is not needed to predict")
    log.info(f"wrote {onnx}")
