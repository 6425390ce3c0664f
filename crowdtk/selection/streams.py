"""Keyed random streams: every random choice of ``select`` comes from one seed, split by purpose.

Two kinds. Pool-wide draws (which images get a spare cell, which images are warm-up or whole
images, the order in which a head budget visits the images, and the order in which an area budget
priced at the strategy's picks does) use numpy generators seeded by (seed, purpose number), so
that changing one of them never shifts another. Per-image draws
(random cells, MDC's k-means++ starts and tie-breaks) use a 64-bit key per image from
sha256(seed, purpose, image id): an image's draws then depend neither on the other images,
nor on their order, nor on how MDC splits them over workers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

# Purpose numbers of the pool-wide streams of one seed.
SPREAD, WARMUP_IMAGES, WHOLE_IMAGES, HEAD_ORDER, AREA_ORDER = 1, 2, 3, 4, 5

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def pool_stream(seed: int, purpose: int) -> np.random.Generator:
    """The pool-wide generator of ``purpose`` (one of SPREAD, WARMUP_IMAGES, WHOLE_IMAGES, HEAD_ORDER, AREA_ORDER)."""
    return np.random.default_rng([seed, purpose])


def image_keys(seed: int, ids: Sequence[str], purpose: str) -> np.ndarray:
    """One 64-bit key per image from (seed, purpose, id): a stream that does not depend on other images."""
    return np.array(
        [int.from_bytes(hashlib.sha256(f"{seed}\0{purpose}\0{i}".encode()).digest()[:8], "little") for i in ids],
        dtype=np.uint64,
    )


def keyed_uniforms(keys: np.ndarray, count: int) -> np.ndarray:
    """``count`` uniform numbers in [0, 1) per key (splitmix64 over key + j × golden ratio), vectorised."""
    with np.errstate(over="ignore"):
        z = keys.astype(np.uint64)[:, None] + np.arange(1, count + 1, dtype=np.uint64)[None, :] * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)
