"""crowdtk serve: the Label Studio ML backend of a campaign, over HTTP on 127.0.0.1, against a tiny generated pool."""

from __future__ import annotations

import base64
import http.client
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import numpy as np
import pytest
from conftest import HANG_GUARD_S, assert_clean_failure, constant_counter, run, small_checkpoint

from crowdtk.campaign import Campaign
from crowdtk.data import read_points
from crowdtk.formats import read_labels, read_manifest, read_regions
from crowdtk.predict_config import PredictConfig
from crowdtk.serve import ANNOTATIONS, EXPORT, NO_COUNTER, CampaignServer, Worker, current_checkpoint, make_server

# As tests/test_campaign.py: one optimizer step for the warm-up counter, random weights: the loop, not the counts.
QUICK = ("--steps", "2", "--warmup-steps", "1", "--batch-size", "2", "--no-pretrained", "--device", "cpu")
PROJECT = "7.1700000000"  # Label Studio's '<project id>.<created at>'
CPU = PredictConfig(device="cpu")


# --------------------------------------------------------------------------- HTTP helpers


def call(server: CampaignServer, path: str, body: Any = None, method: str | None = None, **headers: str):
    """(status, JSON answer) of one request; ``body`` bytes are sent as they are, anything else as JSON."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = Request(server.url + path, data=data, method=method or ("GET" if data is None else "POST"))
    for name, value in headers.items():
        request.add_header(name.replace("_", "-"), value)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urlopen(request, timeout=HANG_GUARD_S) as response:
            return response.status, json.loads(response.read())
    except HTTPError as error:
        return error.code, json.loads(error.read())


def raw_call(server: CampaignServer, method: str, path: str, headers: dict[str, str]) -> tuple[int, dict]:
    """A request with exactly these headers and no body (urllib would add a Content-Length of its own)."""
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(str(host), port, timeout=HANG_GUARD_S)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def started(server: CampaignServer) -> CampaignServer:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# --------------------------------------------------------------------------- the campaign and its tasks


def keypoints(entry, points: np.ndarray) -> list[dict]:
    """Head points as a labeler's keypoint results in Label Studio (percent of the image)."""
    return [
        {
            "id": f"h{k}",
            "from_name": "kp",
            "to_name": "image",
            "type": "keypointlabels",
            "original_width": entry.width,
            "original_height": entry.height,
            "value": {
                "x": 100 * float(x) / entry.width,
                "y": 100 * float(y) / entry.height,
                "width": 0.5,
                "keypointlabels": ["head"],
            },
        }
        for k, (x, y) in enumerate(points)
    ]


def annotated(task: dict, number: int, entry, points: np.ndarray, action: str = "ANNOTATION_CREATED", **extra):
    """A Label Studio webhook event: task ``number`` of the package annotated with ``points``."""
    annotation = {"id": 100 + number, "task": number, "result": keypoints(entry, points), "was_cancelled": False}
    annotation.update(extra)
    return {
        "action": action,
        "annotation": annotation,
        "task": {"id": number, "data": task["data"], "project": 7},
        "project": {"id": 7, "title": "crowds"},
    }


@pytest.fixture(scope="module")
def campaign(tiny_data: Path, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """A Label Studio campaign waiting for round 1's labels, its tasks, and its server on a free port."""
    root = tmp_path_factory.mktemp("serve")
    out, pool = root / "camp", tiny_data / "data" / "train" / "manifest.jsonl"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CROWDTK_CACHE_DIR", str(tmp_path_factory.mktemp("crowdtk-cache")))
        made = run("campaign", "init", pool, "-o", out, "--tool", "labelstudio", *QUICK)
        assert made.exit_code == 0, made.output
        exported = run("campaign", "next", out, "--until-blocked")
        assert exported.exit_code == 0, exported.output
        server = started(make_server(out, port=0, predict=CPU))
        try:
            yield {"out": out, "pool": pool, "server": server, "root": root}
        finally:
            server.close(HANG_GUARD_S)


def round_tasks(out: Path, k: int) -> tuple[list[dict], list, str]:
    """Round k's package: its tasks, its regions entries (in the tasks' order) and its labeling config."""
    package = out / f"round-{k}" / "package"
    tasks = json.loads((package / "tasks.json").read_text())
    _, entries = read_regions(out / f"round-{k}" / "regions.jsonl")
    assert [t["data"]["crowdtk_id"] for t in tasks] == [e.id for e in entries]
    return tasks, entries, (package / "config.xml").read_text()


def truth_inside(pool: Path, entry) -> np.ndarray:
    """The ground-truth heads of ``entry``'s image inside its regions (what a careful labeler marks)."""
    manifest = {m.id: m.points for m in read_manifest(pool)[1]}
    source = manifest[entry.id]
    assert source is not None
    points = read_points(source)
    inside = np.zeros(len(points), bool)
    for r in entry.regions:
        inside |= r.contains(points)
    return points[inside]


# --------------------------------------------------------------------------- health, setup, predict


def test_health_names_the_campaign_and_no_counter_yet(campaign: dict) -> None:
    for path in ("/health", "/"):
        status, answer = call(campaign["server"], path)
        assert status == 200, answer
        assert answer["status"] == "UP" and answer["model_class"] == "CrowdtkCampaign"
        assert answer["model_version"] == NO_COUNTER
        assert answer["round"] == 1 and answer["phase"] == "labeling"


def test_setup_answers_the_model_version(campaign: dict) -> None:
    _, _, config = round_tasks(campaign["out"], 1)
    status, answer = call(campaign["server"], "/setup", {"project": PROJECT, "schema": config, "hostname": "x"})
    assert (status, answer) == (200, {"model_version": NO_COUNTER})


def test_predict_before_a_counter_answers_the_strips_as_export_does(campaign: dict) -> None:
    tasks, _, config = round_tasks(campaign["out"], 1)
    body = {
        "tasks": [{"id": n, "data": t["data"]} for n, t in enumerate(tasks)],
        "project": PROJECT,
        "label_config": config,
        "params": {"login": None, "password": None, "context": None},
    }
    status, answer = call(campaign["server"], "/predict", body)
    assert status == 200, answer
    assert answer["results"] == [t["predictions"][0] for t in tasks]
    assert answer["model_version"] == NO_COUNTER
    # A task found by its image's file name when its data lost crowdtk's id.
    name = Path(tasks[0]["data"]["image"]).name
    for image in (f"http://files.example/{name}", f"/data/local-files/?d=camp/round-1/package/images/{name}"):
        body = {"tasks": [{"id": 1, "data": {"image": image}}], "project": PROJECT}
        status, answer = call(campaign["server"], "/predict", body)
        assert status == 200 and answer["results"] == [tasks[0]["predictions"][0]], answer


# --------------------------------------------------------------------------- validation


def test_every_malformed_request_gets_a_4xx_naming_the_problem(campaign: dict) -> None:
    server = campaign["server"]
    tasks, entries, config = round_tasks(campaign["out"], 1)
    data = tasks[0]["data"]

    def predict(**body: Any) -> dict:
        return {"tasks": [{"id": 1, "data": data}], "project": PROJECT, **body}

    cases: list[tuple[str, Any, int, str]] = [
        ("/predict", b"{not json", 400, "not JSON"),
        ("/predict", b"\xff\xfe", 400, "not JSON"),
        ("/predict", [1, 2], 400, "not a JSON object"),
        ("/predict", {"tasks": "all", "project": PROJECT}, 400, "'tasks' is not a list"),
        ("/predict", {"tasks": [3], "project": PROJECT}, 400, "task 0 is not an object"),
        ("/predict", {"tasks": [{"id": 4}], "project": PROJECT}, 400, "'data' is not an object"),
        ("/predict", {"tasks": [{"id": 4, "data": {"crowdtk_id": 5}}], "project": PROJECT}, 400, "crowdtk_id"),
        ("/predict", {"tasks": [{"id": 4, "data": {"text": "x"}}], "project": PROJECT}, 400, "neither"),
        ("/predict", {"tasks": [{"id": 4, "data": {"crowdtk_id": "elsewhere"}}]}, 422, "'elsewhere' is no image"),
        ("/predict", {"tasks": [{"id": 4, "data": {"image": "s3://b/other.png"}}]}, 422, "'s3://b/other.png'"),
        ("/predict", {"tasks": [{"id": 4, "data": {"image": "/data/local-files/?d=../x.png"}}]}, 422, "outside"),
        ("/predict", predict(project="8.1700000000"), 409, "project 8 is not"),
        ("/predict", predict(project=[7]), 400, "'project'"),
        ("/predict", predict(label_config=7), 400, "label_config is not a string"),
        ("/predict", predict(label_config="<View><Image"), 400, "not XML"),
        ("/predict", predict(label_config="<View><Image name='image'/></View>"), 422, "KeyPointLabels 'kp'"),
        ("/predict", predict(params=[1]), 400, "'params' is not an object"),
        ("/setup", {"project": "9.1", "schema": config}, 409, "project 9 is not"),
        ("/webhook", {"project": {"id": 7}}, 400, "'action'"),
        ("/webhook", {"action": "ANNOTATION_CREATED", "annotation": [], "task": {}}, 400, "'annotation'"),
        ("/webhook", {"action": "ANNOTATION_CREATED", "annotation": {"result": {}}, "task": {}}, 400, "result"),
        ("/webhook", {"action": "ANNOTATIONS_DELETED", "annotations": 3}, 400, "not a list"),
        ("/webhook", {"action": "ANNOTATION_UPDATED", "annotation": {"result": []}, "task": 1}, 400, "'task'"),
    ]
    moved = dict(data, regions=[[0, 0, 8, 8]])
    cases.append(("/predict", {"tasks": [{"id": 9, "data": moved}], "project": PROJECT}, 422, "regions"))
    bad_point = annotated(tasks[0], 0, entries[0], np.zeros((0, 2)))
    bad_point["annotation"]["result"] = [{"type": "keypointlabels", "value": {"keypointlabels": ["head"]}}]
    cases.append(("/webhook", bad_point, 422, "lacks numeric x/y"))
    wrong_size = annotated(tasks[0], 0, entries[0], np.array([[1.0, 1.0]]))
    wrong_size["annotation"]["result"][0]["original_width"] = entries[0].width + 1
    cases.append(("/webhook", wrong_size, 422, "task 0"))
    for path, body, code, names in cases:
        status, answer = call(server, path, body)
        assert (status, set(answer)) == (code, {"error"}), (path, body, answer)
        assert names in answer["error"] and "Traceback" not in answer["error"], (path, body, answer)
    # Nothing was recorded from the refused annotations.
    assert not list((campaign["out"] / "round-1" / ANNOTATIONS).glob("*.json"))
    # Paths, methods, lengths.
    assert call(server, "/nowhere")[0] == 404
    assert call(server, "/predict/extra", {})[0] == 404
    assert call(server, "/predict")[0] == 405
    assert call(server, "/health", {})[0] == 405
    assert call(server, "/webhook", method="PUT", body=b"{}")[0] == 405
    assert raw_call(server, "POST", "/predict", {})[0] == 411
    assert raw_call(server, "POST", "/predict", {"Content-Length": "lots"})[0] == 400
    status, answer = raw_call(server, "POST", "/predict", {"Content-Length": str(17 << 20)})
    assert status == 413 and "at most 16777216" in answer["error"], answer
    # An action the backend has no use for is acknowledged.
    assert call(server, "/webhook", {"action": "PROJECT_UPDATED", "project": {"id": 99}}) == (
        200,
        {"status": "ignored", "action": "PROJECT_UPDATED"},
    )
    # The server still answers.
    assert call(server, "/health")[0] == 200


def test_a_token_is_required_when_given(campaign: dict) -> None:
    server = started(make_server(campaign["out"], port=0, token="s3cret", predict=CPU))
    try:

        def basic(user: str, password: str) -> str:
            return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

        for refused in (None, "Token wrong", "Bearer s3cre", "s3cret", basic("label-studio", "wrong"), "Basic !!"):
            headers = {} if refused is None else {"Authorization": refused}
            status, answer = call(server, "/health", **headers)
            assert status == 401 and "token" in answer["error"], (refused, answer)
            assert call(server, "/predict", {"tasks": []}, **headers)[0] == 401
        for accepted in ("Token s3cret", "Bearer s3cret", basic("label-studio", "s3cret"), basic("", "s3cret")):
            status, answer = call(server, "/health", Authorization=accepted)
            assert status == 200 and answer["status"] == "UP", (accepted, answer)
        # Unknown paths are not told apart from known ones without the token.
        assert call(server, "/nowhere")[0] == 401
    finally:
        server.close(HANG_GUARD_S)


def test_serve_refuses_a_folder_without_a_campaign_and_a_campaign_of_another_tool(
    campaign: dict, tiny_data: Path
) -> None:
    assert_clean_failure(run("serve", campaign["root"] / "nothing"), "campaign init")
    crops = campaign["root"] / "crops-camp"
    assert run("campaign", "init", campaign["pool"], "-o", crops, "--tool", "crops", *QUICK).exit_code == 0
    assert_clean_failure(run("serve", crops, "--port", "0"), "not Label Studio")


# --------------------------------------------------------------------------- the worker


def test_the_worker_runs_one_job_at_a_time_and_coalesces_triggers() -> None:
    release, entered = threading.Event(), threading.Event()
    active, most = [0], [0]
    lock = threading.Lock()

    def job() -> None:
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        entered.set()
        assert release.wait(HANG_GUARD_S)
        with lock:
            active[0] -= 1

    worker = Worker(job)
    worker.trigger()
    assert entered.wait(HANG_GUARD_S)
    for _ in range(3):  # while the first run holds: one more run, not three
        worker.trigger()
    assert worker.running
    release.set()
    assert worker.wait(HANG_GUARD_S)
    assert worker.runs == 2 and most[0] == 1 and not worker.running
    worker.trigger()  # idle again: a trigger runs it once more
    assert worker.wait(HANG_GUARD_S) and worker.runs == 3


# --------------------------------------------------------------------------- annotations to the next round


@pytest.fixture(scope="module")
def labeled(campaign: dict) -> dict[str, Any]:
    """Round 1 annotated through webhooks (a skipped task, a deleted annotation, a repeated last event), and the
    training it triggered finished."""
    server, out = campaign["server"], campaign["out"]
    tasks, entries, _ = round_tasks(out, 1)
    assert len(tasks) >= 2
    answers = []
    # The first task: skipped, then annotated, then that annotation deleted, then annotated again.
    truth = [truth_inside(campaign["pool"], e) for e in entries]
    skipped = annotated(tasks[0], 0, entries[0], truth[0][:0], was_cancelled=True)
    answers.append(call(server, "/webhook", skipped))
    answers.append(call(server, "/webhook", annotated(tasks[0], 0, entries[0], truth[0][:1])))
    deleted = {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 100}], "project": {"id": 7}}
    answers.append(call(server, "/webhook", deleted))
    deleted_gone = not (out / "round-1" / ANNOTATIONS / f"{entries[0].id}.json").exists()
    early = call(server, "/webhook", {"action": "START_TRAINING", "project": {"id": 7}})
    for n in range(len(tasks) - 1):
        answers.append(call(server, "/webhook", annotated(tasks[n], n, entries[n], truth[n], "ANNOTATION_UPDATED")))
    before_last = [p.name for p in (out / "round-1" / ANNOTATIONS).glob("*.json")]
    n = len(tasks) - 1
    last = call(server, "/webhook", annotated(tasks[n], n, entries[n], truth[n]))
    # The same event again, at once: recorded and coalesced while the job runs, or refused once it has imported.
    again = call(server, "/webhook", annotated(tasks[n], n, entries[n], truth[n], "ANNOTATION_UPDATED"))
    assert server.backend.worker.wait(HANG_GUARD_S)
    return {
        "answers": answers,
        "deleted_gone": deleted_gone,
        "early": early,
        "before_last": before_last,
        "last": last,
        "again": again,
        "truth": truth,
        "entries": entries,
    }


def test_webhooks_record_each_annotation_in_the_round(campaign: dict, labeled: dict) -> None:
    out, entries = campaign["out"], labeled["entries"]
    assert all(status == 200 for status, _ in labeled["answers"]), labeled["answers"]
    assert labeled["answers"][0][1]["status"] == "recorded" and labeled["answers"][0][1]["left"] == len(entries)
    assert labeled["answers"][2][1] == {"status": "deleted", "images": [entries[0].id]}
    assert labeled["deleted_gone"]
    status, early = labeled["early"]
    assert status == 409 and f"{len(entries)} of {len(entries)} images" in early["error"], early
    assert len(labeled["before_last"]) == len(entries) - 1
    status, last = labeled["last"]
    assert status == 200 and last["left"] == 0 and last["training"], last
    assert labeled["again"][0] in (200, 409), labeled["again"]
    for entry in entries:
        record = json.loads((out / "round-1" / ANNOTATIONS / f"{entry.id}.json").read_text())
        assert record["data"]["crowdtk_id"] == entry.id and record["project"] == "7"
        assert not record["annotations"][0]["was_cancelled"]


def test_a_complete_round_is_imported_and_trained_by_exactly_one_job(campaign: dict, labeled: dict) -> None:
    backend, out = campaign["server"].backend, campaign["out"]
    assert backend.training.launched == 1 and backend.training.state == "done", backend.training
    export = json.loads((out / "round-1" / EXPORT).read_text())
    assert [t["data"]["crowdtk_id"] for t in export] == [e.id for e in labeled["entries"]]
    # The labels are the annotated heads, as `import --from labelstudio` of the export reads them.
    _, labels = read_labels(out / "round-1" / "labels.jsonl")
    by_id = {e.id: e for e in labels}
    for entry, truth in zip(labeled["entries"], labeled["truth"]):
        got = by_id[entry.id].points
        assert len(got) == len(truth)
        assert np.allclose(np.sort(got, axis=0), np.sort(truth, axis=0), atol=1e-6)
    status = json.loads(run("campaign", "status", out, "--json").stdout)
    assert status["rounds"][0]["returned"] == str(out / "round-1" / EXPORT)
    assert status["next"] == {"round": 2, "phase": "labeling"}
    # A new model version: the warm-up counter, by its path in the campaign and its digest.
    _, health = call(campaign["server"], "/health")
    assert health["model_version"].startswith("crowdtk prelabel lite round-1/model.safetensors ")
    assert health["training"]["state"] == "done" and health["training"]["launched"] == 1
    # Round 1 is labeled: its tasks are answered, but take no annotations; round 2 is not complete.
    tasks, entries, _ = round_tasks(out, 1)
    status_code, answer = call(campaign["server"], "/webhook", annotated(tasks[0], 0, entries[0], np.zeros((0, 2))))
    assert status_code == 409 and "round 2 is the round waiting" in answer["error"], answer
    status_code, answer = call(campaign["server"], "/webhook", {"action": "START_TRAINING", "project": {"id": 7}})
    assert status_code == 409 and "round 2 has" in answer["error"], answer
    assert backend.training.launched == 1


def test_predictions_are_the_counters_suggestions_as_export_prelabel_writes_them(campaign: dict, labeled: dict) -> None:
    server, out = campaign["server"], campaign["out"]
    tasks, entries, config = round_tasks(out, 2)
    # A counter that predicts heads everywhere, put in place of the warm-up counter: the server reloads it.
    model = out / "round-1" / "model.safetensors"
    before = call(server, "/health")[1]["model_version"]
    swapped = constant_counter(model, out / "round-1" / ".swap.safetensors", 0.05)
    os.replace(swapped, model)
    body = {"tasks": [{"id": n, "data": t["data"]} for n, t in enumerate(tasks)], "project": PROJECT}
    status, answer = call(server, "/predict", {**body, "label_config": config})
    assert status == 200, answer
    version = answer["model_version"]
    assert version != before and version.startswith("crowdtk prelabel lite round-1/model.safetensors ")
    exported = campaign["root"] / "prelabeled"
    regions = out / "round-2" / "regions.jsonl"
    result = run("export", regions, "--to", "labelstudio", "--prelabel", model, "--device", "cpu", "-o", exported)
    assert result.exit_code == 0, result.output
    expected = [t["predictions"][0] for t in json.loads((exported / "tasks.json").read_text())]
    heads = 0
    for got, want, entry in zip(answer["results"], expected, entries):
        assert got["model_version"] == version
        assert got["result"] == want["result"] and got.get("score") == want.get("score")
        for r in got["result"]:
            if r["type"] != "keypointlabels":
                continue
            heads += 1
            x, y = r["value"]["x"] * entry.width / 100, r["value"]["y"] * entry.height / 100
            assert any(g.x0 <= x < g.x1 and g.y0 <= y < g.y1 for g in entry.regions), (x, y, entry.regions)
    assert heads > 0  # the comparison compared suggestions, not empty lists
    # Asked again: the same answer, from the loaded counter.
    assert call(server, "/predict", body) == (200, answer)


def test_a_campaign_started_from_a_counter_predicts_with_it_before_any_round_trains(
    tiny_data: Path, tmp_path: Path
) -> None:
    ckpt = small_checkpoint(tmp_path / "mine.safetensors")
    out, pool = tmp_path / "camp", tiny_data / "data" / "train" / "manifest.jsonl"
    made = run("campaign", "init", pool, "-o", out, "--tool", "labelstudio", "--init", ckpt, *QUICK)
    assert made.exit_code == 0, made.output
    assert current_checkpoint(Campaign.load(out)) == ckpt.resolve()
