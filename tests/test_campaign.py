"""crowdtk campaign init|next|status: the labeling loop as rounds of crowdtk commands, on a tiny generated pool."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_clean_failure, run

from crowdtk.data import read_points
from crowdtk.files import claim_output
from crowdtk.formats import read_labels, read_manifest, read_regions

# Two optimizer steps for the final counter, one for the warm-up counter, random weights: the loop, not the counts.
QUICK = ("--steps", "2", "--warmup-steps", "1", "--batch-size", "2", "--no-pretrained", "--device", "cpu")


def pool_of(tiny_data: Path) -> Path:
    return tiny_data / "data" / "train" / "manifest.jsonl"


def assert_step_failed(result, names: str) -> None:
    """Exit 1 after a failed step: its command line and error, then one `crowdtk campaign next: error:` line."""
    assert result.exit_code == 1, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("crowdtk campaign next: error: ") and names in last, result.stderr
    assert "Traceback" not in result.stderr


def init(tiny_data: Path, out: Path, *options: object):
    return run("campaign", "init", pool_of(tiny_data), "-o", out, *QUICK, *options)


@pytest.fixture(scope="module")
def oracle_campaign(tiny_data: Path, tmp_path_factory) -> dict:
    """A two-round campaign with the oracle, run to the end by one `next --until-blocked`."""
    out = tmp_path_factory.mktemp("campaign") / "camp"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CROWDTK_CACHE_DIR", str(tmp_path_factory.mktemp("crowdtk-cache")))
        started = init(tiny_data, out, "--budget", "0.1", "--tool", "labelstudio", "--oracle", pool_of(tiny_data))
        assert started.exit_code == 0, started.output
        finished = run("campaign", "next", out, "--until-blocked")
    assert finished.exit_code == 0, finished.output
    return {"out": out, "init": started, "next": finished}


# --------------------------------------------------------------------------- init


def test_init_refuses_bad_settings_before_making_the_folder(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "camp"
    both = init(tiny_data, out, "--budget", "0.1", "--budget-heads", "50", "--tool", "crops")
    assert_clean_failure(both, "--budget-heads", leftovers=out, code=2)
    assert init(tiny_data, out, "--rounds", "1", "--tool", "crops").exit_code == 2
    assert init(tiny_data, out, "--tool", "paint").exit_code == 2
    assert not out.exists()
    assert_clean_failure(init(tiny_data, out, "--budget", "1.5", "--tool", "crops"), "--budget 1.5", leftovers=out)
    assert_clean_failure(
        init(tiny_data, out, "--tool", "crops", "--oracle", tmp_path / "none.jsonl"), "none.jsonl", leftovers=out
    )
    missing = run("campaign", "init", tmp_path / "nowhere.jsonl", "-o", out, "--tool", "crops")
    assert_clean_failure(missing, "nowhere.jsonl", leftovers=out)
    # 12 images: a warm-up round of 2 and 10 more rounds of one image each at most.
    assert_clean_failure(init(tiny_data, out, "--tool", "crops", "--rounds", "12"), "--rounds", leftovers=out)


def test_init_writes_the_plan_and_refuses_an_existing_folder(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "camp"
    assert init(tiny_data, out, "--budget", "0.1", "--rounds", "3", "--tool", "crops").exit_code == 0
    record = json.loads((out / "campaign.json").read_text())
    assert record["format"] == "campaign" and record["format_version"] == 1
    assert record["settings"]["tool"] == "crops" and record["settings"]["budget"] == 0.1
    plan = record["plan"]
    # The warm-up share (0.2) first, the other 0.8 of the budget in two even steps.
    assert [p["strategy"] for p in plan] == ["random", "mdc", "mdc"] and plan[0]["warmup"]
    assert plan[1]["budget"] == pytest.approx(0.06) and plan[2]["budget"] == pytest.approx(0.1)
    assert [r["phase"] for r in record["rounds"]] == ["select"] * 3
    assert_clean_failure(init(tiny_data, out, "--tool", "crops"), "already exists")
    assert init(tiny_data, out, "--tool", "labelme", "--force").exit_code == 0
    assert json.loads((out / "campaign.json").read_text())["settings"]["tool"] == "labelme"


# --------------------------------------------------------------------------- a whole campaign with the oracle


def test_oracle_campaign_trains_a_counter_within_the_budget(oracle_campaign: dict) -> None:
    out = oracle_campaign["out"]
    assert "campaign done" in oracle_campaign["next"].stdout
    assert (out / "round-2" / "infer.safetensors").is_file()
    _, warmup_regions = read_regions(out / "round-1" / "regions.jsonl")
    mdc_header, mdc_regions = read_regions(out / "round-2" / "regions.jsonl")
    assert abs(mdc_header["cumulative_area_fraction"] - 0.1) <= 0.005
    # The MDC round chose only among images the warm-up round left, and its labels hold both rounds'.
    assert not {e.id for e in warmup_regions if e.regions} & {e.id for e in mdc_regions if e.regions}
    _, labels = read_labels(out / "round-2" / "labels.jsonl")
    assert {e.id for e in labels} == {e.id for e in warmup_regions + mdc_regions if e.regions}


def test_oracle_campaign_prints_the_commands_it_runs(oracle_campaign: dict) -> None:
    out, lines = oracle_campaign["out"], oracle_campaign["next"].stderr.splitlines()
    commands = [line for line in lines if line.startswith("+ crowdtk ")]
    assert [c.split()[2] for c in commands] == [
        "select",
        "import",
        "warmup",
        "vectors",
        "select",
        "import",
        "train",
        "strip-cap",
    ]
    assert "--warmup-frac 0.2 --strategy random" in commands[0]
    assert f"--strategy mdc --vectors {out}/round-1/vectors.npz --exclude {out}/round-1/regions.jsonl" in commands[4]
    assert f"--merge {out}/round-1/labels.jsonl" in commands[5]
    assert "--cap" in commands[6] and "--val-frac 0.1" in commands[6]


def test_next_after_the_end_says_done_and_runs_nothing(oracle_campaign: dict) -> None:
    result = run("campaign", "next", oracle_campaign["out"])
    assert result.exit_code == 0, result.output
    assert "already done" in result.stdout and "+ crowdtk" not in result.stderr


def test_status_reports_rounds_budget_and_counter(oracle_campaign: dict) -> None:
    out = oracle_campaign["out"]
    text = run("campaign", "status", out)
    assert text.exit_code == 0, text.output
    assert "round 1 (warm-up, random): done" in text.stdout and "round 2 (mdc): done" in text.stdout
    assert f"counter: {out}/round-2/infer.safetensors (final)" in text.stdout
    result = run("campaign", "status", out, "--json")
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    heads = sum(len(e.points) for e in read_labels(out / "round-2" / "labels.jsonl")[1])
    assert status["spent"]["heads"] == heads == sum(r["heads"] for r in status["rounds"])
    assert status["spent"]["area_fraction"] + status["spent"]["area_left"] == pytest.approx(0.1)
    assert status["final"] and status["next"] is None
    # 10 labeled images: the final counter held one out (train --val-frac 0.1) and was validated on it.
    assert status["held_out_error"]["held_out"] and status["held_out_error"]["val_mae"] is not None


# --------------------------------------------------------------------------- locking and resuming


def test_a_second_next_is_refused_while_one_holds_the_folder(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "camp"
    assert init(tiny_data, out, "--tool", "crops").exit_code == 0
    with claim_output(out, True, folder=True, lock_only=True):
        result = run("campaign", "next", out)
    assert_clean_failure(result, "another crowdtk run")
    assert not (out / "round-1").exists()


def test_next_resumes_after_a_failed_step_without_redoing_finished_ones(tiny_data: Path, tmp_path: Path) -> None:
    shutil.copytree(pool_of(tiny_data).parent, tmp_path / "train")  # the manifest names its files relatively
    oracle = tmp_path / "train" / "manifest.jsonl"
    out = tmp_path / "camp"
    assert init(tiny_data, out, "--tool", "crops", "--oracle", oracle).exit_code == 0
    first = run("campaign", "next", out)
    assert first.exit_code == 0 and "+ crowdtk select" in first.stderr
    assert "next: round 1 import" in first.stdout
    regions = (out / "round-1" / "regions.jsonl").read_bytes()
    oracle.rename(tmp_path / "away.jsonl")  # the import step fails
    assert_step_failed(run("campaign", "next", out), "manifest.jsonl")
    assert not (out / "round-1" / "labels.jsonl").exists()
    (tmp_path / "away.jsonl").rename(oracle)
    again = run("campaign", "next", out)
    assert again.exit_code == 0, again.output
    assert "+ crowdtk import" in again.stderr and "+ crowdtk select" not in again.stderr
    assert (out / "round-1" / "regions.jsonl").read_bytes() == regions
    assert (out / "round-1" / "labels.jsonl").is_file()


# --------------------------------------------------------------------------- a labeling tool, without the oracle


def fill_crops(package: Path, manifest: Path) -> int:
    """Write every crop's points file of a `--to crops` package from the ground truth, as a labeler would;
    the heads written."""
    truth = {m.id: read_points(m.points) for m in read_manifest(manifest)[1] if m.points is not None}
    written = 0
    for image in json.loads((package / "index.json").read_text())["images"]:
        points = truth[image["id"]]
        for region in image["regions"]:
            inside = (
                (points[:, 0] >= region["x0"])
                & (points[:, 0] < region["x1"])
                & (points[:, 1] >= region["y0"])
                & (points[:, 1] < region["y1"])
            )
            local = points[inside] - np.array([region["x"], region["y"]])
            (package / region["points"]).write_text(
                "# x y\n" + "".join(f"{float(x)!r} {float(y)!r}\n" for x, y in local)
            )
            written += int(inside.sum())
    return written


def test_crops_round_trip_without_the_oracle(tiny_data: Path, tmp_path: Path) -> None:
    out, manifest = tmp_path / "camp", pool_of(tiny_data)
    assert init(tiny_data, out, "--tool", "crops").exit_code == 0
    exported = run("campaign", "next", out, "--until-blocked")
    assert exported.exit_code == 0, exported.output
    package = out / "round-1" / "package"
    assert f"label the regions in {package}" in exported.stdout
    assert f"then run: crowdtk campaign next {out}" in exported.stdout
    assert f"+ crowdtk export {out}/round-1/regions.jsonl --to crops -o {package}" in exported.stderr
    status = json.loads(run("campaign", "status", out, "--json").stdout)
    assert status["rounds"][0]["package_state"] == "out" and status["next"] == {"round": 1, "phase": "labeling"}
    # Not labeled yet: the import refuses, and says what to label.
    assert_step_failed(run("campaign", "next", out), "finish labeling")
    heads = fill_crops(package, manifest)
    imported = run("campaign", "next", out, "--until-blocked")
    assert imported.exit_code == 0, imported.output
    assert f"+ crowdtk import {out}/round-1/regions.jsonl --from crops {package}" in imported.stderr
    assert "round 2: waiting for labels" in imported.stdout
    # What came back equals what the oracle would have labeled in those regions.
    oracle = tmp_path / "oracle.jsonl"
    assert run("import", out / "round-1" / "regions.jsonl", "--oracle", manifest, "-o", oracle, "-q").exit_code == 0
    _, labels = read_labels(out / "round-1" / "labels.jsonl")
    assert sum(len(e.points) for e in labels) == heads == sum(len(e.points) for e in read_labels(oracle)[1])
    fill_crops(out / "round-2" / "package", manifest)
    done = run("campaign", "next", out, "--until-blocked")
    assert done.exit_code == 0, done.output
    assert "campaign done" in done.stdout
    status = json.loads(run("campaign", "status", out, "--json").stdout)
    assert [r["package_state"] for r in status["rounds"]] == ["back", "back"]
    assert abs(status["spent"]["area_fraction"] - 0.1) <= 0.005


def test_status_of_a_folder_without_a_campaign(tmp_path: Path) -> None:
    assert_clean_failure(run("campaign", "status", tmp_path), "campaign init")
    assert_clean_failure(run("campaign", "next", tmp_path), "campaign init")


# --------------------------------------------------------------------------- starting from a counter


def test_an_initial_counter_replaces_the_warm_up_round(oracle_campaign: dict, tiny_data: Path, tmp_path: Path) -> None:
    counter, out = oracle_campaign["out"] / "round-1" / "model.safetensors", tmp_path / "camp"
    cache = tmp_path / "shared-cache"
    options = ("--oracle", pool_of(tiny_data), "--init", counter, "--finetune", "--feature-cache", cache)
    started = init(tiny_data, out, "--tool", "crops", *options)
    assert started.exit_code == 0, started.output
    plan = json.loads((out / "campaign.json").read_text())["plan"]
    assert [(p["strategy"], p["warmup"], p["budget"]) for p in plan] == [("mdc", False, 0.1)]
    status = run("campaign", "status", out)
    assert f"initial counter: {counter}" in status.stdout and "next: round 1 vectors" in status.stdout
    finished = run("campaign", "next", out, "--until-blocked")
    assert finished.exit_code == 0, finished.output
    commands = [line for line in finished.stderr.splitlines() if line.startswith("+ crowdtk ")]
    assert [c.split()[2] for c in commands] == ["vectors", "select", "import", "train", "strip-cap"]
    # The initial counter's vectors choose round 1's strips, and the final counter starts from its weights.
    assert commands[0].startswith(f"+ crowdtk vectors {counter} ") and f"-o {out}/init/vectors.npz" in commands[0]
    assert f"--strategy mdc --vectors {out}/init/vectors.npz" in commands[1]
    assert f"--init {counter}" in commands[3]
    assert f"--feature-cache {cache} " in commands[0] and f"--feature-cache {cache} " in commands[3]
    header, _ = read_regions(out / "round-1" / "regions.jsonl")
    assert abs(header["cumulative_area_fraction"] - 0.1) <= 0.005
    assert "round 1 (mdc): done" in run("campaign", "status", out).stdout


def test_an_initial_counter_is_checked_before_the_folder_is_made(
    oracle_campaign: dict, tiny_data: Path, tmp_path: Path
) -> None:
    counter, out = oracle_campaign["out"] / "round-1" / "model.safetensors", tmp_path / "camp"
    missing = init(tiny_data, out, "--tool", "crops", "--init", tmp_path / "none.st")
    assert_clean_failure(missing, "none.st", leftovers=out)
    assert_clean_failure(init(tiny_data, out, "--tool", "crops", "--finetune"), "--init", leftovers=out)
    other = init(tiny_data, out, "--tool", "crops", "--init", counter, "--finetune", "--model", "csrnet")
    assert_clean_failure(other, "--model lite", leftovers=out)
    three = init(tiny_data, out, "--tool", "crops", "--init", counter, "--rounds", "3")
    assert three.exit_code == 0, three.output
    plan = json.loads((out / "campaign.json").read_text())["plan"]
    assert [p["budget"] for p in plan] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1])
