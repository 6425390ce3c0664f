"""crowdtk count CKPT IMAGE|DIR|VIDEO…: counts for new images and video frames (JSON Lines)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import cv2
import typer

from crowdtk.cli.common import claim, run_command
from crowdtk.cli.options import PREDICTION, SESSION, Session
from crowdtk.errors import CrowdtkError
from crowdtk.files import atomic_dir, atomic_path, check_inputs_exist
from crowdtk.formats import dumps_record
from crowdtk.predict_config import PredictConfig


@run_command("count")
def command(
    checkpoint: Annotated[Path, typer.Argument(help="Counter checkpoint (.safetensors).", show_default=False)],
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
            help="Write a PNG heat-map overlay per image/frame into this folder (must not exist unless --force). [default: none]",
        ),
    ] = None,
    predict: PredictConfig = PREDICTION.without("feature_cache"),
    session: Session = SESSION,
) -> None:
    """Print one JSON line per image ({"image", "count"}) or per video frame ({"video", "frame", "count"}).

    A prediction that is NaN or infinite is printed as "count": null, with a warning. A bad image or
    video stops the command unless --skip-bad, which leaves it out with a warning.
    """
    check_inputs_exist(checkpoint)
    from crowdtk.counting import VIDEO_SUFFIXES, NoFrames, count_inputs, expand_inputs, overlay
    from crowdtk.predict import Predictor, load_counter

    log = session.log
    claim(overlay_dir, session.force, folder=True, inputs=(checkpoint, *inputs))
    paths = expand_inputs(inputs)
    loaded = load_counter(checkpoint)
    if loaded.unfinished:
        log.warn(loaded.unfinished)
    predictor = Predictor(loaded, device=predict.device, max_side=predict.max_side, flip_average=predict.flip_average)
    skipped: list[str] = []
    n_images = sum(1 for p in paths if p.suffix.lower() not in VIDEO_SUFFIXES)
    # Overlays are built in a temporary folder that replaces --overlay only when every input was counted.
    folder = atomic_dir(overlay_dir, session.force) if overlay_dir is not None else contextlib.nullcontext(None)
    with folder as out_dir, log.progress(n_images, "counting") as advance:
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
                log.warn(f"prediction for {where} is not finite (NaN or inf)")
            typer.echo(dumps_record(item.record))
            if out_dir is not None:
                ok, png = cv2.imencode(".png", cv2.cvtColor(overlay(item.image, item.density), cv2.COLOR_RGB2BGR))
                with atomic_path(Path(out_dir) / f"{item.name}.png") as tmp:
                    tmp.write_bytes(png.tobytes())
    if skipped:
        log.warn(f"skipped {len(skipped)} bad input(s)")
