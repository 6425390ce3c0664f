"""A head budget (select --budget-heads N --vectors V): the heads the vectors predict, not the area, decide when to
stop."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import REPO, assert_clean_failure, jsonl, pool, realistic_vectors, run, select_after, write_vectors

from crowdtk.formats import StripVectors, read_manifest, read_regions
from crowdtk.geometry import strip_edges
from crowdtk.selection import SelectConfig, image_keys, mdc_batch, select_regions

STRATEGIES = ("random", "max", "mdc")


def strip_data(entries, vectors: np.ndarray, counts: np.ndarray | None = None) -> StripVectors:
    """In-memory strip vectors of 1024-px images, 10 strips each (as write_vectors writes them)."""
    n, s, _ = vectors.shape
    edges = strip_edges(1024)
    return StripVectors(
        np.array([e.id for e in entries]),
        np.array([e.sha256 for e in entries]),
        np.repeat(np.arange(n), s).astype(np.int64),
        np.tile(edges[:-1], n).astype(np.int64),
        np.tile(edges[1:], n).astype(np.int64),
        vectors.reshape(n * s, -1).astype(np.float32),
        (vectors[:, :, 0] if counts is None else counts).reshape(-1).astype(np.float32),
    )


def cells_of(entry) -> list[int]:
    return [c for d in entry.details for c in d["cells"]]


def heads_in(entries) -> float:
    return sum(d["predicted_count"] for e in entries for d in e.details)


# --------------------------------------------------------------------------- the stopping rule


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("wanted", [7, 60, 333, 1000, 1800])
def test_expected_heads_are_within_one_strip_of_the_budget(strategy, wanted):
    entries = pool(40)
    vectors = realistic_vectors(40, seed=3)
    data = strip_data(entries, vectors)
    result = select_regions(entries, SelectConfig(budget_heads=wanted, strategy=strategy, seed=1), data)
    strip = float(data.counts.max())
    assert result.expected_heads == pytest.approx(heads_in(result.entries), abs=1e-3)
    # random and max add one strip's count a step: the stop is within half of it; MDC's step is its k+1 picks less its k
    assert abs(result.expected_heads - wanted) <= (strip / 2 if strategy != "mdc" else strip) + 1e-3
    assert result.notes == []
    shares = [len(cells_of(e)) for e in result.entries] + [0] * (40 - len(result.entries))
    assert max(shares) - min(shares) <= 1  # level by level: the same share of every image, one cell more on some


def test_the_stop_is_the_crossing_step_or_the_one_before_whichever_is_nearer():
    """Four images whose strips predict 10, 6 and 0 heads: max spends 10 per image, then 6 per image."""
    entries = pool(4)
    counts = np.zeros((4, 10))
    counts[:, 3], counts[:, 7] = 10.0, 6.0
    data = strip_data(entries, np.repeat(counts[:, :, None], 10, axis=2), counts)
    spent = {
        n: select_regions(entries, SelectConfig(budget_heads=n, strategy="max"), data).expected_heads
        for n in (20, 42, 43, 44, 46, 47)
    }
    # totals along the way: 10 20 30 40 | 46 52 58 64
    assert spent == {20: 20.0, 42: 40.0, 43: 46.0, 44: 46.0, 46: 46.0, 47: 46.0}  # 43: a tie takes the step


def test_strategies_pick_as_under_an_area_budget():
    """The budget only sets how many cells each image gets: max takes its largest counts, MDC its k-component picks."""
    entries = pool(30)
    vectors = realistic_vectors(30, seed=4)
    data = strip_data(entries, vectors)
    best = select_regions(entries, SelectConfig(budget_heads=900, strategy="max"), data)
    for e in best.entries:
        i = int(e.id[3:])
        assert sorted(cells_of(e)) == sorted(
            np.argsort(-vectors[i, :, 0].astype(np.float32), kind="stable")[: len(cells_of(e))].tolist()
        )
    mdc = select_regions(entries, SelectConfig(budget_heads=900, strategy="mdc", seed=2), data)
    assert {len(cells_of(e)) for e in mdc.entries} >= {2}
    for e in mdc.entries:
        i, k = int(e.id[3:]), len(cells_of(e))
        if k < 10:
            assert cells_of(e) == mdc_batch(vectors[i][None], k, image_keys(2, [e.id], "mdc")).strips[0].tolist()


def test_none_or_all_spends_whole_images_priced_by_their_strips():
    entries = pool(30)
    data = strip_data(entries, realistic_vectors(30, seed=6))
    per_image = data.counts.reshape(30, 10).sum(axis=1)
    result = select_regions(entries, SelectConfig(budget_heads=800, strategy="none-or-all", seed=5), data)
    assert all(len(e.regions) == 1 and e.regions[0].x1 == 1024 for e in result.entries)
    assert result.expected_heads == pytest.approx(sum(per_image[int(e.id[3:])] for e in result.entries), abs=1e-2)
    assert abs(result.expected_heads - 800) <= per_image.min() / 2 + 1e-3


def test_a_budget_beyond_the_pool_takes_everything_and_says_so():
    entries = pool(5)
    data = strip_data(entries, realistic_vectors(5))
    result = select_regions(entries, SelectConfig(budget_heads=1e6, strategy="mdc"), data)
    assert result.cells == 50 and result.expected_heads == pytest.approx(float(data.counts.sum()), rel=1e-5)
    assert len(result.notes) == 1 and "all are selected" in result.notes[0]


def test_the_head_order_follows_the_seed():
    entries = pool(25)
    data = strip_data(entries, realistic_vectors(25, seed=8))
    picks = [
        {e.id: cells_of(e) for e in select_regions(entries, SelectConfig(budget_heads=300, seed=s), data).entries}
        for s in (0, 0, 1)
    ]
    assert picks[0] == picks[1] != picks[2]


# --------------------------------------------------------------------------- the command


def test_header_records_the_head_budget_and_the_expected_heads(tmp_path, manifest_and_vectors):
    manifest, vectors = manifest_and_vectors(pool(20), realistic_vectors(20, seed=2))
    warm = tmp_path / "warm.jsonl"
    assert run("select", manifest, "--budget", "0.1", "--warmup-frac", "0.2", "-o", warm).exit_code == 0
    for strategy in STRATEGIES + ("none-or-all",):
        out = tmp_path / f"{strategy}.jsonl"
        result = select_after(warm, manifest, strategy, vectors, "--budget-heads", "250", "-o", out)
        assert result.exit_code == 0, result.output
        header, records = jsonl(out.read_text())
        assert header["budget"] is None and header["budget_heads"] == 250.0
        assert header["params"]["budget"] is None and header["params"]["budget_heads"] == 250.0
        expected = sum(d["predicted_count"] for r in records for d in r["regions"])
        assert header["expected_heads"] == pytest.approx(expected, abs=1e-3)
        assert abs(expected - 250) < 25  # the largest strip predicts about 30 heads
        assert "--budget-heads 250" in result.stderr and f"{expected:.0f} heads expected" in result.stderr
        assert not {r["id"] for r in records} & {e.id for e in read_regions(warm)[1]}  # the warm-up images are left out
    # an area budget's header has no head fields
    header, _ = jsonl(run("select", manifest, "--budget", "0.1", "--strategy", "max", "--vectors", vectors).stdout)
    assert "budget_heads" not in header and "expected_heads" not in header and "budget_heads" not in header["params"]


def test_import_oracle_reports_expected_and_actual_heads(strip_pool, tmp_path):
    manifest = strip_pool["manifest"]
    _, entries = read_manifest(manifest)
    rng = np.random.default_rng(0)
    vectors = write_vectors(tmp_path / "v.npz", manifest, entries, rng.gamma(2.0, 1.0, (len(entries), 10, 10)))
    regions = tmp_path / "r.jsonl"
    assert (
        run(
            "select", manifest, "--budget-heads", "30", "--strategy", "max", "--vectors", vectors, "-o", regions
        ).exit_code
        == 0
    )
    expected = jsonl(regions.read_text())[0]["expected_heads"]
    result = run("import", regions, "--oracle", manifest, "-o", tmp_path / "l.jsonl")
    assert result.exit_code == 0, result.output
    actual = sum(len(r["points"]) for r in jsonl((tmp_path / "l.jsonl").read_text())[1])
    assert (
        f"oracle labeled {actual} heads" in result.stderr
        and f"(the regions file expected {expected:.0f})" in result.stderr
    )
    # without a head budget the line is as before
    plain = tmp_path / "plain.jsonl"
    assert run("select", manifest, "--budget", "0.2", "-o", plain).exit_code == 0
    assert "expected" not in run("import", plain, "--oracle", manifest, "-o", tmp_path / "l2.jsonl").stderr


def test_usage_errors_exit_2(tmp_path, manifest_and_vectors):
    manifest, vectors = manifest_and_vectors(pool(3), realistic_vectors(3))
    out = tmp_path / "r.jsonl"
    assert_clean_failure(
        run("select", manifest, "--budget-heads", "100", "-o", out), "--budget-heads needs --vectors", out, code=2
    )
    assert_clean_failure(
        run("select", manifest, "--budget-heads", "100", "--budget", "0.1", "--vectors", vectors, "-o", out),
        "--budget and --budget-heads together",
        out,
        code=2,
    )


@pytest.mark.parametrize(
    "extra,names",
    [
        (["--budget-heads", "0"], "not a positive number"),
        (["--budget-heads", "nan"], "not a positive number"),
        (["--budget-heads", "-3"], "not a positive number"),
        (["--budget-heads", "50", "--warmup-frac", "0.2"], "--budget-heads with --warmup-frac"),
        (["--budget-heads", "50", "--shape", "band"], "--budget-heads with --shape band"),
    ],
)
def test_bad_head_budgets_are_refused(tmp_path, manifest_and_vectors, extra, names):
    manifest, vectors = manifest_and_vectors(pool(3), realistic_vectors(3))
    out = tmp_path / "r.jsonl"
    assert_clean_failure(run("select", manifest, "--vectors", vectors, *extra, "-o", out), names, out)


# --------------------------------------------------------------------------- real data: ShanghaiTech Part B


BENCH = REPO / "bench-out" / "partB"
WARMUP = BENCH / "runs" / "budget-0.1" / "seed-0" / "warmup"


@pytest.mark.usefixtures("part_b")  # skips where the real data set is absent
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_part_b_spends_within_5_percent_of_the_head_budget(strategy, tmp_path):
    """The issue's target on the bench's warm-up vectors, after the warm-up labels (as the bench's MDC round)."""
    manifest, vectors, labels = BENCH / "data" / "train.manifest.jsonl", WARMUP / "vectors.npz", WARMUP / "labels.jsonl"
    missing = [str(p) for p in (manifest, vectors, labels) if not p.exists()]
    if missing:
        pytest.skip(f"bench outputs absent (run 'crowdtk bench' on Part B first): {', '.join(missing)}")
    wanted = 2000
    regions = tmp_path / "r.jsonl"
    result = run(
        "select",
        manifest,
        "--budget-heads",
        wanted,
        "--strategy",
        strategy,
        "--vectors",
        vectors,
        "--exclude",
        labels,
        "--scale",
        "0.5",
        "--seed",
        "0",
        "-o",
        regions,
    )
    assert result.exit_code == 0, result.output
    header, records = jsonl(regions.read_text())
    assert abs(header["expected_heads"] - wanted) <= 0.05 * wanted
    warm_ids = {json.loads(line)["id"] for line in labels.read_text().splitlines()[1:]}
    assert records and not {r["id"] for r in records} & warm_ids
    imported = run("import", regions, "--oracle", manifest, "-o", tmp_path / "l.jsonl")
    assert imported.exit_code == 0, imported.output
    actual = sum(len(r["points"]) for r in jsonl((tmp_path / "l.jsonl").read_text())[1])
    assert f"oracle labeled {actual} heads" in imported.stderr and "the regions file expected" in imported.stderr
    assert (
        0.5 * wanted < actual < 1.5 * wanted
    )  # the warm-up counter's predictions are off by 15-20% on Part B, not by half
