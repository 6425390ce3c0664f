"""`synth`: procedural crowd scenes with exact head points (the embedded demo and test data).

A scene is drawn in the ways the paper's method relies on:

- **Perspective.** A ground plane seen from above at an angle: head radius grows linearly
  with the image row, ``r(y) = k·(y − y_h)`` for a horizon row ``y_h`` (inside the image,
  with sky and buildings above it, or above the top edge). People fill the ground at a
  fixed share of the places available at their size, so the number per pixel goes as
  ``1/r²``: heads are smaller and denser toward the top and density varies vertically.
- **Groups side by side.** The width is cut into 2–4 segments, each a dense group, a
  sparse group or empty background, with soft edges, a depth band and low-frequency
  variation, so density varies horizontally (what strip selection has to find).
- **People that look alike.** A person is a torso with shoulders in the image's clothing
  palette, a skin-coloured head ellipse and a darker hair cap (or the back of the head);
  far people are drawn first, so near heads partly cover far ones in dense groups.
- **Textured backgrounds.** Ground colour with gradient and multi-scale noise, paving
  lines toward the vanishing point, sky and buildings with windows, poles and bushes.

Images and counts vary a lot (empty images to ~300 heads at 384×256). Every image has its
own generator seeded by ``(seed, split, index)``, so the output does not depend on the
number of workers, and the same seed gives byte-identical files.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy.spatial import cKDTree

from crowdtk.errors import CrowdtkError
from crowdtk.formats import ManifestEntry, Provenance, manifest_header, write_jsonl
from crowdtk.index import build_manifest
from crowdtk.workers import process_pool

SPLITS = ("train", "test")
SHIFT = 4  # cv2 drawing with 4 fractional bits: coordinates are exact to 1/16 pixel
CELL = 4  # pixels per cell of the crowd-intensity grid

# Colours are RGB.
SKIN = np.array(
    [(255, 219, 172), (241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36), (98, 64, 42)], dtype=np.float64
)
HAIR = np.array(
    [(20, 16, 14), (45, 32, 22), (75, 50, 30), (110, 80, 50), (150, 140, 130), (30, 30, 34)], dtype=np.float64
)
GROUND = np.array(
    [(112, 112, 116), (168, 158, 138), (86, 120, 62), (150, 98, 82), (70, 72, 80), (190, 186, 178)], dtype=np.float64
)
SKY = np.array([(150, 190, 235), (200, 210, 220), (120, 150, 200), (225, 205, 180)], dtype=np.float64)


@dataclass(frozen=True)
class SynthConfig:
    """Defaults of `synth`."""

    train: int = 48  # images in train/
    test: int = 24  # images in test/
    width: int = 384
    height: int = 256
    seed: int = 0
    crowd: float = 1.0  # multiplies the density of every group
    head_near: tuple[float, float] = (5.5, 10.0)  # head radius range at the bottom row, px per 256 px of height
    far_ratio: tuple[float, float] = (0.2, 0.45)  # head radius at the top of the crowd / at the bottom
    min_radius: float = 1.4  # no people where heads would be smaller (px per 256 px of height)
    spacing: float = 2.3  # a full crowd has one head per (spacing · r)² pixels
    min_distance: float = 1.45  # heads closer than this times their mean radius are thinned out
    horizon_inside: float = 0.35  # share of images whose horizon (sky, buildings) is in view
    empty_share: float = 0.06  # share of images without people

    def validate(self) -> None:
        if self.train < 0 or self.test < 0 or self.train + self.test < 1:
            raise CrowdtkError(
                f"--train {self.train} --test {self.test}: need at least one image and no negative counts",
                "pass e.g. --train 48 --test 24",
            )
        if not (32 <= self.width <= 8192 and 32 <= self.height <= 8192):
            raise CrowdtkError(
                f"image size {self.width}x{self.height} is outside 32..8192 pixels",
                "pass e.g. --width 384 --height 256",
            )
        if self.seed < 0:
            raise CrowdtkError(f"--seed must be 0 or more, got {self.seed}", "pass e.g. --seed 0")
        if not (0 <= self.crowd <= 10):
            raise CrowdtkError(f"--crowd must be between 0 and 10, got {self.crowd}", "pass e.g. --crowd 1")
        lo_near, hi_near = self.head_near
        lo_far, hi_far = self.far_ratio
        if not (
            0 < lo_near <= hi_near
            and 0 < lo_far <= hi_far < 1
            and self.min_radius > 0
            and self.spacing > 0
            and self.min_distance >= 0
            and 0 <= self.horizon_inside <= 1
            and 0 <= self.empty_share <= 1
        ):
            raise CrowdtkError(
                "invalid scene geometry in the synth configuration",
                "keep 0 < far_ratio < 1, positive head sizes, and shares in [0, 1]",
            )

    def count(self, split: str) -> int:
        return self.train if split == "train" else self.test


@dataclass
class Scene:
    """One generated image: RGB pixels, head centres on the image (x, y) and their radii."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    points: np.ndarray  # (N, 2) float64, rounded to 0.01 px, all on the image
    radii: np.ndarray  # (N,) float64 head radius of each point, px


def image_name(split: str, index: int) -> str:
    return f"{split}_{index:04d}"


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one image: independent of the others and of the worker count."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


# --------------------------------------------------------------------------- helpers


def _smooth_noise(
    rng: np.random.Generator, height: int, width: int, cells: tuple[int, int], channels: int = 1
) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a coarse random grid, bicubically enlarged."""
    grid = rng.uniform(-1.0, 1.0, (cells[0] + 3, cells[1] + 3, channels)).astype(np.float32)
    big = cv2.resize(
        grid, (width + 2 * width // cells[1] + 4, height + 2 * height // cells[0] + 4), interpolation=cv2.INTER_CUBIC
    )
    big = big.reshape(big.shape[0], big.shape[1], channels)
    oy, ox = height // cells[0] + 2, width // cells[1] + 2
    return big[oy : oy + height, ox : ox + width]


def _jitter(rng: np.random.Generator, colour: np.ndarray, amount: float) -> np.ndarray:
    return np.clip(colour + rng.normal(0.0, amount, colour.shape), 0, 255)


def _fx(v: float) -> int:
    return int(round(v * (1 << SHIFT)))


def _pt(x: float, y: float) -> tuple[int, int]:
    return _fx(x), _fx(y)


def _col(c: np.ndarray) -> tuple[int, int, int]:
    return int(c[0]), int(c[1]), int(c[2])


def _ellipse(
    img: np.ndarray, x: float, y: float, ax: float, ay: float, colour: np.ndarray, start: float = 0, end: float = 360
) -> None:
    cv2.ellipse(img, _pt(x, y), (max(1, _fx(ax)), max(1, _fx(ay))), 0, start, end, _col(colour), -1, cv2.LINE_AA, SHIFT)


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Camera:
    horizon: float  # row of the horizon (may be negative: above the image)
    slope: float  # head radius per row below the horizon
    top: float  # first row where people can be (heads too small above it)

    def radius(self, y: np.ndarray | float) -> np.ndarray | float:
        return self.slope * (y - self.horizon)


def _camera(rng: np.random.Generator, config: SynthConfig) -> _Camera:
    scale = config.height / 256
    h = config.height
    r_near = rng.uniform(*config.head_near) * scale
    r_min = config.min_radius * scale
    if rng.random() < config.horizon_inside:
        horizon = rng.uniform(0.1, 0.3) * h
        slope = r_near / (h - horizon)
    else:
        r_top = max(r_min, rng.uniform(*config.far_ratio) * r_near)
        slope = (r_near - r_top) / h
        horizon = -r_top / slope
    top = horizon + r_min / slope
    return _Camera(horizon=horizon, slope=slope, top=top)


def _intensity(
    rng: np.random.Generator, config: SynthConfig, cam: _Camera, pad: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expected heads per cell over the padded canvas, and the cell-corner coordinates."""
    w, h = config.width, config.height
    xs = np.arange(-pad, w + pad, CELL, dtype=np.float64)
    ys = np.arange(-pad, h, CELL, dtype=np.float64)
    gx, gy = len(xs), len(ys)
    cx, cy = xs + CELL / 2, ys + CELL / 2

    if rng.random() < config.empty_share:
        return np.zeros((gy, gx)), xs, ys
    # The image's crowd level: sparse, medium or dense at its densest group.
    level = rng.choice(3, p=[0.32, 0.36, 0.32])
    peak = (rng.uniform(0.04, 0.12), rng.uniform(0.15, 0.35), rng.uniform(0.4, 0.8))[level] * config.crowd

    # Segments side by side: dense group, sparse group, empty background.
    n_seg = int(rng.integers(2, 5))
    while True:
        cuts = np.sort(rng.uniform(0, 1, n_seg - 1))
        edges = np.concatenate([[0.0], cuts, [1.0]])
        if np.diff(edges).min() >= 0.12:
            break
    kinds = rng.choice(3, size=n_seg, p=[0.45, 0.3, 0.25])  # 0 dense, 1 sparse, 2 empty
    kinds[rng.integers(n_seg)] = 0  # at least one dense group
    if (kinds == 0).all():
        kinds[rng.integers(n_seg)] = rng.integers(1, 3)  # and at least one that is not
    people_rows = (max(cam.top, 0.0), float(h))
    field = np.zeros((gy, gx))
    for s in range(n_seg):
        if kinds[s] == 2:
            continue
        share = 1.0 if kinds[s] == 0 else rng.uniform(0.1, 0.3)
        x0, x1 = edges[s] * w, edges[s + 1] * w
        if s == 0:
            x0 = -pad
        if s == n_seg - 1:
            x1 = w + pad
        # Depth band of the group: the full depth, or a part of at least 40% of it.
        lo, hi = people_rows
        if rng.random() < 0.5:
            span = rng.uniform(0.4, 1.0) * (hi - lo)
            lo = rng.uniform(lo, hi - span)
            hi = lo + span if lo + span < h - 8 else h + pad
        inside_x = (cx >= x0) & (cx < x1)
        inside_y = (cy >= lo) & (cy < hi)
        field[np.ix_(inside_y, inside_x)] = share
    soft = max(1.0, 10.0 * config.height / 256 / CELL)
    field = cv2.GaussianBlur(field.astype(np.float32), (0, 0), soft, borderType=cv2.BORDER_REPLICATE).astype(np.float64)
    field *= np.clip(1.0 + 0.45 * _smooth_noise(rng, gy, gx, (3, 5))[..., 0], 0.2, 1.6)
    field = np.clip(field * peak, 0.0, 0.95)

    radius = cam.radius(cy)
    valid = cy >= cam.top
    per_pixel = np.where(valid, 1.0 / (config.spacing * np.maximum(radius, 1e-3)) ** 2, 0.0)
    return field * per_pixel[:, None] * CELL * CELL, xs, ys


def _place_heads(rng: np.random.Generator, config: SynthConfig, cam: _Camera) -> tuple[np.ndarray, np.ndarray]:
    """Head centres (x, y) on the padded canvas, and radii; hard-core thinned, far first."""
    pad = int(math.ceil(10 * config.height / 256)) * CELL
    lam, xs, ys = _intensity(rng, config, cam, pad)
    total = float(lam.sum())
    n = int(rng.poisson(total)) if total > 0 else 0
    if n == 0:
        return np.zeros((0, 2)), np.zeros(0)
    cells = rng.choice(lam.size, size=n, p=(lam / total).ravel())
    iy, ix = np.divmod(cells, lam.shape[1])
    pts = np.c_[xs[ix] + rng.uniform(0, CELL, n), ys[iy] + rng.uniform(0, CELL, n)]
    pts = pts[pts[:, 1] >= cam.top]
    radii = cam.radius(pts[:, 1]) * np.clip(rng.normal(1.0, 0.07, len(pts)), 0.8, 1.2)
    # Hard-core thinning in random priority order: no two heads nearly on top of each other.
    order = rng.permutation(len(pts))
    pts, radii = pts[order], radii[order]
    keep = np.ones(len(pts), dtype=bool)
    if len(pts) > 1:
        pairs = cKDTree(pts).query_pairs(config.min_distance * float(radii.max()), output_type="ndarray")
        if len(pairs):
            d = np.linalg.norm(pts[pairs[:, 0]] - pts[pairs[:, 1]], axis=1)
            pairs = pairs[d < config.min_distance * 0.5 * (radii[pairs[:, 0]] + radii[pairs[:, 1]])]
            pairs = np.sort(pairs, axis=1)
            pairs = pairs[np.lexsort((pairs[:, 0], pairs[:, 1]))]  # grouped by the later point
            for i, j in pairs:
                if keep[i]:
                    keep[j] = False
    pts, radii = pts[keep], radii[keep]
    far_first = np.argsort(pts[:, 1], kind="stable")
    return pts[far_first], radii[far_first]


# --------------------------------------------------------------------------- drawing


def _background(rng: np.random.Generator, config: SynthConfig, cam: _Camera) -> np.ndarray:
    w, h = config.width, config.height
    scale = h / 256
    rows = np.arange(h, dtype=np.float32)[:, None, None]
    ground = _jitter(rng, GROUND[rng.integers(len(GROUND))], 12).astype(np.float32)
    tint = rng.uniform(0.85, 1.15)
    gradient = 1.0 + (tint - 1.0) * (rows - max(cam.horizon, 0)) / h
    img = np.broadcast_to(ground * gradient, (h, w, 3)).copy()
    img *= 1.0 + 0.18 * _smooth_noise(rng, h, w, (4, 6))
    img *= 1.0 + 0.07 * _smooth_noise(rng, h, w, (24, 36))
    img += 5 * rng.standard_normal((h, w, 1), dtype=np.float32)
    img = np.clip(img, 0, 255).astype(np.uint8)

    vx = rng.uniform(0.2, 0.8) * w
    vy = cam.horizon
    if rng.random() < 0.7:  # paving lines toward the vanishing point, and rows of tiles
        line = _col(np.clip(ground * rng.choice([0.75, 1.25]), 0, 255))
        for x_bottom in np.linspace(-w, 2 * w, int(rng.integers(8, 20))):
            cv2.line(img, _pt(vx, vy), _pt(x_bottom, h), line, max(1, int(scale)), cv2.LINE_AA, SHIFT)
        if rng.random() < 0.5:
            depth = np.arange(1, 40) * rng.uniform(0.8, 1.6)
            for y in vy + (h - vy) / depth:
                if max(cam.top, 0) <= y < h:
                    cv2.line(img, _pt(0, y), _pt(w, y), line, 1, cv2.LINE_AA, SHIFT)
    if cam.horizon > 0:  # sky above the horizon, buildings standing on it
        hz = int(math.ceil(cam.horizon))
        sky = _jitter(rng, SKY[rng.integers(len(SKY))], 10)
        fade = np.linspace(0.85, 1.1, hz, dtype=np.float32)[:, None, None]
        img[:hz] = np.clip(sky * fade + rng.normal(0, 2, (hz, w, 1)), 0, 255).astype(np.uint8)
        x = -rng.uniform(0, 40) * scale
        while x < w:
            bw = rng.uniform(25, 110) * scale
            top = cam.horizon - rng.uniform(0.3, 1.1) * cam.horizon
            wall = _jitter(rng, np.array([150, 140, 130]) * rng.uniform(0.5, 1.2), 25)
            cv2.rectangle(img, _pt(x, top), _pt(x + bw, cam.horizon + 1), _col(wall), -1, cv2.LINE_AA, SHIFT)
            win = _col(np.clip(wall * rng.uniform(0.4, 0.7), 0, 255))
            step = rng.uniform(6, 10) * scale
            for wy in np.arange(top + step / 2, cam.horizon - step / 2, step):
                for wx in np.arange(x + step / 2, x + bw - step / 2, step):
                    cv2.rectangle(img, _pt(wx, wy), _pt(wx + step * 0.5, wy + step * 0.55), win, -1, cv2.LINE_AA, SHIFT)
            x += bw + rng.uniform(0, 15) * scale
    return img


def _pole(img: np.ndarray, x: float, base: float, r: float, colour: tuple[int, int, int], thick: int) -> None:
    cv2.line(img, _pt(x, base), _pt(x, base - 14 * r), colour, thick, cv2.LINE_AA, SHIFT)
    _ellipse(img, x, base - 14 * r, 1.2 * r, 0.6 * r, np.array([230, 225, 200]))


def _bush(img: np.ndarray, blobs: list[tuple[float, float, np.ndarray]], r: float) -> None:
    for x, y, colour in blobs:
        _ellipse(img, x, y, 2.5 * r, 2.0 * r, colour)


def _props(
    rng: np.random.Generator, config: SynthConfig, cam: _Camera
) -> list[tuple[float, Callable[[np.ndarray], None]]]:
    """Things on the ground that are not people (poles, bushes): (depth row, how to draw).

    The depth row is the head row of a person standing on the same spot, so props and
    people are drawn together from far to near.
    """
    props: list[tuple[float, Callable[[np.ndarray], None]]] = []
    for _ in range(int(rng.integers(0, 7))):
        y = float(rng.uniform(max(cam.top, 0), config.height))
        r = float(cam.radius(y))
        x = float(rng.uniform(0, config.width))
        base = y + 9 * r  # where a person with the head at row y has the feet
        if rng.random() < 0.5:
            colour = _col(_jitter(rng, np.array([60, 60, 64]), 15))
            props.append(
                (y, functools.partial(_pole, x=x, base=base, r=r, colour=colour, thick=max(1, int(round(0.35 * r)))))
            )
        else:
            leaf = _jitter(rng, np.array([50, 95, 45]), 15)
            blobs = [
                (x + rng.normal(0, 1.5 * r), base - rng.uniform(1, 3) * r, leaf * rng.uniform(0.8, 1.2))
                for _ in range(4)
            ]
            props.append((y, functools.partial(_bush, blobs=blobs, r=r)))
    props.sort(key=lambda prop: prop[0])
    return props


def _draw_people(
    img: np.ndarray,
    rng: np.random.Generator,
    pts: np.ndarray,
    radii: np.ndarray,
    props: list[tuple[float, Callable[[np.ndarray], None]]],
) -> None:
    """Far to near: torso and shoulders, neck, head, hair (a cap, or the back of the head).

    Props are drawn in between, by depth. ``pts`` must be sorted by row (far first).
    """
    n = len(pts)
    pending = list(props)
    if n == 0:
        for _, draw in pending:
            draw(img)
        return
    # Per-image palettes: people in one image look alike, with slight variation.
    clothes = rng.uniform(20, 235, (int(rng.integers(2, 6)), 3))
    if rng.random() < 0.3:  # fans in team colours: one colour, lighter and darker
        clothes = clothes[:1] * np.array([[1.0], [0.8], [1.15]])
    skins = SKIN[rng.choice(len(SKIN), size=int(rng.integers(1, 4)), replace=False)]
    hairs = HAIR[rng.choice(len(HAIR), size=int(rng.integers(1, 3)), replace=False)]
    shirt = _jitter(rng, clothes[rng.integers(len(clothes), size=n)], 12)
    skin = _jitter(rng, skins[rng.integers(len(skins), size=n)], 8)
    hair = _jitter(rng, hairs[rng.integers(len(hairs), size=n)], 6)
    away = (rng.random(n) < 0.3).tolist()
    sw = 2.0 * radii * rng.uniform(0.85, 1.15, n)  # half shoulder width
    lean = rng.normal(0, 0.15, n) * radii
    x, y, r = pts[:, 0], pts[:, 1], radii
    one = 1 << SHIFT

    def fx(v: np.ndarray) -> list:
        return np.round(np.asarray(v) * one).astype(np.int64).tolist()

    def axes(v: np.ndarray) -> list:
        return np.maximum(1, np.round(np.asarray(v) * one)).astype(np.int64).tolist()

    def cols(c: np.ndarray) -> list:
        return [tuple(row) for row in np.clip(c, 0, 255).astype(np.int64).tolist()]

    top, bottom = y + 2.0 * r, y + 9.0 * r
    body = np.stack(
        [
            np.c_[x - sw, top],
            np.c_[x + sw, top],
            np.c_[x + 1.05 * sw + lean, bottom],
            np.c_[x - 1.05 * sw + lean, bottom],
        ],
        axis=1,
    )
    body = np.round(body * one).astype(np.int32)
    cx, cy = fx(x), fx(y)
    shoulder_y, shoulder_a = fx(y + 2.1 * r), list(zip(axes(sw), axes(1.1 * r)))
    neck_y, neck_a = fx(y + 1.1 * r), list(zip(axes(0.45 * r), axes(0.6 * r)))
    head_a, back_a = list(zip(axes(0.82 * r), axes(r))), list(zip(axes(0.86 * r), axes(r)))
    cap_y, cap_a = fx(y - 0.12 * r), list(zip(axes(0.88 * r), axes(0.95 * r)))
    light_x, light_y, light_a = fx(x - 0.25 * r), fx(y + 0.05 * r), list(zip(axes(0.2 * r), axes(0.25 * r)))
    shirt_c, coat_c, skin_c, neck_c, hair_c = cols(shirt), cols(shirt * 0.85), cols(skin), cols(skin * 0.85), cols(hair)
    light_c = cols(skin * 1.12)
    big = (r >= 3).tolist()
    aa = cv2.LINE_AA
    for k in range(n):
        while pending and pending[0][0] <= pts[k, 1]:
            pending.pop(0)[1](img)
        cv2.fillConvexPoly(img, body[k], coat_c[k], aa, SHIFT)
        cv2.ellipse(img, (cx[k], shoulder_y[k]), shoulder_a[k], 0, 0, 360, shirt_c[k], -1, aa, SHIFT)
        cv2.ellipse(img, (cx[k], neck_y[k]), neck_a[k], 0, 0, 360, neck_c[k], -1, aa, SHIFT)
        if away[k]:
            cv2.ellipse(img, (cx[k], cy[k]), back_a[k], 0, 0, 360, hair_c[k], -1, aa, SHIFT)
        else:
            cv2.ellipse(img, (cx[k], cy[k]), head_a[k], 0, 0, 360, skin_c[k], -1, aa, SHIFT)
            cv2.ellipse(img, (cx[k], cap_y[k]), cap_a[k], 0, 180, 360, hair_c[k], -1, aa, SHIFT)
            if big[k]:
                cv2.ellipse(img, (light_x[k], light_y[k]), light_a[k], 0, 0, 360, light_c[k], -1, aa, SHIFT)
    for _, draw in pending:
        draw(img)


def _finish(rng: np.random.Generator, img: np.ndarray, config: SynthConfig) -> np.ndarray:
    """Camera effects: uneven light, slight blur, sensor noise."""
    h, w = img.shape[:2]
    out: np.ndarray = img.astype(np.float32)
    out *= 1.0 + 0.12 * _smooth_noise(rng, h, w, (2, 3))
    out *= np.float32(rng.uniform(0.8, 1.15))
    out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.4, 0.8) * config.height / 256)
    out += np.float32(rng.uniform(1.5, 4.0)) * rng.standard_normal(out.shape, dtype=np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def render_scene(config: SynthConfig, split: str, index: int) -> Scene:
    """Draw image ``index`` of ``split``; the same arguments always give the same scene."""
    rng = scene_rng(config.seed, split, index)
    cam = _camera(rng, config)
    pts, radii = _place_heads(rng, config, cam)
    img = _background(rng, config, cam)
    _draw_people(img, rng, pts, radii, _props(rng, config, cam))
    img = _finish(rng, img, config)
    pts = np.round(pts, 2)
    on = (pts[:, 0] >= 0) & (pts[:, 0] < config.width) & (pts[:, 1] >= 0) & (pts[:, 1] < config.height)
    return Scene(image=img, points=pts[on], radii=radii[on])


# --------------------------------------------------------------------------- data set


def points_text(points: np.ndarray) -> str:
    """The generic ``.txt`` points format; the comment line keeps zero-head files valid."""
    return "# x y\n" + "".join(f"{x:.2f} {y:.2f}\n" for x, y in points)


def _write_one(config: SynthConfig, split: str, index: int, out_dir: str) -> int:
    scene = render_scene(config, split, index)
    folder = Path(out_dir) / split
    name = image_name(split, index)
    target = folder / "images" / f"{name}.png"
    if not cv2.imwrite(str(target), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR)):
        raise CrowdtkError(f"{target}: could not write the image", "check free disk space and permissions")
    (folder / "points" / f"{name}.txt").write_text(points_text(scene.points), encoding="utf-8")
    return len(scene.points)


def generate_dataset(
    out_dir: str | os.PathLike[str],
    config: SynthConfig,
    provenance: Provenance,
    workers: int = 1,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, list[ManifestEntry]]:
    """Write ``out_dir/{train,test}/{images,points}`` and each split's ``manifest.jsonl``.

    Manifest paths are relative to the split folder, so the data set can be moved. A split
    with no images is not written. Returns the manifest entries of each split written.
    """
    config.validate()
    out = Path(out_dir)
    jobs = [(split, i) for split in SPLITS for i in range(config.count(split))]
    for split in SPLITS:
        if config.count(split):
            (out / split / "images").mkdir(parents=True, exist_ok=True)
            (out / split / "points").mkdir(parents=True, exist_ok=True)
    counts: dict[tuple[str, int], int] = {}
    if workers <= 1:
        for split, i in jobs:
            counts[split, i] = _write_one(config, split, i, str(out))
            if on_progress:
                on_progress(1)
    else:
        with process_pool(workers) as pool:  # workers that die with this process
            futures = [pool.submit(_write_one, config, split, i, str(out)) for split, i in jobs]
            for job, future in zip(jobs, futures):
                counts[job] = future.result()
                if on_progress:
                    on_progress(1)
    results: dict[str, list[ManifestEntry]] = {}
    for split in SPLITS:
        if not config.count(split):
            continue
        folder = out / split
        indexed = build_manifest(folder, workers=max(1, workers), relative_to=folder)
        for i, entry in enumerate(indexed.entries):
            if entry.id != image_name(split, i) or entry.count != counts[split, i]:
                raise CrowdtkError(
                    f"{folder}: indexing the written images disagrees with the generator at {entry.id}",
                    "report this bug",
                )
        header = manifest_header(
            Provenance(provenance.command, {**provenance.params, "split": split}, provenance.seed), indexed.layout
        )
        write_jsonl(folder / "manifest.jsonl", header, (e.to_record() for e in indexed.entries))
        results[split] = indexed.entries
    return results
