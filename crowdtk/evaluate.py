"""`eval`: a counter's errors on a labeled set: MAE and RMSE of the count (Eq. 11), NAE, GAME, MAE per
level of the images' attributes, and the localization of its heads (precision, recall and F1 within radii).

``evaluate_manifest`` is the command's one call: it checks the manifest (sizes, head points) before
any model runs, leaves bad images out with ``skip_bad`` (one image at a time, so that one bad image
does not stop the run), and under torchrun gathers every process's share on rank 0. The formulas are
in ``docs/metrics.md``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crowdtk.data import check_image_size, read_image, read_points_on_image
from crowdtk.errors import CrowdtkError
from crowdtk.formats import ManifestEntry
from crowdtk.geometry import STRIDE
from crowdtk.matching import match_points
from crowdtk.predict import Predictor, prefetched
from crowdtk.prelabel import image_heads
from crowdtk.runtime import Processes

ONE_PROCESS = Processes()  # a run without torchrun (frozen, so one shared default serves every call)


@dataclass
class ImageResult:
    id: str
    image: str
    true_count: int
    predicted: float
    game: list[float] = field(default_factory=list)  # absolute error summed over 4^L cells, L = 1..3
    attributes: dict[str, str | int] = field(default_factory=dict)  # the manifest entry's (MAE per level)
    predicted_points: int = 0  # heads extracted from the density (with localization radii)
    matched: dict[str, int] = field(default_factory=dict)  # radius (radius_key) -> predicted heads matched to truth

    @property
    def error(self) -> float:
        return self.predicted - self.true_count

    @property
    def relative_error(self) -> float | None:
        """|predicted − true| / true, this image's term of NAE; None for an image without heads."""
        return abs(self.error) / self.true_count if self.true_count > 0 else None


def radius_key(radius: float) -> str:
    """A localization radius as it is named in the JSON and CSV: 4, 8, 2.5."""
    return f"{radius:g}"


def matched_heads(predicted: np.ndarray, true: np.ndarray, radii: Sequence[float]) -> dict[str, int]:
    """Per radius (:func:`radius_key`): how many predicted heads are paired with a true head, one to one within the
    radius (:func:`crowdtk.matching.match_points`, the rule of ``labels diff``)."""
    return {radius_key(r): len(match_points(predicted, true, r)[0]) for r in radii}


def check_points(entries: Sequence[ManifestEntry], name: str) -> None:
    """Refuse a manifest with images that have no head points: eval compares predictions with them."""
    missing = [e.id for e in entries if e.points is None]
    if missing:
        raise CrowdtkError(
            f"{name}: {len(missing)} of {len(entries)} image(s) have no head points (first: '{missing[0]}'), and eval "
            "compares predictions with them",
            "evaluate on a labeled set, or count unlabeled images with crowdtk count",
        )


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
    radii: Sequence[float] = (),
) -> list[ImageResult]:
    """Predict every manifest image (this process's shard ``(rank, world)``) and compare with its points; with
    ``radii``, also the heads extracted from the prediction (:func:`crowdtk.prelabel.image_heads`)."""
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
        result = ImageResult(
            entry.id,
            entry.image,
            len(points),
            float(density.sum(dtype=np.float64)),
            game_errors(density, sx, sy, points, entry.width, entry.height),
            dict(entry.attributes or {}),
        )
        if radii and math.isfinite(result.predicted):
            heads = image_heads(density, sx, sy, entry.width, entry.height).points
            result.predicted_points = len(heads)
            result.matched = matched_heads(heads, points, radii)
        results.append(result)
        if on_progress:
            on_progress(1)
    return results


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole > 0 else None


def nae(results: Sequence[ImageResult]) -> float | None:
    """Mean of |predicted − true| / true over the images with at least one head; None when there is none."""
    terms = [e for e in (r.relative_error for r in results) if e is not None]
    return float(np.mean(terms)) if terms else None


def level_maes(results: Sequence[ImageResult]) -> dict[str, dict[str, Any]]:
    """Per level attribute: the MAE and number of images of each of its values (sorted), and the mean of those MAEs.
    An image without the attribute is left out of that attribute's levels."""
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(name for r in results for name in r.attributes):
        groups: dict[str | int, list[float]] = {}
        for r in results:
            if name in r.attributes:
                groups.setdefault(r.attributes[name], []).append(abs(r.error))
        # Numbers before text, each in its own order: levels 0..4 read in their order.
        values = sorted(groups, key=lambda v: (isinstance(v, str), v if isinstance(v, str) else int(v), str(v)))
        maes = {str(v): float(np.mean(groups[v])) for v in values}
        out[name] = {
            "mae": maes,
            "n_images": {str(v): len(groups[v]) for v in values},
            "mean_mae": float(np.mean(list(maes.values()))),
        }
    return out


def localization(results: Sequence[ImageResult], radii: Sequence[float]) -> dict[str, dict[str, Any]]:
    """Per radius: precision, recall and F1 of the predicted heads over all images together (matched heads
    summed over images, divided by the predicted, resp. true, heads summed); None where a ratio has no heads."""
    predicted = sum(r.predicted_points for r in results)
    true = sum(r.true_count for r in results)
    out = {}
    for radius in map(radius_key, radii):
        matched = sum(r.matched.get(radius, 0) for r in results)
        precision, recall = _ratio(matched, predicted), _ratio(matched, true)
        f1 = (
            None
            if precision is None or recall is None
            else (2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0)
        )
        out[radius] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "matched": matched,
            "predicted": predicted,
            "true": true,
        }
    return out


def summarize(results: list[ImageResult], radii: Sequence[float] = ()) -> dict[str, Any]:
    """MAE, RMSE, NAE, GAME(1..3), MAE per level and localization over images with a finite prediction; the
    others are listed."""
    finite = [r for r in results if math.isfinite(r.predicted)]
    errors = np.array([r.error for r in finite], dtype=np.float64)
    game = np.array([r.game for r in finite], dtype=np.float64).reshape(len(finite), -1)
    return {
        "mae": float(np.abs(errors).mean()) if len(finite) else math.nan,
        "rmse": float(np.sqrt((errors**2).mean())) if len(finite) else math.nan,
        "nae": nae(finite),
        "nae_images": sum(r.true_count > 0 for r in finite),
        "game": {str(level + 1): float(game[:, level].mean()) for level in range(game.shape[1])} if len(finite) else {},
        "levels": level_maes(finite),
        "localization": localization(finite, radii),
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
    radii: tuple[float, ...] = ()  # localization radii (px)

    def summary(self) -> dict[str, Any]:
        """summarize(results) with "skipped"; refused when no image gave a finite prediction."""
        if not self.results:
            raise CrowdtkError(f"{self.name}: every image was bad", "see the list of skipped images")
        if not any(math.isfinite(r.predicted) for r in self.results):
            raise CrowdtkError(
                f"{self.checkpoint}: the prediction is not finite (NaN or inf) for all {len(self.results)} image(s) "
                f"of {self.name}",
                "the checkpoint's weights have diverged; use an earlier checkpoint, or retrain with a lower --lr",
            )
        return {**summarize(self.results, self.radii), "skipped": self.skipped}


def evaluate_manifest(
    predictor: Predictor,
    entries: list[ManifestEntry],
    name: str,
    *,
    skip_bad: bool = False,
    procs: Processes = ONE_PROCESS,
    on_progress: Callable[[int], None] | None = None,
    radii: Sequence[float] = (),
) -> Evaluation:
    """Evaluate every image of the manifest ``name`` (this process's share under torchrun); ``radii``: the
    localization radii in pixels. Images without head points are refused, even with ``skip_bad`` (they are
    not bad images but an unlabeled set)."""
    check_points(entries, name)
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
        results = evaluate(predictor, entries, on_progress=on_progress, shard=(procs.rank, procs.world), radii=radii)
    else:  # one image at a time, so that a bad one is left out instead of stopping the run
        results = []
        for entry in entries[procs.rank :: procs.world]:
            try:
                results.extend(evaluate(predictor, [entry], radii=radii))
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
    return Evaluation(name, predictor.loaded.path, results, skipped, procs.writer, tuple(radii))


def results_csv(results: list[ImageResult], radii: Sequence[float] = ()) -> str:
    """Per-image results as CSV text (eval --csv): counts, errors, GAME, the image's NAE term (empty without
    heads), its level attributes, and with ``radii`` its predicted heads and how many matched at each radius."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    names = list(dict.fromkeys(name for r in results for name in r.attributes))
    keys = [radius_key(radius) for radius in radii]
    writer.writerow(
        [
            *("image", "true_count", "predicted_count", "error", "game1", "game2", "game3", "relative_error"),
            *names,
            *(["predicted_points"] if keys else []),
            *(f"matched_{key}px" for key in keys),
        ]
    )
    for r in results:
        relative = r.relative_error
        writer.writerow(
            [
                *(r.id, r.true_count, f"{r.predicted:.3f}", f"{r.error:.3f}", *(f"{g:.3f}" for g in r.game)),
                "" if relative is None else f"{relative:.4f}",
                *(r.attributes.get(name, "") for name in names),
                *([r.predicted_points] if keys else []),
                *(r.matched.get(key, "") for key in keys),
            ]
        )
    return buffer.getvalue()
