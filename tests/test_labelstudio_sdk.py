"""`crowdtk export --to labelstudio` read by Label Studio's own parser: label-studio-sdk's LabelInterface
validates the package's config.xml and every task's data, predictions and annotations.

Skipped where label-studio-sdk is not installed: it is the ``readers`` extra, which ``make test-readers``
installs and runs (``make test`` does not: see the Makefile for its cost). Every prediction of
every task goes through the same loop (``assert_package_valid``), so a prediction that gains
suggested heads (``keypointlabels`` with a per-result ``score``, the prediction's
``model_version`` and ``score``) is checked like the regions' rectangles.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

pytest.importorskip(
    "label_studio_sdk", reason="label-studio-sdk is not installed: make test-readers (pip install -e '.[test,readers]')"
)

from conftest import export_package, run  # noqa: E402
from label_studio_sdk.label_interface import LabelInterface  # noqa: E402

from crowdtk.formats import read_labels, read_regions  # noqa: E402


def interface(out: Path) -> LabelInterface:
    """The package's config.xml parsed and validated (schema, unique names, toName links) by the SDK."""
    li = LabelInterface((out / "config.xml").read_text())
    li.validate()  # raises on an invalid config
    return li


def prediction_errors(li: LabelInterface, prediction: dict) -> list[str]:
    """The SDK's messages for ``prediction`` (its region, label, type and score checks); [] when valid."""
    return li.validate_prediction(prediction, return_errors=True)


def assert_package_valid(out: Path) -> list[dict]:
    """Every task of the package validates against its config: the data the config's objects read,
    each prediction (validate_prediction) and each annotation (validate_annotation). The tasks."""
    li = interface(out)
    tasks = json.loads((out / "tasks.json").read_text())
    assert tasks
    for task in tasks:
        where = task["data"].get("crowdtk_id")
        # validate_task (2.0.18 and 2.1.x) calls validate_prediction() / validate_annotation() without their argument
        # when a task has predictions / annotations (a TypeError): it checks the data here, the rest below.
        assert li.validate_task({"data": task["data"]}), where
        assert task["predictions"], where
        for prediction in task["predictions"]:
            assert prediction["result"], where
            assert prediction_errors(li, prediction) == [], where
        for annotation in task.get("annotations", []):
            assert li.validate_annotation(annotation), (where, prediction_errors(li, annotation))
        for item in task["predictions"] + task.get("annotations", []):
            # Label Studio joins results sharing an id into one region: each region's id is its own.
            ids = [result["id"] for result in item["result"]]
            assert len(ids) == len(set(ids)), (where, ids)
    return tasks


def results_of(item: dict, kind: str) -> list[dict]:
    return [r for r in item["result"] if r["type"] == kind]


def test_config_has_the_tags_crowdtk_uses(labeled):
    li = interface(export_package(labeled, "labelstudio"))
    kp, region, image = li.get_control("kp"), li.get_control("region"), li.get_object("image")
    assert (kp.tag, kp.labels, kp.to_name) == ("KeyPointLabels", ["head"], ["image"])
    assert (region.tag, region.labels, region.to_name) == ("RectangleLabels", ["region"], ["image"])
    assert image.tag == "Image" and image.value_name == "image"
    assert {c.name for c in li.controls} == {"kp", "region"}


def test_tasks_and_their_predictions_validate(labeled):
    out = export_package(labeled, "labelstudio")
    tasks = assert_package_valid(out)
    _, regions = read_regions(labeled["regions"])
    assert [t["data"]["crowdtk_id"] for t in tasks] == [e.id for e in regions]
    for task, entry in zip(tasks, regions):
        assert "annotations" not in task
        rects = [r for p in task["predictions"] for r in results_of(p, "rectanglelabels")]
        assert len(rects) == len(entry.regions)


@pytest.fixture
def review_package(labeled) -> Path:
    """`crowdtk export LABELS --to labelstudio` of `labeled`'s oracle labels: a review round's package."""
    out = labeled["tmp"] / "review-ls"
    result = run("export", labeled["oracle"], "--to", "labelstudio", "-o", out)
    assert result.exit_code == 0, result.output
    return out


def test_review_round_annotations_validate(labeled, review_package):
    tasks = assert_package_valid(review_package)
    _, entries = read_labels(labeled["oracle"])
    by_id = {e.id: e for e in entries}
    heads = 0
    for task in tasks:
        entry = by_id[task["data"]["crowdtk_id"]]
        (annotation,) = task["annotations"]
        assert len(results_of(annotation, "rectanglelabels")) == len(entry.regions)
        assert len(results_of(annotation, "keypointlabels")) == len(entry.points)
        heads += len(entry.points)
    assert heads > 0  # the keypoints were checked, not only the rectangles


def test_prelabel_suggestions_validate(labeled, warm_ckpt):
    out = labeled["tmp"] / "prelabel-ls"
    result = run("export", labeled["regions"], "--to", "labelstudio", "--prelabel", warm_ckpt, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    for task in assert_package_valid(out):
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == f"crowdtk prelabel lite {warm_ckpt.name}"
        heads = results_of(prediction, "keypointlabels")
        assert ("score" in prediction) == bool(heads)  # no score without suggestions
        assert all(0 <= head["score"] <= 1 for head in heads)


def test_suggested_heads_in_a_prediction_validate(review_package):
    """A prediction of the form --prelabel writes (the regions and scored head keypoints, the prediction's
    model_version and score), made of a review round's heads: a one-epoch counter may suggest none."""
    li = interface(review_package)
    for task in json.loads((review_package / "tasks.json").read_text()):
        result = copy.deepcopy(task["annotations"][0]["result"])
        for head in (r for r in result if r["type"] == "keypointlabels"):
            head["id"], head["score"] = head["id"].replace("head", "suggested"), 0.75
        assert (
            prediction_errors(
                li, {"model_version": "crowdtk prelabel lite m.safetensors", "score": 0.75, "result": result}
            )
            == []
        )


def test_the_sdk_rejects_what_label_studio_would(review_package):
    """Not vacuous: an unknown label, an unknown control, a wrong type, an out-of-range score and a
    task without its image each fail the same checks the export passes."""
    li = interface(review_package)
    task = next(
        t
        for t in json.loads((review_package / "tasks.json").read_text())
        if results_of(t["annotations"][0], "keypointlabels")
    )
    annotation, prediction = task["annotations"][0], task["predictions"][0]
    assert li.validate_annotation(annotation) and prediction_errors(li, prediction) == []

    def changed(item: dict, kind: str, edit) -> dict:
        item = copy.deepcopy(item)
        edit(results_of(item, kind)[0])
        return item

    unknown_label = changed(annotation, "keypointlabels", lambda r: r["value"].update(keypointlabels=["tail"]))
    assert not li.validate_annotation(unknown_label)
    assert any("'kp'" in e for e in prediction_errors(li, unknown_label))
    unknown_control = changed(prediction, "rectanglelabels", lambda r: r.update(from_name="regions"))
    assert any("'regions' not found" in e for e in prediction_errors(li, unknown_control))
    wrong_type = changed(prediction, "rectanglelabels", lambda r: r.update(type="keypointlabels"))
    assert prediction_errors(li, wrong_type)
    assert prediction_errors(li, {**prediction, "model_version": "m", "score": 1.5})
    assert not li.validate_task({"data": {k: v for k, v in task["data"].items() if k != "image"}})
