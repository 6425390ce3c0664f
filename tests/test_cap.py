"""Crowd Affinity Propagation: Eq. 8–10 by hand, identities, gradients, chunking, stripping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crowdtk.cap import CapModule, TrainNet, affinity_maps, affinity_rows, cap_batch, cap_image, strip_cap
from crowdtk.errors import CrowdtkError
from crowdtk.models import build_model

torch.set_num_threads(2)


def _strip_mask(h: int, w: int, cols: slice) -> torch.Tensor:
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[:, cols] = True
    return mask


def test_hand_checked_tiny_example() -> None:
    # C = 2, a 1×4 map: positions 0 and 2 labeled, 1 and 3 unlabeled.
    f = np.array([[1.0, 0.0], [2.0, -1.0], [0.5, 0.5], [-1.0, 3.0]])  # (position, channel)
    mask = np.array([True, False, True, False])
    gamma = 0.3

    def softmax(v: np.ndarray) -> np.ndarray:
        e = np.exp(v - v.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    fl, fu = f[mask], f[~mask]
    sl, su = softmax(fl + 1e-6), softmax(fu + 1e-6)  # Eq. 8
    s = softmax(sl @ su.T)  # Eq. 9, over unlabeled j
    expected = f.copy()
    expected[mask] = gamma * s @ fu + (1 - gamma) * fl  # Eq. 10
    # by hand, first labeled row: ŝ_l = softmax(1, 0) = (0.7311, 0.2689); ŝ_u1 = softmax(2, -1) = (0.9526, 0.0474),
    # ŝ_u2 = softmax(-1, 3) = (0.0180, 0.9820); dots 0.7092, 0.2772 → s = (0.6064, 0.3936);
    # f+ = 0.3·(0.6064·(2, −1) + 0.3936·(−1, 3)) + 0.7·(1, 0) = (0.9458, 0.1723)
    assert np.allclose(expected[0], [0.9458, 0.1723], atol=1e-3)

    feat = torch.tensor(f.T.reshape(2, 1, 4), dtype=torch.float64)
    out = cap_image(feat, torch.tensor(mask).view(1, 4), gamma)
    assert np.allclose(out.numpy().reshape(2, 4).T, expected, atol=1e-12)
    rows = affinity_rows(feat, torch.tensor(mask).view(1, 4), [(0, 0), (0, 2)])
    assert np.allclose(rows.numpy(), s, atol=1e-12)


def test_affinity_rows_sum_to_one_and_maps_are_zero_on_labels() -> None:
    torch.manual_seed(0)
    feat = torch.randn(16, 6, 10).relu()
    mask = _strip_mask(6, 10, slice(3, 5))
    rows = affinity_rows(feat, mask, [(0, 3), (5, 4), (2, 3)])
    assert rows.shape == (3, 6 * 8)
    assert torch.allclose(rows.sum(dim=1), torch.ones(3, dtype=rows.dtype), atol=1e-6)
    assert (rows > 0).all()
    maps = affinity_maps(feat, mask, [(0, 3), (5, 4)])
    assert maps.shape == (2, 6, 10)
    assert (maps[:, mask] == 0).all()
    assert torch.allclose(maps.sum(dim=(1, 2)), torch.ones(2), atol=1e-6)
    with pytest.raises(CrowdtkError, match="not a labeled position"):
        affinity_rows(feat, mask, [(0, 0)])


def test_gamma_zero_is_identity() -> None:
    torch.manual_seed(1)
    feat = torch.randn(2, 8, 5, 7)
    mask = torch.stack([_strip_mask(5, 7, slice(0, 2)), _strip_mask(5, 7, slice(4, 7))])
    out = CapModule(gamma=0.0)(feat, mask)
    assert torch.equal(out, feat)


def test_unlabeled_positions_unchanged_and_labeled_updated() -> None:
    torch.manual_seed(2)
    feat = torch.randn(1, 8, 5, 7)
    mask = _strip_mask(5, 7, slice(2, 3))[None]
    cap = CapModule()
    assert float(cap.gamma.detach()) == pytest.approx(0.2)
    out = cap(feat, mask)
    assert torch.equal(out[:, :, ~mask[0]], feat[:, :, ~mask[0]])
    assert not torch.allclose(out[:, :, mask[0]], feat[:, :, mask[0]])


def test_fully_labeled_or_unlabeled_image_is_returned_unchanged() -> None:
    feat = torch.randn(8, 4, 4, requires_grad=True)
    assert cap_image(feat, torch.ones(4, 4, dtype=torch.bool), 0.2) is feat
    assert cap_image(feat, torch.zeros(4, 4, dtype=torch.bool), 0.2) is feat
    batch = torch.randn(2, 8, 4, 4)
    mask = torch.stack([torch.ones(4, 4, dtype=torch.bool), _strip_mask(4, 4, slice(0, 1))])
    out = cap_batch(batch, mask, 0.2)
    assert torch.equal(out[0], batch[0])
    assert not torch.equal(out[1], batch[1])


def _grad(t: torch.Tensor) -> torch.Tensor:
    """The gradient a backward pass left on ``t`` (read through a call: the test resets it to None in between)."""
    assert t.grad is not None, "no gradient reached the tensor"
    return t.grad


def test_gradients_reach_unlabeled_features_and_gamma() -> None:
    torch.manual_seed(3)
    feat = torch.randn(1, 8, 6, 6).relu().requires_grad_(True)
    mask = _strip_mask(6, 6, slice(1, 2))[None]
    cap = CapModule()
    out = cap(feat, mask)
    loss = (out[:, :, mask[0]] ** 2).sum()  # a loss on labeled positions only
    loss.backward()
    grad = _grad(feat)[0]
    assert (grad[:, ~mask[0]].abs().sum(dim=0) > 0).all()  # every unlabeled position gets gradient
    assert cap.gamma.grad is not None and cap.gamma.grad != 0

    # without CAP, the same loss gives unlabeled positions nothing
    feat.grad = None
    (feat[:, :, mask[0]] ** 2).sum().backward()
    assert (_grad(feat)[0][:, ~mask[0]] == 0).all()


def test_float_mask_and_shape_check() -> None:
    feat = torch.randn(2, 4, 3, 5)
    bool_mask = torch.zeros(2, 3, 5, dtype=torch.bool)
    bool_mask[:, :, 1] = True
    a = cap_batch(feat, bool_mask, 0.2)
    b = cap_batch(feat, bool_mask.float(), 0.2)
    assert torch.equal(a, b)
    with pytest.raises(CrowdtkError, match="does not fit"):
        cap_batch(feat, torch.zeros(2, 4, 5, dtype=torch.bool), 0.2)


@pytest.mark.parametrize("name", ["lite", "csrnet"])
def test_cap_counter_and_strip_cap(name: str) -> None:
    torch.manual_seed(5)
    counter = build_model(name, pretrained=False).eval()
    model = TrainNet(counter, cap=True)
    x = counter.normalize(torch.rand(2, 3, 64, 48))
    mask = torch.zeros(2, 8, 6, dtype=torch.bool)
    mask[:, :, 2] = True
    with torch.no_grad():
        plain = model(x)
        with_cap = model(x, mask)
        stripped = strip_cap(model)
        after = stripped(x)
    # stripped: the counter's weights, every one as it was in the CAP model, and none of CAP's
    trained = model.state_dict()
    assert set(stripped.state_dict()) == {k.removeprefix("counter.") for k in trained if k.startswith("counter.")}
    assert all(torch.equal(v, trained[f"counter.{k}"]) for k, v in stripped.state_dict().items())
    assert not any(k.startswith("cap") for k in stripped.state_dict())
    assert torch.equal(plain, after)
    assert torch.equal(plain, counter(x))
    assert with_cap.shape == plain.shape
    assert torch.equal(with_cap[:, :, ~mask[0]], plain[:, :, ~mask[0]])
    assert strip_cap(counter) is counter
    assert set(model.state_dict()) == {f"counter.{k}" for k in counter.state_dict()} | {"cap.gamma"}
