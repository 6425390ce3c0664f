"""How the stages that run a trained counter (eval, count, vectors, show) run it, with the defaults,
torch-free so that the CLI can show them without loading torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PredictConfig:
    max_side: int = 2048  # images larger than this (px, after the checkpoint's scale) run in tiles
    feature_cache: str | None = None  # cached features of a front end trained frozen (train --feature-cache)
    device: str = "auto"
    flip_average: bool = False  # average with the mirrored image's mirrored density (test-time flip)


@dataclass(frozen=True)
class VectorsConfig:
    levels: int = 4  # L of the multi-level density vector (Eq. 3)
    strip_frac: float = 0.1  # strip width as a fraction of the image width (paper 3.4)


# What runs the counter's forward pass in `count --backend` (crowdtk.onnx_export.load_for_backend).
BACKENDS = ("torch", "onnxruntime")
