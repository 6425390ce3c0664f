"""Readers for crowd images and head-point annotations in the layouts people have.

Coordinates are pixels, x then y, origin at the top-left corner of the image; a point
belongs to the image when ``0 <= x < width`` and ``0 <= y < height``.

Bad input, decided once for every point reader (``.mat``, ``.txt``, ``.csv``, ``.json``,
``.npy``, and the label-tool importers of :mod:`crowdtk.labeling`):

- a NaN or infinite coordinate is an error naming the file;
- a point outside the image (negative, or at/after the width or height) is *dropped*, never
  clipped, and the stage that drops it says how many (``index`` warns per image; later
  stages re-read the same file, drop the same points, and check the count against the
  manifest); label-tool points outside their regions are dropped the same way;
- a file that cannot be parsed is a :class:`~crowdtk.errors.CrowdtkError` naming it, whatever
  the parser raised;
- an image with no heads is valid data (a comment line or ``[]``; a zero-byte file is refused).

Images smaller than the counters' output stride (8 px on a side) are refused
(:func:`check_image_size`): they hold no whole output cell.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import stat
import threading
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Protocol

import cv2
import numpy as np
import scipy.io
from PIL import Image, UnidentifiedImageError

from crowdtk.errors import CrowdtkError
from crowdtk.files import file_digest
from crowdtk.geometry import STRIDE
from crowdtk.native_stderr import capture, log_messages, summary

# crowdtk refuses an image above MAX_DECODED_PIXELS itself, from its header (check_decodable), before
# decoding: Pillow's decompression-bomb guard, which refuses even to open a 20000x20000 file to read
# its size, has nothing to guard here.
Image.MAX_IMAGE_PIXELS = None

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
POINT_SUFFIXES = (".txt", ".csv", ".json", ".npy", ".mat")


# Decoding. Images are decoded by Pillow, which reports a decoder's failure as an exception carrying
# its message (libjpeg's own warnings it silences; PNG and BMP it parses in Python; WebP errors are
# return codes). OpenCV's imdecode prints the reason on file descriptor 2 instead, which crowdtk had
# to capture by pointing the process's fd 2 at a file around each call (crowdtk.native_stderr):
# every decode serialised on one lock, and another thread's output written meanwhile could land
# inside a decoder's message. TIFF is the exception: Pillow decodes it with libtiff, which prints
# its errors on fd 2 too ("Using code not yet in table") and leaves Pillow only "decoder error -2",
# so a TIFF is decoded by OpenCV under that capture, as before.
#
# Speed, measured with `.venv/bin/python -m benchmarks.decode --rounds 5` on the 400 Part B training
# JPEGs (1024x768) decoded from memory, on the project's 2-core machine with other work running beside
# (best round): cv2.imdecode + BGR-to-RGB 7.5 ms/image of CPU time (23.2 ms wall), decode_image 8.8 ms
# (27.4 ms wall): 1.17x. Both use libjpeg-turbo and give the same pixels; the difference is Pillow's
# copy from its 4-byte pixels to a packed RGB array. Well under the 1.5x that would have kept OpenCV
# for decoding. Before Pillow kept freed image blocks (_PILLOW_BLOCKS) it spent 7-9 ms/image more in the
# kernel, mapping and faulting in a fresh block for every image (3.4x in all).
_PILLOW_BLOCKS = 4  # freed image blocks Pillow keeps for the next image (at most 4 x 16 MB held)
_ORIENTATION = 0x0112  # the EXIF tag
# How an image with each EXIF orientation is turned upright: OpenCV's IMREAD_COLOR applied it, and
# the manifests' widths and heights of rotated camera images are the upright ones.
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# What Pillow may take a file for: the formats of IMAGE_SUFFIXES (a JPEG holding more pictures, MPO, opens as
# JPEG; DIB: a BMP without its file header). Not the others it knows: EPS, for one, would run Ghostscript.
_FORMATS = ("JPEG", "PNG", "TIFF", "WEBP", "BMP", "DIB")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # grey modes holding 16-bit values
_PIL_DIR = Path(Image.__file__).resolve().parent
_warnings_lock = threading.Lock()
_blocks_kept = False
UNREADABLE_FIX = "check that the file is a complete JPEG/PNG image, or remove it"


@contextlib.contextmanager
def _pillow_warnings(messages: list[str]) -> Iterator[None]:
    """Pillow's Python warnings (corrupt EXIF or TIFF tags) appended to ``messages`` instead of printed.

    ``warnings.catch_warnings`` swaps process-wide state (until Python 3.14), so it is held one thread
    at a time and only around Pillow's header and metadata parsing (tens of microseconds), never around
    pixel decoding. A warning that code outside Pillow raised meanwhile is passed on as it was.
    """
    caught: list[warnings.WarningMessage] = []
    try:
        with _warnings_lock, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        for w in caught:
            if Path(w.filename).resolve().is_relative_to(_PIL_DIR):
                messages.append(" ".join(str(w.message).split()))
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _reason(exc: Exception) -> str:
    """A Pillow exception as the reason in a one-line error (without the repr of the buffer it read)."""
    if isinstance(exc, UnidentifiedImageError):
        return "not a JPEG, PNG, TIFF, WebP or BMP image"
    text = " ".join(str(exc).split())
    return text if text else type(exc).__name__


def _rgb(im: Image.Image) -> np.ndarray:
    """A loaded Pillow image as a writable H×W×3 uint8 RGB array, as OpenCV's IMREAD_COLOR gave it:
    grey to 3 channels, alpha dropped, palettes expanded, 16-bit values reduced to their high byte."""
    if im.mode in _SIXTEEN_BIT:
        grey = (np.clip(np.asarray(im), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if im.mode != "RGB":
        im = im.convert("RGB")
    # np.asarray would wrap Pillow's bytes read-only (torch.from_numpy warns on such arrays): one copy.
    return np.array(im)


def _decode_with_pillow(data: bytes, source: str, messages: list[str]) -> np.ndarray | None:
    """The image's pixels; None for a TIFF (left to OpenCV). Raises whatever Pillow raises."""
    global _blocks_kept
    if not _blocks_kept:
        if Image.core.get_blocks_max() < _PILLOW_BLOCKS:  # PILLOW_BLOCKS_MAX may ask for more
            Image.core.set_blocks_max(_PILLOW_BLOCKS)
        _blocks_kept = True
    with _pillow_warnings(messages):
        im: Image.Image = Image.open(io.BytesIO(data), formats=_FORMATS)  # the header only
    if im.format == "TIFF":
        return None
    check_decodable(im.width, im.height, source, "cut it into parts of at most 10000x10000 px, or leave it out")
    if im.format == "PNG":
        # Pillow checks no IDAT chunk's CRC while decoding (libpng did, and refused the file); verify() checks
        # every chunk's, and the file is opened again to decode.
        im.verify()
        im = Image.open(io.BytesIO(data), formats=_FORMATS)
    im.load()
    with _pillow_warnings(messages):
        try:
            orientation = im.getexif().get(_ORIENTATION, 1)
        except Exception as exc:  # noqa: BLE001 - metadata Pillow cannot parse; the pixels are decoded
            messages.append(f"unreadable EXIF data ({_reason(exc)})")
            orientation = 1
    if isinstance(orientation, int) and orientation in _UPRIGHT:
        im = im.transpose(_UPRIGHT[orientation])
    return _rgb(im)


def decode_image(data: bytes, source: str) -> np.ndarray:
    """Decode image bytes to an H×W×3 uint8 RGB array (grayscale becomes 3 channels, EXIF orientation applied).

    libjpeg returns a grey-filled image for a truncated JPEG and only warns, so a JPEG
    must also end with its end-of-image marker (some cameras append a few bytes after it).
    A file that cannot be decoded is a :class:`CrowdtkError` naming it, with the decoder's reason;
    warnings about a file decoded all the same (corrupt metadata) are recorded on the
    ``crowdtk.decoders`` logger, never printed. Nothing is written to stderr: Pillow decodes
    (see above), and a TIFF goes through :func:`crowdtk.native_stderr.capture`.
    """
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-4096:]:
        raise CrowdtkError(
            f"{source}: truncated JPEG (no end-of-image marker)", "re-export or re-download the image, or remove it"
        )
    messages: list[str] = []
    try:
        image = _decode_with_pillow(data, source, messages)
    except CrowdtkError:
        raise
    # Whatever Pillow raises on a damaged file is the same problem for the user: OSError ("image file is
    # truncated", "broken data stream"), SyntaxError (a bad PNG chunk), ValueError, EOFError, struct.error
    # and others from its format parsers.
    except Exception as exc:  # noqa: BLE001
        # A file Pillow could not identify after warning about it (a TIFF cut short): the warnings are the reason.
        reasons = messages if isinstance(exc, UnidentifiedImageError) and messages else [_reason(exc), *messages]
        raise CrowdtkError(f"{source}: not a readable image ({summary(reasons)})", UNREADABLE_FIX) from None
    if image is None:  # a TIFF
        image, native = capture(cv2.imdecode, np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
        messages += native
        if image is None:
            reason = f" ({summary(messages)})" if messages else ""
            raise CrowdtkError(f"{source}: not a readable image{reason}", UNREADABLE_FIX)
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    log_messages(source, messages)
    return image


def check_image_size(width: int, height: int, source: str) -> None:
    """Refuse an image smaller than the output stride on either side (no whole output cell)."""
    if width < STRIDE or height < STRIDE:
        raise CrowdtkError(
            f"{source}: image is {width}x{height} px, smaller than the counters' output stride ({STRIDE} px)",
            "remove it, or pass --skip-bad to leave it out",
        )


# The largest image crowdtk decodes whole: 100 Mpx is 300 MB as RGB. Larger images are indexed from
# their file header and refused with a clear error where a stage would decode them whole.
MAX_DECODED_PIXELS = 100_000_000


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) from the image file's header, without decoding its pixels.

    Pillow's warnings about the header are not recorded here: the decode that follows parses the same
    header and records them once (an image too large to decode is indexed by its size alone)."""
    input_status(path, "image", IMAGE_MISSING_FIX)
    try:
        with open(path, "rb") as fh:
            with _pillow_warnings([]):
                size = Image.open(fh, formats=_FORMATS).size  # reads the header only
    except FileNotFoundError:
        raise CrowdtkError(f"{path}: image not found", IMAGE_MISSING_FIX) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        raise CrowdtkError(f"{path}: not a readable image", UNREADABLE_FIX) from None
    return size


def check_decodable(width: int, height: int, source: str, fix: str) -> None:
    """Refuse, before decoding, an image too large to hold in memory whole (MAX_DECODED_PIXELS)."""
    if width * height > MAX_DECODED_PIXELS:
        raise CrowdtkError(
            f"{source}: image is {width}x{height} px ({width * height / 1e6:.0f} Mpx), more than the "
            f"{MAX_DECODED_PIXELS / 1e6:.0f} Mpx crowdtk decodes whole",
            fix,
        )


# --------------------------------------------------------------------------- input files, and whether they changed

_NOT_REGULAR = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def input_status(path: str | os.PathLike[str], what: str, missing_fix: str) -> os.stat_result:
    """The status of an input file (after symlinks), refused unless it is a regular file, before anything opens it:
    opening a FIFO waits for a writer that may never come (a folder listing of images can hold one), and a
    device may never end. ``what`` names the kind of file ("image", "points file") in the error."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        raise CrowdtkError(f"{path}: {what} not found", missing_fix) from None
    except OSError as exc:
        raise CrowdtkError(f"{path}: cannot read {what} ({exc.strerror})", "check the file's permissions") from None
    if not stat.S_ISREG(status.st_mode):
        kind = next((name for test, name in _NOT_REGULAR if test(status.st_mode)), "not a regular file")
        raise CrowdtkError(f"{path}: is {kind}, not a regular file", "remove it, or pass --skip-bad to leave it out")
    return status


def _read_input(path: str | os.PathLike[str], what: str, missing_fix: str) -> bytes:
    input_status(path, what, missing_fix)
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise CrowdtkError(f"{path}: {what} not found", missing_fix) from None
    except OSError as exc:
        raise CrowdtkError(f"{path}: cannot read {what} ({exc.strerror})", "check the file's permissions") from None


IMAGE_MISSING_FIX = "check the path, or re-run crowdtk index"
CHANGED_FIX = "re-run crowdtk index, then the later steps"


def changed_since_indexed(path: str | os.PathLike[str]) -> CrowdtkError:
    """The one error of every stage that finds an image or points file other than ``index`` recorded."""
    return CrowdtkError(f"{path}: changed since it was indexed (sha256 differs)", CHANGED_FIX)


def check_bytes(data: bytes, sha256: str | None, path: str | os.PathLike[str]) -> None:
    """Refuse bytes read from ``path`` whose digest is not the ``sha256`` recorded at indexing (None: not recorded).

    For the stages that read the bytes anyway: hashing them costs 0.10 ms of CPU per Part B image (1024x768
    JPEG, ~150 kB), against 8.8 ms to decode it in the same run (benchmarks/decode.py, see decode_image)."""
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise changed_since_indexed(path)


def check_unchanged(
    path: str | os.PathLike[str], sha256: str, size: int | None = None, mtime_ns: int | None = None
) -> None:
    """Refuse an image other than the one indexed, for a stage that does not read its bytes: the same size and
    modification time as recorded pass at the cost of one stat; otherwise (a copied data set has new
    modification times; an older manifest records neither) the file's sha256 decides."""
    status = input_status(path, "image", IMAGE_MISSING_FIX)
    if size is not None and status.st_size != size:
        raise changed_since_indexed(path)
    if size is not None and mtime_ns is not None and status.st_mtime_ns == mtime_ns:
        return
    if file_digest(path) != sha256:
        raise changed_since_indexed(path)


def read_image_bytes(path: str | os.PathLike[str], sha256: str | None = None) -> bytes:
    """An image file's bytes, refused when it is no regular file, or (``sha256`` given) not the file indexed."""
    data = _read_input(path, "image", IMAGE_MISSING_FIX)
    check_bytes(data, sha256, path)
    return data


def read_image(path: str | os.PathLike[str], sha256: str | None = None) -> np.ndarray:
    """Decode an image whole (RGB), after checking from its header that it is not too large to; with
    ``sha256`` (the digest its manifest, regions or labels record), refused when the file changed since."""
    input_status(path, "image", IMAGE_MISSING_FIX)  # before the header is opened
    try:
        width, height = image_size(path)
    except CrowdtkError:
        width = height = 0  # unreadable: the lines below say why
    check_decodable(width, height, str(path), "cut it into parts of at most 10000x10000 px, or leave it out")
    data = read_image_bytes(path)
    image = decode_image(data, str(path))
    # After decoding: a file damaged since indexing is named with what is wrong with it (truncated, not
    # an image), which the user must repair; one that decodes is still refused if it is another image.
    check_bytes(data, sha256, path)
    return image


class RecordedImage(Protocol):
    """What a manifest, labels or regions record says of its image (read-only: the records are frozen)."""

    @property
    def image(self) -> str: ...

    @property
    def sha256(self) -> str: ...

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...


def check_recorded_size(image: np.ndarray, entry: RecordedImage) -> None:
    """Refuse pixels whose size is not the one recorded at indexing (the file was replaced by another image)."""
    if image.shape[:2] != (entry.height, entry.width):
        raise CrowdtkError(
            f"{entry.image}: is {image.shape[1]}x{image.shape[0]} px, {entry.width}x{entry.height} when it was indexed",
            "the image changed; re-run crowdtk index (and the select/import after it)",
        )


def read_recorded_image(entry: RecordedImage) -> np.ndarray:
    """The image of a record, checked against its recorded digest and size."""
    image = read_image(entry.image, entry.sha256)
    check_recorded_size(image, entry)
    return image


def read_points(path: str | os.PathLike[str], sha256: str | None = None) -> np.ndarray:
    """Read head points as an (N, 2) float64 array of (x, y) pixels.

    Supported: ShanghaiTech ``.mat`` (``image_info[0,0][0,0][0]``), UCF_CC_50 ``.mat``
    (``annPoints``), ``.txt`` ("x y" per line, ``#`` comments), ``.csv`` (x,y columns,
    optional header), ``.json`` (``[[x, y], …]``, ``[{"x":…, "y":…}, …]`` or
    ``{"points": …}``) and ``.npy`` (an (N, 2) numeric array, loaded without pickle).
    A zero-byte file is refused: a labeler's export that failed must not read as "no heads"
    (write a comment line or ``[]`` for an image without heads). With ``sha256`` (the digest the
    manifest records) a file edited since indexing is refused.
    """
    return read_points_and_digest(path, sha256)[0]


# The digest of a zero-byte file: a points file recorded with it was indexed from a layout whose empty annotation
# file is an image without heads (JHU-Crowd++), so every later stage reads it as such.
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def read_points_and_digest(
    path: str | os.PathLike[str], sha256: str | None = None, empty_means_no_heads: bool = False
) -> tuple[np.ndarray, str]:
    """:func:`read_points`, and the sha256 of the bytes the points were read from (what ``index`` records).

    ``empty_means_no_heads``: a zero-byte file is an image without heads (``index``, for a layout that writes
    such files); later stages accept one when the manifest recorded it so (``sha256`` is :data:`EMPTY_SHA256`)."""
    p = Path(path)
    source = str(path)
    data = _read_input(path, "points file", "add the annotation file, or remove its image")
    if not data and (empty_means_no_heads or sha256 == EMPTY_SHA256):
        return np.zeros((0, 2), dtype=np.float64), EMPTY_SHA256
    if not data:
        raise CrowdtkError(
            f"{source}: empty points file",
            "an image without heads needs a comment line ('# no heads') or '[]', not an empty file",
        )
    points = _parse_points(data, p)
    check_bytes(data, sha256, path)  # after parsing, as in read_image: a broken file is named with its problem
    return points, sha256 or hashlib.sha256(data).hexdigest()


def _parse_points(data: bytes, p: Path) -> np.ndarray:
    source = str(p)
    suffix = p.suffix.lower()
    points: np.ndarray | list[Any]  # the text formats' parsers return lists of [x, y]
    try:
        if suffix == ".mat":
            points = _read_mat(data, p)
        elif suffix == ".npy":
            points = np.load(io.BytesIO(data), allow_pickle=False)
        elif suffix == ".json":
            points = _read_json_points(data, p)
        elif suffix == ".csv":
            points = _read_csv_points(data)
        elif suffix == ".txt":
            points = _read_txt_points(data)
        else:
            raise CrowdtkError(f"{source}: unknown points format '{suffix}'", f"use one of {', '.join(POINT_SUFFIXES)}")
    except CrowdtkError:
        raise
    except RecursionError:
        raise CrowdtkError(
            f"{source}: unreadable points file (nested too deeply)", "fix or re-export the annotations"
        ) from None
    # Whatever a parser raises on a malformed file is the same problem for the user: scipy's
    # MatReadError, NotImplementedError for MATLAB v7.3 files, csv.Error, numpy's
    # ValueError/SyntaxError for a bad .npy header, MemoryError for an absurd shape, and others.
    except Exception as exc:  # noqa: BLE001
        raise CrowdtkError(
            f"{source}: unreadable points file ({type(exc).__name__}: {exc})", "fix or re-export the annotations"
        ) from None
    if isinstance(points, np.ndarray) and np.iscomplexobj(points):  # .mat and .npy; JSON has no complex numbers
        raise CrowdtkError(f"{source}: points are complex numbers", "write real x, y pixel coordinates")
    try:
        points = np.asarray(points, dtype=np.float64)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise CrowdtkError(f"{source}: points are not numbers", "fix or re-export the annotations") from None
    if points.size == 0:
        return np.zeros((0, 2), dtype=np.float64)
    if points.ndim != 2 or points.shape[1] < 2:
        raise CrowdtkError(
            f"{source}: points have shape {points.shape}, expected (N, 2)", "write one 'x y' pair per head"
        )
    points = points[:, :2]
    if not np.isfinite(points).all():
        bad = int((~np.isfinite(points)).any(axis=1).sum())
        raise CrowdtkError(f"{source}: {bad} point(s) are NaN or infinite", "fix the annotations")
    return points


# MAT v5 data types (MATLAB's "MAT-File Format", table 1-1) and their item sizes: what a numeric or
# text sub-element may be.
_MAT_ITEM_SIZE = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 9: 8, 12: 8, 13: 8, 16: 1, 17: 2, 18: 4}
_MI_INT32, _MI_UINT32, _MI_MATRIX, _MI_COMPRESSED = 5, 6, 14, 15
# Matrix classes (the low byte of the array flags): cell, struct and object hold sub-matrices after
# this many leading elements (flags, dimensions, name[, class name][, field name length, field names]);
# char, sparse and the numeric classes hold only numeric elements. Function and opaque classes
# (16, 17) never hold head points and are refused.
_MAT_CONTAINERS = {1: 3, 2: 5, 3: 6}
_MAT_ARRAYS = frozenset(range(4, 16))
_MAT_MAX_DEPTH = 32
_MAT_MAX_INFLATED = 256 << 20  # bytes: a points file is small; refuse a zip bomb


def check_mat_structure(data: bytes, source: str) -> None:
    """Walk the data elements of a MAT v5 file and refuse what scipy's reader would crash on.

    ``scipy.io.loadmat`` (1.17) trusts element tags in C: a corrupt file whose element type is
    not a MAT type (0, 8, 19, …), a compressed element inside a matrix, a matrix whose dimensions
    element holds no dimension, or a matrix whose class does not match its contents (a numeric
    class holding sub-matrices) ends the process with a segmentation fault instead of an exception
    (tests/test_fuzz.py found these). So before scipy sees a file, every element is checked here:
    a known type, a size that fits in its parent and is a whole number of items, compression only
    at the top level, each matrix starting with its flags, at least two non-negative dimensions and
    a name, contents that fit its class, bounded nesting and inflated size. Files that are not MAT v5 (v4,
    v7.3/HDF5) are left to scipy, which raises on them.
    """
    if len(data) < 128 or 0 in data[:4] or data[126:128] not in (b"IM", b"MI"):
        return  # not a v5 file (v4 starts with zero bytes); scipy tells which
    order: Literal["little", "big"] = "little" if data[126:128] == b"IM" else "big"
    if int.from_bytes(data[124:126], order) != 0x0100:
        return  # v7.3 (HDF5) or unknown: scipy refuses it

    def bad(why: str) -> CrowdtkError:
        return CrowdtkError(f"{source}: corrupt .mat file ({why})", "fix or re-export the annotations")

    def elements(buf: bytes, pos: int, end: int, top: bool) -> list[tuple[int, int, int, int]]:
        """(offset, type, body offset, size) of the elements in buf[pos:end]."""
        found = []
        while pos < end:
            if end - pos < 8:
                if top or any(buf[pos:end]):
                    raise bad(f"{end - pos} stray byte(s) at offset {pos}")
                break
            first = int.from_bytes(buf[pos : pos + 4], order)
            if first >> 16 and not top:  # small data element: type and size in one word, data in the next
                kind, size = first & 0xFFFF, first >> 16
                if size > 4:
                    raise bad(f"small element of size {size} at offset {pos}")
                found.append((pos, kind, pos + 4, size))
                pos += 8
                continue
            kind, size = first, int.from_bytes(buf[pos + 4 : pos + 8], order)
            if pos + 8 + size > end:
                raise bad(f"element at offset {pos} runs past its end")
            found.append((pos, kind, pos + 8, size))
            pos += 8 + size + (0 if top else -size % 8)  # sub-elements are padded to 8 bytes
        return found

    def int32(buf: bytes, part: tuple[int, int, int, int]) -> int:
        return int.from_bytes(buf[part[2] : part[2] + 4], order, signed=True)

    def matrix(buf: bytes, pos: int, end: int, depth: int) -> None:
        if depth > _MAT_MAX_DEPTH:
            raise bad("nested too deeply")
        parts = elements(buf, pos, end, False)
        if not parts:
            return  # an empty matrix (e.g. an empty cell)
        where = f"matrix at offset {pos - 8}"
        if len(parts) < 3 or parts[0][1:4:2] != (_MI_UINT32, 8) or parts[1][1] != _MI_INT32 or parts[1][3] < 8:
            raise bad(f"{where} lacks its flags, dimensions and name")
        for offset, kind, _body, size in parts:
            if kind != _MI_MATRIX and kind not in _MAT_ITEM_SIZE:
                raise bad(f"element of type {kind} at offset {offset}")
            if kind != _MI_MATRIX and size % _MAT_ITEM_SIZE[kind]:
                raise bad(f"element at offset {offset} holds {size} bytes, not whole items of type {kind}")
        flags = buf[parts[0][2] : parts[0][2] + 4]
        mx_class, is_complex = (flags[0], flags[1] & 0x08) if order == "little" else (flags[3], flags[2] & 0x08)
        dims = [int32(buf, (0, 0, parts[1][2] + 4 * i, 4)) for i in range(parts[1][3] // 4)]
        if min(dims) < 0:
            raise bad(f"{where} has negative dimensions {dims}")
        cells = math.prod(dims)
        # scipy reads exactly as many elements as the class and dimensions call for, past the
        # matrix's end if they are missing: the count must match what is there.
        if mx_class in _MAT_CONTAINERS:
            leading = _MAT_CONTAINERS[mx_class]  # flags, dims, name[, class name][, field name length, field names]
            if len(parts) < leading:
                raise bad(f"{where} (class {mx_class}) lacks its field names")
            wanted = cells
            if mx_class in (2, 3):
                length, names = parts[leading - 2], parts[leading - 1]
                if length[1] != _MI_INT32 or length[3] != 4 or int32(buf, length) <= 0 or names[3] % int32(buf, length):
                    raise bad(f"{where} (class {mx_class}) has a bad field name length")
                wanted = cells * (names[3] // int32(buf, length))
            if len(parts) - leading != wanted:
                raise bad(
                    f"{where} (class {mx_class}, dimensions {dims}) holds {len(parts) - leading} matrices, not {wanted}"
                )
            for offset, kind, body, size in parts[leading:]:
                if kind != _MI_MATRIX:
                    raise bad(f"element of type {kind} at offset {offset} where {where} holds matrices")
                matrix(buf, body, body + size, depth + 1)
        elif mx_class in _MAT_ARRAYS:
            wanted = 4 if mx_class == 4 else (6 if mx_class == 5 else 4) + (1 if is_complex else 0)
            if len(parts) != wanted or any(kind == _MI_MATRIX for _, kind, _, _ in parts):
                raise bad(f"{where} (class {mx_class}) holds {len(parts)} elements, not {wanted} numeric ones")
        else:
            raise bad(f"{where} of class {mx_class}")

    for offset, kind, body, size in elements(data, 128, len(data), True):
        if kind == _MI_MATRIX:
            matrix(data, body, body + size, 1)
        elif kind == _MI_COMPRESSED:
            inflater = zlib.decompressobj()
            try:
                inner = inflater.decompress(data[body : body + size], _MAT_MAX_INFLATED)
            except zlib.error as exc:
                raise bad(f"compressed element at offset {offset}: {exc}") from None
            if inflater.unconsumed_tail:
                raise bad(f"compressed element at offset {offset} inflates past {_MAT_MAX_INFLATED >> 20} MB")
            for _, inner_kind, inner_body, inner_size in elements(inner, 0, len(inner), True):
                if inner_kind != _MI_MATRIX:
                    raise bad(f"compressed element at offset {offset} holds an element of type {inner_kind}")
                matrix(inner, inner_body, inner_body + inner_size, 1)
        else:
            raise bad(f"top-level element of type {kind} at offset {offset}")


def _read_mat(data: bytes, p: Path) -> np.ndarray:
    check_mat_structure(data, str(p))
    mat = scipy.io.loadmat(io.BytesIO(data))
    if "image_info" in mat:  # ShanghaiTech
        return mat["image_info"][0, 0][0, 0][0]
    if "annPoints" in mat:  # UCF_CC_50
        return mat["annPoints"]
    keys = sorted(k for k in mat if not k.startswith("__"))
    raise CrowdtkError(
        f"{p}: .mat file has neither 'image_info' (ShanghaiTech) nor 'annPoints' (UCF_CC_50); keys: {keys}",
        "convert the annotations to the generic points layout",
    )


def _read_json_points(raw: bytes, p: Path) -> list:
    data = json.loads(raw.decode("utf-8"))
    if isinstance(data, dict):
        if "points" not in data:
            raise CrowdtkError(
                f"{p}: JSON object without a 'points' list", 'write [[x, y], …] or {"points": [[x, y], …]}'
            )
        data = data["points"]
    if not isinstance(data, list):
        raise CrowdtkError(f"{p}: JSON points must be a list", "write [[x, y], …]")
    out = []
    for item in data:
        if isinstance(item, dict):
            out.append([item["x"], item["y"]])
        elif isinstance(item, list) and len(item) >= 2:
            out.append(item[:2])
        else:
            raise CrowdtkError(f'{p}: JSON point {item!r} is neither [x, y] nor {{"x", "y"}}', "fix the annotations")
    return out


def _read_csv_points(data: bytes) -> list:
    rows = [row for row in csv.reader(data.decode("utf-8").splitlines()) if row and not row[0].startswith("#")]
    if rows and rows[0] and not _is_number(rows[0][0]):
        header = [h.strip().lower() for h in rows[0]]
        ix, iy = (header.index("x"), header.index("y")) if {"x", "y"} <= set(header) else (0, 1)
        rows = rows[1:]
    else:
        ix, iy = 0, 1
    return [[float(r[ix]), float(r[iy])] for r in rows]


def _read_txt_points(data: bytes) -> list:
    out = []
    for line in data.decode("utf-8").splitlines():
        line = line.split("#", 1)[0].replace(",", " ").strip()
        if line:
            values = line.split()
            out.append([float(values[0]), float(values[1])])
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def inside(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boolean mask of the points that lie on the image."""
    return (points[:, 0] >= 0) & (points[:, 0] < width) & (points[:, 1] >= 0) & (points[:, 1] < height)


NO_ANNOTATIONS_FIX = (
    "use images with ground truth: for NWPU-Crowd, whose test split has none, index the validation split "
    "(crowdtk index ROOT --split val); or leave such images out of the manifest"
)


def read_points_on_image(
    path: str | os.PathLike[str] | None, width: int, height: int, sha256: str | None = None
) -> tuple[np.ndarray, int]:
    """Points that lie on a ``width``×``height`` image, and how many were dropped
    (``sha256`` as in :func:`read_points`)."""
    # None (a manifest's "points": null): the data set publishes no annotations for the image. Its ground truth
    # is unknown, not empty, so a stage that needs it (eval, gen-density) is refused rather than told "0 heads".
    if path is None:
        raise CrowdtkError(
            'an image of the manifest has no annotations ("points": null, as in NWPU-Crowd\'s test split)',
            NO_ANNOTATIONS_FIX,
        )
    points = read_points(path, sha256)
    keep = inside(points, width, height)
    return points[keep], int((~keep).sum())
