"""crowdtk count CKPT IMAGE|DIR|VIDEO…: counts for new images and video frames (JSON Lines, or a registered
--format such as the NWPU-Crowd submission), with head points and overlays."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeAlias

import cv2
import numpy as np
import typer

from crowdtk.cli.common import claim, run_command
from crowdtk.cli.groups import Deferred
from crowdtk.cli.options import PREDICTION, SESSION, Session, choices, registered
from crowdtk.count_formats import COUNT_FORMATS
from crowdtk.errors import CrowdtkError, UsageError
from crowdtk.files import atomic_dir, atomic_path, check_inputs_exist
from crowdtk.predict_config import BACKENDS, PredictConfig
from crowdtk.registry import listing


def _format() -> Any:
    # Made from the formats' records when the command is built (crowdtk.cli.groups.Deferred).
    return Annotated[
        registered("CountFormat", COUNT_FORMATS),
        typer.Option("--format", help=f"What is printed: {listing(COUNT_FORMATS)}."),
    ]


if TYPE_CHECKING:  # see crowdtk.cli.options.choices
    BackendName: TypeAlias = Any
else:
    BackendName = choices("BackendName", BACKENDS)


def _rounded(heads: np.ndarray | None) -> list[list[float]] | None:
    """Points for the JSON line: pixels to two decimals, as in the points files."""
    return None if heads is None else [[round(float(x), 2), round(float(y), 2)] for x, y in heads]


@run_command("count")
def command(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            help="Counter checkpoint (.safetensors); with --backend onnxruntime, an ONNX model from "
            "'crowdtk export-model'.",
            show_default=False,
        ),
    ],
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Image files, folders of images (not their subfolders), or video files.", show_default=False
        ),
    ],
    overlay_dir: Annotated[
        Path | None,
        typer.Option(
            "--overlay",
            help="Write a PNG heat-map overlay per image/frame into this "
            "folder (must not exist unless --force). [default: none]",
        ),
    ] = None,
    output_format: str = Deferred(_format, "jsonl"),
    points: Annotated[
        bool,
        typer.Option(
            "--points",
            help='Add each image\'s head points ("points": [[x, y], ...], image pixels) to its JSON line: as many '
            "as its rounded count, at the peaks of the predicted density (as export --prelabel suggests them). "
            "[default: off]",
        ),
    ] = False,
    points_dir: Annotated[
        Path | None,
        typer.Option(
            "--points-dir",
            help="Write each image's head points (as --points) into this folder, one text file per image named after "
            "its file stem, 'x y' a line (must not exist unless --force). [default: none]",
        ),
    ] = None,
    backend: Annotated[
        BackendName,
        typer.Option(
            "--backend",
            help="What runs the counter: torch (a checkpoint), or onnxruntime (an ONNX model from 'crowdtk "
            "export-model', on the CPU, with the same preprocessing; pip install 'crowdtk[onnx]').",
        ),
    ] = "torch",
    predict: PredictConfig = PREDICTION.without("feature_cache"),
    session: Session = SESSION,
) -> None:
    """Print one JSON line per image ({"image", "count"}) or per video frame ({"video", "frame", "count"}),
    in input order (a folder's images by name); --format nwpu prints the NWPU-Crowd submission instead.

    A prediction that is NaN or infinite is printed as "count": null (and "points": null), with a
    warning, and gets no points file; the NWPU format refuses it. A bad image or video stops the
    command unless --skip-bad, which leaves it out with a warning.
    """
    check_inputs_exist(checkpoint)
    from crowdtk.counting import (
        VIDEO_SUFFIXES,
        NoFrames,
        count_inputs,
        expand_inputs,
        overlay,
        points_text,
        repeated_stems,
    )
    from crowdtk.onnx_export import load_for_backend
    from crowdtk.predict import Predictor

    log = session.log
    fmt = COUNT_FORMATS[output_format]
    if points and not fmt.points:
        raise UsageError(f"--points with --format {fmt.name}", "write the points with --points-dir instead")
    claim(overlay_dir, session.force, folder=True, inputs=(checkpoint, *inputs))
    claim(points_dir, session.force, folder=True, inputs=(checkpoint, *inputs))
    if overlay_dir is not None and points_dir is not None and overlay_dir.resolve() == points_dir.resolve():
        raise UsageError("--overlay and --points-dir name the same folder", "give each its own folder")
    paths = expand_inputs(inputs)
    videos = [p for p in paths if p.suffix.lower() in VIDEO_SUFFIXES]
    if videos and not fmt.videos:
        raise UsageError(f"{videos[0]}: --format {fmt.name} holds images only, not video frames", "count videos apart")
    if (fmt.by_stem or points_dir is not None) and (same := repeated_stems(paths)):
        stem, clash = next(iter(same.items()))
        raise CrowdtkError(
            f"{clash[0]} and {clash[1]} have the same file stem '{stem}', which names an image in "
            + (f"the {fmt.name} output" if fmt.by_stem else "--points-dir"),
            "count them in separate runs",
        )
    loaded, device = load_for_backend(checkpoint, backend.value, predict.device)
    if loaded.unfinished:
        log.warn(loaded.unfinished)
    predictor = Predictor(loaded, device=device, max_side=predict.max_side, flip_average=predict.flip_average)
    skipped: list[str] = []
    want_heads = points or points_dir is not None
    n_images = sum(1 for p in paths if p.suffix.lower() not in VIDEO_SUFFIXES)
    # Overlays and points files are built in temporary folders that replace --overlay and --points-dir only when
    # every input was counted.
    with contextlib.ExitStack() as folders:
        out_dir = folders.enter_context(atomic_dir(overlay_dir, session.force)) if overlay_dir is not None else None
        heads_dir = folders.enter_context(atomic_dir(points_dir, session.force)) if points_dir is not None else None
        advance = folders.enter_context(log.progress(n_images, "counting"))
        for item in count_inputs(predictor, paths, on_progress=advance):
            if isinstance(item, NoFrames):
                log.warn(f"{item.video}: the video has no frames; nothing was counted for it")
                continue
            if isinstance(item, CrowdtkError):
                if not session.skip_bad:
                    raise item
                skipped.append(item.as_skipped())
                log.warn(f"skipped {item.as_skipped()}")
                continue
            if not item.finite:
                where = item.record.get("image") or f"{item.record['video']} frame {item.record['frame']}"
                log.warn(f"prediction for {where} is not finite (NaN or inf)" + (", no points" if want_heads else ""))
            heads = item.heads() if want_heads and item.finite else None
            record = {**item.record, "points": _rounded(heads)} if points else item.record
            typer.echo(fmt.line(record, item.name, item.total))
            if heads_dir is not None and heads is not None:
                with atomic_path(Path(heads_dir) / f"{item.name}.txt") as tmp:
                    tmp.write_text(points_text(heads))
            if out_dir is not None:
                ok, png = cv2.imencode(".png", cv2.cvtColor(overlay(item.image, item.density), cv2.COLOR_RGB2BGR))
                with atomic_path(Path(out_dir) / f"{item.name}.png") as tmp:
                    tmp.write_bytes(png.tobytes())
    if skipped:
        log.warn(f"skipped {len(skipped)} bad input(s)")
