"""The benchmark gate of ``bench --check``: this run's mean MAE per (method, budget, shape) against a
stored results.json (the baseline), made with the same settings on the same data.

A method regresses when its mean MAE grows by more than the tolerance (relative to the baseline's
mean) and by more than the combined seed spread (the baseline's std plus this run's): the gate
fails on a difference the seeds cannot explain, and not on one that is small however it came.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crowdtk.errors import CrowdtkError
from crowdtk.experiment.folder import LATER_SETTINGS
from crowdtk.experiment.plan import Run
from crowdtk.files import file_digest
from crowdtk.formats import BENCH_RESULTS, FORMAT_VERSIONS, Provenance, bench_check_header, read_json, write_json

DEFAULT_TOLERANCE = 0.05

# The digests of the manifest files change with their header's creation time and (index) their absolute
# paths, so a fresh folder on the same data never matches them; the data digests cover what the runs see.
FILE_DIGESTS = ("train_sha256", "test_sha256")
DATA_DIGESTS = ("train_data_sha256", "test_data_sha256")
_REMAKE = "make the baseline with this crowdtk: crowdtk bench … -o DIR, then copy DIR/results.json"


def differing_settings(baseline: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """The settings keys whose values differ. Settings added later count as their default where either
    side lacks them; the data are compared by their data digests when the baseline has them,
    else by the manifest files' digests."""
    before, now = {**LATER_SETTINGS, **baseline}, {**LATER_SETTINGS, **settings}
    skip = set(FILE_DIGESTS) if all(k in before for k in DATA_DIGESTS) else set(DATA_DIGESTS)
    return sorted(k for k in (before.keys() | now.keys()) - skip if before.get(k) != now.get(k))


@dataclass(frozen=True)
class Baseline:
    path: Path
    sha256: str
    results: list[dict[str, Any]]


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _entry_problem(r: Any) -> str | None:
    """What makes ``r`` no entry of the results `crowdtk bench` writes (None: it is one)."""
    if not isinstance(r, dict) or not all(k in r for k in ("method", "budget", "shape", "seeds", "mae")):
        return "an entry without method, budget, shape, seeds and mae"
    if not isinstance(r["method"], str) or not isinstance(r["shape"], str) or not _number(r["budget"]):
        return "an entry whose method, budget or shape is not what bench writes"
    seeds, mae = r["seeds"], r["mae"]
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        return f"{_key_name(r)}: seeds is not a list of seed numbers"
    if not isinstance(mae, dict) or not all(_number(mae.get(k)) for k in ("mean", "std")):
        return f"{_key_name(r)}: its MAE has no numeric mean and std"
    return None


def _key_name(r: dict[str, Any]) -> str:
    return f"{r['method']} at budget {r['budget']:g}" + ("" if r["shape"] == "strip" else f" ({r['shape']}s)")


def _non_finite(value: Any, where: str = "") -> list[str]:
    """The places (dotted keys) of the non-finite numbers in a JSON value."""
    if isinstance(value, float) and not math.isfinite(value):
        return [where or "the value"]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _non_finite(v, f"{where}.{k}" if where else str(k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _non_finite(v, f"{where}[{i}]")]
    return []


def read_baseline(path: Path, settings: dict[str, Any], planned: Iterable[Run] = ()) -> Baseline:
    """The baseline's results, refused unless it is a results.json of this version made with ``settings``, with
    results, every one of them finite, and (``planned``: this bench's runs) at least one (method, budget, shape)
    that the bench runs. Each refusal closes a way for the gate to pass without comparing anything: a NaN
    baseline MAE made any run "improved", and an empty baseline passed with "0 compared"."""
    doc = read_json(path, BENCH_RESULTS)  # another format, or a newer version, is refused here
    newest = FORMAT_VERSIONS[BENCH_RESULTS]
    if doc["format_version"] != newest:
        raise CrowdtkError(
            f"{path}: a '{BENCH_RESULTS}' version {doc['format_version']} baseline; the gate compares version {newest}",
            _REMAKE,
        )
    before, results = doc.get("settings"), doc.get("results")
    if not isinstance(before, dict) or not isinstance(results, list):
        raise CrowdtkError(f"{path}: no settings or results in the form `crowdtk bench` writes", _REMAKE)
    if not results:
        raise CrowdtkError(f"{path}: a baseline with no results, which no run can be compared with", _REMAKE)
    for n, r in enumerate(results, start=1):
        if (problem := _entry_problem(r)) is not None:
            raise CrowdtkError(
                f"{path}: no settings or results in the form `crowdtk bench` writes (result {n}: {problem})", _REMAKE
            )
    for r in results:
        if not (math.isfinite(r["mae"]["mean"]) and math.isfinite(r["mae"]["std"])):
            raise CrowdtkError(
                f"{path}: {_key_name(r)} has a non-finite MAE (mean {r['mae']['mean']}, std {r['mae']['std']}), "
                "which no run can be compared with",
                "make the baseline from a bench whose methods all have a finite MAE",
            )
    if bad := _non_finite(before):
        raise CrowdtkError(f"{path}: non-finite settings ({', '.join(bad)})", _REMAKE)
    keys = [(r["method"], r["budget"], r["shape"]) for r in results]
    if twice := next((r for r, k in zip(results, keys) if keys.count(k) > 1), None):
        raise CrowdtkError(f"{path}: {_key_name(twice)} is listed twice in the results", _REMAKE)
    changed = differing_settings(before, settings)
    if changed:
        raise CrowdtkError(
            f"{path}: a baseline made with other settings or data ({', '.join(changed)} differ)",
            "run the bench with the baseline's settings on its data, or make a new baseline from this run",
        )
    runs = {(run.method, run.budget, run.shape) for run in planned}
    if runs and not runs & set(keys):
        held = ", ".join(sorted(_key_name(r) for r in results))
        raise CrowdtkError(
            f"{path}: the baseline holds none of the methods and budgets this bench runs (it holds {held})",
            "run the bench with the baseline's --methods and --budgets, or make a new baseline from this run",
        )
    return Baseline(path, file_digest(path), results)


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _side(r: dict[str, Any] | None) -> dict[str, Any] | None:
    return (
        None
        if r is None
        else {"mean": _finite(r["mae"]["mean"]), "std": _finite(r["mae"]["std"]) or 0.0, "seeds": r["seeds"]}
    )


def _status(
    base: dict[str, Any] | None, run: dict[str, Any] | None, change: float | None, allowed: float | None
) -> str:
    if base is None:
        return "new"
    if run is None:
        return "not run"
    if change is None:  # a non-finite mean on one side: worse when it is this run's
        return (
            "ok" if run["mean"] is None and base["mean"] is None else "regressed" if run["mean"] is None else "improved"
        )
    assert allowed is not None  # set with change: both means are finite
    return "regressed" if change > allowed else "improved" if -change > allowed else "ok"


def compare(baseline: list[dict[str, Any]], results: list[dict[str, Any]], tolerance: float) -> dict[str, Any]:
    """check.json's body: every (method, budget, shape) of either side with its status (regressed, improved,
    ok, new: only in this run, not run: only in the baseline); ``passed`` unless one regressed."""
    before, now = ({(r["method"], r["budget"], r["shape"]): r for r in side} for side in (baseline, results))
    rows = []
    for k in [*now, *(k for k in before if k not in now)]:
        base, run = _side(before.get(k)), _side(now.get(k))
        spread = base["std"] + run["std"] if base is not None and run is not None else None
        change: float | None = None
        allowed: float | None = None
        relative: float | None = None
        if base is not None and run is not None and base["mean"] is not None and run["mean"] is not None:
            change = run["mean"] - base["mean"]
            allowed = max(tolerance * base["mean"], spread)
            relative = change / base["mean"] if base["mean"] else None
        rows.append(
            {
                "method": k[0],
                "budget": k[1],
                "shape": k[2],
                "status": _status(base, run, change, allowed),
                "baseline": base,
                "run": run,
                "mae_change": change,
                "relative_change": relative,
                "spread": spread,
                "allowed": allowed,
            }
        )
    regressions = sum(r["status"] == "regressed" for r in rows)
    return {"passed": regressions == 0, "regressions": regressions, "comparisons": rows}


def write_check(
    path: Path, baseline: Baseline, results: list[dict[str, Any]], tolerance: float | None, params: dict[str, Any]
) -> dict[str, Any]:
    """DIR/check.json (format bench-check; ``tolerance`` None: the default); returns what it holds."""
    tolerance = DEFAULT_TOLERANCE if tolerance is None else tolerance
    body = compare(baseline.results, results, tolerance)
    header = bench_check_header(
        Provenance("bench", params), baseline=str(baseline.path), baseline_sha256=baseline.sha256, tolerance=tolerance
    )
    write_json(path, header, body)
    return {**header, **body}


def _mae(side: dict[str, Any] | None) -> str:
    if side is None:
        return "–"
    mean = "non-finite" if side["mean"] is None else f"{side['mean']:.2f}"
    return mean + (f" ± {side['std']:.2f}" if len(side["seeds"]) > 1 else "")


def _name(r: dict[str, Any]) -> str:
    shape = "" if r["shape"] == "strip" else f" ({r['shape']}s)"
    return f"{r['method']}{shape} at {100 * r['budget']:g}%"


def check_report(check: dict[str, Any]) -> str:
    """For stderr: the table of regressions (or one line when there are none), then the methods
    that are new, not run, or better beyond the tolerance and the spread (``check``: check.json's content)."""
    baseline, tolerance = check["baseline"], check["tolerance"]
    regressed = [r for r in check["comparisons"] if r["status"] == "regressed"]
    if regressed:
        lines = [
            f"MAE regressions against {baseline} (growth beyond {100 * tolerance:g}% and the combined seed spread):",
            "",
            "| method | baseline MAE | this run | change | allowed growth |",
            "|---|---|---|---|---|",
        ]
        for r in regressed:
            change = (
                "–"
                if r["mae_change"] is None
                else f"{r['mae_change']:+.2f}"
                + (f" ({100 * r['relative_change']:+.0f}%)" if r["relative_change"] is not None else "")
            )
            allowed = "–" if r["allowed"] is None else f"{r['allowed']:.2f}"
            lines.append(f"| {_name(r)} | {_mae(r['baseline'])} | {_mae(r['run'])} | {change} | {allowed} |")
    else:
        compared = sum(r["status"] in ("ok", "improved") for r in check["comparisons"])
        lines = [
            f"no MAE regressions against {baseline}: {compared} compared "
            f"(tolerance {100 * tolerance:g}% and the seed spread)"
        ]
    for status, what in (
        ("improved", "better beyond the tolerance and the spread (a new baseline?)"),
        ("new", "new (not in the baseline)"),
        ("not run", "not run (only in the baseline)"),
    ):
        names = [_name(r) for r in check["comparisons"] if r["status"] == status]
        if names:
            lines.append(f"{what}: {', '.join(names)}")
    return "\n".join(lines)
