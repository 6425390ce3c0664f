"""`crowdtk export-model` and `count --backend onnxruntime`: the exported counter counts as the checkpoint does
(same preprocessing, tiles and all), runs in a plain onnxruntime session, carries its metadata, leaves CAP out,
and a missing onnx extra is a clear error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import assert_clean_failure, run, save_checkpoint, small_checkpoint

from crowdtk.cap import TrainNet
from crowdtk.formats import Provenance
from crowdtk.models import build_model
from crowdtk.predict import Predictor, load_counter
from crowdtk.train_config import TrainConfig

METADATA = ("crowdtk", "input_mean", "input_std", "output_stride", "scale", "density_scale", "preprocessing")


def _needs_extra() -> None:
    for module in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(module, reason=f"{module} is not installed (pip install -e '.[onnx]'; make test has it)")


def csrnet_checkpoint(path: Path) -> Path:
    """A random csrnet counter (no ImageNet weights downloaded) saved as a finished checkpoint at scale 1."""
    torch.manual_seed(0)
    counter = build_model("csrnet", pretrained=False)
    # CSRNet's own N(0, 0.01) start fades the signal out over 16 layers, leaving a map of output biases; He
    # initialisation keeps the image in the map, so that agreeing maps mean agreeing networks.
    for m in counter.modules():
        if isinstance(m, torch.nn.Conv2d) and m is not counter.output:
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    config = TrainConfig(model="csrnet", pretrained=False, epochs=1)
    return save_checkpoint(path, TrainNet(counter, cap=False), config)


@pytest.fixture(scope="module")
def lite(tmp_path_factory) -> dict[str, Path]:
    """A small lite counter trained with CAP at scale 0.5, exported by the command."""
    _needs_extra()
    root = tmp_path_factory.mktemp("onnx-lite")
    ckpt = small_checkpoint(root / "lite.safetensors", scale=0.5, cap=True)
    result = run("export-model", ckpt, "--onnx", root / "lite.onnx", "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""  # the exporter's own progress lines never reach stdout
    return {"ckpt": ckpt, "onnx": root / "lite.onnx"}


@pytest.fixture(scope="module")
def csrnet(tmp_path_factory) -> dict[str, Path]:
    """A random csrnet counter at scale 1, exported by the library call."""
    _needs_extra()
    from crowdtk.onnx_export import export_onnx

    root = tmp_path_factory.mktemp("onnx-csrnet")
    ckpt = csrnet_checkpoint(root / "csrnet.safetensors")
    export_onnx(ckpt, root / "csrnet.onnx", Provenance("test"))
    return {"ckpt": ckpt, "onnx": root / "csrnet.onnx"}


def predictors(model: dict[str, Path], **options) -> tuple[Predictor, Predictor]:
    from crowdtk.onnx_export import load_onnx_counter

    return (
        Predictor(load_counter(model["ckpt"]), device="cpu", **options),
        Predictor(load_onnx_counter(model["onnx"]), device="cpu", **options),
    )


def assert_same_density(image: np.ndarray, torch_side: Predictor, onnx_side: Predictor) -> None:
    expected, sx, sy = torch_side.density(image)
    got, gx, gy = onnx_side.density(image)
    assert (got.shape, gx, gy) == (expected.shape, sx, sy)
    assert float(got.sum()) == pytest.approx(float(expected.sum()), rel=1e-3)
    # The map itself, not just its sum: cell by cell within 1e-3 of the map's largest value.
    assert np.abs(got - expected).max() <= 1e-3 * np.abs(expected).max()


@pytest.mark.parametrize("name", ["lite", "csrnet"])
def test_onnx_counts_as_torch_on_generated_images(name, request):
    model = request.getfixturevalue(name)
    rng = np.random.default_rng(0)
    torch_side, onnx_side = predictors(model)
    # Two sizes, neither a multiple of the stride (nor, at lite's scale 0.5, after resizing).
    for height, width in ((90, 124), (203, 157)):
        assert_same_density(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), torch_side, onnx_side)
    # Tiles (an image larger than --max-side) and the flip average go through the same forward call.
    # 128-px tiles with 64 px of context, on an image of 300×420 px at the model's scale.
    torch_side, onnx_side = predictors(model, max_side=256, flip_average=True)
    height, width = round(300 / torch_side.loaded.scale), round(420 / torch_side.loaded.scale)
    assert_same_density(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), torch_side, onnx_side)


@pytest.mark.parametrize("name", ["lite", "csrnet"])
def test_onnx_counts_as_torch_on_part_b(name, request, part_b):
    model = request.getfixturevalue(name)
    torch_side, onnx_side = predictors(model)
    images = sorted((part_b / "test_data" / "images").glob("*.jpg"))[:2]
    full = cv2.cvtColor(cv2.imread(str(images[0])), cv2.COLOR_BGR2RGB)
    half = cv2.resize(cv2.cvtColor(cv2.imread(str(images[1])), cv2.COLOR_BGR2RGB), (512, 384))
    for image in (full, half):
        assert_same_density(image, torch_side, onnx_side)


def test_metadata_and_cap_left_out(lite):
    import onnx

    model = onnx.load(str(lite["onnx"]))
    props = {p.key: p.value for p in model.metadata_props}
    assert set(METADATA) <= set(props)
    loaded = load_counter(lite["ckpt"])
    assert json.loads(props["input_mean"]) == pytest.approx(list(loaded.counter.mean))
    assert json.loads(props["input_std"]) == pytest.approx(list(loaded.counter.std))
    assert json.loads(props["output_stride"]) == 8
    assert json.loads(props["scale"]) == 0.5
    assert json.loads(props["density_scale"]) == loaded.density_scale
    header = json.loads(props["crowdtk"])
    assert header["format"] == "onnx-counter" and header["command"] == "export-model"
    assert header["model"]["name"] == "lite" and header["scale"] == 0.5
    # CAP's tensors are in the checkpoint, named as left out, and nowhere in the graph.
    from safetensors import safe_open

    with safe_open(str(lite["ckpt"]), framework="pt") as fh:
        cap = sorted(k for k in fh.keys() if k.startswith("cap."))
    assert cap and header["removed_tensors"] == cap
    names = [i.name for i in model.graph.initializer] + [n.name for n in model.graph.node]
    assert names and not any(n.startswith("cap") for n in names)
    # Batch, height and width are dynamic.
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param != "" for d in dims] == [True, False, True, True] and dims[1].dim_value == 3


PLAIN_SESSION = r"""
import json, sys
import numpy as np
import onnxruntime as ort

session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
meta = session.get_modelmeta().custom_metadata_map
mean, std = np.array(json.loads(meta["input_mean"])), np.array(json.loads(meta["input_std"]))
stride = json.loads(meta["output_stride"])
image = np.load(sys.argv[2])  # H x W x 3 uint8, sides multiples of the stride, scale 1
assert json.loads(meta["scale"]) == 1.0 and image.shape[0] % stride == 0 == image.shape[1] % stride
x = ((image / 255.0 - mean) / std).astype(np.float32).transpose(2, 0, 1)[None]
density = session.run(None, {session.get_inputs()[0].name: x})[0]
loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("crowdtk", "torch"))
print(json.dumps({"count": float(density.sum()) / json.loads(meta["density_scale"]), "loaded": loaded}))
"""


def test_plain_onnxruntime_session_counts_without_crowdtk(csrnet, tmp_path):
    image = np.random.default_rng(3).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    np.save(tmp_path / "image.npy", image)
    script = tmp_path / "plain.py"
    script.write_text(PLAIN_SESSION)
    child = subprocess.run(
        [sys.executable, str(script), str(csrnet["onnx"]), str(tmp_path / "image.npy")],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the repository: crowdtk is not importable from the working folder
        timeout=300,
    )
    assert child.returncode == 0, child.stderr
    out = json.loads(child.stdout)
    assert out["loaded"] == []  # neither crowdtk nor torch was imported
    expected, _, _ = Predictor(load_counter(csrnet["ckpt"]), device="cpu").density(image)
    assert out["count"] == pytest.approx(float(expected.sum()), rel=1e-3)


def test_count_backend_onnxruntime_prints_the_torch_counts(lite, tmp_path):
    rng = np.random.default_rng(4)
    for i, (height, width) in enumerate(((120, 160), (77, 203))):
        cv2.imwrite(str(tmp_path / f"im{i}.png"), rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    by_torch = run("count", lite["ckpt"], tmp_path, "-q")
    by_onnx = run("count", lite["onnx"], tmp_path, "--backend", "onnxruntime", "-q")
    assert by_torch.exit_code == 0 and by_onnx.exit_code == 0, by_onnx.output
    expected = [json.loads(line) for line in by_torch.stdout.splitlines()]
    got = [json.loads(line) for line in by_onnx.stdout.splitlines()]
    assert [g["image"] for g in got] == [e["image"] for e in expected] and len(got) == 2
    for g, e in zip(got, expected):
        assert g["count"] == pytest.approx(e["count"], rel=1e-3, abs=1e-3)


def test_backend_and_file_mismatches_are_usage_errors(lite, tmp_path):
    image = tmp_path / "im.png"
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    assert_clean_failure(run("count", lite["onnx"], image), "--backend onnxruntime", code=2)
    assert_clean_failure(
        run("count", lite["onnx"], image, "--backend", "onnxruntime", "--device", "cuda"), "cuda", code=2
    )
    # A checkpoint handed to the onnxruntime backend, and an ONNX model that crowdtk did not write.
    assert_clean_failure(run("count", lite["ckpt"], image, "--backend", "onnxruntime"), "not an ONNX model")
    import onnx

    plain = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["x"], ["y"])],
            "g",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        ),
        opset_imports=[onnx.helper.make_opsetid("", 18)],
    )
    plain.ir_version = 8
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    assert_clean_failure(run("count", tmp_path / "plain.onnx", image, "--backend", "onnxruntime"), "metadata")


@pytest.mark.parametrize(
    ("missing", "command"),
    [
        ("onnxruntime", ("count", "{model}", "{image}", "--backend", "onnxruntime")),
        ("onnxscript", ("export-model", "{ckpt}", "--onnx", "{out}")),
        ("onnx", ("export-model", "{ckpt}", "--onnx", "{out}")),
    ],
)
def test_a_missing_onnx_package_names_the_extra(missing, command, tmp_path, monkeypatch):
    # Importing a module whose sys.modules entry is None raises ImportError, as when it is not installed.
    monkeypatch.setitem(sys.modules, missing, None)
    ckpt = small_checkpoint(tmp_path / "m.safetensors")
    image = tmp_path / "im.png"
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")  # never read: the missing package is found first
    paths = {"model": model, "image": image, "ckpt": ckpt, "out": tmp_path / "out.onnx"}
    result = run(*(part.format(**paths) for part in command))
    assert_clean_failure(result, f"'{missing}'", leftovers=tmp_path / "out.onnx")
    assert "pip install 'crowdtk[onnx]'" in result.stderr
