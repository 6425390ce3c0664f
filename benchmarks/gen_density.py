"""Command line (from the repository root):
.venv/bin/python -m benchmarks.gen_density --images 20 --sigma 4 --adaptive --workers 2

Benchmark: crowdtk's density maps against the textbook method, on real ShanghaiTech Part B.
Fixed kernel only: ``.venv/bin/python -m benchmarks.gen_density`` (what `make bench` runs;
the defaults are --images 20 --sigma 4).

The textbook method (the original CSRNet preprocessing): for each head a delta image (1 at
``(floor(y), floor(x))``) is blurred by ``scipy.ndimage.gaussian_filter(delta, sigma,
mode='constant')`` over the full image, divided by its own sum (each head has mass 1, the
border convention crowdtk uses too) and added to the map. crowdtk's
:func:`crowdtk.density.density_map` builds the same map as one matrix product of per-head
1-D kernels. Both run at full resolution (stride 1) with the same σ; with ``--adaptive``
the geometry-adaptive kernel is compared as well, both sides taking each head's σ from
:func:`crowdtk.density.head_sigmas`.

Both methods run on the SAME images in the same run, interleaved image by image (the order
alternates), so machine noise hits both alike. Only the map computation is timed; the
points are read once beforehand. ``--workers N`` (N ≥ 2) adds an end-to-end row for
:func:`crowdtk.density.generate_densities` with ``workers=N`` (reading points and writing
``.npz`` files included), timed after the interleaved loop.

Targets (printed as PASS/FAIL; the exit status is 0 whatever they say):
crowdtk at least 50× faster than the textbook method with the fixed kernel (100× is the
later target, for fixed and adaptive kernels), and the largest per-pixel absolute
difference under 1e-6.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter

from benchmarks.harness import DEFAULT_ROOT, alternating, timed, verdict
from crowdtk.data import read_points_on_image
from crowdtk.density import DensityConfig, density_map, generate_densities, head_sigmas
from crowdtk.errors import CrowdtkError
from crowdtk.formats import Provenance
from crowdtk.index import build_manifest

SPEED_TARGET = 50.0  # fixed kernel, now
LATER_SPEED_TARGET = 100.0  # fixed and adaptive, later
DIFF_TARGET = 1e-6


def textbook_density(points: np.ndarray, height: int, width: int, sigmas: np.ndarray, truncate: float) -> np.ndarray:
    """One full-image ``gaussian_filter`` per head, renormalised to mass 1 (CSRNet's way)."""
    density = np.zeros((height, width), dtype=np.float64)
    for (x, y), sigma in zip(points, sigmas):
        delta = np.zeros((height, width), dtype=np.float64)
        delta[int(np.floor(y)), int(np.floor(x))] = 1.0
        blurred = gaussian_filter(delta, float(sigma), mode="constant", truncate=truncate)
        density += blurred / blurred.sum()
    return density


class Side:
    """Accumulated timing and error for one method on one kernel."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seconds = 0.0
        self.images = 0


def run_kernel(
    images: list[tuple[str, np.ndarray, int, int]], config: DensityConfig
) -> tuple[Side, Side, float, float]:
    """Interleave both methods over ``images``; return (textbook, crowdtk, max |diff|, max |sum - count|)."""
    kind = "adaptive" if config.adaptive else "fixed"
    textbook, ours = Side(f"textbook ({kind})"), Side(f"crowdtk ({kind})")
    # Warm-up (BLAS thread pool, first-call allocations), not timed.
    _, points, height, width = images[0]
    density_map(points, height, width, config)
    worst_diff = 0.0
    worst_sum = 0.0
    for i, (name, points, height, width) in enumerate(images):
        sigmas = head_sigmas(points, config)
        sides: dict[str, tuple[Side, Callable[..., np.ndarray], tuple[Any, ...]]] = {
            "textbook": (textbook, textbook_density, (points, height, width, sigmas, config.truncate)),
            "crowdtk": (ours, density_map, (points, height, width, config)),
        }
        maps: dict[str, np.ndarray] = {}
        for method_name in alternating(list(sides), i):
            side, method, method_args = sides[method_name]
            seconds, maps[method_name] = timed(method, *method_args)
            side.seconds += seconds
        textbook.images += 1
        ours.images += 1
        diff = float(np.abs(maps["textbook"] - maps["crowdtk"].astype(np.float64)).max()) if len(points) else 0.0
        worst_diff = max(worst_diff, diff)
        worst_sum = max(worst_sum, abs(float(maps["crowdtk"].sum(dtype=np.float64)) - len(points)))
        print(
            f"  {kind:8s} {i + 1:3d}/{len(images)} {name}: {len(points):4d} heads, max |diff| {diff:.2e}",
            file=sys.stderr,
        )
    return textbook, ours, worst_diff, worst_sum


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root", type=Path, default=DEFAULT_ROOT, help=f"ShanghaiTech split folder [default: {DEFAULT_ROOT}]"
    )
    parser.add_argument("--images", type=int, default=20, help="first N images in natural order; 0 = all [default: 20]")
    parser.add_argument(
        "--sigma", type=float, default=DensityConfig().sigma, help="fixed Gaussian σ in pixels [default: 4]"
    )
    parser.add_argument(
        "--adaptive", action="store_true", help="also compare the geometry-adaptive kernel (β 0.3, k 3)"
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="add a generate_densities(workers=N) row; 0 = skip [default: 0]"
    )
    args = parser.parse_args(argv)

    root = args.root.resolve()
    if not (root / "images").is_dir():
        print(
            f"benchmarks/gen_density.py: error: ShanghaiTech Part B train split not found at {root} "
            "(pass --root pointing at a folder with images/ and ground-truth/)",
            file=sys.stderr,
        )
        return 1
    try:
        manifest = build_manifest(root, workers=os.cpu_count() or 2)
    except CrowdtkError as exc:
        print(f"benchmarks/gen_density.py: error: {exc}", file=sys.stderr)
        return 1
    entries = manifest.entries if args.images <= 0 else manifest.entries[: args.images]
    images = []
    for entry in entries:
        points, _ = read_points_on_image(entry.points, entry.width, entry.height)
        images.append((entry.id, points, entry.height, entry.width))
    heads = sum(len(p) for _, p, _, _ in images)

    fixed = DensityConfig(sigma=args.sigma, adaptive=False, stride=1)
    configs = [fixed] + ([replace(fixed, adaptive=True)] if args.adaptive else [])
    print(
        f"Part B train: {len(images)} images, {heads} heads ({heads / max(1, len(images)):.0f} per image), "
        f"{images[0][3]}x{images[0][2]} px, stride 1, sigma {args.sigma:g}, truncate {fixed.truncate:g}; "
        f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs",
        file=sys.stderr,
    )

    rows: list[tuple[str, int, float, float | None, float | None]] = []  # name, images, s, ratio, diff
    checks: list[tuple[str, str, bool]] = []
    for config in configs:
        kind = "adaptive" if config.adaptive else "fixed"
        textbook, ours, diff, sum_err = run_kernel(images, config)
        ratio = textbook.seconds / ours.seconds if ours.seconds > 0 else float("inf")
        rows.append((textbook.name, textbook.images, textbook.seconds, None, None))
        rows.append((ours.name, ours.images, ours.seconds, ratio, diff))
        if not config.adaptive:
            checks.append((f"{kind}: crowdtk >= {SPEED_TARGET:g}x faster", f"{ratio:.0f}x", ratio >= SPEED_TARGET))
        checks.append(
            (
                f"{kind}: crowdtk >= {LATER_SPEED_TARGET:g}x faster (later target)",
                f"{ratio:.0f}x",
                ratio >= LATER_SPEED_TARGET,
            )
        )
        checks.append((f"{kind}: max |diff| < {DIFF_TARGET:g}", f"{diff:.2e}", diff < DIFF_TARGET))
        print(f"  {kind}: largest |map sum - head count| = {sum_err:.2e}", file=sys.stderr)
        if args.workers >= 1 and not config.adaptive:
            with tempfile.TemporaryDirectory() as tmp:
                seconds, _ = timed(generate_densities, entries, tmp, config, Provenance("bench"), workers=args.workers)
            rows.append(
                (
                    f"crowdtk generate_densities workers={args.workers} (with I/O)",
                    len(entries),
                    seconds,
                    textbook.seconds / seconds,
                    None,
                )
            )

    print()
    print(f"{'method':52s} {'images':>6s} {'seconds':>9s} {'ms/image':>9s} {'ratio':>8s} {'max |diff|':>11s}")
    for name, n, seconds, row_ratio, row_diff in rows:
        ratio_s = f"{row_ratio:7.0f}x" if row_ratio is not None else f"{'':8s}"
        diff_s = f"{row_diff:11.2e}" if row_diff is not None else f"{'':11s}"
        print(f"{name:52s} {n:6d} {seconds:9.3f} {1000 * seconds / n:9.2f} {ratio_s} {diff_s}")
    print("(ratio = textbook seconds / crowdtk seconds, same kernel and images; max |diff| per pixel, full resolution)")
    print()
    for what, value, ok in checks:
        print(f"{verdict(ok)}  {what}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
