"""benchmarks/campaign_rounds.py on a tiny generated pool: one row per round per arm, round 1 shared by every arm,
clicks that add up, pre-labeled clicks counted from the suggestions, and a rerun that runs no command."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from conftest import run

from crowdtk.campaign import Campaign, labeled_heads
from crowdtk.files import file_digest
from crowdtk.formats import read_labels, read_regions

ROUNDS = 3  # the longer campaign's rounds: enough for two pre-labeled rounds, fewer trainings than the default 5
# 10 images 160 px wide: a strip (10% of the width) is two 8-px cells, the warm-up round labels 2 images and each later
# round about 3 of the 8 left, so no round finds the pool used up.
BUDGET = 0.08
# Two optimizer steps for the final counters, one for the others, random weights: the loop, not the counts.
QUICK = ("--steps", "2", "--warmup-steps", "1", "--batch-size", "2", "--no-pretrained", "--device", "cpu")


def load_script() -> ModuleType:
    return importlib.import_module("benchmarks.campaign_rounds")


def measure(script: ModuleType, argv: list[str]) -> tuple[dict[str, Any], str]:
    """The script's rounds.json after a run, and what it printed on stderr (the crowdtk commands it ran)."""
    printed = io.StringIO()
    with contextlib.redirect_stderr(printed), contextlib.redirect_stdout(io.StringIO()):
        script.main(argv)
    out = Path(argv[argv.index("--out") + 1])
    return json.loads((out / "rounds.json").read_text()), printed.getvalue()


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("rounds")
    made = run("synth", "-o", root / "data", "--train", 10, "--test", 2, "--width", 160, "--height", 96, "-q")
    assert made.exit_code == 0, made.output
    out = root / "out"
    train, test = (root / "data" / split / "manifest.jsonl" for split in ("train", "test"))
    argv = [
        "--train",
        str(train),
        "--test",
        str(test),
        "--out",
        str(out),
        "--budget",
        str(BUDGET),
        "--rounds",
        str(ROUNDS),
    ]
    script = load_script()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CROWDTK_CACHE_DIR", str(tmp_path_factory.mktemp("crowdtk-cache")))
        record, printed = measure(script, [*argv, *QUICK])
    arms = record["arms"]
    return {"script": script, "argv": [*argv, *QUICK], "out": out, "record": record, "printed": printed, "arms": arms}


def rows_of(record: dict[str, Any], arm: str) -> list[dict[str, Any]]:
    return sorted((r for r in record["rows"] if r["arm"] == arm), key=lambda r: r["round"])


def test_one_row_per_round_per_arm(measured: dict[str, Any]) -> None:
    record, out = measured["record"], measured["out"]
    paper, many, prelabeled = measured["arms"]
    assert [len(rows_of(record, arm)) for arm in (paper, many, prelabeled)] == [2, ROUNDS, ROUNDS]
    assert [(r["arm"], r["round"]) for r in record["table"]] == [(r["arm"], r["round"]) for r in record["rows"]]
    table = (out / "rounds.md").read_text().splitlines()
    assert sum(line.startswith(f"| {paper} | ") for line in table) == 2
    assert sum(line.startswith(f"| {many} | ") for line in table) == ROUNDS
    assert sum(line.startswith(f"| {prelabeled} | ") for line in table) == ROUNDS
    assert (out / "rounds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The rounds spend the budget in steps, all of it by the last round of each campaign.
    for arm in (paper, many):
        areas = [r["area_fraction"] for r in rows_of(record, arm)]
        assert areas == sorted(areas) and abs(areas[-1] - BUDGET) < 0.02
    assert all(math.isfinite(r["mae"]) for r in record["rows"])


def test_round_one_is_the_same_in_every_arm(measured: dict[str, Any]) -> None:
    record, out = measured["record"], measured["out"]
    first = [rows_of(record, arm)[0] for arm in measured["arms"]]
    assert first[0]["clicks"] == first[0]["heads"] > 0
    assert len({(r["heads"], r["clicks"], r["cumulative_clicks"], r["mae"]) for r in first}) == 1
    assert first[2]["suggested"] is None  # no counter before round 1 suggests anything
    # Its counter was trained once: the longer campaign has the two-round one's round 1, and one eval ran for both.
    assert record["round_one_shared"] == {"0": True}
    paper, many = (Campaign.load(out / "seed-0" / f"rounds-{n}") for n in (2, ROUNDS))
    assert file_digest(paper.model(1)) == file_digest(many.model(1))
    evals = [line for line in measured["printed"].splitlines() if line.startswith("+ crowdtk eval ")]
    assert len(evals) == 2 + ROUNDS - 1
    assert all("--feature-cache " in line and "--device cpu" in line for line in evals)


def test_clicks_without_pre_labels_are_the_heads_each_round_labeled(measured: dict[str, Any]) -> None:
    record, out = measured["record"], measured["out"]
    paper, many, prelabeled = measured["arms"]
    for arm, rounds in ((paper, 2), (many, ROUNDS)):
        rows = rows_of(record, arm)
        c = Campaign.load(out / "seed-0" / f"rounds-{rounds}")
        assert sum(r["heads"] for r in rows) == labeled_heads(c.labels(rounds))
        assert [r["clicks"] for r in rows] == [r["heads"] for r in rows]
        assert [r["cumulative_clicks"] for r in rows] == list(np.cumsum([r["clicks"] for r in rows]))
    assert [r["heads"] for r in rows_of(record, prelabeled)] == [r["heads"] for r in rows_of(record, many)]


def suggest(package: Path, regions: Path, labels: Path, radius: float) -> tuple[int, int]:
    """Replace a Label Studio package's suggestions: half the true heads of each region (rounded up), 0.5 px off, and
    one point far from every head per task; (accepted, deleted) that must come out of the matching."""
    _, entries = read_regions(regions)
    heads_of = {e.id: e.points for e in read_labels(labels)[1]}
    tasks = json.loads((package / "tasks.json").read_text())
    accepted = deleted = 0
    for task in tasks:
        entry = next(e for e in entries if e.id == task["data"]["crowdtk_id"])
        points = heads_of.get(entry.id, np.zeros((0, 2)))
        inside = np.zeros(len(points), dtype=bool)
        for region in entry.regions:
            inside |= region.contains(points)
        kept = points[inside][: math.ceil(inside.sum() / 2)] + 0.5
        grid = np.stack(np.meshgrid(np.arange(entry.width), np.arange(entry.height)), -1).reshape(-1, 2)
        far = grid[
            np.min(np.hypot(*(grid[:, None] - points[None]).transpose(2, 0, 1)), axis=1, initial=1e9) > 3 * radius
        ]
        chosen = [*kept, *far[:1]]
        accepted, deleted = accepted + len(kept), deleted + len(far[:1])
        result = [r for r in task["predictions"][0]["result"] if r["type"] != "keypointlabels"]
        result += [
            {
                "type": "keypointlabels",
                "original_width": entry.width,
                "original_height": entry.height,
                "value": {"x": 100 * float(x) / entry.width, "y": 100 * float(y) / entry.height},
            }
            for x, y in chosen
        ]
        task["predictions"][0]["result"] = result
    (package / "tasks.json").write_text(json.dumps(tasks))
    return accepted, deleted


def test_pre_labeled_clicks_are_heads_plus_deleted_minus_accepted(measured: dict[str, Any]) -> None:
    out: Path = measured["out"]
    _, many, prelabeled = measured["arms"]
    c = Campaign.load(out / "seed-0" / f"rounds-{ROUNDS}")
    assert [r["suggested"] is None for r in rows_of(measured["record"], prelabeled)] == [True] + [False] * (ROUNDS - 1)
    # Suggestions whose matching is known: a rerun scores them again, and runs no crowdtk command (everything exists).
    expected = {
        k: suggest(out / "seed-0" / "prelabels" / f"round-{k}", c.regions(k), c.labels(k), 8.0)
        for k in range(2, ROUNDS + 1)
    }
    record, printed = measure(measured["script"], measured["argv"])
    assert "+ crowdtk" not in printed
    plain = {r["round"]: r for r in rows_of(record, many)}
    total = 0
    for r in rows_of(record, prelabeled):
        if r["round"] > 1:
            assert (r["accepted"], r["deleted"]) == expected[r["round"]]
            assert r["suggested"] == r["accepted"] + r["deleted"] and r["heads_in_regions"] == r["heads"]
            assert r["clicks"] == r["heads"] + r["deleted"] - r["accepted"]
        assert r["heads"] == plain[r["round"]]["heads"] and r["mae"] == plain[r["round"]]["mae"]
        total += r["clicks"]
        assert r["cumulative_clicks"] == total
    assert sum(a for a, _ in expected.values()) > 0 and sum(d for _, d in expected.values()) > 0
