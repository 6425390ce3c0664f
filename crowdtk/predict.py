"""Running a trained counter: density maps of whole images, for `eval`, `count`, `vectors` and `show`.

The metrics are in crowdtk.evaluate, counting files and videos in crowdtk.counting.

The count of an image is the sum of its predicted density map (Eq. 11). Large images are
cut into tiles of at most ``max_side`` pixels; each tile is run with a margin of context
around it and only its own cells are kept, so tile counts add up to the image's count and
peak memory is bounded by the tile size.

On CPU the predictor (measured in ``benchmarks/inference.py``) runs an inference copy of the counter
(batch norm folded into the convolutions, activations in place: ``models.inference_copy``),
in channels-last memory under ``torch.inference_mode``, batches consecutive images of one
size (``Counter.inference_batch``), decodes the next image in a thread while the current
one runs (:func:`prefetched`), and keeps freed memory in the process's heap
(``runtime.retain_freed_memory``) so that the large feature maps of the next image reuse pages
instead of faulting fresh ones in.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from crowdtk.cap import TrainNet
from crowdtk.checkpoint import load_tensors, refuse_training_state
from crowdtk.data import read_image
from crowdtk.errors import CrowdtkError
from crowdtk.features import FeatureCache
from crowdtk.formats import trained_scale
from crowdtk.geometry import STRIDE, pad_image, resize_for_model
from crowdtk.models import Counter, build_model, inference_copy
from crowdtk.predict_config import PredictConfig
from crowdtk.runtime import resolve_device, retain_freed_memory

TILE_MARGIN = 64  # pixels of context around a tile: beyond the receptive field's useful reach


@dataclass
class LoadedModel:
    counter: Counter
    header: dict[str, Any]
    path: str

    @property
    def density_scale(self) -> float:
        return float(self.header.get("density_scale", 1.0))

    @property
    def scale(self) -> float:
        return trained_scale(self.header)

    @property
    def unfinished(self) -> str | None:
        """Why this checkpoint is of a training run that did not finish (None when it did,
        or is older than the flag)."""
        if self.header.get("finished", True):
            return None
        planned = (self.header.get("training") or {}).get("epochs", "?")
        return (
            f"{self.path}: the checkpoint of an unfinished training run (epoch {self.header.get('epochs_done', '?')} "
            f"of {planned}); continue it with 'crowdtk train … --resume' (or warmup), or pass a finished checkpoint"
        )


def load_counter(path: str | os.PathLike[str]) -> LoadedModel:
    """Rebuild the counter a checkpoint was trained as (CAP, if present, is not needed to predict)."""
    header, tensors = load_tensors(path)
    refuse_training_state(header, path)
    model = header.get("model") or {}
    try:
        counter = build_model(model["name"], pretrained=False, **model.get("config", {}))
    except (KeyError, TypeError) as exc:
        raise CrowdtkError(
            f"{path}: checkpoint header names no usable model ({exc})", "pass a checkpoint written by crowdtk"
        ) from None
    TrainNet(counter, cap=False).load_weights(tensors, str(path), counter_only=True)
    counter.eval()
    return LoadedModel(counter, header, str(path))


class Predictor:
    """Predicts stride-8 density maps (heads per cell) for RGB images of any size.

    ``fast=False`` runs the loaded counter itself, one image at a time, and leaves the
    process's memory settings alone (the plain path, for comparisons); ``batch_size``
    defaults to the counter's ``inference_batch``.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        device: str = "auto",
        max_side: int = PredictConfig.max_side,
        *,
        fast: bool = True,
        batch_size: int | None = None,
        feature_cache: str | os.PathLike[str] | None = None,
        flip_average: bool = False,
    ) -> None:
        if max_side < 64:
            raise CrowdtkError(f"--max-side must be at least 64, got {max_side}", "pass e.g. 2048")
        self.loaded = loaded
        self.device = resolve_device(device)
        # Test-time augmentation: the mean of the density and the mirrored density of the mirrored
        # image (twice the compute). Where a width is not a multiple of the stride the mirrored map
        # sits up to 7 px off the grid; counts are sums and do not notice.
        self.flip_average = flip_average
        counter = inference_copy(loaded.counter) if fast else loaded.counter
        self.counter = counter.to(self.device).to(memory_format=torch.channels_last)
        self.max_side = max_side // STRIDE * STRIDE
        self.batch_size = max(
            1, batch_size if batch_size is not None else (loaded.counter.inference_batch if fast else 1)
        )
        # A default batch on CPU is kept only if the first full batch shows it pays (see _batching_pays).
        self._batch_unchecked = batch_size is None and self.batch_size > 1 and self.device.type == "cpu"
        if fast and self.device.type == "cpu":
            retain_freed_memory()
        # A checkpoint trained with a frozen front part can reuse that part's cached maps: the cache
        # is keyed by the frozen weights themselves, so a changed front end never reads a stale map.
        level = (loaded.header.get("training") or {}).get("freeze", "none")
        self.features = (
            FeatureCache(loaded.counter, level, self.device, feature_cache)
            if feature_cache is not None and level != "none"
            else None
        )

    @torch.inference_mode()
    def _run(self, images: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 → (B, H/8, W/8) float32 densities."""
        x = self.counter.to_input(images, self.device)
        with torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else contextlib.nullcontext():
            out = self.counter(x).float()
            if self.flip_average:
                out = (out + self.counter(x.flip(-1)).float().flip(-1)) / 2
        return out[:, 0].cpu().numpy() / self.loaded.density_scale

    def _prepare(self, image: np.ndarray) -> tuple[np.ndarray, float, float]:
        resized, sx, sy = resize_for_model(image, self.loaded.scale)
        return pad_image(resized), sx, sy

    def density(self, image: np.ndarray, sha256: str | None = None) -> tuple[np.ndarray, float, float]:
        """Density of an RGB image at the model's working resolution, and the x/y resize factors
        (``sha256``, the image file's digest, lets a feature cache serve the front end's map)."""
        padded, sx, sy = self._prepare(image)
        if sha256 is not None and self._cached(padded, sha256):
            return self._run_cached(padded, sha256), sx, sy
        return self._whole_or_tiled(padded), sx, sy

    def _cached(self, padded: np.ndarray, sha256: str | None) -> bool:
        return self.features is not None and sha256 is not None and max(padded.shape[:2]) <= self.max_side

    @torch.inference_mode()
    def _run_cached(self, padded: np.ndarray, sha256: str) -> np.ndarray:
        assert self.features is not None

        def run(flip: bool) -> torch.Tensor:
            assert self.features is not None
            h = self.features.map(padded, sha256, self.loaded.scale, flip=flip).load()[None].to(self.device).float()
            out = self.counter.head(
                self.counter.decode(h.contiguous(memory_format=torch.channels_last), self.features.level)
            )[0, 0].float()
            return out.flip(-1) if flip else out

        out = (run(False) + run(True)) / 2 if self.flip_average else run(False)
        return out.cpu().numpy() / self.loaded.density_scale

    def densities(
        self, images: Iterable[np.ndarray], digests: Iterable[str | None] | None = None
    ) -> Iterator[tuple[np.ndarray, float, float]]:
        """:meth:`density` of each image, in order; consecutive images of one size that need no tiling
        run through the model together, ``batch_size`` at a time."""
        pending: list[tuple[np.ndarray, float, float]] = []
        digest_of = iter(digests) if digests is not None else None

        def flush() -> Iterator[tuple[np.ndarray, float, float]]:
            if len(pending) == 1:
                out = [self._run(pending[0][0][None])[0]]
            elif self._batch_unchecked and len(pending) == self.batch_size:
                out = self._batching_pays(np.stack([p[0] for p in pending]))
            else:
                out = list(self._run(np.stack([p[0] for p in pending])))
            done = [(d, sx, sy) for d, (_, sx, sy) in zip(out, pending)]
            pending.clear()
            yield from done

        for image in images:
            padded, sx, sy = self._prepare(image)
            sha256 = next(digest_of) if digest_of is not None else None
            if self._cached(padded, sha256):
                yield from flush() if pending else ()
                yield self._run_cached(padded, sha256), sx, sy  # type: ignore[arg-type]
                continue
            if max(padded.shape[:2]) > self.max_side or self.batch_size == 1:
                yield from flush() if pending else ()
                yield self._whole_or_tiled(padded), sx, sy
                continue
            if pending and pending[0][0].shape != padded.shape:
                yield from flush()
            pending.append((padded, sx, sy))
            if len(pending) >= self.batch_size:
                yield from flush()
        if pending:
            yield from flush()

    def _batching_pays(self, batch: np.ndarray) -> list[np.ndarray]:
        """Time ``batch`` together and one image at a time (best of two each, the first of each
        warming up) and keep batching only if it is at least 1.1× faster; returns the batch's
        densities. Measured, lite at 768×1024, batch 4 per image vs batch 1: faster on a 2-core
        AMD EPYC, 0.73× on a 2-core Intel Xeon (benchmarks/inference.py). Costs about three extra batches once."""
        together, alone = math.inf, math.inf
        for _ in range(2):
            start = time.perf_counter()
            out = list(self._run(batch))
            together = min(together, time.perf_counter() - start)
            start = time.perf_counter()
            for image in batch:
                self._run(image[None])
            alone = min(alone, time.perf_counter() - start)
        if alone < together * 1.1:
            self.batch_size = 1
        self._batch_unchecked = False
        return out

    def _whole_or_tiled(self, padded: np.ndarray) -> np.ndarray:
        height, width = padded.shape[:2]
        if max(height, width) <= self.max_side:
            return self._run(padded[None])[0]
        out = np.zeros((height // STRIDE, width // STRIDE), dtype=np.float32)
        tile, margin = self.max_side - 2 * TILE_MARGIN, TILE_MARGIN
        tile = max(STRIDE, tile // STRIDE * STRIDE)
        for y0 in range(0, height, tile):
            for x0 in range(0, width, tile):
                y1, x1 = min(y0 + tile, height), min(x0 + tile, width)
                ty0, tx0 = max(0, y0 - margin), max(0, x0 - margin)
                ty1, tx1 = min(height, y1 + margin), min(width, x1 + margin)
                pred = self._run(padded[None, ty0:ty1, tx0:tx1])[0]
                r0, c0 = (y0 - ty0) // STRIDE, (x0 - tx0) // STRIDE
                out[y0 // STRIDE : y1 // STRIDE, x0 // STRIDE : x1 // STRIDE] = pred[
                    r0 : r0 + (y1 - y0) // STRIDE, c0 : c0 + (x1 - x0) // STRIDE
                ]
        return out


def require_finite(density: np.ndarray, source: str) -> np.ndarray:
    """``density``, refused when a value is NaN or infinite (for the stages that cannot leave an image out)."""
    if not np.isfinite(density).all():
        raise CrowdtkError(
            f"{source}: the predicted density is not finite (NaN or inf)",
            "check the checkpoint: its weights may have diverged",
        )
    return density


def prefetched(paths: Iterable[Any], read: Callable[[Any], Any] = read_image) -> Iterator[tuple[Any, Any]]:
    """Decode the next image in a thread while the current one runs through the model (``paths``: what
    ``read`` takes, a path or a manifest entry; yielded with what ``read`` returned)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = None
        for path in paths:
            future = pool.submit(read, path)
            if pending is not None:
                yield pending[0], pending[1].result()
            pending = (path, future)
        if pending is not None:
            yield pending[0], pending[1].result()
