"""Fuzzing the readers of untrusted files: they load, or raise CrowdtkError; never anything else.

Covered: the point-file readers (``crowdtk.data.read_points``: .mat, .txt, .csv, .json, .npy),
the manifest, regions and labels readers (``crowdtk.formats``), and the label-tool importers
(``crowdtk.labeling.import_labels`` for labelstudio, cvat, labelme and crops). Inputs are random
bytes, random JSON structures whose keys come from the real schemas (so the fuzzer reaches the
deep branches), mutated valid files, wrong types, and huge, negative, NaN and infinite numbers.
Whatever loads must also be well-formed (finite (N, 2) points, typed entries).
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from crowdtk.data import read_points
from crowdtk.errors import CrowdtkError
from crowdtk.formats import (
    LABELS,
    MANIFEST,
    REGIONS,
    LabelsEntry,
    ManifestEntry,
    Provenance,
    Region,
    RegionsEntry,
    make_header,
    read_labels,
    read_manifest,
    read_regions,
)
from crowdtk.labeling import _cvat_xml, _labelme_record, _labelstudio_task, export_names, import_labels
from crowdtk.labeling.common import ExportedImage

FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

WORK = Path(tempfile.mkdtemp(prefix="crowdtk-fuzz-"))


@pytest.fixture(scope="module", autouse=True)
def _cleanup():
    yield
    shutil.rmtree(WORK, ignore_errors=True)


def fresh(name: str) -> Path:
    """An empty folder for one example (examples run one after another)."""
    folder = WORK / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


# --------------------------------------------------------------------------- strategies

KEYS = [
    # crowdtk artifacts
    "format",
    "format_version",
    "id",
    "image",
    "points",
    "width",
    "height",
    "count",
    "sha256",
    "regions",
    "strategy",
    "x0",
    "x1",
    "y0",
    "y1",
    "x",
    "y",
    # Label Studio
    "data",
    "crowdtk_id",
    "annotations",
    "was_cancelled",
    "ground_truth",
    "result",
    "type",
    "value",
    "keypointlabels",
    "original_width",
    "original_height",
    # LabelMe
    "shapes",
    "shape_type",
    "label",
    "imagePath",
    "imageWidth",
    "imageHeight",
    "flags",
    "done",
]
NUMBERS = (
    st.integers(min_value=-(10**30), max_value=10**30)
    | st.sampled_from([0, 1, -1, 2**63, -(2**63), 10**400])
    | st.floats(allow_nan=True, allow_infinity=True)
)
SCALARS = (
    st.none()
    | st.booleans()
    | NUMBERS
    | st.text(max_size=12)
    | st.sampled_from(["head", "keypointlabels", "point", "a.jpg", "manifest", "1"])
)
JSON = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), children, max_size=6)
    ),
    max_leaves=12,
)


@st.composite
def mutated(draw, valid: bytes) -> bytes:
    """``valid`` with a few random edits: flipped, deleted or inserted bytes, a cut, or a spliced chunk."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "delete", "insert", "truncate", "splice"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 16))]
        elif op == "insert":
            data[pos:pos] = draw(
                st.binary(min_size=1, max_size=8)
                | st.sampled_from([b"nan", b"-1e400", b"[", b"{", b",", b"\n", b"\x00"])
            )
        elif op == "truncate":
            del data[pos:]
        elif op == "splice" and data:
            start = draw(st.integers(0, len(data) - 1))
            data[pos:pos] = data[start : start + draw(st.integers(1, 32))]
    return bytes(data)


def json_bytes(value) -> bytes:
    return json.dumps(value).encode()


def loads_or_refuses(read, *args):
    """Call a reader: its result, or None when it refused with a CrowdtkError (anything else fails the test)."""
    try:
        return read(*args)
    except CrowdtkError as exc:
        assert str(exc), "a CrowdtkError needs a message"
        return None


def check_points(points) -> None:
    assert isinstance(points, np.ndarray) and points.dtype == np.float64
    assert points.ndim == 2 and points.shape[1] == 2 and np.isfinite(points).all()


# --------------------------------------------------------------------------- point files


VALID_POINTS = np.array([[1.5, 2.0], [30.0, 10.25], [0.0, 0.0]])


def valid_point_file(suffix: str) -> bytes:
    if suffix == ".txt":
        return b"# x y\n1.5 2\n30 10.25\n0 0\n"
    if suffix == ".csv":
        return b"x,y\n1.5,2\n30,10.25\n0,0\n"
    if suffix == ".json":
        return json_bytes({"points": VALID_POINTS.tolist()})
    buffer = io.BytesIO()
    if suffix == ".npy":
        np.save(buffer, VALID_POINTS)
    else:
        scipy.io.savemat(buffer, {"annPoints": VALID_POINTS})
    return buffer.getvalue()


def read_point_bytes(data: bytes, suffix: str):
    path = fresh("points") / f"p{suffix}"
    path.write_bytes(data)
    points = loads_or_refuses(read_points, path)
    if points is not None:
        check_points(points)
    return points


@pytest.mark.parametrize("suffix", [".txt", ".csv", ".json", ".npy", ".mat"])
@FUZZ
@given(data=st.data())
def test_point_readers_on_random_and_mutated_bytes(suffix, data):
    valid = valid_point_file(suffix)
    blob = data.draw(st.binary(max_size=300) | mutated(valid), label="file")
    read_point_bytes(blob, suffix)


@FUZZ
@given(value=JSON)
def test_json_point_reader_on_random_structures(value):
    read_point_bytes(json_bytes(value), ".json")


@FUZZ
@given(
    rows=st.lists(st.lists(NUMBERS.map(repr) | st.text(max_size=5), max_size=4), max_size=6),
    sep=st.sampled_from([" ", ",", "\t", ";"]),
)
def test_text_point_readers_on_random_rows(rows, sep):
    text = "\n".join(sep.join(row) for row in rows).encode()
    read_point_bytes(text, ".txt")
    read_point_bytes(text, ".csv")


ARRAY_DTYPES = st.sampled_from(["float64", "float32", "int64", "uint8", "bool", "complex128", "<U4", "float16", "V4"])


@FEW
@given(shape=st.lists(st.integers(0, 4), max_size=3), dtype=ARRAY_DTYPES, fill=NUMBERS)
def test_npy_point_reader_on_arrays_of_any_shape_and_type(shape, dtype, fill):
    try:
        with np.errstate(all="ignore"):
            array = np.full(shape, fill).astype(dtype)
    except (OverflowError, ValueError, TypeError):
        assume(False)
    buffer = io.BytesIO()
    np.save(buffer, array)
    read_point_bytes(buffer.getvalue(), ".npy")


MAT_VALUES = st.one_of(
    NUMBERS.map(
        lambda v: np.array(v, dtype=float) if isinstance(v, float) else np.array(float(max(min(v, 1e300), -1e300)))
    ),
    st.lists(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=3), min_size=1, max_size=4)
    .filter(lambda rows: len({len(r) for r in rows}) == 1)
    .map(np.array),
    st.text(max_size=5),
    st.just(np.zeros((0, 2))),
)


@FEW
@given(key=st.sampled_from(["image_info", "annPoints", "other"]), value=MAT_VALUES, wrap=st.integers(0, 2))
def test_mat_point_reader_on_odd_contents(key, value, wrap):
    for _ in range(wrap):  # nested cells, as ShanghaiTech's image_info[0,0][0,0][0]
        cell = np.empty((1, 1), dtype=object)
        cell[0, 0] = value
        value = cell
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {key: value})
    read_point_bytes(buffer.getvalue(), ".mat")


# --------------------------------------------------------------------------- crowdtk JSON Lines artifacts


def valid_artifact(fmt: str) -> bytes:
    header = make_header(fmt, Provenance("fuzz"))
    if fmt == MANIFEST:
        records = [ManifestEntry("a", "a.jpg", "a.txt", 80, 48, 3, "0" * 64).to_record()]
    elif fmt == REGIONS:
        records = [
            RegionsEntry(
                "a", "a.jpg", "0" * 64, 80, 48, "random", (Region(8, 16, 0, 48), Region(24, 40, 8, 40))
            ).to_record()
        ]
    else:
        records = [
            LabelsEntry("a", "a.jpg", "0" * 64, 80, 48, (Region(8, 16, 0, 48),), np.array([[9.0, 3.0]])).to_record()
        ]
    return "".join(json.dumps(r) + "\n" for r in [header, *records]).encode()


READERS = {MANIFEST: read_manifest, REGIONS: read_regions, LABELS: read_labels}
ENTRY_TYPES: dict[str, type[ManifestEntry | RegionsEntry | LabelsEntry]] = {
    MANIFEST: ManifestEntry,
    REGIONS: RegionsEntry,
    LABELS: LabelsEntry,
}


def read_artifact_bytes(data: bytes, fmt: str) -> None:
    path = fresh("artifact") / f"{fmt}.jsonl"
    path.write_bytes(data)
    loaded = loads_or_refuses(READERS[fmt], path)
    if loaded is not None:
        header, entries = loaded
        assert header["format"] == fmt
        for entry in entries:
            assert isinstance(entry, ENTRY_TYPES[fmt]) and isinstance(entry.id, str)
            # the entry is of fmt's type (above): LabelsEntry for LABELS, RegionsEntry or LabelsEntry unless MANIFEST
            if isinstance(entry, LabelsEntry):
                check_points(entry.points)
            if isinstance(entry, (RegionsEntry, LabelsEntry)):
                assert all(0 <= r.x0 < r.x1 <= entry.width and 0 <= r.y0 < r.y1 <= entry.height for r in entry.regions)


@pytest.mark.parametrize("fmt", [MANIFEST, REGIONS, LABELS])
@FUZZ
@given(data=st.data())
def test_artifact_readers_on_random_and_mutated_bytes(fmt, data):
    blob = data.draw(st.binary(max_size=300) | mutated(valid_artifact(fmt)), label="file")
    read_artifact_bytes(blob, fmt)


@pytest.mark.parametrize("fmt", [MANIFEST, REGIONS, LABELS])
@FUZZ
@given(data=st.data())
def test_artifact_readers_on_records_of_wrong_types(fmt, data):
    """A valid header, then records whose fields are replaced by random JSON values."""
    lines = valid_artifact(fmt).decode().splitlines()
    record = json.loads(lines[1])
    for key in data.draw(st.lists(st.sampled_from(sorted(record) + ["extra"]), max_size=4), label="keys"):
        if data.draw(st.booleans(), label="drop"):
            record.pop(key, None)
        else:
            record[key] = data.draw(JSON, label=key)
    header = json.loads(lines[0])
    if data.draw(st.booleans(), label="touch header"):
        header[data.draw(st.sampled_from(["format", "format_version"]), label="header key")] = data.draw(
            JSON, label="header value"
        )
    read_artifact_bytes((json.dumps(header) + "\n" + json.dumps(record) + "\n").encode(), fmt)


def test_deeply_nested_json_is_refused_not_a_crash(tmp_path):
    """Python's JSON parser raises RecursionError on deep nesting: readers turn it into a CrowdtkError."""
    deep = "[" * 100_000 + "]" * 100_000
    (tmp_path / "p.json").write_text(deep)
    with pytest.raises(CrowdtkError):
        read_points(tmp_path / "p.json")
    (tmp_path / "m.jsonl").write_text(json.dumps(make_header(MANIFEST, Provenance("x"))) + "\n" + deep + "\n")
    with pytest.raises(CrowdtkError, match=r"m.jsonl:2"):
        read_manifest(tmp_path / "m.jsonl")
    (tmp_path / "big.jsonl").write_text(
        json.dumps(make_header(MANIFEST, Provenance("x"))) + "\n" + '{"width": ' + "9" * 5000 + "}\n"
    )
    with pytest.raises(CrowdtkError, match=r"big.jsonl:2"):
        read_manifest(tmp_path / "big.jsonl")


# --------------------------------------------------------------------------- label-tool importers

ENTRIES = [
    RegionsEntry("a", "/nowhere/a.jpg", "0" * 64, 80, 48, "random", (Region(8, 24, 0, 48),)),
    RegionsEntry("b", "/nowhere/b.png", "1" * 64, 64, 40, "random", (Region(0, 16, 0, 40), Region(32, 48, 8, 32))),
]
NAMES = export_names(ENTRIES)


def valid_labelstudio() -> bytes:
    tasks = []
    for entry, name in zip(ENTRIES, NAMES):
        task = _labelstudio_task(ExportedImage(entry), f"images/{name}")
        task["annotations"] = [
            {
                "id": 1,
                "result": [
                    {
                        "type": "keypointlabels",
                        "original_width": entry.width,
                        "original_height": entry.height,
                        "value": {"x": 20.0, "y": 50.0, "keypointlabels": ["head"]},
                    }
                ],
            }
        ]
        tasks.append(task)
    return json_bytes(tasks)


def valid_cvat() -> bytes:
    xml = _cvat_xml(list(zip(ENTRIES, NAMES)))
    return xml.replace("</image>", '<points label="head" points="10.0,5.0;12.5,7.0" /></image>', 1).encode()


def valid_labelme(entry: RegionsEntry, name: str) -> bytes:
    record = _labelme_record(ExportedImage(entry), name)
    record["shapes"].append({"label": "head", "points": [[10.0, 5.0]], "shape_type": "point", "flags": {}})
    return json_bytes(record)


def run_import(fmt: str, path: Path) -> None:
    result = loads_or_refuses(import_labels, ENTRIES, fmt, path, True)
    if result is not None:
        for entry in result.entries:
            check_points(entry.points)
            assert all(
                any(r.contains(entry.points[i : i + 1])[0] for r in entry.regions) for i in range(len(entry.points))
            )


def malformed(valid: bytes, *more: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Random bytes, ``valid`` mutated, or what one of ``more`` draws: a tool's file gone wrong."""
    return st.one_of(st.binary(max_size=200), mutated(valid), *more)


def import_file(fmt: str, name: str, blob: bytes) -> None:
    """Import ``blob`` as the one file of a ``fmt`` export (named ``name``)."""
    path = fresh(fmt) / name
    path.write_bytes(blob)
    run_import(fmt, path)


@FUZZ
@given(data=st.data())
def test_labelstudio_import_on_malformed_exports(data):
    json_blobs = (JSON.map(json_bytes), st.lists(JSON, max_size=3).map(json_bytes))
    blob = data.draw(malformed(valid_labelstudio(), *json_blobs), label="export")
    import_file("labelstudio", "export.json", blob)


@FUZZ
@given(data=st.data())
def test_labelstudio_import_on_tasks_with_random_parts(data):
    """Valid tasks with one part (data, annotations, a result, a value…) replaced by a random JSON value."""
    tasks = json.loads(valid_labelstudio())
    task = tasks[data.draw(st.integers(0, 1), label="task")]
    target = data.draw(st.sampled_from(["task", "data", "annotation", "result", "value"]), label="where")
    holder = {
        "task": task,
        "data": task["data"],
        "annotation": task["annotations"][0],
        "result": task["annotations"][0]["result"][0],
        "value": task["annotations"][0]["result"][0]["value"],
    }[target]
    key = data.draw(st.sampled_from(sorted(holder)), label="key")
    holder[key] = data.draw(JSON, label="value")
    import_file("labelstudio", "export.json", json_bytes(tasks))


XML_BITS = st.sampled_from(
    [
        "<annotations>",
        "</annotations>",
        "<image ",
        "</image>",
        'name="a.jpg" ',
        'name="../../x.jpg" ',
        'width="80" ',
        'height="48" ',
        'width="nan" ',
        'width="1e999" ',
        '<points label="head" points="1,2;3,4"/>',
        '<points label="head" points="x,;;,1,2,3"/>',
        '<points label="head" points="nan,inf"/>',
        '<tag label="done"/>',
        "/>",
        ">",
        "<",
        "&amp;",
        "&lt;",
        "<!-- c -->",
        "<![CDATA[x]]>",
        "<?xml version='1.0'?>",
        "<!DOCTYPE a>",
    ]
)


@FUZZ
@given(data=st.data())
def test_cvat_import_on_malformed_xml(data):
    xml_blobs = st.lists(XML_BITS, max_size=12).map(lambda b: "".join(b).encode())
    blob = data.draw(malformed(valid_cvat(), xml_blobs), label="xml")
    import_file("cvat", "annotations.xml", blob)


@FUZZ
@given(data=st.data())
def test_labelme_import_on_malformed_files(data):
    folder = fresh("labelme")
    for entry, name in zip(ENTRIES, NAMES):
        valid = valid_labelme(entry, name)
        choice = data.draw(st.sampled_from(["valid", "bytes", "mutated", "json", "shape"]), label=f"kind {name}")
        if choice == "valid":
            blob = valid
        elif choice == "bytes":
            blob = data.draw(st.binary(max_size=100), label="bytes")
        elif choice == "mutated":
            blob = data.draw(mutated(valid), label="mutated")
        elif choice == "json":
            blob = json_bytes(data.draw(JSON, label="json"))
        else:
            record = json.loads(valid)
            shape = record["shapes"][-1]
            shape[data.draw(st.sampled_from(sorted(shape)), label="shape key")] = data.draw(JSON, label="shape value")
            record[
                data.draw(st.sampled_from(["imagePath", "imageWidth", "imageHeight", "flags", "version"]), label="key")
            ] = data.draw(JSON, label="value")
            blob = json_bytes(record)
        (folder / f"{Path(name).stem}.json").write_bytes(blob)
    run_import("labelme", folder)


@FUZZ
@given(data=st.data())
def test_crops_import_on_malformed_point_files(data):
    folder = fresh("crops")
    (folder / "crops").mkdir()
    for entry, name in zip(ENTRIES, NAMES):
        for k in range(len(entry.regions)):
            if not data.draw(st.booleans(), label="present"):
                continue
            suffix = data.draw(st.sampled_from([".txt", ".json", ".csv"]), label="suffix")
            blob = data.draw(
                st.binary(max_size=80) | mutated(valid_point_file(suffix)) | JSON.map(json_bytes), label="points"
            )
            (folder / "crops" / f"{Path(name).stem}__r{k}{suffix}").write_bytes(blob)
    run_import("crops", folder)


def test_fuzz_inputs_reach_the_loaders():
    """The valid seeds load (so mutations start from files that get deep into the readers)."""
    for suffix in (".txt", ".csv", ".json", ".npy", ".mat"):
        np.testing.assert_allclose(read_point_bytes(valid_point_file(suffix), suffix), VALID_POINTS)
    for fmt in READERS:
        path = fresh("seed") / "x.jsonl"
        path.write_bytes(valid_artifact(fmt))
        assert len(READERS[fmt](path)[1]) == 1
    path = fresh("seed") / "export.json"
    path.write_bytes(valid_labelstudio())
    assert len(import_labels(ENTRIES, "labelstudio", path).entries) == 2
    path = fresh("seed") / "annotations.xml"
    path.write_bytes(valid_cvat())
    assert len(import_labels(ENTRIES, "cvat", path, allow_missing=True).entries) == 1
    folder = fresh("seed")
    for entry, name in zip(ENTRIES, NAMES):
        (folder / f"{Path(name).stem}.json").write_bytes(valid_labelme(entry, name))
    assert [len(e.points) for e in import_labels(ENTRIES, "labelme", folder).entries] == [1, 1]
