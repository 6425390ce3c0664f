"""The fast inference path gives the plain path's results (no timing here: python -m benchmarks measures)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from crowdtk.models import MBConv, SameConv2d, build_model, inference_copy, phase_split_conv
from crowdtk.predict import LoadedModel, Predictor
from crowdtk.runtime import retain_freed_memory


def lite(**options) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("lite", pretrained=True, **options).eval()
    # Batch-norm statistics far from (0, 1), so that folding them is really exercised.
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None  # track_running_stats
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


@pytest.mark.parametrize("name,options", [("lite", {}), ("lite", {"dilated": False}), ("csrnet", {})])
def test_inference_copy_predicts_what_the_counter_predicts(name, options):
    model = lite(**options) if name == "lite" else build_model("csrnet", pretrained=False).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = inference_copy(model).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 96)
    with torch.inference_mode():
        plain = model(x)
        folded = fast(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(folded, plain, rtol=1e-4, atol=1e-5 * float(plain.abs().max()))
    # The counter itself is untouched: same weights, batch norms still there, out-of-place activations.
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not any(getattr(m, "inplace", False) for m in model.modules() if isinstance(m, MBConv))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())


def test_counter_still_trains_after_an_inference_copy():
    model = lite()
    inference_copy(model)
    model.train()
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def images(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def test_fast_batched_predictor_gives_the_plain_counts():
    loaded = LoadedModel(lite(), {"density_scale": 100.0}, "")
    plain = Predictor(loaded, device="cpu", max_side=160, fast=False)
    fast = Predictor(loaded, device="cpu", max_side=160, batch_size=3)
    assert plain.batch_size == 1 and fast.batch_size == 3
    # Same-size runs get batched, a size change or an image needing tiles (> 160 px) flushes the batch.
    stream = images([(64, 96)] * 4 + [(72, 80), (200, 120), (64, 96), (61, 93)])
    expected = [plain.density(im) for im in stream]
    got = list(fast.densities(iter(stream)))
    assert len(got) == len(expected)
    for (d0, sx0, sy0), (d1, sx1, sy1) in zip(expected, got):
        assert d0.shape == d1.shape and (sx0, sy0) == (sx1, sy1)
        np.testing.assert_allclose(d1, d0, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(d0).max())))
        assert abs(float(d1.sum()) - float(d0.sum())) <= 1e-4 * max(1.0, abs(float(d0.sum())))
    # One at a time and batched agree too.
    one_by_one = [fast.density(im)[0] for im in stream]
    for a, (b, _, _) in zip(one_by_one, got):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_predictor_default_batch_follows_the_model():
    assert (
        Predictor(LoadedModel(lite(), {}, ""), device="cpu").batch_size
        == build_model("lite", pretrained=False).inference_batch
    )
    assert Predictor(LoadedModel(build_model("csrnet", pretrained=False), {}, ""), device="cpu").batch_size == 1


def test_retain_freed_memory_is_idempotent():
    first = retain_freed_memory()
    assert retain_freed_memory() is first


def load_bench(stage: str):
    """benchmarks.STAGE (a stage of python -m benchmarks)."""
    return importlib.import_module(f"benchmarks.{stage}")


def test_bench_counts_csrnet_flops_from_its_layers():
    bench = load_bench("floor")
    assert abs(bench.count_flops("csrnet", {}, (1, 3, 768, 1024)) / 1e9 - 649.6) < 0.1
    lite_flops = bench.count_flops("lite", {}, (1, 3, 768, 1024))
    assert bench.count_flops("lite", {"dilated": False}, (1, 3, 768, 1024)) < lite_flops < 650e9 / 15


def test_bench_synthetic_pool_is_a_valid_vectors_file():
    bench = load_bench("selection")
    entries, data = bench.synthetic_pool(30)
    assert len(entries) == 30 and data.vectors.shape == (300, 10)
    # Level k sums to the strip count scaled by k / 4.
    for k, (lo, hi) in enumerate([(0, 1), (1, 3), (3, 6), (6, 10)], start=1):
        np.testing.assert_allclose(data.vectors[:, lo:hi].sum(1), data.counts * k / 4, rtol=1e-4)
    sub = bench.subset_vectors(data, 10)
    assert len(sub.ids) == 10 and len(sub.vectors) == 100


@pytest.mark.parametrize("h,w,k", [(12, 16, 5), (13, 9, 3), (7, 7, 5)])
def test_phase_split_conv_is_the_dilated_depthwise_convolution(h, w, k):
    torch.manual_seed(0)
    conv = SameConv2d(6, 6, k, dilation=2, groups=6)
    x = torch.randn(2, 6, h, w, requires_grad=True)
    direct = conv(x)
    gx_direct, gw_direct = torch.autograd.grad(direct.square().sum(), (x, conv.weight))
    split = phase_split_conv(x, conv.weight, conv.bias, 2)
    gx_split, gw_split = torch.autograd.grad(split.square().sum(), (x, conv.weight))
    torch.testing.assert_close(split, direct, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gx_split, gx_direct, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gw_split, gw_direct, rtol=1e-5, atol=1e-4)


def test_phase_split_backward_trains_the_lite_counter_alike(monkeypatch):
    model = lite().train()
    x = torch.randn(1, 3, 40, 56)
    outs, grads = [], []
    for flag in (False, True):
        monkeypatch.setattr(SameConv2d, "phase_split_backward", flag)
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-6)
    for a, b in zip(grads[0], grads[1]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * float(a.abs().max()) + 1e-7)


def test_cpu_training_times_the_phase_split_and_leaves_no_trace():
    from crowdtk.cap import TrainNet
    from crowdtk.train import example_batch, speed_up_cpu_training

    net = TrainNet(lite(), cap=True)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    chosen = speed_up_cpu_training(net, example_batch((1, 3, 32, 32), (4, 4)))
    phased = [m for m in net.modules() if isinstance(m, SameConv2d) and m._phased]
    assert phased and all(m.phase_split_backward == chosen for m in phased)
    assert all(p.grad is None for p in net.parameters())  # the timing passes left no gradients ...
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # ... nor batch-norm statistics
    assert torch.equal(rng, torch.get_rng_state())
    assert speed_up_cpu_training(net, example_batch((1, 3, 32, 32), (4, 4)), not chosen) is (
        not chosen
    )  # a given choice is kept, untimed
    assert all(m.phase_split_backward == (not chosen) for m in phased)


def test_a_resumed_run_keeps_its_first_backward_choice(tmp_path, monkeypatch):
    from dataclasses import replace

    from conftest import write_generic

    from crowdtk.checkpoint import load_tensors
    from crowdtk.formats import LABELS, LabelsEntry, Provenance, Region, make_header, write_jsonl
    from crowdtk.index import build_manifest
    from crowdtk.train import cpu, train
    from crowdtk.train_config import TrainConfig

    rng = np.random.default_rng(0)
    write_generic(tmp_path / "data", {f"im{i}": (32, 48, rng.uniform(0, 32, (5, 2))) for i in range(3)})
    entries = build_manifest(tmp_path / "data").entries
    labels = tmp_path / "labels.jsonl"
    write_jsonl(
        labels,
        make_header(LABELS, Provenance("test")),
        (
            LabelsEntry(
                e.id, e.image, e.sha256, e.width, e.height, (Region(0, e.width, 0, e.height),), np.zeros((0, 2))
            ).to_record()
            for e in entries
        ),
    )
    calls = []
    monkeypatch.setattr(cpu, "_phase_split_is_faster", lambda *a: calls.append(1) or True)
    config = TrainConfig(model="lite", pretrained=False, epochs=1, crop=16, batch_size=1)
    out = tmp_path / "m.safetensors"
    train(labels, out, config, Provenance("train"))
    assert load_tensors(tmp_path / "m.state.safetensors")[0]["cpu_phase_split"] is True and calls == [1]
    monkeypatch.setattr(cpu, "_phase_split_is_faster", lambda *a: calls.append(2) or False)
    train(labels, out, replace(config, epochs=2), Provenance("train"), resume=True)
    assert calls == [1] and load_tensors(tmp_path / "m.state.safetensors")[0]["cpu_phase_split"] is True


@pytest.mark.parametrize("batch_cost, kept", [(lambda n: 1.0, 4), (lambda n: float(n), 1)])
def test_default_batching_is_kept_only_when_it_pays(monkeypatch, batch_cost, kept):
    from types import SimpleNamespace

    from crowdtk import predict

    clock = [0.0]
    monkeypatch.setattr(predict, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    loaded = LoadedModel(lite(), {"density_scale": 100.0}, "")
    predictor = Predictor(loaded, device="cpu")
    assert predictor.batch_size == 4
    real_run = predictor._run

    def timed_run(x):  # a fake clock: a batch of n costs batch_cost(n)
        clock[0] += batch_cost(len(x))
        return real_run(x)

    monkeypatch.setattr(predictor, "_run", timed_run)
    stream = images([(32, 48)] * 7)
    got = list(predictor.densities(iter(stream)))
    assert predictor.batch_size == kept
    plain = Predictor(loaded, device="cpu", fast=False)
    for image, (density, _, _) in zip(stream, got):  # every image once, in order, whatever was chosen
        np.testing.assert_allclose(density, plain.density(image)[0], rtol=1e-4, atol=1e-5)
    assert Predictor(loaded, device="cpu", batch_size=4)._batch_unchecked is False  # an explicit batch is kept as given
