"""A labeling campaign against a real Label Studio server (``make test-labelstudio``).

Label Studio runs on 127.0.0.1 with a temporary data folder; ``crowdtk serve`` on the campaign is its ML backend.
Through Label Studio's REST API, as its web page would: create a project with the package's labeling config, import
a round's tasks (the images served by Label Studio's local file serving), retrieve the backend's predictions, submit
the ground-truth heads inside the strips as annotations, and export the project. The project's webhook carries each
annotation to ``crowdtk serve``, which imports a round once all its images are annotated and trains the next counter.

Skipped without ``$CROWDTK_LABEL_STUDIO`` (the ``label-studio`` executable; the Makefile installs it in its own
virtual environment, as its pins clash with crowdtk's). With ``$CROWDTK_LABEL_STUDIO_SCREENSHOT=PNG`` the round-2
task's labeling page is also photographed by tools/labelstudio_screenshot.py (selenium and Chromium).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import HANG_GUARD_S, REPO, constant_counter, run

from crowdtk.campaign import Campaign
from crowdtk.checkpoint import read_header
from crowdtk.data import read_points
from crowdtk.files import file_digest
from crowdtk.formats import RegionsEntry, read_labels, read_manifest, read_regions
from crowdtk.labeling.common import ExportedImage
from crowdtk.labeling.labelstudio import labelstudio_task

EXECUTABLE = os.environ.get("CROWDTK_LABEL_STUDIO", "")
SCREENSHOT = os.environ.get("CROWDTK_LABEL_STUDIO_SCREENSHOT", "")

pytestmark = pytest.mark.skipif(
    not (EXECUTABLE and shutil.which(EXECUTABLE)),
    reason="Label Studio not installed: set $CROWDTK_LABEL_STUDIO to its label-studio executable "
    "(make test-labelstudio installs it in .venv-labelstudio and runs this test)",
)

USER, PASSWORD = "crowdtk@example.com", "crowdtk-test-password"
LS_TOKEN = "crowdtk0test0legacy0token"  # Label Studio's legacy API token of USER, set at its start
SERVE_TOKEN = "crowdtk-serve-test-token"  # what crowdtk serve asks of Label Studio (Basic auth password, webhook)
# The first start migrates a new database: about 2 minutes on an idle 2-core machine. A bound only a hang reaches.
START_GUARD_S = HANG_GUARD_S
# Two rounds; the counters' training as short as tests/test_campaign.py's.
QUICK = ("--steps", "2", "--warmup-steps", "1", "--batch-size", "2", "--no-pretrained", "--device", "cpu")
# A counter trained for one step suggests no head; round 1's is replaced by one that predicts this many heads in every
# 8x8-pixel cell (about the synthetic scenes' density), so that round 2's strips hold suggestions to check and show.
STAND_IN_PER_CELL = 0.15


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Any, guard: float = HANG_GUARD_S, every: float = 0.5) -> Any:
    """Poll ``check()`` until it returns something true (returned); fail after ``guard`` seconds naming ``what``."""
    end = time.monotonic() + guard
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"gave up waiting for {what} after {guard:.0f} s")
        time.sleep(every)


class LabelStudio:
    """A Label Studio server started for the test: its process group, log, and a REST client with USER's token."""

    def __init__(self, executable: str, data: Path, files_root: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data / "label-studio.log"
        env = {
            **os.environ,
            "LABEL_STUDIO_BASE_DATA_DIR": str(data),
            "LATEST_VERSION_CHECK": "false",  # no question to PyPI at start
            "COLLECT_ANALYTICS": "false",
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
            # crowdtk serve and its webhook listen on 127.0.0.1, which Label Studio refuses by default (SSRF).
            "ML_BLOCK_LOCAL_IP": "false",
            "SSRF_PROTECTION_ENABLED": "false",
            "LOCAL_FILES_SERVING_ENABLED": "true",
            "LOCAL_FILES_DOCUMENT_ROOT": str(files_root),
        }
        argv = [executable, "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(self.port)]
        argv += ["--host", self.url, "--data-dir", str(data), "--username", USER, "--password", PASSWORD]
        argv += ["--user-token", LS_TOKEN, "--enable-legacy-api-token"]
        self.log = self.log_path.open("wb")
        # Its own process group: Label Studio starts workers of its own, all stopped together in stop().
        self.process = subprocess.Popen(
            argv, env=env, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )

    def tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self) -> str:
        """Wait until it answers /version (and its user's token works); its version."""
        end = time.monotonic() + START_GUARD_S
        while time.monotonic() < end:
            if self.process.poll() is not None:
                pytest.fail(f"label-studio exited with {self.process.returncode}:\n{self.tail()}")
            try:
                self.api("GET", "/api/current-user/whoami")
            except (OSError, AssertionError):
                time.sleep(2)
                continue
            text = self.api("GET", "/version", raw=True).decode()  # JSON inside <pre>
            return str(json.loads(text[text.index("{") : text.rindex("}") + 1])["release"])
        pytest.fail(f"label-studio did not answer {self.url}/version within {START_GUARD_S:.0f} s:\n{self.tail()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(30)
            except ProcessLookupError:
                pass
        self.log.close()

    def api(self, method: str, path: str, body: Any = None, raw: bool = False) -> Any:
        """One REST call as USER; the decoded JSON answer (bytes with ``raw``). A refusal fails with its answer."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", f"Token {LS_TOKEN}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=300) as answer:
                content = answer.read()
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path}: {exc.code} {exc.read()[:2000]!r}") from None
        if raw:
            return content
        return json.loads(content) if content else None


class Serve:
    """``crowdtk serve`` on a campaign, in a thread of this process (its background training runs in a subprocess)."""

    def __init__(self, folder: Path) -> None:
        from crowdtk.serve import make_server

        self.server = make_server(folder, "127.0.0.1", 0, SERVE_TOKEN)
        self.url = self.server.url
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def health(self) -> dict[str, Any]:
        request = urllib.request.Request(self.url + "/health", headers={"Authorization": f"Token {SERVE_TOKEN}"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            return dict(json.loads(answer.read()))

    def stop(self) -> None:
        self.server.close(60)
        self.thread.join(60)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def files_root(tmp_path_factory) -> Path:
    """Label Studio's LOCAL_FILES_DOCUMENT_ROOT: the campaign lies under it, so its packages' images are served."""
    return tmp_path_factory.mktemp("ls-files")


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory, files_root: Path) -> Iterator[LabelStudio]:
    server = LabelStudio(EXECUTABLE, tmp_path_factory.mktemp("ls-data"), files_root)
    try:
        started = time.monotonic()
        version = server.wait_ready()
        print(f"label-studio {version} answered after {time.monotonic() - started:.0f} s")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def campaign(tiny_data: Path, files_root: Path, tmp_path_factory) -> Path:
    """A two-round campaign for Label Studio, its first round's package exported."""
    out = files_root / "camp"
    pool = tiny_data / "data" / "train" / "manifest.jsonl"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CROWDTK_CACHE_DIR", str(tmp_path_factory.mktemp("crowdtk-cache")))
        started = run("campaign", "init", pool, "-o", out, *QUICK, "--budget", "0.1", "--tool", "labelstudio")
        assert started.exit_code == 0, started.output
        exported = run("campaign", "next", out, "--until-blocked")
    assert exported.exit_code == 0, exported.output
    assert (out / "round-1" / "package" / "tasks.json").is_file()
    return out


@pytest.fixture(scope="module")
def serve(campaign: Path) -> Iterator[Serve]:
    server = Serve(campaign)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def project(label_studio: LabelStudio, campaign: Path, serve: Serve, files_root: Path) -> dict[str, Any]:
    """A Label Studio project with the package's labeling config, the campaign folder as local file storage,
    crowdtk serve as its ML backend, and a webhook of annotations to it."""
    config = (campaign / "round-1" / "package" / "config.xml").read_text()
    created = label_studio.api("POST", "/api/projects", {"title": "crowdtk campaign", "label_config": config})
    pid = created["id"]
    # The images are read where the package holds them; a storage makes that folder readable (never synced).
    storage = {"project": pid, "path": str(campaign), "title": "campaign", "use_blob_urls": False}
    label_studio.api("POST", "/api/storages/localfiles", storage)
    backend = {
        "project": pid,
        "url": serve.url,
        "title": "crowdtk serve",
        "auth_method": "BASIC_AUTH",
        "basic_auth_user": "label-studio",
        "basic_auth_pass": SERVE_TOKEN,
    }
    ml = label_studio.api("POST", "/api/ml", backend)
    hook = {
        "project": pid,
        "url": serve.url + "/webhook",
        "send_payload": True,
        "send_for_all_actions": False,
        "actions": ["ANNOTATION_CREATED", "ANNOTATION_UPDATED"],
        "headers": {"Authorization": f"Token {SERVE_TOKEN}"},
        "is_active": True,
    }
    label_studio.api("POST", "/api/webhooks/", hook)
    return {"id": pid, "ml": ml, "files_root": files_root, "round_tasks": {}}


# --------------------------------------------------------------------------- helpers


def entries_of(campaign: Path, k: int) -> dict[str, RegionsEntry]:
    _, entries = read_regions(campaign / f"round-{k}" / "regions.jsonl")
    return {e.id: e for e in entries if e.regions}


def truth_inside(entry: RegionsEntry, pool: Path) -> np.ndarray:
    """The ground-truth heads of ``entry``'s image inside its regions (what a careful labeler marks)."""
    manifest = {m.id: m for m in read_manifest(pool)[1]}[entry.id]
    assert manifest.points is not None
    points = read_points(manifest.points)
    inside = np.zeros(len(points), bool)
    for r in entry.regions:
        inside |= r.contains(points)
    return points[inside]


def import_round(ls: LabelStudio, project: dict[str, Any], campaign: Path, k: int) -> dict[str, int]:
    """Import round k's tasks.json with its image URLs made Label Studio's local-file URLs and without the
    package's predictions (the ML backend makes them); crowdtk id -> Label Studio task id."""
    package = campaign / f"round-{k}" / "package"
    tasks = json.loads((package / "tasks.json").read_text())
    where = package.relative_to(project["files_root"])
    for task in tasks:
        task.pop("predictions", None)
        task["data"]["image"] = "/data/local-files/?d=" + urllib.parse.quote(f"{where}/{task['data']['image']}")
    ls.api("POST", f"/api/projects/{project['id']}/import", tasks)
    listed = ls.api("GET", f"/api/tasks?project={project['id']}&page_size=1000&fields=all")
    listed = listed["tasks"] if isinstance(listed, dict) else listed
    ids = {t["data"]["crowdtk_id"]: t["id"] for t in listed if t["data"]["crowdtk_id"] in entries_of(campaign, k)}
    assert len(ids) == len(tasks)
    project["round_tasks"][k] = ids
    return ids


def retrieve_predictions(ls: LabelStudio, project: dict[str, Any], task_ids: list[int]) -> dict[int, list[dict]]:
    """Ask Label Studio for the ML backend's predictions of these tasks (the Data Manager's 'Retrieve
    Predictions'); each task's predictions as Label Studio stored them."""
    selected = {"all": False, "included": task_ids}
    ls.api(
        "POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={project['id']}", {"selectedItems": selected}
    )
    return {t: ls.api("GET", f"/api/predictions?task={t}") for t in task_ids}


def keypoints(result: list[dict], entry: RegionsEntry) -> np.ndarray:
    """The 'head' keypoints of a result list, in pixels."""
    points = [
        (r["value"]["x"] * entry.width / 100, r["value"]["y"] * entry.height / 100)
        for r in result
        if r["type"] == "keypointlabels" and "head" in r["value"]["keypointlabels"]
    ]
    return np.array(points, dtype=np.float64).reshape(-1, 2)


def region_boxes(result: list[dict], entry: RegionsEntry) -> list[list[float]]:
    return sorted(
        [
            r["value"]["x"] * entry.width / 100,
            r["value"]["y"] * entry.height / 100,
            (r["value"]["x"] + r["value"]["width"]) * entry.width / 100,
            (r["value"]["y"] + r["value"]["height"]) * entry.height / 100,
        ]
        for r in result
        if r["type"] == "rectanglelabels"
    )


def annotate_round(ls: LabelStudio, project: dict[str, Any], campaign: Path, k: int, pool: Path) -> int:
    """Submit, through Label Studio's API, each task's regions and the ground-truth heads inside them; heads sent."""
    entries, sent = entries_of(campaign, k), 0
    for crowdtk_id, task_id in project["round_tasks"][k].items():
        entry = entries[crowdtk_id]
        heads = truth_inside(entry, pool)
        result = labelstudio_task(ExportedImage(entry, points=heads), "")["annotations"][0]["result"]
        ls.api("POST", f"/api/tasks/{task_id}/annotations/", {"result": result, "was_cancelled": False})
        sent += len(heads)
    return sent


def wait_trained(serve: Serve, k: int) -> dict[str, Any]:
    """Wait until crowdtk serve's background run for round k ended; its /health."""

    def ended() -> dict[str, Any] | None:
        health = serve.health()
        training = health["training"]
        return health if training["round"] == k and training["state"] in ("done", "failed") else None

    health = wait_for(f"crowdtk serve to import and train round {k}", ended, every=1.0)
    assert health["training"]["state"] == "done", health
    return health


def points_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Same points in any order, to the precision of Label Studio's percent round trip."""
    if a.shape != b.shape:
        return False
    order_a, order_b = np.lexsort(a.T[::-1]), np.lexsort(b.T[::-1])
    return bool(np.allclose(a[order_a], b[order_b], atol=1e-6))


# --------------------------------------------------------------------------- the campaign, round by round


@pytest.fixture(scope="module")
def round_one(label_studio: LabelStudio, project: dict[str, Any], campaign: Path, serve: Serve) -> dict[str, Any]:
    """Round 1 imported, its predictions retrieved, labeled through Label Studio and trained by crowdtk serve."""
    ids = import_round(label_studio, project, campaign, 1)
    predictions = retrieve_predictions(label_studio, project, list(ids.values()))
    pool = Path(Campaign.load(campaign).settings.pool)
    sent = annotate_round(label_studio, project, campaign, 1, pool)
    health = wait_trained(serve, 1)
    return {"ids": ids, "predictions": predictions, "heads": sent, "health": health, "pool": pool}


def test_label_studio_connects_crowdtk_serve_as_its_ml_backend(
    label_studio: LabelStudio, project: dict[str, Any], serve: Serve
) -> None:
    backends = label_studio.api("GET", f"/api/ml?project={project['id']}")
    assert [b["url"] for b in backends] == [serve.url]
    # Label Studio called /setup with the project, which crowdtk serve now serves, and found it healthy.
    assert backends[0]["state"] == "CO", backends[0]
    assert serve.server.backend.project == str(project["id"])


def test_round_one_predictions_are_the_strips_before_any_counter(round_one: dict, campaign: Path) -> None:
    entries = entries_of(campaign, 1)
    for crowdtk_id, task_id in round_one["ids"].items():
        [prediction] = round_one["predictions"][task_id]
        assert prediction["model_version"] == "crowdtk select"
        entry = entries[crowdtk_id]
        expected = sorted([float(r.x0), float(r.y0), float(r.x1), float(r.y1)] for r in entry.regions)
        assert np.allclose(region_boxes(prediction["result"], entry), expected, atol=1e-6)
        assert len(keypoints(prediction["result"], entry)) == 0


def test_annotations_reach_crowdtk_serve_by_webhook_and_train_round_one(round_one: dict, campaign: Path) -> None:
    entries = entries_of(campaign, 1)
    recorded = sorted(p.stem for p in (campaign / "round-1" / "labelstudio-annotations").glob("*.json"))
    assert len(recorded) == len(entries) == len(round_one["ids"])
    c = Campaign.load(campaign)
    # The round's labels hold exactly the heads submitted in Label Studio, and its counter trained on that file.
    _, labels = read_labels(c.labels(1))
    assert {e.id for e in labels} == set(entries)
    for e in labels:
        assert points_equal(e.points, truth_inside(entries[e.id], round_one["pool"])), e.id
    assert sum(len(e.points) for e in labels) == round_one["heads"]
    assert read_header(c.model(1))["labels_sha256"] == file_digest(c.labels(1))
    # serve went on as `campaign next --until-blocked` does: round 2 is selected and its package waits for labels.
    assert c.current() == 2 and c.phase(2) == "labeling"
    assert round_one["health"]["model_version"].startswith("crowdtk prelabel ")


@pytest.fixture(scope="module")
def round_two(
    label_studio: LabelStudio, project: dict[str, Any], campaign: Path, serve: Serve, round_one: dict, tmp_path_factory
) -> dict[str, Any]:
    """Round 2 imported and its predictions (the warm-up counter's suggestions) retrieved; the labeling page
    photographed when asked; then labeled and trained (the campaign done)."""
    c = Campaign.load(campaign)
    constant_counter(c.model(1), c.model(1), STAND_IN_PER_CELL)  # crowdtk serve loads a changed checkpoint anew
    ids = import_round(label_studio, project, campaign, 2)
    predictions = retrieve_predictions(label_studio, project, list(ids.values()))
    # What `crowdtk export --prelabel` writes for these regions with the same counter.
    reference = tmp_path_factory.mktemp("prelabel") / "package"
    exported = run("export", c.regions(2), "--to", "labelstudio", "--prelabel", c.model(1), "-o", reference, "-q")
    assert exported.exit_code == 0, exported.output
    expected = {
        t["data"]["crowdtk_id"]: t["predictions"][0] for t in json.loads((reference / "tasks.json").read_text())
    }
    if SCREENSHOT:
        shot(label_studio, project, ids, predictions, Path(SCREENSHOT))
    sent = annotate_round(label_studio, project, campaign, 2, round_one["pool"])
    health = wait_trained(serve, 2)
    return {"ids": ids, "predictions": predictions, "expected": expected, "heads": sent, "health": health}


def shot(ls: LabelStudio, project: dict[str, Any], ids: dict[str, int], predictions: dict, out: Path) -> None:
    """The labeling page of the round-2 task with the most suggested heads, photographed into ``out``."""
    task = max(ids.values(), key=lambda t: sum(r["type"] == "keypointlabels" for r in predictions[t][0]["result"]))
    # The editor starts a task from the predictions of the project's model version ("Use predictions to prelabel").
    version = predictions[task][0]["model_version"]
    ls.api("PATCH", f"/api/projects/{project['id']}", {"model_version": version, "show_collab_predictions": True})
    python = Path(shutil.which(EXECUTABLE) or EXECUTABLE).parent / "python"
    argv = [str(python), str(REPO / "tools" / "labelstudio_screenshot.py"), "--url", ls.url, "--email", USER]
    argv += ["--password", PASSWORD, "--project", str(project["id"]), "--task", str(task), "-o", str(out.resolve())]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stdout + done.stderr


def test_round_two_predictions_are_the_counters_suggestions_in_the_strips(round_two: dict, campaign: Path) -> None:
    entries = entries_of(campaign, 2)
    suggested = 0
    for crowdtk_id, task_id in round_two["ids"].items():
        [prediction] = round_two["predictions"][task_id]
        expected, entry = round_two["expected"][crowdtk_id], entries[crowdtk_id]
        assert prediction["model_version"] == round_one_version(campaign)
        heads = keypoints(prediction["result"], entry)
        # Every suggestion lies inside the task's strips, and they are export --prelabel's, score for score.
        assert all(any(r.contains(h[None])[0] for r in entry.regions) for h in heads)
        assert points_equal(heads, keypoints(expected["result"], entry))
        scores = sorted(r["score"] for r in prediction["result"] if r["type"] == "keypointlabels")
        assert scores == sorted(r["score"] for r in expected["result"] if r["type"] == "keypointlabels")
        assert np.allclose(region_boxes(prediction["result"], entry), region_boxes(expected["result"], entry))
        suggested += len(heads)
    assert suggested > 0


def round_one_version(campaign: Path) -> str:
    """The model version crowdtk serve gives round 1's counter (checkpoint path and digest)."""
    model = Campaign.load(campaign).model(1)
    name = read_header(model)["model"]["name"]
    return f"crowdtk prelabel {name} round-1/model.safetensors {file_digest(model)[:12]}"


def test_the_projects_export_holds_exactly_the_points_the_counters_trained_on(
    label_studio: LabelStudio, project: dict[str, Any], campaign: Path, round_two: dict, tmp_path: Path
) -> None:
    c = Campaign.load(campaign)
    assert c.current() is None  # both rounds labeled in Label Studio, the final counter trained
    export = tmp_path / "export.json"
    export.write_bytes(label_studio.api("GET", f"/api/projects/{project['id']}/export?exportType=JSON", raw=True))
    assert len(json.loads(export.read_text())) == len(entries_of(campaign, 1)) + len(entries_of(campaign, 2))
    # Each round imported from Label Studio's export of the project gives exactly the labels file its counter
    # trained on (the export holds both rounds' tasks; each import reads its own round's).
    for k in (1, 2):
        again = tmp_path / f"round-{k}.jsonl"
        merge = ("--merge", tmp_path / "round-1.jsonl") if k == 2 else ()
        result = run("import", c.regions(k), "--from", "labelstudio", export, *merge, "-o", again, "-q")
        assert result.exit_code == 0, result.output
        assert [(e.id, e.points.tolist()) for e in read_labels(again)[1]] == [
            (e.id, e.points.tolist()) for e in read_labels(c.labels(k))[1]
        ]
        assert read_header(c.model(k))["labels_sha256"] == file_digest(c.labels(k))
