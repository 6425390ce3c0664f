"""`vectors`: multi-level density vectors of every strip (paper Eq. 3-4).

For strip j with predicted density m (its cells, full height), level k = 1..L cuts m into k
horizontal bands of (as nearly as possible) equal height and sums each band; the vector
concatenates levels 1..L (1 + 2 + … + L numbers), level k scaled by k / L so that all
levels share one scale.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from crowdtk.data import check_image_size, check_recorded_size, read_image
from crowdtk.errors import CrowdtkError
from crowdtk.formats import ManifestEntry, StripVectors
from crowdtk.geometry import STRIDE, strip_edges
from crowdtk.predict import Predictor, prefetched, require_finite


def level_vector(strip_density: np.ndarray, levels: int) -> np.ndarray:
    """The multi-level density vector of one strip's density map (rows × columns)."""
    row_sums = strip_density.sum(axis=1, dtype=np.float64)
    parts = []
    for k in range(1, levels + 1):
        bands = np.array_split(row_sums, k)
        parts.append(np.array([band.sum() for band in bands]) * (k / levels))
    return np.concatenate(parts)


def strip_columns(x0: int, x1: int, n_cols: int, sx: float) -> slice:
    """The density columns whose centre (in original pixels) lies in [x0, x1)."""
    centres = (np.arange(n_cols) + 0.5) * STRIDE / sx
    inside = np.flatnonzero((centres >= x0) & (centres < x1))
    if inside.size == 0:
        raise CrowdtkError(
            f"strip [{x0}, {x1}) covers no output cell at this scale", "use a larger --strip-frac or --scale"
        )
    return slice(int(inside[0]), int(inside[-1]) + 1)


def _read_or_error(entry: ManifestEntry) -> np.ndarray | CrowdtkError:
    try:
        return read_image(entry.image, entry.sha256)
    except CrowdtkError as exc:
        return exc


def compute_vectors(
    predictor: Predictor,
    entries: list[ManifestEntry],
    levels: int = 4,
    strip_frac: float = 0.1,
    scale: float = 1.0,
    on_progress: Callable[[int], None] | None = None,
    skip_bad: bool = False,
    skipped: list[str] | None = None,
) -> StripVectors:
    """Vectors of every strip of every image; a bad image (unreadable, of another size than the manifest says,
    too small for the strips, or predicted as NaN/inf) stops the run unless ``skip_bad``: then it is left out
    and its error appended to ``skipped``."""
    if levels < 1:
        raise CrowdtkError(f"--levels must be at least 1, got {levels}", "use the paper's 4")
    if not entries:
        raise CrowdtkError("no images to compute vectors for", "check the manifest and --exclude")
    kept: list[ManifestEntry] = []
    strip_image, x0s, x1s, vectors, counts = [], [], [], [], []
    for entry, (_, image) in zip(entries, prefetched(entries, read=_read_or_error)):
        try:
            if isinstance(image, CrowdtkError):
                raise image
            rows = _image_vectors(predictor, entry, image, levels, strip_frac, scale)
        except CrowdtkError as exc:
            if not skip_bad:
                raise
            if skipped is not None:
                skipped.append(exc.as_skipped())
            rows = None
        if rows is not None:
            for x0, x1, vector, count in rows:
                strip_image.append(len(kept))
                x0s.append(x0)
                x1s.append(x1)
                vectors.append(vector)
                counts.append(count)
            kept.append(entry)
        if on_progress:
            on_progress(1)
    if not kept:
        raise CrowdtkError("every image was bad", "see the list of skipped images")
    return StripVectors(
        ids=np.array([e.id for e in kept]),
        sha256=np.array([e.sha256 for e in kept]),
        strip_image=np.array(strip_image, dtype=np.int64),
        strip_x0=np.array(x0s, dtype=np.int64),
        strip_x1=np.array(x1s, dtype=np.int64),
        vectors=np.array(vectors, dtype=np.float32),
        counts=np.array(counts, dtype=np.float32),
    )


def _image_vectors(
    predictor: Predictor, entry: ManifestEntry, image: np.ndarray, levels: int, strip_frac: float, scale: float
) -> list[tuple[int, int, np.ndarray, float]]:
    check_image_size(entry.width, entry.height, entry.image)
    check_recorded_size(image, entry)
    try:
        edges = strip_edges(entry.width, strip_frac, scale)
    except CrowdtkError as exc:
        raise CrowdtkError(f"{entry.image}: {exc.what}", exc.fix) from None
    density, sx, _ = predictor.density(image, entry.sha256)
    require_finite(density, entry.image)
    rows = []
    for x0, x1 in zip(edges[:-1], edges[1:]):
        part = density[:, strip_columns(int(x0), int(x1), density.shape[1], sx)]
        rows.append((int(x0), int(x1), level_vector(part, levels), float(part.sum(dtype=np.float64))))
    return rows
