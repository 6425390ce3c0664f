"""crowdtk synth -o DIR: a generated crowd data set with exact head points (demo and test data)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer

from crowdtk.cli.common import claim, run_command
from crowdtk.cli.options import SESSION, OutputDir, Seed, Session, Workers
from crowdtk.files import atomic_dir, atomic_path
from crowdtk.formats import SYNTH_CONFIG, Provenance, make_header
from crowdtk.synth import SynthConfig, generate_dataset

_D = SynthConfig()


@run_command("synth")
def command(
    output: OutputDir,
    train: Annotated[int, typer.Option(help="Images in DIR/train.")] = _D.train,
    test: Annotated[int, typer.Option(help="Images in DIR/test.")] = _D.test,
    width: Annotated[int, typer.Option(help="Image width in pixels.")] = _D.width,
    height: Annotated[int, typer.Option(help="Image height in pixels (head sizes scale with it).")] = _D.height,
    crowd: Annotated[
        float, typer.Option(help="Multiply the density of every group (0 gives empty scenes).")
    ] = _D.crowd,
    seed: Seed = _D.seed,
    workers: Workers = 2,
    session: Session = SESSION.without("skip_bad"),
) -> None:
    """Generate crowd scenes (perspective, groups side by side, exact head points) as DIR/{train,test}/{images,points}
    plus a manifest.jsonl per split."""
    log = session.log
    config = SynthConfig(train=train, test=test, width=width, height=height, seed=seed, crowd=crowd)
    config.validate()
    params = asdict(config)
    provenance = Provenance("synth", params, seed)
    claim(output, session.force, folder=True)
    with atomic_dir(output, session.force) as tmp:
        with log.progress(train + test, "scenes") as advance:
            splits = generate_dataset(tmp, config, provenance, workers=workers, on_progress=advance)
        summary = {
            split: {
                "images": len(entries),
                "heads": sum(e.count for e in entries),
                "min_count": min(e.count for e in entries),
                "max_count": max(e.count for e in entries),
            }
            for split, entries in splits.items()
        }
        record = {**make_header(SYNTH_CONFIG, provenance), "splits": summary}
        with atomic_path(tmp / "synth.json") as path:
            path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    for split, s in summary.items():
        log.info(f"{split}: {s['images']} images, {s['heads']} heads ({s['min_count']}–{s['max_count']} per image)")
    log.info(f"wrote {output} (manifests: {', '.join(f'{output}/{split}/manifest.jsonl' for split in splits)})")
