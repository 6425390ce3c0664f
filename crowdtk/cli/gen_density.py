"""crowdtk gen-density MANIFEST -o DIR: ground-truth density maps (Eq. 1)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer

from crowdtk.cli.common import claim, run_command
from crowdtk.cli.options import SESSION, Manifest, OutputDir, Session, Workers
from crowdtk.density import DensityConfig, generate_densities
from crowdtk.errors import CrowdtkError
from crowdtk.files import atomic_dir
from crowdtk.formats import Provenance, density_index_header, read_manifest, write_jsonl

_D = DensityConfig()


@run_command("gen-density")
def command(
    manifest: Manifest,
    output: OutputDir,
    sigma: Annotated[float, typer.Option(help="Fixed Gaussian bandwidth in pixels.")] = _D.sigma,
    adaptive: Annotated[
        bool,
        typer.Option(
            "--adaptive", help="Geometry-adaptive σ = β × mean distance to the k nearest heads. [default: off]"
        ),
    ] = _D.adaptive,
    beta: Annotated[float, typer.Option(help="β of the adaptive kernel.")] = _D.beta,
    k_nearest: Annotated[int, typer.Option(help="k of the adaptive kernel.")] = _D.k_nearest,
    stride: Annotated[
        int, typer.Option(help="Sum-pool the map to this output stride (1 keeps full resolution).")
    ] = _D.stride,
    workers: Workers = 1,
    session: Session = SESSION,
) -> None:
    """Write one density map (.npz, float32) per image plus an index.jsonl; each map sums to its head count."""
    log = session.log
    config = DensityConfig(sigma=sigma, adaptive=adaptive, beta=beta, k_nearest=k_nearest, stride=stride)
    config.validate()
    claim(output, session.force, folder=True, inputs=(manifest,))
    _, entries = read_manifest(manifest)
    if not entries:
        raise CrowdtkError(
            f"{'<stdin>' if manifest == '-' else manifest}: no images", "index a data set with images first"
        )
    provenance = Provenance("gen-density", {"manifest": manifest, "skip_bad": session.skip_bad, **asdict(config)})
    with atomic_dir(output, session.force) as tmp:
        records, skipped = session.skipping(
            len(entries), "density maps", generate_densities, entries, tmp, config, provenance, workers=workers
        )
        if not records:
            raise CrowdtkError(f"{manifest}: every image was bad", "see the list of skipped images")
        write_jsonl(tmp / "index.jsonl", density_index_header(provenance, skipped), (r.to_record() for r in records))
    worst = max((abs(r.sum - r.count) for r in records), default=0.0)
    log.info(f"wrote {len(records)} density maps to {output} (stride {stride}); largest |sum - count| = {worst:.2e}")
