"""Command line (from the repository root): .venv/bin/python -m benchmarks.selection [--quick] [--json OUT]

The ``select`` stage of crowdtk's performance table (python -m benchmarks), on synthetic strip
vectors (the scaling stage uses the same pool).

``select --strategy mdc`` over 100,000 images' strip vectors vs one scikit-learn
GaussianMixture per image (timed on 500 images, extrapolated); the picks of those 500 images
must be identical.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import Report, Row, Sizes, log, parser, peak_mb, reset_peak, run, timed


def synthetic_pool(n: int, seed: int = 0) -> tuple[list[Any], Any]:
    """``n`` 1024×768 manifest entries and their strip vectors (10 strips × 10 numbers), perspective
    scenes with groups (vectorised version of tests/conftest.py's realistic_vectors)."""
    from crowdtk.formats import ManifestEntry, StripVectors
    from crowdtk.geometry import strip_edges

    rng = np.random.default_rng(seed)
    rows = np.linspace(0.2, 1.0, 96)
    density = (rows**2)[None, :, None] * rng.uniform(0.1, 0.5, (n, 1, 1)) * np.ones((n, 96, 10))
    for _ in range(3):
        present = rng.random(n) < 0.7
        x = rng.integers(0, 10, n)
        w = rng.integers(1, 4, n)
        y = rng.integers(0, 80, n)
        h = rng.integers(8, 30, n)
        amp = rng.uniform(0.5, 3.0, n) * present
        cols = np.arange(10)[None, :]
        rws = np.arange(96)[None, :]
        in_x = (cols >= x[:, None]) & (cols < (x + w)[:, None])
        in_y = (rws >= y[:, None]) & (rws < (y + h)[:, None])
        density += amp[:, None, None] * in_y[:, :, None] * in_x[:, None, :]
    density *= rng.uniform(0.5, 1.5, (n, 1, 10))
    col_rows = density.transpose(0, 2, 1)  # (n, strips, rows)
    parts = []
    for k in range(1, 5):
        parts += [band.sum(-1) * k / 4 for band in np.array_split(col_rows, k, axis=2)]
    vectors = np.stack(parts, axis=-1)  # (n, 10, 10)
    entries = [ManifestEntry(f"img{i}", f"/nowhere/img{i}.jpg", None, 1024, 768, 10, f"{i:064x}") for i in range(n)]
    edges = strip_edges(1024, 0.1)
    data = StripVectors(
        ids=np.array([e.id for e in entries]),
        sha256=np.array([e.sha256 for e in entries]),
        strip_image=np.repeat(np.arange(n), 10).astype(np.int64),
        strip_x0=np.tile(edges[:-1], n).astype(np.int64),
        strip_x1=np.tile(edges[1:], n).astype(np.int64),
        vectors=vectors.reshape(n * 10, 10).astype(np.float32),
        counts=(vectors[:, :, 0] * 4).reshape(-1).astype(np.float32),  # level 1 is the count × 1/4
    )
    return entries, data


def subset_vectors(data: Any, n: int) -> Any:
    from crowdtk.formats import StripVectors

    keep = data.strip_image < n
    return StripVectors(
        data.ids[:n],
        data.sha256[:n],
        data.strip_image[keep],
        data.strip_x0[keep],
        data.strip_x1[keep],
        data.vectors[keep],
        data.counts[keep],
    )


def picks_of(selection: Any) -> dict[str, list[int]]:
    return {e.id: [c for d in e.details for c in d["cells"]] for e in selection.entries}


def stage_select(report: Report, sizes: Sizes, root: Path) -> None:
    from crowdtk.selection import SelectConfig, select_regions

    n, m = sizes.select_images, sizes.select_sample
    entries, data = synthetic_pool(n)
    config = SelectConfig(budget=sizes.select_budget, strategy="mdc")
    k = round(sizes.select_budget * 10)
    log(f"select: mdc over {n} images ({k} of 10 strips each), scikit-learn on {m}")
    small_entries, small_data = entries[:m], subset_vectors(data, m)
    times: dict[str, float] = {}
    peaks: dict[str, float] = {}
    picks: dict[str, dict[str, list[int]]] = {}
    runs = [
        ("sklearn", small_entries, small_data, SelectConfig(budget=config.budget, strategy="mdc", engine="sklearn")),
        ("numpy", entries, data, config),
        ("numpy workers=2", entries, data, SelectConfig(budget=config.budget, strategy="mdc", workers=2)),
    ]
    for name, ents, vecs, cfg in runs:
        reset_peak()
        times[name], selection = timed(select_regions, ents, cfg, vecs)
        peaks[name] = peak_mb()
        picks[name] = picks_of(selection)
    ref = times["sklearn"] * n / m
    ours = times["numpy"]
    ours2 = times["numpy workers=2"]
    report.rows.append(
        Row(
            "select",
            f"scikit-learn GaussianMixture per image ({m} timed: {times['sklearn']:.1f} s, ×{n // m})",
            ref,
            ours,
            ref / ours,
            None,
            peaks["numpy"],
            f"select mdc, {n} images",
        )
    )
    report.rows.append(
        Row(
            "select",
            f"select mdc, {n} images, workers=1",
            ours,
            ours2,
            ours / ours2,
            None,
            peaks["numpy workers=2"],
            "workers=2",
        )
    )
    same = all(picks["numpy"][i] == picks["sklearn"][i] for i in picks["sklearn"]) and len(picks["sklearn"]) == m
    differ = sum(picks["numpy"][i] != picks["sklearn"][i] for i in picks["sklearn"])
    report.check(
        f"select mdc over {n} images within 60 s",
        f"{min(ours, ours2):.1f} s (workers=1: {ours:.1f} s)",
        min(ours, ours2) <= 60,
    )
    report.check(
        f"select: identical picks to scikit-learn on the common {m} images", f"{m - differ}/{m} identical", same
    )
    same_workers = picks["numpy"] == picks["numpy workers=2"]
    report.check("select: workers=2 picks = workers=1 picks", "identical" if same_workers else "differ", same_workers)


def main(argv: list[str] | None = None) -> int:
    return run({"select": stage_select}, parser(__doc__).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
