"""`crowdtk bench --recipe`: named configurations (the CPU tier, the paper's CSRNet setting), replaced option by option
by what the command line gives, recorded in the bench folder, and run as ordinary crowdtk commands."""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from conftest import bench_on_synth, run

from crowdtk.experiment import RECIPES, Experiment, Run, Schedule, check_same_settings
from crowdtk.formats import BENCH_RESULTS, read_json


def _option(argv: list[str] | tuple[str, ...], name: str) -> str:
    return argv[list(argv).index(name) + 1]


def test_the_default_recipe_is_the_cpu_tier_and_the_paper_recipe_is_the_paper_s() -> None:
    default, paper = RECIPES["default"], RECIPES["paper"]
    assert (
        default.schedule == Schedule()
        and default.budgets == (0.1,)
        and default.seeds == 5
        and default.auto_scale
        and default.device == "auto"
    )
    s = paper.schedule
    assert (s.model, s.scale, s.freeze, s.batch_size, s.crop, s.lr) == ("csrnet", 1.0, "none", 1, 448, 1e-5)
    assert s.crop % 8 == 0 and s.pretrained  # ImageNet VGG16; --no-pretrained only when asked
    assert paper.budgets == (0.1,) and paper.seeds == 5 and paper.device == "cuda"  # Table 5's Part B budget; 5 runs
    s.validate()


def test_the_paper_recipe_s_commands_fine_tune_csrnet_on_crops_at_full_resolution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("crowdtk.experiment.plan.labeled_images", lambda labels: 400)  # the chain is listed, not run
    paper = RECIPES["paper"]
    experiment = Experiment(tmp_path / "train.jsonl", tmp_path / "test.jsonl", tmp_path, paper.schedule, paper.device)
    steps = list(experiment.chain(Run("mdc+cap", paper.budgets[0], "strip", 0)))
    train = next(s.argv for s in steps if s.argv[0] == "train")
    warmup = next(s.argv for s in steps if s.argv[0] == "warmup")
    for argv in (train, warmup):
        assert (
            _option(argv, "--model") == "csrnet"
            and _option(argv, "--scale") == "1.0"
            and _option(argv, "--crop") == "448"
        )
        assert (
            _option(argv, "--batch-size") == "1"
            and _option(argv, "--lr") == "1e-05"
            and _option(argv, "--device") == "cuda"
        )
        assert (
            "--freeze" not in argv and "--feature-cache" not in argv
        )  # train's default tier: the whole counter fine-tuned
        assert "--no-pretrained" not in argv and "--backbone-weights" not in argv
    assert _option(train, "--epochs") == "100" and "--cap" in train  # 40000 steps of one image over 400 images
    # Full resolution: strip edges on the 8-px grid, so no --scale for select or vectors.
    assert not any("--scale" in s.argv for s in steps if s.argv[0] in ("select", "vectors"))
    weights = Experiment(
        tmp_path / "train.jsonl",
        tmp_path / "test.jsonl",
        tmp_path,
        replace(paper.schedule, pretrained=False),
        backbone_weights=tmp_path / "vgg16.pth",
    )
    argv = next(s.argv for s in weights.chain(Run("full", 0.1, "strip", 0)) if s.argv[0] == "train")
    assert "--no-pretrained" in argv and _option(argv, "--backbone-weights") == str(tmp_path / "vgg16.pth")


def test_options_given_replace_the_recipe_s_values_and_nothing_else() -> None:
    paper = RECIPES["paper"]
    mine = paper.with_options({"steps": 10, "budgets": [0.05, 0.2], "seeds": 2, "device": "cpu", "pretrained": False})
    assert mine.name == "paper" and mine.budgets == (0.05, 0.2) and mine.seeds == 2 and mine.device == "cpu"
    assert mine.schedule == replace(paper.schedule, steps=10, pretrained=False)
    assert paper.with_options({}) == paper
    with pytest.raises(ValueError, match="colour"):
        paper.with_options({"colour": "red"})


def test_bench_help_lists_the_recipes() -> None:
    result = run("bench", "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "--recipe <default|paper>" in text
    assert all(" ".join(f"{r.name}: {r.help}".split()) in text for r in RECIPES.values())


def test_an_unknown_recipe_or_contradicting_weights_are_usage_errors(tmp_path: Path) -> None:
    base = ["bench", "--train", tmp_path, "--test", tmp_path, "-o", tmp_path / "b"]
    result = run(*base, "--recipe", "quick")
    assert result.exit_code == 2 and "--recipe" in result.output and "quick" in result.output, result.output
    weights = tmp_path / "vgg16.pth"
    weights.write_bytes(b"")
    result = run(*base, "--recipe", "paper", "--no-pretrained", "--backbone-weights", weights)
    assert result.exit_code == 2 and "--no-pretrained with --backbone-weights" in result.output, result.output
    assert not (tmp_path / "b").exists()


def test_the_paper_recipe_without_a_gpu_stops_before_any_step(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here")
    result = run("bench", "--recipe", "paper", "--train", tmp_path, "--test", tmp_path, "-o", tmp_path / "b")
    assert result.exit_code == 1 and "--device cuda but no CUDA device is available" in result.output, result.output
    assert not (tmp_path / "b").exists()


def test_a_folder_made_before_recipes_and_start_weights_stays_readable(tmp_path: Path) -> None:
    old = {k: v for k, v in asdict(Schedule()).items() if k != "pretrained"}
    (tmp_path / "settings.json").write_text(json.dumps({**old, "train_sha256": "a", "test_sha256": "b"}))
    now = {
        **asdict(Schedule()),
        "recipe": "default",
        "backbone_weights_sha256": None,
        "train_sha256": "a",
        "test_sha256": "b",
    }
    check_same_settings(
        tmp_path, now
    )  # what was absent counts as the value it had: the default recipe, ImageNet weights
    with pytest.raises(Exception, match="recipe"):
        check_same_settings(tmp_path, {**now, "recipe": "paper"})


def test_a_cpu_dry_run_of_the_paper_recipe(tmp_path: Path) -> None:
    """Two generated training images and one test image; the overrides make it seconds: one method and seed, 2 steps,
    the CPU, small crops, random front-end weights (no network here) and half the images for the warm-up (of two, 20%
    is none)."""
    result = run("synth", "-o", tmp_path / "data", "--train", 2, "--test", 1, "--width", 128, "--height", 96, "-q")
    assert result.exit_code == 0, result.output
    out = tmp_path / "paper"
    result = run(
        *bench_on_synth(tmp_path, out),
        "--recipe",
        "paper",
        "--methods",
        "mdc+cap",
        "--seeds",
        1,
        "--steps",
        2,
        "--warmup-steps",
        1,
        "--crop",
        32,
        "--warmup-frac",
        0.5,
        "--device",
        "cpu",
        "--no-pretrained",
    )
    assert result.exit_code == 0, result.output
    printed = [shlex.split(line[2:]) for line in result.output.splitlines() if line.startswith("+ crowdtk ")]
    assert printed and all(argv[0] == "crowdtk" for argv in printed)  # ordinary command lines
    trains = [argv for argv in printed if argv[1] in ("train", "warmup")]
    assert [argv[1] for argv in trains] == ["warmup", "train"]
    for argv in trains:
        # the recipe's values where nothing was given...
        assert (
            _option(argv, "--model") == "csrnet"
            and _option(argv, "--scale") == "1.0"
            and _option(argv, "--batch-size") == "1"
        )
        assert _option(argv, "--lr") == "1e-05" and "--freeze" not in argv and "--no-pretrained" in argv
        # ...and the command line's where it was
        assert _option(argv, "--crop") == "32" and _option(argv, "--device") == "cpu" and _option(argv, "--seed") == "0"
    selects = [argv for argv in printed if argv[1] == "select" and "--budget" in argv]
    assert len(selects) == 2 and all(_option(argv, "--budget") == "0.1" for argv in selects)  # the warm-up round, MDC
    doc = read_json(out / "results.json", BENCH_RESULTS)
    settings = doc["settings"]
    assert settings["recipe"] == "paper" and settings["model"] == "csrnet" and settings["freeze"] == "none"
    assert (
        settings["scale"] == 1.0
        and settings["crop"] == 32
        and settings["steps"] == 2
        and settings["pretrained"] is False
    )
    assert doc["params"]["recipe"] == "paper" and doc["params"]["budgets"] == [0.1] and doc["params"]["seeds"] == 1
    assert {r["budget"] for r in doc["results"]} == {0.1} and [r["method"] for r in doc["results"]] == ["mdc+cap"]
    assert json.loads((out / "settings.json").read_text())["recipe"] == "paper"
    assert "--recipe paper" in (out / "results.md").read_text()
