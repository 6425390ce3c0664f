"""Checkpoints: one ``.safetensors`` file, weights plus a JSON header in its metadata.

Loading goes through ``safetensors`` only, which parses a JSON header and raw tensor
bytes: nothing in a checkpoint can run code. A pickle-based file (``torch.save``'s
``.pt``/``.pth``) is refused with a message instead of being unpickled.

Header fields beyond the common artifact header (see ``formats.make_header``):
``model`` (name and constructor config), ``cap`` (whether CAP weights are inside),
``cap_affinity`` and ``cap_temperature`` (CAP's affinity form and its temperature, with ``cap``;
absent in checkpoints written before the forms existed, which read as ``paper``),
``inference_only``, ``density_scale`` (the factor the model's output carries),
``scale`` (the image resize factor the model was trained at; ``input_scale`` in checkpoints
written before the name was the same as the command line's, read by :func:`crowdtk.formats.trained_scale` and
:func:`crowdtk.formats.training_settings`), ``training`` (the resolved training configuration),
``labels_sha256``, ``epochs_done`` and ``best_val_mae``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from crowdtk.errors import CrowdtkError
from crowdtk.files import atomic_path
from crowdtk.formats import CHECKPOINT, check_header, stripped_checkpoint_header
from crowdtk.train_config import CAP_AFFINITIES

META_KEY = "crowdtk"


def save_tensors(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> None:
    """Write tensors and a JSON header atomically (safetensors needs contiguous, unshared tensors)."""
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(plain, str(tmp), metadata={META_KEY: json.dumps(header)})


def _read(path: str | os.PathLike[str], fmt: str, with_tensors: bool) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    source = str(path)
    p = Path(path)
    if not p.is_file():
        raise CrowdtkError(f"{source}: checkpoint not found", "check the path")
    try:
        with safe_open(str(p), framework="pt") as fh:
            metadata = fh.metadata() or {}
            tensors = {key: fh.get_tensor(key) for key in fh.keys()} if with_tensors else {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        with open(p, "rb") as fh:
            magic = fh.read(2)
        if magic == b"PK" or magic[:1] == b"\x80":  # torch.save's zip container, or a raw pickle
            raise CrowdtkError(
                f"{source}: is a pickle-based PyTorch file, which could run code when loaded",
                "crowdtk only loads .safetensors checkpoints; convert trusted weights with safetensors.torch.save_file",
            ) from None
        raise CrowdtkError(
            f"{source}: not a readable safetensors file ({exc})", "pass a checkpoint written by crowdtk"
        ) from None
    if META_KEY not in metadata:
        raise CrowdtkError(
            f"{source}: safetensors file without a crowdtk header",
            "pass a checkpoint written by crowdtk warmup/train/strip-cap",
        )
    try:
        header = json.loads(metadata[META_KEY])
    except (ValueError, RecursionError):
        raise CrowdtkError(f"{source}: crowdtk header is not JSON", "regenerate the checkpoint") from None
    return check_header(header, fmt, source), tensors


def load_tensors(path: str | os.PathLike[str], fmt: str = CHECKPOINT) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read tensors and the header of a crowdtk safetensors artifact; never unpickles."""
    return _read(path, fmt, with_tensors=True)


def read_header(path: str | os.PathLike[str], fmt: str = CHECKPOINT) -> dict[str, Any]:
    """The checked header of a crowdtk safetensors artifact, without reading its tensors."""
    return _read(path, fmt, with_tensors=False)[0]


def model_of(header: dict[str, Any], source: str) -> tuple[str, dict[str, Any]]:
    """The (name, constructor config) a checkpoint header records; a CrowdtkError when it records none."""
    model = header.get("model")
    if (
        not isinstance(model, dict)
        or not isinstance(model.get("name"), str)
        or not isinstance(model.get("config", {}), dict)
    ):
        raise CrowdtkError(
            f"{source}: checkpoint header names no model", "pass a checkpoint written by crowdtk warmup/train/strip-cap"
        )
    return model["name"], dict(model.get("config", {}))


def cap_settings(header: dict[str, Any], source: str) -> tuple[str, float | None]:
    """The (affinity form, temperature) CAP was trained with; ``("paper", None)`` when the header records none."""
    affinity = header.get("cap_affinity", "paper")
    temperature = header.get("cap_temperature")
    if affinity not in CAP_AFFINITIES:
        raise CrowdtkError(
            f"{source}: checkpoint header has an unknown CAP affinity form {affinity!r}",
            f"it must be one of {', '.join(CAP_AFFINITIES)}; regenerate the checkpoint",
        )
    bad = (
        temperature is not None
        if affinity == "paper"
        else not isinstance(temperature, (int, float))
        or isinstance(temperature, bool)
        or not (math.isfinite(temperature) and temperature > 0)
    )
    if bad:
        raise CrowdtkError(
            f"{source}: checkpoint header has an invalid CAP temperature {temperature!r} for affinity '{affinity}'",
            "regenerate the checkpoint",
        )
    return affinity, None if temperature is None else float(temperature)


def refuse_training_state(header: dict[str, Any], source: str | os.PathLike[str]) -> None:
    """Refuse the training state (``state_path``) where a checkpoint is wanted, naming the checkpoint it belongs to.

    A state is a checkpoint-format file too, with the model's weights under ``model.`` and the optimizer's beside
    them, so without this check it reached the model and failed as "weights do not fit the model"."""
    if not header.get("state"):
        return
    p = Path(source)
    stem = p.name.removesuffix(".state.safetensors")
    if stem != p.name:
        owner = p.with_name(stem + ".safetensors")
        fix = f"pass {owner}, the checkpoint it belongs to" + (
            "" if owner.exists() else " (not there now: moved, or not written yet)"
        )
    else:
        fix = "pass the checkpoint its training run wrote beside it"
    raise CrowdtkError(
        f"{source}: is a training state (what train and warmup --resume continue from), not a checkpoint", fix
    )


def init_model(init: str | os.PathLike[str], model: str | None) -> str:
    """The model of a checkpoint to start training from (``--init``); refused when it is not a crowdtk
    checkpoint (a training state included), or is of another model than ``model`` (None: any)."""
    header = read_header(init)
    refuse_training_state(header, init)
    name, _ = model_of(header, str(init))
    if model is not None and model != name:
        raise CrowdtkError(
            f"{init}: is a checkpoint of model '{name}', not of --model {model}",
            f"drop --model (the --init checkpoint's model is used), or pass a checkpoint of a '{model}' model",
        )
    return name


def state_path(output: str | os.PathLike[str]) -> Path:
    """The resumable training state written next to a checkpoint."""
    out = Path(output)
    return out.with_name(out.name.removesuffix(".safetensors") + ".state.safetensors")


def strip_cap(
    source: str | os.PathLike[str], output: str | os.PathLike[str], provenance_command: str = "strip-cap"
) -> dict[str, Any]:
    """Algorithm 1, line 8: drop the CAP module's weights and mark the checkpoint inference-only.

    CAP sits between the features and the output layer only while training, so the
    remaining weights predict exactly what the checkpoint predicted without CAP.
    """
    header, tensors = load_tensors(source)
    refuse_training_state(header, source)
    kept = {k: v for k, v in tensors.items() if not k.startswith("cap.")}
    header = stripped_checkpoint_header(header, str(source), provenance_command, sorted(set(tensors) - set(kept)))
    save_tensors(output, kept, header)
    return header


def training_finished(output: str | os.PathLike[str]) -> bool:
    """Whether ``output`` is the result of a completed run, not the best epoch so far of one
    still going or interrupted (train writes its best checkpoint after every improving epoch)."""
    if not Path(output).exists():
        return False
    state = state_path(output)
    if not state.exists():
        return True
    header = read_header(state)
    return header.get("epochs_done", 0) >= (header.get("training") or {}).get("epochs", 0)
