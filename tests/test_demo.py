"""`crowdtk demo`: a generated data set taken through Algorithm 1 for each method and seed, with the report and its
pictures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import QUICK_ROUNDS, run

from crowdtk.formats import DEMO_REPORT, read_json, read_regions


def test_demo_writes_the_report_and_pictures(tiny_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from crowdtk import pictures

    drawn = []
    show_regions = pictures.show_regions

    def recording_show_regions(*a, **k):
        drawn.append(show_regions(*a, **k))
        return drawn[-1]

    monkeypatch.setattr(pictures, "show_regions", recording_show_regions)
    out = tiny_data / "demo"
    result = run(
        "demo",
        "-o",
        out,
        *QUICK_ROUNDS,
        "--methods",
        "none-or-all,mdc,mdc+cap",
        "--synth-train",
        "12",
        "--synth-test",
        "4",
        "--seeds",
        "2",
    )
    assert result.exit_code == 0, result.output
    report = read_json(out / "report.json", DEMO_REPORT)
    assert set(report["methods"]) == {"none-or-all", "mdc", "mdc+cap"} and report["wall_s"] > 0
    for name, method in report["methods"].items():
        assert {"mae", "rmse", "area_fraction", "heads_labeled"} <= set(method)
        assert 0.05 < method["area_fraction"] < 0.2
        assert method["seeds"] == [0, 1]
        # mean and sample standard deviation of the two seeds' test MAE: for two values, |a - b| / sqrt(2)
        a, b = (
            json.loads((out / "runs" / "budget-0.1" / f"seed-{s}" / name / "eval.json").read_text())["mae"]
            for s in (0, 1)
        )
        assert method["mae"] == pytest.approx((a + b) / 2) and method["mae_std"] == pytest.approx(
            abs(a - b) / math.sqrt(2)
        )
    assert {c["worse"] for c in report["claims"]} == {"none-or-all", "mdc"}
    assert (out / "runs" / "budget-0.1" / "seed-1" / "mdc+cap" / "eval.json").exists()
    assert "+ crowdtk synth" in result.output and "+ crowdtk select" in result.output
    warmup_ids = {
        e.id for e in read_regions(out / "runs" / "budget-0.1" / "seed-0" / "warmup" / "regions.jsonl")[1] if e.regions
    }
    mdc_ids = [
        e.id
        for e in read_regions(out / "runs" / "budget-0.1" / "seed-0" / "select-mdc" / "regions.jsonl")[1]
        if e.regions
    ]
    assert (
        drawn == [mdc_ids[0]] and drawn[0] not in warmup_ids
    )  # the picture shows a strip MDC chose, not a warm-up one
    for picture in ("regions.png", "prediction.png", "affinity.png"):  # affinity.png needs mdc+cap, listed after mdc
        assert (out / picture).stat().st_size > 1000
    assert "mdc+cap" in result.stdout
    other = run("demo", "-o", out, "--steps", "3", "--synth-train", "12", "--synth-test", "4")
    assert other.exit_code == 1 and "other settings" in other.output  # finished steps of other settings are not reused
