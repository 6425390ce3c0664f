"""Command line (from the repository root): .venv/bin/python -m benchmarks.training [--quick] [--json OUT]

The ``training`` stage of crowdtk's performance table (python -m benchmarks), after the ``floor``
stage its floor multiples need.

A plain training loop in the style of the original CSRNet script (NCHW, image and
full-resolution density map read from disk every step, density resized with cv2, batch 1, no
loader workers) vs crowdtk's step (prepare_sample once, random_crop, to_input, TrainNet,
density_loss), same model, crop and steps.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.floor import Matmul, alongside_rate, floor_seconds, stage_floor
from benchmarks.harness import (
    Remote,
    Report,
    Row,
    Sizes,
    log,
    make_counter,
    manifest_of,
    parser,
    race,
    read_rgb,
    run,
    timed,
)


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
        image = image[top : top + c, left : left + c]
        density = density[top : top + c, left : left + c]
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
    once (prepare_sample), then per step random_crop, to_input, TrainNet forward, density_loss,
    backward, Adam, with train.py's CPU settings (speed_up_cpu_training); ``cpu_settings=False``
    leaves them out, to measure what they gain."""

    def __init__(self, model: str, labels: list[dict[str, Any]], crop: int, cpu_settings: bool = True) -> None:
        import torch

        from crowdtk.cap import TrainNet
        from crowdtk.formats import LabelsEntry, Region
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
        entries = [
            LabelsEntry(
                d["id"],
                d["image"],
                d["sha256"],
                d["width"],
                d["height"],
                (Region(0, d["width"], 0, d["height"]),),
                np.asarray(d["points"], dtype=np.float64).reshape(-1, 2),
            )
            for d in labels
        ]
        seconds, self.samples = timed(lambda: [prepare_sample(e, self.config) for e in entries])
        self.prepare_per_image = seconds / len(entries)
        self.step = 0

    def run(self) -> dict[str, float]:
        from crowdtk.train import density_loss, random_crop

        torch, config = self.torch, self.config
        start = time.perf_counter()
        i = self.step % len(self.samples)
        rng = np.random.default_rng([config.seed, 0, self.step, i])
        self.step += 1
        image, target, mask = random_crop(self.samples[i], config.crop, config.flip, rng)
        x = self.counter.to_input(image[None], torch.device("cpu"))
        t = torch.from_numpy(target[None])
        m = torch.from_numpy(mask[None])
        load = time.perf_counter() - start
        pred = self.net(x, m)
        loss = density_loss(config.loss)(pred, t, m.float(), config.density_scale)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        loss.item()
        return {"load": load, "prepare_per_image": self.prepare_per_image}


def _labels_records(root: Path, n: int) -> list[dict[str, Any]]:
    from crowdtk.data import read_points_on_image

    manifest = manifest_of(root)
    out = []
    for e in manifest.entries[:n]:
        points, _ = read_points_on_image(e.points, e.width, e.height)
        out.append(
            {
                "id": e.id,
                "image": e.image,
                "sha256": e.sha256,
                "width": e.width,
                "height": e.height,
                "points": points.tolist(),
                "entry": e,
            }
        )
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
            result = race(
                {
                    "matmul": Remote(Matmul, n=sizes.matmul),
                    "plain": Remote(PlainTraining, model=model, paths=paths, densities=densities, crop=sizes.crop),
                    "crowdtk": Remote(CrowdtkTraining, model=model, labels=labels, crop=sizes.crop),
                    "crowdtk-bare": Remote(
                        CrowdtkTraining, model=model, labels=labels, crop=sizes.crop, cpu_settings=False
                    ),
                },
                sizes.train_steps,
            )
            ref, ours, bare = result.best("plain"), result.best("crowdtk"), result.best("crowdtk-bare")
            floor3 = 3 * floor_seconds(
                report, model, sizes.crop, sizes.crop, sizes, alongside_rate(report, result, sizes, f"training {model}")
            )
            out = result.outputs["crowdtk"]
            load = float(np.median([out["load"]]))  # last step's; the per-step cost is steady
            share_steady = load / ours
            share_first = (load + out["prepare_per_image"]) / (ours + out["prepare_per_image"])
            report.rows.append(
                Row(
                    "training",
                    f"{model} crop {sizes.crop}, plain CSRNet-style loop, per step",
                    ref,
                    ours,
                    ref / ours,
                    ours / floor3,
                    result.peaks["crowdtk"],
                    "TrainNet step",
                )
            )
            report.rows.append(
                Row(
                    "training",
                    f"{model} crop {sizes.crop}, crowdtk step without its CPU settings",
                    bare,
                    ours,
                    bare / ours,
                    ours / floor3,
                    result.peaks["crowdtk"],
                    "TrainNet step + speed_up_cpu_training",
                )
            )
            report.check(
                f"training {model}: crowdtk step ≥ 1.5× faster than the plain loop",
                f"{ref / ours:.2f}×",
                ref / ours >= 1.5,
            )
            report.check(
                f"training {model}: step within 2× of 3× the forward floor", f"{ours / floor3:.2f}×", ours / floor3 <= 2
            )
            report.check(
                f"training {model}: data loading + augmentation < 10% of the step "
                "(steady; first epoch incl. prepare_sample)",
                f"{100 * share_steady:.1f}%; {100 * share_first:.1f}%",
                share_first < 0.10,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    return run(
        {"floor": stage_floor, "training": stage_training}, parser(__doc__).parse_args(argv)
    )  # floor multiples need it


if __name__ == "__main__":
    sys.exit(main())
