"""Command line (from the repository root): .venv/bin/python -m benchmarks.scaling [--quick] [--json OUT]

The ``scaling`` stage of crowdtk's performance table (python -m benchmarks): ratio = time(2N) / time(N).

index, gen-density, vectors, select at N and 2N images (ratio ≈ 2), and `crowdtk train` per
epoch in 1 process vs 2 torchrun processes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import (
    CROWDTK,
    PY,
    QUICK,
    Report,
    Row,
    Sizes,
    alternating,
    log,
    make_counter,
    parser,
    run,
    timed,
)
from benchmarks.selection import subset_vectors, synthetic_pool


def _link_subset(root: Path, n: int, dest: Path) -> Path:
    """A ShanghaiTech-layout folder of symbolic links to the first ``n`` images and their ground truth."""
    from crowdtk.index import _images_in

    (dest / "images").mkdir(parents=True)
    (dest / "ground-truth").mkdir()
    for image in _images_in(root / "images")[:n]:
        (dest / "images" / image.name).symlink_to(image)
        gt = root / "ground-truth" / f"GT_{image.stem}.mat"
        (dest / "ground-truth" / gt.name).symlink_to(gt)
    return dest


def _pair(report: Report, what: str, n: int, run_at: Callable[[int], Any], repeats: int = 2) -> None:
    """time(2n) / time(n), alternating n, 2n, 2n, n …, best of ``repeats``."""
    t: dict[int, list[float]] = {n: [], 2 * n: []}
    for r in range(repeats):
        for size in alternating((n, 2 * n), r):
            t[size].append(timed(run_at, size)[0])
    a, b = min(t[n]), min(t[2 * n])
    report.rows.append(Row("scaling", f"{what}, N = {n}", a, b, b / a, None, None, f"2N = {2 * n}"))
    report.check(f"scaling {what}: time(2N) / time(N) ≈ 2 (1.6–2.4)", f"{b / a:.2f}", 1.6 <= b / a <= 2.4)


def epoch_timer_child(args: list[str]) -> None:
    """(Under torchrun or alone) run crowdtk.train.train and write per-epoch wall times (rank 0)."""
    from crowdtk.formats import Provenance
    from crowdtk.train import train
    from crowdtk.train_config import TrainConfig

    labels, out, crop, epochs, batch, report_path = args[0], args[1], int(args[2]), int(args[3]), int(args[4]), args[5]
    prepared_at: list[float] = []  # when the last sample was prepared: the first epoch starts
    epoch_ends: list[float] = []
    config = TrainConfig(model="lite", crop=crop, epochs=epochs, batch_size=batch, cap=True, val_frac=0.0)
    train(
        labels,
        out,
        config,
        Provenance("bench"),
        device="cpu",
        prepared=lambda _n: prepared_at.append(time.perf_counter()),
        on_epoch=lambda _r: epoch_ends.append(time.perf_counter()),
    )
    if int(os.environ.get("RANK", 0)) == 0:
        Path(report_path).write_text(json.dumps(np.diff([prepared_at[-1], *epoch_ends]).tolist()))


def _train_epochs(labels: Path, tmp: Path, procs: int, crop: int, epochs: int, global_batch: int) -> list[float]:
    report_path = tmp / f"epochs{procs}.json"
    child = [  # a module of the benchmarks package, after python's or torchrun's -m
        "benchmarks.scaling",
        "--epoch-timer",
        json.dumps(
            [
                str(labels),
                str(tmp / f"m{procs}.safetensors"),
                str(crop),
                str(epochs),
                str(global_batch // procs),
                str(report_path),
            ]
        ),
    ]
    if procs == 1:
        cmd = [PY, "-m", *child]
    else:
        cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs), "-m", *child]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"training ({procs} process(es)) failed:\n{proc.stderr[-3000:]}")
    return json.loads(report_path.read_text())


def _crowdtk(*args: Any) -> None:
    proc = subprocess.run([*CROWDTK, *[str(a) for a in args]], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"crowdtk {args[0]} failed: {proc.stderr[-2000:]}")


def _shrunk(entry: Any, tmp: Path, sizes: Sizes) -> Any:
    """(quick) a small copy of an image so the lite forward takes milliseconds."""
    from dataclasses import replace

    import cv2

    from crowdtk.files import file_digest

    image = cv2.imread(entry.image)
    if image is None:
        raise OSError(f"{entry.image}: OpenCV cannot read this image")
    small = cv2.resize(image, (sizes.width, sizes.height), interpolation=cv2.INTER_AREA)
    path = tmp / f"small_{entry.id}.png"
    cv2.imwrite(str(path), small)
    return replace(entry, image=str(path), width=sizes.width, height=sizes.height, sha256=file_digest(path))


def stage_scaling(report: Report, sizes: Sizes, root: Path) -> None:
    from crowdtk.density import DensityConfig, generate_densities
    from crowdtk.formats import Provenance
    from crowdtk.index import build_manifest
    from crowdtk.predict import LoadedModel, Predictor
    from crowdtk.selection import SelectConfig, select_regions
    from crowdtk.vectors import compute_vectors

    n = sizes.scale_n
    tmp = Path(tempfile.mkdtemp(prefix="crowdtk-bench-scale-"))
    try:
        dirs = {k: _link_subset(root, k, tmp / f"pool{k}") for k in (n, 2 * n)}
        log(f"scaling: index and gen-density at {n} and {2 * n} images")
        _pair(report, "index (build_manifest, workers 2)", n, lambda k: build_manifest(dirs[k], workers=2))
        manifests = {k: build_manifest(dirs[k], workers=2).entries for k in (n, 2 * n)}

        def gen(k: int) -> None:
            with tempfile.TemporaryDirectory() as out:
                generate_densities(manifests[k], out, DensityConfig(), Provenance("bench"), workers=1)

        _pair(report, "gen-density (workers 1)", n, gen)

        v = sizes.scale_vec_n
        log(f"scaling: vectors (lite) at {v} and {2 * v} images")
        predictor = Predictor(LoadedModel(make_counter("lite"), {}, ""), device="cpu")
        vec_entries = build_manifest(_link_subset(root, 2 * v, tmp / "vec"), workers=2).entries
        if sizes is QUICK:
            vec_entries = [_shrunk(e, tmp, sizes) for e in vec_entries]
        compute_vectors(predictor, vec_entries[:1])  # warm-up
        _pair(report, "vectors (lite, Predictor)", v, lambda k: compute_vectors(predictor, vec_entries[:k]), repeats=1)

        s = sizes.scale_select_n
        entries, data = synthetic_pool(2 * s)
        subsets = {s: (entries[:s], subset_vectors(data, s)), 2 * s: (entries, data)}
        config = SelectConfig(budget=sizes.select_budget, strategy="mdc")
        log(f"scaling: select mdc at {s} and {2 * s} images")
        _pair(report, "select mdc", s, lambda k: select_regions(subsets[k][0], config, subsets[k][1]))

        # torchrun: 2 processes vs 1 per epoch, same global batch (2), on a tiny labeled pool.
        log("scaling: torchrun 2 processes vs 1 (crowdtk train, lite, CAP)")
        h, w = sizes.synth_size
        _crowdtk(
            "synth", "-o", tmp / "synth", "--train", sizes.synth_train, "--test", 1, "--width", w, "--height", h, "-q"
        )
        manifest = tmp / "synth" / "train" / "manifest.jsonl"
        _crowdtk("select", manifest, "--budget", 0.3, "--strategy", "random", "-o", tmp / "regions.jsonl", "-q")
        _crowdtk("import", tmp / "regions.jsonl", "--oracle", manifest, "-o", tmp / "labels.jsonl", "-q")
        epochs = sizes.torchrun_epochs
        one = _train_epochs(tmp / "labels.jsonl", tmp, 1, sizes.torchrun_crop, epochs, 2)
        two = _train_epochs(tmp / "labels.jsonl", tmp, 2, sizes.torchrun_crop, epochs, 2)
        t1, t2 = float(np.median(one)), float(np.median(two))
        report.rows.append(
            Row(
                "scaling",
                f"crowdtk train lite+CAP, {sizes.synth_train} images {w}×{h}, crop {sizes.torchrun_crop}, "
                "global batch 2, 1 process, per epoch",
                t1,
                t2,
                t1 / t2,
                None,
                None,
                "torchrun 2 processes",
            )
        )
        report.check("torchrun 2 processes faster per epoch than 1 (ratio > 1)", f"{t1 / t2:.2f}×", t1 / t2 > 1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--epoch-timer", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.epoch_timer:
        epoch_timer_child(json.loads(args.epoch_timer))
        return 0
    return run({"scaling": stage_scaling}, args)


if __name__ == "__main__":
    sys.exit(main())
