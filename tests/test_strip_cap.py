"""`crowdtk strip-cap`: CAP's weights removed, the checkpoint marked inference-only, every prediction unchanged."""

from __future__ import annotations

import torch
from conftest import run

from crowdtk.checkpoint import load_tensors
from crowdtk.predict import load_counter


def test_strip_cap_keeps_every_counter_weight_and_its_predictions(cap_ckpt, tmp_path):
    infer = tmp_path / "infer.safetensors"
    assert run("strip-cap", cap_ckpt, "-o", infer, "-q").exit_code == 0
    _, trained = load_tensors(cap_ckpt)
    stripped_header, stripped = load_tensors(infer)
    assert stripped_header["inference_only"] is True and stripped_header["cap"] is False
    assert not any(k.startswith("cap.") for k in stripped)
    # exactly the counter's tensors, unchanged: only CAP's went
    assert set(stripped) == {k for k in trained if not k.startswith("cap.")} and "cap.gamma" in trained
    assert all(torch.equal(stripped[k], trained[k]) for k in stripped)
    x = torch.rand(1, 3, 48, 80)
    with torch.inference_mode():
        before = load_counter(cap_ckpt).counter(x)
        after = load_counter(infer).counter(x)
    assert torch.equal(before, after)
