"""Label Studio: the export package (tasks with pre-annotated regions) and the reader of its JSON export.

Export: ``images/``, ``config.xml`` (a KeyPointLabels ``kp`` with the label ``head`` and a
RectangleLabels ``region``; the instruction as a Header) and ``tasks.json``: one task per
image, ``data`` = ``{"image": <--image-url>images/<file>, "crowdtk_id", "regions",
"instruction"}`` and the regions as pre-annotation rectangles (``predictions``) in Label
Studio's percent convention (x, y, width, height in 0–100 of the image's width/height). With
``--prelabel`` that prediction also holds the counter's suggested heads (``keypointlabels``
``head``, each with its ``score``; the prediction's ``model_version`` names the counter and its
``score`` is their mean): Label Studio loads them with the regions when a labeler opens the
task, and what the labeler submits is the annotation import reads. A review round (``export LABELS``) adds to each task
an ``annotations`` entry holding the regions and the labeled heads (``keypointlabels`` ``head``, percent), which Label
Studio imports as the task's annotation for the reviewer to edit and submit.

Import reads Label Studio's JSON export (a list of tasks; per task the ground-truth
annotation, else the last one not cancelled; its ``keypointlabels`` results, percent). A
labeling config that offers ``head`` for shapes drawn around the head gives one point at the
centre of each such result (``rectanglelabels``: the middle of the box, turned by its
``rotation`` about its top-left corner as Label Studio does; ``ellipselabels``: its ``x, y``;
``polygonlabels``: the centroid of the enclosed area; see :mod:`~crowdtk.labeling.reading`); a
``head`` of another kind (a brush) is refused. Images are matched by ``crowdtk_id``, else by the
image reference's file name. A submitted annotation is the labeler's confirmation, so an
annotation holding exactly the suggestions of ``export --prelabel`` imports as labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np

from crowdtk.errors import CrowdtkError
from crowdtk.formats import RegionsEntry
from crowdtk.labeling import common
from crowdtk.labeling.common import (
    HEAD,
    IMAGES,
    INSTRUCTION,
    REGION,
    ExportedImage,
)
from crowdtk.labeling.reading import (
    REEXPORT,
    Collector,
    image_reference,
    list_of,
    load_json,
    points_array,
    polygon_centre,
    rotated_box_centre,
    vertices_array,
)

SUGGESTIONS = (
    "The suggested heads come with the regions as the task's prediction: move or delete the wrong ones, add\n"
    "the missed ones, and submit; what you submit is imported (a task not submitted is not)."
)
TASKS = "tasks.json"
CONFIG = "config.xml"


def _pct(value: float, total: int) -> float:
    return 100.0 * value / total


def labelstudio_config() -> str:
    return (
        "<View>\n"
        f"  <Header value={quoteattr(INSTRUCTION)}/>\n"
        '  <Image name="image" value="$image" zoom="true"/>\n'
        '  <KeyPointLabels name="kp" toName="image">\n'
        f'    <Label value="{HEAD}" background="red"/>\n'
        "  </KeyPointLabels>\n"
        f'  <RectangleLabels name="{REGION}" toName="image">\n'
        f'    <Label value="{REGION}" background="orange"/>\n'
        "  </RectangleLabels>\n"
        "</View>\n"
    )


def keypoint_results(
    entry: RegionsEntry, points: np.ndarray, prefix: str, scores: np.ndarray | None = None
) -> list[dict[str, Any]]:
    """Head points as keypoint results (percent of the image), ids ``<prefix><k>``; with ``scores``, one each."""
    results = []
    for k, (x, y) in enumerate(points):
        result = {
            "id": f"{prefix}{k}",
            "from_name": "kp",
            "to_name": "image",
            "type": "keypointlabels",
            "original_width": entry.width,
            "original_height": entry.height,
            "image_rotation": 0,
            "value": {
                "x": _pct(float(x), entry.width),
                "y": _pct(float(y), entry.height),
                "width": 0.5,
                "keypointlabels": [HEAD],
            },
        }
        if scores is not None:
            result["score"] = round(float(scores[k]), 4)
        results.append(result)
    return results


def labelstudio_task(image: ExportedImage, url: str) -> dict[str, Any]:
    """One task: the image ``url``, crowdtk's id for matching on import, and the regions as pre-annotations
    (with suggested heads, also those, as a prediction of the counter's model version);
    with points to pre-fill (a review round), also an annotation of the regions and those head points."""
    entry, points, suggested = image.entry, image.points, image.suggested
    results = [
        {
            "id": f"region{k}",
            "from_name": REGION,
            "to_name": "image",
            "type": "rectanglelabels",
            "original_width": entry.width,
            "original_height": entry.height,
            "image_rotation": 0,
            "value": {
                "x": _pct(r.x0, entry.width),
                "y": _pct(r.y0, entry.height),
                "width": _pct(r.x1 - r.x0, entry.width),
                "height": _pct(r.y1 - r.y0, entry.height),
                "rotation": 0,
                "rectanglelabels": [REGION],
            },
        }
        for k, r in enumerate(entry.regions)
    ]
    task = {
        "data": {
            "image": url,
            "crowdtk_id": entry.id,
            "instruction": INSTRUCTION,
            "regions": [[r.x0, r.y0, r.x1, r.y1] for r in entry.regions],
        },
        "predictions": [{"model_version": "crowdtk select", "result": results}],
    }
    if suggested is not None:
        prediction: dict[str, Any] = {
            "model_version": image.model_version,
            "result": results + keypoint_results(entry, suggested.points, "suggested", suggested.scores),
        }
        if len(suggested.scores):  # no score without points: Label Studio would rank the task least confident
            prediction["score"] = round(float(suggested.scores.mean()), 4)
        task["predictions"] = [prediction]
    if points is not None:
        task["annotations"] = [
            {"result": results + keypoint_results(entry, points, "head"), "was_cancelled": False, "ground_truth": False}
        ]
    return task


class Export(common.BaseExport):
    """The placed images; one task per image, all in one file written at the end."""

    def finish(self) -> None:
        common.write_json(
            self.out / TASKS,
            [labelstudio_task(self.exported(entry), f"{self.image_url}{IMAGES}/{name}") for entry, name in self.placed],
        )
        common.write_text(self.out / CONFIG, labelstudio_config())


def steps(image_url: str) -> str:
    return (
        "1. Create a Label Studio project; paste config.xml under Settings > Labeling Interface.\n"
        "2. Make images/ reachable by Label Studio and import tasks.json (Import > Upload files). The tasks'\n"
        f"   image URLs are '{image_url}images/<file>'; set them with crowdtk export --image-url, e.g. an http://\n"
        "   server of this folder, or '/data/local-files/?d=<path under LOCAL_FILES_DOCUMENT_ROOT>/'.\n"
        "3. The orange rectangles (pre-annotations) are the regions; add a 'head' keypoint on every head inside.\n"
        "4. Export as JSON (not JSON-MIN) and run crowdtk import REGIONS --from labelstudio EXPORT.json."
    )


# The result types of a 'head' drawn around the head (a labeling config whose RectangleLabels, EllipseLabels or
# PolygonLabels offer 'head'), taken at their centres.
AROUND = ("rectanglelabels", "ellipselabels", "polygonlabels")
FIX = "mark each head as a keypoint (or a rectangle, ellipse or polygon around it) in Label Studio"


def _centre(kind: str, value: dict[str, Any], entry: RegionsEntry, where: str) -> tuple[float, float]:
    """The head point of a 'head' result that is not a keypoint: the centre of its shape, in pixels."""
    if kind not in AROUND:
        raise CrowdtkError(f"{where}: a 'head' {kind} result has no centre crowdtk can take", FIX)
    sx, sy = entry.width / 100.0, entry.height / 100.0
    if kind == "polygonlabels":
        return polygon_centre(vertices_array(value.get("points"), 1, f"{where}: a 'head' polygon", FIX) * [sx, sy])
    try:
        if kind == "ellipselabels":
            return float(value["x"]) * sx, float(value["y"]) * sy
        return rotated_box_centre(
            float(value["x"]) * sx,
            float(value["y"]) * sy,
            float(value["width"]) * sx,
            float(value["height"]) * sy,
            float(value.get("rotation") or 0.0),
        )
    except (KeyError, TypeError, ValueError, OverflowError):
        raise CrowdtkError(f"{where}: a 'head' {kind} result lacks numeric x/y/width/height", REEXPORT) from None


def read(path: Path, entries: Sequence[RegionsEntry]) -> common.Returned:
    found = Collector(entries)
    tasks = load_json(path)
    if isinstance(tasks, dict):
        tasks = [tasks]
    if not isinstance(tasks, list):
        raise CrowdtkError(f"{path}: not a Label Studio JSON export (a list of tasks)", "export the project as JSON")
    for n, task in enumerate(tasks):
        where = f"{path}: task {task.get('id', n) if isinstance(task, dict) else n}"
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise CrowdtkError(
                f"{where}: not a Label Studio task (no 'data')", "export the project as JSON (not JSON-MIN or CSV)"
            )
        data = task["data"]
        name = image_reference(data.get("image"), path.parent, path.parent, where)
        entry = (
            found.matcher.by_id.get(data["crowdtk_id"])
            if isinstance(data.get("crowdtk_id"), str)
            else found.matcher.find(name)
        )
        annotations = list_of(task.get("annotations"), "annotations", where)
        annotations = [a for a in annotations if isinstance(a, dict) and not a.get("was_cancelled")]
        if not annotations:
            continue  # not labeled: reported as missing
        chosen = next((a for a in annotations if a.get("ground_truth")), annotations[-1])
        points = []
        for result in list_of(chosen.get("result"), "result", where):
            kind = result.get("type") if isinstance(result, dict) else None
            shape = result.get("value") if isinstance(result, dict) else None
            if isinstance(kind, str) and kind != "keypointlabels" and kind.endswith("labels"):
                labels = shape.get(kind) if isinstance(shape, dict) else None
                if isinstance(shape, dict) and isinstance(labels, list) and HEAD in labels and entry is not None:
                    found.check_size(entry, result.get("original_width"), result.get("original_height"), where)
                    points.append(_centre(kind, shape, entry, where))
                    found.converted[kind.removesuffix("labels")] += 1
                continue  # shapes of other labels (the region rectangles among them) are not read
            if not isinstance(result, dict) or kind != "keypointlabels":
                continue
            value = result.get("value") or {}
            if not isinstance(value, dict):
                raise CrowdtkError(f"{where}: a keypoint's 'value' is not an object", "re-export from Label Studio")
            labels = list_of(value.get("keypointlabels"), "keypointlabels", where) or [HEAD]
            if HEAD not in labels:
                found.ignored += 1
                continue
            if entry is not None:
                found.check_size(entry, result.get("original_width"), result.get("original_height"), where)
                try:
                    points.append((float(value["x"]) * entry.width / 100.0, float(value["y"]) * entry.height / 100.0))
                except (KeyError, TypeError, ValueError, OverflowError):
                    raise CrowdtkError(
                        f"{where}: a keypoint lacks numeric x/y", "re-export from Label Studio"
                    ) from None
        crowdtk_id = data.get("crowdtk_id")
        found.add(
            crowdtk_id if isinstance(crowdtk_id, str) and crowdtk_id else name,
            entry,
            points_array(points, where),
            where,
        )
    return found.returned()


# The tool's record: export --to labelstudio and import --from labelstudio run the parts above.
TOOL = common.register_tool_module(
    __name__, "labelstudio", help="tasks.json + config.xml", reads="a Label Studio JSON export"
)
