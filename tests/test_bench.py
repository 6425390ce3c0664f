"""`crowdtk bench`: the paper's comparisons as chains of ordinary commands (the plan, the seeds' numbers, the claims,
the folder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import QUICK_BENCH, bench_on_synth, run

from crowdtk.errors import CrowdtkError
from crowdtk.experiment import Experiment, Run, Schedule, Step, aggregate, epochs_for, markdown_table
from crowdtk.formats import BENCH_RESULTS, read_json


def test_epochs_give_the_same_number_of_steps_whatever_was_labeled() -> None:
    # 400 images, 5% held out → 380 train → 48 steps per epoch at batch 8.
    assert epochs_for(800, 8, 400, 0.05) == round(800 / 48)
    # 40 whole images (None-or-All) → 38 train → 5 steps per epoch: ten times the epochs.
    assert epochs_for(800, 8, 40, 0.05) == 160
    # Fewer than 5 images validate on the training images: nothing is held out.
    assert epochs_for(10, 4, 4, 0.5) == 10
    assert epochs_for(1, 64, 1000, 0.1) == 1


def test_step_shell_quotes_paths_and_shows_redirection(tmp_path: Path) -> None:
    step = Step(("eval", "my model.safetensors", "m.jsonl", "--json"), tmp_path / "out dir" / "eval.json", stdout=True)
    assert step.shell() == f"crowdtk eval 'my model.safetensors' m.jsonl --json > '{tmp_path}/out dir/eval.json'"


def test_mdc_and_mdc_cap_share_one_selection_and_the_warmup(tmp_path: Path) -> None:
    exp = Experiment(tmp_path / "train.jsonl", tmp_path / "test.jsonl", tmp_path)
    mdc, cap = Run("mdc", 0.1, "strip", 0), Run("mdc+cap", 0.1, "strip", 0)
    assert exp.selection_dir(mdc) == exp.selection_dir(cap)
    assert exp.selection_dir(Run("random", 0.1, "band", 0)).name == "select-random-band"
    assert exp.model_of(cap).name == "infer.safetensors" and exp.model_of(mdc).name == "model.safetensors"
    first = next(exp.chain(mdc))  # the warm-up round comes first
    assert first.argv[:2] == ("select", str(tmp_path / "train.jsonl")) and "--warmup-frac" in first.argv


def test_a_chain_passes_every_digit_of_its_numbers(tmp_path: Path, monkeypatch) -> None:
    import crowdtk.experiment.plan

    monkeypatch.setattr(
        crowdtk.experiment.plan, "labeled_images", lambda labels: 10
    )  # no labels files: the steps are not run
    schedule = Schedule(lr=0.00123456789, scale=0.3333333333, strip_frac=0.0523456789, warmup_frac=0.2345678912)
    exp = Experiment(tmp_path / "train.jsonl", tmp_path / "test.jsonl", tmp_path, schedule)
    steps = list(exp.chain(Run("mdc", 0.1234567, "strip", 0)))
    words = {word for step in steps for word in step.argv}
    for value in (0.1234567, 0.00123456789, 0.3333333333, 0.0523456789, 0.2345678912):
        assert repr(value) in words, value
    assert not words & {"0.123457", "0.00123457", "0.333333"}
    assert all(
        float(step.argv[step.argv.index("--budget") + 1]) == 0.1234567 for step in steps if "--budget" in step.argv
    )


def _row(method: str, maes: list[float], budget: float = 0.1, shape: str = "strip") -> tuple:
    runs = [
        {
            "seed": s,
            "mae": m,
            "rmse": m * 1.5,
            "heads_labeled": 100 + s,
            "images_labeled": 40,
            "heads_supervised_fraction": 1 - s / 100,
            "area_fraction": 0.1,
            "wall_s": 60.0,
            "non_finite": 0,
        }
        for s, m in enumerate(maes)
    ]
    return (method, budget, shape), runs


def test_claims_are_judged_on_paired_seed_differences() -> None:
    from crowdtk.experiment import claims

    # mdc beats random by 0.2 in every seed although both spread by 1.0 over seeds: the paired view sees it.
    # max against mdc: a mean gain of 1.0 whose seed differences disagree in sign.
    results = aggregate(
        dict(
            [
                _row("none-or-all", [20.0, 22.0, 21.0]),
                _row("random", [15.0, 16.0, 17.0]),
                _row("mdc", [14.8, 15.8, 16.8]),
                _row("max", [16.8, 13.8, 19.8]),
                _row("mdc+cap", [14.0]),
            ]
        )
    )
    verdict = {(c["better"], c["worse"]): c for c in claims(results)}
    consistent = verdict["mdc", "random"]
    assert consistent["verdict"] == "holds" and consistent["seeds"] == 3
    assert consistent["mae_gain"] == pytest.approx(0.2) and consistent["ci_low"] == pytest.approx(0.2, abs=1e-9)
    noisy = verdict["mdc", "max"]  # gains 2 -2 3 around 1.0: sd 2.646, t(0.975, 2) = 4.3027
    assert noisy["verdict"] == "undecided" and noisy["mae_gain"] == pytest.approx(1.0)
    assert noisy["ci_low"] == pytest.approx(1.0 - 4.3027 * 2.6458 / 3**0.5, abs=1e-3)
    assert noisy["ci_high"] == pytest.approx(1.0 + 4.3027 * 2.6458 / 3**0.5, abs=1e-3)
    assert verdict["random", "none-or-all"]["verdict"] == "holds"
    assert (
        verdict["mdc+cap", "mdc"]["verdict"] == "one seed: not settled" and verdict["mdc+cap", "mdc"]["ci_low"] is None
    )
    worse = aggregate(dict([_row("none-or-all", [10.0, 10.5]), _row("random", [15.0, 15.6])]))
    assert claims(worse)[0]["verdict"] == "refuted"  # gains -5.0, -5.1: t(0.975, 1) = 12.706, half-width 0.635
    assert (
        "| region-level labels beat None-or-All (Fig. 4) | 2 | -5.05 (-49%) | [-5.69, -4.41] | refuted |"
        in markdown_table(worse, "t")
    )


def test_claims_pair_only_the_seeds_both_methods_ran() -> None:
    from crowdtk.experiment import claims

    random_runs = _row("random", [15.0, 16.0, 99.0])  # seed 2 only for random: left out of the pairs
    results = aggregate(dict([_row("none-or-all", [20.0, 21.0]), random_runs]))
    (claim,) = claims(results)
    assert claim["seeds"] == 2 and claim["mae_gain"] == pytest.approx(5.0)


def test_aggregate_and_tables() -> None:
    results = aggregate(
        dict(
            [
                _row("none-or-all", [20.0, 30.0]),
                _row("mdc+cap", [10.0, 12.0]),
                _row("none-or-all", [40.0], 0.05),
                _row("random", [11.0], 0.1, "band"),
            ]
        )
    )
    noa = results[0]
    assert noa["mae"]["mean"] == 25.0 and noa["mae"]["std"] == pytest.approx(7.0711, abs=1e-4)
    assert noa["heads_labeled"] == 100.5 and noa["seeds"] == [0, 1]
    table = markdown_table(results, "t")
    assert noa["heads_supervised_fraction"] == 0.99  # the worst seed
    assert "| none-or-all | 25.00 ± 7.07 | 37.50 ± 10.61 | 40 | 100 | 99.00% | 10.00% | 1.0 min |" in table
    assert "## Budget 5%" in table and "## Budget 10%" in table
    assert "| none-or-all | 40.00/60.00 | 25.00/37.50 |" in table  # the budget sweep, Table 2 layout
    assert "| mdc+cap | – | 11.00/16.50 |" in table
    assert "random (bands)" in table


def test_bench_refuses_bad_options(tmp_path: Path) -> None:
    for extra, message in (
        (["--budgets", "0.1,1.5"], "outside (0, 1]"),
        (["--methods", "mdc,best"], "unknown best"),
        (["--shapes", "strip"], "unknown strip"),
        (["--budgets", "a"], "not numbers"),
    ):
        result = run("bench", "--train", tmp_path, "--test", tmp_path, "-o", tmp_path / "b", *extra)
        assert result.exit_code == 2 and message in result.output, result.output
        assert not (tmp_path / "b").exists()


def test_bench_runs_every_method_reuses_finished_runs_and_refuses_other_settings(tiny_data: Path) -> None:
    out = tiny_data / "b"
    args = [
        *bench_on_synth(tiny_data, out),
        *QUICK_BENCH,
        "--methods",
        "none-or-all,mdc+cap",
        "--shapes",
        "block",
        "--seeds",
        "1",
    ]
    result = run(*args)
    assert result.exit_code == 0, result.output
    doc = read_json(out / "results.json", BENCH_RESULTS)
    names = {(r["method"], r["shape"]) for r in doc["results"]}
    assert names == {("none-or-all", "strip"), ("mdc+cap", "strip"), ("random", "block")}
    for r in doc["results"]:
        # one seed: the mean is that run's eval.json, the spread 0
        name = r["method"] if r["shape"] == "strip" else f"{r['method']}-{r['shape']}"
        scores = json.loads((out / "runs" / f"budget-{r['budget']:g}" / "seed-0" / name / "eval.json").read_text())
        assert r["mae"] == {"mean": scores["mae"], "std": 0.0} and r["rmse"] == {"mean": scores["rmse"], "std": 0.0}
        assert 0 < r["area_fraction"] <= 0.2 and r["wall_s"] > 0
        assert r["heads_supervised_fraction"] >= 0.995  # the training checkpoints' own count
    assert [c["claim"] for c in doc["claims"]] == ["the gap to full shrinks: MDC+CAP is nearer full than None-or-All"]
    assert "| mdc+cap |" in (out / "results.md").read_text()
    for picture in ("fig4-budget.png", "fig5-regions.png", "fig5-affinity.png", "fig6-prediction.png"):
        assert (out / picture).stat().st_size > 1000
    # Every step was printed as the command that does it.
    assert "+ crowdtk train " in result.output and "--cap" in result.output and "+ crowdtk strip-cap " in result.output

    model = out / "runs" / "budget-0.1" / "seed-0" / "mdc+cap" / "model.safetensors"
    before = model.stat().st_mtime_ns
    again = run(*args)
    assert again.exit_code == 0 and "+ crowdtk train" not in again.output  # nothing reran
    assert model.stat().st_mtime_ns == before
    assert read_json(out / "results.json", BENCH_RESULTS)["results"][0]["mae"] == doc["results"][0]["mae"]

    other = run(*args, "--lr", "0.002")
    assert other.exit_code == 1 and "other settings (lr differ)" in other.output

    settings = out / "settings.json"  # a folder made before --strip-frac existed holds default-width runs
    saved = json.loads(settings.read_text())
    settings.write_text(json.dumps({k: v for k, v in saved.items() if k != "strip_frac"}))
    assert run(*args).exit_code == 0
    narrow = run(*args, "--strip-frac", "0.05")
    assert narrow.exit_code == 1 and "other settings (strip_frac differ)" in narrow.output


def test_strip_width_reaches_every_strip_command(tiny_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("crowdtk.experiment.plan.labeled_images", lambda labels: 10)  # the chain is listed, not run
    schedule = Schedule(strip_frac=0.05)
    experiment = Experiment(Path("train.jsonl"), Path("test.jsonl"), tiny_data / "unused", schedule)
    steps = [s for method in ("random", "mdc") for s in experiment.selection_chain(Run(method, 0.1, "strip", 0))]
    strip_steps = [
        s.argv for s in steps if s.argv[0] == "vectors" or (s.argv[0] == "select" and "none-or-all" not in s.argv)
    ]
    assert len(strip_steps) == 4  # random; warm-up random, vectors, mdc
    assert all(a[a.index("--strip-frac") + 1] == "0.05" for a in strip_steps)
    default = Experiment(Path("train.jsonl"), Path("test.jsonl"), tiny_data / "unused")
    assert not any("--strip-frac" in s.argv for s in default.selection_chain(Run("random", 0.1, "strip", 0)))


def test_a_failed_step_names_its_command(tiny_data: Path) -> None:
    out = tiny_data / "broken"
    manifest = tiny_data / "data" / "train" / "manifest.jsonl"
    result = run("bench", "--train", manifest, "--test", tiny_data / "missing.jsonl", "-o", out)
    assert result.exit_code == 1 and "missing.jsonl: no such file" in result.output


def test_schedule_is_checked() -> None:
    with pytest.raises(CrowdtkError, match="warmup-frac"):
        Schedule(warmup_frac=1.0).validate()


def test_bench_on_a_pool_of_mixed_sizes_spends_the_same_area_for_every_method(tmp_path: Path) -> None:
    """96 small and 8 large generated images: None-or-All draws whole images by area, so it spends the
    budget the strip methods spend (counting images it would spend 3.9% or 25% by the draw)."""
    from crowdtk.formats import MANIFEST, Provenance, make_header, read_manifest, write_jsonl

    entries = []
    for name, n, (w, h) in (("small", 96, (96, 64)), ("large", 8, (384, 256))):
        result = run(
            "synth", "-o", tmp_path / name, "--train", n, "--test", 2, "--width", w, "--height", h, "--seed", 1, "-q"
        )
        assert result.exit_code == 0, result.output
        manifest = tmp_path / name / "train" / "manifest.jsonl"
        for e in read_manifest(manifest)[1]:
            assert e.points is not None  # synth writes every image's points
            entries.append(
                {
                    **e.to_record(),
                    "id": f"{name}-{e.id}",
                    "image": str((manifest.parent / e.image).resolve()),
                    "points": str((manifest.parent / e.points).resolve()),
                }
            )
    pool = tmp_path / "pool.jsonl"
    write_jsonl(pool, make_header(MANIFEST, Provenance("index")), entries)
    out = tmp_path / "b"
    result = run(
        "bench",
        "--train",
        pool,
        "--test",
        tmp_path / "small" / "test" / "manifest.jsonl",
        "-o",
        out,
        "--scale",
        "1",
        "--steps",
        "1",
        "--batch-size",
        "4",
        "--methods",
        "none-or-all,random",
        "--seeds",
        "1",
        "--no-cpu-bf16",
        "-q",
    )
    assert result.exit_code == 0, result.output
    area = {r["method"]: r["area_fraction"] for r in read_json(out / "results.json", BENCH_RESULTS)["results"]}
    assert abs(area["none-or-all"] - 0.1) <= 0.005 and abs(area["random"] - 0.1) <= 0.005
    assert abs(area["none-or-all"] - area["random"]) <= 0.005


def test_the_doubling_check_pairs_seeds_across_schedules() -> None:
    from crowdtk.experiment.results import schedule_change

    short = aggregate(dict([_row("full", [16.0, 17.0, 18.0]), _row("random", [19.0, 20.0, 21.0]), _row("mdc", [19.0])]))
    long = aggregate(
        dict([_row("full", [15.0, 16.1, 16.9]), _row("random", [19.5, 19.6, 21.2]), _row("max", [19.0, 19.0])])
    )
    rows = {r["method"]: r for r in schedule_change(short, long)}
    assert set(rows) == {"full"} | {"random"}  # mdc and max ran under one schedule only
    full, random = rows["full"], rows["random"]
    assert (
        full["change"] == pytest.approx(-1.0) and full["ci_high"] < 0 and full["converged"] is False
    )  # still improving
    assert (
        random["change"] == pytest.approx(0.1)
        and random["ci_low"] < 0 < random["ci_high"]
        and random["converged"] is True
    )
