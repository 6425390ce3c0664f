"""Crowd Affinity Propagation (paper section 3.5, Eq. 8–10).

On the counter's last feature map before the output layer, ``F`` (``C×h×w``) of one
image, with a boolean mask of the labeled positions (``h×w``, at the output stride):

* ``f_l`` (``n_l×C``) and ``f_u`` (``n_u×C``) are the features at labeled and unlabeled
  positions;
* Eq. 8: normalised copies ``ŝ = S(f + eps)``, ``S`` the softmax over channels,
  ``eps = 1e-6``;
* Eq. 9: ``s_ij = softmax_j(ŝ_l^i · ŝ_u^j)`` over the unlabeled positions ``j``;
* Eq. 10: ``f_l^i+ = γ·Σ_j s_ij f_u^j + (1 − γ)·f_l^i``, mixing the *raw* features the
  output layer consumes (the normalised copies only give the affinities), so removing
  CAP leaves the output layer's input distribution unchanged. ``γ`` is learnable,
  initialised to 0.2, and not constrained (the paper states none).

The output is the feature map with labeled positions replaced by ``f_l+`` and unlabeled
positions unchanged. The density loss is then taken on labeled positions only; its
gradient reaches the unlabeled features through ``Σ_j s_ij f_u^j`` and through the
affinities. An image with no labeled or no unlabeled position passes through unchanged.

Affinity forms (``affinity``): ``paper`` is Eq. 9 as written, the default. Both of its vectors
are softmax outputs, so every dot product lies in (0, 1) and no affinity in a row exceeds e times
another: CAP as written mixes in about the mean unlabeled feature. Two extensions, off by default
and labelled as such, sharpen the rows with a temperature ``τ``:

* ``temperature``: ``s_ij = softmax_j((ŝ_l^i · ŝ_u^j) / τ)``, the paper's normalised copies;
* ``cosine``: ``s_ij = softmax_j(cos(f_l^i, f_u^j) / τ)`` on the raw features (the usual
  non-local attention form).

The forms differ only in the logits ``q_i · k_j``: each is a function giving the queries ``q``
(labeled rows, already divided by ``τ``) and the keys ``k`` (unlabeled rows), chosen from
:data:`LOGITS`; softmax, the mix of Eq. 10 and the memory bound below are the same for all.

Memory: the affinity matrix is ``n_l×n_u`` (≈ 1.2k × 11k for a 768×1024 image with 10%
labeled). It is computed in blocks of labeled rows so that one block stays under
``max_bytes`` (256 MB by default); when gradients are needed and the whole matrix would
exceed the bound, each block is recomputed in the backward pass (activation
checkpointing) instead of being kept, so training memory stays bounded too.

``TrainNet`` wraps a counter with a ``CapModule`` between ``forward_features`` and
``head``; :func:`strip_cap` returns the plain counter (the same module, so predictions
without CAP are identical before and after stripping). :func:`affinity_maps` returns
the affinity rows of chosen labeled positions as ``h×w`` pictures (the paper's Fig. 5).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Concatenate, ParamSpec

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from crowdtk.errors import CrowdtkError
from crowdtk.models import Counter
from crowdtk.train_config import CAP_AFFINITIES, CAP_TEMPERATURES

GAMMA_INIT = 0.2
EPS = 1e-6
MAX_BYTES = 256 * 1024 * 1024
P = ParamSpec("P")  # the options a per-image function takes after its tensors


def _normalized(f: torch.Tensor, eps: float) -> torch.Tensor:
    """Eq. 8: softmax over channels of ``f + eps`` (``f`` is ``n×C``)."""
    return torch.softmax(f + eps, dim=1)


def _paper(fl: torch.Tensor, fu: torch.Tensor, eps: float, tau: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 8–9 as written: logits ``ŝ_l^i · ŝ_u^j``."""
    return _normalized(fl, eps), _normalized(fu, eps)


def _temperature(
    fl: torch.Tensor, fu: torch.Tensor, eps: float, tau: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Extension: logits ``(ŝ_l^i · ŝ_u^j) / τ``; dividing the queries once costs n_l·C, not n_l·n_u."""
    assert tau is not None
    return _normalized(fl, eps) / tau, _normalized(fu, eps)


def _cosine(fl: torch.Tensor, fu: torch.Tensor, eps: float, tau: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Extension: logits ``cos(f_l^i, f_u^j) / τ`` of the raw features. A zero feature (possible after
    a ReLU) has cosine 0 with everything rather than a division by zero (F.normalize clamps the norm)."""
    assert tau is not None
    return F.normalize(fl, dim=1) / tau, F.normalize(fu, dim=1)


# Each form: (f_l, f_u, eps, τ) → (queries, keys) whose products are the logits of Eq. 9.
LOGITS: dict[str, Callable[[torch.Tensor, torch.Tensor, float, float | None], tuple[torch.Tensor, torch.Tensor]]] = {
    "paper": _paper,
    "temperature": _temperature,
    "cosine": _cosine,
}
assert tuple(LOGITS) == CAP_AFFINITIES


def resolve_affinity(affinity: str, temperature: float | None) -> float | None:
    """The temperature ``affinity`` runs with: ``temperature``, or the form's default when None
    (None for ``paper``, which takes none). Unknown forms and bad temperatures are refused."""
    if affinity not in LOGITS:
        raise CrowdtkError(f"CAP: unknown affinity form {affinity!r}", f"use one of {', '.join(LOGITS)}")
    if affinity == "paper":
        if temperature is not None:
            raise CrowdtkError(
                "CAP: the paper's affinities (Eq. 9) take no temperature", "use affinity 'temperature' or 'cosine'"
            )
        return None
    tau = CAP_TEMPERATURES[affinity] if temperature is None else float(temperature)
    if not (math.isfinite(tau) and tau > 0):
        raise CrowdtkError(f"CAP: temperature must be finite and positive, got {temperature}", "pass e.g. 0.1")
    return tau


def _propagate_block(q: torch.Tensor, k: torch.Tensor, fu: torch.Tensor) -> torch.Tensor:
    """Eq. 9 and the sum of Eq. 10 for a block of labeled rows: ``softmax(q kᵀ) f_u``."""
    return torch.softmax(q @ k.t(), dim=1) @ fu


def _rows_per_block(n_l: int, n_u: int, element_size: int, max_bytes: int) -> int:
    return max(1, min(n_l, max_bytes // max(1, n_u * element_size)))


def _check_mask(feat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mask as ``N×h×w`` bool on the features' device (float masks: > 0.5 is labeled)."""
    m = torch.as_tensor(mask, device=feat.device)
    if m.dim() == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.dim() == 2 and feat.dim() == 4 and feat.shape[0] == 1:
        m = m[None]
    if tuple(m.shape) != (feat.shape[0], *feat.shape[-2:]):
        raise CrowdtkError(
            f"CAP: labeled mask of shape {tuple(mask.shape)} does not fit features {tuple(feat.shape)}",
            "give one mask per image at the output stride (N×h×w, h = H/8, w = W/8)",
        )
    return m if m.dtype == torch.bool else m > 0.5


def cap_image(
    feat: torch.Tensor,
    mask: torch.Tensor,
    gamma: torch.Tensor | float,
    eps: float = EPS,
    max_bytes: int = MAX_BYTES,
    affinity: str = "paper",
    temperature: float | None = None,
) -> torch.Tensor:
    """CAP on one image: ``feat`` ``C×h×w``, ``mask`` ``h×w`` bool (True = labeled) → ``C×h×w``.

    ``affinity`` is the form of Eq. 9 (see the module's doc), ``temperature`` its ``τ`` (None: the
    form's default; ``paper`` takes none)."""
    tau = resolve_affinity(affinity, temperature)
    c = feat.shape[0]
    flat = feat.reshape(c, -1).t()  # (h·w, C)
    m = mask.reshape(-1)
    n_l = int(m.sum())
    n_u = m.numel() - n_l
    if n_l == 0 or n_u == 0:
        return feat
    idx_l = m.nonzero(as_tuple=True)[0]
    fl = flat[idx_l]
    fu = flat[~m]
    q, k = LOGITS[affinity](fl, fu, eps, tau)
    rows = _rows_per_block(n_l, n_u, q.element_size(), max_bytes)
    if rows >= n_l:
        prop = _propagate_block(q, k, fu)
    else:
        recompute = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or fu.requires_grad)
        blocks = []
        for start in range(0, n_l, rows):
            block = q[start : start + rows]
            if recompute:
                blocks.append(checkpoint(_propagate_block, block, k, fu, use_reentrant=False))
            else:
                blocks.append(_propagate_block(block, k, fu))
        prop = torch.cat(blocks, dim=0)
    updated = gamma * prop + (1 - gamma) * fl
    out = flat.index_put((idx_l,), updated.to(flat.dtype))
    return out.t().reshape(feat.shape)


def affinity_rows(
    feat: torch.Tensor,
    mask: torch.Tensor,
    positions: Sequence[tuple[int, int]],
    eps: float = EPS,
    affinity: str = "paper",
    temperature: float | None = None,
) -> torch.Tensor:
    """Eq. 9 rows ``s_i·`` (of the form ``affinity``) for labeled ``positions``
    ((row, col) on the feature map) of one image.

    ``feat`` is ``C×h×w``, ``mask`` ``h×w`` bool. Returns ``k×n_u``: each row sums to 1 over
    the unlabeled positions, ordered as ``mask.reshape(-1).logical_not().nonzero()``.
    """
    tau = resolve_affinity(affinity, temperature)
    c, h, w = feat.shape
    m = torch.as_tensor(mask, device=feat.device)
    m = m if m.dtype == torch.bool else m > 0.5
    if tuple(m.shape) != (h, w):
        raise CrowdtkError(
            f"CAP: mask of shape {tuple(m.shape)} does not fit features {(c, h, w)}",
            "give the image's labeled mask at the output stride",
        )
    if bool(m.all()) or not bool(m.any()):
        raise CrowdtkError(
            "CAP: the image has no unlabeled or no labeled positions, so there are no affinities",
            "pick an image that is partly labeled",
        )
    for r, col in positions:
        if not (0 <= r < h and 0 <= col < w) or not bool(m[r, col]):
            raise CrowdtkError(
                f"CAP: position ({r}, {col}) is not a labeled position of the {h}×{w} feature map",
                "pick positions inside the labeled region (feature-map coordinates)",
            )
    flat = feat.reshape(c, -1).t()
    fu = flat[~m.reshape(-1)]
    idx = torch.tensor([r * w + col for r, col in positions], dtype=torch.long, device=feat.device)
    q, k = LOGITS[affinity](flat[idx], fu, eps, tau)
    return torch.softmax(q @ k.t(), dim=1)


def _per_image(
    image_cap: Callable[Concatenate[torch.Tensor, torch.Tensor, P], torch.Tensor],
) -> Callable[Concatenate[torch.Tensor, torch.Tensor, P], torch.Tensor]:
    """``image_cap`` run on each image of a batch, taking the same options after ``feat`` and ``mask``."""

    @functools.wraps(image_cap)
    def batched(feat: torch.Tensor, mask: torch.Tensor, /, *args: P.args, **kwargs: P.kwargs) -> torch.Tensor:
        m = _check_mask(feat, mask)
        return torch.stack([image_cap(feat[i], m[i], *args, **kwargs) for i in range(feat.shape[0])])

    batched.__name__ = batched.__qualname__ = "cap_batch"
    batched.__doc__ = """CAP on a batch: ``feat`` ``N×C×h×w``, ``mask`` ``N×h×w`` (bool, or float with 1 = labeled);
    the other parameters as :func:`cap_image`'s."""
    return batched


cap_batch = _per_image(cap_image)


def _as_pictures(
    rows_of: Callable[Concatenate[torch.Tensor, torch.Tensor, Sequence[tuple[int, int]], P], torch.Tensor],
) -> Callable[Concatenate[torch.Tensor, torch.Tensor, Sequence[tuple[int, int]], P], torch.Tensor]:
    """``rows_of``'s rows laid out as ``k×h×w`` pictures, taking the same parameters."""

    @functools.wraps(rows_of)
    def pictures(
        feat: torch.Tensor,
        mask: torch.Tensor,
        positions: Sequence[tuple[int, int]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> torch.Tensor:
        h, w = feat.shape[-2:]
        rows = rows_of(feat, mask, positions, *args, **kwargs)
        m = torch.as_tensor(mask, device=feat.device)
        m = (m if m.dtype == torch.bool else m > 0.5).reshape(-1)
        out = rows.new_zeros(len(positions), h * w)
        out[:, ~m] = rows
        return out.reshape(len(positions), h, w)

    pictures.__name__ = pictures.__qualname__ = "affinity_maps"
    pictures.__doc__ = """:func:`affinity_rows` laid out as ``k×h×w`` pictures (0 at labeled positions)."""
    return pictures


affinity_maps = _as_pictures(affinity_rows)


class CapModule(nn.Module):
    """Eq. 8–10 with a learnable ``gamma`` (initialised to 0.2), affinities of the form ``affinity``
    with temperature ``temperature`` (None: the form's default). The form and temperature are
    settings, not weights: the state dict holds ``gamma`` only, and checkpoints record them in
    their header."""

    def __init__(
        self,
        gamma: float = GAMMA_INIT,
        eps: float = EPS,
        max_bytes: int = MAX_BYTES,
        affinity: str = "paper",
        temperature: float | None = None,
    ) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.tensor(float(gamma)))
        self.eps = float(eps)
        self.max_bytes = int(max_bytes)
        self.temperature = resolve_affinity(affinity, temperature)
        self.affinity = affinity

    def forward(self, feat: torch.Tensor, labeled_mask: torch.Tensor) -> torch.Tensor:
        """``feat`` ``N×C×h×w``, ``labeled_mask`` ``N×h×w`` → features with labeled positions updated."""
        return cap_batch(feat, labeled_mask, self.gamma, self.eps, self.max_bytes, self.affinity, self.temperature)

    def extra_repr(self) -> str:
        form = "" if self.affinity == "paper" else f", affinity={self.affinity}, temperature={self.temperature:g}"
        return f"gamma={float(self.gamma.detach()):.4f}, eps={self.eps}{form}"


class TrainNet(nn.Module):
    """The counter being trained, with CAP between its features and its output layer when ``cap``.

    ``forward(x, labeled_mask)`` applies CAP; ``labeled_mask=None`` is the plain counter
    (inference). State dict keys: ``counter.*`` and, with CAP, ``cap.gamma``. ``cap_affinity``
    and ``cap_temperature`` choose CAP's affinity form (:class:`CapModule`).
    """

    def __init__(
        self,
        counter: Counter,
        cap: bool,
        freeze: str = "none",
        cap_affinity: str = "paper",
        cap_temperature: float | None = None,
    ) -> None:
        super().__init__()
        self.counter = counter
        self.cap = CapModule(affinity=cap_affinity, temperature=cap_temperature) if cap else None
        # With a frozen front part the network is fed that part's cached features (crowdtk.features).
        self.freeze = freeze
        for module in counter.frozen_modules(freeze) if freeze != "none" else []:
            for p in module.parameters():
                p.requires_grad_(False)

    def forward(self, x: torch.Tensor, labeled_mask: torch.Tensor | None = None) -> torch.Tensor:
        feat = self.counter.forward_features(x) if self.freeze == "none" else self.counter.decode(x, self.freeze)
        if labeled_mask is not None and self.cap is not None:
            feat = self.cap(feat, labeled_mask)
        return self.counter.head(feat)

    def weights(self) -> dict[str, torch.Tensor]:
        """Checkpoint tensors: the counter's keys unprefixed, CAP's under ``cap.``."""
        tensors = dict(self.counter.state_dict())
        if self.cap is not None:
            tensors.update({f"cap.{k}": v for k, v in self.cap.state_dict().items()})
        return tensors

    def load_weights(self, tensors: dict[str, torch.Tensor], source: str, counter_only: bool = False) -> None:
        counter = {k: v for k, v in tensors.items() if not k.startswith("cap.")}
        _load_strict(self.counter, counter, source)
        if self.cap is not None and not counter_only:
            _load_strict(self.cap, {k[4:]: v for k, v in tensors.items() if k.startswith("cap.")}, source)


def _load_strict(module: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    fix = "pass a checkpoint of the same model and configuration"
    own = module.state_dict()
    shapes = [k for k, v in tensors.items() if k in own and own[k].shape != v.shape]
    if shapes:  # load_state_dict raises a bare RuntimeError on these, even with strict=False
        k = shapes[0]
        raise CrowdtkError(
            f"{source}: weights do not fit the model ({k} is {tuple(tensors[k].shape)}, "
            f"the model's is {tuple(own[k].shape)})",
            fix,
        )
    missing, unexpected = module.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise CrowdtkError(
            f"{source}: weights do not fit the model (missing {sorted(missing)[:3]}, unexpected "
            f"{sorted(unexpected)[:3]})",
            fix,
        )


def strip_cap(model: TrainNet | Counter) -> Counter:
    """The plain counter inside a :class:`TrainNet` (a plain counter is returned as it is)."""
    return model.counter if isinstance(model, TrainNet) else model
