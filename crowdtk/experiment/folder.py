"""A bench or demo folder: the settings its runs were made with, its data, the machine it ran on,
and what is written from its runs' results (the pictures among them); and the parsing of the
comma-separated lists the commands take."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from crowdtk.errors import CrowdtkError, UsageError
from crowdtk.experiment.plan import Experiment, Run, Schedule, Step
from crowdtk.experiment.results import claims, demo_report, demo_table, markdown_table
from crowdtk.files import atomic_path, file_digest
from crowdtk.formats import BENCH_RESULTS, DEMO_REPORT, Provenance, make_header, read_manifest, write_json
from crowdtk.geometry import scale_for_pixels
from crowdtk.selection.image_list import read_listed_images


def resolve_cpu_bf16(choice: bool | None, device: str) -> bool:
    """--cpu-bf16 as given, else on when training runs on a CPU that computes bfloat16 natively."""
    if choice is not None:
        return choice
    import torch

    from crowdtk.runtime import cpu_bf16_supported

    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    return on_cpu and cpu_bf16_supported()


def parse_list(text: str, option: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UsageError(
            f"{option} is empty", f"pass a comma-separated list{', e.g. ' + ','.join(allowed) if allowed else ''}"
        )
    if allowed:
        unknown = [t for t in items if t not in allowed]
        if unknown:
            raise UsageError(f"{option}: unknown {', '.join(unknown)}", f"choose from {', '.join(allowed)}")
    return items


def parse_budgets(text: str) -> list[float]:
    try:
        budgets = [float(t) for t in parse_list(text, "--budgets")]
    except ValueError:
        raise UsageError(f"--budgets {text!r}: not numbers", "pass e.g. --budgets 0.05,0.1,0.2") from None
    for b in budgets:
        if not 0 < b <= 1:
            raise UsageError(f"budget {b:g} is outside (0, 1]", "pass fractions of the pool's area, e.g. 0.1")
    return budgets


def manifest_step(source: Path, out: Path, split: str) -> tuple[Path, Step | None]:
    """A split folder is indexed into DIR/data/; a manifest file is used as it is."""
    if source.is_dir():
        target = out / "data" / f"{split}.manifest.jsonl"
        return target, Step(("index", str(source), "-o", str(target), "-q"), target)
    if not source.exists():
        raise CrowdtkError(f"{source}: no such file or folder", f"pass the {split} split folder or its manifest")
    return source, None


# Settings added after a folder may have been made: absent from its settings.json means their default.
# They hold the value the code had before the setting existed (a folder of fine-tuned runs stays one).
LATER_SETTINGS = {
    "strip_frac": Schedule.strip_frac,
    "freeze": "none",
    "lr_schedule": "constant",
    "keep": "best",
    "cpu_bf16": False,
    "pretrained": True,
    "recipe": "default",
    "backbone_weights_sha256": None,
    "image_list_sha256": None,  # no bench --image-list: none-or-all draws its images by the seed
}


def check_same_settings(out: Path, settings: dict[str, Any]) -> None:
    """Runs in DIR are reused only when they were made with the same schedule and data."""
    path = out / "settings.json"
    if path.exists():
        before, now = {**LATER_SETTINGS, **json.loads(path.read_text(encoding="utf-8"))}, {**LATER_SETTINGS, **settings}
        changed = sorted(k for k in now.keys() | before.keys() if now.get(k) != before.get(k))
        if changed:
            raise CrowdtkError(
                f"{out}: holds runs made with other settings ({', '.join(changed)} differ)",
                "choose another -o folder, or remove this one to start anew",
            )
        return
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(settings, indent=1), encoding="utf-8")


def data_digest(manifest: Path) -> str:
    """sha256 of a data set as the runs see it: each image's id, size, head count and digest, and its
    points file's bytes, in the manifest's order (whatever made the manifest, when, and where the files lie)."""
    _, entries = read_manifest(manifest)
    digest = hashlib.sha256()
    for e in entries:
        points = file_digest(e.points) if e.points else None
        digest.update(json.dumps([e.id, e.width, e.height, e.count, e.sha256, points]).encode("utf-8") + b"\n")
    return digest.hexdigest()


def open_bench(
    train: Path,
    test: Path,
    out: Path,
    schedule: Schedule,
    execute: Callable[[Step], None],
    device: str,
    feature_cache: Path | None,
    recipe: str = "default",
    backbone_weights: Path | None = None,
    auto_scale: bool = False,
    image_list: Path | None = None,
) -> tuple[Experiment, dict[str, Any]]:
    """The bench folder ``out`` ready for runs: its experiment and settings (results.json's). A split
    folder is indexed into DIR/data by ``execute``; runs in DIR must have been made with these settings,
    the name of the recipe they came from and the same backbone weights (by content: the file may move).
    ``image_list`` (bench --image-list) is matched to the training pool here, so that a list naming an image it
    lacks fails before any run; its bytes' digest is a setting, so a rerun with another list is refused."""
    if backbone_weights is not None and not backbone_weights.is_file():
        raise CrowdtkError(
            f"{backbone_weights}: backbone weights file not found", "check the path given to --backbone-weights"
        )
    out.mkdir(parents=True, exist_ok=True)
    manifests = []
    for source, split in ((train, "train"), (test, "test")):
        path, step = manifest_step(source, out, split)
        if step is not None:
            execute(step)
        manifests.append(path)
    if auto_scale:  # one working scale for the data set, from its images' sizes (geometry.scale_for_pixels)
        schedule = replace(
            schedule, scale=scale_for_pixels([(e.width, e.height) for e in read_manifest(manifests[0])[1]])
        )
    listed = read_listed_images(image_list, read_manifest(manifests[0])[1], str(manifests[0])) if image_list else None
    settings = {
        **asdict(schedule),
        "recipe": recipe,
        "backbone_weights_sha256": file_digest(backbone_weights) if backbone_weights else None,
        "train_sha256": file_digest(manifests[0]),
        "test_sha256": file_digest(manifests[1]),
        "image_list_sha256": listed.sha256 if listed is not None else None,
    }
    check_same_settings(out, settings)
    settings |= {
        "train_data_sha256": data_digest(manifests[0]),
        "test_data_sha256": data_digest(manifests[1]),
    }  # results.json only
    experiment = Experiment(
        manifests[0], manifests[1], out, schedule, device, feature_cache, backbone_weights, image_list=image_list
    )
    return experiment, settings


def machine() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def draw_figures(experiment: Experiment, run: Run, names: dict[str, str]) -> None:
    """The paper's pictures from one MDC run: the strips it chose with the warm-up counter's density
    (Fig. 5), a prediction of its final counter (Fig. 6), and, for mdc+cap, CAP's affinity maps.
    ``names`` gives the file name of each picture (keys: regions, prediction, affinity)."""
    from crowdtk import pictures

    out = experiment.out
    labels = experiment.selection_dir(run) / "labels.jsonl"
    pictures.show_regions(
        out / names["regions"],
        labels,
        experiment.first_chosen(run),
        checkpoint=experiment.run_dir(run) / "warmup" / "model.safetensors",
    )
    pictures.show_prediction(out / names["prediction"], experiment.model_of(run), experiment.test_manifest)
    if run.method == "mdc+cap":
        pictures.show_affinity(
            out / names["affinity"], experiment.run_dir(run) / run.name / "model.safetensors", labels
        )


def write_bench_results(
    experiment: Experiment,
    runs: list[Run],
    results: list[dict[str, Any]],
    settings: dict[str, Any],
    params: dict[str, Any],
    command_line: str,
    started: float,
) -> str:
    """DIR/results.json, DIR/results.md (returned) and the pictures: Fig. 4 always, Fig. 5 and 6 when MDC ran."""
    from crowdtk import pictures

    s, out = experiment.schedule, experiment.out
    images = f"{s.batch_size} whole images" if s.crop == 0 else f"{s.batch_size} crops of {s.crop} px"
    tier = f", --freeze {s.freeze}" if s.freeze != "none" else ""
    seeds = params["seeds"]
    recipe = f" (--recipe {settings['recipe']})" if settings.get("recipe", "default") != "default" else ""
    title = (
        f"crowdtk bench{recipe}: {experiment.train_manifest} → {experiment.test_manifest}, {s.model}{tier}, scale "
        f"{s.scale:g}, {s.steps} steps × {images}, {seeds} seed(s)"
    )
    body = {
        "command_line": command_line,
        "settings": settings,
        "machine": machine(),
        "results": results,
        "claims": claims(results),
        "wall_s": time.perf_counter() - started,
    }
    write_json(out / "results.json", make_header(BENCH_RESULTS, Provenance("bench", params)), body)
    table = markdown_table(results, title) + f"\nCommand: `{command_line}`\n"
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(table, encoding="utf-8")
    pictures.show_budget(out / "fig4-budget.png", out / "results.json")
    methods = {r.method for r in runs}
    if methods & {"mdc", "mdc+cap"}:
        mdc = Run("mdc+cap" if "mdc+cap" in methods else "mdc", runs[0].budget, "strip", 0)
        draw_figures(
            experiment,
            mdc,
            {"regions": "fig5-regions.png", "prediction": "fig6-prediction.png", "affinity": "fig5-affinity.png"},
        )
    return table


def write_demo_results(
    experiment: Experiment,
    runs: list[Run],
    results: list[dict[str, Any]],
    params: dict[str, Any],
    seed: int,
    started: float,
) -> str:
    """DIR/report.json, the pictures of the MDC run (mdc+cap's where both ran) and the table printed (returned)."""
    report, verdicts = demo_report(results), claims(results)
    header = make_header(DEMO_REPORT, Provenance("demo", params, seed))
    write_json(
        experiment.out / "report.json",
        header,
        {"methods": report, "claims": verdicts, "wall_s": time.perf_counter() - started},
    )
    mdc = next((r for r in runs if r.method == "mdc+cap"), None) or next((r for r in runs if r.method == "mdc"), None)
    if mdc is not None:
        draw_figures(
            experiment, mdc, {"regions": "regions.png", "prediction": "prediction.png", "affinity": "affinity.png"}
        )
    return demo_table(report, verdicts)
