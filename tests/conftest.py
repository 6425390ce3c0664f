"""Shared helpers and fixtures: `run` a command, read `jsonl` output, data sets, selection inputs, trained counters,
a labeling round."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from crowdtk.cap import TrainNet
from crowdtk.checkpoint import read_header, save_tensors
from crowdtk.cli import app
from crowdtk.data import read_points
from crowdtk.files import file_digest
from crowdtk.formats import (
    LABELS,
    MANIFEST,
    VECTORS,
    LabelsEntry,
    ManifestEntry,
    Provenance,
    Region,
    RegionsEntry,
    StripVectors,
    checkpoint_header,
    make_header,
    read_manifest,
    read_regions,
    save_vectors,
    write_jsonl,
)
from crowdtk.geometry import strip_edges
from crowdtk.labeling import INSTRUCTION
from crowdtk.models import build_model
from crowdtk.train_config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
PART_B = REPO.parent / "shared" / "data" / "ShanghaiTech" / "part_B"
# Quick training options (test_train, and the counters below): the small counter on 32-px crops, two at a time.
# The longest a test waits for a subprocess to reach a state or to end: a bound only a hang reaches, never a busy
# machine (CI runs the suite beside other jobs; a first epoch took over 3 minutes on 2 cores under a heavy load).
# Tests poll for the state itself, so a pass on an idle machine takes as long as the work does.
HANG_GUARD_S = 1800.0

FAST_TRAIN = ("--model", "lite", "--crop", "32", "--batch-size", "2", "-q")
# Training the back end on a frozen encoder's maps (the feature cache's tests): whole images, two at a time, no
# validation, the last epoch kept.
FROZEN_TRAIN = TrainConfig(
    model="lite",
    freeze="encoder",
    epochs=3,
    batch_size=2,
    crop=0,
    lr=1e-3,
    val_frac=0.0,
    lr_schedule="cosine",
    keep="last",
)

runner = CliRunner()


# --------------------------------------------------------------------------- running commands


def run(*args: object, input: str | None = None):
    """`crowdtk ARGS…` in this process (arguments are stringified, `input` is its stdin): the CliRunner result."""
    return runner.invoke(app, [str(a) for a in args], input=input)


def trained(labels: Path, out: Path, *options: object) -> dict:
    """`crowdtk train LABELS OPTIONS… -o OUT`, which must succeed: the checkpoint's header."""
    result = run("train", labels, *options, "-o", out)
    assert result.exit_code == 0, result.output
    return read_header(out)


def jsonl(text: str) -> tuple[dict, list[dict]]:
    """A JSON Lines artifact's text as (header, records)."""
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    return lines[0], lines[1:]


def assert_clean_failure(result, names: str, leftovers: Path | None = None, code: int = 1) -> None:
    """Exit ``code`` (1; 2 for a usage error) with one `crowdtk <cmd>: error:` line naming `names`, no traceback,
    no output left."""
    assert result.exit_code == code, result.output
    assert result.stderr.startswith("crowdtk "), result.stderr
    assert ": error: " in result.stderr and names in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    if leftovers is not None:
        assert not leftovers.exists()


def best_validated_epoch(history: list[dict]) -> dict:
    """The history row of the epoch `train` keeps by default: the first with the lowest validation MAE."""
    return min((h for h in history if h["val_mae"] is not None), key=lambda h: h["val_mae"])


# --------------------------------------------------------------------------- data sets


def write_generic(root: Path, scenes: dict[str, tuple[int, int, np.ndarray]], suffix: str = ".txt") -> Path:
    """A generic-layout data set: {name: (height, width, points)} -> root/images + root/points."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "points").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, (height, width, points) in scenes.items():
        image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        cv2.imwrite(str(root / "images" / f"{name}.jpg"), image)
        target = root / "points" / f"{name}{suffix}"
        if suffix == ".txt":
            target.write_text("# x y\n" + "".join(f"{x} {y}\n" for x, y in points))
        elif suffix == ".json":
            target.write_text(json.dumps([[float(x), float(y)] for x, y in points]))
        elif suffix == ".npy":
            np.save(target, np.asarray(points, dtype=np.float64).reshape(-1, 2))
        elif suffix == ".csv":
            target.write_text("x,y\n" + "".join(f"{x},{y}\n" for x, y in points))
    return root


@pytest.fixture(scope="session")
def part_b() -> Path:
    if not (PART_B / "train_data" / "images").is_dir():
        pytest.skip(f"real ShanghaiTech Part B not found at {PART_B} (../shared is absent on this machine)")
    return PART_B


@pytest.fixture(scope="session")
def part_b_manifest(part_b: Path, tmp_path_factory) -> Path:
    """`crowdtk index` of the real Part B training set (400 images), made once. Read-only."""
    manifest = tmp_path_factory.mktemp("part_b") / "m.jsonl"
    result = run("index", part_b / "train_data", "-o", manifest, "-q", "--workers", "2")
    assert result.exit_code == 0, result.output
    return manifest


@pytest.fixture
def small_set(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    scenes = {
        "a": (64, 96, np.c_[rng.uniform(0, 96, 30), rng.uniform(0, 64, 30)]),
        "b": (48, 80, np.c_[rng.uniform(0, 80, 5), rng.uniform(0, 48, 5)]),
        "c": (40, 40, np.zeros((0, 2))),
    }
    return write_generic(tmp_path / "set", scenes)


# --------------------------------------------------------------------------- selection inputs (no images needed)


def pool(n: int, width: int = 1024, height: int = 768, prefix: str = "img") -> list[ManifestEntry]:
    """``n`` manifest entries of images that need not exist (selection reads only their sizes and digests)."""
    return [
        ManifestEntry(f"{prefix}{i}", f"/nowhere/{prefix}{i}.jpg", None, width, height, 10, f"{i:064x}")
        for i in range(n)
    ]


def write_manifest(path: Path, entries: list[ManifestEntry]) -> Path:
    write_jsonl(path, make_header(MANIFEST, Provenance("index")), (e.to_record() for e in entries))
    return path


def write_vectors(
    path: Path,
    manifest: Path,
    entries: list[ManifestEntry],
    vectors: np.ndarray,
    counts: np.ndarray | None = None,
    strip_frac: float = 0.1,
    scale: float = 1.0,
) -> Path:
    """A vectors file as `crowdtk vectors` writes it: vectors (images, strips, dims), strips on the grid of `scale`."""
    n_img, n_strips, _ = vectors.shape
    edges = [strip_edges(e.width, strip_frac, scale) for e in entries]
    data = StripVectors(
        ids=np.array([e.id for e in entries]),
        sha256=np.array([e.sha256 for e in entries]),
        strip_image=np.repeat(np.arange(n_img), n_strips).astype(np.int64),
        strip_x0=np.concatenate([e[:-1] for e in edges]).astype(np.int64),
        strip_x1=np.concatenate([e[1:] for e in edges]).astype(np.int64),
        vectors=vectors.reshape(n_img * n_strips, -1).astype(np.float32),
        counts=(vectors[:, :, 0] if counts is None else counts).reshape(-1).astype(np.float32),
    )
    header = make_header(VECTORS, Provenance("vectors", {"manifest": str(manifest)}))
    header.update(
        levels=4, strip_frac=strip_frac, stride=8, manifest_sha256=file_digest(manifest), checkpoint_sha256="0" * 64
    )
    if scale != 1.0:
        header["scale"] = scale
    save_vectors(path, header, data)
    return path


@pytest.fixture
def manifest_and_vectors(tmp_path: Path) -> Callable[..., tuple[Path, Path]]:
    """Writes what select reads: a manifest of ``entries`` (m.jsonl in the test's folder) and their ``vectors`` (v.npz,
    with write_vectors' other options); returns both paths."""

    def write(entries: list[ManifestEntry], vectors: np.ndarray, **options: Any) -> tuple[Path, Path]:
        manifest = write_manifest(tmp_path / "m.jsonl", entries)
        return manifest, write_vectors(tmp_path / "v.npz", manifest, entries, vectors, **options)

    return write


def level_vector(column_sums: np.ndarray, levels: int = 4) -> np.ndarray:
    """Eq. 3-4 on a strip's per-row head counts."""
    return np.concatenate(
        [[band.sum() * k / levels for band in np.array_split(column_sums, k)] for k in range(1, levels + 1)]
    )


def realistic_vectors(n_images: int, seed: int = 0) -> np.ndarray:
    """Strip vectors of perspective scenes: density grows towards the bottom, groups sit side by side."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(0.2, 1.0, 96)
    out = np.zeros((n_images, 10, 10))
    for i in range(n_images):
        density = np.outer(rows**2, np.ones(10)) * rng.uniform(0.1, 0.5)
        for _ in range(rng.integers(1, 4)):  # groups: a few neighbouring strips, a band of rows
            x, w = rng.integers(0, 10), rng.integers(1, 4)
            y = rng.integers(0, 80)
            density[y : y + rng.integers(8, 30), x : x + w] += rng.uniform(0.5, 3.0)
        density *= rng.uniform(0.5, 1.5, size=(1, 10))
        out[i] = [level_vector(density[:, j]) for j in range(10)]
    return out


def select_after(warm: Path, manifest: Path, strategy: str, vectors: Path, *options: object):
    """`crowdtk select` of a round after the warm-up round ``warm`` (its images excluded): ``strategy`` on
    ``vectors``, with ``options`` (the budget, -o …)."""
    return run("select", manifest, "--strategy", strategy, "--vectors", vectors, "--exclude", warm, *options)


# --------------------------------------------------------------------------- the engine's pool and counters (read-only)


@pytest.fixture(scope="session")
def strip_pool(tmp_path_factory) -> dict[str, Path]:
    """Six 80×48 images with 6, 10, …, 26 heads; strips labeled in four, two fully labeled; a manifest and a labels
    file."""
    root = tmp_path_factory.mktemp("pool")
    rng = np.random.default_rng(0)
    scenes = {f"im{i}": (48, 80, np.c_[rng.uniform(0, 80, 6 + 4 * i), rng.uniform(0, 48, 6 + 4 * i)]) for i in range(6)}
    write_generic(root / "data", scenes)
    manifest = root / "m.jsonl"
    assert run("index", root / "data", "-o", manifest).exit_code == 0
    _, entries = read_manifest(manifest)
    labels = []
    for i, e in enumerate(entries):
        pts = scenes[e.id][2]
        regions = (
            (Region(0, e.width, 0, e.height),) if i < 2 else (Region(16, 32, 0, e.height), Region(56, 72, 0, e.height))
        )
        keep = np.zeros(len(pts), bool)
        for r in regions:
            keep |= r.contains(pts)
        labels.append(LabelsEntry(e.id, e.image, e.sha256, e.width, e.height, regions, pts[keep]))
    path = root / "labels.jsonl"
    write_jsonl(path, make_header(LABELS, Provenance("test")), (entry.to_record() for entry in labels))
    return {"root": root, "manifest": manifest, "labels": path}


def run_in_own_cache(tmp_path_factory, *args: object):
    """`run` with a fresh $CROWDTK_CACHE_DIR, for session fixtures (made before `own_cpu_choices` applies)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CROWDTK_CACHE_DIR", str(tmp_path_factory.mktemp("crowdtk-cache")))
        return run(*args)


@pytest.fixture(scope="session")
def warm_ckpt(strip_pool, tmp_path_factory) -> Path:
    """`crowdtk warmup` for one epoch on the strip pool's labels."""
    ckpt = tmp_path_factory.mktemp("warm") / "m.safetensors"
    result = run_in_own_cache(
        tmp_path_factory, "warmup", strip_pool["labels"], "--epochs", "1", "-o", ckpt, *FAST_TRAIN
    )
    assert result.exit_code == 0, result.output
    return ckpt


@pytest.fixture(scope="session")
def cap_ckpt(strip_pool, tmp_path_factory) -> Path:
    """`crowdtk train --cap` for two epochs on the strip pool's labels (its state file lies beside it)."""
    ckpt = tmp_path_factory.mktemp("cap") / "cap.safetensors"
    result = run_in_own_cache(
        tmp_path_factory, "train", strip_pool["labels"], "--cap", "--epochs", "2", "-o", ckpt, *FAST_TRAIN
    )
    assert result.exit_code == 0, result.output
    return ckpt


# --------------------------------------------------------------------------- a labeling round (export and import)


@pytest.fixture
def labeled(tmp_path: Path) -> dict[str, Path]:
    """A small data set with head points, its manifest, random regions (30%) to label, and the oracle's labels for
    them."""
    rng = np.random.default_rng(2)
    scenes = {
        f"scene {i}" if i == 0 else f"s{i}": (96, 160 + 16 * i, np.c_[rng.uniform(0, 160, 60), rng.uniform(0, 96, 60)])
        for i in range(4)
    }
    root = write_generic(tmp_path / "set", scenes)
    manifest = tmp_path / "m.jsonl"
    assert run("index", root, "-o", manifest, "-q").exit_code == 0
    regions = tmp_path / "r.jsonl"
    result = run("select", manifest, "--budget", "0.3", "--seed", "1", "-o", regions)
    assert result.exit_code == 0, result.output
    oracle = tmp_path / "oracle.jsonl"
    result = run("import", regions, "--oracle", manifest, "-o", oracle)
    assert result.exit_code == 0, result.output
    return {"root": root, "manifest": manifest, "regions": regions, "oracle": oracle, "tmp": tmp_path}


def truth(paths: dict[str, Path]) -> dict[str, np.ndarray]:
    """Every ground-truth point of each image of `labeled` (inside and outside its regions)."""
    _, manifest = read_manifest(paths["manifest"])
    points = {}
    for m in manifest:
        assert m.points is not None, f"{m.id} has no points file"
        points[m.id] = read_points(m.points)
    return points


def export_package(paths: dict[str, Path], fmt: str) -> Path:
    """`crowdtk export` of `labeled`'s regions for the tool `fmt`: the package folder (its README and index checked)."""
    out = paths["tmp"] / f"export-{fmt}"
    result = run("export", paths["regions"], "--to", fmt, "-o", out)
    assert result.exit_code == 0, result.output
    assert INSTRUCTION in (out / "README.txt").read_text()
    index = json.loads((out / "index.json").read_text())
    assert index["format"] == "labeling-export" and index["tool"] == fmt and index["instruction"] == INSTRUCTION
    return out


def labelstudio_export(paths: dict[str, Path]) -> tuple[list[dict], list[RegionsEntry], dict[str, np.ndarray]]:
    """The tasks of `crowdtk export --to labelstudio` of `labeled`'s regions, the regions' entries (in the tasks'
    order) and every ground-truth point of each image (truth)."""
    out = export_package(paths, "labelstudio")
    tasks = json.loads((out / "tasks.json").read_text())
    _, regions = read_regions(paths["regions"])
    return tasks, regions, truth(paths)


def cvat_export(paths: dict[str, Path]) -> tuple[Path, ET.ElementTree[ET.Element], list[tuple[ET.Element, np.ndarray]]]:
    """`crowdtk export --to cvat` of `labeled`'s regions: the package folder, its annotations.xml parsed, and each
    <image> of that tree with every ground-truth point of its image (truth)."""
    out = export_package(paths, "cvat")
    tree = ET.parse(out / "annotations.xml")
    _, regions = read_regions(paths["regions"])
    everything = truth(paths)
    return out, tree, [(image, everything[entry.id]) for image, entry in zip(tree.getroot().findall("image"), regions)]


def add_cvat_heads(image: ET.Element, points: np.ndarray) -> None:
    """One 'head' <points> shape of ``points`` in a CVAT <image>, as a labeler's session saves it."""
    ET.SubElement(
        image,
        "points",
        label="head",
        source="manual",
        occluded="0",
        z_order="0",
        points=";".join(f"{float(x)!r},{float(y)!r}" for x, y in points),
    )


def import_from(paths: dict[str, Path], tool: str, source: Path, out: Path, *options: object):
    """`crowdtk import` of `labeled`'s regions from the tool's ``source`` into ``out``: the CliRunner result."""
    return run("import", paths["regions"], "--from", tool, source, "-o", out, *options)


# --------------------------------------------------------------------------- bench and demo


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """`crowdtk synth` of 12 + 4 scenes of 128×96 under data/; each test writes its own folder beside it."""
    root = tmp_path_factory.mktemp("bench")
    result = run("synth", "-o", root / "data", "--train", 12, "--test", 4, "--width", 128, "--height", 96, "-q")
    assert result.exit_code == 0, result.output
    return root


# Quick bench and demo schedules: two optimizer steps a training run, one for the warm-up counter, two images a batch.
QUICK_ROUNDS = ("--steps", "2", "--warmup-steps", "1", "--batch-size", "2")
# A bench on tiny_data quick enough for a test: the images at their size, quick rounds on 32-pixel crops.
QUICK_BENCH = ("--scale", "1", *QUICK_ROUNDS, "--crop", "32")


def bench_on_synth(root: Path, out: Path) -> list[object]:
    """The start of `crowdtk bench` on the train and test manifests of a `crowdtk synth` under root/data, into out."""
    train, test = (root / "data" / part / "manifest.jsonl" for part in ("train", "test"))
    return ["bench", "--train", train, "--test", test, "-o", out]


# --------------------------------------------------------------------------- machine-wide caches


@pytest.fixture(autouse=True)
def own_cpu_choices(tmp_path_factory, monkeypatch) -> None:
    """Each test starts without the remembered CPU phase-split choices (crowdtk.train.cpu), so that a
    test timing or patching the choice is not answered by an earlier test's, nor the user's cache."""
    monkeypatch.setenv("CROWDTK_CACHE_DIR", str(tmp_path_factory.mktemp("crowdtk-cache")))


# --------------------------------------------------------------------------- a counter without training


def save_checkpoint(path: Path, net: TrainNet, config: TrainConfig, command: str = "test", **fields: Any) -> Path:
    """``net`` saved at ``path`` as a checkpoint of one finished epoch that `crowdtk COMMAND` trained with ``config``
    (on no labels in particular); ``fields`` add to or replace its header's (checkpoint_header's arguments)."""
    header: dict[str, Any] = {
        "model": net.counter.name,
        "model_config": net.counter.config,
        "cap": net.cap is not None,
        "training": asdict(config),
        "labels_sha256": "0" * 64,
        "epochs_done": 1,
        "best_val_mae": 0.0,
        "val_on": "train",
    }
    save_tensors(path, net.weights(), checkpoint_header(Provenance(command), **(header | fields)))
    return path


def small_checkpoint(
    path: Path, scale: float = 1.0, cap: bool = False, finished: bool = True, freeze: str = "none"
) -> Path:
    """A small random `lite` counter saved as a crowdtk checkpoint trained at ``scale`` (with ``freeze``)."""
    torch.manual_seed(0)
    counter = build_model("lite", pretrained=False, dilated=False, backend_channels=[16])
    config = TrainConfig(model="lite", pretrained=False, scale=scale, cap=cap, epochs=1, freeze=freeze)
    return save_checkpoint(path, TrainNet(counter, cap=cap), config, epochs_done=1 if finished else 0)


def constant_counter(checkpoint: Path, path: Path, per_cell: float) -> Path:
    """``checkpoint`` with its output layer replaced so that every output cell predicts ``per_cell`` heads."""
    from crowdtk.checkpoint import load_tensors
    from crowdtk.predict import load_counter

    header, tensors = load_tensors(checkpoint)
    scale = load_counter(checkpoint).density_scale
    tensors["output.weight"] = torch.zeros_like(tensors["output.weight"])
    tensors["output.bias"] = torch.full_like(tensors["output.bias"], per_cell * scale)
    save_tensors(path, tensors, header)
    return path
