"""crowdtk select MANIFEST (--budget M | --budget-heads N --vectors V | --image-list FILE) --strategy S
-o regions.jsonl: the regions to label (paper 3.4)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeAlias

import typer

from crowdtk.cli.common import claim, params_of, run_command
from crowdtk.cli.groups import Deferred
from crowdtk.cli.options import (
    SESSION,
    BudgetHeads,
    Manifest,
    OutputFile,
    Seed,
    Session,
    Workers,
    choices,
    registered,
)
from crowdtk.errors import UsageError
from crowdtk.formats import Provenance, read_manifest, regions_header, write_jsonl
from crowdtk.registry import listing, names
from crowdtk.selection import ENGINES, SHAPES, STRATEGIES, SelectConfig, select_files
from crowdtk.selection.config import check_image_list, image_list_strategies

_D = SelectConfig()
if TYPE_CHECKING:  # see crowdtk.cli.options.choices
    Shape: TypeAlias = Any
    Engine: TypeAlias = Any
else:
    Shape, Engine = choices("Shape", SHAPES), choices("Engine", ENGINES)


# The options that name strategies, made from their records when the command is built (crowdtk.cli.groups.Deferred).
def _strategy() -> Any:
    return Annotated[registered("Strategy", STRATEGIES), typer.Option(help=f"{listing(STRATEGIES)}.")]


def _vectors() -> Any:
    need = names([s for s in STRATEGIES.values() if s.needs_vectors])
    return Annotated[
        Path | None,
        typer.Option(
            help=f"Strip vectors from 'crowdtk vectors' over this manifest (needed by {need}). [default: none]"
        ),
    ]


def _image_list() -> Any:
    takers = " or ".join(image_list_strategies())
    return Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help=f"Label exactly the whole images this list names (strategy {takers}), as semi-supervised counting "
            "papers publish their splits (label_list/shb-5.txt): one a line, by file name, path or manifest id; "
            "blank lines and # comments are skipped, an image named twice is labeled once (a warning). The list "
            "decides the images: --budget is not used, and select reports the share of the pool's area they are. "
            "[default: none]",
        ),
    ]


def _warmup_frac() -> Any:
    pickers = " or ".join(s.name for s in STRATEGIES.values() if s.warmup)
    return Annotated[
        float,
        typer.Option(
            help=f"Warm-up round (strategy {pickers}): this share of the images gets random strips at the per-image "
            "budget; the paper uses 0.2. 0 means no warm-up round."
        ),
    ]


@run_command("select")
def command(
    manifest: Manifest,
    budget: Annotated[
        float | None,
        typer.Option(
            help="Labeling budget: the fraction of the pool's area to label, in (0, 1]; with --exclude, of all rounds "
            f"together. [default: {_D.budget:g}]",
            show_default=False,
        ),
    ] = None,
    budget_heads: BudgetHeads = None,
    strategy: str = Deferred(_strategy, _D.strategy),
    output: OutputFile = "-",
    vectors: Path | None = Deferred(_vectors, None),
    image_list: Path | None = Deferred(_image_list, None),
    warmup_frac: float = Deferred(_warmup_frac, _D.warmup_frac),
    exclude: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="FILE",
            help="Regions or labels file of an earlier round (repeatable): its images are left out and its area "
            "counts against the budget. [default: none]",
        ),
    ] = None,
    strip_frac: Annotated[
        float, typer.Option(help="Strip width as a fraction of the image width (the area of one cell).")
    ] = _D.strip_frac,
    shape: Annotated[
        Shape,
        typer.Option(
            help="Cells: strip (vertical, the paper's), band (horizontal) or block (square), for the Table 1 ablation."
        ),
    ] = Shape(_D.shape),
    scale: Annotated[
        float | None,
        typer.Option(
            help="The --scale the counter will be trained at: cell edges lie on whole output cells (8 px) of the "
            "image resized by it, so every labeled head is supervised. [default: the vectors' scale, else 1]",
            show_default=False,
        ),
    ] = None,
    n_init: Annotated[
        int, typer.Option(help="MDC: EM starts per image (k-means++ seeds); the fit of the highest likelihood is kept.")
    ] = _D.n_init,
    engine: Annotated[
        Engine,
        typer.Option(
            help="MDC's EM: numpy (batched over images) or sklearn (one "
            "GaussianMixture per image; the same result, slower)."
        ),
    ] = Engine(_D.engine),
    seed: Seed = _D.seed,
    workers: Workers = _D.workers,
    session: Session = SESSION.without("skip_bad"),
) -> None:
    """Choose the regions to label under a budget and write them as a regions file (JSON Lines).

    The paper's loop: 'select --strategy random --warmup-frac 0.2' picks the warm-up round; after
    'warmup' and 'vectors', 'select --strategy mdc --vectors V --exclude WARMUP_REGIONS' spends the rest,
    so that both rounds together label --budget of the pool's area. '--budget-heads N --vectors V'
    spends clicks instead of area: the strategy picks as before, until the heads the vectors predict in
    this file's regions reach N (--exclude leaves earlier rounds' images out without subtracting their heads).
    '--strategy none-or-all --image-list FILE' labels the whole images of a published split instead of a draw.
    """
    if budget_heads is not None and budget is not None:
        raise UsageError(
            "--budget and --budget-heads together",
            "give one budget: a share of the area (--budget) or heads (--budget-heads)",
        )
    if budget_heads is not None and vectors is None:
        raise UsageError(
            "--budget-heads needs --vectors", "the heads are the vectors' predicted counts: pass them with --vectors"
        )
    if image_list is not None:
        check_image_list(strategy)  # a usage error, before any file is read
        if budget_heads is not None:
            raise UsageError(
                "--budget-heads with --image-list", "the list decides the images: leave --budget-heads out"
            )
    claim(output, session.force, inputs=(manifest, vectors, image_list, *(exclude or [])))
    _, entries = read_manifest(manifest)
    config = SelectConfig(
        budget=_D.budget if budget is None else budget,
        budget_heads=budget_heads,
        strategy=strategy,
        strip_frac=strip_frac,
        shape=shape.value,
        warmup_frac=warmup_frac,
        seed=seed,
        workers=workers,
        engine=engine.value,
        n_init=n_init,
    )
    with session.log.progress(len(entries) if STRATEGIES[config.strategy].progress else None, "selecting") as advance:
        run = select_files(
            entries,
            manifest,
            config,
            scale=scale,
            vectors=vectors,
            exclude=exclude or [],
            image_list=image_list,
            on_progress=advance,
        )
    for note in run.selection.notes:
        session.log.warn(note)
    provenance = Provenance(
        "select",
        params_of(manifest=manifest, vectors=vectors, exclude=[str(p) for p in exclude or []], **run.params()),
        seed,
    )
    write_jsonl(
        output, regions_header(provenance, **run.header_fields()), (e.to_record() for e in run.selection.entries)
    )
    session.log.info(run.summary(excluded=bool(exclude)))
    if image_list is not None and budget is not None:
        session.log.info(
            f"--budget {budget:g} was not used: the list decides the images "
            f"({100 * run.selection.area_fraction:.2f}% of the pool's area against {100 * budget:g}%)"
        )
