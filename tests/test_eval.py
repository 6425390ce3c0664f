"""`crowdtk eval`: MAE, RMSE and GAME of a counter on a manifest (checked by hand on a constant counter), the per-image
CSV."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os

import numpy as np
import pytest
import torch
from conftest import assert_clean_failure, constant_counter, run, write_manifest

from crowdtk.checkpoint import load_tensors
from crowdtk.data import read_points
from crowdtk.errors import CrowdtkError
from crowdtk.formats import read_manifest


def test_eval_prints_a_summary_and_writes_the_per_image_csv(strip_pool, warm_ckpt, tmp_path):
    csv_path = tmp_path / "per_image.csv"
    result = run("eval", warm_ckpt, strip_pool["manifest"], "--json", "--csv", csv_path, "-q")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["n_images"] == 6 and set(summary["game"]) == {"1", "2", "3"}
    rows = csv_path.read_text().splitlines()
    assert rows[0].startswith("image,true_count,predicted_count,error") and len(rows) == 7
    # the summary is the per-image rows' errors averaged (the CSV rounds to 3 decimals)
    table = list(csv.DictReader(rows))
    _, entries = read_manifest(strip_pool["manifest"])
    assert [int(r["true_count"]) for r in table] == [e.count for e in entries] == [6, 10, 14, 18, 22, 26]
    errors = np.array([float(r["predicted_count"]) - int(r["true_count"]) for r in table])
    np.testing.assert_allclose(errors, [float(r["error"]) for r in table], atol=2e-3)
    assert summary["mae"] == pytest.approx(np.abs(errors).mean(), abs=2e-3)
    assert summary["rmse"] == pytest.approx(np.sqrt((errors**2).mean()), abs=2e-3)
    assert summary["game"]["1"] == pytest.approx(np.mean([float(r["game1"]) for r in table]), abs=2e-3)


def test_mae_rmse_and_game_by_hand_on_a_constant_counter(strip_pool, warm_ckpt, tmp_path):
    """A counter whose every output cell is 0.25 predicts 60 × 0.25 = 15 heads on each 80×48 image
    (6 × 10 cells), against true counts 6, 10, …, 26: errors 9, 5, 1, −3, −7, −11."""
    constant = constant_counter(warm_ckpt, tmp_path / "constant.safetensors", 0.25)
    result = run("eval", constant, strip_pool["manifest"], "--json", "-q")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["n_images"] == 6
    assert summary["mae"] == pytest.approx((9 + 5 + 1 + 3 + 7 + 11) / 6, abs=1e-4)
    assert summary["rmse"] == pytest.approx(math.sqrt((81 + 25 + 1 + 9 + 49 + 121) / 6), abs=1e-4)
    # GAME(1): each quarter (40×24 px) holds 15 of the cells, so predicts 3.75 heads
    game1 = []
    for entry in read_manifest(strip_pool["manifest"])[1]:
        points = read_points(entry.points)
        left, top = points[:, 0] < 40, points[:, 1] < 24
        quarters = [(left & top).sum(), (~left & top).sum(), (left & ~top).sum(), (~left & ~top).sum()]
        game1.append(sum(abs(3.75 - q) for q in quarters))
    assert summary["game"]["1"] == pytest.approx(np.mean(game1), abs=1e-4)


def test_pickle_checkpoints_are_refused_and_never_run(strip_pool, tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.safetensors"
    torch.save({"x": Evil()}, bad)
    with pytest.raises(CrowdtkError, match="pickle-based"):
        load_tensors(bad)
    result = run("eval", bad, strip_pool["manifest"], "--json")
    assert result.exit_code == 1 and "pickle-based" in result.stderr
    assert not marker.exists()


def test_nae_levels_and_localization_agree_with_the_per_image_csv(strip_pool, warm_ckpt, tmp_path):
    _, entries = read_manifest(strip_pool["manifest"])
    levelled = [
        dataclasses.replace(e, attributes={"scene_level": i % 2, "weather": "rain" if i < 2 else "none"})
        for i, e in enumerate(entries)
    ]
    manifest = write_manifest(tmp_path / "levels.jsonl", levelled)
    csv_path = tmp_path / "per_image.csv"
    # A counter predicting 0.25 heads per output cell: 15 heads spread evenly over each image, 6 to 26 true.
    constant = constant_counter(warm_ckpt, tmp_path / "constant.safetensors", 0.25)
    result = run(
        "eval", constant, manifest, "--json", "--csv", csv_path, "--localization", "4,8", "--localization", "16", "-q"
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    table = list(csv.DictReader(csv_path.read_text().splitlines()))
    true = np.array([int(r["true_count"]) for r in table])
    predicted = np.array([float(r["predicted_count"]) for r in table])
    assert (true > 0).all()
    assert summary["nae"] == pytest.approx(np.mean(np.abs(predicted - true) / true), abs=1e-3)
    assert [float(r["relative_error"]) for r in table] == pytest.approx(np.abs(predicted - true) / true, abs=1e-3)
    # MAE per level: the CSV's rows grouped by their level columns
    errors = np.abs(predicted - true)
    for name in ("scene_level", "weather"):
        column = np.array([r[name] for r in table])
        levels = summary["levels"][name]
        assert set(levels["mae"]) == set(column)
        for value, mae in levels["mae"].items():
            assert mae == pytest.approx(errors[column == value].mean(), abs=2e-3)
        assert levels["mean_mae"] == pytest.approx(np.mean(list(levels["mae"].values())))
    # localization: the CSV's matched heads over its predicted and true heads, radius by radius
    assert list(summary["localization"]) == ["4", "8", "16"]
    points = np.array([int(r["predicted_points"]) for r in table])
    assert (points == 15).all() and list(predicted) == pytest.approx([15.0] * 6, abs=1e-3)
    for radius, scores in summary["localization"].items():
        matched = np.array([int(r[f"matched_{radius}px"]) for r in table])
        assert (matched <= np.minimum(points, true)).all()
        assert scores["precision"] == pytest.approx(matched.sum() / points.sum())
        assert scores["recall"] == pytest.approx(matched.sum() / true.sum())
        p, r = scores["precision"], scores["recall"]
        assert scores["f1"] == pytest.approx(2 * p * r / (p + r) if p + r else 0.0)
    # the printed table says the same
    table_text = run("eval", constant, manifest, "--localization", "4,8,16", "-q").stdout
    assert f"NAE       {summary['nae']:.3f}" in table_text
    assert "MAE by scene_level (mean of the levels: " in table_text and "MAE by weather" in table_text
    assert f"8 px      {summary['localization']['8']['precision']:>10.3f}" in table_text


def test_images_without_points_are_refused(strip_pool, warm_ckpt, tmp_path):
    _, entries = read_manifest(strip_pool["manifest"])
    unlabeled = [dataclasses.replace(e, points=None, count=0) if i >= 4 else e for i, e in enumerate(entries)]
    manifest = write_manifest(tmp_path / "unlabeled.jsonl", unlabeled)
    for extra in ((), ("--skip-bad",)):
        result = run("eval", warm_ckpt, manifest, "--json", *extra)
        assert_clean_failure(result, "2 of 6 image(s) have no head points (first: 'im4')")
        assert "crowdtk count" in result.stderr and result.stdout == ""


@pytest.mark.parametrize("radius", ["0", "-4", "abc", "4,,8", "nan"])
def test_a_radius_that_is_not_one_is_a_usage_error(strip_pool, warm_ckpt, radius):
    result = run("eval", warm_ckpt, strip_pool["manifest"], "--localization", radius)
    assert_clean_failure(result, "--localization", code=2)
