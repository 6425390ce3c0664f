"""Command line (from the repository root): .venv/bin/python -m benchmarks.decode --rounds 3

Benchmark: decoding an image from bytes in memory, OpenCV's ``cv2.imdecode`` (then BGR to RGB, as
crowdtk decoded before) against ``crowdtk.data.decode_image`` (Pillow), and what hashing the same
bytes with sha256 costs, on the real ShanghaiTech Part B training images (400 JPEGs of 1024x768).
The files are read once beforehand; only decoding (or hashing) is timed, as wall time and as this
process's CPU time (user + system: other work on the machine inflates wall time, not CPU time).
The ways take turns over all the images, their order alternating from round to round; each way's
figure is its best round.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from benchmarks.harness import DEFAULT_ROOT
from crowdtk.data import decode_image

PART_B = DEFAULT_ROOT / "images"


def with_opencv(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("OpenCV cannot decode these bytes")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def with_crowdtk(data: bytes) -> np.ndarray:
    return decode_image(data, "benchmark")


def with_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[2])
    parser.add_argument(
        "--images", type=Path, default=PART_B, help="folder of .jpg images (default: Part B train_data/images)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    files = sorted(args.images.glob("*.jpg"))
    if not files:
        print(f"no .jpg images in {args.images}", file=sys.stderr)
        return 1
    blobs = [f.read_bytes() for f in files]
    ways = {"opencv": with_opencv, "pillow": with_crowdtk, "sha256": with_sha256}
    wall = {name: np.inf for name in ways}
    cpu = {name: np.inf for name in ways}
    for r in range(args.rounds):
        for name in list(ways) if r % 2 == 0 else list(reversed(ways)):
            t0, start = os.times(), time.perf_counter()
            for data in blobs:
                ways[name](data)
            t1 = os.times()
            wall[name] = min(wall[name], time.perf_counter() - start)
            cpu[name] = min(cpu[name], (t1.user - t0.user) + (t1.system - t0.system))
    diff = max(int(np.abs(with_opencv(d).astype(int) - with_crowdtk(d).astype(int)).max()) for d in blobs[:20])
    print(f"{len(blobs)} images from {args.images}, best of {args.rounds} rounds")
    for name in ways:
        print(
            f"{name:7s} CPU {1000 * cpu[name] / len(blobs):6.2f} ms/image, "
            f"wall {1000 * wall[name] / len(blobs):6.2f} ms/image"
        )
    print(
        f"pillow/opencv: CPU {cpu['pillow'] / cpu['opencv']:.2f}x, wall {wall['pillow'] / wall['opencv']:.2f}x; "
        f"largest pixel difference on 20 images: {diff}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
