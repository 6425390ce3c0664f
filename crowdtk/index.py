"""`index`: turn a data set folder into a manifest (one record per image).

The layouts ``index`` reads are records of :data:`LAYOUTS` (:func:`register_layout`), tried in the order they are
registered below; the first whose ``detect`` accepts the folder reads it:

- shanghaitech: a ShanghaiTech split, ``images/IMG_n.jpg`` + ``ground-truth/GT_IMG_n.mat`` (or ``ground_truth/``);
- generic: ``images/NAME.ext`` + ``points/NAME.{txt,csv,json,npy,mat}``;
- jhu_crowd: a JHU-Crowd++ split, ``images/NNNN.jpg`` + ``gt/NNNN.txt`` (+ ``image_labels.txt``);
- nwpu_crowd: NWPU-Crowd, ``images/NNNN.jpg`` + ``jsons/NNNN.json`` + split lists ``train.txt``, ``val.txt``,
  ``test.txt`` (``index --split`` reads one of them);
- ucf_cc_50: UCF_CC_50, or a UCF-QNRF split (``Train/``, ``Test/``): ``n.jpg`` + ``n_ann.mat`` side by side.
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
from crowdtk.errors import CrowdtkError, UsageError
from crowdtk.files import file_digest
from crowdtk.formats import ManifestEntry
from crowdtk.registry import RegistrationError, Registry, listing, names

Progress = Callable[[int], None]
Attributes = dict[str, str | int]
SPLITS = ("train", "val", "test")  # index --split


@dataclass
class IndexResult:
    layout: str
    entries: list[ManifestEntry]
    dropped_points: dict[str, int] = field(default_factory=dict)  # image id -> points off the image
    skipped: list[str] = field(default_factory=list)  # "path: why" for images left out by --skip-bad
    ignored: list[str] = field(default_factory=list)  # files beside the images that are not images of the data set

    @property
    def unannotated(self) -> int:
        """Images the data set publishes no annotations for (``points`` None)."""
        return sum(1 for e in self.entries if e.points is None)


@dataclass(frozen=True)
class Sample:
    """One image of a data set as its layout names it."""

    image: Path
    points: Path | None  # the annotation file; None: the data set publishes none for this image
    attributes: Attributes = field(default_factory=dict)  # crowdtk.formats.ATTRIBUTE_NAMES


@dataclass(frozen=True)
class Layout:
    """A data set layout ``index`` reads (:func:`register_layout` registers one, in the order of detection)."""

    name: str  # the manifest header's "layout"
    help: str  # one line: what the folder holds (the "no known data set layout" message lists them)
    detect: Callable[[Path], bool]  # whether a folder has this layout, from names alone
    samples: Callable[[Path], list[Sample]]  # the folder's images in order, with their annotation files
    # index --split NAME: the images the layout's split list NAME names; None: the layout has no split lists.
    split: Callable[[Path, str], list[Sample]] | None = None
    ignored: Callable[[Path], list[str]] | None = None  # files beside the images that are no images of the set
    empty_means_no_heads: bool = False  # an empty annotation file is an image without heads (not a failed export)

    def check(self) -> None:
        if not (callable(self.detect) and callable(self.samples)):
            raise RegistrationError(f"the data set layout {self.name!r} needs its detect and samples functions")
        if any(f is not None and not callable(f) for f in (self.split, self.ignored)):
            raise RegistrationError(f"the data set layout {self.name!r}: split and ignored must be functions or None")


# Every layout by name, in the order they are tried on a folder.
LAYOUTS: Registry[Layout] = Registry("data set layout")


def register_layout(layout: Layout) -> Layout:
    """Register a data set layout; a name registered twice, or a record missing a part, fails here."""
    return LAYOUTS.register(layout)


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def _images_in(folder: Path) -> list[Path]:
    # Not only regular files: a FIFO or a broken link named like an image is refused (or skipped with
    # --skip-bad) by name when it is read, instead of leaving the data set unnoticed.
    return sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir()), key=_natural_key
    )


def _has_folders(root: Path, *names: str) -> bool:
    return all((root / n).is_dir() for n in names)


def _register_beside_images(
    name: str,
    help: str,
    annotations: str,
    samples: Callable[[Path], list[Sample]],
    *,
    split: Callable[[Path, str], list[Sample]] | None = None,
    empty_means_no_heads: bool = False,
) -> Layout:
    """Register a layout whose folder holds images/ and the folder ``annotations`` beside it, detected by the two."""
    return register_layout(
        Layout(
            name,
            help,
            detect=lambda root: _has_folders(root, "images", annotations),
            samples=samples,
            split=split,
            empty_means_no_heads=empty_means_no_heads,
        )
    )


def _attribute_lines(
    path: Path,
    parse: Callable[[str], tuple[str, Attributes]],
    *,
    what: str,
    fix_read: str,
    line_form: str,
    fix_line: str,
) -> dict[str, Attributes]:
    """A data set's text file of one image a line, in its order: per image id, the attributes ``parse`` reads from
    its line (blank lines skipped; a line ``parse`` refuses with ValueError is an error naming ``line_form``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CrowdtkError(f"{path}: cannot read {what} ({exc})", fix_read) from None
    attributes: dict[str, Attributes] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            image_id, found = parse(line)
        except ValueError:
            raise CrowdtkError(f"{path}:{n}: not {line_form}", fix_line) from None
        attributes[image_id] = found
    return attributes


# --------------------------------------------------------------------------- ShanghaiTech


def _ground_truth_dir(root: Path) -> Path | None:
    return next((root / n for n in ("ground-truth", "ground_truth") if (root / n).is_dir()), None)


def _shanghaitech(root: Path) -> list[Sample]:
    gt_dir = _ground_truth_dir(root)
    assert gt_dir is not None  # detected
    return [Sample(img, gt_dir / f"GT_{img.stem}.mat") for img in _images_in(root / "images")]


register_layout(
    Layout(
        "shanghaitech",
        "a ShanghaiTech split: images/IMG_n.jpg + ground-truth/GT_IMG_n.mat",
        detect=lambda root: (root / "images").is_dir() and _ground_truth_dir(root) is not None,
        samples=_shanghaitech,
    )
)


# --------------------------------------------------------------------------- generic


def _generic(root: Path) -> list[Sample]:
    samples = []
    for img in _images_in(root / "images"):
        found = [
            root / "points" / f"{img.stem}{s}" for s in POINT_SUFFIXES if (root / "points" / f"{img.stem}{s}").exists()
        ]
        samples.append(Sample(img, found[0] if found else root / "points" / f"{img.stem}.txt"))
    return samples


_register_beside_images(
    "generic", f"images/NAME.jpg + points/NAME with one of {', '.join(POINT_SUFFIXES)}", "points", _generic
)


# --------------------------------------------------------------------------- JHU-Crowd++


def _jhu_image_labels(path: Path) -> dict[str, Attributes]:
    """A JHU-Crowd++ split's ``image_labels.txt``: per image id, its scene type, weather and distractor flag.

    One line per image, ``id,total count,scene type,weather,distractor``, weather 0 (none) to 3 (fog or haze,
    rain, snow), distractor 0 or 1. The order of the fields is the one the data set's loader in Graviti's
    tensorbay-python-sdk reads (tensorbay/opendataset/JHU_CROWD/loader.py, ``_load_image_label``); the count is
    left out here, as the annotations give it.
    """
    if not path.is_file():
        return {}

    def parse(line: str) -> tuple[str, Attributes]:
        image_id, _, scene_type, weather, distractor = (f.strip() for f in line.split(","))
        return image_id, {"scene_type": scene_type, "weather": int(weather), "distractor": int(distractor)}

    return _attribute_lines(
        path,
        parse,
        what="the image labels",
        fix_read="fix the file, or remove it",
        line_form="an image label line 'id,count,scene type,weather,distractor'",
        fix_line="fix the line, or remove the file to index without image labels",
    )


def _jhu_crowd(root: Path) -> list[Sample]:
    labels = _jhu_image_labels(root / "image_labels.txt")
    return [
        Sample(img, root / "gt" / f"{img.stem}.txt", labels.get(img.stem, {})) for img in _images_in(root / "images")
    ]


_register_beside_images(
    "jhu_crowd",
    "a JHU-Crowd++ split: images/NNNN.jpg + gt/NNNN.txt ('x y w h o b' per head), optional image_labels.txt",
    "gt",
    _jhu_crowd,
    empty_means_no_heads=True,  # the data set's images without heads come with an empty gt/NNNN.txt
)


# --------------------------------------------------------------------------- NWPU-Crowd


def _nwpu_list(root: Path, split: str) -> dict[str, Attributes] | None:
    """The split list ``ROOT/{split}.txt`` (``id illumination scene_level`` per line) in its order; None when absent."""
    path = root / f"{split}.txt"
    if not path.is_file():
        return None

    def parse(line: str) -> tuple[str, Attributes]:
        image_id, illumination, scene_level = line.split()
        return image_id, {"split": split, "illumination": int(illumination), "scene_level": int(scene_level)}

    fix, form = "fix or restore the file", "a split list line 'id illumination scene_level'"
    return _attribute_lines(path, parse, what="the split list", fix_read=fix, line_form=form, fix_line=fix)


def _nwpu_sample(root: Path, image: Path, attributes: Attributes) -> Sample:
    points = root / "jsons" / f"{image.stem}.json"
    # The test split's annotations are not published: its images are indexed without points (unless some are there).
    if attributes.get("split") == "test" and not points.exists():
        return Sample(image, None, attributes)
    return Sample(image, points, attributes)


def _nwpu_crowd(root: Path) -> list[Sample]:
    listed: dict[str, Attributes] = {}
    for split in SPLITS:
        listed.update(_nwpu_list(root, split) or {})
    return [_nwpu_sample(root, img, listed.get(img.stem, {})) for img in _images_in(root / "images")]


def _nwpu_split(root: Path, split: str) -> list[Sample]:
    listed = _nwpu_list(root, split)
    if listed is None:
        raise CrowdtkError(f"{root / f'{split}.txt'}: split list not found", "restore it from the NWPU-Crowd download")
    by_stem = {img.stem: img for img in _images_in(root / "images")}
    # A listed image that is missing is named when it is read (and left out with --skip-bad).
    return [_nwpu_sample(root, by_stem.get(i, root / "images" / f"{i}.jpg"), a) for i, a in listed.items()]


_register_beside_images(
    "nwpu_crowd",
    "NWPU-Crowd: images/NNNN.jpg + jsons/NNNN.json, split lists train.txt, val.txt, test.txt (--split)",
    "jsons",
    _nwpu_crowd,
    split=_nwpu_split,
)


# --------------------------------------------------------------------------- UCF_CC_50 and UCF-QNRF


def _is_preview(image: Path, root: Path) -> bool:
    """``2_ann.png`` beside ``2.jpg`` and ``2_ann.mat`` (UCF_CC_50): a picture of an annotation,
    not an image of the set."""
    stem = image.stem
    return stem.endswith("_ann") and (root / f"{stem}.mat").exists() and not (root / f"{stem}_ann.mat").exists()


def previews(root: Path) -> list[str]:
    """The annotation pictures left out of a UCF_CC_50 folder."""
    return [img.name for img in _images_in(root) if _is_preview(img, root)] if root.is_dir() else []


register_layout(
    Layout(
        "ucf_cc_50",
        "UCF_CC_50, or a UCF-QNRF split (Train/, Test/): n.jpg + n_ann.mat (annPoints) side by side",
        detect=lambda root: any((root / f"{img.stem}_ann.mat").exists() for img in _images_in(root)),
        samples=lambda root: [
            Sample(img, root / f"{img.stem}_ann.mat") for img in _images_in(root) if not _is_preview(img, root)
        ],
        ignored=previews,
    )
)


# --------------------------------------------------------------------------- finding a folder's layout


def detect_layout(root: Path) -> Layout | None:
    """The first registered layout that accepts ``root``, or None."""
    return next((layout for layout in LAYOUTS.values() if layout.detect(root)), None)


def _split_rank(folder: Path) -> tuple[int, list]:
    name = folder.name.lower()
    return (next((i for i, s in enumerate(SPLITS) if name.startswith(s)), len(SPLITS)), _natural_key(folder))


def _no_layout(root: Path) -> CrowdtkError:
    # A data set's root that holds its splits (ShanghaiTech's train_data/, UCF-QNRF's Train/, JHU-Crowd++'s
    # train/): the user meant one of them.
    try:
        subfolders = sorted((p for p in root.iterdir() if p.is_dir()), key=_split_rank)
    except OSError:
        subfolders = []
    splits = [p for p in subfolders if detect_layout(p) is not None]
    hint = ""
    if splits:
        shown = [str(p) for p in splits[:4]]
        hint = f"; it holds splits: index {' or '.join(shown)}"
    return CrowdtkError(f"{root}: no known data set layout{hint}", f"expected {listing(LAYOUTS)}")


def find_samples(root: Path, split: str | None = None) -> tuple[Layout, list[Sample]]:
    """Detect the layout of ``root``; return it and its images (those its list ``split`` names, if given)."""
    if not root.is_dir():
        raise CrowdtkError(f"{root}: not a folder", f"pass a data set folder: {names(LAYOUTS, 'or')}")
    layout = detect_layout(root)
    if layout is None:
        raise _no_layout(root)
    if split is None:
        return layout, layout.samples(root)
    if layout.split is None:
        with_lists = [r for r in LAYOUTS.values() if r.split is not None]
        raise UsageError(
            f"--split {split}: {root} has the {layout.name} layout, which has no split lists "
            f"(layouts with lists: {names(with_lists, 'and') or 'none'})",
            "index the split's own folder instead, without --split",
        )
    return layout, layout.split(root, split)


def _check_utf8_name(path: Path) -> None:
    """Manifests and every file after them are UTF-8 JSON: a name that is not UTF-8 could be indexed but not written."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        raise CrowdtkError(
            f"{shown}: the file name is not valid UTF-8", "rename the file, or pass --skip-bad to leave it out"
        ) from None


def _index_one(sample: Sample, layout: Layout, relative_to: Path | None) -> tuple[ManifestEntry, int]:
    image, points_path = sample.image, sample.points
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
    points_sha256: str | None = None
    count = dropped = 0
    if points_path is not None:
        if not points_path.exists():
            raise CrowdtkError(
                f"{points_path}: annotation file for {image.name} not found",
                "add it, or pass --skip-bad to leave the image out",
            )
        points, points_sha256 = read_points_and_digest(points_path, empty_means_no_heads=layout.empty_means_no_heads)
        on_image = inside(points, width, height)
        count, dropped = int(on_image.sum()), int((~on_image).sum())

    def rel(p: Path) -> str:
        if relative_to is None:
            return str(p.resolve())
        return str(p.resolve().relative_to(relative_to.resolve()))

    entry = ManifestEntry(
        id=image.stem,
        image=rel(image),
        points=rel(points_path) if points_path is not None else None,
        width=int(width),
        height=int(height),
        count=count,
        sha256=sha256,
        size_bytes=size_bytes,
        mtime_ns=status.st_mtime_ns,
        points_sha256=points_sha256,
        attributes=dict(sample.attributes) or None,
    )
    return entry, dropped


def build_manifest(
    root: str | Path,
    workers: int = 2,
    skip_bad: bool = False,
    relative_to: str | Path | None = None,
    on_progress: Progress | None = None,
    split: str | None = None,
) -> IndexResult:
    """Read every image and annotation under ``root``; raise on the first bad one unless ``skip_bad``.

    Images are decoded in full (not only their headers) so that truncated files are caught
    here, before any training. Paths are absolute unless ``relative_to`` is given. ``split``:
    only the images the layout's split list of that name names (NWPU-Crowd's ``val.txt``).
    """
    root = Path(root)
    layout, samples = find_samples(root, split)
    if not samples:
        raise CrowdtkError(f"{root}: no images found", "check the folder")
    rel = Path(relative_to) if relative_to is not None else None
    result = IndexResult(layout=layout.name, entries=[], ignored=layout.ignored(root) if layout.ignored else [])

    def work(sample: Sample) -> tuple[ManifestEntry, int] | CrowdtkError:
        try:
            return _index_one(sample, layout, rel)
        except CrowdtkError as exc:
            return exc

    ids: set[str] = set()
    # Threads: OpenCV decoding and hashing release the GIL.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for sample, outcome in zip(samples, pool.map(work, samples)):
            if on_progress:
                on_progress(1)
            if isinstance(outcome, CrowdtkError):
                if not skip_bad:
                    raise outcome
                result.skipped.append(outcome.as_skipped())
                continue
            entry, dropped = outcome
            if entry.id in ids:
                raise CrowdtkError(f"{sample.image}: two images share the name '{entry.id}'", "rename one of them")
            ids.add(entry.id)
            result.entries.append(entry)
            if dropped:
                result.dropped_points[entry.id] = dropped
    if not result.entries:
        raise CrowdtkError(f"{root}: every image was bad", "see the list of skipped images")
    return result
