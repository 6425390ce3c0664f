"""Region selection: budget arithmetic, warm-up and exclusion, RANDOM / NONE-OR-ALL / MAX / MDC, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import (
    assert_clean_failure,
    jsonl,
    pool,
    realistic_vectors,
    run,
    select_after,
    write_manifest,
    write_vectors,
)

from crowdtk.formats import StripVectors, read_regions
from crowdtk.geometry import strip_edges
from crowdtk.selection import SelectConfig, cell_grid, image_keys, mdc_batch, select_regions


def strips_per_image(entries) -> dict[str, list[int]]:
    return {e.id: [c for d in e.details for c in d["cells"]] for e in entries}


# --------------------------------------------------------------------------- budget arithmetic


@pytest.mark.parametrize(
    "budget,n_images,expected", [(0.15, 7, 11), (0.1, 7, 7), (0.05, 7, 4), (0.33, 3, 10), (0.95, 3, 29), (1.0, 4, 40)]
)
def test_fractional_budgets_are_spread_exactly(budget, n_images, expected):
    entries = pool(n_images)
    result = select_regions(entries, SelectConfig(budget=budget, seed=3))
    per_image = strips_per_image(result.entries)
    assert sum(len(v) for v in per_image.values()) == expected == result.cells
    assert all(len(v) == len(set(v)) <= 10 for v in per_image.values())
    assert max(len(v) for v in per_image.values()) - min(len(per_image.get(e.id, [])) for e in entries) <= 1
    # the area follows the strip count (strip widths differ by one 8-px cell at most)
    assert abs(result.area_fraction - expected / (10 * n_images)) < 0.01


def test_budget_is_deterministic_by_seed():
    entries = pool(7)
    runs = [
        strips_per_image(select_regions(entries, SelectConfig(budget=0.15, seed=s)).entries) for s in (0, 0, 1, 2, 3)
    ]
    assert runs[0] == runs[1]
    assert any(r != runs[0] for r in runs[2:])


@pytest.mark.parametrize("shape", ["band", "block"])
def test_other_shapes_spend_the_same_budget(shape):
    entries = pool(20)
    result = select_regions(entries, SelectConfig(budget=0.1, shape=shape, seed=0))
    assert abs(result.area_fraction - 0.1) < 0.02
    cells = cell_grid(1024, 768, shape)
    if shape == "band":
        assert all(c.x0 == 0 and c.x1 == 1024 and c.y0 % 8 == 0 for c in cells) and len(cells) == 10
    else:
        sides = [(c.x1 - c.x0) / (c.y1 - c.y0) for c in cells]
        assert all(0.75 <= s <= 1.34 for s in sides)  # square-ish
        assert all(c.x0 % 8 == 0 and c.y0 % 8 == 0 for c in cells)
    for entry in result.entries:
        assert all(any(r.x0 == c.x0 and r.y0 == c.y0 for c in cells) for r in entry.regions)


def test_none_or_all_labels_whole_images(tmp_path):
    manifest = write_manifest(tmp_path / "m.jsonl", pool(23))
    result = run("select", manifest, "--budget", "0.1", "--strategy", "none-or-all", "--seed", "4")
    assert result.exit_code == 0, result.output
    header, records = jsonl(result.stdout)
    assert len(records) == 2  # round(0.1 x 23)
    assert all(r["strategy"] == "none-or-all" and r["regions"] == [{"x0": 0, "x1": 1024}] for r in records)
    assert header["format"] == "regions" and header["seed"] == 4


def test_warmup_plus_second_round_spends_the_budget(tmp_path):
    entries = pool(23)
    manifest = write_manifest(tmp_path / "m.jsonl", entries)
    warm = tmp_path / "warm.jsonl"
    result = run("select", manifest, "--budget", "0.15", "--warmup-frac", "0.2", "-o", warm)
    assert result.exit_code == 0, result.output
    _, warm_entries = read_regions(warm)
    assert len(warm_entries) == 5 and {e.strategy for e in warm_entries} == {"warmup"}  # round(0.2 x 23)
    warm_strips = sum(len(v) for v in strips_per_image(warm_entries).values())
    assert warm_strips == 8  # round(0.15 x 10 x 5)
    vectors = write_vectors(tmp_path / "v.npz", manifest, entries, realistic_vectors(23))
    for strategy in ("random", "max", "mdc"):
        second = tmp_path / f"{strategy}.jsonl"
        result = select_after(warm, manifest, strategy, vectors, "--budget", "0.15", "-o", second)
        assert result.exit_code == 0, result.output
        header, records = jsonl(second.read_text())
        _, second_entries = read_regions(second)
        assert not {e.id for e in second_entries} & {e.id for e in warm_entries}
        total = warm_strips + sum(len(v) for v in strips_per_image(second_entries).values())
        assert total == 35  # round(0.15 x 10 x 23)
        assert abs(header["cumulative_area_fraction"] - 0.15) < 0.005
        assert "with the 5 excluded images' regions" in result.stderr and "heads expected" in result.stderr
    # the same earlier round named twice counts once
    twice = select_after(warm, manifest, "mdc", vectors, "--budget", "0.15", "--exclude", warm)
    assert twice.stdout.splitlines()[1:] == (tmp_path / "mdc.jsonl").read_text().splitlines()[1:]


def width_weighted_vectors(entries, scale: float, seed: int = 0) -> np.ndarray:
    """realistic_vectors of strips whose heads grow with their width, as a counter's do: on the grid of a small image at
    a reduced scale some strips are twice as wide as others, and MAX and MDC take the wide ones."""
    widths = np.stack([np.diff(strip_edges(e.width, 0.1, scale)) for e in entries]).astype(np.float64)
    return realistic_vectors(len(entries), seed=seed) * (widths / widths.mean(axis=1, keepdims=True))[:, :, None]


@pytest.mark.parametrize("budget", [0.05, 0.1, 0.2])
@pytest.mark.parametrize("strategy", ["random", "max", "mdc"])
def test_both_rounds_spend_the_budget_on_small_images_at_half_scale(tmp_path, manifest_and_vectors, strategy, budget):
    """256×192 images at --scale 0.5 have strips of 16 and 32 px, and MAX and MDC favour the wide ones. The budget
    counts the warm-up round's strips (the paper's Algorithm 1: one budget for both rounds): together the two rounds
    spend it within half a percentage point, for every seed; one image's strips make the difference when a
    strategy's picks are wider than average."""
    entries = pool(12, width=256, height=192)
    manifest, vectors = manifest_and_vectors(entries, width_weighted_vectors(entries, 0.5), scale=0.5)
    for seed in range(4):
        warm = tmp_path / f"warm{seed}.jsonl"
        result = run(
            "select", manifest, "--budget", budget, "--warmup-frac", "0.2", "--scale", "0.5", "--seed", seed, "-o", warm
        )
        assert result.exit_code == 0, result.output
        second = tmp_path / f"{strategy}{seed}.jsonl"
        result = select_after(warm, manifest, strategy, vectors, "--budget", budget, "--seed", seed, "-o", second)
        assert result.exit_code == 0, result.output
        header, _ = jsonl(second.read_text())
        assert abs(header["cumulative_area_fraction"] - budget) <= 0.005, (seed, header["cumulative_area_fraction"])
        total = f"({100 * header['cumulative_area_fraction']:.2f}% with the "
        assert total in result.stderr and "warning" not in result.stderr, result.stderr


def test_the_same_round_alone_spends_the_budget_on_small_images(manifest_and_vectors):
    """Without a warm-up round too (MAX's and MDC's strips are the wide ones)."""
    entries = pool(12, width=256, height=192)
    manifest, vectors = manifest_and_vectors(entries, width_weighted_vectors(entries, 0.5), scale=0.5)
    for strategy in ("random", "max", "mdc"):
        for seed in range(4):
            result = run(
                "select", manifest, "--budget", "0.1", "--strategy", strategy, "--vectors", vectors, "--seed", seed
            )
            assert result.exit_code == 0, result.output
            header, _ = jsonl(result.stdout)
            assert abs(header["area_fraction"] - 0.1) <= 0.005, (strategy, seed, header["area_fraction"])


def test_a_budget_the_earlier_rounds_spent_already_says_so(tmp_path):
    entries = pool(12, width=256, height=192)
    manifest = write_manifest(tmp_path / "m.jsonl", entries)
    earlier = tmp_path / "earlier.jsonl"  # four whole images: a third of the pool
    assert run("select", manifest, "--budget", "0.33", "--strategy", "none-or-all", "-o", earlier).exit_code == 0
    for strategy in ("random", "none-or-all"):
        result = run(
            "select", manifest, "--budget", "0.1", "--exclude", earlier, "--scale", "0.5", "--strategy", strategy
        )
        assert result.exit_code == 0, result.output
        lines = result.stderr.splitlines()
        assert (
            lines[0]
            == (
                "crowdtk select: warning: the excluded files already use 33.33% of the pool's area, "
                "more than the budget's 10%; nothing is selected"
            )
            and len(lines) == 2
        ), result.stderr


def test_exclude_covering_every_image_is_one_clear_outcome(tmp_path):
    entries = pool(5)
    manifest = write_manifest(tmp_path / "m.jsonl", entries)
    everything = tmp_path / "all.jsonl"
    assert run("select", manifest, "--budget", "0.1", "-o", everything).exit_code == 0
    out = tmp_path / "r.jsonl"
    result = run("select", manifest, "--exclude", everything, "-o", out)
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert lines[0] == (
        "crowdtk select: warning: every image of the pool is in the excluded files (9.84% of its area labeled there): "
        "nothing is left to select"
    ), result.stderr
    assert len(lines) == 2 and lines[1].startswith("selected 0 regions in 0 of 5 images"), result.stderr
    assert read_regions(out)[1] == []


# --------------------------------------------------------------------------- MDC


def two_clusters() -> np.ndarray:
    """One image, 10 strips: strips 0-4 around (10, …), strips 5-9 around (0, …); 2 and 6 sit on the means."""
    v = np.zeros((1, 10, 10))
    v[0, :5] = 10.0
    offsets = {
        0: (0, 0.5),
        1: (0, -0.5),
        3: (1, 0.3),
        4: (1, -0.3),
        5: (2, 0.4),
        7: (2, -0.4),
        8: (3, 0.6),
        9: (3, -0.6),
    }
    for strip, (dim, delta) in offsets.items():
        v[0, strip, dim] += delta
    return v


def test_mdc_takes_the_strip_nearest_each_cluster_mean(manifest_and_vectors):
    manifest, vectors = manifest_and_vectors(pool(1), two_clusters())
    result = run("select", manifest, "--budget", "0.2", "--strategy", "mdc", "--vectors", vectors)
    assert result.exit_code == 0, result.output
    _, records = jsonl(result.stdout)
    edges = strip_edges(1024)
    assert [(r["x0"], r["x1"]) for r in records[0]["regions"]] == [(edges[2], edges[3]), (edges[6], edges[7])]
    assert [r["cells"] for r in records[0]["regions"]] == [[2], [6]]
    assert sorted(c for r in records[0]["regions"] for c in r["component"]) == [0, 1]
    assert all(d < 1e-3 for r in records[0]["regions"] for d in r["distance"])
    assert [r["predicted_count"] for r in records[0]["regions"]] == [10.0, 0.0]


def test_mdc_one_strip_is_the_one_nearest_the_mean_and_neighbours_merge():
    v = two_clusters()[0]
    keys = image_keys(0, ["x"], "mdc")
    mean = v.mean(axis=0)
    one = mdc_batch(v[None], 1, keys)
    assert one.strips[0, 0] == np.argmin(((v - mean) ** 2).sum(1))
    # make strips 4 and 5 the clusters' centres: the two picks are neighbours and form one region
    w = two_clusters()
    w[0, [2, 4]] = w[0, [4, 2]]
    w[0, [6, 5]] = w[0, [5, 6]]
    entries = pool(1)
    data = StripVectors(
        np.array(["img0"]),
        np.array([entries[0].sha256]),
        np.zeros(10, np.int64),
        strip_edges(1024)[:-1],
        strip_edges(1024)[1:],
        w[0].astype(np.float32),
        w[0, :, 0].astype(np.float32),
    )
    result = select_regions(entries, SelectConfig(budget=0.2, strategy="mdc"), data)
    (entry,) = result.entries
    assert len(entry.regions) == 1 and entry.details[0]["cells"] == [4, 5]


def test_mdc_differs_from_random_and_max_on_realistic_vectors(tmp_path, manifest_and_vectors):
    manifest, vectors = manifest_and_vectors(pool(40), realistic_vectors(40, seed=5))
    chosen = {}
    for strategy in ("random", "max", "mdc"):
        result = run("select", manifest, "--budget", "0.3", "--strategy", strategy, "--vectors", vectors)
        assert result.exit_code == 0, result.output
        chosen[strategy] = strips_per_image(read_regions_text(result.stdout, tmp_path))
        assert sum(len(v) for v in chosen[strategy].values()) == 120
    differs = lambda a, b: sum(chosen[a][k] != chosen[b][k] for k in chosen[a])  # noqa: E731
    assert differs("mdc", "random") >= 20 and differs("mdc", "max") >= 20
    # MAX takes the largest predicted counts
    v = realistic_vectors(40, seed=5)
    for i, strips in enumerate(chosen["max"].values()):
        assert sorted(strips) == sorted(np.argsort(-v[i, :, 0].astype(np.float32), kind="stable")[:3].tolist())


def read_regions_text(text: str, tmp_path: Path):
    path = tmp_path / "stdout.jsonl"
    path.write_text(text)
    return read_regions(path)[1]


def test_numpy_engine_selects_what_sklearn_selects():
    vectors = realistic_vectors(150, seed=2)
    keys = image_keys(0, [str(i) for i in range(150)], "mdc")
    for k in (2, 3, 5):
        fast, reference = mdc_batch(vectors, k, keys, "numpy"), mdc_batch(vectors, k, keys, "sklearn")
        np.testing.assert_array_equal(fast.strips, reference.strips)
        np.testing.assert_allclose(fast.distance, reference.distance, rtol=1e-6, atol=1e-9)


def test_mdc_is_identical_with_one_or_two_workers(tmp_path, manifest_and_vectors):
    n = 5000  # more than one chunk of images
    rng = np.random.default_rng(0)
    manifest, vectors = manifest_and_vectors(pool(n), rng.gamma(2.0, 3.0, (n, 10, 10)))
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}.jsonl"
        result = run(
            "select",
            manifest,
            "--budget",
            "0.25",
            "--strategy",
            "mdc",
            "--vectors",
            vectors,
            "--workers",
            workers,
            "-o",
            out,
            "-q",
        )
        assert result.exit_code == 0, result.output
        outputs.append(out.read_text().splitlines()[1:])
    assert outputs[0] == outputs[1] and len(outputs[0]) == n


def test_mdc_result_does_not_depend_on_the_other_images():
    vectors = realistic_vectors(30, seed=7)
    ids = [f"img{i}" for i in range(30)]
    whole = mdc_batch(vectors, 3, image_keys(1, ids, "mdc"))
    part = mdc_batch(vectors[10:20], 3, image_keys(1, ids[10:20], "mdc"))
    np.testing.assert_array_equal(whole.strips[10:20], part.strips)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("budget", ["0", "1.5", "-0.1"])
def test_budget_outside_the_unit_interval(tmp_path, budget):
    manifest = write_manifest(tmp_path / "m.jsonl", pool(3))
    out = tmp_path / "r.jsonl"
    assert_clean_failure(run("select", manifest, "--budget", budget, "-o", out), "--budget", out)
    assert "budget outside (0, 1]" in run("select", manifest, "--budget", budget, "-o", out).stderr


def test_vectors_from_another_manifest(tmp_path):
    entries = pool(4)
    manifest = write_manifest(tmp_path / "m.jsonl", entries)
    other = write_manifest(tmp_path / "other.jsonl", entries[:3])
    vectors = write_vectors(tmp_path / "v.npz", other, entries, realistic_vectors(4))
    out = tmp_path / "r.jsonl"
    result = run("select", manifest, "--strategy", "mdc", "--vectors", vectors, "-o", out)
    assert_clean_failure(result, "v.npz: a vectors file from another manifest", out)


def test_strategies_that_need_vectors_say_so(tmp_path):
    manifest = write_manifest(tmp_path / "m.jsonl", pool(3))
    out = tmp_path / "r.jsonl"
    for strategy in ("mdc", "max"):
        assert_clean_failure(run("select", manifest, "--strategy", strategy, "-o", out), "--vectors", out)


def test_exclude_naming_images_absent_from_the_manifest(tmp_path):
    manifest = write_manifest(tmp_path / "m.jsonl", pool(5))
    stranger = write_manifest(tmp_path / "s.jsonl", pool(5, prefix="other"))
    assert run("select", stranger, "-o", tmp_path / "s-regions.jsonl").exit_code == 0
    out = tmp_path / "r.jsonl"
    result = run("select", manifest, "--exclude", tmp_path / "s-regions.jsonl", "-o", out)
    assert_clean_failure(result, "s-regions.jsonl: names 5 image(s) absent from", out)


@pytest.mark.parametrize("spend", [["--strategy", "max"], ["--budget-heads", "40"]], ids=["area", "heads"])
def test_vectors_missing_images_to_select_from(tmp_path, spend):
    # A head budget prices every image left by its vectors, as max and mdc rank them by theirs.
    entries = pool(4)
    manifest = write_manifest(tmp_path / "m.jsonl", entries)
    vectors = write_vectors(tmp_path / "v.npz", manifest, entries[:2], realistic_vectors(2))
    out = tmp_path / "r.jsonl"
    assert_clean_failure(
        run("select", manifest, *spend, "--vectors", vectors, "-o", out), "no strips of 2 image(s)", out
    )


def test_mdc_with_bands_is_refused(tmp_path, manifest_and_vectors):
    manifest, vectors = manifest_and_vectors(pool(2), realistic_vectors(2))
    out = tmp_path / "r.jsonl"
    assert_clean_failure(
        run("select", manifest, "--strategy", "mdc", "--vectors", vectors, "--shape", "band", "-o", out),
        "--shape band",
        out,
    )


def test_more_em_starts_make_mdc_less_dependent_on_the_seed():
    """n_init keeps the likeliest of several EM fits: picks then change less when only the seed does
    (measured here at k = 3: 20% of picks change between seeds with one start, 17% with three)."""
    vectors = realistic_vectors(300)
    ids = [f"i{i}" for i in range(300)]

    def changed(n_init: int) -> float:
        picks = [mdc_batch(vectors, 3, image_keys(seed, ids, "mdc"), n_init=n_init).strips for seed in range(3)]
        return float(np.mean([len(set(a) ^ set(b)) / 6 for other in picks[1:] for a, b in zip(picks[0], other)]))

    assert changed(3) < changed(1) - 0.01
    config = SelectConfig(n_init=0)
    with pytest.raises(Exception, match="--n-init"):
        config.validate()
