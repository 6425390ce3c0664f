"""Command line (from the repository root): .venv/bin/python -m benchmarks.inference [--quick] [--only STAGE,...]
[--size HxW] [--json OUT]

The ``inference`` stage of crowdtk's performance table (python -m benchmarks), after the ``floor``
stage its floor multiples need.

CSRNet forward at 768×1024 (batch 1), plain (NCHW, torch.no_grad, default threads) vs
crowdtk's Predictor; the lite counter through the Predictor (its default batching) vs CSRNet
per image; lite end to end on real images, plain vs Predictor; peak RSS of a 4000×3000 image,
tiled (--max-side 2048) vs whole, each in a fresh process.

The ``onnx`` stage (``--only onnx``): per image, ``count --backend onnxruntime``'s path (the counter
exported by ``export-model``, run by ONNX Runtime's CPU provider) vs the torch path (the Predictor's
inference copy), for lite and csrnet, both on 2 threads, batch 1, in one run; the exports are timed too.
``--size`` sets the image size of every stage here (default 768x1024, --quick 192x256).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.floor import Matmul, alongside_rate, floor_seconds, stage_floor
from benchmarks.harness import (
    PY,
    Remote,
    Report,
    Row,
    Sizes,
    Stage,
    fmt_mb,
    log,
    make_counter,
    maxrss_mb,
    parser,
    part_b_paths,
    race,
    read_rgb,
    run,
    run_child,
    timed,
)


class PlainInference:
    """The plain reference: decode, NCHW float tensor, torch.no_grad(), model(x), one image at a time."""

    def __init__(
        self, model: str, paths: list[str], size: tuple[int, int], options: dict[str, Any] | None = None
    ) -> None:
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

    def __init__(
        self,
        model: str,
        paths: list[str],
        size: tuple[int, int],
        options: dict[str, Any] | None = None,
        fast: bool = True,
        batch_size: int | None = None,
    ) -> None:
        from crowdtk.predict import LoadedModel, Predictor

        self.predictor = Predictor(
            LoadedModel(make_counter(model, options), {}, ""),
            device="cpu",
            max_side=1 << 16,
            fast=fast,
            batch_size=batch_size,
        )
        self.paths, self.size = paths, size

    def run(self) -> list[float]:
        from crowdtk.predict import prefetched

        images = (image for _, image in prefetched(self.paths, read=lambda p: read_rgb(p, self.size)))
        return [float(d.sum(dtype=np.float64)) for d, _, _ in self.predictor.densities(images)]


def tile_child(model: str, path: str, big: tuple[int, int], max_side: int, fast: bool) -> None:
    """(Fresh process) predict one big image; print seconds, count and peak RSS as JSON."""
    import resource

    from crowdtk.predict import LoadedModel, Predictor

    image = read_rgb(path, big)
    predictor = Predictor(LoadedModel(make_counter(model), {}, ""), device="cpu", max_side=max_side, fast=fast)
    seconds, (density, _, _) = timed(predictor.density, image)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "count": float(density.sum(dtype=np.float64)),
                "peak_mb": maxrss_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
            }
        )
    )


def run_tile_child(model: str, path: str, big: tuple[int, int], max_side: int, fast: bool) -> dict[str, Any]:
    child = run_child(
        [PY, "-m", "benchmarks.inference", "--tile-child", json.dumps([model, path, list(big), max_side, fast])]
    )
    if child.returncode != 0:
        raise RuntimeError(f"tile child failed: {child.stderr[-2000:]}")
    result = json.loads(child.stdout.strip().splitlines()[-1])
    result["peak_mb"] = child.peak_mb  # this child's own peak (wait4), = RUSAGE_SELF in it
    return result


def stage_inference(report: Report, sizes: Sizes, root: Path) -> None:
    size = (sizes.height, sizes.width)
    one = part_b_paths(root, 1)
    many = part_b_paths(root, sizes.lite_images)
    log(f"inference: starting workers (csrnet and lite, {size[0]}×{size[1]})")
    result = race(
        {
            "matmul": Remote(Matmul, n=sizes.matmul),
            "csrnet plain": Remote(PlainInference, model="csrnet", paths=one, size=size),
            "csrnet crowdtk": Remote(CrowdtkInference, model="csrnet", paths=one, size=size),
            "lite plain": Remote(PlainInference, model="lite", paths=many, size=size),
            "lite crowdtk": Remote(CrowdtkInference, model="lite", paths=many, size=size),
            "lite crowdtk batch 1": Remote(CrowdtkInference, model="lite", paths=many, size=size, batch_size=1),
            "lite crowdtk unfused": Remote(CrowdtkInference, model="lite", paths=many, size=size, fast=False),
            "lite-nd crowdtk": Remote(
                CrowdtkInference, model="lite", paths=many, size=size, options={"dilated": False}
            ),
        },
        sizes.infer_rounds,
    )
    n = len(many)
    t = {k: result.best(k) for k in result.times}
    rate = alongside_rate(report, result, sizes, "inference")
    csr_floor = floor_seconds(report, "csrnet", *size, sizes, rate)
    report.rows.append(
        Row(
            "inference",
            f"csrnet {size[0]}×{size[1]} batch 1, NCHW, no_grad",
            t["csrnet plain"],
            t["csrnet crowdtk"],
            t["csrnet plain"] / t["csrnet crowdtk"],
            t["csrnet crowdtk"] / csr_floor,
            result.peaks["csrnet crowdtk"],
            "Predictor",
        )
    )
    lite_floor = floor_seconds(report, "lite", *size, sizes, rate)
    per = {k: t[k] / n for k in t}
    report.rows.append(
        Row(
            "inference",
            f"lite, {n} real images end to end, NCHW, no_grad, batch 1",
            per["lite plain"],
            per["lite crowdtk"],
            per["lite plain"] / per["lite crowdtk"],
            per["lite crowdtk"] / lite_floor,
            result.peaks["lite crowdtk"],
            "per image, Predictor",
        )
    )
    report.rows.append(
        Row(
            "inference",
            "lite per image: Predictor, plain counter (no folding), batch 1",
            per["lite crowdtk unfused"],
            per["lite crowdtk"],
            per["lite crowdtk unfused"] / per["lite crowdtk"],
            None,
            result.peaks["lite crowdtk unfused"],
            "Predictor, default",
        )
    )
    report.rows.append(
        Row(
            "inference",
            "lite per image: Predictor batch 1",
            per["lite crowdtk batch 1"],
            per["lite crowdtk"],
            per["lite crowdtk batch 1"] / per["lite crowdtk"],
            None,
            result.peaks["lite crowdtk batch 1"],
            f"batch {min(n, 4)}",
        )
    )
    report.rows.append(
        Row(
            "inference",
            "csrnet per image (Predictor)",
            t["csrnet crowdtk"],
            per["lite crowdtk"],
            t["csrnet crowdtk"] / per["lite crowdtk"],
            None,
            None,
            "lite, Predictor default, per image",
        )
    )
    nd_floor = floor_seconds(report, "lite dilated=False", *size, sizes, rate)
    report.rows.append(
        Row(
            "inference",
            "csrnet per image (Predictor)",
            t["csrnet crowdtk"],
            per["lite-nd crowdtk"],
            t["csrnet crowdtk"] / per["lite-nd crowdtk"],
            per["lite-nd crowdtk"] / nd_floor,
            result.peaks["lite-nd crowdtk"],
            "lite dilated=False, Predictor default, per image",
        )
    )
    # Same results: crowdtk's counts vs the plain path's (same weights).
    for model in ("csrnet", "lite"):
        a = np.array(result.outputs[f"{model} plain"])
        b = np.array(result.outputs[f"{model} crowdtk"])
        rel = float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-6)))
        report.check(f"{model}: Predictor counts = plain counts (relative difference < 1e-4)", f"{rel:.1e}", rel < 1e-4)
    report.check(
        "csrnet forward within 1.2× of its FLOP floor",
        f"{t['csrnet crowdtk'] / csr_floor:.2f}×",
        t["csrnet crowdtk"] / csr_floor <= 1.2,
    )
    speed = t["csrnet crowdtk"] / per["lite crowdtk"]
    report.check("lite (Predictor default) ≥ 15× faster per image than csrnet", f"{speed:.1f}×", speed >= 15)
    speed_nd = t["csrnet crowdtk"] / per["lite-nd crowdtk"]
    report.check(
        "lite dilated=False (Predictor default) ≥ 15× faster per image than csrnet", f"{speed_nd:.1f}×", speed_nd >= 15
    )
    report.facts["inference_times"] = t

    # Tiling: peak RSS of one big image, each run in a fresh process.
    big = sizes.big
    log(f"inference: {big[1]}×{big[0]} image, lite, --max-side {sizes.max_side} vs whole (fresh processes)")
    tiled = run_tile_child("lite", one[0], big, sizes.max_side, True)
    whole = run_tile_child("lite", one[0], big, 1 << 16, False)
    report.rows.append(
        Row(
            "inference",
            f"lite {big[1]}×{big[0]} whole image, plain counter",
            whole["seconds"],
            tiled["seconds"],
            whole["seconds"] / tiled["seconds"],
            None,
            tiled["peak_mb"],
            f"--max-side {sizes.max_side}; whole: {fmt_mb(whole['peak_mb'])}",
        )
    )
    report.check(
        f"{big[1]}×{big[0]} image with --max-side {sizes.max_side}: peak RSS < 4 GB (lite)",
        fmt_mb(tiled["peak_mb"]),
        tiled["peak_mb"] < 4096,
    )
    rel = abs(tiled["count"] - whole["count"]) / max(abs(whole["count"]), 1e-6)
    report.notes.append(
        f"tiled vs whole count of the {big[1]}×{big[0]} image: {tiled['count']:.2f} vs {whole['count']:.2f} "
        f"(relative {rel:.1e}; tiles see {64} px of context)"
    )


class BackendInference:
    """count's path on one backend, batch 1, on ``threads`` threads: the Predictor running the torch counter's
    inference copy (``onnx=None``) or the exported ONNX model in ONNX Runtime, fed by ``prefetched``."""

    def __init__(
        self, model: str, paths: list[str], size: tuple[int, int], onnx: str | None = None, threads: int = 2
    ) -> None:
        import torch

        from crowdtk.onnx_export import load_onnx_counter
        from crowdtk.predict import LoadedModel, Predictor

        torch.set_num_threads(threads)
        loaded = load_onnx_counter(onnx, threads) if onnx else LoadedModel(make_counter(model), {}, "")
        self.predictor = Predictor(loaded, device="cpu", max_side=1 << 16, batch_size=1)
        self.paths, self.size = paths, size

    def run(self) -> list[float]:
        from crowdtk.predict import prefetched

        images = (image for _, image in prefetched(self.paths, read=lambda p: read_rgb(p, self.size)))
        return [float(d.sum(dtype=np.float64)) for d, _, _ in self.predictor.densities(images)]


def export_for_bench(model: str, folder: str) -> tuple[str, float]:
    """The bench's counter (make_counter's weights) exported as export-model writes it: (path, seconds)."""
    from crowdtk.formats import Provenance, onnx_counter_header
    from crowdtk.onnx_export import write_onnx

    counter = make_counter(model)
    header = onnx_counter_header(
        Provenance("benchmarks/inference.py"),
        {"model": {"name": counter.name, "config": counter.config}, "density_scale": 1.0, "scale": 1.0},
        "0" * 64,
        [],
    )
    path = str(Path(folder) / f"{model}.onnx")
    seconds, _ = timed(write_onnx, counter, header, path)
    return path, seconds


def stage_onnx(report: Report, sizes: Sizes, root: Path) -> None:
    size = (sizes.height, sizes.width)
    many = part_b_paths(root, sizes.lite_images)
    one = many[:1]
    with tempfile.TemporaryDirectory(prefix="crowdtk-onnx-bench-") as folder:
        exported = {}
        for model in ("lite", "csrnet"):
            log(f"onnx: exporting {model} (torch's exporter: minutes on 2 busy cores)")
            exported[model], seconds = export_for_bench(model, folder)
            report.notes.append(f"export-model of {model}: {seconds:.0f} s")
        log(f"onnx: racing onnxruntime and torch, lite and csrnet, {size[0]}×{size[1]}, 2 threads")
        result = race(
            {
                "lite torch": Remote(BackendInference, model="lite", paths=many, size=size),
                "lite onnxruntime": Remote(
                    BackendInference, model="lite", paths=many, size=size, onnx=exported["lite"]
                ),
                "csrnet torch": Remote(BackendInference, model="csrnet", paths=one, size=size),
                "csrnet onnxruntime": Remote(
                    BackendInference, model="csrnet", paths=one, size=size, onnx=exported["csrnet"]
                ),
            },
            max(2, sizes.infer_rounds),
        )
    for model, n in (("lite", len(many)), ("csrnet", len(one))):
        ref, ours = result.best(f"{model} torch") / n, result.best(f"{model} onnxruntime") / n
        report.rows.append(
            Row(
                "onnx",
                f"{model} {size[0]}×{size[1]} per image, torch (Predictor, inference copy), 2 threads, batch 1",
                ref,
                ours,
                ref / ours,
                None,
                result.peaks[f"{model} onnxruntime"],
                f"count --backend onnxruntime; torch side {fmt_mb(result.peaks[f'{model} torch'])}",
            )
        )
        a = np.array(result.outputs[f"{model} torch"])
        b = np.array(result.outputs[f"{model} onnxruntime"])
        rel = float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-6)))
        report.check(
            f"{model}: onnxruntime counts = torch counts (relative difference < 1e-3)", f"{rel:.1e}", rel < 1e-3
        )


STAGES: dict[str, Stage] = {"floor": stage_floor, "inference": stage_inference, "onnx": stage_onnx}


def size_arg(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH, e.g. 384x512, got {text!r}") from None
    return height, width


def resized(stage: Stage, size: tuple[int, int]) -> Stage:
    """``stage`` run at images of ``size`` (h, w) instead of its sizes' own."""

    def run_resized(report: Report, sizes: Sizes, root: Path) -> None:
        stage(report, dataclasses.replace(sizes, height=size[0], width=size[1]), root)

    return run_resized


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, only=tuple(STAGES))
    p.add_argument("--size", type=size_arg, default=None, help="image size HxW of every stage [default: 768x1024]")
    p.add_argument("--tile-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.tile_child:
        model, path, big, max_side, fast = json.loads(args.tile_child)
        tile_child(model, path, tuple(big), max_side, fast)
        return 0
    stages = [s.strip() for s in args.only.split(",") if s.strip()]
    if unknown := [s for s in stages if s not in STAGES]:
        p.error(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    if "inference" in stages and "floor" not in stages:
        stages.insert(0, "floor")  # its floor multiples need the floor stage
    chosen = {s: STAGES[s] for s in STAGES if s in stages}
    if args.size is not None:
        chosen = {s: resized(stage, args.size) for s, stage in chosen.items()}
    return run(chosen, args)


if __name__ == "__main__":
    sys.exit(main())
