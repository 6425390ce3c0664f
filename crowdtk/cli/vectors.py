"""crowdtk vectors CKPT MANIFEST -o vectors.npz: multi-level density vectors of every strip (Eq. 3-4)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from crowdtk.cli.common import Device, Force, Log, Quiet, Verbose, run_command
from crowdtk.cli.eval import MaxSide
from crowdtk.errors import CrowdtkError
from crowdtk.formats import VECTORS, Provenance, check_output_free, file_digest, make_header, read_manifest, save_vectors


def excluded_ids(path: Path) -> set[str]:
    """Image ids of a regions or labels file (the images already labeled)."""
    try:
        first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    except (OSError, IndexError, json.JSONDecodeError):
        raise CrowdtkError(f"{path}: not a crowdtk regions or labels file", "pass the regions.jsonl or labels.jsonl of the earlier round") from None
    from crowdtk.formats import read_labels, read_regions

    reader = read_labels if first.get("format") == "labels" else read_regions
    return {entry.id for entry in reader(path)[1]}


@run_command("vectors")
def command(
    checkpoint: Annotated[Path, typer.Argument(help="The warm-up counter's checkpoint.", show_default=False)],
    manifest: Annotated[Path, typer.Argument(help="Manifest of the pool (a file: its digest is recorded).", show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="Vectors file to write (.npz).", show_default=False)],
    exclude: Annotated[Optional[Path], typer.Option(help="Regions or labels file whose images are skipped (already labeled). [default: none]")] = None,
    levels: Annotated[int, typer.Option(help="Levels L of the multi-level density vector.")] = 4,
    strip_frac: Annotated[float, typer.Option(help="Strip width as a fraction of the image width.")] = 0.1,
    max_side: MaxSide = 2048,
    device: Device = "auto",
    force: Force = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Predict each image with the warm-up counter and describe each strip by its multi-level density vector."""
    from crowdtk.predict import Predictor, load_counter
    from crowdtk.vectors import compute_vectors

    log = Log("vectors", quiet, verbose)
    check_output_free(output, force)
    _, entries = read_manifest(manifest)
    if exclude is not None:
        skip = excluded_ids(exclude)
        unknown = skip - {e.id for e in entries}
        if unknown:
            raise CrowdtkError(f"{exclude}: names {len(unknown)} image(s) absent from {manifest}, e.g. {sorted(unknown)[0]}", "pass the files of the same pool")
        entries = [e for e in entries if e.id not in skip]
    predictor = Predictor(load_counter(checkpoint), device=device, max_side=max_side)
    with log.progress(len(entries), "strip vectors") as advance:
        data = compute_vectors(predictor, entries, levels=levels, strip_frac=strip_frac, on_progress=advance)
    params = {"checkpoint": checkpoint, "manifest": manifest, "exclude": exclude, "levels": levels, "strip_frac": strip_frac}
    header = make_header(VECTORS, Provenance("vectors", params))
    header.update(levels=levels, strip_frac=strip_frac, stride=8, manifest_sha256=file_digest(manifest),
                  checkpoint_sha256=file_digest(checkpoint), model=predictor.loaded.header.get("model", {}).get("name"))
    save_vectors(output, header, data)
    log.info(f"wrote {output}: {len(data.vectors)} strips of {len(data.ids)} images, {data.vectors.shape[1]} numbers each")
