"""`select --image-list` and `bench --image-list`: the fixed labeled splits of semi-supervised counting papers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import PART_B, assert_clean_failure, jsonl, pool, run, write_manifest

from crowdtk.errors import CrowdtkError, UsageError
from crowdtk.experiment import Experiment, Run, Schedule, open_bench
from crowdtk.formats import ManifestEntry, read_image_list
from crowdtk.selection import SelectConfig, select_regions
from crowdtk.selection.image_list import match_image_list


def mixed_pool() -> list[ManifestEntry]:
    """Twelve images of two sizes (area 4:1), so that a list's share of the area differs from its share of images."""
    return pool(8, 1024, 768, "IMG_") + pool(4, 512, 384, "small_")


def select_list(
    tmp_path: Path,
    text: str,
    *extra: object,
    entries: list[ManifestEntry] | None = None,
    strategy: str = "none-or-all",
):
    """`select --image-list` of a list with ``text`` over ``entries`` (the mixed pool): the result and its output."""
    manifest = write_manifest(tmp_path / "m.jsonl", entries if entries is not None else mixed_pool())
    listed = tmp_path / "split.txt"
    listed.write_text(text)
    out = tmp_path / "r.jsonl"
    result = run("select", manifest, "--strategy", strategy, "--image-list", listed, "-o", out, *extra)
    return result, out


def test_the_listed_images_are_labeled_whole_and_their_area_is_reported(tmp_path):
    # Forms found in published lists: bare file names (IMG_101.jpg), a path from another machine, a manifest id.
    text = "# shb-like split\nIMG_1.jpg\n\n  /home/someone/part_B/train_data/images/IMG_4.jpg  \nsmall_2\r\n"
    result, out = select_list(tmp_path, text)
    assert result.exit_code == 0, result.output
    header, records = jsonl(out.read_text())
    assert [r["id"] for r in records] == ["IMG_1", "IMG_4", "small_2"]  # manifest order
    assert all(r["strategy"] == "none-or-all" and r["regions"] == [{"x0": 0, "x1": r["width"]}] for r in records)
    pool_area = 8 * 1024 * 768 + 4 * 512 * 384
    area = 2 * 1024 * 768 + 512 * 384
    assert header["pool_area"] == pool_area and header["area_fraction"] == pytest.approx(area / pool_area)
    assert header["budget"] is None  # the list decided, not a budget
    digest = hashlib.sha256(text.encode()).hexdigest()
    assert header["params"]["image_list"] == str(tmp_path / "split.txt")
    assert header["params"]["image_list_sha256"] == digest
    assert f"in 3 of 12 images (none-or-all, the 3 images of {tmp_path / 'split.txt'}" in result.stderr
    assert f"{100 * area / pool_area:.2f}% of the pool's area" in result.stderr


def test_the_same_list_selects_the_same_images_whatever_the_seed_and_budget(tmp_path):
    entries = mixed_pool()
    for seed, budget in ((0, 0.1), (5, 0.9)):
        config = SelectConfig(strategy="none-or-all", images=("small_3", "IMG_0"), seed=seed, budget=budget)
        assert [e.id for e in select_regions(entries, config).entries] == ["IMG_0", "small_3"]


def test_a_budget_given_with_a_list_is_reported_not_used(tmp_path):
    result, out = select_list(tmp_path, "IMG_1.jpg\nIMG_2.jpg\n", "--budget", "0.5")
    assert result.exit_code == 0, result.output
    _, records = jsonl(out.read_text())
    assert len(records) == 2
    assert "--budget 0.5 was not used: the list decides the images" in result.stderr


def test_an_entry_that_names_no_image_is_refused_naming_its_line(tmp_path):
    result, out = select_list(tmp_path, "IMG_1.jpg\n# a comment\nIMG_99.jpg\n")
    assert_clean_failure(result, f"{tmp_path / 'split.txt'}:3: 'IMG_99.jpg' names no image", out)
    # A file whose extension differs is not the same file; the message says which one the pool holds.
    result, out = select_list(tmp_path, "IMG_1.png\n")
    assert_clean_failure(result, "split.txt:1: 'IMG_1.png' names no image", out)
    assert "IMG_1.jpg" in result.stderr
    # Several names on one line (a published unlabeled-index file is written so) are one entry: refused, and said so.
    result, out = select_list(tmp_path, "IMG_1.jpg  IMG_2.jpg\n")
    assert_clean_failure(result, "split.txt:1:", out)
    assert "one image a line" in result.stderr


def test_an_entry_that_names_two_images_is_refused_unless_its_folders_choose(tmp_path):
    twins = [
        ManifestEntry("a_IMG_1", "/data/a/images/IMG_1.jpg", None, 160, 120, 1, "0" * 64),
        ManifestEntry("b_IMG_1", "/data/b/images/IMG_1.jpg", None, 160, 120, 1, "1" * 64),
    ]
    result, out = select_list(tmp_path, "IMG_1.jpg\n", entries=twins)
    assert_clean_failure(result, "split.txt:1: 'IMG_1.jpg' names 2 images", out)
    assert "a_IMG_1" in result.stderr and "b_IMG_1" in result.stderr
    result, out = select_list(tmp_path, "b\\images\\IMG_1.jpg\n", entries=twins)  # a Windows path chooses
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in jsonl(out.read_text())[1]] == ["b_IMG_1"]


def test_an_image_named_twice_is_labeled_once_with_a_warning(tmp_path):
    result, out = select_list(tmp_path, "IMG_1.jpg\nIMG_2.jpg\nIMG_1\n")
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in jsonl(out.read_text())[1]] == ["IMG_1", "IMG_2"]
    assert "split.txt:3: 'IMG_1' names image 'IMG_1' again (first on line 1); it is labeled once" in result.stderr
    listed = match_image_list(read_image_list(tmp_path / "split.txt"), mixed_pool())
    assert listed.ids == ("IMG_1", "IMG_2") and len(listed.notes) == 1


@pytest.mark.parametrize("text", ["", "\n  \n# only a comment\n"])
def test_a_list_that_names_nothing_is_refused(tmp_path, text):
    result, out = select_list(tmp_path, text)
    assert_clean_failure(result, "names no image", out)


def test_a_list_that_is_no_text_file_is_refused(tmp_path):
    manifest, out = write_manifest(tmp_path / "m.jsonl", mixed_pool()), tmp_path / "r.jsonl"
    (tmp_path / "split.txt").write_bytes(b"IMG_1.jpg\n\xff\xfe\n")
    for listed, message in (("split.txt", "split.txt: not UTF-8 text"), ("no.txt", "no.txt: no such image list")):
        result = run("select", manifest, "--strategy", "none-or-all", "--image-list", tmp_path / listed, "-o", out)
        assert_clean_failure(result, message, out)


@pytest.mark.parametrize("strategy", ["random", "max", "mdc"])
def test_a_list_with_a_strategy_that_takes_none_is_a_usage_error(tmp_path, strategy):
    result, out = select_list(tmp_path, "IMG_1.jpg\n", strategy=strategy)
    assert_clean_failure(result, f"--image-list with --strategy {strategy}", out, code=2)
    assert "use --strategy none-or-all" in result.stderr
    with pytest.raises(UsageError):
        SelectConfig(strategy=strategy, images=("IMG_1",)).validate()


def test_a_list_with_a_head_budget_is_a_usage_error(tmp_path):
    result, out = select_list(tmp_path, "IMG_1.jpg\n", "--budget-heads", "100", "--vectors", tmp_path / "v.npz")
    assert_clean_failure(result, "--budget-heads with --image-list", out, code=2)


def test_a_listed_image_an_earlier_round_labeled_is_refused(tmp_path):
    first, first_out = select_list(tmp_path, "IMG_1.jpg\n")
    assert first.exit_code == 0, first.output
    earlier = tmp_path / "earlier.jsonl"
    first_out.rename(earlier)
    result, out = select_list(tmp_path, "IMG_2.jpg\nIMG_1.jpg\n", "--exclude", earlier)
    assert_clean_failure(result, "an earlier round labeled, e.g. 'IMG_1'", out)
    assert "earlier.jsonl" in result.stderr
    fine, fine_out = select_list(tmp_path, "IMG_2.jpg\n", "--exclude", earlier)
    assert fine.exit_code == 0, fine.output
    assert jsonl(fine_out.read_text())[0]["cumulative_area_fraction"] > jsonl(fine_out.read_text())[0]["area_fraction"]


# --------------------------------------------------------------------------- bench


def test_the_bench_chain_passes_the_list_to_none_or_all_only(tmp_path, monkeypatch):
    monkeypatch.setattr("crowdtk.experiment.plan.labeled_images", lambda labels: 3)  # the chain is listed, not run
    manifest = write_manifest(tmp_path / "train.jsonl", mixed_pool())
    split = tmp_path / "label list" / "shb-5.txt"
    split.parent.mkdir()
    split.write_text("IMG_3.jpg\nsmall_1.jpg\n")
    experiment = Experiment(manifest, tmp_path / "test.jsonl", tmp_path / "b", Schedule(), image_list=split)
    (step, *_) = experiment.selection_chain(Run("none-or-all", 0.05, "strip", 0))
    assert step.argv[step.argv.index("--image-list") + 1] == str(split) and "--budget" not in step.argv
    assert f"--image-list '{split}'" in step.shell()  # printed as the command that runs (quoted)
    for method in ("full", "random"):  # full labels every image; the strip methods keep the budget
        (other, *_) = experiment.selection_chain(Run(method, 0.05, "strip", 0))
        assert "--image-list" not in other.argv and "--budget" in other.argv
    # The printed command, run as it is, labels exactly the listed images.
    step.output.parent.mkdir(parents=True)
    result = run(*step.argv)
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in jsonl(step.output.read_text())[1]] == ["IMG_3", "small_1"]


def test_bench_settings_record_the_lists_digest_and_refuse_another_list(tmp_path):
    train = write_manifest(tmp_path / "train.jsonl", mixed_pool())
    test = write_manifest(tmp_path / "test.jsonl", pool(2, prefix="test_"))
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("IMG_1.jpg\nIMG_2.jpg\n")
    second.write_text("IMG_1.jpg\nIMG_3.jpg\n")
    out = tmp_path / "bench"

    def open_with(image_list: Path | None):
        return open_bench(train, test, out, Schedule(), lambda step: None, "cpu", None, image_list=image_list)

    experiment, settings = open_with(first)
    digest = hashlib.sha256(first.read_bytes()).hexdigest()
    assert settings["image_list_sha256"] == digest and experiment.image_list == first
    assert json.loads((out / "settings.json").read_text())["image_list_sha256"] == digest
    open_with(first)  # the same list: the runs are reused
    for other in (second, None):
        with pytest.raises(CrowdtkError, match=r"other settings \(image_list_sha256 differ\)"):
            open_with(other)
    # A list that names an image the training pool lacks fails before any run.
    second.write_text("IMG_1.jpg\nnot_there.jpg\n")
    with pytest.raises(CrowdtkError, match="b.txt:2: 'not_there.jpg' names no image"):
        open_bench(train, test, tmp_path / "bench2", Schedule(), lambda step: None, "cpu", None, image_list=second)


def test_a_bench_folder_made_before_image_lists_is_one_without_a_list(tmp_path):
    train = write_manifest(tmp_path / "train.jsonl", mixed_pool())
    test = write_manifest(tmp_path / "test.jsonl", pool(2, prefix="test_"))
    out = tmp_path / "bench"
    open_bench(train, test, out, Schedule(), lambda step: None, "cpu", None)
    saved = json.loads((out / "settings.json").read_text())
    (out / "settings.json").write_text(json.dumps({k: v for k, v in saved.items() if k != "image_list_sha256"}))
    open_bench(train, test, out, Schedule(), lambda step: None, "cpu", None)  # the same settings


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--methods", "random,mdc"], "--image-list without a method that takes it"),
        (["--methods", "none-or-all,random", "--budgets", "0.05,0.1"], "--image-list with 2 budgets"),
    ],
)
def test_bench_image_list_usage_errors(tmp_path, extra, message):
    split = tmp_path / "split.txt"
    split.write_text("IMG_1.jpg\n")
    result = run("bench", "--train", tmp_path, "--test", tmp_path, "-o", tmp_path / "b", "--image-list", split, *extra)
    assert_clean_failure(result, message, tmp_path / "b", code=2)


def test_bench_with_a_list_it_cannot_read_leaves_no_folder(tmp_path):
    train = write_manifest(tmp_path / "train.jsonl", mixed_pool())
    (tmp_path / "empty.txt").write_text("# nothing yet\n")
    for name, message in (("missing.txt", "missing.txt: no such image list"), ("empty.txt", "names no image")):
        result = run("bench", "--train", train, "--test", train, "-o", tmp_path / "b", "--image-list", tmp_path / name)
        assert_clean_failure(result, message, tmp_path / "b")


# --------------------------------------------------------------------------- real data


def test_twenty_part_b_images_are_five_percent_of_its_area(tmp_path):
    """A 20-image list of ShanghaiTech Part B's 400 training images (all 1024×768): 5.00% of the pool's area."""
    images = PART_B / "train_data" / "images"
    if not images.is_dir():
        pytest.skip(f"real ShanghaiTech Part B not found at {PART_B} (../shared is absent on this machine)")
    from PIL import Image

    entries = []
    for path in sorted(images.glob("*.jpg")):
        with Image.open(path) as im:  # the header only: select reads sizes, not pixels
            width, height = im.size
        entries.append(ManifestEntry(path.stem, str(path), None, width, height, 0, "0" * 64))
    assert len(entries) == 400
    names = [f"IMG_{n}.jpg" for n in range(1, 400, 20)]  # twenty names, as a published split lists them
    result, out = select_list(tmp_path, "\n".join(names) + "\n", entries=entries)
    assert result.exit_code == 0, result.output
    header, records = jsonl(out.read_text())
    assert sorted(r["id"] for r in records) == sorted(n.removesuffix(".jpg") for n in names)
    assert header["area_fraction"] == pytest.approx(20 / 400)
    assert "in 20 of 400 images" in result.stderr and "5.00% of the pool's area" in result.stderr
