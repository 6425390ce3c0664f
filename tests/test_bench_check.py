"""`crowdtk bench --check BASELINE.json`: the benchmark gate (the comparison, the baseline's refusals, the command's
exit codes)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import pytest
from conftest import QUICK_BENCH, assert_clean_failure, bench_on_synth, run

from crowdtk.errors import CrowdtkError
from crowdtk.experiment import Schedule, aggregate, bench_runs, compare, data_digest, read_baseline
from crowdtk.formats import BENCH_CHECK, BENCH_RESULTS, DEMO_REPORT, FORMAT_VERSIONS, read_json


def _results(**maes: list[float]) -> list[dict]:
    """Aggregated results (as in results.json) of methods at a 10% budget on strips: {method: per-seed MAEs}."""
    rows = {
        (m.replace("_", "+"), 0.1, "strip"): [
            {
                "seed": s,
                "mae": v,
                "rmse": v,
                "heads_labeled": 1,
                "images_labeled": 1,
                "heads_supervised_fraction": 1.0,
                "area_fraction": 0.1,
                "wall_s": 1.0,
            }
            for s, v in enumerate(values)
        ]
        for m, values in maes.items()
    }
    return aggregate(rows)


def _status(check: dict) -> dict[str, str]:
    return {r["method"]: r["status"] for r in check["comparisons"]}


def test_a_regression_beyond_the_tolerance_and_the_spread_fails() -> None:
    check = compare(
        _results(mdc=[10.0, 10.2]), _results(mdc=[11.0, 11.2]), 0.05
    )  # +1.0 against 5% (0.51) and a spread of 0.28
    assert not check["passed"] and check["regressions"] == 1
    row = check["comparisons"][0]
    assert row["status"] == "regressed" and row["mae_change"] == pytest.approx(1.0)
    assert row["relative_change"] == pytest.approx(1.0 / 10.1) and row["spread"] == pytest.approx(0.2828, abs=1e-4)
    assert row["allowed"] == pytest.approx(0.505) and row["baseline"]["seeds"] == [0, 1]


def test_growth_within_the_spread_or_the_tolerance_passes() -> None:
    # +1.0 is 10% of the baseline, beyond the tolerance, but the seeds spread by 1.41 + 1.41.
    within_spread = compare(_results(mdc=[9.0, 11.0]), _results(mdc=[10.0, 12.0]), 0.05)
    assert within_spread["passed"] and _status(within_spread) == {"mdc": "ok"}
    # +0.4 is beyond the spread (0.28) but within 5% of 10.1.
    within_tolerance = compare(_results(mdc=[10.0, 10.2]), _results(mdc=[10.4, 10.6]), 0.05)
    assert within_tolerance["passed"] and _status(within_tolerance) == {"mdc": "ok"}
    # One seed has no spread: the tolerance alone decides, and both must be exceeded.
    assert not compare(_results(mdc=[10.0]), _results(mdc=[10.6]), 0.05)["passed"]
    assert compare(_results(mdc=[10.0]), _results(mdc=[10.6]), 0.1)["passed"]


def test_new_and_not_run_methods_are_reported_not_failed() -> None:
    check = compare(_results(random=[10.0], max=[12.0]), _results(random=[10.0], mdc_cap=[9.0]), 0.05)
    assert check["passed"] and check["regressions"] == 0
    assert _status(check) == {"random": "ok", "mdc+cap": "new", "max": "not run"}
    new = next(r for r in check["comparisons"] if r["status"] == "new")
    assert new["baseline"] is None and new["mae_change"] is None and new["run"]["mean"] == 9.0
    # Much better is reported too (time for a new baseline), not failed; a non-finite MAE is a regression.
    assert _status(compare(_results(mdc=[10.0]), _results(mdc=[5.0]), 0.05)) == {"mdc": "improved"}
    broken = compare(_results(mdc=[10.0]), _results(mdc=[float("nan")]), 0.05)
    assert not broken["passed"] and broken["comparisons"][0]["run"]["mean"] is None
    # The key is (method, budget, shape): the same method at another budget is another row.
    other = compare(_results(mdc=[10.0]), [{**_results(mdc=[99.0])[0], "budget": 0.2}], 0.05)
    assert other["passed"] and sorted(r["status"] for r in other["comparisons"]) == ["new", "not run"]


def _baseline(path: Path, settings: dict, results: Sequence[object], **header) -> Path:
    """A results file holding ``results`` as given, well-formed or not."""
    doc = {
        "format": BENCH_RESULTS,
        "format_version": 1,
        "crowdtk_version": "0",
        "command": "bench",
        "params": {},
        "seed": None,
        "created": "2026-01-01T00:00:00+00:00",
        **header,
        "settings": settings,
        "results": results,
    }
    path.write_text(json.dumps(doc))
    return path


def test_the_baseline_is_refused_unless_made_with_the_same_settings_on_the_same_data(tmp_path: Path) -> None:
    settings = {
        **asdict(Schedule(steps=2)),
        "train_sha256": "a",
        "test_sha256": "b",
        "train_data_sha256": "c",
        "test_data_sha256": "d",
    }
    results = _results(mdc=[10.0])
    assert read_baseline(_baseline(tmp_path / "same.json", settings, results), settings).results == results
    # Another manifest file of the same data (written at another time, or with other paths) is the same data.
    assert read_baseline(_baseline(tmp_path / "rewritten.json", {**settings, "train_sha256": "x"}, results), settings)
    for changed, named in (
        ({"steps": 20}, "steps differ"),
        ({"steps": 20, "lr": 1.0}, "lr, steps differ"),
        ({"cpu_bf16": True}, "cpu_bf16 differ"),
        ({"test_data_sha256": "other"}, "test_data_sha256 differ"),
        ({"extra": 1}, "extra differ"),
    ):
        with pytest.raises(CrowdtkError, match=f"other settings or data \\({named}\\)"):
            read_baseline(_baseline(tmp_path / "other.json", {**settings, **changed}, results), settings)
    # A baseline from before the data digests: its manifest digests must match; one from before strip_frac: the default.
    old = {k: v for k, v in settings.items() if k not in ("train_data_sha256", "test_data_sha256", "strip_frac")}
    assert read_baseline(_baseline(tmp_path / "old.json", old, results), settings)
    with pytest.raises(CrowdtkError, match=r"\(train_sha256 differ\)"):
        read_baseline(_baseline(tmp_path / "old.json", {**old, "train_sha256": "x"}, results), settings)
    # Another format, a newer version, or no results.
    demo = tmp_path / "report.json"
    demo.write_text(json.dumps({"format": DEMO_REPORT, "format_version": 1, "methods": {}}))
    with pytest.raises(CrowdtkError, match="is a 'demo-report' artifact, expected 'bench-results'"):
        read_baseline(demo, settings)
    newer = FORMAT_VERSIONS[BENCH_RESULTS] + 1
    with pytest.raises(CrowdtkError, match=f"version {newer} is newer"):
        read_baseline(_baseline(tmp_path / "newer.json", settings, results, format_version=newer), settings)
    with pytest.raises(CrowdtkError, match="no settings or results"):
        read_baseline(_baseline(tmp_path / "empty.json", settings, [{"method": "mdc"}]), settings)


def test_the_data_digest_covers_the_data_not_the_manifest_file(tiny_data: Path, tmp_path: Path) -> None:
    train = tiny_data / "data" / "train"
    lines = (train / "manifest.jsonl").read_text().splitlines()
    header, records = json.loads(lines[0]), [json.loads(line) for line in lines[1:]]
    # The same data, listed by a manifest of another time with absolute paths, elsewhere.
    absolute = [{**r, "image": str(train / r["image"]), "points": str(train / r["points"])} for r in records]
    moved = tmp_path / "moved.jsonl"
    moved.write_text(
        "\n".join(json.dumps(x) for x in [{**header, "created": "2030-01-01T00:00:00+00:00"}, *absolute]) + "\n"
    )
    assert data_digest(moved) == data_digest(train / "manifest.jsonl")
    # Other points for one image (the same count), or another order, are other data.
    points = tmp_path / "points.txt"
    shutil.copy(absolute[0]["points"], points)
    points.write_text(points.read_text() + "\n")
    relabeled = tmp_path / "relabeled.jsonl"
    relabeled.write_text(
        "\n".join(json.dumps(x) for x in [header, {**absolute[0], "points": str(points)}, *absolute[1:]]) + "\n"
    )
    assert data_digest(relabeled) != data_digest(moved)
    reordered = tmp_path / "reordered.jsonl"
    reordered.write_text("\n".join(json.dumps(x) for x in [header, *absolute[::-1]]) + "\n")
    assert data_digest(reordered) != data_digest(moved)


def test_tolerance_needs_check(tmp_path: Path) -> None:
    result = run("bench", "--train", tmp_path, "--test", tmp_path, "-o", tmp_path / "b", "--tolerance", "0.1")
    assert_clean_failure(result, "--tolerance without --check", tmp_path / "b", code=2)


def test_bench_gate_passes_on_its_own_results_and_fails_on_a_better_baseline(tiny_data: Path) -> None:
    out = tiny_data / "gate"
    args = [*bench_on_synth(tiny_data, out), *QUICK_BENCH, "--methods", "none-or-all", "--seeds", "1", "--no-cpu-bf16"]
    first = run(*args)
    assert first.exit_code == 0, first.output
    assert not (out / "check.json").exists()
    doc = read_json(out / "results.json", BENCH_RESULTS)
    assert {"train_data_sha256", "test_data_sha256", "train_sha256", "steps"} <= doc["settings"].keys()
    baseline = tiny_data / "baseline.json"
    shutil.copy(out / "results.json", baseline)

    # (a) The same bench against its own results passes (the runs are reused: the same numbers).
    same = run(*args, "--check", baseline)
    assert same.exit_code == 0, same.output
    check = read_json(out / "check.json", BENCH_CHECK)
    assert check["passed"] and check["regressions"] == 0 and check["tolerance"] == 0.05
    assert check["baseline"] == str(baseline) and len(check["baseline_sha256"]) == 64
    assert [(r["method"], r["status"], r["mae_change"]) for r in check["comparisons"]] == [("none-or-all", "ok", 0.0)]
    assert "no MAE regressions against" in same.stderr

    # (b) A baseline whose MAE is edited down (and which holds a method this bench does not run) fails: exit 1,
    # the table of regressions on stderr, check.json written.
    edited = json.loads(baseline.read_text())
    mae = edited["results"][0]["mae"]["mean"]
    edited["results"][0]["mae"]["mean"] = mae / 2
    edited["results"].append({**edited["results"][0], "method": "full"})
    better = tiny_data / "better.json"
    better.write_text(json.dumps(edited))
    worse = run(*args, "--check", better, "--tolerance", "0.1", "-q")
    assert worse.exit_code == 1, worse.output
    assert f"| none-or-all at 10% | {mae / 2:.2f} | {mae:.2f} | +{mae / 2:.2f} (+100%) |" in worse.stderr
    assert "not run (only in the baseline): full at 10%" in worse.stderr
    assert f"crowdtk bench: error: 1 MAE regression(s) against {better}" in worse.stderr
    check = read_json(out / "check.json", BENCH_CHECK)
    assert not check["passed"] and check["tolerance"] == 0.1
    assert {r["method"]: r["status"] for r in check["comparisons"]} == {"none-or-all": "regressed", "full": "not run"}
    assert (
        read_json(out / "results.json", BENCH_RESULTS)["results"][0]["mae"]["mean"] == mae
    )  # the run's own results are kept

    # A baseline made with other settings is refused before anything runs, naming the keys.
    edited["settings"]["steps"] = 20
    other = tiny_data / "other.json"
    other.write_text(json.dumps(edited))
    (out / "check.json").unlink()
    refused = run(*args, "--check", other)
    assert_clean_failure(refused, "a baseline made with other settings or data (steps differ)")
    assert not (out / "check.json").exists() and "+ crowdtk" not in refused.output


def test_a_baseline_that_cannot_gate_is_refused(tmp_path: Path) -> None:
    """A gate that compares nothing must not pass: a non-finite MAE in the baseline (compared with it, any run was
    "improved"), a baseline without results ("0 compared"), one listing a result twice, and one holding none of the
    methods and budgets the bench runs are refused, each naming the file and what is wrong."""
    settings = {**asdict(Schedule(steps=2)), "train_data_sha256": "c", "test_data_sha256": "d"}
    good = _results(mdc=[10.0, 11.0])[0]
    for mean, std in ((float("nan"), 0.5), (float("inf"), 0.5), (10.0, float("nan")), (10.0, float("-inf"))):
        path = _baseline(tmp_path / "nan.json", settings, [{**good, "mae": {"mean": mean, "std": std}}])
        with pytest.raises(
            CrowdtkError, match=r"nan.json: mdc at budget 0.1 has a non-finite MAE \(mean .*, std .*\), which no run"
        ):
            read_baseline(path, settings)
    with pytest.raises(CrowdtkError, match="empty.json: a baseline with no results"):
        read_baseline(_baseline(tmp_path / "empty.json", settings, []), settings)
    with pytest.raises(CrowdtkError, match="twice.json: mdc at budget 0.1 is listed twice"):
        read_baseline(_baseline(tmp_path / "twice.json", settings, [good, good]), settings)
    with pytest.raises(CrowdtkError, match=r"setting.json: non-finite settings \(lr\)"):
        read_baseline(
            _baseline(tmp_path / "setting.json", {**settings, "lr": float("nan")}, [good]),
            {**settings, "lr": float("nan")},
        )
    for broken in (
        {**good, "seeds": []},
        {**good, "budget": "0.1"},
        {**good, "mae": {"mean": True, "std": 0.0}},
        ["mdc"],
    ):
        with pytest.raises(
            CrowdtkError, match=r"broken.json: no settings or results in the form `crowdtk bench` writes \(result 1: "
        ):
            read_baseline(_baseline(tmp_path / "broken.json", settings, [broken]), settings)
    # The bench's own runs (planned) must meet the baseline at least once.
    path = _baseline(tmp_path / "other.json", settings, [good])
    assert read_baseline(path, settings, bench_runs([0.1], ["random", "mdc"], [], 2)).results == [good]
    with pytest.raises(
        CrowdtkError,
        match=r"other.json: the baseline holds none of the methods and budgets this bench runs "
        r"\(it holds mdc at budget 0.1\)",
    ):
        read_baseline(path, settings, bench_runs([0.2], ["mdc"], [], 1))
    with pytest.raises(CrowdtkError, match="none of the methods and budgets"):
        read_baseline(path, settings, bench_runs([0.1], ["random"], ["block"], 1))


@pytest.mark.parametrize("kind", ["nan", "empty"])
def test_bench_check_refuses_a_baseline_that_cannot_gate_before_any_step(
    kind: str, tiny_data: Path, tmp_path: Path
) -> None:
    baseline = _baseline(
        tmp_path / "baseline.json",
        {},
        [] if kind == "empty" else [{**_results(mdc=[10.0])[0], "mae": {"mean": float("nan"), "std": 0.0}}],
    )
    out = tmp_path / "b"
    result = run(
        *bench_on_synth(tiny_data, out),
        "--scale",
        "1",
        "--methods",
        "mdc",
        "--seeds",
        "1",
        "--no-cpu-bf16",
        "--check",
        baseline,
    )
    assert_clean_failure(
        result,
        f"{baseline}: "
        + ("a baseline with no results" if kind == "empty" else "mdc at budget 0.1 has a non-finite MAE"),
    )
    assert (
        "+ crowdtk" not in result.output and not (out / "check.json").exists() and not (out / "results.json").exists()
    )
