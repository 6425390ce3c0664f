"""Command line (from the repository root): .venv/bin/python -m benchmarks.load --images 200 2000

Benchmark: `crowdtk eval` and `crowdtk count` keep constant memory as the number of images grows.

For each size N it generates N tiny JPEG images (64×48, a few head points each) with a
manifest in a temporary folder, and a `lite` counter checkpoint (random weights: the cost of a
prediction does not depend on the weights). Then it runs, each in its own process,

    crowdtk eval  CKPT MANIFEST --json -q
    crowdtk count CKPT IMAGES/ -q          (stdout to /dev/null)

and reads the child's peak resident set size from ``os.wait4`` (the kernel's ``ru_maxrss`` of
that one process, as ``/usr/bin/time -v`` reports it). The table gives, per command and N, the
peak RSS, its ratio to the smallest N, and the wall time. Constant memory means the ratio stays
near 1 while N grows tenfold (tests/test_reliability.py checks the same at 30 vs 300 images:
ratio < 1.2 and growth < 30 MB).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np

from benchmarks.harness import CROWDTK, run_child
from crowdtk.files import file_digest
from crowdtk.formats import MANIFEST, ManifestEntry, Provenance, make_header, write_jsonl


def generate(folder: Path, n: int, width: int = 64, height: int = 48, seed: int = 0) -> Path:
    """N random JPEG images with 0–9 head points each, and their manifest; returns the manifest."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "points").mkdir(exist_ok=True)
    entries = []
    for i in range(n):
        name = f"img{i:05d}"
        image = folder / "images" / f"{name}.jpg"
        cv2.imwrite(str(image), rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
        points = np.c_[rng.uniform(0, width, i % 10), rng.uniform(0, height, i % 10)]
        (folder / "points" / f"{name}.txt").write_text("# x y\n" + "".join(f"{x:.2f} {y:.2f}\n" for x, y in points))
        entries.append(
            ManifestEntry(
                name, str(image), str(folder / "points" / f"{name}.txt"), width, height, len(points), file_digest(image)
            )
        )
    manifest = folder / "manifest.jsonl"
    write_jsonl(
        manifest,
        make_header(MANIFEST, Provenance("benchmarks/load.py", {"images": n})),
        (e.to_record() for e in entries),
    )
    return manifest


def make_checkpoint(path: Path) -> Path:
    """A `lite` counter with random weights, saved as a crowdtk checkpoint."""
    import torch

    from crowdtk.cap import TrainNet
    from crowdtk.checkpoint import save_tensors
    from crowdtk.formats import checkpoint_header
    from crowdtk.models import build_model
    from crowdtk.train_config import TrainConfig

    torch.manual_seed(0)
    counter = build_model("lite", pretrained=False)
    header = checkpoint_header(
        Provenance("benchmarks/load.py"),
        model=counter.name,
        model_config=counter.config,
        cap=False,
        training=asdict(TrainConfig(model="lite", pretrained=False)),
        labels_sha256="0" * 64,
        epochs_done=1,
        best_val_mae=0.0,
        val_on="train",
    )
    save_tensors(path, TrainNet(counter, cap=False).weights(), header)
    return path


def peak_rss_mb(args: list[str], timeout: float = 1800) -> tuple[float, float]:
    """Run ``args`` with stdout to /dev/null; return (peak RSS of that process in MB, wall seconds)."""
    child = run_child(args, stdout=subprocess.DEVNULL, timeout=timeout)
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {child.returncode}: {child.stderr[-2000:]}")
    return child.peak_mb, child.seconds


def commands(checkpoint: Path, manifest: Path) -> dict[str, list[str]]:
    return {
        "eval": [*CROWDTK, "eval", str(checkpoint), str(manifest), "--json", "-q", "--device", "cpu"],
        "count": [*CROWDTK, "count", str(checkpoint), str(manifest.parent / "images"), "-q", "--device", "cpu"],
    }


def measure(sizes: list[int], work: Path) -> list[tuple[str, int, float, float, float]]:
    """(command, images, peak RSS MB, ratio to the smallest size, seconds) per command and size."""
    checkpoint = make_checkpoint(work / "model.safetensors")
    rows = []
    peaks: dict[str, float] = {}
    for n in sorted(sizes):
        manifest = generate(work / f"n{n}", n)
        for name, args in commands(checkpoint, manifest).items():
            peak, seconds = peak_rss_mb(args)
            peaks.setdefault(name, peak)
            rows.append((name, n, peak, peak / peaks[name], seconds))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, nargs="+", default=[200, 2000], help="data set sizes [default: 200 2000]")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="crowdtk-load-") as tmp:
        rows = measure(args.images, Path(tmp))
    print(
        f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}"
    )
    print(f"{'command':<8} {'images':>7} {'peak RSS MB':>12} {'ratio':>6} {'seconds':>8}")
    for name, n, peak, ratio, seconds in sorted(rows):
        print(f"{name:<8} {n:>7} {peak:>12.1f} {ratio:>6.2f} {seconds:>8.1f}")


if __name__ == "__main__":
    main()
