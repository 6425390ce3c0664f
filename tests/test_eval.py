"""`crowdtk eval`: MAE, RMSE and GAME of a counter on a manifest (checked by hand on a constant counter), the per-image CSV."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest
import torch
from conftest import run

from crowdtk.checkpoint import load_tensors, save_tensors
from crowdtk.data import read_points
from crowdtk.errors import CrowdtkError
from crowdtk.formats import read_manifest
from crowdtk.predict import load_counter


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
    header, tensors = load_tensors(warm_ckpt)
    scale = load_counter(warm_ckpt).density_scale
    tensors["output.weight"] = torch.zeros_like(tensors["output.weight"])
    tensors["output.bias"] = torch.full_like(tensors["output.bias"], 0.25 * scale)
    constant = tmp_path / "constant.safetensors"
    save_tensors(constant, tensors, header)
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
