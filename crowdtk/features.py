"""Front-end features computed once per image, for training with a frozen front part (``--freeze``).

Re-running the ImageNet encoder on every crop of every step is most of a CPU training
step. With ``--freeze encoder`` (or ``early``) that part never changes, so its stride-8
output is computed once per image and per horizontal flip, and the trained rest of the
counter (its back end, + CAP) learns from the stored maps on whole images.

The maps are float16 (measured: 2e-4 relative change against float32, no change in MAE)
and are kept either in memory or in a cache folder, one safetensors file per map, named
by a digest of everything that determines it: the image's sha256, the working scale, the
flip, the model's name and options, the freeze level and the frozen weights themselves.
A cache folder can therefore be shared by every run that uses the same front end (the
bench shares one across methods and seeds) and a changed image or weight is never served
a stale map. With a folder, training reads each map when its batch needs it, so memory
does not grow with the pool.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from crowdtk.files import atomic_path
from crowdtk.errors import CrowdtkError
from crowdtk.models import Counter, inference_copy


def frozen_digest(counter: Counter, level: str) -> str:
    """sha256 of the model's identity and the frozen modules' weights and buffers."""
    h = hashlib.sha256(json.dumps({"model": counter.name, "config": counter.config, "level": level}, sort_keys=True).encode())
    for module in counter.frozen_modules(level):
        for name, tensor in module.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class FeatureMap:
    """One cached map: held in memory (``tensor``) or read from ``path`` when needed."""

    tensor: torch.Tensor | None = None
    path: Path | None = None

    def load(self) -> torch.Tensor:
        if self.tensor is not None:
            return self.tensor
        assert self.path is not None
        try:
            return load_file(self.path)["features"]
        except (OSError, KeyError, ValueError) as exc:  # a file removed or damaged since it was written
            raise CrowdtkError(f"{self.path}: unreadable cached features ({exc})",
                               "delete the feature cache folder; it is rebuilt on the next run") from None


class FeatureCache:
    """Computes (or finds) the frozen part's features of images at the working resolution."""

    def __init__(self, counter: Counter, level: str, device: torch.device, folder: str | os.PathLike[str] | None = None) -> None:
        self.level = level
        self.device = device
        self.digest = frozen_digest(counter, level)
        # BN folded into the convolutions: the same features to ~1e-6, 20-30% faster (models.inference_copy).
        self.trunk = inference_copy(counter).to(device)
        self.folder = Path(folder) if folder is not None else None
        self.computed = 0  # maps computed by this process (the rest came from the folder)

    def key(self, image_sha256: str, scale: float, flip: bool) -> str:
        text = json.dumps({"image": image_sha256, "scale": scale, "flip": flip, "frozen": self.digest}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    @torch.inference_mode()
    def _compute(self, image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1)[None].float().div_(255.0)
        x = self.trunk.normalize(x).contiguous(memory_format=torch.channels_last)
        return self.trunk.encode(x, self.level)[0].to(torch.float16).cpu().contiguous()

    def map(self, image: np.ndarray, image_sha256: str, scale: float, flip: bool = False) -> FeatureMap:
        """The map of ``image`` (uint8 H×W×3 at the working scale, padded to the stride; mirrored
        first when ``flip``); ``image_sha256`` and ``scale`` name the original image and scale."""
        pixels = image[:, ::-1] if flip else image
        if self.folder is None:
            self.computed += 1
            return FeatureMap(tensor=self._compute(pixels))
        key = self.key(image_sha256, scale, flip)
        path = self.folder / key[:2] / f"{key}.safetensors"
        if not path.exists():
            features = self._compute(pixels)
            self.computed += 1
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                save_file({"features": features}, str(tmp))
        return FeatureMap(path=path)

    def maps(self, image: np.ndarray, image_sha256: str, scale: float) -> tuple[FeatureMap, FeatureMap]:
        """The maps of ``image`` and of its horizontal mirror (training's flips)."""
        return self.map(image, image_sha256, scale), self.map(image, image_sha256, scale, flip=True)
