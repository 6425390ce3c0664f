"""`vectors`: multi-level density vectors of every strip (paper Eq. 3-4).

For strip j with predicted density m (its cells, full height), level k = 1..L cuts m into k
horizontal bands of (as nearly as possible) equal height and sums each band; the vector
concatenates levels 1..L (1 + 2 + … + L numbers), level k scaled by k / L so that all
levels share one scale.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from crowdtk.errors import CrowdtkError
from crowdtk.formats import ManifestEntry, StripVectors
from crowdtk.predict import Predictor, prefetched
from crowdtk.strips import strip_edges
from crowdtk.train import STRIDE


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
        raise CrowdtkError(f"strip [{x0}, {x1}) covers no output cell at this scale", "use a larger --strip-frac or --scale")
    return slice(int(inside[0]), int(inside[-1]) + 1)


def compute_vectors(predictor: Predictor, entries: list[ManifestEntry], levels: int = 4, strip_frac: float = 0.1,
                    on_progress: Callable[[int], None] | None = None) -> StripVectors:
    if levels < 1:
        raise CrowdtkError(f"--levels must be at least 1, got {levels}", "use the paper's 4")
    if not entries:
        raise CrowdtkError("no images to compute vectors for", "check the manifest and --exclude")
    strip_image, x0s, x1s, vectors, counts = [], [], [], [], []
    for index, (entry, (_, image)) in enumerate(zip(entries, prefetched(e.image for e in entries))):
        density, sx, _ = predictor.density(image)
        edges = strip_edges(entry.width, strip_frac, STRIDE)
        for x0, x1 in zip(edges[:-1], edges[1:]):
            part = density[:, strip_columns(int(x0), int(x1), density.shape[1], sx)]
            strip_image.append(index)
            x0s.append(int(x0))
            x1s.append(int(x1))
            vectors.append(level_vector(part, levels))
            counts.append(float(part.sum(dtype=np.float64)))
        if on_progress:
            on_progress(1)
    return StripVectors(
        ids=np.array([e.id for e in entries]),
        sha256=np.array([e.sha256 for e in entries]),
        strip_image=np.array(strip_image, dtype=np.int64),
        strip_x0=np.array(x0s, dtype=np.int64),
        strip_x1=np.array(x1s, dtype=np.int64),
        vectors=np.array(vectors, dtype=np.float32),
        counts=np.array(counts, dtype=np.float32),
    )
