"""`crowdtk show` (and crowdtk.pictures): the paper's Fig. 4, 5 and 6 drawn as PNG files from artifacts."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import assert_clean_failure, run, save_checkpoint

from crowdtk import pictures
from crowdtk.affinity import choose_positions
from crowdtk.cap import TrainNet
from crowdtk.checkpoint import strip_cap
from crowdtk.errors import CrowdtkError
from crowdtk.formats import (
    BENCH_RESULTS,
    LABELS,
    REGIONS,
    LabelsEntry,
    Provenance,
    Region,
    RegionsEntry,
    make_header,
    read_manifest,
    write_json,
    write_jsonl,
)
from crowdtk.models import build_model
from crowdtk.train_config import TrainConfig

H, W = 64, 96
STRIP = Region(24, 40, 0, H)
BLOCK = Region(48, 80, 16, 48)


def show(*args):
    """`crowdtk show ARGS…`."""
    return run("show", *args)


@pytest.fixture(scope="module")
def art(tmp_path_factory) -> dict[str, Path]:
    """Three flat grey images with heads, a manifest, regions, labels, CAP and CAP-less checkpoints, bench results."""
    root = tmp_path_factory.mktemp("pictures")
    (root / "data" / "images").mkdir(parents=True)
    (root / "data" / "points").mkdir()
    rng = np.random.default_rng(0)
    scenes = {}
    for i in range(3):
        name = f"im{i}"
        points = np.c_[rng.uniform(0, W, 12), rng.uniform(0, H, 12)]
        cv2.imwrite(str(root / "data" / "images" / f"{name}.png"), np.full((H, W, 3), 128, np.uint8))
        (root / "data" / "points" / f"{name}.txt").write_text("".join(f"{x} {y}\n" for x, y in points))
        scenes[name] = points
    manifest = root / "manifest.jsonl"
    assert run("index", root / "data", "-o", manifest, "-q").exit_code == 0
    _, entries = read_manifest(manifest)

    region_sets = {"im0": (), "im1": (STRIP,), "im2": (STRIP, BLOCK)}  # the first has no regions
    regions = root / "regions.jsonl"
    write_jsonl(
        regions,
        make_header(REGIONS, Provenance("select")),
        (
            RegionsEntry(e.id, e.image, e.sha256, e.width, e.height, "random", region_sets[e.id]).to_record()
            for e in entries
        ),
    )
    labels_rows = []
    for e in entries:
        pts = scenes[e.id]
        keep = np.zeros(len(pts), bool)
        for r in region_sets[e.id]:
            keep |= r.contains(pts)
        labels_rows.append(
            LabelsEntry(e.id, e.image, e.sha256, e.width, e.height, region_sets[e.id], pts[keep]).to_record()
        )
    labels = root / "labels.jsonl"
    write_jsonl(labels, make_header(LABELS, Provenance("import")), labels_rows)

    counter = build_model("lite", pretrained=False, dilated=False, backend_channels=[16])  # small: quick to run
    net = TrainNet(counter, cap=True)
    config = TrainConfig(model="lite", cap=True)
    cap = save_checkpoint(root / "cap.safetensors", net, config, "train")
    plain = root / "plain.safetensors"
    strip_cap(cap, plain)

    results = root / "results.json"
    rows = [
        {
            "method": m,
            "budget": b,
            "shape": "strip",
            "mae": {"mean": 20 / b**0.3 * f, "std": 1.5},
            "rmse": {"mean": 30.0, "std": 2.0},
            "heads_labeled": 100.0,
            "area_fraction": b,
            "wall_s": 1.0,
            "seeds": [0, 1, 2],
        }
        for m, f in (("none-or-all", 1.3), ("random", 1.1), ("mdc+cap", 1.0))
        for b in (0.05, 0.1, 0.2, 0.4)
    ]
    rows.append({**rows[0], "shape": "band", "mae": {"mean": 1000.0, "std": 0.0}})
    write_json(results, make_header(BENCH_RESULTS, Provenance("bench")), {"results": rows})
    return {
        "root": root,
        "manifest": manifest,
        "regions": regions,
        "labels": labels,
        "cap": cap,
        "plain": plain,
        "results": results,
    }


def png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = cv2.imread(str(path))
    assert image is not None
    return image  # BGR


def red(image: np.ndarray) -> np.ndarray:
    b, g, r = (image[..., i].astype(int) for i in range(3))
    return (r > 200) & (g < 70) & (b < 70)


def grey_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (top, bottom, left, right) of the flat grey image inside a picture's first panel."""
    grey = (np.abs(image.astype(int) - 128) <= 3).all(axis=2)
    rows, cols = (
        np.flatnonzero(grey.mean(axis=1) > 0.5),
        np.flatnonzero(grey.mean(axis=0) > 0.5),
    )  # not the title's grey
    return rows[0], rows[-1], cols[0], cols[-1]


def test_regions_picture_draws_red_lines_at_the_strip_edges_and_a_rectangle(art, tmp_path):
    out = tmp_path / "regions.png"
    assert pictures.show_regions(out, art["regions"], image_id="im2") == "im2"
    image = png(out)
    assert image.shape[1] == 800 and 500 < image.shape[0] < 700  # 8 inches at 100 dpi, one panel
    top, bottom, left, right = grey_box(image)
    span = right - left + 1
    red_mask = red(image)
    full = np.flatnonzero(red_mask[top : bottom + 1].mean(axis=0) > 0.9)  # columns red along the whole image height
    for x in (STRIP.x0, STRIP.x1):
        expected = left + x / W * span
        assert np.abs(full - expected).min() <= 2, (x, expected, full)
    assert all(min(abs(c - (left + x / W * span)) for x in (STRIP.x0, STRIP.x1)) <= 3 for c in full)  # no others
    # The block is a rectangle: red along its top edge between x0 and x1, not across the whole image.
    row = round(top + BLOCK.y0 / H * (bottom - top + 1))
    band = red_mask[row - 2 : row + 3].any(axis=0)
    inside = band[round(left + (BLOCK.x0 + 2) / W * span) : round(left + (BLOCK.x1 - 2) / W * span)]
    assert inside.all()
    assert not band[round(left + 4 / W * span) : round(left + 20 / W * span)].any()


def test_regions_default_is_the_first_image_with_regions(art, tmp_path):
    assert pictures.show_regions(tmp_path / "a.png", art["regions"]) == "im1"
    with pytest.raises(CrowdtkError, match="no image 'nope'"):
        pictures.show_regions(tmp_path / "b.png", art["regions"], image_id="nope")
    assert not (tmp_path / "b.png").exists()


def test_labels_picture_with_density_panel(art, tmp_path):
    out = tmp_path / "labels.png"
    assert pictures.show_regions(out, art["labels"], image_id="im2", checkpoint=art["plain"]) == "im2"
    image = png(out)
    assert image.shape[1] == 800 and image.shape[0] > 1000  # the image and the density panel under it
    b, g, r = (image[..., i].astype(int) for i in range(3))
    assert ((r > 200) & (g > 200) & (b < 80)).sum() > 10  # yellow head dots
    lower = red(image[image.shape[0] // 2 :])
    assert (lower.mean(axis=0) > 0.3).sum() >= 2  # the red strip lines on the density panel too


def test_prediction_picture_has_three_panels(art, tmp_path):
    out = tmp_path / "pred.png"
    assert pictures.show_prediction(out, art["plain"], art["manifest"]) == "im0"
    image = png(out)
    assert image.shape[1] > 2.5 * image.shape[0]


def test_affinity_picture_and_positions(art, tmp_path):
    out = tmp_path / "aff.png"
    assert pictures.show_affinity(out, art["cap"], art["labels"], positions=3) == "im1"  # im0 has no regions
    image = png(out)
    assert image.shape[1] >= 1200  # four panels: a grid of three columns
    mask = np.zeros((8, 12), bool)
    mask[:, 3:5] = True
    density = np.arange(96, dtype=float).reshape(8, 12)
    chosen = choose_positions(density, mask, 3)
    # the densest, then the emptiest labeled cell off the border, then the densest at least 2 cells
    # (a sixth of the map's 12 columns) from both
    assert chosen == [(6, 4), (1, 3), (4, 4)]
    assert all(mask[r, c] for r, c in chosen) and len(set(chosen)) == 3
    edge = np.zeros((8, 12), bool)
    edge[0, :] = True  # only border cells are labeled: they are used
    assert choose_positions(density, edge, 2) == [(0, 11), (0, 0)]
    with pytest.raises(CrowdtkError, match="fewer than --positions 13"):
        choose_positions(density, edge, 13)


def test_affinity_refuses_a_checkpoint_without_cap(art, tmp_path):
    with pytest.raises(CrowdtkError, match="strip-cap"):
        pictures.show_affinity(tmp_path / "x.png", art["plain"], art["labels"])


def test_budget_plot(art, tmp_path):
    out = tmp_path / "budget.png"
    assert pictures.show_budget(out, art["results"]) is None
    assert png(out).shape[1] == 800
    single = tmp_path / "single.json"
    row = {
        "method": "random",
        "budget": 0.1,
        "shape": "strip",
        "mae": {"mean": 12.0, "std": 0.0},
        "rmse": {"mean": 15.0, "std": 0.0},
        "heads_labeled": 10.0,
        "area_fraction": 0.1,
        "wall_s": 1.0,
        "seeds": [0],
    }
    write_json(single, make_header(BENCH_RESULTS, Provenance("bench")), {"results": [row]})
    pictures.show_budget(tmp_path / "single.png", single)
    png(tmp_path / "single.png")
    write_json(single, make_header(BENCH_RESULTS, Provenance("bench")), {"results": [{**row, "shape": "block"}]})
    with pytest.raises(CrowdtkError, match="no results for strip"):
        pictures.show_budget(tmp_path / "none.png", single)


@pytest.mark.parametrize("kind", ["regions", "labels", "prediction", "affinity", "budget"])
def test_cli_dispatches_on_the_artifact(art, tmp_path, kind):
    out = tmp_path / f"{kind}.png"
    args = {
        "regions": [art["regions"]],
        "labels": [art["labels"], "--checkpoint", art["plain"], "--image", "im2"],
        "prediction": [art["plain"], "--manifest", art["manifest"], "--image", "im1"],
        "affinity": [art["cap"], "--labels", art["labels"], "--positions", "1"],
        "budget": [art["results"]],
    }[kind]
    result = show(*args, "-o", out)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert result.stderr.startswith(f"wrote {out}")
    png(out)


def test_cli_errors_are_one_line_naming_the_file(art, tmp_path):
    out = tmp_path / "x.png"
    stray = tmp_path / "notes.txt"
    stray.write_text("hello\n")
    assert_clean_failure(show(stray, "-o", out), str(stray), out)
    assert_clean_failure(show(art["manifest"], "-o", out), str(art["manifest"]), out)  # a known format, not drawable
    assert_clean_failure(show(art["regions"], "--image", "nope", "-o", out), "nope", out)
    assert_clean_failure(show(art["plain"], "--labels", art["labels"], "-o", out), str(art["plain"]), out)
    assert_clean_failure(show(art["plain"], "-o", out), "--manifest", out, code=2)
    assert_clean_failure(
        show(art["regions"], "--manifest", art["manifest"], "-o", out), str(art["regions"]), out, code=2
    )
    assert_clean_failure(show(art["regions"], "-o", tmp_path / "x.jpg"), "x.jpg", tmp_path / "x.jpg", code=2)
    for result in (show(stray, "-o", out), show(art["regions"], "--image", "nope", "-o", out)):
        assert len(result.stderr.strip().splitlines()) == 1
    out.write_bytes(b"old")
    assert_clean_failure(show(art["regions"], "-o", out), str(out))
    assert out.read_bytes() == b"old"
    assert show(art["regions"], "-o", out, "--force", "-q").exit_code == 0
    png(out)


@pytest.mark.parametrize("home", ["a file", "absent"])
def test_show_quiet_prints_nothing_where_home_is_not_writable(art, tmp_path, home):
    """matplotlib warns on stderr when its config folder cannot be written (and MPLCONFIGDIR is unset): crowdtk gives
    it a private temporary folder first, and removes it at exit. A new process: matplotlib is imported once."""
    import os
    import subprocess
    import sys

    fake_home = tmp_path / "home"
    if home == "a file":
        fake_home.write_text("not a folder\n")  # nothing can be made under it, whoever runs the test
    else:
        fake_home = Path("/proc/no-such-home")  # absent, and cannot be made (even by root)
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")}
    env.update(HOME=str(fake_home), TMPDIR=str(temp))
    out = tmp_path / "regions.png"
    done = subprocess.run(
        [sys.executable, "-m", "crowdtk", "show", str(art["regions"]), "--image", "im2", "-o", str(out), "-q"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and done.stdout == ""
    assert out.is_file() and list(temp.iterdir()) == []  # the private folder is gone
