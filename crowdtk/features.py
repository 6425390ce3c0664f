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

A cache entry never changes a result. Each file's metadata holds the sha256 of the map's bytes
and the entry's key, checked at every read; a file that cannot be read, is truncated, fails its
digest, or holds a map of another type or size than the image's is computed again from the
image and rewritten, with a warning naming it (on the ``crowdtk.features`` logger, which the
commands show). Unchecked, corrupted data in one file made a Part B image's prediction non-finite,
so ``eval`` silently left that image out (MAE 74.56 became 76.33), and a truncated file stopped the
run with safetensors' own error. Files written before the digest existed are treated as stale the same way
(computed again, with one warning per folder).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from crowdtk.errors import CrowdtkError
from crowdtk.files import atomic_path
from crowdtk.geometry import STRIDE
from crowdtk.models import Counter, inference_copy

#: Recomputed cache entries are reported here (level WARNING); the commands show it (crowdtk.cli.common.Log).
log = logging.getLogger("crowdtk.features")
log.addHandler(logging.NullHandler())  # no "last resort" printing to stderr when nobody listens

# The entry format: "2" files carry their map's digest; files without one (made before it) are stale.
FORMAT = "2"


class DamagedEntry(Exception):
    """Why a cache file cannot serve its map; ``stale``: written by an older crowdtk, not damaged."""

    def __init__(self, reason: str, stale: bool = False) -> None:
        super().__init__(reason)
        self.stale = stale


def map_digest(features: torch.Tensor) -> str:
    """sha256 of a map's bytes, as recorded in its file's metadata.

    What checking every read costs (measured on one core of a 2-core machine busy with a bench run,
    files in the page cache, sha256 at ~570 MB/s): a Part B map at the bench's --scale 0.5 (lite
    encoder, 112×48×64 float16, 0.69 MB) reads and copies in 0.6 ms and hashes in 1.6 ms, so a
    training step of 4 maps pays ~9 ms on the ~330 ms such a step took in that bench (about 3%); a
    full-scale csrnet map (512×96×128, 12.6 MB) reads in 9 ms and hashes in 33 ms.
    """
    return hashlib.sha256(features.contiguous().view(torch.uint8).numpy().data).hexdigest()


def read_entry(path: Path, key: str, spatial: tuple[int, int] | None = None) -> torch.Tensor:
    """The map stored at ``path`` for ``key``, checked against its digest and, when given, against the
    image's map size ``spatial`` (H/8, W/8); :class:`DamagedEntry` says why it cannot be used."""
    try:
        with safe_open(path, framework="pt") as fh:
            meta = fh.metadata() or {}
            # get_tensor maps the file's pages: a copy makes the bytes checked the bytes used, whatever
            # happens to the file later (an in-place write would otherwise change a checked map).
            features = fh.get_tensor("features").clone()
    except FileNotFoundError:
        raise DamagedEntry("are missing (removed since they were written)") from None
    # Truncated or garbled files raise SafetensorError, which is neither an OSError nor a ValueError.
    except (OSError, SafetensorError, KeyError, ValueError) as exc:
        raise DamagedEntry(f"are unreadable ({exc})") from None
    if meta.get("format") != FORMAT or "sha256" not in meta:
        raise DamagedEntry("have no digest (written by an older crowdtk)", stale=True)
    if meta.get("key") != key:
        raise DamagedEntry("belong to another entry (the file was copied or renamed)")
    if (
        features.dtype != torch.float16
        or features.dim() != 3
        or (spatial is not None and tuple(features.shape[1:]) != spatial)
    ):
        raise DamagedEntry(f"are a {features.dtype} map of shape {tuple(features.shape)}, not this image's")
    if map_digest(features) != meta["sha256"]:
        raise DamagedEntry("do not match their digest (the file is damaged)")
    return features


def frozen_digest(counter: Counter, level: str) -> str:
    """sha256 of the model's identity and the frozen modules' weights and buffers."""
    h = hashlib.sha256(
        json.dumps({"model": counter.name, "config": counter.config, "level": level}, sort_keys=True).encode()
    )
    for module in counter.frozen_modules(level):
        for name, tensor in module.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class FeatureMap:
    """One cached map: held in memory (``tensor``) or read from ``path`` when needed.

    A file is checked when it is read, not when it is found: training finds every map once before
    its first epoch and reads it at every batch, so a file damaged in between is caught too, and no
    file is read more often than before. One that fails is replaced by ``recompute``, which
    computes the map from the image again and rewrites the file (and says whether it could: a map
    that could not be rewritten is kept in memory, so it is computed once).
    """

    tensor: torch.Tensor | None = None
    path: Path | None = None
    key: str = ""
    spatial: tuple[int, int] | None = None  # (H/8, W/8) of the image
    recompute: Callable[[DamagedEntry], tuple[torch.Tensor, bool]] | None = None

    def load(self) -> torch.Tensor:
        if self.tensor is not None:
            return self.tensor
        assert self.path is not None
        try:
            return read_entry(self.path, self.key, self.spatial)
        except DamagedEntry as damage:
            if self.recompute is None:
                raise CrowdtkError(
                    f"{self.path}: cached features {damage}",
                    "delete the feature cache folder; it is rebuilt on the next run",
                ) from None
            features, stored = self.recompute(damage)
            if not stored:
                self.tensor = features
            return features


class FeatureCache:
    """Computes (or finds) the frozen part's features of images at the working resolution."""

    def __init__(
        self, counter: Counter, level: str, device: torch.device, folder: str | os.PathLike[str] | None = None
    ) -> None:
        self.level = level
        self.device = device
        self.digest = frozen_digest(counter, level)
        # BN folded into the convolutions: the same features to ~1e-6, 20-30% faster (models.inference_copy).
        self.trunk = inference_copy(counter).to(device)
        self.folder = Path(folder) if folder is not None else None
        self.computed = 0  # maps computed by this process (the rest came from the folder)
        self._told_stale = False

    def key(self, image_sha256: str, scale: float, flip: bool) -> str:
        text = json.dumps({"image": image_sha256, "scale": scale, "flip": flip, "frozen": self.digest}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    @torch.inference_mode()
    def _compute(self, image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1)[None].float().div_(255.0)
        x = self.trunk.normalize(x).contiguous(memory_format=torch.channels_last)
        return self.trunk.encode(x, self.level)[0].to(torch.float16).cpu().contiguous()

    def _store(self, path: Path, key: str, features: torch.Tensor) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file(
                {"features": features},
                str(tmp),
                metadata={"format": FORMAT, "key": key, "sha256": map_digest(features)},
            )

    def map(
        self,
        image: np.ndarray,
        image_sha256: str,
        scale: float,
        flip: bool = False,
        source: Callable[[], np.ndarray] | None = None,
    ) -> FeatureMap:
        """The map of ``image`` (uint8 H×W×3 at the working scale, padded to the stride; mirrored
        first when ``flip``); ``image_sha256`` and ``scale`` name the original image and scale.

        A damaged cache file is computed again from ``source()``, which gives ``image`` again; without
        ``source`` the map keeps ``image`` itself for that (training, which lets its images go once
        their maps exist, passes one that reads the image file again)."""
        pixels = image[:, ::-1] if flip else image
        if self.folder is None:
            self.computed += 1
            return FeatureMap(tensor=self._compute(pixels))
        key = self.key(image_sha256, scale, flip)
        path = self.folder / key[:2] / f"{key}.safetensors"
        if not path.exists():
            features = self._compute(pixels)
            self.computed += 1
            self._store(path, key, features)
        again = source if source is not None else (lambda: image)

        def recompute(damage: DamagedEntry) -> tuple[torch.Tensor, bool]:
            fresh = again()
            features = self._compute(fresh[:, ::-1] if flip else fresh)
            self.computed += 1
            try:
                self._store(path, key, features)
            except OSError as exc:  # a read-only shared cache still gives the right map, only not on disk
                self._warn(path, damage, f"; it could not be rewritten ({exc})")
                return features, False
            self._warn(path, damage, "")
            return features, True

        return FeatureMap(
            path=path, key=key, spatial=(image.shape[0] // STRIDE, image.shape[1] // STRIDE), recompute=recompute
        )

    def _warn(self, path: Path, damage: DamagedEntry, unsaved: str) -> None:
        if not damage.stale:
            log.warning(
                "%s: cached features %s; computed again from the image%s",
                path,
                damage,
                unsaved,
                extra={"source": str(path)},
            )
        elif not self._told_stale:  # an older crowdtk's folder: one warning, not one per map
            self._told_stale = True
            log.warning(
                "%s: cached features %s; computed again from the image, as is every such file in %s%s",
                path,
                damage,
                self.folder,
                unsaved,
                extra={"source": str(path)},
            )

    def maps(
        self, image: np.ndarray, image_sha256: str, scale: float, source: Callable[[], np.ndarray] | None = None
    ) -> tuple[FeatureMap, FeatureMap]:
        """The maps of ``image`` and of its horizontal mirror (training's flips)."""
        return self.map(image, image_sha256, scale, source=source), self.map(
            image, image_sha256, scale, flip=True, source=source
        )
