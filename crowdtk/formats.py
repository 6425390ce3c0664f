"""File contracts: every artifact crowdtk reads or writes is defined here.

Each artifact carries a header recording its format name and version, the crowdtk
version, the producing command with its parameters, and the seed. JSON Lines artifacts
keep the header as their first line; ``.npz`` artifacts keep it as a JSON string under
the key ``__meta__`` (a numpy unicode array, so loading never needs pickle).

Readers refuse other formats and newer versions with a message naming the file and the
version found. Writers are atomic (crowdtk.files).
The formats are documented for humans in ``docs/formats.md``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypedDict

import numpy as np

from crowdtk import __version__
from crowdtk.errors import CrowdtkError
from crowdtk.files import STDIO, atomic_path

if TYPE_CHECKING:  # annotations only: typing.Unpack is new in Python 3.11
    from typing_extensions import Unpack

# Format name -> the newest version this crowdtk reads and writes.
MANIFEST = "manifest"
DENSITY_INDEX = "density-index"
DENSITY_MAP = "density-map"
REGIONS = "regions"
LABELS = "labels"
VECTORS = "vectors"
CHECKPOINT = "checkpoint"
SYNTH_CONFIG = "synth-config"
LABELING_EXPORT = "labeling-export"  # the index.json of an `export` folder
BENCH_RESULTS = "bench-results"  # results.json of `crowdtk bench`
DEMO_REPORT = "demo-report"  # report.json of `crowdtk demo`
BENCH_CHECK = "bench-check"  # check.json of `crowdtk bench --check`
ONNX_COUNTER = "onnx-counter"  # the metadata of an ONNX model `crowdtk export-model` writes
CAMPAIGN = "campaign"  # campaign.json of `crowdtk campaign`: its settings, plan of rounds and their state
FORMAT_VERSIONS: dict[str, int] = {
    MANIFEST: 1,
    DENSITY_INDEX: 1,
    DENSITY_MAP: 1,
    REGIONS: 1,
    LABELS: 1,
    VECTORS: 1,
    CHECKPOINT: 1,
    SYNTH_CONFIG: 1,
    LABELING_EXPORT: 1,
    BENCH_RESULTS: 1,
    DEMO_REPORT: 1,
    BENCH_CHECK: 1,
    ONNX_COUNTER: 1,
    CAMPAIGN: 1,
}


# --------------------------------------------------------------------------- suggested heads (export --prelabel)


@dataclass(frozen=True)
class Suggestions:
    """The suggested heads of one image: (N, 2) full-image pixels (x, y) and a score each."""

    points: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True)
class Prelabels:
    """What ``export --prelabel`` sends: the suggestions per image id, and the name the tools show for them."""

    model_version: str
    images: dict[str, Suggestions]


# --------------------------------------------------------------------------- headers


@dataclass(frozen=True)
class Provenance:
    """Who made an artifact: the command, its resolved parameters, and the seed."""

    command: str
    params: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None


def make_header(fmt: str, provenance: Provenance) -> dict[str, Any]:
    return {
        "format": fmt,
        "format_version": FORMAT_VERSIONS[fmt],
        "crowdtk_version": __version__,
        "command": provenance.command,
        "params": _jsonable(provenance.params),
        "seed": provenance.seed,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# One builder per artifact: the common header plus the fields that artifact's readers rely on
# (docs/formats.md lists them). Commands and stages build headers only through these.


def manifest_header(provenance: Provenance, layout: str, skipped: list[str] | None = None) -> dict[str, Any]:
    """``skipped=None`` (synth, which writes every image it makes) leaves the field out."""
    header = make_header(MANIFEST, provenance)
    header["layout"] = layout
    if skipped is not None:
        header["skipped"] = skipped
    return header


def density_index_header(provenance: Provenance, skipped: list[str]) -> dict[str, Any]:
    return {**make_header(DENSITY_INDEX, provenance), "skipped": skipped}


def density_map_header(
    provenance: Provenance, image_id: str, image: str, count: int, stride: int, image_size: list[int]
) -> dict[str, Any]:
    return {
        **make_header(DENSITY_MAP, provenance),
        "image_id": image_id,
        "image": image,
        "count": count,
        "stride": stride,
        "image_size": image_size,
    }


class VectorsFields(TypedDict):
    """A vectors file's own header fields (besides the common ones)."""

    levels: int
    strip_frac: float
    scale: float
    manifest_sha256: str
    checkpoint_sha256: str
    model: str | None
    skipped: list[str]


def vectors_header(provenance: Provenance, **values: Unpack[VectorsFields]) -> dict[str, Any]:
    return {**make_header(VECTORS, provenance), **values}


def checkpoint_header(
    provenance: Provenance,
    *,
    model: str,
    model_config: dict[str, Any],
    cap: bool,
    training: dict[str, Any],
    labels_sha256: str,
    epochs_done: int,
    best_val_mae: float,
    val_on: str,
    supervision: dict[str, int] | None = None,
    finished: bool = True,
    cpu_phase_split: bool | None = None,
    cap_affinity: str = "paper",
    cap_temperature: float | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """``training`` is the run's TrainConfig as a dict; its density and input scales are repeated at the top
    level because every reader of a checkpoint needs them. ``finished``: the run trained all its epochs
    (False in the checkpoint of a run that was interrupted, which eval and count warn about).
    ``cpu_phase_split``: the CPU convolution backward the run used (crowdtk.train.cpu; None off the CPU).
    With ``cap``, CAP's affinity form and temperature are written too (``cap_affinity``, ``cap_temperature``),
    so that whoever draws its affinities uses the form training used (checkpoint.cap_settings reads them).
    ``run_id`` names the training run (the same in its checkpoint and its resumable state)."""
    cap_fields = {"cap_affinity": cap_affinity, "cap_temperature": cap_temperature} if cap else {}
    return {
        **make_header(CHECKPOINT, provenance),
        "model": {"name": model, "config": model_config},
        "cap": cap,
        **cap_fields,
        "inference_only": False,
        "density_scale": training["density_scale"],
        "scale": training["scale"],
        "training": training,
        "labels_sha256": labels_sha256,
        "epochs_done": epochs_done,
        "best_val_mae": best_val_mae,
        "val_on": val_on,
        "supervision": supervision or {},
        "finished": finished,
        "cpu_phase_split": cpu_phase_split,
        "run_id": run_id,
    }


def regions_header(
    provenance: Provenance,
    *,
    budget: float | None,
    strip_frac: float,
    scale: float,
    shape: str,
    manifest_sha256: str | None,
    pool_images: int,
    pool_area: int,
    area_fraction: float,
    cumulative_area_fraction: float,
    budget_heads: float | None = None,
    expected_heads: float | None = None,
) -> dict[str, Any]:
    """``budget_heads`` and ``expected_heads`` are written only with a head budget (``budget`` is then None)."""
    heads = {} if budget_heads is None else {"budget_heads": budget_heads, "expected_heads": expected_heads}
    return {
        **make_header(REGIONS, provenance),
        "budget": budget,
        "strip_frac": strip_frac,
        "scale": scale,
        "shape": shape,
        "manifest_sha256": manifest_sha256,
        "pool_images": pool_images,
        "pool_area": pool_area,
        "area_fraction": area_fraction,
        "cumulative_area_fraction": cumulative_area_fraction,
        **heads,
    }


def labels_header(
    provenance: Provenance, regions_sha256: str | None, manifest_sha256: str | None = None
) -> dict[str, Any]:
    """``regions_sha256``: the digest of the regions file the labels answer (None when it came on stdin);
    ``manifest_sha256``: the pool's manifest, from the regions header (so that --merge can refuse another pool's
    labels)."""
    return {**make_header(LABELS, provenance), "regions_sha256": regions_sha256, "manifest_sha256": manifest_sha256}


def export_header(provenance: Provenance, regions_sha256: str | None) -> dict[str, Any]:
    """The index.json of an export folder; ``regions_sha256`` as in :func:`labels_header`."""
    return {**make_header(LABELING_EXPORT, provenance), "regions_sha256": regions_sha256}


def bench_check_header(
    provenance: Provenance, *, baseline: str, baseline_sha256: str, tolerance: float
) -> dict[str, Any]:
    """check.json of ``bench --check``: the baseline results.json it compared against (path and digest) and the
    tolerance."""
    return {
        **make_header(BENCH_CHECK, provenance),
        "baseline": baseline,
        "baseline_sha256": baseline_sha256,
        "tolerance": tolerance,
    }


def campaign_header(provenance: Provenance) -> dict[str, Any]:
    """campaign.json of ``crowdtk campaign``; its body holds ``settings``, ``plan`` and ``rounds``
    (crowdtk.campaign)."""
    return make_header(CAMPAIGN, provenance)


def stripped_checkpoint_header(header: dict[str, Any], source: str, command: str, removed: list[str]) -> dict[str, Any]:
    """A checkpoint's header once CAP's weights are gone (strip-cap): inference only."""
    return {
        **header,
        "cap": False,
        "inference_only": True,
        "stripped_from": source,
        "stripped_by": command,
        "removed_tensors": removed,
    }


# Training settings renamed since checkpoints were first written: old name -> current TrainConfig field.
_RENAMED_SETTINGS = {"input_scale": "scale"}


def training_settings(header: dict[str, Any]) -> dict[str, Any]:
    """The training configuration a checkpoint or state records, under today's setting names."""
    return {_RENAMED_SETTINGS.get(k, k): v for k, v in (header.get("training") or {}).items()}


def trained_scale(header: dict[str, Any], default: float = 1.0) -> float:
    """The image resize factor a counter was trained at (``default`` when the header has none)."""
    return float(header.get("scale", header.get("input_scale", default)))


def onnx_counter_header(
    provenance: Provenance, checkpoint: dict[str, Any], checkpoint_sha256: str, removed: list[str]
) -> dict[str, Any]:
    """The header of a counter exported to ONNX (export-model), from its checkpoint's ``checkpoint`` header: what
    ``count --backend onnxruntime`` needs to prepare images and read the output as a checkpoint's reader does
    (``scale``, ``density_scale``), whether training finished, and the tensors left out (CAP's)."""
    return {
        **make_header(ONNX_COUNTER, provenance),
        "model": checkpoint.get("model"),
        "density_scale": checkpoint.get("density_scale", 1.0),
        "scale": trained_scale(checkpoint),
        "finished": checkpoint.get("finished", True),
        "epochs_done": checkpoint.get("epochs_done"),
        "training": training_settings(checkpoint),
        "checkpoint_sha256": checkpoint_sha256,
        "removed_tensors": removed,
    }


def check_header(header: Any, fmt: str, source: str) -> dict[str, Any]:
    """Validate an artifact header; raise a CrowdtkError that names ``source``."""
    if not isinstance(header, dict) or "format" not in header:
        raise CrowdtkError(
            f"{source}: no crowdtk header (expected a '{fmt}' artifact)",
            "produce it with the matching crowdtk command, or add the header line described in docs/formats.md",
        )
    found = header.get("format")
    if found != fmt:
        raise CrowdtkError(
            f"{source}: is a '{found}' artifact, expected '{fmt}'",
            "pass the right file",
        )
    version = header.get("format_version")
    newest = FORMAT_VERSIONS[fmt]
    if not isinstance(version, int) or isinstance(version, bool):
        raise CrowdtkError(f"{source}: header has no integer format_version", "regenerate the file")
    if version > newest:
        raise CrowdtkError(
            f"{source}: '{fmt}' format version {version} is newer than this crowdtk reads (up to {newest})",
            "upgrade crowdtk, or regenerate the file with this version",
        )
    if version < 1:
        raise CrowdtkError(f"{source}: invalid format_version {version}", "regenerate the file")
    return header


def peek_format(path: str | os.PathLike[str]) -> str | None:
    """The format of the crowdtk artifact at ``path`` without reading all of it: ``CHECKPOINT`` for
    a safetensors file, else its header's ``format``; None when it has no crowdtk header.

    Raises a CrowdtkError naming the file when it is missing, a folder, or a broken safetensors file.
    """
    p = Path(path)
    if not p.is_file():
        raise CrowdtkError(f"{path}: {'is a folder' if p.is_dir() else 'no such file'}", "pass a crowdtk artifact file")
    with open(p, "rb") as fh:
        head = fh.read(4096)
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 30):
        return CHECKPOINT  # safetensors: an 8-byte header length, then the JSON header
    if p.suffix.lower() == ".safetensors":
        raise CrowdtkError(f"{path}: not a readable safetensors file", "pass a checkpoint written by crowdtk")
    header: Any = None
    try:
        with open(p, encoding="utf-8") as fh:
            first = fh.readline()
            try:
                header = json.loads(first)
            except json.JSONDecodeError:
                if first.strip() == "{":  # an indented JSON document (results.json, report.json)
                    fh.seek(0)
                    header = json.loads(fh.read())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        header = None
    return header["format"] if isinstance(header, dict) and isinstance(header.get("format"), str) else None


def with_named_files(*paths: str | os.PathLike[str] | None) -> list[str | os.PathLike[str]]:
    """``paths`` and the image and points files that the manifests, regions and labels files among them name:
    everything a command reads through them, for the check that its output spares its inputs."""
    readers: dict[str, Callable[[str | os.PathLike[str]], tuple[dict[str, Any], list[Any]]]] = {
        MANIFEST: read_manifest,
        REGIONS: read_regions,
        LABELS: read_labels,
    }
    found: list[str | os.PathLike[str]] = []
    for path in paths:
        if path is None or str(path) == STDIO:
            continue
        found.append(path)
        if not Path(path).is_file():
            continue
        try:  # an input that cannot be read is the command's to report, in its own order of checks
            reader = readers.get(peek_format(path) or "")
            entries = reader(path)[1] if reader is not None else []
        except CrowdtkError:
            continue
        for entry in entries:
            found.append(entry.image)
            if isinstance(getattr(entry, "points", None), str):
                found.append(entry.points)
    return found


def _jsonable(value: Any) -> Any:
    """Parameters as plain JSON (paths become strings)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return value


# --------------------------------------------------------------------------- JSON Lines


def jsonl_text(header: dict[str, Any], records: Iterable[dict[str, Any]]) -> Iterator[str]:
    """The lines of a JSON Lines artifact: the header first, then one record per line."""
    yield json.dumps(header, sort_keys=False) + "\n"
    for record in records:
        yield json.dumps(_jsonable(record), sort_keys=False) + "\n"


def write_jsonl(
    path: str | os.PathLike[str],
    header: dict[str, Any],
    records: Iterable[dict[str, Any]],
    stdout: IO[str] | None = None,
) -> None:
    """Write a JSON Lines artifact atomically, or to ``stdout`` when ``path`` is ``-``."""
    if str(path) == STDIO:
        out = stdout if stdout is not None else sys.stdout
        for line in jsonl_text(header, records):
            out.write(line)
        out.flush()
        return
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for line in jsonl_text(header, records):
            fh.write(line)


def read_jsonl(
    path: str | os.PathLike[str], fmt: str, stdin: IO[str] | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read a JSON Lines artifact of format ``fmt``: (header, records)."""
    source = "<stdin>" if str(path) == STDIO else str(path)
    try:
        if str(path) == STDIO:
            text = (stdin if stdin is not None else sys.stdin).read()
        else:
            text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CrowdtkError(f"{source}: no such file", "check the path") from None
    except IsADirectoryError:
        raise CrowdtkError(f"{source}: is a folder, expected a '{fmt}' JSON Lines file", "pass the file") from None
    except UnicodeDecodeError:
        raise CrowdtkError(
            f"{source}: not UTF-8 text (expected a '{fmt}' JSON Lines file)", "pass the right file"
        ) from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        raise CrowdtkError(f"{source}: empty file (expected a '{fmt}' artifact)", "regenerate it")
    parsed = []
    for n, line in lines:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CrowdtkError(f"{source}:{n}: line is not JSON ({exc.msg})", "fix or regenerate the file") from None
        except (ValueError, RecursionError) as exc:  # an integer of > 4300 digits; nesting too deep
            raise CrowdtkError(
                f"{source}:{n}: line is not usable JSON ({type(exc).__name__})", "fix or regenerate the file"
            ) from None
        if not isinstance(obj, dict):
            raise CrowdtkError(f"{source}:{n}: line is not a JSON object", "fix or regenerate the file")
        parsed.append((n, obj))
    header = check_header(parsed[0][1], fmt, source)
    records = []
    for n, obj in parsed[1:]:
        obj["_line"] = n
        records.append(obj)
    return header, records


# --------------------------------------------------------------------------- JSON documents


def write_json(path: str | os.PathLike[str], header: dict[str, Any], body: dict[str, Any]) -> None:
    """Write a JSON artifact atomically: the header's keys, then the body's, in one object."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({**header, **_jsonable(body)}, indent=1) + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike[str], fmt: str) -> dict[str, Any]:
    """Read a JSON artifact of format ``fmt`` (header keys and body in one object)."""
    source = str(path)
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CrowdtkError(f"{source}: no such file", "check the path") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CrowdtkError(f"{source}: not a JSON file ({exc})", f"pass a '{fmt}' artifact") from None
    check_header(obj, fmt, source)
    return obj


# --------------------------------------------------------------------------- npz arrays


def save_npz(path: str | os.PathLike[str], header: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Write arrays plus the JSON header (key ``__meta__``) atomically, uncompressed."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            # allow_pickle=False: no object arrays, as load_npz reads none (and no array name can stand for the flag).
            np.savez(fh, allow_pickle=False, __meta__=np.array(json.dumps(_jsonable(header))), **arrays)


def load_npz(path: str | os.PathLike[str], fmt: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read an ``.npz`` artifact without ever unpickling: (header, arrays)."""
    source = str(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a bare .npy array, not an .npz archive
            raise CrowdtkError(
                f"{source}: is a single .npy array, not an .npz archive", f"expected a '{fmt}' artifact; regenerate it"
            )
        with loaded as data:
            arrays = {key: data[key] for key in data.files}
    except CrowdtkError:
        raise
    except FileNotFoundError:
        raise CrowdtkError(f"{source}: no such file", "check the path") from None
    except ValueError as exc:
        if "pickle" in str(exc):  # numpy refuses object arrays and pickles without allow_pickle
            raise CrowdtkError(
                f"{source}: holds data that needs unpickling ({exc})", "crowdtk refuses such files; regenerate it"
            ) from None
        raise CrowdtkError(f"{source}: not a readable .npz file ({exc})", "regenerate it") from None
    except Exception as exc:  # noqa: BLE001 - BadZipFile, zlib.error, EOFError, a bad .npy header: all the same to the user
        raise CrowdtkError(
            f"{source}: not a readable .npz file ({type(exc).__name__}: {exc})", "regenerate it"
        ) from None
    if "__meta__" not in arrays:
        raise CrowdtkError(f"{source}: no crowdtk header (__meta__)", f"expected a '{fmt}' artifact; regenerate it")
    try:
        header = json.loads(str(arrays.pop("__meta__")))
    except (ValueError, RecursionError):
        raise CrowdtkError(f"{source}: header is not JSON", "regenerate it") from None
    return check_header(header, fmt, source), arrays


# --------------------------------------------------------------------------- records


def _require(record: dict[str, Any], spec: dict[str, type | tuple[type, ...]], source: str) -> None:
    where = f"{source}:{record.get('_line', '?')}"
    for name, kind in spec.items():
        if name not in record:
            raise CrowdtkError(f"{where}: record lacks the field '{name}'", "fix or regenerate the file")
        value = record[name]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise CrowdtkError(f"{where}: field '{name}' has the wrong type", "fix or regenerate the file")


def _resolve(base: Path | None, value: str, source: str, record: dict[str, Any]) -> str:
    """Relative paths inside an artifact are relative to the artifact's folder. Read from stdin
    (``base`` None) the folder is unknown: a relative path is refused rather than resolved against the
    working directory, where it would silently name another file."""
    p = Path(value)
    if p.is_absolute():
        return str(p)
    if base is None:
        raise CrowdtkError(
            f"{source}:{record.get('_line', '?')}: relative path '{value}' read from stdin, where the folder it is "
            "relative to is unknown",
            "pass the file itself instead of '-', or write absolute paths into it",
        )
    return str(base / p)


class _FlatEntry:
    """An entry stored as its fields, one JSON object per line (the manifest's and the density index's)."""

    def to_record(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]


# The keys ``index`` writes into a manifest record's ``attributes``, and what each holds. Values are kept as
# the data set writes them (integers stay integers), so that per-level statistics group by them directly.
ATTRIBUTE_NAMES = {
    "split": "the data set's split whose list names the image: train, val or test (NWPU-Crowd)",
    "illumination": "the illumination label of the split list, an integer (NWPU-Crowd)",
    "scene_level": "the scene level of the split list, an integer (NWPU-Crowd)",
    "scene_type": "the scene type of image_labels.txt, a word (JHU-Crowd++)",
    "weather": "the weather of image_labels.txt: 0 none, 1 fog or haze, 2 rain, 3 snow (JHU-Crowd++)",
    "distractor": "1 for an image image_labels.txt marks as a distractor (no crowd), else 0 (JHU-Crowd++)",
}


@dataclass(frozen=True)
class ManifestEntry(_FlatEntry):
    """One image of a data set.

    ``image`` and ``points`` are paths (relative ones are relative to the manifest's
    folder); ``count`` is the number of head points inside the image; ``sha256`` is the
    digest of the image file's bytes; ``id`` names the image uniquely within the manifest.

    Optional (manifests before them lack them; None is left out of the record): ``size_bytes``
    and ``mtime_ns``, the image file's size and modification time when it was indexed, let a stage
    that does not read the image tell by one stat that it is unchanged
    (:func:`crowdtk.data.check_unchanged`); ``points_sha256`` is the digest of the points file;
    ``attributes`` are what the data set says of the image besides its heads (:data:`ATTRIBUTE_NAMES`).

    ``points`` None: the data set publishes no annotations for the image (NWPU-Crowd's test split); its
    ``count`` is then 0 and means nothing. Such an image can be counted and selected from, not evaluated.
    """

    id: str
    image: str
    points: str | None
    width: int
    height: int
    count: int
    sha256: str
    size_bytes: int | None = None
    mtime_ns: int | None = None
    points_sha256: str | None = None
    # Not hashed: a dict is not hashable, and the id and digests tell images apart.
    attributes: dict[str, str | int] | None = field(default=None, hash=False)

    _OPTIONAL = {"size_bytes": int, "mtime_ns": int, "points_sha256": str}

    def to_record(self) -> dict[str, Any]:
        record = asdict(self)
        return {k: v for k, v in record.items() if not ((k in self._OPTIONAL or k == "attributes") and v is None)}

    @classmethod
    def from_record(cls, record: dict[str, Any], source: str, base: Path | None) -> ManifestEntry:
        _require(
            record,
            {"id": str, "image": str, "width": int, "height": int, "count": int, "sha256": str},
            source,
        )
        points = record.get("points")
        if points is not None and not isinstance(points, str):
            raise CrowdtkError(
                f"{source}:{record.get('_line', '?')}: field 'points' has the wrong type", "fix or regenerate the file"
            )
        for name, kind in cls._OPTIONAL.items():
            value = record.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
                raise CrowdtkError(
                    f"{source}:{record.get('_line', '?')}: field '{name}' has the wrong type",
                    "fix or regenerate the file",
                )
        if record["width"] < 1 or record["height"] < 1 or record["count"] < 0:
            raise CrowdtkError(
                f"{source}:{record.get('_line', '?')}: invalid width, height or count", "fix or regenerate the file"
            )
        attributes = record.get("attributes")
        values = attributes.values() if isinstance(attributes, dict) else [None]  # JSON keys are strings
        if attributes is not None and not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in values):
            raise CrowdtkError(
                f"{source}:{record.get('_line', '?')}: field 'attributes' is not an object of strings and integers",
                "fix or regenerate the file",
            )
        return cls(
            id=record["id"],
            image=_resolve(base, record["image"], source, record),
            points=_resolve(base, points, source, record) if points is not None else None,
            width=record["width"],
            height=record["height"],
            count=record["count"],
            sha256=record["sha256"],
            size_bytes=record.get("size_bytes"),
            mtime_ns=record.get("mtime_ns"),
            points_sha256=record.get("points_sha256"),
            attributes=dict(attributes) if attributes else None,
        )


def _read_entries(
    path: str | os.PathLike[str], fmt: str, entry_type: Any, stdin: IO[str] | None = None
) -> tuple[dict[str, Any], list[Any]]:
    """Read a JSON Lines artifact and turn each record into ``entry_type`` (relative paths resolved)."""
    header, records = read_jsonl(path, fmt, stdin=stdin)
    base = None if str(path) == STDIO else Path(path).resolve().parent
    source = "<stdin>" if str(path) == STDIO else str(path)
    first_line: dict[str, int] = {}
    for r in records:  # one record per image: a repeated one would be trained on, exported and counted twice
        image_id = r.get("id")
        if not isinstance(image_id, str):  # the record's own reader names a missing or mistyped id
            continue
        if image_id in first_line:
            raise CrowdtkError(
                f"{source}:{r['_line']}: image '{image_id}' is listed twice (also on line {first_line[image_id]})",
                "remove the repeated record, or regenerate the file",
            )
        first_line[image_id] = r["_line"]
    return header, [entry_type.from_record(r, source, base) for r in records]


def read_manifest(
    path: str | os.PathLike[str], stdin: IO[str] | None = None
) -> tuple[dict[str, Any], list[ManifestEntry]]:
    return _read_entries(path, MANIFEST, ManifestEntry, stdin)  # a repeated id is refused there, with its lines


@dataclass(frozen=True)
class DensityEntry(_FlatEntry):
    """One density map written by ``gen-density``: its ``.npz`` (relative to the index)."""

    id: str
    image: str
    density: str
    count: int
    sum: float
    stride: int
    height: int
    width: int

    @classmethod
    def from_record(cls, record: dict[str, Any], source: str, base: Path | None) -> DensityEntry:
        _require(
            record,
            {
                "id": str,
                "image": str,
                "density": str,
                "count": int,
                "sum": (int, float),
                "stride": int,
                "height": int,
                "width": int,
            },
            source,
        )
        values = {f.name: record[f.name] for f in fields(cls)}
        values["density"] = _resolve(base, record["density"], source, record)
        values["image"] = _resolve(base, record["image"], source, record)
        values["sum"] = float(record["sum"])
        return cls(**values)


def read_density_index(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[DensityEntry]]:
    return _read_entries(path, DENSITY_INDEX, DensityEntry)


def load_density_map(path: str | os.PathLike[str]) -> tuple[dict[str, Any], np.ndarray]:
    header, arrays = load_npz(path, DENSITY_MAP)
    if "density" not in arrays:
        raise CrowdtkError(f"{path}: no 'density' array", "regenerate it with crowdtk gen-density")
    return header, arrays["density"]


def dumps_record(record: dict[str, Any]) -> str:
    """One JSON line for data written to stdout by commands that stream results."""
    return json.dumps(_jsonable(record))


# --------------------------------------------------------------------------- regions and labels


@dataclass(frozen=True)
class Region:
    """A labeled (or to-be-labeled) rectangle in pixels: columns [x0, x1), rows [y0, y1).

    Strips, the paper's shape, span the full height; their records omit y0 and y1.
    """

    x0: int
    x1: int
    y0: int
    y1: int

    def contains(self, points: np.ndarray) -> np.ndarray:
        return (
            (points[:, 0] >= self.x0) & (points[:, 0] < self.x1) & (points[:, 1] >= self.y0) & (points[:, 1] < self.y1)
        )

    @property
    def area(self) -> int:
        return (self.x1 - self.x0) * (self.y1 - self.y0)

    def to_record(self, height: int) -> dict[str, int]:
        record = {"x0": self.x0, "x1": self.x1}
        if (self.y0, self.y1) != (0, height):
            record.update(y0=self.y0, y1=self.y1)
        return record

    @classmethod
    def from_record(cls, record: Any, width: int, height: int, where: str) -> Region:
        if isinstance(record, list) and len(record) == 2:  # the short form [x0, x1)
            record = {"x0": record[0], "x1": record[1]}
        if not isinstance(record, dict):
            raise CrowdtkError(
                f'{where}: a region must be {{"x0", "x1"[, "y0", "y1"]}} or [x0, x1]', "fix or regenerate the file"
            )
        try:
            x0, x1 = int(record["x0"]), int(record["x1"])
            y0, y1 = int(record.get("y0", 0)), int(record.get("y1", height))
        except (KeyError, TypeError, ValueError, OverflowError):
            raise CrowdtkError(
                f"{where}: region {record!r} lacks integer x0/x1", "fix or regenerate the file"
            ) from None
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise CrowdtkError(
                f"{where}: region {record!r} is empty or outside the {width}x{height} image",
                "fix or regenerate the file",
            )
        return cls(x0, x1, y0, y1)


def _image_fields(record: dict[str, Any], source: str, base: Path | None) -> dict[str, Any]:
    """The checked fields a labels or regions record starts with (the image it is about), by name, its path
    resolved against ``base``."""
    _require(record, {"id": str, "image": str, "sha256": str, "width": int, "height": int, "regions": list}, source)
    if record["width"] < 1 or record["height"] < 1:
        raise CrowdtkError(
            f"{source}:{record.get('_line', '?')}: invalid width or height", "fix or regenerate the file"
        )
    return {
        "id": record["id"],
        "image": _resolve(base, record["image"], source, record),
        "sha256": record["sha256"],
        "width": record["width"],
        "height": record["height"],
    }


def _image_record(entry: LabelsEntry | RegionsEntry) -> dict[str, Any]:
    """The image a labels or regions record is about, as it starts."""
    return {"id": entry.id, "image": entry.image, "sha256": entry.sha256, "width": entry.width, "height": entry.height}


@dataclass(frozen=True)
class LabelsEntry:
    """The labels of one image: its labeled regions and the head points inside them.

    A fully labeled image is one region covering it. Points are full-image pixels (x, y).
    """

    id: str
    image: str
    sha256: str
    width: int
    height: int
    regions: tuple[Region, ...]
    points: np.ndarray  # (N, 2) float64

    @property
    def labeled_area(self) -> int:
        return sum(r.area for r in self.regions)

    def to_record(self) -> dict[str, Any]:
        return {
            **_image_record(self),
            "regions": [r.to_record(self.height) for r in self.regions],
            "points": [[float(x), float(y)] for x, y in self.points],
        }

    @classmethod
    def from_record(cls, record: dict[str, Any], source: str, base: Path | None) -> LabelsEntry:
        image = _image_fields(record, source, base)
        where = f"{source}:{record.get('_line', '?')}"
        regions = tuple(Region.from_record(r, record["width"], record["height"], where) for r in record["regions"])
        raw = record.get("points", [])
        try:
            points = np.zeros((0, 2)) if raw is None or raw == [] else np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError, OverflowError, RecursionError):
            points = None
        if not isinstance(raw, (list, type(None))) or points is None or points.ndim != 2 or points.shape[1] != 2:
            raise CrowdtkError(f"{where}: 'points' must be a list of [x, y] pairs", "fix or regenerate the file")
        if not np.isfinite(points).all():
            raise CrowdtkError(f"{where}: points are NaN or infinite", "fix the labels")
        # numpy would read "12.5" as 12.5: a coordinate written as a string is a foreign or hand-edited file.
        if raw and any(isinstance(v, (str, bool)) or not isinstance(v, (int, float)) for pair in raw for v in pair):
            raise CrowdtkError(
                f"{where}: 'points' holds a coordinate that is not a number", "write each point as [x, y] numbers"
            )
        off = (
            (points[:, 0] < 0)
            | (points[:, 0] > record["width"])
            | (points[:, 1] < 0)
            | (points[:, 1] > record["height"])
        )
        if off.any():
            x, y = points[off][0]
            raise CrowdtkError(
                f"{where}: point ({x:g}, {y:g}) lies outside the {record['width']}x{record['height']} image "
                f"({int(off.sum())} such point(s))",
                "fix the labels, or import them again",
            )
        return cls(**image, regions=regions, points=points)


def read_labels(path: str | os.PathLike[str], stdin: IO[str] | None = None) -> tuple[dict[str, Any], list[LabelsEntry]]:
    return _read_entries(path, LABELS, LabelsEntry, stdin)


@dataclass(frozen=True)
class RegionsEntry:
    """The regions chosen for one image by ``select``, to be labeled.

    ``strategy`` names the selection strategy (``warmup`` marks the warm-up round's random
    strips); ``details`` holds one dict per region with what the strategy knew about it
    (MDC: ``component`` and ``distance`` to the component mean; all: ``predicted_count``
    when vectors were given).
    """

    id: str
    image: str
    sha256: str
    width: int
    height: int
    strategy: str
    regions: tuple[Region, ...]
    details: tuple[dict[str, Any], ...] = ()

    @property
    def area(self) -> int:
        return sum(r.area for r in self.regions)

    def to_record(self) -> dict[str, Any]:
        regions = []
        for i, region in enumerate(self.regions):
            record: dict[str, Any] = region.to_record(self.height)
            if i < len(self.details):
                record.update(self.details[i])
            regions.append(record)
        return {**_image_record(self), "strategy": self.strategy, "regions": regions}

    @classmethod
    def from_record(cls, record: dict[str, Any], source: str, base: Path | None) -> RegionsEntry:
        image = _image_fields(record, source, base)
        _require(record, {"strategy": str}, source)
        where = f"{source}:{record.get('_line', '?')}"
        regions = tuple(Region.from_record(r, record["width"], record["height"], where) for r in record["regions"])
        details = tuple(
            {k: v for k, v in r.items() if k not in {"x0", "x1", "y0", "y1"}} if isinstance(r, dict) else {}
            for r in record["regions"]
        )
        return cls(**image, strategy=record["strategy"], regions=regions, details=details)


def read_regions(
    path: str | os.PathLike[str], stdin: IO[str] | None = None
) -> tuple[dict[str, Any], list[RegionsEntry]]:
    return _read_entries(path, REGIONS, RegionsEntry, stdin)


# --------------------------------------------------------------------------- strip vectors


@dataclass
class StripVectors:
    """Multi-level density vectors of every strip of every image (``vectors`` output).

    Images are rows of ``ids``; strips are rows of ``vectors`` with ``strip_image`` naming
    their image and ``[strip_x0, strip_x1)`` their columns; ``counts`` is the warm-up
    counter's predicted count in each strip. The header records the manifest and checkpoint
    digests, ``levels``, ``strip_frac`` and ``scale`` (the training scale whose cell grid the strip edges lie on).
    """

    ids: np.ndarray  # (I,) str
    sha256: np.ndarray  # (I,) str
    strip_image: np.ndarray  # (S,) int64
    strip_x0: np.ndarray  # (S,) int64
    strip_x1: np.ndarray  # (S,) int64
    vectors: np.ndarray  # (S, D) float32
    counts: np.ndarray  # (S,) float32


def save_vectors(path: str | os.PathLike[str], header: dict[str, Any], data: StripVectors) -> None:
    save_npz(path, header, {f.name: getattr(data, f.name) for f in fields(StripVectors)})


def load_vectors(path: str | os.PathLike[str]) -> tuple[dict[str, Any], StripVectors]:
    header, arrays = load_npz(path, VECTORS)
    missing = [f.name for f in fields(StripVectors) if f.name not in arrays]
    if missing:
        raise CrowdtkError(f"{path}: vectors file lacks {missing}", "regenerate it with crowdtk vectors")
    data = StripVectors(**{f.name: arrays[f.name] for f in fields(StripVectors)})
    n_images, n_strips = len(data.ids), len(data.vectors)
    if (
        data.vectors.ndim != 2
        or any(len(a) != n_strips for a in (data.strip_image, data.strip_x0, data.strip_x1, data.counts))
        or len(data.sha256) != n_images
        or (n_strips and not (0 <= data.strip_image.min() and data.strip_image.max() < n_images))
    ):
        raise CrowdtkError(f"{path}: inconsistent array shapes", "regenerate it with crowdtk vectors")
    return header, data


# --------------------------------------------------------------------------- image lists (select --image-list)


@dataclass(frozen=True)
class ImageList:
    """A list of images to label whole, as semi-supervised counting papers publish their fixed splits
    (``label_list/shb-5.txt``): one entry a line, a file name (``IMG_12.jpg``), a path whose last part is
    one (``train_data/images/IMG_12.jpg``, ``C:\\data\\IMG_12.jpg``) or a manifest id (``IMG_12``).

    ``entries`` are (line number, entry) with surrounding whitespace removed; blank lines and lines whose
    first character that is not a space is ``#`` are left out. ``sha256`` is the digest of the file's
    bytes (what a bench folder records: a rerun with another list is refused)."""

    source: str
    sha256: str
    entries: tuple[tuple[int, str], ...]


def read_image_list(path: str | os.PathLike[str]) -> ImageList:
    """Read an image list (:class:`ImageList`); a file that is missing, no regular file, not UTF-8 text, or
    names no image is refused naming it."""
    import hashlib
    import stat

    source = str(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise CrowdtkError(f"{source}: no such image list", "check the path given to --image-list") from None
    if not stat.S_ISREG(mode):  # a FIFO would block the read
        raise CrowdtkError(f"{source}: not a regular file", "pass a text file with one image name a line")
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark, as some editors write, is not part of the first name
    except UnicodeDecodeError:
        raise CrowdtkError(f"{source}: not UTF-8 text", "pass a text file with one image name a line") from None
    entries = tuple(
        (n, line.strip())
        for n, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.strip().startswith("#")
    )
    if not entries:
        raise CrowdtkError(f"{source}: names no image (only blank lines or comments)", "list one image name a line")
    return ImageList(source, hashlib.sha256(data).hexdigest(), entries)
