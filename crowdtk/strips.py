"""Strip geometry (paper 3.4): an image is cut into vertical strips of ~``strip_frac`` of its width.

There are ``round(1 / strip_frac)`` strips; their edges are snapped to the model's output
stride so a strip covers whole cells of the stride-8 density map. The strips tile the
image exactly, so a budget of M% of the area is M / strip_frac strips per image.
"""

from __future__ import annotations

import numpy as np

from crowdtk.errors import CrowdtkError


def strip_count(strip_frac: float) -> int:
    if not 0 < strip_frac <= 1:
        raise CrowdtkError(f"--strip-frac must be in (0, 1], got {strip_frac}", "use e.g. 0.1 (the paper's 10%)")
    return max(1, round(1 / strip_frac))


def strip_edges(width: int, strip_frac: float = 0.1, stride: int = 8) -> np.ndarray:
    """Column edges ``e`` (length n+1): strip i is ``[e[i], e[i+1])``; inner edges are multiples of ``stride``."""
    n = strip_count(strip_frac)
    cells = -(-width // stride)  # the image's width in output cells, rounded up
    if cells < n:
        raise CrowdtkError(
            f"an image {width} px wide has only {cells} columns of {stride}-px cells, fewer than {n} strips",
            "use a larger --strip-frac for such small images",
        )
    inner = np.round(np.arange(1, n) * cells / n).astype(np.int64) * stride
    return np.concatenate([[0], inner, [width]]).astype(np.int64)
