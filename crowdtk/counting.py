"""`count`: counts for new images, folders of images and video frames, with heat-map overlays."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crowdtk.data import check_image_size, input_status, read_image
from crowdtk.errors import CrowdtkError
from crowdtk.geometry import STRIDE
from crowdtk.native_stderr import capture, log_messages, summary
from crowdtk.predict import Predictor, prefetched

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


def video_frames(path: str | os.PathLike[str]) -> Iterator[tuple[int, np.ndarray]]:
    """The frames of a video, numbered from 0, as RGB arrays.

    FFmpeg's and OpenCV's messages never reach stderr (:mod:`crowdtk.native_stderr`): they are the
    reason in the error when the video cannot be opened, or when it ends before the frame count its
    container gives with the decoder having complained (a damaged or truncated file; the good frames
    before are yielded first); a frame decoded despite complaints is a warning on the
    ``crowdtk.decoders`` logger (each distinct message once per video).
    """
    import cv2

    input_status(path, "video", "check the path")  # FFmpeg would wait forever to open a FIFO
    reader, messages = capture(cv2.VideoCapture, str(path))
    if not reader.isOpened():
        raise CrowdtkError(
            f"{path}: cannot open video ({summary(messages) if messages else _silent_failure(path)})",
            "re-encode it (e.g. to H.264 in .mp4), or pass --skip-bad to leave it out",
        )
    try:
        log_messages(str(path), messages)
        seen = dict.fromkeys(messages)
        total = int(reader.get(cv2.CAP_PROP_FRAME_COUNT))  # 0 or less when the container does not say
        index = 0
        while True:
            (ok, frame), messages = capture(reader.read)
            if not ok:
                # A read that fails before the container's frame count is the end only when the decoder
                # said nothing: the count of some containers (WebM, MKV) is an estimate from the duration.
                if index < total and (messages or seen):
                    raise CrowdtkError(
                        f"{path}: cannot decode frame {index} of frames 0-{total - 1} ({summary(messages or seen)})",
                        "re-encode or repair the video, or pass --skip-bad to leave it out",
                    )
                break
            if new := [m for m in messages if m not in seen]:
                log_messages(f"{path} frame {index}", new)
                seen.update(dict.fromkeys(new))
            yield index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        log_messages(str(path), capture(reader.release)[1])


def _silent_failure(path: str | os.PathLike[str]) -> str:
    """Why a video may not open when FFmpeg said nothing (a container that ends before its first frame, written by
    a writer that was closed without frames, is one such file)."""
    try:
        if os.path.getsize(path) == 0:
            return "an empty file"
    except OSError:
        pass
    return "no video stream OpenCV can read: a file without frames, a damaged file, or a codec this OpenCV lacks"


def overlay(image: np.ndarray, density: np.ndarray) -> np.ndarray:
    """The image with its density map as a heat map on top (RGB uint8)."""
    import cv2

    height, width = image.shape[:2]
    heat = cv2.resize(density, (density.shape[1] * STRIDE, density.shape[0] * STRIDE), interpolation=cv2.INTER_LINEAR)
    heat = cv2.resize(heat, (width, height), interpolation=cv2.INTER_LINEAR)
    heat = np.clip(heat / max(float(heat.max()), 1e-6) * 255, 0, 255).astype(np.uint8)
    colored = cv2.cvtColor(cv2.applyColorMap(heat, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(image, 0.5, colored, 0.5, 0)


def expand_inputs(inputs: list[str]) -> list[Path]:
    from crowdtk.data import IMAGE_SUFFIXES

    out: list[Path] = []
    subfolders = False
    for item in inputs:
        p = Path(item)
        if p.is_dir():  # its files only: a folder's subfolders are not searched
            out.extend(sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES))
            subfolders = subfolders or any(q.is_dir() for q in p.iterdir())
        elif p.exists():
            out.append(p)
        else:
            raise CrowdtkError(f"{item}: no such file or folder", "check the path")
    if not out:
        raise CrowdtkError(
            "no images or videos found in " + ", ".join(inputs),
            "count does not look into subfolders: pass them too (e.g. DIR/*/)"
            if subfolders
            else "pass image files, folders of images, or videos",
        )
    return out


def points_text(points: np.ndarray) -> str:
    """A points file of ``count --points-dir``: ``x y`` a line (pixels, two decimals), one line per head."""
    return "".join(f"{x:.2f} {y:.2f}\n" for x, y in points)


def repeated_stems(paths: list[Path]) -> dict[str, list[Path]]:
    """Inputs whose file stems are the same (their outputs named after the stem would collide)."""
    by_stem: dict[str, list[Path]] = {}
    for p in paths:
        by_stem.setdefault(p.stem, []).append(p)
    return {stem: ps for stem, ps in by_stem.items() if len(ps) > 1}


@dataclass(frozen=True)
class NoFrames:
    """A video that opened but held no frame: nothing was counted for it (the command says so)."""

    video: Path


@dataclass
class Counted:
    """One image or video frame counted: its output record, and what an overlay is drawn from."""

    record: dict  # {"image": path} or {"video": path, "frame": n}, with "count" (None when not finite)
    image: np.ndarray
    density: np.ndarray
    name: str  # the file stem of its overlay and points file (a frame's: the video's stem and the frame number)
    sx: float = 1.0  # the factors the image was resized by before the counter ran
    sy: float = 1.0

    @property
    def finite(self) -> bool:
        return self.record["count"] is not None

    @property
    def total(self) -> float:
        """The count unrounded (NaN or inf when not finite)."""
        return float(self.density.sum(dtype=np.float64))

    def heads(self) -> np.ndarray:
        """The head points (N, 2) in the image's pixels (x, y): the count-preserving peaks of the density,
        as ``export --prelabel`` suggests them (:func:`crowdtk.prelabel.image_heads`)."""
        from crowdtk.prelabel import image_heads

        height, width = self.image.shape[:2]
        return image_heads(self.density, self.sx, self.sy, width, height).points


def _read_or_error(path: str) -> np.ndarray | CrowdtkError:
    """Decoding errors are returned, not raised, so that the prefetching thread hands them over in order."""
    try:
        image = read_image(path)
        check_image_size(image.shape[1], image.shape[0], path)
        return image
    except CrowdtkError as exc:
        return exc


def _counted(record: dict, image: np.ndarray, density: np.ndarray, name: str, sx: float, sy: float) -> Counted:
    count = float(density.sum(dtype="float64"))
    return Counted({**record, "count": round(count, 3) if math.isfinite(count) else None}, image, density, name, sx, sy)


def count_inputs(
    predictor: Predictor, paths: list[Path], on_progress: Callable[[int], None] | None = None
) -> Iterator[Counted | CrowdtkError | NoFrames]:
    """Count the images (in order, decoding the next while one runs), then every frame of the videos.

    A bad image or video is yielded as its CrowdtkError, so the caller stops or skips it (--skip-bad);
    a video that fails midway has yielded its good frames first; a video without frames is yielded as
    :class:`NoFrames` (otherwise it would leave no trace in the output)."""
    images = [str(p) for p in paths if p.suffix.lower() not in VIDEO_SUFFIXES]
    for path, image in prefetched(images, read=_read_or_error):
        if isinstance(image, CrowdtkError):
            yield image
        else:
            density, sx, sy = predictor.density(image)
            yield _counted({"image": path}, image, density, Path(path).stem, sx, sy)
        if on_progress:
            on_progress(1)
    for video in (p for p in paths if p.suffix.lower() in VIDEO_SUFFIXES):
        frames = 0
        try:
            for index, frame in video_frames(video):
                density, sx, sy = predictor.density(frame)
                frames += 1
                name = f"{video.stem}_{index:06d}"
                yield _counted({"video": str(video), "frame": index}, frame, density, name, sx, sy)
        except CrowdtkError as exc:
            yield exc
            continue
        if frames == 0:
            yield NoFrames(video)
