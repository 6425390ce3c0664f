"""Command line (from the repository root): .venv/bin/python bench/run.py [--quick] [--only STAGE,...] [--json OUT]

crowdtk's performance table (issue 6): every stage against a plain reference and against the
machine's hardware floor, measured as ratios in ONE run so that machine noise hits both sides.

Stages (``--only`` takes a comma-separated subset):

``floor``        float32 matmul rate (2048³ torch.matmul, best of 5) and each model's forward
                 FLOPs, counted from its layers (hooks on Conv2d/Linear, 2·MACs, on the meta
                 device, so nothing is computed); floor = FLOPs / rate.
``inference``    CSRNet forward at 768×1024 (batch 1), plain (NCHW, torch.no_grad, default
                 threads) vs crowdtk's Predictor; the lite counter through the Predictor
                 (its default batching) vs CSRNet per image; lite end to end on real images, plain vs
                 Predictor; peak RSS of a 4000×3000 image, tiled (--max-side 2048) vs whole,
                 each in a fresh process.
``training``     a plain training loop in the style of the original CSRNet script (NCHW, image
                 and full-resolution density map read from disk every step, density resized
                 with cv2, batch 1, no loader workers) vs crowdtk's step (prepare_sample once,
                 random_crop, to_input, TrainNet, masked_loss), same model, crop and steps.
``select``       ``select --strategy mdc`` over 100,000 images' strip vectors vs one
                 scikit-learn GaussianMixture per image (timed on 500 images, extrapolated);
                 the picks of those 500 images must be identical.
``gen-density``  bench/gen_density.py's kernels (fixed, adaptive) vs the textbook per-head
                 full-image filter; generate_densities --workers 1 vs 2.
``scaling``      index, gen-density, vectors, select at N and 2N images (ratio ≈ 2), and
                 `crowdtk train` per epoch in 1 process vs 2 torchrun processes.

How it measures: the two sides of a comparison live in two worker processes that run
alternately (A B B A A B …), best of the repeats (noise from other processes only adds
time). Each worker keeps its own memory settings, and its peak resident memory (VmHWM,
reset after warm-up) is the ``peak memory`` column (the crowdtk side's). Real images are
ShanghaiTech Part B (``--root``). ``ratio`` is reference time / crowdtk time (a speedup),
except in the scaling rows, where it is time(2N) / time(N). ``floor multiple`` is crowdtk's
time / the FLOP floor. Targets are listed under the table as PASS/FAIL; the exit status is 0
whatever they say. ``--quick`` shrinks every size (seconds; for smoke runs only: its numbers
mean nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout even without the editable install

DEFAULT_ROOT = REPO.parent / "shared" / "data" / "ShanghaiTech" / "part_B" / "train_data"
STAGES = ("floor", "inference", "training", "select", "gen-density", "scaling")
PY = sys.executable


# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Sizes:
    height: int = 768  # inference input (Part B's size)
    width: int = 1024
    matmul: int = 2048
    matmul_repeats: int = 5
    infer_rounds: int = 2  # alternating repeats per side
    lite_images: int = 4  # real images end to end (one lite batch)
    big: tuple[int, int] = (3000, 4000)  # tiling memory image (h, w)
    max_side: int = 2048
    train_models: tuple[str, ...] = ("csrnet", "lite")
    crop: int = 256
    train_steps: int = 5  # timed steps per side (after one warm-up step)
    select_images: int = 100_000
    select_sample: int = 500
    select_budget: float = 0.4
    gd_images: int = 2  # textbook comparison (per kernel)
    gd_worker_images: int = 100
    scale_n: int = 50  # index / gen-density
    scale_vec_n: int = 4  # vectors (lite forward per image)
    scale_select_n: int = 10_000
    synth_train: int = 12
    synth_size: tuple[int, int] = (256, 384)
    torchrun_crop: int = 128
    torchrun_epochs: int = 3


QUICK = Sizes(height=192, width=256, matmul=512, matmul_repeats=3, infer_rounds=1, lite_images=2, big=(750, 1000),
              max_side=512, train_models=("lite",), crop=64, train_steps=2, select_images=2000, select_sample=50,
              gd_images=1, gd_worker_images=8, scale_n=4, scale_vec_n=2, scale_select_n=1000, synth_train=6,
              synth_size=(96, 128), torchrun_crop=32, torchrun_epochs=2)


# --------------------------------------------------------------------------- memory


def reset_peak() -> None:
    """Make VmHWM (peak resident memory) start again from the current RSS (Linux)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_mb() -> float:
    """VmHWM in MB (Linux), else ru_maxrss (never reset)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 / (1024 * 1024) if scale == 1 else 1 / 1024)


# --------------------------------------------------------------------------- worker processes


def _serve(conn: Any, kind: str, kwargs: dict[str, Any]) -> None:
    try:
        obj = WORKERS[kind](**kwargs)
        conn.send(("ready", None))
    except BaseException:  # noqa: BLE001 - report anything to the parent
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        cmd = conn.recv()
        try:
            if cmd == "run":
                start = time.perf_counter()
                out = obj.run()
                conn.send(("ok", (time.perf_counter() - start, out)))
            elif cmd == "reset_peak":
                reset_peak()
                conn.send(("ok", None))
            elif cmd == "peak":
                conn.send(("ok", peak_mb()))
            elif cmd == "close":
                conn.send(("ok", None))
                return
        except BaseException:  # noqa: BLE001
            conn.send(("error", traceback.format_exc()))


class Remote:
    """One side of a comparison in its own process: set up once, then ``run()`` on demand."""

    def __init__(self, kind: str, **kwargs: Any) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, kind, kwargs), daemon=True)
        self.proc.start()
        self.kind = kind
        self._reply()

    def _reply(self) -> Any:
        status, value = self.conn.recv()
        if status == "error":
            raise RuntimeError(f"worker {self.kind} failed:\n{value}")
        return value

    def ask(self, cmd: str) -> Any:
        self.conn.send(cmd)
        return self._reply()

    def run(self) -> tuple[float, Any]:
        return self.ask("run")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ask("close")
        self.proc.join(timeout=30)


@dataclass
class Race:
    """Alternating timed runs of several sides; best time per side, last outputs, peak memory."""

    times: dict[str, list[float]] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    peaks: dict[str, float] = field(default_factory=dict)

    def best(self, name: str) -> float:
        return min(self.times[name])


def race(sides: dict[str, Remote], rounds: int, warmup: bool = True) -> Race:
    result = Race({name: [] for name in sides})
    names = list(sides)
    if warmup:
        for name in names:
            sides[name].run()
    for name in names:
        sides[name].ask("reset_peak")
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            seconds, out = sides[name].run()
            result.times[name].append(seconds)
            result.outputs[name] = out
    for name in names:
        result.peaks[name] = sides[name].ask("peak")
    return result


# --------------------------------------------------------------------------- shared helpers


def read_rgb(path: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """An image as RGB uint8, resized to (h, w) when ``size`` differs from its own."""
    import cv2

    image = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    if size is not None and image.shape[:2] != tuple(size):
        image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return image


def make_counter(name: str, options: dict[str, Any] | None = None) -> Any:
    """The same weights in every process: seed 0, random init (csrnet), packaged ImageNet weights (lite)."""
    import torch

    from crowdtk.models import build_model

    torch.manual_seed(0)
    return build_model(name, pretrained=(name == "lite"), **(options or {})).eval()


def count_flops(name: str, options: dict[str, Any] | None, shape: tuple[int, ...]) -> int:
    """Forward FLOPs (2·MACs of every Conv2d and Linear), from the layers' output shapes on the meta device."""
    import torch

    from crowdtk.models import build_model

    with torch.device("meta"):
        model = build_model(name, pretrained=False, **(options or {})).eval()
    total = [0]

    def hook(module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        if isinstance(module, torch.nn.Conv2d):
            kh, kw = module.kernel_size
            total[0] += 2 * output.numel() * kh * kw * (module.in_channels // module.groups)
        elif isinstance(module, torch.nn.Linear):
            total[0] += 2 * output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model(torch.empty(shape, device="meta"))
    for h in handles:
        h.remove()
    return total[0]


def matmul_rate(n: int, repeats: int) -> float:
    """Best float32 torch.matmul rate in GFLOP/s (n×n by n×n)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


_MANIFESTS: dict[Path, Any] = {}


def manifest_of(root: Path) -> Any:
    """build_manifest(root), once per run."""
    from crowdtk.index import build_manifest

    if root not in _MANIFESTS:
        _MANIFESTS[root] = build_manifest(root, workers=2)
    return _MANIFESTS[root]


def part_b_paths(root: Path, n: int) -> list[str]:
    from crowdtk.index import _images_in

    images = _images_in(root / "images")
    if len(images) < n:
        raise SystemExit(f"bench/run.py: error: {root / 'images'} holds {len(images)} images, {n} needed")
    return [str(p) for p in images[:n]]


# --------------------------------------------------------------------------- inference workers


class PlainInference:
    """The plain reference: decode, NCHW float tensor, torch.no_grad(), model(x), one image at a time."""

    def __init__(self, model: str, paths: list[str], size: tuple[int, int], options: dict[str, Any] | None = None) -> None:
        import torch

        self.torch = torch
        self.model = make_counter(model, options)
        self.paths, self.size = paths, size
        self.mean = torch.tensor(self.model.mean).view(3, 1, 1)
        self.std = torch.tensor(self.model.std).view(3, 1, 1)

    def run(self) -> list[float]:
        torch = self.torch
        counts = []
        for path in self.paths:
            image = read_rgb(path, self.size)
            x = (torch.from_numpy(image).permute(2, 0, 1).float().div(255.0) - self.mean) / self.std
            with torch.no_grad():
                out = self.model(x.contiguous()[None])
            counts.append(float(out.sum(dtype=torch.float64)))
        return counts


class CrowdtkInference:
    """crowdtk's path: Predictor (inference copy, channels-last, inference_mode, batching, retained memory)
    fed by ``prefetched`` (the next image decodes in a thread)."""

    def __init__(self, model: str, paths: list[str], size: tuple[int, int], options: dict[str, Any] | None = None,
                 fast: bool = True, batch_size: int | None = None) -> None:
        from crowdtk.predict import LoadedModel, Predictor

        self.predictor = Predictor(LoadedModel(make_counter(model, options), {}, ""), device="cpu", max_side=1 << 16,
                                   fast=fast, batch_size=batch_size)
        self.paths, self.size = paths, size

    def run(self) -> list[float]:
        from crowdtk.predict import prefetched

        images = (image for _, image in prefetched(self.paths, read=lambda p: read_rgb(p, self.size)))
        return [float(d.sum(dtype=np.float64)) for d, _, _ in self.predictor.densities(images)]


def tile_child(model: str, path: str, big: tuple[int, int], max_side: int, fast: bool) -> None:
    """(Fresh process) predict one big image; print seconds, count and peak RSS as JSON."""
    from crowdtk.predict import LoadedModel, Predictor

    image = read_rgb(path, big)
    predictor = Predictor(LoadedModel(make_counter(model), {}, ""), device="cpu", max_side=max_side, fast=fast)
    start = time.perf_counter()
    density, _, _ = predictor.density(image)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "count": float(density.sum(dtype=np.float64)),
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_tile_child(model: str, path: str, big: tuple[int, int], max_side: int, fast: bool) -> dict[str, Any]:
    cmd = [PY, str(Path(__file__).resolve()), "--tile-child", json.dumps([model, path, list(big), max_side, fast])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    out, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"tile child failed: {err[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_mb"] = usage.ru_maxrss / 1024  # this child's own peak (wait4), = RUSAGE_SELF in it
    return result


# --------------------------------------------------------------------------- training workers


class PlainTraining:
    """The original CSRNet training script's way, one step per run(): read the image and its
    full-resolution density map from disk, crop, resize the density with cv2 (×64), NCHW tensors,
    MSE (sum), backward, Adam step. Batch 1, no loader workers."""

    def __init__(self, model: str, paths: list[str], densities: list[str], crop: int) -> None:
        import torch

        self.torch = torch
        self.model = make_counter(model)
        self.model.train()
        from crowdtk.train import freeze_batchnorm

        freeze_batchnorm(self.model)  # crowdtk does this too; CSRNet has no batch norm
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-7)
        self.paths, self.densities, self.crop = paths, densities, crop
        self.mean = torch.tensor(self.model.mean).view(3, 1, 1)
        self.std = torch.tensor(self.model.std).view(3, 1, 1)
        self.rng = np.random.default_rng(0)
        self.step = 0

    def run(self) -> float:
        import cv2

        torch = self.torch
        i = self.step % len(self.paths)
        self.step += 1
        image = read_rgb(self.paths[i])
        density = np.load(self.densities[i])["density"]  # full resolution, float32
        h, w = image.shape[:2]
        c = self.crop
        top, left = int(self.rng.integers(0, h - c + 1)), int(self.rng.integers(0, w - c + 1))
        image = image[top:top + c, left:left + c]
        density = density[top:top + c, left:left + c]
        if self.rng.random() < 0.5:
            image, density = image[:, ::-1], density[:, ::-1]
        target = cv2.resize(np.ascontiguousarray(density), (c // 8, c // 8), interpolation=cv2.INTER_CUBIC) * 64
        x = (torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255.0) - self.mean) / self.std
        x = x.contiguous()[None]
        t = torch.from_numpy(target)[None, None] * 100.0
        out = self.model(x)
        loss = torch.nn.functional.mse_loss(out, t, reduction="sum")
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss)


class CrowdtkTraining:
    """crowdtk's training step as ``crowdtk.train.train`` runs it (cap off, batch 1): samples prepared
    once (prepare_sample), then per step random_crop, to_input, TrainNet forward, masked_loss,
    backward, Adam, with train.py's CPU settings (speed_up_cpu_training); ``cpu_settings=False``
    leaves them out, to measure what they gain."""

    def __init__(self, model: str, labels: list[dict[str, Any]], crop: int, cpu_settings: bool = True) -> None:
        import torch

        from crowdtk.formats import LabelsEntry, Region
        from crowdtk.cap import TrainNet
        from crowdtk.train import example_batch, freeze_batchnorm, prepare_sample, speed_up_cpu_training
        from crowdtk.train_config import TrainConfig

        self.torch = torch
        self.config = TrainConfig(model=model, crop=crop, batch_size=1, pretrained=False)
        self.counter = make_counter(model)
        self.net = TrainNet(self.counter, cap=False).to(memory_format=torch.channels_last)
        self.net.train()
        freeze_batchnorm(self.net)
        if cpu_settings:
            speed_up_cpu_training(self.net, example_batch((1, 3, crop, crop), (crop // 8, crop // 8)))
        self.optimizer = torch.optim.Adam([p for p in self.net.parameters() if p.requires_grad], lr=1e-7)
        entries = [LabelsEntry(d["id"], d["image"], d["sha256"], d["width"], d["height"], (Region(0, d["width"], 0, d["height"]),),
                               np.asarray(d["points"], dtype=np.float64).reshape(-1, 2)) for d in labels]
        start = time.perf_counter()
        self.samples = [prepare_sample(e, self.config) for e in entries]
        self.prepare_per_image = (time.perf_counter() - start) / len(entries)
        self.step = 0

    def run(self) -> dict[str, float]:
        from crowdtk.train import masked_loss, random_crop

        torch, config = self.torch, self.config
        start = time.perf_counter()
        i = self.step % len(self.samples)
        rng = np.random.default_rng([config.seed, 0, self.step, i])
        self.step += 1
        image, target, mask = random_crop(self.samples[i], config.crop, config.flip, rng)
        x = self.counter.to_input(image[None], torch.device("cpu"))
        t = torch.from_numpy(target[None]) * config.density_scale
        m = torch.from_numpy(mask[None])
        load = time.perf_counter() - start
        pred = self.net(x, m)
        loss = masked_loss(pred, t, m.float())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        loss.item()
        return {"load": load, "prepare_per_image": self.prepare_per_image}


class Matmul:
    """One n×n by n×n float32 torch.matmul per run(): the floor's rate, measured alongside the other sides."""

    def __init__(self, n: int) -> None:
        import torch

        self.a, self.b, self.torch = torch.randn(n, n), torch.randn(n, n), torch

    def run(self) -> None:
        self.torch.matmul(self.a, self.b)


WORKERS: dict[str, Callable[..., Any]] = {
    "matmul": Matmul,
    "plain-inference": PlainInference,
    "crowdtk-inference": CrowdtkInference,
    "plain-training": PlainTraining,
    "crowdtk-training": CrowdtkTraining,
}


# --------------------------------------------------------------------------- the table


@dataclass
class Row:
    stage: str
    reference: str
    ref_s: float | None
    ours_s: float | None
    ratio: float | None
    floor_multiple: float | None = None
    peak_mb: float | None = None
    what: str = ""  # what crowdtk's side is


@dataclass
class Check:
    what: str
    value: str
    ok: bool


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def check(self, what: str, value: str, ok: bool) -> None:
        self.checks.append(Check(what, value, bool(ok)))
        log(f"  {'PASS' if ok else 'FAIL'}  {what}: {value}")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fmt_s(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.3g} s" if x < 100 else f"{x:.0f} s"


def fmt_x(x: float | None) -> str:
    return "–" if x is None else (f"{x:.2f}×" if x < 10 else f"{x:.0f}×")


def fmt_mb(x: float | None) -> str:
    return "–" if x is None else (f"{x:.0f} MB" if x < 1024 else f"{x / 1024:.2f} GB")


def markdown(report: Report) -> str:
    lines = ["| stage | reference | reference time | crowdtk time | ratio | floor multiple | peak memory |",
             "|---|---|---|---|---|---|---|"]
    for r in report.rows:
        ours = fmt_s(r.ours_s) + (f" ({r.what})" if r.what else "")
        lines.append(f"| {r.stage} | {r.reference} | {fmt_s(r.ref_s)} | {ours} | {fmt_x(r.ratio)} | {fmt_x(r.floor_multiple)} | {fmt_mb(r.peak_mb)} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- stage 1: floor


def stage_floor(report: Report, sizes: Sizes, root: Path) -> None:
    rate = matmul_rate(sizes.matmul, sizes.matmul_repeats)
    report.facts["gflops"] = rate
    shape = (1, 3, sizes.height, sizes.width)
    report.rows.append(Row("floor", f"torch.matmul {sizes.matmul}³ fp32, best of {sizes.matmul_repeats}", None, None, None,
                           what=f"{rate:.1f} GFLOP/s"))
    for name, options, label in (("csrnet", {}, "csrnet"), ("lite", {}, "lite"), ("lite", {"dilated": False}, "lite dilated=False")):
        flops = count_flops(name, options, shape)
        report.facts[f"flops:{label}"] = flops
        report.rows.append(Row("floor", f"{label} forward FLOPs at {sizes.height}×{sizes.width}", None, flops / rate / 1e9, None,
                               what=f"floor; {flops / 1e9:.1f} GFLOP"))
    csr = report.facts["flops:csrnet"] * (768 * 1024) / (sizes.height * sizes.width)
    report.check("csrnet FLOPs at 768×1024 ≈ 650 GFLOP (layer count check)", f"{csr / 1e9:.1f} GFLOP", abs(csr / 650e9 - 1) < 0.02)


def floor_seconds(report: Report, label: str, height: int, width: int, sizes: Sizes, gflops: float | None = None) -> float:
    """FLOPs / rate; ``gflops`` is a rate measured alongside (else the floor stage's)."""
    flops = report.facts[f"flops:{label}"] * (height * width) / (sizes.height * sizes.width)
    return flops / (gflops or report.facts["gflops"]) / 1e9


def alongside_rate(report: Report, result: Race, sizes: Sizes, stage: str) -> float:
    """The best matmul rate of a race's "matmul" side (the floor at the time of the stage), or the floor stage's
    when that is higher (a loaded machine lowers both sides alike)."""
    rate = 2 * sizes.matmul**3 / result.best("matmul") / 1e9
    report.facts[f"gflops:{stage}"] = rate
    report.notes.append(f"{stage}: matmul rate measured alongside {rate:.1f} GFLOP/s (floor stage: {report.facts['gflops']:.1f}); "
                        "floor multiples use the larger")
    return max(rate, report.facts["gflops"])


# --------------------------------------------------------------------------- stage 2: inference


def stage_inference(report: Report, sizes: Sizes, root: Path) -> None:
    size = (sizes.height, sizes.width)
    one = part_b_paths(root, 1)
    many = part_b_paths(root, sizes.lite_images)
    log(f"inference: starting workers (csrnet and lite, {size[0]}×{size[1]})")
    sides = {
        "matmul": Remote("matmul", n=sizes.matmul),
        "csrnet plain": Remote("plain-inference", model="csrnet", paths=one, size=size),
        "csrnet crowdtk": Remote("crowdtk-inference", model="csrnet", paths=one, size=size),
        "lite plain": Remote("plain-inference", model="lite", paths=many, size=size),
        "lite crowdtk": Remote("crowdtk-inference", model="lite", paths=many, size=size),
        "lite crowdtk batch 1": Remote("crowdtk-inference", model="lite", paths=many, size=size, batch_size=1),
        "lite crowdtk unfused": Remote("crowdtk-inference", model="lite", paths=many, size=size, fast=False),
        "lite-nd crowdtk": Remote("crowdtk-inference", model="lite", paths=many, size=size, options={"dilated": False}),
    }
    try:
        result = race(sides, sizes.infer_rounds)
    finally:
        for side in sides.values():
            side.close()
    n = len(many)
    t = {k: result.best(k) for k in sides}
    rate = alongside_rate(report, result, sizes, "inference")
    csr_floor = floor_seconds(report, "csrnet", *size, sizes, rate)
    report.rows.append(Row("inference", f"csrnet {size[0]}×{size[1]} batch 1, NCHW, no_grad", t["csrnet plain"], t["csrnet crowdtk"],
                           t["csrnet plain"] / t["csrnet crowdtk"], t["csrnet crowdtk"] / csr_floor, result.peaks["csrnet crowdtk"],
                           "Predictor"))
    lite_floor = floor_seconds(report, "lite", *size, sizes, rate)
    per = {k: t[k] / n for k in t}
    report.rows.append(Row("inference", f"lite, {n} real images end to end, NCHW, no_grad, batch 1", per["lite plain"], per["lite crowdtk"],
                           per["lite plain"] / per["lite crowdtk"], per["lite crowdtk"] / lite_floor, result.peaks["lite crowdtk"],
                           "per image, Predictor"))
    report.rows.append(Row("inference", "lite per image: Predictor, plain counter (no folding), batch 1", per["lite crowdtk unfused"],
                           per["lite crowdtk"], per["lite crowdtk unfused"] / per["lite crowdtk"], None, result.peaks["lite crowdtk unfused"],
                           "Predictor, default"))
    report.rows.append(Row("inference", "lite per image: Predictor batch 1", per["lite crowdtk batch 1"], per["lite crowdtk"],
                           per["lite crowdtk batch 1"] / per["lite crowdtk"], None, result.peaks["lite crowdtk batch 1"],
                           f"batch {min(n, 4)}"))
    report.rows.append(Row("inference", "csrnet per image (Predictor)", t["csrnet crowdtk"], per["lite crowdtk"],
                           t["csrnet crowdtk"] / per["lite crowdtk"], None, None, "lite, Predictor default, per image"))
    nd_floor = floor_seconds(report, "lite dilated=False", *size, sizes, rate)
    report.rows.append(Row("inference", "csrnet per image (Predictor)", t["csrnet crowdtk"], per["lite-nd crowdtk"],
                           t["csrnet crowdtk"] / per["lite-nd crowdtk"], per["lite-nd crowdtk"] / nd_floor, result.peaks["lite-nd crowdtk"],
                           "lite dilated=False, Predictor default, per image"))
    # Same results: crowdtk's counts vs the plain path's (same weights).
    for model in ("csrnet", "lite"):
        a = np.array(result.outputs[f"{model} plain"])
        b = np.array(result.outputs[f"{model} crowdtk"])
        rel = float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-6)))
        report.check(f"{model}: Predictor counts = plain counts (relative difference < 1e-4)", f"{rel:.1e}", rel < 1e-4)
    report.check("csrnet forward within 1.2× of its FLOP floor", f"{t['csrnet crowdtk'] / csr_floor:.2f}×", t["csrnet crowdtk"] / csr_floor <= 1.2)
    speed = t["csrnet crowdtk"] / per["lite crowdtk"]
    report.check("lite (Predictor default) ≥ 15× faster per image than csrnet", f"{speed:.1f}×", speed >= 15)
    speed_nd = t["csrnet crowdtk"] / per["lite-nd crowdtk"]
    report.check("lite dilated=False (Predictor default) ≥ 15× faster per image than csrnet", f"{speed_nd:.1f}×", speed_nd >= 15)
    report.facts["inference_times"] = t

    # Tiling: peak RSS of one big image, each run in a fresh process.
    big = sizes.big
    log(f"inference: {big[1]}×{big[0]} image, lite, --max-side {sizes.max_side} vs whole (fresh processes)")
    tiled = run_tile_child("lite", one[0], big, sizes.max_side, True)
    whole = run_tile_child("lite", one[0], big, 1 << 16, False)
    report.rows.append(Row("inference", f"lite {big[1]}×{big[0]} whole image, plain counter", whole["seconds"], tiled["seconds"],
                           whole["seconds"] / tiled["seconds"], None, tiled["peak_mb"],
                           f"--max-side {sizes.max_side}; whole: {fmt_mb(whole['peak_mb'])}"))
    report.check(f"{big[1]}×{big[0]} image with --max-side {sizes.max_side}: peak RSS < 4 GB (lite)", fmt_mb(tiled["peak_mb"]),
                 tiled["peak_mb"] < 4096)
    rel = abs(tiled["count"] - whole["count"]) / max(abs(whole["count"]), 1e-6)
    report.notes.append(f"tiled vs whole count of the {big[1]}×{big[0]} image: {tiled['count']:.2f} vs {whole['count']:.2f} "
                        f"(relative {rel:.1e}; tiles see {64} px of context)")


# --------------------------------------------------------------------------- stage 3: training


def _labels_records(root: Path, n: int) -> list[dict[str, Any]]:
    from crowdtk.data import read_points_on_image

    manifest = manifest_of(root)
    out = []
    for e in manifest.entries[:n]:
        points, _ = read_points_on_image(e.points, e.width, e.height)
        out.append({"id": e.id, "image": e.image, "sha256": e.sha256, "width": e.width, "height": e.height,
                    "points": points.tolist(), "entry": e})
    return out


def stage_training(report: Report, sizes: Sizes, root: Path) -> None:
    from crowdtk.density import DensityConfig, generate_densities
    from crowdtk.formats import Provenance

    n_images = sizes.train_steps + 1
    records = _labels_records(root, n_images)
    tmp = Path(tempfile.mkdtemp(prefix="crowdtk-bench-train-"))
    try:
        generate_densities([r["entry"] for r in records], tmp, DensityConfig(stride=1), Provenance("bench"), workers=2)
        densities = [str(tmp / "maps" / f"{r['id']}.npz") for r in records]
        paths = [r["image"] for r in records]
        labels = [{k: v for k, v in r.items() if k != "entry"} for r in records]
        for model in sizes.train_models:
            log(f"training: {model}, crop {sizes.crop}, {sizes.train_steps} steps per side")
            sides = {
                "matmul": Remote("matmul", n=sizes.matmul),
                "plain": Remote("plain-training", model=model, paths=paths, densities=densities, crop=sizes.crop),
                "crowdtk": Remote("crowdtk-training", model=model, labels=labels, crop=sizes.crop),
                "crowdtk-bare": Remote("crowdtk-training", model=model, labels=labels, crop=sizes.crop, cpu_settings=False),
            }
            try:
                result = race(sides, sizes.train_steps)
            finally:
                for side in sides.values():
                    side.close()
            ref, ours, bare = result.best("plain"), result.best("crowdtk"), result.best("crowdtk-bare")
            floor3 = 3 * floor_seconds(report, model, sizes.crop, sizes.crop, sizes, alongside_rate(report, result, sizes, f"training {model}"))
            out = result.outputs["crowdtk"]
            load = float(np.median([out["load"]]))  # last step's; the per-step cost is steady
            share_steady = load / ours
            share_first = (load + out["prepare_per_image"]) / (ours + out["prepare_per_image"])
            report.rows.append(Row("training", f"{model} crop {sizes.crop}, plain CSRNet-style loop, per step", ref, ours, ref / ours,
                                   ours / floor3, result.peaks["crowdtk"], "TrainNet step"))
            report.rows.append(Row("training", f"{model} crop {sizes.crop}, crowdtk step without its CPU settings", bare, ours, bare / ours,
                                   ours / floor3, result.peaks["crowdtk"], "TrainNet step + speed_up_cpu_training"))
            report.check(f"training {model}: crowdtk step ≥ 1.5× faster than the plain loop", f"{ref / ours:.2f}×", ref / ours >= 1.5)
            report.check(f"training {model}: step within 2× of 3× the forward floor", f"{ours / floor3:.2f}×", ours / floor3 <= 2)
            report.check(f"training {model}: data loading + augmentation < 10% of the step (steady; first epoch incl. prepare_sample)",
                         f"{100 * share_steady:.1f}%; {100 * share_first:.1f}%", share_first < 0.10)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- stage 4: select


def synthetic_pool(n: int, seed: int = 0) -> tuple[list[Any], Any]:
    """``n`` 1024×768 manifest entries and their strip vectors (10 strips × 10 numbers), perspective
    scenes with groups (vectorised version of tests/conftest.py's realistic_vectors)."""
    from crowdtk.formats import ManifestEntry, StripVectors
    from crowdtk.geometry import strip_edges

    rng = np.random.default_rng(seed)
    rows = np.linspace(0.2, 1.0, 96)
    density = (rows**2)[None, :, None] * rng.uniform(0.1, 0.5, (n, 1, 1)) * np.ones((n, 96, 10))
    for _ in range(3):
        present = rng.random(n) < 0.7
        x = rng.integers(0, 10, n)
        w = rng.integers(1, 4, n)
        y = rng.integers(0, 80, n)
        h = rng.integers(8, 30, n)
        amp = rng.uniform(0.5, 3.0, n) * present
        cols = np.arange(10)[None, :]
        rws = np.arange(96)[None, :]
        in_x = (cols >= x[:, None]) & (cols < (x + w)[:, None])
        in_y = (rws >= y[:, None]) & (rws < (y + h)[:, None])
        density += amp[:, None, None] * in_y[:, :, None] * in_x[:, None, :]
    density *= rng.uniform(0.5, 1.5, (n, 1, 10))
    col_rows = density.transpose(0, 2, 1)  # (n, strips, rows)
    parts = []
    for k in range(1, 5):
        parts += [band.sum(-1) * k / 4 for band in np.array_split(col_rows, k, axis=2)]
    vectors = np.stack(parts, axis=-1)  # (n, 10, 10)
    entries = [ManifestEntry(f"img{i}", f"/nowhere/img{i}.jpg", None, 1024, 768, 10, f"{i:064x}") for i in range(n)]
    edges = strip_edges(1024, 0.1)
    data = StripVectors(
        ids=np.array([e.id for e in entries]),
        sha256=np.array([e.sha256 for e in entries]),
        strip_image=np.repeat(np.arange(n), 10).astype(np.int64),
        strip_x0=np.tile(edges[:-1], n).astype(np.int64),
        strip_x1=np.tile(edges[1:], n).astype(np.int64),
        vectors=vectors.reshape(n * 10, 10).astype(np.float32),
        counts=(vectors[:, :, 0] * 4).reshape(-1).astype(np.float32),  # level 1 is the count × 1/4
    )
    return entries, data


def subset_vectors(data: Any, n: int) -> Any:
    from crowdtk.formats import StripVectors

    keep = data.strip_image < n
    return StripVectors(data.ids[:n], data.sha256[:n], data.strip_image[keep], data.strip_x0[keep], data.strip_x1[keep],
                        data.vectors[keep], data.counts[keep])


def picks_of(selection: Any) -> dict[str, list[int]]:
    return {e.id: [c for d in e.details for c in d["cells"]] for e in selection.entries}


def stage_select(report: Report, sizes: Sizes, root: Path) -> None:
    from crowdtk.selection import SelectConfig, select_regions

    n, m = sizes.select_images, sizes.select_sample
    entries, data = synthetic_pool(n)
    config = SelectConfig(budget=sizes.select_budget, strategy="mdc")
    k = round(sizes.select_budget * 10)
    log(f"select: mdc over {n} images ({k} of 10 strips each), scikit-learn on {m}")
    small_entries, small_data = entries[:m], subset_vectors(data, m)
    times: dict[str, list[float]] = {"sklearn": [], "numpy": [], "numpy workers=2": []}
    peaks: dict[str, float] = {}
    picks: dict[str, dict[str, list[int]]] = {}
    runs = [("sklearn", small_entries, small_data, SelectConfig(budget=config.budget, strategy="mdc", engine="sklearn")),
            ("numpy", entries, data, config),
            ("numpy workers=2", entries, data, SelectConfig(budget=config.budget, strategy="mdc", workers=2))]
    for name, ents, vecs, cfg in runs:
        reset_peak()
        start = time.perf_counter()
        selection = select_regions(ents, cfg, vecs)
        times[name].append(time.perf_counter() - start)
        peaks[name] = peak_mb()
        picks[name] = picks_of(selection)
    ref = times["sklearn"][0] * n / m
    ours = times["numpy"][0]
    ours2 = times["numpy workers=2"][0]
    report.rows.append(Row("select", f"scikit-learn GaussianMixture per image ({m} timed: {times['sklearn'][0]:.1f} s, ×{n // m})",
                           ref, ours, ref / ours, None, peaks["numpy"], f"select mdc, {n} images"))
    report.rows.append(Row("select", f"select mdc, {n} images, workers=1", ours, ours2, ours / ours2, None, peaks["numpy workers=2"],
                           "workers=2"))
    same = all(picks["numpy"][i] == picks["sklearn"][i] for i in picks["sklearn"]) and len(picks["sklearn"]) == m
    differ = sum(picks["numpy"][i] != picks["sklearn"][i] for i in picks["sklearn"])
    report.check(f"select mdc over {n} images within 60 s", f"{min(ours, ours2):.1f} s (workers=1: {ours:.1f} s)", min(ours, ours2) <= 60)
    report.check(f"select: identical picks to scikit-learn on the common {m} images", f"{m - differ}/{m} identical", same)
    same_workers = picks["numpy"] == picks["numpy workers=2"]
    report.check("select: workers=2 picks = workers=1 picks", "identical" if same_workers else "differ", same_workers)


# --------------------------------------------------------------------------- stage 5: gen-density


def _gen_density_module() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_gen_density", REPO / "bench" / "gen_density.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def stage_gen_density(report: Report, sizes: Sizes, root: Path) -> None:
    from dataclasses import replace

    from crowdtk.data import read_points_on_image
    from crowdtk.density import DensityConfig, generate_densities
    from crowdtk.formats import Provenance

    gd = _gen_density_module()
    manifest = manifest_of(root)
    images = []
    for entry in manifest.entries[: sizes.gd_images]:
        points, _ = read_points_on_image(entry.points, entry.width, entry.height)
        images.append((entry.id, points, entry.height, entry.width))
    heads = sum(len(p) for _, p, _, _ in images)
    fixed = DensityConfig(sigma=4.0, adaptive=False, stride=1)
    for config in (fixed, replace(fixed, adaptive=True)):
        kind = "adaptive" if config.adaptive else "fixed"
        reset_peak()
        textbook, ours, diff, _ = gd.run_kernel(images, config)
        ratio = textbook.seconds / ours.seconds
        report.rows.append(Row("gen-density", f"textbook per-head gaussian_filter, {kind}, {len(images)} images ({heads} heads), per image",
                               textbook.seconds / len(images), ours.seconds / len(images), ratio, None, peak_mb(),
                               f"density_map, max |diff| {diff:.1e}"))
        report.check(f"gen-density {kind}: ≥ 100× faster than the textbook filter", f"{ratio:.0f}×", ratio >= 100)
        report.check(f"gen-density {kind}: max |diff| < 1e-6", f"{diff:.1e}", diff < 1e-6)
    entries = manifest.entries[: sizes.gd_worker_images]
    t = {1: [], 2: []}
    for workers in (1, 2, 2, 1):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            generate_densities(entries, tmp, DensityConfig(), Provenance("bench"), workers=workers)
            t[workers].append(time.perf_counter() - start)
    report.rows.append(Row("gen-density", f"generate_densities --workers 1, {len(entries)} images (stride 8, with I/O)", min(t[1]), min(t[2]),
                           min(t[1]) / min(t[2]), None, None, "--workers 2"))
    report.facts["gen_density_workers"] = {"1": t[1], "2": t[2]}


# --------------------------------------------------------------------------- stage 6: scaling


def _link_subset(root: Path, n: int, dest: Path) -> Path:
    """A ShanghaiTech-layout folder of symbolic links to the first ``n`` images and their ground truth."""
    from crowdtk.index import _images_in

    (dest / "images").mkdir(parents=True)
    (dest / "ground-truth").mkdir()
    for image in _images_in(root / "images")[:n]:
        (dest / "images" / image.name).symlink_to(image)
        gt = root / "ground-truth" / f"GT_{image.stem}.mat"
        (dest / "ground-truth" / gt.name).symlink_to(gt)
    return dest


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _pair(report: Report, what: str, n: int, run: Callable[[int], Any], repeats: int = 2) -> None:
    """time(2n) / time(n), alternating n, 2n, 2n, n …, best of ``repeats``."""
    t: dict[int, list[float]] = {n: [], 2 * n: []}
    for r in range(repeats):
        for size in (n, 2 * n) if r % 2 == 0 else (2 * n, n):
            t[size].append(_timed(lambda: run(size)))
    a, b = min(t[n]), min(t[2 * n])
    report.rows.append(Row("scaling", f"{what}, N = {n}", a, b, b / a, None, None, f"2N = {2 * n}"))
    report.check(f"scaling {what}: time(2N) / time(N) ≈ 2 (1.6–2.4)", f"{b / a:.2f}", 1.6 <= b / a <= 2.4)


def epoch_timer_child(args: list[str]) -> None:
    """(Under torchrun or alone) run crowdtk.train.train and write per-epoch wall times (rank 0)."""
    from crowdtk.formats import Provenance
    from crowdtk.train import train
    from crowdtk.train_config import TrainConfig

    labels, out, crop, epochs, batch, report_path = args[0], args[1], int(args[2]), int(args[3]), int(args[4]), args[5]
    prepared_at: list[float] = []  # when the last sample was prepared: the first epoch starts
    epoch_ends: list[float] = []
    config = TrainConfig(model="lite", crop=crop, epochs=epochs, batch_size=batch, cap=True, val_frac=0.0)
    train(labels, out, config, Provenance("bench"), device="cpu", prepared=lambda _n: prepared_at.append(time.perf_counter()),
          on_epoch=lambda _r: epoch_ends.append(time.perf_counter()))
    if int(os.environ.get("RANK", 0)) == 0:
        Path(report_path).write_text(json.dumps(np.diff([prepared_at[-1], *epoch_ends]).tolist()))


def _train_epochs(labels: Path, tmp: Path, procs: int, crop: int, epochs: int, global_batch: int) -> list[float]:
    report_path = tmp / f"epochs{procs}.json"
    child = [str(Path(__file__).resolve()), "--epoch-timer", json.dumps([str(labels), str(tmp / f"m{procs}.safetensors"), str(crop),
                                                                       str(epochs), str(global_batch // procs), str(report_path)])]
    if procs == 1:
        cmd = [PY, *child]
    else:
        cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs), *child]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"training ({procs} process(es)) failed:\n{proc.stderr[-3000:]}")
    return json.loads(report_path.read_text())


def _crowdtk(*args: Any) -> None:
    proc = subprocess.run([PY, "-m", "crowdtk", *[str(a) for a in args]], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"crowdtk {args[0]} failed: {proc.stderr[-2000:]}")


def stage_scaling(report: Report, sizes: Sizes, root: Path) -> None:
    from crowdtk.density import DensityConfig, generate_densities
    from crowdtk.formats import Provenance
    from crowdtk.index import build_manifest
    from crowdtk.predict import LoadedModel, Predictor
    from crowdtk.selection import SelectConfig, select_regions
    from crowdtk.vectors import compute_vectors

    n = sizes.scale_n
    tmp = Path(tempfile.mkdtemp(prefix="crowdtk-bench-scale-"))
    try:
        dirs = {k: _link_subset(root, k, tmp / f"pool{k}") for k in (n, 2 * n)}
        log(f"scaling: index and gen-density at {n} and {2 * n} images")
        _pair(report, "index (build_manifest, workers 2)", n, lambda k: build_manifest(dirs[k], workers=2))
        manifests = {k: build_manifest(dirs[k], workers=2).entries for k in (n, 2 * n)}

        def gen(k: int) -> None:
            with tempfile.TemporaryDirectory() as out:
                generate_densities(manifests[k], out, DensityConfig(), Provenance("bench"), workers=1)

        _pair(report, "gen-density (workers 1)", n, gen)

        v = sizes.scale_vec_n
        log(f"scaling: vectors (lite) at {v} and {2 * v} images")
        predictor = Predictor(LoadedModel(make_counter("lite"), {}, ""), device="cpu")
        vec_entries = build_manifest(_link_subset(root, 2 * v, tmp / "vec"), workers=2).entries
        if sizes is QUICK:
            vec_entries = [_shrunk(e, tmp, sizes) for e in vec_entries]
        compute_vectors(predictor, vec_entries[:1])  # warm-up
        _pair(report, "vectors (lite, Predictor)", v, lambda k: compute_vectors(predictor, vec_entries[:k]), repeats=1)

        s = sizes.scale_select_n
        entries, data = synthetic_pool(2 * s)
        subsets = {s: (entries[:s], subset_vectors(data, s)), 2 * s: (entries, data)}
        config = SelectConfig(budget=sizes.select_budget, strategy="mdc")
        log(f"scaling: select mdc at {s} and {2 * s} images")
        _pair(report, "select mdc", s, lambda k: select_regions(subsets[k][0], config, subsets[k][1]))

        # torchrun: 2 processes vs 1 per epoch, same global batch (2), on a tiny labeled pool.
        log("scaling: torchrun 2 processes vs 1 (crowdtk train, lite, CAP)")
        h, w = sizes.synth_size
        _crowdtk("synth", "-o", tmp / "synth", "--train", sizes.synth_train, "--test", 1, "--width", w, "--height", h, "-q")
        manifest = tmp / "synth" / "train" / "manifest.jsonl"
        _crowdtk("select", manifest, "--budget", 0.3, "--strategy", "random", "-o", tmp / "regions.jsonl", "-q")
        _crowdtk("import", tmp / "regions.jsonl", "--oracle", manifest, "-o", tmp / "labels.jsonl", "-q")
        epochs = sizes.torchrun_epochs
        one = _train_epochs(tmp / "labels.jsonl", tmp, 1, sizes.torchrun_crop, epochs, 2)
        two = _train_epochs(tmp / "labels.jsonl", tmp, 2, sizes.torchrun_crop, epochs, 2)
        t1, t2 = float(np.median(one)), float(np.median(two))
        report.rows.append(Row("scaling", f"crowdtk train lite+CAP, {sizes.synth_train} images {w}×{h}, crop {sizes.torchrun_crop}, "
                               "global batch 2, 1 process, per epoch", t1, t2, t1 / t2, None, None, "torchrun 2 processes"))
        report.check("torchrun 2 processes faster per epoch than 1 (ratio > 1)", f"{t1 / t2:.2f}×", t1 / t2 > 1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _shrunk(entry: Any, tmp: Path, sizes: Sizes) -> Any:
    """(quick) a small copy of an image so the lite forward takes milliseconds."""
    import cv2
    from dataclasses import replace

    from crowdtk.files import file_digest

    image = cv2.imread(entry.image)
    small = cv2.resize(image, (sizes.width, sizes.height), interpolation=cv2.INTER_AREA)
    path = tmp / f"small_{entry.id}.png"
    cv2.imwrite(str(path), small)
    return replace(entry, image=str(path), width=sizes.width, height=sizes.height, sha256=file_digest(path))


# --------------------------------------------------------------------------- main


RUNNERS: dict[str, Callable[[Report, Sizes, Path], None]] = {
    "floor": stage_floor, "inference": stage_inference, "training": stage_training,
    "select": stage_select, "gen-density": stage_gen_density, "scaling": stage_scaling,
}


def load_line() -> str:
    try:
        one, five, fifteen = os.getloadavg()
        return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} CPUs"
    except OSError:
        return "load average unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run (seconds; the numbers mean nothing)")
    parser.add_argument("--only", default=",".join(STAGES), help=f"comma-separated stages [default: all: {','.join(STAGES)}]")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows, checks and facts as JSON to this file")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help=f"ShanghaiTech Part B train split [default: {DEFAULT_ROOT}]")
    parser.add_argument("--tile-child", help=argparse.SUPPRESS)
    parser.add_argument("--epoch-timer", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tile_child:
        model, path, big, max_side, fast = json.loads(args.tile_child)
        tile_child(model, path, tuple(big), max_side, fast)
        return 0
    if args.epoch_timer:
        epoch_timer_child(json.loads(args.epoch_timer))
        return 0

    stages = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    if ("inference" in stages or "training" in stages) and "floor" not in stages:
        stages.insert(0, "floor")  # their floor multiples need it
    stages = [s for s in STAGES if s in stages]
    root = args.root.resolve()
    if not (root / "images").is_dir():
        print(f"bench/run.py: error: ShanghaiTech Part B train split not found at {root} (pass --root)", file=sys.stderr)
        return 1
    sizes = QUICK if args.quick else Sizes()

    import torch

    report = Report()
    report.facts.update(quick=args.quick, stages=stages, python=platform.python_version(), torch=torch.__version__,
                        threads=torch.get_num_threads(), cpus=os.cpu_count(), load_before=load_line())
    log(f"bench/run.py: stages {', '.join(stages)}{' (quick)' if args.quick else ''}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {load_line()}")
    started = time.perf_counter()
    for stage in stages:
        log(f"== {stage}")
        stage_start = time.perf_counter()
        try:
            RUNNERS[stage](report, sizes, root)
        except Exception as exc:  # noqa: BLE001 - one broken stage must not lose the others' numbers
            report.notes.append(f"stage {stage} failed: {type(exc).__name__}: {str(exc)[-1500:]}")
            report.check(f"stage {stage} ran", "failed", False)
            traceback.print_exc()
        report.facts[f"seconds:{stage}"] = time.perf_counter() - stage_start
    total = time.perf_counter() - started
    report.facts.update(total_seconds=total, load_after=load_line())

    print(markdown(report))
    print()
    print("ratio = reference time / crowdtk time (scaling rows: time(2N) / time(N)); floor multiple = crowdtk time / "
          "(forward FLOPs / matmul rate), training: / (3 × forward floor); times are the best of alternating repeats.")
    print()
    for c in report.checks:
        print(f"{'PASS' if c.ok else 'FAIL'}  {c.what}: {c.value}")
    for note in report.notes:
        print(f"note: {note}")
    print(f"\n{total:.0f} s in all; before: {report.facts['load_before']}; after: {report.facts['load_after']}")
    if args.json:
        payload = {"rows": [r.__dict__ for r in report.rows], "checks": [c.__dict__ for c in report.checks],
                   "notes": report.notes, "facts": report.facts}
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
