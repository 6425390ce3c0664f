"""A Label Studio ML backend for one labeling campaign (``crowdtk serve DIR``).

Label Studio talks to an ML backend over a small HTTP protocol: ``GET /health`` (and ``/``) answers
``{"status": "UP", ...}``; ``POST /setup`` (when the model is connected) answers the model version;
``POST /predict`` with ``{"tasks": [...], "project": "<id>.<created>", "label_config": ..., "params": ...}``
answers ``{"results": [one prediction per task], "model_version": ...}``; ``POST /webhook`` receives the
project's events (``{"action": "ANNOTATION_CREATED", "annotation": {...}, "task": {...}, "project": {...}}``).

Here a task is one image of a campaign round's package (``export --to labelstudio``), found by the
``crowdtk_id`` its data carries. A prediction is exactly what ``export --prelabel CKPT`` puts into that task:
the round's regions and the campaign's current counter's suggested heads inside them, with their scores;
before any counter is trained, the regions alone (as ``export`` writes them, model version ``crowdtk select``).
The counter is loaded once and again only when the campaign's current checkpoint changes.

Annotations are recorded in the folder of the round waiting for labels, one Label Studio task (as Label
Studio's JSON export holds it) per image in ``round-K/labelstudio-annotations/<image file stem>.json``. When
every image of the round has a submitted annotation, they are assembled into ``round-K/labelstudio-export.json``
and ``crowdtk campaign next DIR --package round-K/labelstudio-export.json --until-blocked`` runs in a background
worker: it imports the labels, trains the round's counter and prepares the next round, the same commands a
person would run. One job runs at a time; a trigger while one runs is coalesced into one more look once it ends.

Every request body is checked: a malformed one is answered 4xx with ``{"error": message}``, never a traceback.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from crowdtk.campaign import LABELING, Campaign
from crowdtk.errors import CrowdtkError
from crowdtk.files import atomic_path, file_digest
from crowdtk.formats import RegionsEntry, read_regions
from crowdtk.labeling.common import HEAD, REGION, ExportedImage, export_names
from crowdtk.labeling.labelstudio import labelstudio_task
from crowdtk.labeling.reading import image_reference
from crowdtk.predict_config import PredictConfig

log = logging.getLogger("crowdtk.serve")

TOKEN_ENV = "CROWDTK_SERVE_TOKEN"
MAX_BODY = 16 << 20  # bytes: a predict request of a few hundred tasks is well under 1 MiB
ANNOTATIONS = "labelstudio-annotations"  # per round: one recorded task per image
EXPORT = "labelstudio-export.json"  # per round: the recorded tasks as one Label Studio JSON export
NO_COUNTER = "crowdtk select"  # the model version of the regions alone (what export writes without --prelabel)
MODEL_CLASS = "CrowdtkCampaign"
RECORDED_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
DELETED_ACTIONS = ("ANNOTATION_DELETED", "ANNOTATIONS_DELETED")
TRAIN_ACTION = "START_TRAINING"


class RequestError(Exception):
    """A request the server refuses: its HTTP status and the message of the ``{"error": ...}`` answer."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _bad(message: str) -> RequestError:
    return RequestError(HTTPStatus.BAD_REQUEST, message)


def _unknown(message: str) -> RequestError:
    return RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, message)


def _conflict(message: str) -> RequestError:
    return RequestError(HTTPStatus.CONFLICT, message)


# --------------------------------------------------------------------------- the campaign's tasks and counter


@dataclass(frozen=True)
class TaskImage:
    """One image of a round's package: its regions entry, its round and its file name in the package."""

    round: int
    entry: RegionsEntry
    name: str  # the package's image file name; its stem names the recorded annotation


@dataclass(frozen=True)
class Counter:
    """The campaign's current counter: its checkpoint and the model version the predictions carry."""

    path: Path
    version: str
    stamp: tuple[int, int]  # (mtime_ns, size): a rewritten checkpoint is a new counter


def current_checkpoint(c: Campaign) -> Path | None:
    """The latest finished counter of the campaign (the last round's inference copy once made), or None."""
    from crowdtk.checkpoint import training_finished

    for p in reversed(c.plan):
        if c.infer(p.round).is_file():
            return c.infer(p.round)
        if training_finished(c.model(p.round)):
            return c.model(p.round)
    # A campaign started from a counter of the user's (campaign init --init CKPT): that counter until a round's.
    initial = c.settings.init
    return Path(initial) if initial is not None and Path(initial).is_file() else None


def _model_name(path: Path) -> str:
    from crowdtk.checkpoint import read_header

    try:
        return str((read_header(path).get("model") or {}).get("name", "counter"))
    except CrowdtkError:
        return "counter"


# --------------------------------------------------------------------------- the worker


class Worker:
    """Runs ``job`` in a background thread, one run at a time: a trigger while it runs asks for one more run
    after it (any number of such triggers make one), so a burst of events never runs the job twice at once."""

    def __init__(self, job: Callable[[], None]) -> None:
        self._job = job
        self._lock = threading.Lock()
        self._running = False
        self._pending = False
        self._idle = threading.Event()
        self._idle.set()
        self.runs = 0  # how many times the job ran

    @property
    def running(self) -> bool:
        return not self._idle.is_set()

    def trigger(self) -> None:
        with self._lock:
            if self._running:
                self._pending = True
                return
            self._running = True
            self._idle.clear()
        threading.Thread(target=self._loop, name="crowdtk-serve-worker", daemon=True).start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no run is going or asked for; False when ``timeout`` passed first."""
        return self._idle.wait(timeout)

    def _loop(self) -> None:
        while True:
            try:
                self._job()
            except Exception:  # a failed job must not stop the worker: the next trigger tries again
                log.exception("the background job failed")
            finally:
                self.runs += 1
            with self._lock:
                if not self._pending:
                    self._running = False
                    self._idle.set()
                    return
                self._pending = False


# --------------------------------------------------------------------------- the backend


@dataclass
class TrainingState:
    """What the background worker did last, for /health."""

    state: str = "idle"  # idle, running, done, failed
    round: int | None = None
    error: str | None = None
    launched: int = 0  # campaign next runs started by this server

    def to_record(self) -> dict[str, Any]:
        return {"state": self.state, "round": self.round, "error": self.error, "launched": self.launched}


def next_command(folder: Path, package: Path) -> list[str]:
    """The command the worker runs: the campaign's next steps with the assembled export, as a person would."""
    return [sys.executable, "-m", "crowdtk", "campaign", "next", str(folder), "--package", str(package)]


@dataclass
class Backend:
    """The campaign behind the HTTP server: predictions, recorded annotations and the background worker."""

    folder: Path
    predict: PredictConfig = field(default_factory=PredictConfig)
    command: Callable[[Path, Path], list[str]] = next_command
    project: str | None = None  # the Label Studio project served: from /setup or the first request naming one

    def __post_init__(self) -> None:
        self.folder = Path(os.path.abspath(self.folder))
        c = Campaign.load(self.folder)
        if c.settings.tool != "labelstudio":
            raise CrowdtkError(
                f"{self.folder}: a campaign labeled with {c.settings.tool}, not Label Studio",
                "start the campaign with campaign init --tool labelstudio",
            )
        self._lock = threading.Lock()  # the loaded counter and its suggestions
        self._project_lock = threading.Lock()
        self._counter: Counter | None = None
        self._predictor: Any = None
        self._suggested: dict[str, Any] = {}  # image id -> Suggestions of the loaded counter
        self._digests: dict[tuple[str, int, int], str] = {}
        self._tasks: dict[Path, tuple[tuple[int, int], list[TaskImage]]] = {}
        self._record_lock = threading.Lock()
        self._process: subprocess.Popen[str] | None = None
        self._closing = False
        self.training = TrainingState()
        self.worker = Worker(self._run_next)
        self.project = self.project or self._recorded_project(c)
        # Label Studio waits a second for /health and a few for /setup: torch is imported and the current counter
        # loaded now, not on the first request.
        counter = self.counter(c)
        if counter is not None:
            with self._lock:
                self._load(counter)

    # ----------------------------------------------------------------- campaign state

    def campaign(self) -> Campaign:
        return Campaign.load(self.folder)

    def _round_tasks(self, c: Campaign, k: int) -> list[TaskImage]:
        """Round k's images as its package lists them (cached until its regions file changes)."""
        path = c.regions(k)
        try:
            st = path.stat()
        except FileNotFoundError:
            return []
        stamp = (st.st_mtime_ns, st.st_size)
        cached = self._tasks.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        _, entries = read_regions(path)
        tasks = [TaskImage(k, e, n) for e, n in zip(entries, export_names(entries))]
        self._tasks[path] = (stamp, tasks)
        return tasks

    def _find(self, c: Campaign, data: Any, where: str) -> TaskImage:
        """The campaign image a task's data names: its ``crowdtk_id`` (else its image's file name), latest round
        first; refused when it names none, or when its regions differ from the round's."""
        if not isinstance(data, dict):
            raise _bad(f"{where}: 'data' is not an object")
        crowdtk_id, image = data.get("crowdtk_id"), data.get("image")
        if crowdtk_id is not None and not isinstance(crowdtk_id, str):
            raise _bad(f"{where}: data.crowdtk_id is not a string")
        if crowdtk_id is None and not isinstance(image, str):
            raise _bad(f"{where}: its data has neither 'crowdtk_id' nor an 'image' string")
        name = None
        if crowdtk_id is None:
            try:  # a URL, Label Studio's /data/upload/ or /data/local-files/?d= path: its file name, as import reads it
                name = image_reference(image, self.folder, self.folder, where)
            except CrowdtkError as exc:
                raise _unknown(str(exc)) from None
        found = None
        for p in reversed(c.plan):
            for t in self._round_tasks(c, p.round):
                if t.entry.id == crowdtk_id if crowdtk_id is not None else t.name.lower() == str(name).lower():
                    found = t
                    break
            if found is not None:
                break
        if found is None:
            named = f"crowdtk_id {crowdtk_id!r}" if crowdtk_id is not None else f"image {image!r}"
            raise _unknown(
                f"{where}: {named} is no image of campaign {self.folder} (import the tasks.json of its round's package)"
            )
        regions = data.get("regions")
        if regions is not None:
            expected = [[r.x0, r.y0, r.x1, r.y1] for r in found.entry.regions]
            if regions != expected:
                raise _unknown(
                    f"{where}: its regions {regions} differ from round {found.round}'s regions of "
                    f"{found.entry.id} ({expected}); import the tasks.json of that round's package again"
                )
        return found

    # ----------------------------------------------------------------- project

    def _check_project(self, value: Any, where: str) -> None:
        """Label Studio names the project as '<id>.<created>' (predict, setup) or as an object (webhooks): one
        project is served, the first one named."""
        if value is None:
            return
        if isinstance(value, dict):
            value = value.get("id")
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise _bad(f"{where}: 'project' is neither a project id nor a project object with an id")
        pid = str(value).split(".", 1)[0].strip()
        if not pid:
            raise _bad(f"{where}: 'project' names no project id")
        with self._project_lock:
            if self.project is None:
                self.project = pid
                log.info("serving Label Studio project %s", pid)
                return
        if pid != self.project:
            raise _conflict(
                f"{where}: project {pid} is not the Label Studio project this server serves ({self.project}); "
                "connect one project per campaign, or restart crowdtk serve for another project"
            )

    def _recorded_project(self, c: Campaign) -> str | None:
        """The project whose annotations the round waiting for labels already holds (a restarted server keeps it)."""
        k = c.current()
        folder = None if k is None else c.round_dir(k) / ANNOTATIONS
        if folder is None or not folder.is_dir():
            return None
        for path in sorted(folder.glob("*.json")):
            try:
                project = json.loads(path.read_text(encoding="utf-8")).get("project")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(project, (str, int)) and not isinstance(project, bool):
                return str(project)
        return None

    # ----------------------------------------------------------------- counter

    def counter(self, c: Campaign | None = None) -> Counter | None:
        """The campaign's current counter (its model version names the checkpoint and its sha256)."""
        path = current_checkpoint(c or self.campaign())
        if path is None:
            return None
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        key = (str(path), *stamp)
        digest = self._digests.get(key)
        if digest is None:
            digest = self._digests[key] = file_digest(path)
        rel = os.path.relpath(path, self.folder)
        return Counter(path, f"crowdtk prelabel {_model_name(path)} {rel} {digest[:12]}", stamp)

    def model_version(self) -> str:
        counter = self.counter()
        return NO_COUNTER if counter is None else counter.version

    def _load(self, counter: Counter) -> None:
        """Load ``counter`` unless it is the one loaded (call with the lock held)."""
        from crowdtk.predict import Predictor, load_counter

        if self._counter is not None and (self._counter.path, self._counter.stamp) == (counter.path, counter.stamp):
            return
        loaded = load_counter(counter.path)
        if loaded.unfinished:
            log.warning(loaded.unfinished)
        self._predictor = Predictor(
            loaded, device=self.predict.device, max_side=self.predict.max_side, feature_cache=self.predict.feature_cache
        )
        self._counter, self._suggested = counter, {}
        log.info("loaded the counter %s (%s)", counter.path, counter.version)

    def _suggestions(self, counter: Counter, tasks: Sequence[TaskImage]) -> dict[str, Any]:
        """The loaded counter's suggested heads for each task's image (loading it first when it changed)."""
        from crowdtk.data import read_image
        from crowdtk.prelabel import suggest_heads

        with self._lock:
            self._load(counter)
            todo = [t.entry for t in tasks if t.entry.id not in self._suggested]
            images = ((e.image, read_image(e.image, e.sha256)) for e in todo)
            self._suggested.update(suggest_heads(self._predictor, todo, images))
            return {t.entry.id: self._suggested[t.entry.id] for t in tasks}

    # ----------------------------------------------------------------- endpoints

    def health(self) -> dict[str, Any]:
        c = self.campaign()
        k = c.current()
        return {
            "status": "UP",
            "model_class": MODEL_CLASS,
            "model_version": self.model_version(),
            "campaign": str(self.folder),
            "round": k,
            "phase": None if k is None else c.phase(k),
            "training": self.training.to_record(),
        }

    def setup(self, body: Any) -> dict[str, Any]:
        body = _object(body, "/setup")
        self._check_project(body.get("project"), "/setup")
        _check_config(body.get("schema"), "/setup: schema")
        return {"model_version": self.model_version()}

    def predict_tasks(self, body: Any) -> dict[str, Any]:
        body = _object(body, "/predict")
        self._check_project(body.get("project"), "/predict")
        _check_config(body.get("label_config"), "/predict: label_config")
        params = body.get("params")
        if params is not None and not isinstance(params, dict):
            raise _bad("/predict: 'params' is not an object")
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            raise _bad("/predict: 'tasks' is not a list of tasks")
        c = self.campaign()
        found = []
        for n, task in enumerate(tasks):
            if not isinstance(task, dict):
                raise _bad(f"/predict: task {n} is not an object")
            found.append(self._find(c, task.get("data"), f"/predict: task {task.get('id', n)}"))
        counter = self.counter(c)
        suggested = self._suggestions(counter, found) if counter is not None and found else {}
        version = NO_COUNTER if counter is None else counter.version
        results = []
        for t in found:
            task = labelstudio_task(
                ExportedImage(t.entry, suggested=suggested.get(t.entry.id), model_version=version), ""
            )
            results.append(task["predictions"][0])
        return {"results": results, "model_version": version}

    def webhook(self, body: Any) -> dict[str, Any]:
        body = _object(body, "/webhook")
        action = body.get("action")
        if not isinstance(action, str) or not action:
            raise _bad("/webhook: 'action' is missing or not a string")
        where = f"/webhook {action}"
        if action not in (*RECORDED_ACTIONS, *DELETED_ACTIONS, TRAIN_ACTION):
            return {"status": "ignored", "action": action}
        self._check_project(body.get("project"), where)
        if action in RECORDED_ACTIONS:
            return self._record(body, where)
        if action in DELETED_ACTIONS:
            return self._delete(body, where)
        c = self.campaign()
        k = self._labeling_round(c, where)
        missing = self._missing(c, k)
        if missing:
            named = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise _conflict(
                f"{where}: round {k} has {len(missing)} of {len(self._round_tasks(c, k))} images without a "
                f"submitted annotation ({named}); label them first"
            )
        self.worker.trigger()
        return {"status": "training", "round": k}

    # ----------------------------------------------------------------- annotations

    def _labeling_round(self, c: Campaign, where: str) -> int:
        k = c.current()
        if k is None or c.phase(k) != LABELING:
            state = "done" if k is None else f"at round {k}, {c.phase(k)}"
            raise _conflict(f"{where}: campaign {self.folder} waits for no labels ({state})")
        return k

    def annotation_path(self, c: Campaign, t: TaskImage) -> Path:
        return c.round_dir(t.round) / ANNOTATIONS / f"{Path(t.name).stem}.json"

    def _record(self, body: dict[str, Any], where: str) -> dict[str, Any]:
        from crowdtk.labeling.labelstudio import read

        annotation, task = body.get("annotation"), body.get("task")
        if not isinstance(annotation, dict):
            raise _bad(f"{where}: 'annotation' is not an object")
        if not isinstance(task, dict):
            raise _bad(f"{where}: 'task' is not an object")
        if not isinstance(annotation.get("result"), list):
            raise _bad(f"{where}: annotation.result is not a list")
        task_id = task.get("id")
        c = self.campaign()
        found = self._find(c, task.get("data"), f"{where}: task {task_id}")
        k = self._labeling_round(c, where)
        if found.round != k:
            raise _conflict(
                f"{where}: task {task_id} ({found.entry.id}) is an image of round {found.round}; round {k} is the "
                "round waiting for labels (import its package's tasks.json)"
            )
        record = {"id": task_id, "data": task["data"], "annotations": [annotation], "project": self.project}
        path = self.annotation_path(c, found)
        with self._record_lock:
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(record), encoding="utf-8")
                try:  # what import would refuse is refused now, while the labeler can still fix it
                    read(tmp, [found.entry])
                except CrowdtkError as exc:  # it names the temporary file and the task: keep the task
                    message = str(exc).replace(f"{tmp}: ", "").replace(str(tmp), "the annotation")
                    raise _unknown(f"{where}: {message}") from None
            missing = self._missing(c, k)
        log.info("round %d: recorded the annotation of %s (%d left)", k, found.entry.id, len(missing))
        if not missing:
            self.worker.trigger()
        return {
            "status": "recorded",
            "round": k,
            "image": found.entry.id,
            "file": str(path),
            "left": len(missing),
            "training": not missing,
        }

    def _delete(self, body: dict[str, Any], where: str) -> dict[str, Any]:
        listed = body.get("annotations") if "annotations" in body else [body.get("annotation")]
        if not isinstance(listed, list) or not all(isinstance(a, dict) for a in listed):
            raise _bad(f"{where}: the deleted annotations are not a list of objects")
        ids = {a.get("id") for a in listed} - {None}
        c = self.campaign()
        k = c.current()
        removed = []
        if k is not None and ids:
            with self._record_lock:
                for t in self._round_tasks(c, k):
                    path = self.annotation_path(c, t)
                    if path.is_file() and _recorded_annotation(path).get("id") in ids:
                        path.unlink()
                        removed.append(t.entry.id)
        log.info("removed the deleted annotation(s) of %s", ", ".join(removed) or "no recorded image")
        return {"status": "deleted", "images": removed}

    def _missing(self, c: Campaign, k: int) -> list[str]:
        """Round k's images without a recorded annotation that was submitted (not skipped)."""
        return [
            t.entry.id
            for t in self._round_tasks(c, k)
            if not _submitted(_recorded_annotation(self.annotation_path(c, t)))
        ]

    def assemble(self, c: Campaign, k: int) -> Path:
        """Round k's recorded tasks as one Label Studio JSON export (a list of tasks), written atomically."""
        tasks = []
        for t in self._round_tasks(c, k):
            record = json.loads(self.annotation_path(c, t).read_text(encoding="utf-8"))
            record.pop("project", None)
            tasks.append(record)
        out = c.round_dir(k) / EXPORT
        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps(tasks, indent=1), encoding="utf-8")
        return out

    # ----------------------------------------------------------------- the background job

    def _run_next(self) -> None:
        """When the round waiting for labels has all its annotations: assemble them and run the campaign's next
        steps (import, train, and the next round's selection and package) as ``campaign next`` does."""
        c = self.campaign()
        k = c.current()
        if self._closing or k is None or c.phase(k) != LABELING:
            return
        with self._record_lock:
            if self._missing(c, k):
                return
            package = self.assemble(c, k)
        argv = [*self.command(self.folder, package), "--until-blocked"]
        self.training = TrainingState("running", k, None, self.training.launched + 1)
        log.info("round %d: every image is annotated; running %s", k, " ".join(argv))
        tail: list[str] = []
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True
        )
        self._process = process
        try:
            assert process.stdout is not None
            for line in process.stdout:
                line = line.rstrip()
                if line:
                    log.info("campaign next: %s", line)
                    tail = [*tail[-4:], line]
            code = process.wait()
        finally:
            self._process = None
        if code == 0:
            self.training = TrainingState("done", k, None, self.training.launched)
            log.info("round %d: imported and trained; model version %s", k, self.model_version())
        else:
            error = tail[-1] if tail else f"campaign next exited with {code}"
            self.training = TrainingState("failed", k, error, self.training.launched)
            log.error("round %d: campaign next failed: %s", k, error)
        later = [t.entry.id for t in self._round_tasks(c, k) if self._changed_after(c, t, package)]
        if later:
            log.warning(
                "round %d: annotation(s) of %s changed after the export was assembled and are not in its labels",
                k,
                ", ".join(later),
            )

    def _changed_after(self, c: Campaign, t: TaskImage, package: Path) -> bool:
        try:
            return self.annotation_path(c, t).stat().st_mtime_ns > package.stat().st_mtime_ns
        except FileNotFoundError:
            return False

    def close(self, timeout: float | None = None) -> None:
        """Stop the background job (a training run continues from its last epoch with the next ``campaign next``)."""
        self._closing = True
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
        self.worker.wait(timeout)


def _recorded_annotation(path: Path) -> dict[str, Any]:
    """The annotation a recorded task holds; empty when there is none (no file, or an unreadable one)."""
    try:
        annotations = json.loads(path.read_text(encoding="utf-8")).get("annotations")
        return annotations[0] if isinstance(annotations, list) and isinstance(annotations[0], dict) else {}
    except (OSError, ValueError, AttributeError, IndexError):
        return {}


def _submitted(annotation: dict[str, Any]) -> bool:
    """Whether a recorded annotation counts as labeled: submitted, not skipped (import reads no skipped one)."""
    return bool(annotation) and not annotation.get("was_cancelled")


def _object(body: Any, where: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _bad(f"{where}: the body is not a JSON object")
    return body


def _check_config(config: Any, where: str) -> None:
    """A project's labeling config must offer what the predictions hold: the ``kp`` keypoints labeled ``head``
    and the ``region`` rectangles (the package's config.xml)."""
    if config is None:
        return
    if not isinstance(config, str):
        raise _bad(f"{where} is not a string")
    if not config.strip():
        return  # Label Studio sends an empty config before one is saved
    try:
        root = ET.fromstring(config)
    except ET.ParseError as exc:
        raise _bad(f"{where} is not XML ({exc})") from None
    tags = {(e.tag, e.get("name")): e for e in root.iter()}
    keypoints, rectangles = tags.get(("KeyPointLabels", "kp")), tags.get(("RectangleLabels", REGION))
    labels = {label.get("value") for label in keypoints.iter("Label")} if keypoints is not None else set()
    if keypoints is None or rectangles is None or HEAD not in labels:
        raise _unknown(
            f"{where} lacks the KeyPointLabels 'kp' with the label '{HEAD}' or the RectangleLabels '{REGION}' "
            "the predictions use (paste the package's config.xml under Settings > Labeling Interface)"
        )


# --------------------------------------------------------------------------- HTTP


def _token_matches(header: str | None, token: str) -> bool:
    """``Authorization: Token T``, ``Bearer T``, or HTTP Basic auth with T as the password (any user name)."""
    if not header:
        return False
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        value = decoded.partition(":")[2]
    elif scheme.lower() not in ("token", "bearer"):
        return False
    return hmac.compare_digest(value.encode("utf-8"), token.encode("utf-8"))


ROUTES: dict[str, tuple[str, str]] = {
    "/": ("GET", "health"),
    "/health": ("GET", "health"),
    "/setup": ("POST", "setup"),
    "/predict": ("POST", "predict"),
    "/webhook": ("POST", "webhook"),
}


class Handler(BaseHTTPRequestHandler):
    server: CampaignServer
    protocol_version = "HTTP/1.1"  # keep-alive: Label Studio reuses its connections

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def _handle(self, method: str) -> None:
        try:
            status, answer = self._answer(method)
        except RequestError as exc:
            status, answer = exc.status, {"error": exc.message}
            log.info("%s %s: %d %s", method, self.path, status, exc.message)
        except CrowdtkError as exc:  # the campaign's files: the server's side, said in one line
            status, answer = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": str(exc)}
            log.error("%s %s: %s", method, self.path, exc)
        except Exception as exc:
            status, answer = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {type(exc).__name__}"}
            log.exception("%s %s failed", method, self.path)
        self._send(status, answer)

    def _answer(self, method: str) -> tuple[HTTPStatus, dict[str, Any]]:
        token = self.server.token
        if token is not None and not _token_matches(self.headers.get("Authorization"), token):
            self.close_connection = True  # the body (if any) is not read
            raise RequestError(HTTPStatus.UNAUTHORIZED, "a token is needed (Authorization: Token T, or Basic auth)")
        path = self.path.split("?", 1)[0]
        if len(path) > 1:
            path = path.rstrip("/")
        route = ROUTES.get(path)
        if route is None:
            self.close_connection = True
            raise RequestError(HTTPStatus.NOT_FOUND, f"{path}: no such endpoint ({', '.join(sorted(ROUTES))})")
        allowed, name = route
        if method != allowed:
            self.close_connection = True
            raise RequestError(HTTPStatus.METHOD_NOT_ALLOWED, f"{path} takes {allowed}, not {method}")
        backend = self.server.backend
        if name == "health":
            return HTTPStatus.OK, backend.health()
        body = self._body()
        if name == "setup":
            return HTTPStatus.OK, backend.setup(body)
        if name == "predict":
            return HTTPStatus.OK, backend.predict_tasks(body)
        return HTTPStatus.OK, backend.webhook(body)

    def _body(self) -> Any:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length, not chunked")
        length = self.headers.get("Content-Length")
        if length is None:
            self.close_connection = True
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "a JSON body with a Content-Length is needed")
        try:
            n = int(length)
            if n < 0:
                raise ValueError(length)
        except ValueError:
            self.close_connection = True
            raise _bad(f"Content-Length {length!r} is not a size") from None
        if n > self.server.max_body:
            self.close_connection = True  # the body is not read
            raise RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body is {n} bytes; at most {self.server.max_body} are taken"
            )
        raw = self.rfile.read(n)
        if len(raw) < n:
            self.close_connection = True
            raise _bad(f"the body ended after {len(raw)} of {n} bytes")
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, nesting too deep
            raise _bad(f"the body is not JSON ({exc})") from None

    def _send(self, status: HTTPStatus, answer: dict[str, Any]) -> None:
        data = json.dumps(answer).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == HTTPStatus.UNAUTHORIZED:
                self.send_header("WWW-Authenticate", 'Basic realm="crowdtk serve"')
            if status == HTTPStatus.METHOD_NOT_ALLOWED:
                self.send_header("Allow", ROUTES[self.path.split("?", 1)[0].rstrip("/") or "/"][0])
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client left; nothing to answer
            self.close_connection = True


class CampaignServer(ThreadingHTTPServer):
    """The ML backend's HTTP server: a thread per request, so that a slow /predict never holds up /health.

    The standard library's server is enough for one Label Studio project's traffic (a request per labeler
    action) and adds no dependency; the training runs in a subprocess, never in a request's thread.
    """

    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], backend: Backend, token: str | None = None, max_body: int = MAX_BODY
    ) -> None:
        self.backend = backend
        self.token = token or None
        self.max_body = max_body
        if ":" in address[0]:  # an IPv6 address such as ::1
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[0], self.server_address[1]
        name = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://[{name}]:{port}" if ":" in name else f"http://{name}:{port}"

    def close(self, timeout: float | None = None) -> None:
        """Stop serving (when serve_forever runs in another thread), stop the background job, free the port."""
        self.shutdown()
        self.backend.close(timeout)
        self.server_close()


def make_server(
    folder: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 9090,
    token: str | None = None,
    predict: PredictConfig | None = None,
    *,
    max_body: int = MAX_BODY,
    command: Callable[[Path, Path], list[str]] = next_command,
) -> CampaignServer:
    """The server of campaign ``folder``, bound to ``host:port`` (0: any free port; ``server.url`` says which),
    not yet serving: run ``serve_forever()`` (in a thread for tests) and ``close()`` it."""
    backend = Backend(Path(folder), predict or PredictConfig(), command)
    try:
        return CampaignServer((host, port), backend, token, max_body)
    except OSError as exc:
        raise CrowdtkError(
            f"{host}:{port}: cannot listen there ({exc.strerror or exc})", "pass another --port, or stop what uses it"
        ) from None
