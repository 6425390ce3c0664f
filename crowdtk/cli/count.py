"""crowdtk count CKPT IMAGE|DIR|VIDEO…: counts for new images and video frames (JSON Lines)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import cv2
import typer

from crowdtk.cli.common import Device, Log, Quiet, Verbose, run_command
from crowdtk.cli.eval import MaxSide
from crowdtk.formats import atomic_path, dumps_record


@run_command("count")
def command(
    checkpoint: Annotated[Path, typer.Argument(help="Counter checkpoint (.safetensors).", show_default=False)],
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders of images, or video files.", show_default=False)],
    overlay_dir: Annotated[Optional[Path], typer.Option("--overlay", help="Write a PNG heat-map overlay per image/frame into this folder. [default: none]")] = None,
    max_side: MaxSide = 2048,
    device: Device = "auto",
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Print one JSON line per image ({"image", "count"}) or per video frame ({"video", "frame", "count"})."""
    from crowdtk.predict import VIDEO_SUFFIXES, Predictor, expand_inputs, load_counter, overlay, prefetched, video_frames

    log = Log("count", quiet, verbose)
    paths = expand_inputs(inputs)
    predictor = Predictor(load_counter(checkpoint), device=device, max_side=max_side)
    if overlay_dir is not None:
        overlay_dir.mkdir(parents=True, exist_ok=True)

    def emit(record: dict, image, density, name: str) -> None:
        typer.echo(dumps_record(record))
        if overlay_dir is not None:
            ok, png = cv2.imencode(".png", cv2.cvtColor(overlay(image, density), cv2.COLOR_RGB2BGR))
            with atomic_path(overlay_dir / f"{name}.png") as tmp:
                tmp.write_bytes(png.tobytes())

    images = [str(p) for p in paths if p.suffix.lower() not in VIDEO_SUFFIXES]
    with log.progress(len(images), "counting") as advance:
        for path, image in prefetched(images):
            density, _, _ = predictor.density(image)
            emit({"image": path, "count": round(float(density.sum()), 3)}, image, density, Path(path).stem)
            advance(1)
    for video in (p for p in paths if p.suffix.lower() in VIDEO_SUFFIXES):
        for index, frame in video_frames(video):
            density, _, _ = predictor.density(frame)
            emit({"video": str(video), "frame": index, "count": round(float(density.sum()), 3)}, frame, density, f"{video.stem}_{index:06d}")
