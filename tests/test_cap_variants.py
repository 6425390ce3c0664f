"""CAP's affinity forms: the paper's Eq. 9 unchanged, the two extensions (temperature, cosine) by formula,
sharper than the paper's on structured features, blocked like it, recorded in checkpoints and used by
the affinity pictures; the CLI options and their usage errors."""

from __future__ import annotations

import math
from dataclasses import asdict

import pytest
import torch
from conftest import FAST_TRAIN, assert_clean_failure, run, save_checkpoint

from crowdtk.affinity import image_affinities
from crowdtk.cap import CapModule, TrainNet, affinity_maps, affinity_rows, cap_batch, cap_image, strip_cap
from crowdtk.checkpoint import cap_settings, load_tensors, read_header
from crowdtk.errors import CrowdtkError, UsageError
from crowdtk.formats import Provenance, checkpoint_header, read_labels
from crowdtk.models import build_model
from crowdtk.predict import load_counter
from crowdtk.train import prepare_sample
from crowdtk.train.state import Progress, restore_state, save_state
from crowdtk.train_config import CAP_TEMPERATURES, TrainConfig, check_cap_options

torch.set_num_threads(2)

EPS = 1e-6
VARIANTS = ("temperature", "cosine")


def _rows_by_formula(fl: torch.Tensor, fu: torch.Tensor, affinity: str, tau: float | None) -> torch.Tensor:
    """Eq. 9 and its extensions written out: ``fl`` ``n_l×C``, ``fu`` ``n_u×C`` → ``n_l×n_u`` affinities."""
    if affinity == "cosine":
        assert tau is not None  # only the paper's form takes no temperature
        dots = (fl @ fu.t()) / (fl.norm(dim=1, keepdim=True) * fu.norm(dim=1)[None, :])
        return torch.softmax(dots / tau, dim=1)
    sl, su = torch.softmax(fl + EPS, dim=1), torch.softmax(fu + EPS, dim=1)  # Eq. 8
    dots = sl @ su.t()
    if affinity == "paper":
        return torch.softmax(dots, dim=1)
    assert tau is not None  # only the paper's form takes no temperature
    return torch.softmax(dots / tau, dim=1)


def _split(feat: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = feat.reshape(feat.shape[0], -1).t()
    m = mask.reshape(-1)
    return flat[m], flat[~m]


def _strip_mask(h: int, w: int, cols: slice) -> torch.Tensor:
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[:, cols] = True
    return mask


# --------------------------------------------------------------------------- the forms, by formula


def test_paper_form_is_eq_8_to_10_exactly() -> None:
    torch.manual_seed(0)
    feat = torch.randn(12, 5, 9)
    mask = _strip_mask(5, 9, slice(3, 5))
    gamma = 0.2
    fl, fu = _split(feat, mask)
    s = torch.softmax(torch.softmax(fl + EPS, dim=1) @ torch.softmax(fu + EPS, dim=1).t(), dim=1)  # Eq. 8–9
    expected = feat.reshape(12, -1).t().clone()
    expected[mask.reshape(-1)] = gamma * (s @ fu) + (1 - gamma) * fl  # Eq. 10
    expected = expected.t().reshape(feat.shape)
    # The same operations in the same order: equal to the last bit, with the form named or by default.
    assert torch.equal(cap_image(feat, mask, gamma), expected)
    assert torch.equal(cap_image(feat, mask, gamma, affinity="paper"), expected)
    positions = [(r, c) for r in range(5) for c in (3, 4)]
    assert torch.equal(affinity_rows(feat, mask, positions), s)
    assert torch.equal(CapModule(affinity="paper")(feat[None], mask[None])[0], expected)


@pytest.mark.parametrize(
    "affinity, tau", [("temperature", 0.05), ("temperature", None), ("cosine", 0.2), ("cosine", None)]
)
def test_each_extension_equals_its_formula(affinity: str, tau: float | None) -> None:
    torch.manual_seed(1)
    feat = torch.randn(8, 4, 6, dtype=torch.float64)
    mask = _strip_mask(4, 6, slice(1, 3))
    fl, fu = _split(feat, mask)
    used = CAP_TEMPERATURES[affinity] if tau is None else tau  # None: the form's default
    s = _rows_by_formula(fl, fu, affinity, used)
    positions = [(r, c) for r in range(4) for c in (1, 2)]
    assert torch.allclose(affinity_rows(feat, mask, positions, affinity=affinity, temperature=tau), s, atol=1e-12)
    gamma = 0.3
    out = cap_image(feat, mask, gamma, affinity=affinity, temperature=tau)
    fl_out, fu_out = _split(out, mask)
    assert torch.allclose(fl_out, gamma * (s @ fu) + (1 - gamma) * fl, atol=1e-12)
    assert torch.equal(fu_out, fu)
    # and they are not the paper's affinities
    assert not torch.allclose(s, _rows_by_formula(fl, fu, "paper", None), atol=1e-3)


def _two_clusters() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 16-channel 6×8 map: unlabeled positions in two clusters (columns 0–3 strong on channels 0–1,
    columns 5–7 on channels 2–3), one labeled column (4) whose features lie near the first cluster."""
    g = torch.Generator().manual_seed(2)
    feat = 0.1 * torch.randn(16, 6, 8, generator=g, dtype=torch.float64)
    feat[0:2, :, 0:4] += 6.0
    feat[2:4, :, 5:8] += 6.0
    feat[0:2, :, 4] += 6.0
    mask = _strip_mask(6, 8, slice(4, 5))
    near = torch.zeros(6, 8, dtype=torch.bool)
    near[:, 0:4] = True
    return feat, mask, near[~mask]


@pytest.mark.parametrize("affinity", VARIANTS)
def test_extensions_put_the_mass_on_the_similar_cluster_where_the_paper_cannot(affinity: str) -> None:
    feat, mask, near = _two_clusters()
    positions = [(r, 4) for r in range(6)]
    paper = affinity_rows(feat, mask, positions)
    sharp = affinity_rows(feat, mask, positions, affinity=affinity)  # the form's default temperature
    ratio = lambda rows: rows.max(dim=1).values / rows.min(dim=1).values  # noqa: E731
    # The paper's logits are dot products of softmax vectors, in (0, 1): no affinity exceeds e times another.
    assert (ratio(paper) <= math.e).all()
    assert (ratio(sharp) > math.e**3).all()
    near_paper, near_sharp = paper[:, near].sum(dim=1), sharp[:, near].sum(dim=1)
    assert (near_paper < 0.75).all()  # near the share of the cluster (24 of 42 positions) times at most e
    assert (near_sharp > 0.95).all()


@pytest.mark.parametrize("affinity", ["paper", *VARIANTS])
def test_blocked_rows_equal_the_whole_matrix_with_gradients(affinity: str) -> None:
    """Every form, the paper's included: blocks of labeled rows (recomputed in the backward pass) change nothing."""
    torch.manual_seed(4)
    base = torch.randn(2, 16, 12, 20, dtype=torch.float64).relu()
    mask = torch.stack([_strip_mask(12, 20, slice(4, 10)), _strip_mask(12, 20, slice(15, 17))])
    results = []
    for max_bytes in (1 << 30, 168 * 8 * 5):  # whole matrix; blocks of 5 rows (recomputed in backward)
        feat = base.clone().requires_grad_(True)
        cap = CapModule(max_bytes=max_bytes, affinity=affinity).double()
        out = cap(feat, mask)
        (out * torch.linspace(0, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        assert feat.grad is not None and cap.gamma.grad is not None
        results.append((out.detach(), feat.grad.clone(), cap.gamma.grad.clone()))
    (o1, g1, y1), (o2, g2, y2) = results
    assert torch.allclose(o1, o2, atol=1e-12)
    assert torch.allclose(g1, g2, atol=1e-12)
    assert torch.allclose(y1, y2, atol=1e-12)
    assert g1.abs().sum() > 0 and y1 != 0
    with torch.no_grad():
        o3 = CapModule(max_bytes=1, affinity=affinity).double()(base, mask)  # one row per block
    assert torch.allclose(o1, o3, atol=1e-12)


def test_cosine_of_a_zero_feature_is_zero_not_nan() -> None:
    feat = torch.randn(8, 4, 5).relu()
    feat[:, 0, 0] = 0  # an unlabeled position whose ReLU features are all zero
    feat[:, 1, 2] = 0  # and a labeled one
    feat.requires_grad_(True)
    mask = _strip_mask(4, 5, slice(2, 3))
    out = cap_batch(feat[None], mask[None], 0.2, affinity="cosine")
    out.sum().backward()
    assert feat.grad is not None
    assert torch.isfinite(out).all() and torch.isfinite(feat.grad).all()


def test_forms_and_temperatures_are_checked() -> None:
    feat, mask = torch.randn(4, 3, 3), _strip_mask(3, 3, slice(1, 2))
    with pytest.raises(CrowdtkError, match="unknown affinity"):
        cap_image(feat, mask, 0.2, affinity="dot")
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(CrowdtkError, match="finite and positive"):
            CapModule(affinity="cosine", temperature=bad)
    with pytest.raises(CrowdtkError, match="no temperature"):
        affinity_rows(feat, mask, [(0, 1)], affinity="paper", temperature=0.1)
    module = CapModule(affinity="temperature")
    assert module.temperature == CAP_TEMPERATURES["temperature"] and "temperature" in repr(module)
    assert CapModule().temperature is None and "affinity" not in repr(CapModule())
    # the form is a setting, not a weight: every form's state dict is gamma alone
    assert set(CapModule(affinity="cosine", temperature=0.3).state_dict()) == {"gamma"}


def test_the_training_settings_refuse_cap_options_that_cannot_run() -> None:
    TrainConfig(cap=True, cap_affinity="cosine", cap_temperature=0.2).validate()
    assert TrainConfig(cap=True, cap_affinity="cosine").cap_tau() == CAP_TEMPERATURES["cosine"]
    assert TrainConfig(cap=True).cap_tau() is None
    for args, match in [
        ((True, "cosine", 0.0), "finite and positive"),
        ((True, "cosine", math.nan), "finite and positive"),
        ((False, "cosine", None), "--cap-affinity without --cap"),
        ((False, "paper", 0.1), "--cap-temperature without --cap"),
        ((True, "paper", 0.1), "take no temperature"),
        ((True, "dot", None), "must be one of"),
    ]:
        with pytest.raises(UsageError, match=match):
            check_cap_options(*args)
    with pytest.raises(UsageError, match="without --cap"):
        TrainConfig(cap_affinity="temperature").validate()


@pytest.mark.parametrize("affinity", VARIANTS)
def test_strip_cap_leaves_the_counter_of_every_form(affinity: str) -> None:
    torch.manual_seed(5)
    counter = build_model("lite", pretrained=False, dilated=False, backend_channels=[16]).eval()
    model = TrainNet(counter, cap=True, cap_affinity=affinity)
    assert model.cap is not None and model.cap.affinity == affinity
    x = counter.normalize(torch.rand(1, 3, 48, 64))
    mask = _strip_mask(6, 8, slice(3, 4))[None]
    with torch.no_grad():
        plain, with_cap, stripped = model(x), model(x, mask), strip_cap(model)(x)
    assert torch.equal(plain, stripped)
    assert not torch.equal(plain, with_cap)
    assert set(model.state_dict()) == {f"counter.{k}" for k in counter.state_dict()} | {"cap.gamma"}


# --------------------------------------------------------------------------- checkpoints and pictures


def test_a_header_without_cap_settings_reads_as_the_paper_and_bad_ones_are_refused() -> None:
    assert cap_settings({"cap": True}, "old.safetensors") == ("paper", None)
    assert cap_settings({"cap": True, "cap_affinity": "cosine", "cap_temperature": 0.1}, "m") == ("cosine", 0.1)
    for bad in (
        {"cap_affinity": "dot"},
        {"cap_affinity": "cosine"},
        {"cap_affinity": "cosine", "cap_temperature": -1},
        {"cap_affinity": "temperature", "cap_temperature": "0.1"},
        {"cap_affinity": "paper", "cap_temperature": 0.1},
    ):
        with pytest.raises(CrowdtkError, match="m.safetensors"):
            cap_settings(bad, "m.safetensors")


def _tiny_cap_checkpoint(path, affinity: str, temperature: float | None, net: TrainNet | None = None) -> TrainNet:
    torch.manual_seed(6)
    counter = build_model("lite", pretrained=False, dilated=False, backend_channels=[16])
    net = net or TrainNet(counter, cap=True, cap_affinity=affinity, cap_temperature=temperature)
    config = TrainConfig(model="lite", cap=True, cap_affinity=affinity, cap_temperature=temperature)
    save_checkpoint(path, net, config, "train", cap_affinity=affinity, cap_temperature=config.cap_tau())
    return net


def test_affinity_pictures_use_the_checkpoint_s_form(strip_pool, tmp_path) -> None:
    _, entries = read_labels(strip_pool["labels"])
    entry = entries[3]  # two labeled strips
    net = _tiny_cap_checkpoint(tmp_path / "cosine.safetensors", "cosine", 0.1)
    _tiny_cap_checkpoint(tmp_path / "paper.safetensors", "paper", None, net)  # the same weights, the paper's form
    cosine = image_affinities(tmp_path / "cosine.safetensors", entry, 2, "labels")
    paper = image_affinities(tmp_path / "paper.safetensors", entry, 2, "labels")
    assert (cosine.affinity, cosine.temperature) == ("cosine", 0.1) and (paper.affinity, paper.temperature) == (
        "paper",
        None,
    )
    assert cosine.positions == paper.positions  # chosen on the counter's density, which CAP's form does not touch

    loaded = load_counter(tmp_path / "cosine.safetensors")
    sample = prepare_sample(entry, TrainConfig(model="lite"))
    with torch.inference_mode():
        feat = loaded.counter.forward_features(loaded.counter.to_input(sample.image[None], torch.device("cpu")))[
            0
        ].float()
    mask = torch.from_numpy(sample.mask)
    for found, affinity, tau in ((cosine, "cosine", 0.1), (paper, "paper", None)):
        expected = affinity_maps(feat, mask, found.positions, affinity=affinity, temperature=tau).numpy()
        assert found.maps == pytest.approx(expected, abs=1e-6)
    assert not cosine.maps == pytest.approx(paper.maps, abs=1e-4)


def test_a_state_written_before_the_forms_existed_resumes_as_the_paper(tmp_path) -> None:
    torch.manual_seed(7)
    config = TrainConfig(model="lite", cap=True)
    net = TrainNet(build_model("lite", pretrained=False, dilated=False, backend_channels=[16]), cap=True)
    optimizer = torch.optim.Adam(net.parameters())
    earlier = {k: v for k, v in asdict(config).items() if k not in ("cap_affinity", "cap_temperature")}
    header = checkpoint_header(
        Provenance("train"),
        model="lite",
        model_config=net.counter.config,
        cap=True,
        training=earlier,
        labels_sha256="0" * 64,
        epochs_done=1,
        best_val_mae=1.0,
        val_on="train",
    )
    path = tmp_path / "m.state.safetensors"
    save_state(path, net, optimizer, header, Progress(1, 1.0, [{"epoch": 1, "train_loss": 1.0, "val_mae": 1.0}]))
    assert restore_state(path, config, "0" * 64, net, optimizer).epochs_done == 1
    with pytest.raises(CrowdtkError, match="other labels or settings"):
        restore_state(path, TrainConfig(model="lite", cap=True, cap_affinity="cosine"), "0" * 64, net, optimizer)


# --------------------------------------------------------------------------- the command line


def test_train_with_cosine_cap_records_it_and_strip_cap_predicts_as_the_counter(strip_pool, tmp_path) -> None:
    ckpt, infer = tmp_path / "cap.safetensors", tmp_path / "infer.safetensors"
    result = run(
        "train",
        strip_pool["labels"],
        "--cap",
        "--cap-affinity",
        "cosine",
        "--cap-temperature",
        "0.1",
        "--epochs",
        "1",
        "-o",
        ckpt,
        *FAST_TRAIN,
    )
    assert result.exit_code == 0, result.output
    header, tensors = load_tensors(ckpt)
    assert header["cap"] is True and header["cap_affinity"] == "cosine" and header["cap_temperature"] == 0.1
    assert header["training"]["cap_affinity"] == "cosine" and header["training"]["cap_temperature"] == 0.1
    assert cap_settings(header, str(ckpt)) == ("cosine", 0.1)

    assert run("strip-cap", ckpt, "-o", infer, "-q").exit_code == 0
    stripped_header, stripped = load_tensors(infer)
    assert (
        stripped_header["cap"] is False and not any(k.startswith("cap.") for k in stripped) and "cap.gamma" in tensors
    )
    # The trained network, CAP of the recorded form included, run with CAP off, against the stripped counter.
    full = TrainNet(
        build_model("lite", pretrained=False, **header["model"]["config"]),
        cap=True,
        cap_affinity=header["cap_affinity"],
        cap_temperature=header["cap_temperature"],
    )
    full.load_weights(tensors, str(ckpt))
    full.eval()
    x = torch.rand(2, 3, 48, 80)
    with torch.inference_mode():
        assert torch.equal(full(x), load_counter(infer).counter(x))


def test_train_with_an_extension_and_no_temperature_records_the_default(strip_pool, tmp_path) -> None:
    ckpt = tmp_path / "cap.safetensors"
    result = run(
        "train",
        strip_pool["labels"],
        "--cap",
        "--cap-affinity",
        "temperature",
        "--epochs",
        "1",
        "-o",
        ckpt,
        *FAST_TRAIN,
    )
    assert result.exit_code == 0, result.output
    header = read_header(ckpt)
    assert (header["cap_affinity"], header["cap_temperature"]) == ("temperature", CAP_TEMPERATURES["temperature"])


@pytest.mark.parametrize(
    "options, names",
    [
        (
            ["--cap", "--cap-affinity", "cosine", "--cap-temperature", "0"],
            "--cap-temperature must be finite and positive, got 0.0",
        ),
        (
            ["--cap", "--cap-affinity", "temperature", "--cap-temperature", "nan"],
            "--cap-temperature must be finite and positive, got nan",
        ),
        (
            ["--cap", "--cap-affinity", "cosine", "--cap-temperature", "-0.5"],
            "--cap-temperature must be finite and positive, got -0.5",
        ),
        (["--cap-affinity", "cosine"], "--cap-affinity without --cap"),
        (["--cap-temperature", "0.1"], "--cap-temperature without --cap"),
        (["--cap", "--cap-temperature", "0.1"], "--cap-affinity paper"),
    ],
)
def test_cap_options_that_cannot_run_are_usage_errors(strip_pool, tmp_path, options: list[str], names: str) -> None:
    out = tmp_path / "m.safetensors"
    result = run("train", strip_pool["labels"], *options, "-o", out, *FAST_TRAIN)
    assert_clean_failure(result, names, leftovers=out, code=2)
