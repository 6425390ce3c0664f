"""crowdtk import REGIONS (--from FORMAT PATH | --oracle MANIFEST) -o labels.jsonl: labels back from labelers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from crowdtk.cli.common import Force, Log, OutputFile, Quiet, Verbose, params_of, run_command
from crowdtk.cli.export import Regions, Tool
from crowdtk.errors import CrowdtkError
from crowdtk.formats import LABELS, STDIO, Provenance, check_output_free, file_digest, make_header, read_labels, read_manifest, read_regions, write_jsonl
from crowdtk.labeling import import_labels, merge_labels, oracle_labels


@run_command("import")
def command(
    regions: Regions,
    path: Annotated[Optional[Path], typer.Argument(help="What the labeling tool returned: the crops export folder, a Label Studio JSON export, a CVAT annotations.xml, or a folder of LabelMe JSON files. [default: none, with --oracle]", show_default=False)] = None,
    source: Annotated[Optional[Tool], typer.Option("--from", help="Format of PATH: crops, labelstudio, cvat or labelme. [default: none]", show_default=False)] = None,
    oracle: Annotated[Optional[str], typer.Option(help="Simulated labeler: fill the regions with the ground-truth points of this manifest. [default: none]")] = None,
    output: OutputFile = "-",
    merge: Annotated[Optional[list[Path]], typer.Option(metavar="FILE", help="Labels file of an earlier round to combine with these (repeatable), e.g. the warm-up labels. [default: none]")] = None,
    allow_missing: Annotated[bool, typer.Option("--allow-missing", help="Leave out regions nobody labeled instead of stopping (they are never taken as empty). [default: off]")] = False,
    force: Force = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Read labeled regions back (or simulate the labeler) and write a labels file: the regions and the head points inside them.

    Points outside their regions are dropped and counted; an image (crops: a region) that came back
    without an annotation stops the import unless --allow-missing. --merge adds earlier rounds, so that
    warm-up and MDC labels go to 'train' as one file.
    """
    log = Log("import", quiet, verbose)
    if (source is None) == (oracle is None):
        raise CrowdtkError("give either --from FORMAT PATH (labels from a tool) or --oracle MANIFEST (simulated labeler)", "see crowdtk import --help")
    if source is not None and path is None:
        raise CrowdtkError(f"--from {source.value} needs PATH, what the labeling tool exported", "add it after REGIONS")
    if oracle is not None and path is not None:
        raise CrowdtkError(f"PATH {path} is given with --oracle", "drop PATH, or use --from FORMAT PATH instead of --oracle")
    check_output_free(output, force)
    regions_name = "<stdin>" if regions == STDIO else regions
    _, entries = read_regions(regions)
    earlier = [(str(p), read_labels(p)[1]) for p in merge or []]
    if oracle is not None:
        _, manifest = read_manifest(oracle)
        with log.progress(len(entries), "oracle labels") as advance:
            result = oracle_labels(entries, manifest, manifest_name=oracle, regions_name=regions_name, on_progress=advance)
    else:
        assert source is not None and path is not None
        result = import_labels(entries, source.value, path, allow_missing=allow_missing, regions_name=regions_name)
    if result.missing:
        log.warn(f"left out {len(result.missing)} unlabeled {'region' if source == Tool.crops else 'image'}(s): "
                 + ", ".join(result.missing[:5]) + (", …" if len(result.missing) > 5 else ""))
    if result.dropped:
        log.warn(f"dropped {sum(result.dropped.values())} point(s) outside their regions in {len(result.dropped)} image(s): "
                 + ", ".join(f"{k} ({v})" for k, v in list(result.dropped.items())[:5]))
    if result.unknown:
        log.warn(f"ignored annotations of {len(result.unknown)} image(s) not in {regions_name}: " + ", ".join(result.unknown[:5]))
    if result.ignored:
        log.warn(f"ignored {result.ignored} annotation(s) that are not 'head' points")
    labels = merge_labels(result.entries, earlier) if earlier else result.entries
    params = params_of(regions=regions, path=path, source=source.value if source else None, oracle=oracle,
                       merge=[str(p) for p in merge or []], allow_missing=allow_missing)
    header = make_header(LABELS, Provenance("import", params))
    header["regions_sha256"] = None if regions == STDIO else file_digest(regions)
    write_jsonl(output, header, (e.to_record() for e in labels))
    area = sum(e.labeled_area for e in result.entries)
    if oracle is not None:
        pool = sum(m.width * m.height for m in manifest)
        total = sum(e.labeled_area for e in labels)
        log.info(f"oracle labeled {result.heads} heads in {sum(len(e.regions) for e in result.entries)} regions of {len(result.entries)} images: "
                 f"{100 * area / pool:.2f}% of the pool's area"
                 + (f" ({100 * total / pool:.2f}% with the merged labels, {sum(len(e.points) for e in labels)} heads)" if earlier else ""))
    else:
        image_area = sum(e.width * e.height for e in result.entries)
        log.info(f"imported {result.heads} heads in {sum(len(e.regions) for e in result.entries)} regions of {len(result.entries)} images "
                 f"({100 * area / max(image_area, 1):.2f}% of these images' area)"
                 + (f"; {len(labels)} images after merging" if earlier else ""))
