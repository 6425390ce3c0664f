"""Readers for crowd images and head-point annotations in the layouts people have.

Coordinates are pixels, x then y, origin at the top-left corner of the image; a point
belongs to the image when ``0 <= x < width`` and ``0 <= y < height``.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import cv2
import numpy as np
import scipy.io

from crowdtk.errors import CrowdtkError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
POINT_SUFFIXES = (".txt", ".csv", ".json", ".npy", ".mat")


def decode_image(data: bytes, source: str) -> np.ndarray:
    """Decode image bytes to an H×W×3 uint8 RGB array (grayscale becomes 3 channels).

    libjpeg returns a grey-filled image for a truncated JPEG and only warns, so a JPEG
    must also end with its end-of-image marker (some cameras append a few bytes after it).
    """
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-4096:]:
        raise CrowdtkError(f"{source}: truncated JPEG (no end-of-image marker)", "re-export or re-download the image, or remove it")
    buf = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if image is None:
        raise CrowdtkError(f"{source}: not a readable image", "check that the file is a complete JPEG/PNG image, or remove it")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise CrowdtkError(f"{path}: image not found", "check the path, or re-run crowdtk index") from None
    except OSError as exc:
        raise CrowdtkError(f"{path}: cannot read image ({exc.strerror})", "check the file's permissions") from None
    return decode_image(data, str(path))


def read_points(path: str | os.PathLike[str]) -> np.ndarray:
    """Read head points as an (N, 2) float64 array of (x, y) pixels.

    Supported: ShanghaiTech ``.mat`` (``image_info[0,0][0,0][0]``), UCF_CC_50 ``.mat``
    (``annPoints``), ``.txt`` ("x y" per line, ``#`` comments), ``.csv`` (x,y columns,
    optional header), ``.json`` (``[[x, y], …]``, ``[{"x":…, "y":…}, …]`` or
    ``{"points": …}``) and ``.npy`` (an (N, 2) numeric array, loaded without pickle).
    A zero-byte file is refused: a labeler's export that failed must not read as "no heads"
    (write a comment line or ``[]`` for an image without heads).
    """
    p = Path(path)
    source = str(path)
    if not p.exists():
        raise CrowdtkError(f"{source}: points file not found", "add the annotation file, or remove its image")
    if p.stat().st_size == 0:
        raise CrowdtkError(
            f"{source}: empty points file",
            "an image without heads needs a comment line ('# no heads') or '[]', not an empty file",
        )
    suffix = p.suffix.lower()
    try:
        if suffix == ".mat":
            points = _read_mat(p)
        elif suffix == ".npy":
            points = np.load(p, allow_pickle=False)
        elif suffix == ".json":
            points = _read_json_points(p)
        elif suffix == ".csv":
            points = _read_csv_points(p)
        elif suffix == ".txt":
            points = _read_txt_points(p)
        else:
            raise CrowdtkError(f"{source}: unknown points format '{suffix}'", f"use one of {', '.join(POINT_SUFFIXES)}")
    except CrowdtkError:
        raise
    # scipy.io.loadmat signals MATLAB v7.3 (HDF5) files with NotImplementedError.
    except (ValueError, TypeError, KeyError, IndexError, OSError, UnicodeDecodeError, NotImplementedError) as exc:
        raise CrowdtkError(f"{source}: unreadable points file ({type(exc).__name__}: {exc})", "fix or re-export the annotations") from None
    try:
        points = np.asarray(points, dtype=np.float64)
    except (ValueError, TypeError):
        raise CrowdtkError(f"{source}: points are not numbers", "fix or re-export the annotations") from None
    if points.size == 0:
        return np.zeros((0, 2), dtype=np.float64)
    if points.ndim != 2 or points.shape[1] < 2:
        raise CrowdtkError(f"{source}: points have shape {points.shape}, expected (N, 2)", "write one 'x y' pair per head")
    points = points[:, :2]
    if not np.isfinite(points).all():
        bad = int((~np.isfinite(points)).any(axis=1).sum())
        raise CrowdtkError(f"{source}: {bad} point(s) are NaN or infinite", "fix the annotations")
    return points


def _read_mat(p: Path) -> np.ndarray:
    mat = scipy.io.loadmat(p)
    if "image_info" in mat:  # ShanghaiTech
        return mat["image_info"][0, 0][0, 0][0]
    if "annPoints" in mat:  # UCF_CC_50
        return mat["annPoints"]
    keys = sorted(k for k in mat if not k.startswith("__"))
    raise CrowdtkError(
        f"{p}: .mat file has neither 'image_info' (ShanghaiTech) nor 'annPoints' (UCF_CC_50); keys: {keys}",
        "convert the annotations to the generic points layout",
    )


def _read_json_points(p: Path) -> list:
    data = json.loads(p.read_text(encoding="utf-8"))
    if isinstance(data, dict):
        if "points" not in data:
            raise CrowdtkError(f"{p}: JSON object without a 'points' list", "write [[x, y], …] or {\"points\": [[x, y], …]}")
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
            raise CrowdtkError(f"{p}: JSON point {item!r} is neither [x, y] nor {{\"x\", \"y\"}}", "fix the annotations")
    return out


def _read_csv_points(p: Path) -> list:
    rows = [row for row in csv.reader(p.read_text(encoding="utf-8").splitlines()) if row and not row[0].startswith("#")]
    if rows and rows[0] and not _is_number(rows[0][0]):
        header = [h.strip().lower() for h in rows[0]]
        ix, iy = (header.index("x"), header.index("y")) if {"x", "y"} <= set(header) else (0, 1)
        rows = rows[1:]
    else:
        ix, iy = 0, 1
    return [[float(r[ix]), float(r[iy])] for r in rows]


def _read_txt_points(p: Path) -> list:
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
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


def read_points_on_image(path: str | os.PathLike[str] | None, width: int, height: int) -> tuple[np.ndarray, int]:
    """Points that lie on a ``width``×``height`` image, and how many were dropped."""
    if path is None:
        return np.zeros((0, 2), dtype=np.float64), 0
    points = read_points(path)
    keep = inside(points, width, height)
    return points[keep], int((~keep).sum())
