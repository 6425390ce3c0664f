"""The feature cache is verified: a damaged, truncated or stale cache file is computed again from its
image, with a warning naming it, so that a cache entry never changes a result (crowdtk.features)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FROZEN_TRAIN, run
from safetensors.torch import load_file, save_file

from crowdtk.checkpoint import load_tensors
from crowdtk.features import FeatureCache, read_entry
from crowdtk.formats import Provenance
from crowdtk.models import build_model
from crowdtk.train import train

FROZEN = replace(FROZEN_TRAIN, epochs=2)


# --------------------------------------------------------------------------- ways a cache file goes bad


def flip_bytes_near_the_end(path: Path) -> None:
    """Bit rot in the data: the last 64 bytes (the end of the map) inverted; the file stays well formed."""
    data = bytearray(path.read_bytes())
    data[-64:] = bytes(b ^ 0xFF for b in data[-64:])
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])


def strip_digest(path: Path) -> None:
    """What a crowdtk without the digest wrote: the same map, no metadata."""
    save_file(load_file(path), str(path))


def garbage(path: Path) -> None:
    path.write_bytes(b"not a safetensors file at all")


def remove(path: Path) -> None:
    path.unlink()


def wrong_dtype(path: Path) -> None:
    tensors = load_file(path)
    save_file(
        {"features": tensors["features"].float()},
        str(path),
        metadata={"format": "2", "key": path.stem, "sha256": "0" * 64},
    )


def wrong_size(path: Path) -> None:
    """A well-formed entry with a true digest, but of a map cropped to another size."""
    from crowdtk.features import map_digest

    features = load_file(path)["features"][:, :-1].contiguous()
    save_file(
        {"features": features}, str(path), metadata={"format": "2", "key": path.stem, "sha256": map_digest(features)}
    )


DAMAGE: dict[str, Callable[[Path], None]] = {
    "flipped bytes": flip_bytes_near_the_end,
    "truncated": truncate,
    "no digest": strip_digest,
    "garbage": garbage,
    "removed": remove,
    "float32": wrong_dtype,
    "another size": wrong_size,
}


def cache_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.safetensors"))


# --------------------------------------------------------------------------- the cache itself


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_bad_cache_file_is_computed_again_with_a_warning(damage: str, tmp_path: Path, caplog) -> None:
    counter = build_model("lite", pretrained=False)
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    folder = tmp_path / "cache"
    cache = FeatureCache(counter, "encoder", torch.device("cpu"), folder)
    want = cache.map(image, "a" * 64, 1.0, flip=True).load()
    [path] = cache_files(folder)

    again = FeatureCache(counter, "encoder", torch.device("cpu"), folder)
    calls = []

    def source() -> np.ndarray:
        calls.append(1)
        return image

    feature_map = again.map(image, "a" * 64, 1.0, flip=True, source=source)
    DAMAGE[damage](path)  # after the entry was found: it is checked when read
    with caplog.at_level(logging.WARNING, logger="crowdtk.features"):
        got = feature_map.load()
    assert torch.equal(got, want)
    assert again.computed == 1 and calls == [1]  # from the image, which `source` gave again
    assert [r.name for r in caplog.records] == ["crowdtk.features"] and str(path) in caplog.records[0].getMessage()
    torch.testing.assert_close(read_entry(path, path.stem), want, rtol=0, atol=0)  # rewritten, and sound now
    caplog.clear()
    assert torch.equal(feature_map.load(), want) and again.computed == 1 and not caplog.records


def test_a_map_that_cannot_be_rewritten_is_computed_once_and_kept_in_memory(
    tmp_path: Path, caplog, monkeypatch
) -> None:
    import errno

    counter = build_model("lite", pretrained=False)
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    cache = FeatureCache(counter, "encoder", torch.device("cpu"), tmp_path / "cache")
    want = cache.map(image, "a" * 64, 1.0).load()
    [path] = cache_files(tmp_path / "cache")
    feature_map = cache.map(image, "a" * 64, 1.0)
    truncate(path)

    def read_only(*args: object) -> None:  # a shared cache on a read-only mount (root ignores file permissions)
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(FeatureCache, "_store", read_only)
    with caplog.at_level(logging.WARNING, logger="crowdtk.features"):
        assert torch.equal(feature_map.load(), want) and torch.equal(feature_map.load(), want)
    assert cache.computed == 2  # the first map, and this one once
    assert len(caplog.records) == 1 and "could not be rewritten" in caplog.records[0].getMessage()


def test_stale_files_of_an_older_crowdtk_are_recomputed_with_one_warning(tmp_path: Path, caplog) -> None:
    counter = build_model("lite", pretrained=False)
    images = [np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8) for i in range(3)]
    folder = tmp_path / "cache"
    cache = FeatureCache(counter, "encoder", torch.device("cpu"), folder)
    want = [cache.map(im, f"{i:064x}", 1.0).load() for i, im in enumerate(images)]
    for path in cache_files(folder):
        strip_digest(path)
    again = FeatureCache(counter, "encoder", torch.device("cpu"), folder)
    with caplog.at_level(logging.WARNING, logger="crowdtk.features"):
        got = [again.map(im, f"{i:064x}", 1.0).load() for i, im in enumerate(images)]
    assert all(torch.equal(a, b) for a, b in zip(got, want)) and again.computed == 3
    assert len(caplog.records) == 1 and "older crowdtk" in caplog.records[0].getMessage()


# --------------------------------------------------------------------------- eval and train with a damaged cache


@pytest.fixture(scope="module")
def frozen_set(tmp_path_factory) -> dict[str, Path]:
    """`crowdtk synth` of 4 + 3 scenes of 128×96, full labels of the training split, and a counter trained
    with a frozen encoder (features in memory)."""
    root = tmp_path_factory.mktemp("frozen")
    data = root / "data"
    result = run("synth", "-o", data, "--train", 4, "--test", 3, "--width", 128, "--height", 96, "--workers", 1, "-q")
    assert result.exit_code == 0, result.output
    manifest = data / "train" / "manifest.jsonl"
    for argv in (
        ["select", manifest, "--budget", "1", "--strategy", "none-or-all", "-o", root / "r.jsonl"],
        ["import", root / "r.jsonl", "--oracle", manifest, "-o", root / "labels.jsonl"],
    ):
        result = run(*argv)
        assert result.exit_code == 0, result.output
    with pytest.MonkeyPatch.context() as patch:  # the CPU choices of this machine are this test's own
        patch.setenv("CROWDTK_CACHE_DIR", str(root / "crowdtk-cache"))
        train(root / "labels.jsonl", root / "m.safetensors", replace(FROZEN, epochs=1), Provenance("train"))
    return {
        "root": root,
        "test": data / "test" / "manifest.jsonl",
        "labels": root / "labels.jsonl",
        "ckpt": root / "m.safetensors",
    }


def test_eval_gives_the_same_result_from_a_damaged_cache(frozen_set: dict[str, Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    args = ("eval", frozen_set["ckpt"], frozen_set["test"], "--json", "--feature-cache", cache)
    first = run(*args)
    assert first.exit_code == 0, first.output
    assert "warning" not in first.stderr
    corrupted, truncated, stale = cache_files(cache)
    flip_bytes_near_the_end(corrupted)
    truncate(truncated)
    strip_digest(stale)

    second = run(*args)
    assert second.exit_code == 0, second.output
    assert json.loads(second.stdout) == json.loads(first.stdout)
    warnings = [line for line in second.stderr.splitlines() if line.startswith("crowdtk eval: warning: ")]
    assert len(warnings) == 3, second.stderr
    for path, why in ((corrupted, "damaged"), (truncated, "unreadable"), (stale, "older crowdtk")):
        assert any(str(path) in w and why in w for w in warnings), (path, second.stderr)
    assert "Traceback" not in second.stderr and "report" not in second.stderr

    third = run(*args)  # the files were rewritten whole
    assert third.exit_code == 0 and json.loads(third.stdout) == json.loads(first.stdout)
    assert "warning" not in third.stderr, third.stderr


def test_training_from_a_damaged_cache_learns_what_it_learns_from_a_sound_one(
    frozen_set: dict[str, Path], tmp_path: Path, caplog
) -> None:
    cache = tmp_path / "cache"
    config = replace(FROZEN, feature_cache=str(cache))
    sound = train(frozen_set["labels"], tmp_path / "a.safetensors", config, Provenance("train"))
    assert sound.features_computed == 8  # 4 images × (plain, mirror)
    files = cache_files(cache)
    flip_bytes_near_the_end(files[0])
    truncate(files[5])
    with caplog.at_level(logging.WARNING, logger="crowdtk.features"):
        damaged = train(frozen_set["labels"], tmp_path / "b.safetensors", config, Provenance("train"))
    assert damaged.features_computed == 2  # the two bad files, from their images
    messages = [r.getMessage() for r in caplog.records if r.name == "crowdtk.features"]
    assert len(messages) == 2 and all(any(str(f) in m for m in messages) for f in (files[0], files[5]))
    _, a = load_tensors(tmp_path / "a.safetensors")
    _, b = load_tensors(tmp_path / "b.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
