"""`index`: turn a data set folder into a manifest (one record per image).

Layouts recognised, in this order:

- ShanghaiTech split: ``images/IMG_n.jpg`` + ``ground-truth/GT_IMG_n.mat`` (or ``ground_truth/``);
- generic: ``images/NAME.ext`` + ``points/NAME.{txt,csv,json,npy,mat}``;
- UCF_CC_50: ``n.jpg`` + ``n_ann.mat`` side by side.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from crowdtk.data import (
    IMAGE_MISSING_FIX,
    IMAGE_SUFFIXES,
    MAX_DECODED_PIXELS,
    POINT_SUFFIXES,
    check_image_size,
    decode_image,
    image_size,
    input_status,
    inside,
    read_image_bytes,
    read_points_and_digest,
)
from crowdtk.errors import CrowdtkError
from crowdtk.files import file_digest
from crowdtk.formats import ManifestEntry

Progress = Callable[[int], None]


@dataclass
class IndexResult:
    layout: str
    entries: list[ManifestEntry]
    dropped_points: dict[str, int] = field(default_factory=dict)  # image id -> points off the image
    skipped: list[str] = field(default_factory=list)  # "path: why" for images left out by --skip-bad
    ignored: list[str] = field(default_factory=list)  # files beside the images that are not images of the data set


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def _images_in(folder: Path) -> list[Path]:
    # Not only regular files: a FIFO or a broken link named like an image is refused (or skipped with
    # --skip-bad) by name when it is read, instead of leaving the data set unnoticed.
    return sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir()), key=_natural_key
    )


def _is_preview(image: Path, root: Path) -> bool:
    """``2_ann.png`` beside ``2.jpg`` and ``2_ann.mat`` (UCF_CC_50): a picture of an annotation, not an image of the set."""
    stem = image.stem
    return stem.endswith("_ann") and (root / f"{stem}.mat").exists() and not (root / f"{stem}_ann.mat").exists()


def previews(root: Path) -> list[str]:
    """The annotation pictures ``find_pairs`` leaves out of a UCF_CC_50 folder."""
    return [img.name for img in _images_in(root) if _is_preview(img, root)] if root.is_dir() else []


def find_pairs(root: Path) -> tuple[str, list[tuple[Path, Path | None]]]:
    """Detect the layout of ``root``; return it and (image, points file or None) pairs."""
    if not root.is_dir():
        raise CrowdtkError(
            f"{root}: not a folder",
            "pass a data set folder (a ShanghaiTech split, a UCF_CC_50 folder, or images/ + points/)",
        )
    images_dir = root / "images"
    gt_dir = next((root / n for n in ("ground-truth", "ground_truth") if (root / n).is_dir()), None)
    if images_dir.is_dir() and gt_dir is not None:
        return "shanghaitech", [(img, gt_dir / f"GT_{img.stem}.mat") for img in _images_in(images_dir)]
    if images_dir.is_dir() and (root / "points").is_dir():
        pairs = []
        for img in _images_in(images_dir):
            found = [
                root / "points" / f"{img.stem}{s}"
                for s in POINT_SUFFIXES
                if (root / "points" / f"{img.stem}{s}").exists()
            ]
            pairs.append((img, found[0] if found else root / "points" / f"{img.stem}.txt"))
        return "generic", pairs
    ucf = [img for img in _images_in(root) if (root / f"{img.stem}_ann.mat").exists()]
    if ucf:
        return "ucf_cc_50", [
            (img, root / f"{img.stem}_ann.mat") for img in _images_in(root) if not _is_preview(img, root)
        ]
    hint = ""
    if (root / "train_data").is_dir() or (root / "test_data").is_dir():
        hint = f"; it holds splits: index {root / 'train_data'} or {root / 'test_data'}"
    raise CrowdtkError(
        f"{root}: no known data set layout{hint}",
        "expected images/ + ground-truth/ (ShanghaiTech), images/ + points/ (generic), or n.jpg + n_ann.mat (UCF_CC_50)",
    )


def _check_utf8_name(path: Path) -> None:
    """Manifests and every file after them are UTF-8 JSON: a name that is not UTF-8 could be indexed but not written."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        raise CrowdtkError(
            f"{shown}: the file name is not valid UTF-8", "rename the file, or pass --skip-bad to leave it out"
        ) from None


def _index_one(image: Path, points_path: Path | None, relative_to: Path | None) -> tuple[ManifestEntry, int]:
    for path in (image, points_path):
        if path is not None:
            _check_utf8_name(path)
    # Taken before the bytes are read: a file written meanwhile then has another time than recorded, and is
    # checked by its sha256 (the digest of the bytes read here) where the stat alone would pass it.
    status = input_status(image, "image", IMAGE_MISSING_FIX)
    width, height = image_size(image)
    size_bytes = status.st_size
    if width * height <= MAX_DECODED_PIXELS:  # decoded to find truncated files; a larger one only by its header
        data = read_image_bytes(image)
        sha256, size_bytes = hashlib.sha256(data).hexdigest(), len(data)
        height, width = decode_image(data, str(image)).shape[:2]
    else:
        sha256 = file_digest(image)
    check_image_size(width, height, str(image))
    if points_path is None or not points_path.exists():
        raise CrowdtkError(
            f"{points_path}: annotation file for {image.name} not found",
            "add it, or pass --skip-bad to leave the image out",
        )
    points, points_sha256 = read_points_and_digest(points_path)
    on_image = inside(points, width, height)

    def rel(p: Path) -> str:
        if relative_to is None:
            return str(p.resolve())
        return str(p.resolve().relative_to(relative_to.resolve()))

    entry = ManifestEntry(
        id=image.stem,
        image=rel(image),
        points=rel(points_path),
        width=int(width),
        height=int(height),
        count=int(on_image.sum()),
        sha256=sha256,
        size_bytes=size_bytes,
        mtime_ns=status.st_mtime_ns,
        points_sha256=points_sha256,
    )
    return entry, int((~on_image).sum())


def build_manifest(
    root: str | Path,
    workers: int = 2,
    skip_bad: bool = False,
    relative_to: str | Path | None = None,
    on_progress: Progress | None = None,
) -> IndexResult:
    """Read every image and annotation under ``root``; raise on the first bad one unless ``skip_bad``.

    Images are decoded in full (not only their headers) so that truncated files are caught
    here, before any training. Paths are absolute unless ``relative_to`` is given.
    """
    root = Path(root)
    layout, pairs = find_pairs(root)
    if not pairs:
        raise CrowdtkError(f"{root}: no images found", "check the folder")
    rel = Path(relative_to) if relative_to is not None else None
    result = IndexResult(layout=layout, entries=[], ignored=previews(root) if layout == "ucf_cc_50" else [])

    def work(pair: tuple[Path, Path | None]) -> tuple[ManifestEntry, int] | CrowdtkError:
        try:
            return _index_one(pair[0], pair[1], rel)
        except CrowdtkError as exc:
            return exc

    ids: set[str] = set()
    # Threads: OpenCV decoding and hashing release the GIL.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for (image, _), outcome in zip(pairs, pool.map(work, pairs)):
            if on_progress:
                on_progress(1)
            if isinstance(outcome, CrowdtkError):
                if not skip_bad:
                    raise outcome
                result.skipped.append(outcome.as_skipped())
                continue
            entry, dropped = outcome
            if entry.id in ids:
                raise CrowdtkError(f"{image}: two images share the name '{entry.id}'", "rename one of them")
            ids.add(entry.id)
            result.entries.append(entry)
            if dropped:
                result.dropped_points[entry.id] = dropped
    if not result.entries:
        raise CrowdtkError(f"{root}: every image was bad", "see the list of skipped images")
    return result
