"""crowdtk vectors CKPT MANIFEST -o vectors.npz: multi-level density vectors of every strip (Eq. 3-4)."""

from __future__ import annotations

import hashlib
import io
import sys
from pathlib import Path
from typing import Annotated

import typer

from crowdtk.cli.common import claim, run_command
from crowdtk.cli.options import PREDICTION, SESSION, Session
from crowdtk.errors import CrowdtkError
from crowdtk.files import STDIO, check_inputs_exist, file_digest
from crowdtk.formats import Provenance, read_manifest, save_vectors, vectors_header
from crowdtk.geometry import check_scale
from crowdtk.predict_config import PredictConfig, VectorsConfig
from crowdtk.selection import excluded_ids


@run_command("vectors")
def command(
    checkpoint: Annotated[Path, typer.Argument(help="The warm-up counter's checkpoint.", show_default=False)],
    manifest: Annotated[
        Path,
        typer.Argument(
            help="Manifest of the pool; '-' reads stdin. Its digest is recorded (select checks it).", show_default=False
        ),
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Vectors file to write (.npz).", show_default=False)],
    exclude: Annotated[
        Path | None,
        typer.Option(
            help="Regions or labels file whose images are skipped (already labeled); it must be of this pool (same "
            "ids and image digests). [default: none]"
        ),
    ] = None,
    levels: Annotated[int, typer.Option(help="Levels L of the multi-level density vector.")] = VectorsConfig.levels,
    strip_frac: Annotated[
        float, typer.Option(help="Strip width as a fraction of the image width.")
    ] = VectorsConfig.strip_frac,
    scale: Annotated[
        float | None,
        typer.Option(
            help="The --scale the final counter will be trained at: strip edges lie on whole output cells of the "
            "image resized by it (select checks that it matches). [default: the checkpoint's scale]",
            show_default=False,
        ),
    ] = None,
    predict: PredictConfig = PREDICTION,
    session: Session = SESSION,
) -> None:
    """Predict each image with the warm-up counter and describe each strip by its multi-level density vector."""
    check_inputs_exist(checkpoint, manifest, exclude)
    from crowdtk.predict import Predictor, load_counter
    from crowdtk.vectors import compute_vectors

    log = session.log
    claim(output, session.force, inputs=(checkpoint, manifest, exclude, predict.feature_cache))
    manifest_text = sys.stdin.read() if str(manifest) == STDIO else None  # read once: for the records and the digest
    _, entries = read_manifest(manifest, stdin=io.StringIO(manifest_text) if manifest_text is not None else None)
    manifest_sha256 = (
        file_digest(manifest) if manifest_text is None else hashlib.sha256(manifest_text.encode("utf-8")).hexdigest()
    )
    if not entries:
        raise CrowdtkError(f"{manifest}: no images", "index a data set with images first")
    if exclude is not None:
        skip = excluded_ids(exclude, entries, str(manifest))
        entries = [e for e in entries if e.id not in skip]
        if not entries:
            raise CrowdtkError(
                f"{exclude}: excludes every image of {manifest}", "nothing is left to compute vectors for"
            )
    predictor = Predictor(
        load_counter(checkpoint),
        device=predict.device,
        max_side=predict.max_side,
        feature_cache=predict.feature_cache,
        flip_average=predict.flip_average,
    )
    if scale is None:
        scale = predictor.loaded.scale
    check_scale(scale)
    data, skipped = session.skipping(
        len(entries),
        "strip vectors",
        compute_vectors,
        predictor,
        entries,
        levels=levels,
        strip_frac=strip_frac,
        scale=scale,
    )
    params = {
        "checkpoint": checkpoint,
        "manifest": manifest,
        "exclude": exclude,
        "levels": levels,
        "strip_frac": strip_frac,
        "scale": scale,
        "skip_bad": session.skip_bad,
    }
    header = vectors_header(
        Provenance("vectors", params),
        levels=levels,
        strip_frac=strip_frac,
        scale=scale,
        manifest_sha256=manifest_sha256,
        checkpoint_sha256=file_digest(checkpoint),
        model=predictor.loaded.header.get("model", {}).get("name"),
        skipped=skipped,
    )
    save_vectors(output, header, data)
    log.info(
        f"wrote {output}: {len(data.vectors)} strips of {len(data.ids)} images, {data.vectors.shape[1]} numbers each"
    )
