"""Checkpoints: one ``.safetensors`` file, weights plus a JSON header in its metadata.

Loading goes through ``safetensors`` only, which parses a JSON header and raw tensor
bytes: nothing in a checkpoint can run code. A pickle-based file (``torch.save``'s
``.pt``/``.pth``) is refused with a message instead of being unpickled.

Header fields beyond the common artifact header (see ``formats.make_header``):
``model`` (name and constructor config), ``cap`` (whether CAP weights are inside),
``inference_only``, ``density_scale`` (the factor the model's output carries),
``input_scale`` (the image resize factor the model was trained at), ``training`` (the
resolved training configuration), ``labels_sha256``, ``epochs_done`` and
``best_val_mae``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from crowdtk.errors import CrowdtkError
from crowdtk.formats import CHECKPOINT, atomic_path, check_header

META_KEY = "crowdtk"


def save_tensors(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> None:
    """Write tensors and a JSON header atomically (safetensors needs contiguous, unshared tensors)."""
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(plain, str(tmp), metadata={META_KEY: json.dumps(header)})


def load_tensors(path: str | os.PathLike[str], fmt: str = CHECKPOINT) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read tensors and the header of a crowdtk safetensors artifact; never unpickles."""
    source = str(path)
    p = Path(path)
    if not p.is_file():
        raise CrowdtkError(f"{source}: checkpoint not found", "check the path")
    try:
        with safe_open(str(p), framework="pt") as fh:
            metadata = fh.metadata() or {}
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        with open(p, "rb") as fh:
            magic = fh.read(2)
        if magic == b"PK" or magic[:1] == b"\x80":  # torch.save's zip container, or a raw pickle
            raise CrowdtkError(
                f"{source}: is a pickle-based PyTorch file, which could run code when loaded",
                "crowdtk only loads .safetensors checkpoints; convert trusted weights with safetensors.torch.save_file",
            ) from None
        raise CrowdtkError(f"{source}: not a readable safetensors file ({exc})", "pass a checkpoint written by crowdtk") from None
    if META_KEY not in metadata:
        raise CrowdtkError(f"{source}: safetensors file without a crowdtk header", "pass a checkpoint written by crowdtk warmup/train/strip-cap")
    try:
        header = json.loads(metadata[META_KEY])
    except json.JSONDecodeError:
        raise CrowdtkError(f"{source}: crowdtk header is not JSON", "regenerate the checkpoint") from None
    return check_header(header, fmt, source), tensors


def state_path(output: str | os.PathLike[str]) -> Path:
    """The resumable training state written next to a checkpoint."""
    out = Path(output)
    return out.with_name(out.name.removesuffix(".safetensors") + ".state.safetensors")


def strip_cap(source: str | os.PathLike[str], output: str | os.PathLike[str], provenance_command: str = "strip-cap") -> dict[str, Any]:
    """Algorithm 1, line 8: drop the CAP module's weights and mark the checkpoint inference-only.

    CAP sits between the features and the output layer only while training, so the
    remaining weights predict exactly what the checkpoint predicted without CAP.
    """
    header, tensors = load_tensors(source)
    kept = {k: v for k, v in tensors.items() if not k.startswith("cap.")}
    header = dict(header)
    header.update(cap=False, inference_only=True, stripped_from=str(source), stripped_by=provenance_command,
                  removed_tensors=sorted(set(tensors) - set(kept)))
    save_tensors(output, kept, header)
    return header
