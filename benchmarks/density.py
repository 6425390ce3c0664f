"""Command line (from the repository root): .venv/bin/python -m benchmarks.density [--quick] [--json OUT]

The ``gen-density`` stage of crowdtk's performance table (python -m benchmarks), over
benchmarks/gen_density.py's kernels (that script compares more images and prints its own table).

benchmarks/gen_density.py's kernels (fixed, adaptive) vs the textbook per-head full-image
filter; generate_densities --workers 1 vs 2.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from benchmarks.harness import Report, Row, Sizes, manifest_of, parser, peak_mb, reset_peak, run, timed


def stage_gen_density(report: Report, sizes: Sizes, root: Path) -> None:
    from dataclasses import replace

    # Imported here, not at the top: gen_density imports scipy and crowdtk, which every worker
    # process of the other stages would then hold (they import the main module again).
    from benchmarks import gen_density as gd
    from crowdtk.data import read_points_on_image
    from crowdtk.density import DensityConfig, generate_densities
    from crowdtk.formats import Provenance

    manifest = manifest_of(root)
    images = []
    for entry in manifest.entries[: sizes.gd_images]:
        points, _ = read_points_on_image(entry.points, entry.width, entry.height)
        images.append((entry.id, points, entry.height, entry.width))
    heads = sum(len(p) for _, p, _, _ in images)
    fixed = DensityConfig(sigma=4.0, adaptive=False, stride=1)
    for config in (fixed, replace(fixed, adaptive=True)):
        kind = "adaptive" if config.adaptive else "fixed"
        reset_peak()
        textbook, ours, diff, _ = gd.run_kernel(images, config)
        ratio = textbook.seconds / ours.seconds
        report.rows.append(
            Row(
                "gen-density",
                f"textbook per-head gaussian_filter, {kind}, {len(images)} images ({heads} heads), per image",
                textbook.seconds / len(images),
                ours.seconds / len(images),
                ratio,
                None,
                peak_mb(),
                f"density_map, max |diff| {diff:.1e}",
            )
        )
        report.check(f"gen-density {kind}: ≥ 100× faster than the textbook filter", f"{ratio:.0f}×", ratio >= 100)
        report.check(f"gen-density {kind}: max |diff| < 1e-6", f"{diff:.1e}", diff < 1e-6)
    entries = manifest.entries[: sizes.gd_worker_images]
    t: dict[int, list[float]] = {1: [], 2: []}
    for workers in (1, 2, 2, 1):
        with tempfile.TemporaryDirectory() as tmp:
            t[workers].append(
                timed(generate_densities, entries, tmp, DensityConfig(), Provenance("bench"), workers=workers)[0]
            )
    report.rows.append(
        Row(
            "gen-density",
            f"generate_densities --workers 1, {len(entries)} images (stride 8, with I/O)",
            min(t[1]),
            min(t[2]),
            min(t[1]) / min(t[2]),
            None,
            None,
            "--workers 2",
        )
    )
    report.facts["gen_density_workers"] = {"1": t[1], "2": t[2]}


def main(argv: list[str] | None = None) -> int:
    return run({"gen-density": stage_gen_density}, parser(__doc__).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
