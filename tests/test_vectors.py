"""`crowdtk vectors`: each image's strips described by the warm-up counter's multi-level strip sums (Eq. 3–4)."""

from __future__ import annotations

import numpy as np
from conftest import run

from crowdtk.files import file_digest
from crowdtk.formats import load_vectors


def test_vectors_are_multilevel_strip_sums(strip_pool, warm_ckpt, tmp_path):
    out = tmp_path / "v.npz"
    result = run("vectors", warm_ckpt, strip_pool["manifest"], "-o", out, "--levels", "4", "-q")
    assert result.exit_code == 0, result.output
    header, data = load_vectors(out)
    assert header["manifest_sha256"] == file_digest(strip_pool["manifest"]) and header["levels"] == 4
    assert data.vectors.shape == (6 * 10, 10)
    # Level k sums to the strip count scaled by k/L.
    for k, (lo, hi) in enumerate([(0, 1), (1, 3), (3, 6), (6, 10)], start=1):
        np.testing.assert_allclose(data.vectors[:, lo:hi].sum(1), data.counts * k / 4, rtol=1e-4, atol=1e-4)
    assert (data.strip_x1 > data.strip_x0).all()
