"""Counters as ONNX models: ``export-model`` writes one, ``count --backend onnxruntime`` runs one.

The ONNX graph is the counter's forward pass and nothing else (batch norms folded, CAP left out): an
``N×3×H×W`` float32 batch, normalised as the counter's own ``normalize`` does it, with ``H`` and ``W``
multiples of the output stride, gives the ``N×1×H/8×W/8`` density map times ``density_scale``. Batch,
height and width are dynamic. Everything a reader outside crowdtk needs to prepare an image and to read the
output is in the model's ``metadata_props`` (:data:`METADATA_KEYS`), and the artifact's crowdtk header
(format ``onnx-counter``, crowdtk.formats) under ``crowdtk``.

``count --backend onnxruntime`` keeps crowdtk's whole pipeline (crowdtk.predict.Predictor: resizing by
the trained scale, padding, normalising, tiling, flip averaging) and swaps only the forward call: the
Predictor runs an :class:`OnnxCounter`, whose forward is one ONNX Runtime session run on the CPU.

Exporting needs the packages ``onnx`` and ``onnxscript`` (torch's exporter), running needs
``onnxruntime``: the ``onnx`` extra, ``pip install 'crowdtk[onnx]'``.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from crowdtk.errors import CrowdtkError, UsageError
from crowdtk.files import atomic_path, file_digest
from crowdtk.formats import ONNX_COUNTER, Provenance, check_header, onnx_counter_header
from crowdtk.geometry import STRIDE
from crowdtk.models import Counter, inference_copy
from crowdtk.predict import LoadedModel, load_counter

EXTRA = "onnx"
INSTALL = f"pip install 'crowdtk[{EXTRA}]'"
INPUT_NAME = "image"
OUTPUT_NAME = "density"
# The opset torch's exporter translates to directly (its default, 20, is a conversion step after that);
# onnxruntime has run opset 18 since version 1.14.
OPSET = 18

# metadata_props of an exported counter, each value a string (JSON for lists and numbers).
METADATA_KEYS = {
    "crowdtk": "the crowdtk header (JSON, format onnx-counter): model, training, source checkpoint digest",
    "input_mean": "per-channel mean (RGB) subtracted from the image scaled to 0..1",
    "input_std": "per-channel divisor (RGB) applied after the mean",
    "output_stride": "input pixels per output cell along each side; input sides must be multiples of it",
    "scale": "factor the image is resized by before the model (area interpolation when shrinking)",
    "density_scale": "the output divided by this is heads per cell; the count is the sum over cells",
    "preprocessing": "the steps in words",
}
PREPROCESSING = (
    "RGB uint8 image; resize width and height by scale (each side round(side * scale), at least "
    "output_stride px); pad with black at the bottom and right to multiples of output_stride; divide by 255, "
    "subtract input_mean and divide by input_std per channel; feed as float32 N×3×H×W. The count is "
    "sum(output) / density_scale."
)


def require(module: str, purpose: str) -> Any:
    """Import ``module`` of the onnx extra, or raise a CrowdtkError that names the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise CrowdtkError(
            f"{purpose} needs the Python package '{module}', which is not installed",
            f"install crowdtk's onnx extra: {INSTALL}",
        ) from None


def _cap_tensors(path: str | os.PathLike[str]) -> list[str]:
    """The names of CAP's tensors in a checkpoint (left out of the export, as strip-cap leaves them out)."""
    with safe_open(str(path), framework="pt") as fh:
        return sorted(k for k in fh.keys() if k.startswith("cap."))


def export_onnx(
    checkpoint: str | os.PathLike[str],
    output: str | os.PathLike[str],
    provenance: Provenance,
    loaded: LoadedModel | None = None,
) -> dict[str, Any]:
    """Write the counter of ``checkpoint`` (``loaded``, when the caller has loaded it) as an ONNX model with
    dynamic batch, height and width; returns its crowdtk header (the other metadata_props derive from it)."""
    require("onnx", "exporting to ONNX")
    require("onnxscript", "exporting to ONNX (torch's exporter)")
    loaded = loaded if loaded is not None else load_counter(checkpoint)
    header = onnx_counter_header(provenance, loaded.header, file_digest(checkpoint), _cap_tensors(checkpoint))
    write_onnx(loaded.counter, header, output)
    return header


def write_onnx(counter: Counter, header: dict[str, Any], output: str | os.PathLike[str]) -> None:
    """Write ``counter``'s inference copy (batch norms folded) as an ONNX graph with the metadata_props of
    ``header`` (an ``onnx-counter`` header, crowdtk.formats.onnx_counter_header)."""
    counter = inference_copy(counter)
    batch, cells_h, cells_w = (torch.export.Dim(n, min=1) for n in ("batch", "cells_h", "cells_w"))
    # A batch of two: an example batch of one would fix the batch dimension at 1 (torch.export specialises 0 and 1).
    example = torch.zeros(2, 3, 8 * STRIDE, 12 * STRIDE)
    # The exporter reports its steps on stdout and warns about its internals: none of it is the user's business
    # (a failure raises with its own message).
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            counter,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch, 2: STRIDE * cells_h, 3: STRIDE * cells_w},),
            opset_version=OPSET,
            external_data=False,
            optimize=True,
            verbose=False,
        )
    assert program is not None  # dynamo=True always returns the program
    program.model.metadata_props.update(metadata(counter, header))
    with atomic_path(output) as tmp:
        program.save(str(tmp), external_data=False)


def metadata(counter: Counter, header: dict[str, Any]) -> dict[str, str]:
    """The metadata_props of an exported counter (:data:`METADATA_KEYS`)."""
    return {
        "crowdtk": json.dumps(header),
        "input_mean": json.dumps([float(v) for v in counter.mean]),
        "input_std": json.dumps([float(v) for v in counter.std]),
        "output_stride": json.dumps(int(counter.stride)),
        "scale": json.dumps(float(header["scale"])),
        "density_scale": json.dumps(float(header["density_scale"])),
        "preprocessing": PREPROCESSING,
    }


class OnnxCounter(Counter):
    """An exported counter run by ONNX Runtime on the CPU, standing where the Predictor runs a torch counter:
    the same ``to_input`` (the normalisation recorded at export), a forward that is one session run.

    Only whole forward passes exist in the graph, so the ``--freeze`` parts (``encode``, ``decode``) do not."""

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        super().__init__()
        ort = require("onnxruntime", "count --backend onnxruntime")
        options = ort.SessionOptions()
        # As many threads as torch uses here, so that the two backends compare like for like.
        options.intra_op_num_threads = threads if threads is not None else torch.get_num_threads()
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for files it cannot read
            raise CrowdtkError(
                f"{path}: not an ONNX model onnxruntime can load ({str(exc).splitlines()[0][:200]})",
                "pass a model written by 'crowdtk export-model'",
            ) from None
        self.props: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.path = str(path)
        self.header = read_metadata(self.props, self.path)
        self.name = str((self.header.get("model") or {}).get("name", "onnx"))
        self.mean = _channels(self.props, "input_mean", self.path)
        self.std = _channels(self.props, "input_std", self.path)
        self.input_name = self.session.get_inputs()[0].name

    def to_input(self, images: Any, device: torch.device) -> torch.Tensor:
        # ONNX Runtime reads a dense NCHW array: the torch counter's channels-last layout would be one more copy.
        return super().to_input(images, device).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(self.session.run(None, {self.input_name: batch})[0])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise self._whole_only()

    def frozen_modules(self, level: str) -> list[torch.nn.Module]:
        raise self._whole_only()

    def encode(self, x: torch.Tensor, level: str) -> torch.Tensor:
        raise self._whole_only()

    def decode(self, h: torch.Tensor, level: str) -> torch.Tensor:
        raise self._whole_only()

    def _whole_only(self) -> CrowdtkError:
        return CrowdtkError(
            f"{self.path}: an ONNX model holds the whole forward pass only, not the counter's parts",
            "use the checkpoint it was exported from",
        )

    def __deepcopy__(self, memo: dict[int, Any]) -> OnnxCounter:
        # inference_copy (the Predictor's fast path) copies the counter to fold batch norms: the exported graph has
        # them folded already, and the session is never changed, so the "copy" is this counter.
        return self


def read_metadata(props: dict[str, str], source: str) -> dict[str, Any]:
    """The crowdtk header of an exported counter's metadata_props, checked; refused when the stride is not crowdtk's."""
    if "crowdtk" not in props:
        raise CrowdtkError(
            f"{source}: an ONNX model without crowdtk's metadata", "pass a model written by 'crowdtk export-model'"
        )
    try:
        header = json.loads(props["crowdtk"])
    except ValueError:
        raise CrowdtkError(f"{source}: the crowdtk metadata is not JSON", "export the model again") from None
    header = check_header(header, ONNX_COUNTER, source)
    if props.get("output_stride") != str(STRIDE):
        raise CrowdtkError(
            f"{source}: output stride {props.get('output_stride')!r}, crowdtk's counters have {STRIDE}",
            "pass a model written by 'crowdtk export-model'",
        )
    return header


def _channels(props: dict[str, str], key: str, source: str) -> tuple[float, float, float]:
    try:
        values = [float(v) for v in json.loads(props[key])]
    except (KeyError, ValueError, TypeError):
        values = []
    if len(values) != 3:
        raise CrowdtkError(f"{source}: metadata '{key}' is not three numbers", "export the model again")
    return values[0], values[1], values[2]


def load_onnx_counter(path: str | os.PathLike[str], threads: int | None = None) -> LoadedModel:
    """An exported counter, ready for the Predictor (which must run it on the CPU)."""
    counter = OnnxCounter(path, threads)
    return LoadedModel(counter, counter.header, str(path))


def load_for_backend(path: str | os.PathLike[str], backend: str, device: str) -> tuple[LoadedModel, str]:
    """The counter ``count --backend`` runs (a checkpoint for torch, an exported model for onnxruntime) and
    the device to run it on (ONNX Runtime's CPU provider: ``--device cuda`` is refused)."""
    if backend == "torch":
        if Path(path).suffix.lower() == ".onnx":
            raise UsageError(f"{path}: is an ONNX model", "pass --backend onnxruntime, or the checkpoint")
        return load_counter(path), device
    if device == "cuda":
        raise UsageError("--backend onnxruntime with --device cuda", "onnxruntime runs on the CPU here: drop --device")
    return load_onnx_counter(path), "cpu"
