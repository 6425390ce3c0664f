"""crowdtk count CKPT IMAGE|DIR|VIDEO…: counts for new images and video frames (JSON Lines)."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Annotated, Optional

import cv2
import typer

from crowdtk.cli.common import Device, Force, Log, Quiet, SkipBad, Verbose, run_command
from crowdtk.cli.eval import MaxSide
from crowdtk.data import check_image_size, read_image
from crowdtk.errors import CrowdtkError
from crowdtk.formats import atomic_dir, atomic_path, check_output_free, dumps_record


def _read_or_error(path: str):
    try:
        image = read_image(path)
        check_image_size(image.shape[1], image.shape[0], path)
        return image
    except CrowdtkError as exc:
        return exc


@run_command("count")
def command(
    checkpoint: Annotated[Path, typer.Argument(help="Counter checkpoint (.safetensors).", show_default=False)],
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders of images, or video files.", show_default=False)],
    overlay_dir: Annotated[Optional[Path], typer.Option("--overlay", help="Write a PNG heat-map overlay per image/frame into this folder (must not exist unless --force). [default: none]")] = None,
    max_side: MaxSide = 2048,
    device: Device = "auto",
    skip_bad: SkipBad = False,
    force: Force = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Print one JSON line per image ({"image", "count"}) or per video frame ({"video", "frame", "count"}).

    A prediction that is NaN or infinite is printed as "count": null, with a warning. A bad image or
    video stops the command unless --skip-bad, which leaves it out with a warning.
    """
    from crowdtk.predict import VIDEO_SUFFIXES, Predictor, expand_inputs, load_counter, overlay, prefetched, video_frames

    log = Log("count", quiet, verbose)
    if overlay_dir is not None:
        check_output_free(overlay_dir, force)
    paths = expand_inputs(inputs)
    predictor = Predictor(load_counter(checkpoint), device=device, max_side=max_side)
    skipped: list[str] = []

    def bad(exc: CrowdtkError) -> None:
        if not skip_bad:
            raise exc
        skipped.append(str(exc))
        log.warn(f"skipped {exc}")

    # Overlays are built in a temporary folder that replaces --overlay only when every input was counted.
    folder = atomic_dir(overlay_dir, force) if overlay_dir is not None else contextlib.nullcontext(None)
    with folder as out_dir:

        def emit(record: dict, image, density, name: str) -> None:
            count = float(density.sum(dtype="float64"))
            if not math.isfinite(count):
                log.warn(f"prediction for {record.get('image') or record['video'] + ' frame ' + str(record['frame'])} is not finite (NaN or inf)")
            record["count"] = round(count, 3) if math.isfinite(count) else None
            typer.echo(dumps_record(record))
            if out_dir is not None:
                ok, png = cv2.imencode(".png", cv2.cvtColor(overlay(image, density), cv2.COLOR_RGB2BGR))
                with atomic_path(Path(out_dir) / f"{name}.png") as tmp:
                    tmp.write_bytes(png.tobytes())

        images = [str(p) for p in paths if p.suffix.lower() not in VIDEO_SUFFIXES]
        with log.progress(len(images), "counting") as advance:
            for path, image in prefetched(images, read=_read_or_error):
                if isinstance(image, CrowdtkError):
                    bad(image)
                else:
                    density, _, _ = predictor.density(image)
                    emit({"image": path}, image, density, Path(path).stem)
                advance(1)
        for video in (p for p in paths if p.suffix.lower() in VIDEO_SUFFIXES):
            try:
                for index, frame in video_frames(video):
                    density, _, _ = predictor.density(frame)
                    emit({"video": str(video), "frame": index}, frame, density, f"{video.stem}_{index:06d}")
            except CrowdtkError as exc:
                bad(exc)
    if skipped:
        log.warn(f"skipped {len(skipped)} bad input(s)")
