"""What ``count`` prints (``--format``): one line of standard output per counted image or video frame.

Each format is a :class:`CountFormat` record in :data:`COUNT_FORMATS`, registered here next to the
function that writes its line. This module loads no model (the command line reads the registry
whenever it builds ``count``).

- ``jsonl``: crowdtk's own records, ``{"image", "count"}`` or ``{"video", "frame", "count"}``, with
  ``"points"`` under ``count --points``.
- ``nwpu``: the NWPU-Crowd counting submission, ``<id> <count>`` with four decimals, where the id is the
  image's file stem (``3610`` for ``3610.jpg``, as NWPU's ``test.txt`` names it), in input order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crowdtk.errors import CrowdtkError
from crowdtk.formats import dumps_record
from crowdtk.registry import Registry


@dataclass(frozen=True)
class CountFormat:
    """``line(record, stem, count)``: the line of one image or frame from its JSON Lines record, its file stem
    (for a frame, the video's stem and the frame number) and its unrounded count (NaN or inf when not finite)."""

    name: str
    help: str
    line: Callable[[dict[str, Any], str, float], str]
    videos: bool  # whether video frames can be written in it
    points: bool  # whether --points can go into it
    by_stem: bool  # whether it names each image by its file stem (so two inputs may not share one)


COUNT_FORMATS: Registry[CountFormat] = Registry("count format")


def _jsonl_line(record: dict[str, Any], stem: str, count: float) -> str:
    return dumps_record(record)


def _nwpu_line(record: dict[str, Any], stem: str, count: float) -> str:
    if not math.isfinite(count):
        raise CrowdtkError(
            f"{record.get('image', stem)}: the prediction is not finite (NaN or inf), and a submission needs a number",
            "use a checkpoint whose weights have not diverged",
        )
    return f"{stem} {count:.4f}"


COUNT_FORMATS.register(
    CountFormat(
        "jsonl",
        "one JSON object a line: image or video and frame, count",
        _jsonl_line,
        videos=True,
        points=True,
        by_stem=False,
    )
)
COUNT_FORMATS.register(
    CountFormat(
        "nwpu",
        "NWPU-Crowd submission: '<id> <count>' a line, the id the image's file stem",
        _nwpu_line,
        videos=False,
        points=False,
        by_stem=True,
    )
)
