"""`eval`: a counter's errors on a labeled set, MAE and RMSE of the count (Eq. 11) and GAME.

``evaluate_manifest`` is the command's one call: it checks the manifest's sizes before any
model runs, leaves bad images out with ``skip_bad`` (one image at a time, so that one bad
image does not stop the run), and under torchrun gathers every process's share on rank 0.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crowdtk.data import check_image_size, read_image, read_points_on_image
from crowdtk.errors import CrowdtkError
from crowdtk.formats import ManifestEntry
from crowdtk.geometry import STRIDE
from crowdtk.predict import Predictor, prefetched
from crowdtk.runtime import Processes


@dataclass
class ImageResult:
    id: str
    image: str
    true_count: int
    predicted: float
    game: list[float] = field(default_factory=list)  # absolute error summed over 4^L cells, L = 1..3

    @property
    def error(self) -> float:
        return self.predicted - self.true_count


def game_errors(
    density: np.ndarray, sx: float, sy: float, points: np.ndarray, width: int, height: int, levels: int = 3
) -> list[float]:
    """GAME(L) for L = 1..levels: the image is cut into 2^L × 2^L cells; sum of |predicted − true| per cell.

    A density cell belongs to the GAME cell holding its centre (mapped back to original pixels).
    """
    rows, cols = density.shape
    cy = (np.arange(rows) + 0.5) * STRIDE / sy
    cx = (np.arange(cols) + 0.5) * STRIDE / sx
    out = []
    for level in range(1, levels + 1):
        k = 2**level
        ry = np.minimum((cy * k / height).astype(int), k - 1)
        rx = np.minimum((cx * k / width).astype(int), k - 1)
        pred = np.zeros((k, k))
        np.add.at(pred, (ry[:, None].repeat(cols, 1), rx[None, :].repeat(rows, 0)), density)
        true = np.zeros((k, k))
        if len(points):
            py = np.minimum((points[:, 1] * k / height).astype(int), k - 1)
            px = np.minimum((points[:, 0] * k / width).astype(int), k - 1)
            np.add.at(true, (py, px), 1.0)
        out.append(float(np.abs(pred - true).sum()))
    return out


def evaluate(
    predictor: Predictor,
    entries: list[ManifestEntry],
    on_progress: Callable[[int], None] | None = None,
    shard: tuple[int, int] = (0, 1),
) -> list[ImageResult]:
    """Predict every manifest image (this process's shard ``(rank, world)``) and compare with its points."""
    rank, world = shard
    mine = entries[rank::world]
    results = []

    def checked() -> Iterator[np.ndarray]:
        for entry, (_, image) in zip(mine, prefetched(mine, read=lambda e: read_image(e.image, e.sha256))):
            if image.shape[:2] != (entry.height, entry.width):
                raise CrowdtkError(f"{entry.image}: size differs from the manifest", "re-run crowdtk index")
            yield image

    for entry, (density, sx, sy) in zip(mine, predictor.densities(checked(), (e.sha256 for e in mine))):
        points, _ = read_points_on_image(entry.points, entry.width, entry.height, entry.points_sha256)
        results.append(
            ImageResult(
                entry.id,
                entry.image,
                len(points),
                float(density.sum(dtype=np.float64)),
                game_errors(density, sx, sy, points, entry.width, entry.height),
            )
        )
        if on_progress:
            on_progress(1)
    return results


def summarize(results: list[ImageResult]) -> dict[str, Any]:
    """MAE, RMSE and GAME(1..3) over images with a finite prediction; the others are listed."""
    finite = [r for r in results if math.isfinite(r.predicted)]
    errors = np.array([r.error for r in finite], dtype=np.float64)
    game = np.array([r.game for r in finite], dtype=np.float64).reshape(len(finite), -1)
    return {
        "mae": float(np.abs(errors).mean()) if len(finite) else math.nan,
        "rmse": float(np.sqrt((errors**2).mean())) if len(finite) else math.nan,
        "game": {str(level + 1): float(game[:, level].mean()) for level in range(game.shape[1])} if len(finite) else {},
        "n_images": len(finite),
        "non_finite": [r.id for r in results if not math.isfinite(r.predicted)],
    }


@dataclass
class Evaluation:
    name: str  # the manifest's, for messages
    checkpoint: str
    results: list[ImageResult]  # in manifest order
    skipped: list[str]  # why each left-out image was bad (with skip_bad)
    writer: bool  # this process reports (rank 0 under torchrun)

    def summary(self) -> dict[str, Any]:
        """summarize(results) with "skipped"; refused when no image gave a finite prediction."""
        if not self.results:
            raise CrowdtkError(f"{self.name}: every image was bad", "see the list of skipped images")
        if not any(math.isfinite(r.predicted) for r in self.results):
            raise CrowdtkError(
                f"{self.checkpoint}: the prediction is not finite (NaN or inf) for all {len(self.results)} image(s) of {self.name}",
                "the checkpoint's weights have diverged; use an earlier checkpoint, or retrain with a lower --lr",
            )
        return {**summarize(self.results), "skipped": self.skipped}


def evaluate_manifest(
    predictor: Predictor,
    entries: list[ManifestEntry],
    name: str,
    *,
    skip_bad: bool = False,
    procs: Processes = Processes(),
    on_progress: Callable[[int], None] | None = None,
) -> Evaluation:
    """Evaluate every image of the manifest ``name`` (this process's share under torchrun)."""
    skipped: list[str] = []
    good = []
    for entry in entries:  # the manifest's sizes are checked before any model runs
        try:
            check_image_size(entry.width, entry.height, entry.image)
            good.append(entry)
        except CrowdtkError as exc:
            if not skip_bad:
                raise
            skipped.append(exc.as_skipped())
    entries = good
    if not skip_bad:
        results = evaluate(predictor, entries, on_progress=on_progress, shard=(procs.rank, procs.world))
    else:  # one image at a time, so that a bad one is left out instead of stopping the run
        results = []
        for entry in entries[procs.rank :: procs.world]:
            try:
                results.extend(evaluate(predictor, [entry]))
            except CrowdtkError as exc:
                skipped.append(exc.as_skipped())
            if on_progress:
                on_progress(1)
    if procs.world > 1:
        import torch.distributed as dist

        gathered: list = [None] * procs.world
        dist.all_gather_object(gathered, (results, skipped))  # between this job's own processes, not from files
        order = {e.id: i for i, e in enumerate(entries)}
        results = sorted((r for part, _ in gathered for r in part), key=lambda r: order[r.id])
        skipped = list(dict.fromkeys(problem for _, part in gathered for problem in part))
    return Evaluation(name, predictor.loaded.path, results, skipped, procs.writer)


def results_csv(results: list[ImageResult]) -> str:
    """Per-image results as CSV text (eval --csv)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["image", "true_count", "predicted_count", "error", "game1", "game2", "game3"])
    for r in results:
        writer.writerow([r.id, r.true_count, f"{r.predicted:.3f}", f"{r.error:.3f}", *(f"{g:.3f}" for g in r.game)])
    return buffer.getvalue()
