"""The frozen-encoder training tier (--freeze): front-end features computed once per image and flip,
kept in memory or a cache folder, the rest of the counter trained on whole cached maps."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FROZEN_TRAIN, run, trained

from crowdtk.checkpoint import load_tensors, read_header
from crowdtk.features import FeatureCache
from crowdtk.formats import Provenance, read_labels
from crowdtk.models import LiteCounter, MBConv, build_model
from crowdtk.train import prepare_sample, train
from crowdtk.train_config import TrainConfig


@pytest.fixture
def labels(small_set: Path, tmp_path: Path) -> Path:
    """Full labels of the small generic set (three images of 40-96 px)."""
    for argv in (
        ["index", small_set, "-o", tmp_path / "m.jsonl"],
        [
            "select",
            tmp_path / "m.jsonl",
            "--budget",
            "1",
            "--strategy",
            "none-or-all",
            "--strip-frac",
            "0.2",
            "-o",
            tmp_path / "r.jsonl",
        ],
        ["import", tmp_path / "r.jsonl", "--oracle", tmp_path / "m.jsonl", "-o", tmp_path / "l.jsonl"],
    ):
        result = run(*argv)
        assert result.exit_code == 0, result.output
    return tmp_path / "l.jsonl"


@pytest.mark.parametrize("name", ["lite", "csrnet"])
@pytest.mark.parametrize("level", ["early", "encoder"])
def test_decode_of_encode_is_forward_features(name: str, level: str) -> None:
    model = build_model(name, pretrained=False).eval()
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        h = model.encode(x, level)
        assert h.shape[-2:] == (6, 8)
        torch.testing.assert_close(model.decode(h, level), model.forward_features(x))
    frozen = {id(p) for m in model.frozen_modules(level) for p in m.parameters()}
    assert 0 < len(frozen) < len(list(model.parameters()))


def test_cached_maps_are_the_encoder_features_of_the_image_and_its_mirror(labels: Path, tmp_path: Path) -> None:
    counter = build_model("lite")
    entry = read_labels(labels)[1][0]
    sample = prepare_sample(entry, FROZEN_TRAIN)
    cache = FeatureCache(counter, "encoder", torch.device("cpu"), tmp_path / "cache")
    plain, mirror = cache.maps(sample.image, entry.sha256, 1.0)
    counter.eval()
    for pixels, got in ((sample.image, plain), (sample.image[:, ::-1], mirror)):
        x = counter.normalize(torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].float() / 255)
        with torch.no_grad():
            want = counter.encode(x, "encoder")[0]
        torch.testing.assert_close(got.load().float(), want, rtol=2e-2, atol=2e-2 * float(want.abs().max()))
    assert cache.computed == 2 and len(list((tmp_path / "cache").rglob("*.safetensors"))) == 2
    again = FeatureCache(counter, "encoder", torch.device("cpu"), tmp_path / "cache")
    again.maps(sample.image, entry.sha256, 1.0)
    assert again.computed == 0  # found in the folder
    other = FeatureCache(counter, "encoder", torch.device("cpu"), tmp_path / "cache")
    other.maps(sample.image, "f" * 64, 1.0)  # another image's digest is another key
    assert other.computed == 2


def test_changed_frozen_weights_are_never_served_stale_maps(tmp_path: Path) -> None:
    a, b = build_model("lite"), build_model("lite")
    assert isinstance(b, LiteCounter)
    block = b.encoder._blocks[0]
    assert isinstance(block, MBConv)
    with torch.no_grad():
        block._project_conv.weight.mul_(1.01)

    def key(cache: FeatureCache) -> str:
        return cache.key(image_sha256="0" * 64, scale=0.5, flip=False)

    assert key(FeatureCache(a, "encoder", torch.device("cpu"))) != key(FeatureCache(b, "encoder", torch.device("cpu")))
    # The early level does not contain the changed block's successors only: it contains block 0, so it changes too.
    assert key(FeatureCache(a, "early", torch.device("cpu"))) != key(FeatureCache(b, "early", torch.device("cpu")))


def test_frozen_training_trains_the_back_end_only_and_reuses_the_cache(labels: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    config = replace(FROZEN_TRAIN, feature_cache=str(cache))
    first = train(labels, tmp_path / "a.safetensors", config, Provenance("train"))
    assert first.features_computed == 6  # 3 images × (plain, mirror)
    assert len(list(cache.rglob("*.safetensors"))) == 6
    header, tensors = load_tensors(tmp_path / "a.safetensors")
    assert header["epochs_done"] == 3 and header["training"]["keep"] == "last"
    start = build_model("lite").state_dict()
    encoder = [k for k in start if k.startswith("encoder.")]
    backend = [k for k in start if k.startswith(("backend.", "output.")) and k.endswith("weight")]
    assert all(torch.equal(tensors[k], start[k]) for k in encoder)  # the ImageNet front end is untouched
    assert all(not torch.equal(tensors[k], start[k]) for k in backend)  # the back end learned
    second = train(labels, tmp_path / "b.safetensors", config, Provenance("train"))
    assert second.features_computed == 0  # every map came from the folder
    _, again = load_tensors(tmp_path / "b.safetensors")
    assert all(torch.equal(again[k], tensors[k]) for k in tensors)
    in_memory = train(labels, tmp_path / "c.safetensors", FROZEN_TRAIN, Provenance("train"))
    assert in_memory.features_computed == 6
    _, mem = load_tensors(tmp_path / "c.safetensors")
    assert all(torch.equal(mem[k], tensors[k]) for k in tensors)


def test_frozen_training_resumes_exactly(labels: Path, tmp_path: Path) -> None:
    config = replace(FROZEN_TRAIN, cap=True, feature_cache=str(tmp_path / "cache"))
    train(labels, tmp_path / "whole.safetensors", config, Provenance("train"))

    def stop_after_one(report) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(labels, tmp_path / "parts.safetensors", config, Provenance("train"), on_epoch=stop_after_one)
    train(labels, tmp_path / "parts.safetensors", config, Provenance("train"), resume=True)
    _, whole = load_tensors(tmp_path / "whole.safetensors")
    _, parts = load_tensors(tmp_path / "parts.safetensors")
    assert "cap.gamma" in whole and all(torch.equal(whole[k], parts[k]) for k in whole)
    # A cosine schedule is laid over the whole run: lengthening it on resume would change its past.
    with pytest.raises(Exception, match="other labels or settings"):
        train(labels, tmp_path / "parts.safetensors", replace(config, epochs=5), Provenance("train"), resume=True)


def test_the_checkpoint_records_the_heads_its_loss_saw(labels: Path, tmp_path: Path) -> None:
    train(labels, tmp_path / "a.safetensors", replace(FROZEN_TRAIN, epochs=1), Provenance("train"))
    supervision = read_header(tmp_path / "a.safetensors")["supervision"]
    heads = sum(len(e.points) for e in read_labels(labels)[1])
    assert supervision == {"heads_labeled": heads, "heads_supervised": heads}


def test_cosine_schedule_decays_to_zero() -> None:
    config = TrainConfig(lr=1e-3, lr_schedule="cosine")
    assert config.lr_at(0, 100) == 1e-3
    assert config.lr_at(50, 100) == pytest.approx(5e-4)
    assert config.lr_at(100, 100) == pytest.approx(0.0, abs=1e-12)
    assert TrainConfig(lr=1e-3).lr_at(99, 100) == 1e-3


def test_the_cli_takes_the_tier_options_and_refuses_unknown_levels(labels: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.safetensors"
    tier = ("--model", "lite", "--freeze", "encoder", "--feature-cache", tmp_path / "fc")
    header = trained(labels, out, *tier, "--epochs", "1", "--batch-size", "1", "--crop", "0", "--keep", "last")
    assert header["training"]["freeze"] == "encoder"
    bad = run("train", labels, "--freeze", "everything", "-o", tmp_path / "x.safetensors")
    assert bad.exit_code == 2 and "everything" in bad.output


def one_cached_epoch(labels: Path, folder: Path) -> Path:
    """folder/m.safetensors: one epoch of FROZEN_TRAIN on ``labels``; returns folder/cache, the maps it cached."""
    cache = folder / "cache"
    config = replace(FROZEN_TRAIN, epochs=1, feature_cache=str(cache))
    train(labels, folder / "m.safetensors", config, Provenance("train"))
    return cache


def test_eval_and_vectors_reuse_the_cache_and_predict_what_the_whole_counter_predicts(
    labels: Path, tmp_path: Path
) -> None:
    import json

    from crowdtk.data import read_image
    from crowdtk.formats import read_manifest
    from crowdtk.predict import Predictor, load_counter

    cache = one_cached_epoch(labels, tmp_path)
    manifest = labels.parent / "m.jsonl"
    plain = run("eval", tmp_path / "m.safetensors", manifest, "--json", "-q")
    cached = run("eval", tmp_path / "m.safetensors", manifest, "--json", "-q", "--feature-cache", cache)
    assert plain.exit_code == 0 and cached.exit_code == 0, cached.output
    a, b = json.loads(plain.stdout), json.loads(cached.stdout)
    assert b["mae"] == pytest.approx(a["mae"], rel=1e-2, abs=1e-3)
    predictor = Predictor(load_counter(tmp_path / "m.safetensors"), device="cpu", feature_cache=cache)
    assert predictor.features is not None
    entry = read_manifest(manifest)[1][0]
    image = read_image(manifest.parent / entry.image)  # a relative image path is relative to the manifest
    before = predictor.features.computed
    predictor.density(image, entry.sha256)
    assert predictor.features.computed == before  # the training run's map of this image was reused
    result = run(
        "vectors",
        tmp_path / "m.safetensors",
        manifest,
        "--strip-frac",
        "0.2",
        "--feature-cache",
        cache,
        "-o",
        tmp_path / "v.npz",
        "-q",
    )
    assert result.exit_code == 0, result.output


def test_flip_average_is_the_mean_of_the_density_and_the_mirrored_density_of_the_mirror(
    labels: Path, tmp_path: Path
) -> None:
    import json

    from crowdtk.data import read_image
    from crowdtk.formats import read_manifest
    from crowdtk.predict import Predictor, load_counter

    cache = one_cached_epoch(labels, tmp_path)
    manifest = labels.parent / "m.jsonl"
    entry = read_manifest(manifest)[1][0]
    image = read_image(manifest.parent / entry.image)
    loaded = load_counter(tmp_path / "m.safetensors")
    plain = Predictor(loaded, device="cpu", batch_size=1)
    direct, _, _ = plain.density(image)
    mirrored, _, _ = plain.density(np.ascontiguousarray(image[:, ::-1]))
    averaged, _, _ = Predictor(loaded, device="cpu", batch_size=1, flip_average=True).density(image)
    if image.shape[1] % 8 == 0:  # mirrored cells line up with the image's own
        assert np.allclose(averaged, (direct + mirrored[:, ::-1]) / 2, atol=1e-5)
    assert averaged.sum() == pytest.approx((direct.sum() + mirrored.sum()) / 2, rel=1e-4)
    assert not np.allclose(averaged, direct, atol=1e-6)  # the option does something
    cached, _, _ = Predictor(loaded, device="cpu", feature_cache=cache, flip_average=True).density(image, entry.sha256)
    assert cached.sum() == pytest.approx(averaged.sum(), rel=1e-2)  # float16 cached maps
    result = run("eval", tmp_path / "m.safetensors", manifest, "--json", "-q", "--flip-average")
    plain_eval = run("eval", tmp_path / "m.safetensors", manifest, "--json", "-q")
    assert result.exit_code == 0 and plain_eval.exit_code == 0, result.output
    assert json.loads(result.stdout)["mae"] != json.loads(plain_eval.stdout)["mae"]
