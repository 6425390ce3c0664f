"""One record per extension point: a strategy, a labeling tool, a counter model and a bench method registered from
outside crowdtk (here, this test; for a user, their own code before `crowdtk.cli.main()`) are offered by the
command line's choices and help, run like the built-in ones, and are benched; a half-made record fails when it
is registered.

`crowdtk.cli.app` is imported (by conftest) before anything here is registered: what the commands show is read
from the registries when each command is built, not when the CLI was imported.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import pool, run, trained, write_manifest
from torch import nn

from crowdtk.errors import CrowdtkError
from crowdtk.experiment import (
    Experiment,
    Method,
    Run,
    Schedule,
    bench_methods,
    default_methods,
    paper_claims,
    parse_list,
    register_method,
)
from crowdtk.experiment.plan import METHODS
from crowdtk.formats import read_labels, read_regions
from crowdtk.labeling import TOOLS, LabelingTool, export_regions, read_to_label, register_tool
from crowdtk.labeling.common import BaseExport, Found, Returned, write_json
from crowdtk.model_records import MODELS, ModelRecord, register_model
from crowdtk.models import Counter, build_model
from crowdtk.models.base import init_output
from crowdtk.models.registry import check_builder
from crowdtk.registry import RegistrationError
from crowdtk.selection import STRATEGIES, Job, SelectConfig, Strategy, register_strategy


def shows(command: str, *phrases: str) -> bool:
    """Whether `crowdtk COMMAND --help` shows every phrase (Click wraps lines, at spaces and after hyphens)."""
    text = "".join(run(command, "--help").output.split())
    return all("".join(p.split()) in text for p in phrases)


# --------------------------------------------------------------------------- the toys


def pick_leftmost(job: Job) -> dict:
    """A strategy: each image's leftmost cells."""
    return {i: (list(range(int(job.share[i]))), None) for i in job.chosen.tolist()}


def pick_fewest(job: Job) -> dict:
    """A strategy that needs vectors: the strips of fewest predicted heads."""
    assert job.vectors is not None
    return {
        i: (sorted(np.argsort(job.vectors.counts[job.rows_of[i]], kind="stable")[: job.share[i]].tolist()), None)
        for i in job.chosen.tolist()
    }


HEADS = "heads.json"


class JsonExport(BaseExport):
    """A tool whose package is one JSON file: per image id, a list (one per region) for the labeler to fill with
    [x, y] points."""

    def add(self, entry, name, record) -> None:
        self.placed.append((entry, name))  # no image files: the labeler works from the regions' coordinates

    def finish(self) -> None:
        write_json(self.out / HEADS, {entry.id: [None] * len(entry.regions) for entry, _ in self.placed})


def read_json_package(path: Path, entries) -> Returned:
    filled = json.loads((path / HEADS).read_text())
    found: Found = {}
    missing = []
    for entry in entries:
        for k, points in enumerate(filled.get(entry.id) or [None] * len(entry.regions)):
            if points is None:
                missing.append(f"{entry.id} region {k}")
            else:
                found.setdefault(entry.id, []).append((k, np.asarray(points, dtype=np.float64).reshape(-1, 2)))
    return Returned(found, missing)


class ToyCounter(Counter):
    """A tiny counter with output stride 8: one strided convolution (the front end a --freeze keeps) and one more."""

    name = "toy-counter"

    def __init__(self, *, pretrained: bool = True, backbone_weights=None, width: int = 8) -> None:
        super().__init__()  # no ImageNet weights: it starts random whatever ``pretrained`` says
        self.config = {"width": width}
        self.frontend = nn.Sequential(nn.Conv2d(3, width, 8, stride=8), nn.ReLU())
        self.backend = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.feature_channels = width
        self.output = nn.Conv2d(width, 1, 1)
        init_output(self.output)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.backend(self.frontend(x))

    def frozen_modules(self, level: str) -> list[nn.Module]:
        return [self.frontend]

    def encode(self, x: torch.Tensor, level: str) -> torch.Tensor:
        self._check_input(x)
        return self.frontend(x)

    def decode(self, h: torch.Tensor, level: str) -> torch.Tensor:
        return self.backend(h)


class UnfrozenToyCounter(ToyCounter):
    name = "toy-unfrozen"


@pytest.fixture
def toy_strategies():
    register_strategy("toy-leftmost", "the leftmost strips")(pick_leftmost)
    register_strategy("toy-fewest", "the fewest predicted heads", needs_vectors=True, shapes=("strip",))(pick_fewest)
    try:
        yield
    finally:
        STRATEGIES.unregister("toy-leftmost")
        STRATEGIES.unregister("toy-fewest")


@pytest.fixture
def toy_tool():
    register_tool(
        LabelingTool(
            "toy-json",
            help="one heads.json for every region",
            reads="the export folder's heads.json",
            unit="region",
            export=JsonExport,
            steps=lambda image_url: "Fill heads.json.",
            read=read_json_package,
        )
    )
    try:
        yield
    finally:
        TOOLS.unregister("toy-json")


@pytest.fixture
def toy_model():
    # The builder named by "module:attr", as the built-in models name theirs: checked when registered.
    register_model(ModelRecord("toy-counter", "a tiny test counter", f"{__name__}:ToyCounter", options=("width",)))
    try:
        yield
    finally:
        MODELS.unregister("toy-counter")


# --------------------------------------------------------------------------- strategies


def test_a_registered_strategy_is_offered_and_runs(toy_strategies, tmp_path: Path) -> None:
    assert shows("select", "|toy-leftmost|toy-fewest>", "toy-leftmost (the leftmost strips)")
    assert shows("select", "needed by max, mdc and toy-fewest")  # --vectors, from the records

    manifest = write_manifest(tmp_path / "m.jsonl", pool(4, width=160, height=96))
    out = tmp_path / "regions.jsonl"
    result = run("select", manifest, "--strategy", "toy-leftmost", "--budget", "0.3", "-o", out)
    assert result.exit_code == 0, result.output
    _, entries = read_regions(out)
    assert len(entries) == 4 and all(e.strategy == "toy-leftmost" for e in entries)
    assert all(e.regions[0].x0 == 0 and e.details[0]["cells"][0] == 0 for e in entries)

    # The input check a strategy's record asks for: toy-fewest ranks by vectors.
    refused = run("select", manifest, "--strategy", "toy-fewest", "-o", tmp_path / "r2.jsonl")
    assert refused.exit_code == 1 and "--strategy toy-fewest needs --vectors" in refused.stderr
    with pytest.raises(CrowdtkError, match="strip vectors describe vertical strips"):
        SelectConfig(strategy="toy-fewest", shape="band").validate()


def test_a_registered_strategy_is_a_bench_method(toy_strategies, tmp_path: Path, monkeypatch) -> None:
    import crowdtk.experiment.plan

    assert {"toy-leftmost", "toy-fewest"} <= set(bench_methods()) and "toy-leftmost" in default_methods()
    assert parse_list("mdc,toy-leftmost", "--methods", tuple(bench_methods())) == ["mdc", "toy-leftmost"]
    assert shows(
        "bench",
        "toy-leftmost (the leftmost strips)",
        "[default: full,none-or-all,random,max,mdc,mdc+cap,toy-leftmost,toy-fewest]",
    )

    monkeypatch.setattr(crowdtk.experiment.plan, "labeled_images", lambda labels: 10)  # the steps are not run
    exp = Experiment(tmp_path / "train.jsonl", tmp_path / "test.jsonl", tmp_path, Schedule())
    steps = [s.argv for s in exp.chain(Run("toy-leftmost", 0.1, "strip", 0))]
    assert [s[0] for s in steps] == ["select", "import", "train", "eval"]  # no warm-up round, no CAP
    assert steps[0][steps[0].index("--strategy") + 1] == "toy-leftmost"
    ranked = [s.argv for s in exp.chain(Run("toy-fewest", 0.1, "strip", 0))]
    assert [s[0] for s in ranked[:5]] == [
        "select",
        "import",
        "warmup",
        "vectors",
        "select",
    ]  # it needs vectors: a warm-up round
    assert "--vectors" in ranked[4] and ranked[4][ranked[4].index("--strategy") + 1] == "toy-fewest"


def test_a_registered_method_trains_on_a_strategy_s_regions_and_states_its_claim(
    toy_strategies, tmp_path: Path, monkeypatch
) -> None:
    import crowdtk.experiment.plan

    register_method(
        Method(
            "toy-leftmost+cap",
            "the leftmost strips with CAP",
            "toy-leftmost",
            cap=(),
            regions_of="toy-leftmost",
            default=False,
            beats=(("toy-leftmost", "CAP improves the leftmost strips"),),
        )
    )
    try:
        assert "toy-leftmost+cap" in bench_methods() and "toy-leftmost+cap" not in default_methods()
        assert ("toy-leftmost+cap", "toy-leftmost", "CAP improves the leftmost strips") in paper_claims()
        monkeypatch.setattr(crowdtk.experiment.plan, "labeled_images", lambda labels: 10)
        exp = Experiment(tmp_path / "train.jsonl", tmp_path / "test.jsonl", tmp_path, Schedule())
        run_ = Run("toy-leftmost+cap", 0.1, "strip", 0)
        steps = [s.argv for s in exp.chain(run_)]
        assert exp.selection_dir(run_) == exp.selection_dir(Run("toy-leftmost", 0.1, "strip", 0))
        assert "--cap" in steps[2] and steps[3][0] == "strip-cap" and exp.model_of(run_).name == "infer.safetensors"
    finally:
        METHODS.unregister("toy-leftmost+cap")


# --------------------------------------------------------------------------- labeling tools


def test_a_registered_tool_is_offered_and_round_trips(toy_tool, labeled) -> None:
    assert shows("export", "|toy-json>", "toy-json (one heads.json for every region)")
    assert shows("import", "|toy-json>", "toy-json: the export folder's heads.json")

    package = labeled["tmp"] / "package"
    result = run("export", labeled["regions"], "--to", "toy-json", "-o", package)
    assert result.exit_code == 0, result.output
    assert json.loads((package / "index.json").read_text())["tool"] == "toy-json"
    # The labeler: every head of the oracle inside each region.
    _, oracle = read_labels(labeled["oracle"])
    filled = {e.id: [e.points[r.contains(e.points)].tolist() for r in e.regions] for e in oracle}
    (package / HEADS).write_text(json.dumps(filled))
    out = labeled["tmp"] / "labels.jsonl"
    result = run("import", labeled["regions"], "--from", "toy-json", package, "-o", out)
    assert result.exit_code == 0, result.output
    _, labels = read_labels(out)
    assert {e.id: sorted(map(tuple, e.points.tolist())) for e in labels} == {
        e.id: sorted(map(tuple, e.points.tolist())) for e in oracle
    }


def test_a_tool_without_suggestions_refuses_prelabels(toy_tool, labeled) -> None:
    entries = read_to_label(str(labeled["regions"])).entries
    with pytest.raises(CrowdtkError, match="toy-json takes no suggestions"):
        export_regions(entries, labeled["tmp"] / "p", "toy-json", {}, prelabels=object())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- models


def test_every_model_record_resolves_to_its_counter() -> None:
    for name, record in MODELS.items():
        check_builder(record)
        assert record.resolve().name == name


def test_a_registered_model_is_offered_trains_and_loads(toy_model, strip_pool, tmp_path: Path) -> None:
    for command in ("train", "warmup", "bench", "demo"):
        assert shows(command, "|toy-counter>", "toy-counter (a tiny test counter)"), command
    assert build_model("toy-counter", width=4).config == {"width": 4}
    with pytest.raises(CrowdtkError, match="has no option"):
        build_model("toy-counter", dilated=True)

    ckpt = tmp_path / "toy.safetensors"
    header = trained(
        strip_pool["labels"], ckpt, "--model", "toy-counter", "--epochs", "1", "--crop", "32", "--batch-size", "2", "-q"
    )
    assert header["model"]["name"] == "toy-counter"
    scores = run("eval", ckpt, strip_pool["manifest"], "--json", "-q")  # rebuilt by name where a checkpoint is read
    assert scores.exit_code == 0, scores.output
    assert np.isfinite(json.loads(scores.stdout)["mae"])


def test_a_model_without_a_frozen_front_end_refuses_freeze(strip_pool, tmp_path: Path) -> None:
    register_model(ModelRecord("toy-unfrozen", "no front end to freeze", UnfrozenToyCounter, frozen_encoder=False))
    try:
        result = run(
            "train",
            strip_pool["labels"],
            "--model",
            "toy-unfrozen",
            "--freeze",
            "encoder",
            "-o",
            tmp_path / "m.safetensors",
        )
        assert result.exit_code == 1 and "--freeze encoder with --model toy-unfrozen" in result.stderr
    finally:
        MODELS.unregister("toy-unfrozen")


# --------------------------------------------------------------------------- half-made records fail when registered


def test_a_name_registered_twice_is_refused(toy_strategies, toy_tool, toy_model) -> None:
    with pytest.raises(RegistrationError, match="registered twice"):
        register_strategy("random", "random strips again")(pick_leftmost)
    with pytest.raises(RegistrationError, match="registered twice"):
        register_tool(TOOLS["toy-json"])
    with pytest.raises(RegistrationError, match="registered twice"):
        register_model(ModelRecord("lite", "another lite", ToyCounter))
    with pytest.raises(RegistrationError, match="registered twice"):
        register_method(Method("mdc+cap", "again", "mdc"))
    assert (
        list(STRATEGIES)[:4] == ["random", "none-or-all", "max", "mdc"]
        and STRATEGIES["random"].pick.__name__ == "pick_random"
    )


def test_a_record_missing_a_part_is_refused() -> None:
    with pytest.raises(RegistrationError, match="has no picker"):
        STRATEGIES.register(Strategy("toy-no-picker", "nothing picks", None))  # type: ignore[arg-type]
    with pytest.raises(RegistrationError, match="vectors, which describe strips"):
        register_strategy("toy-bands", "ranked bands", needs_vectors=True, shapes=("band",))(pick_fewest)
    # read=None is the missing part under test, hence the type: ignore.
    with pytest.raises(RegistrationError, match="reader"):
        register_tool(
            LabelingTool("toy-no-reader", help="h", reads="r", unit="image", export=JsonExport, steps=str, read=None)  # type: ignore[arg-type]
        )
    with pytest.raises(RegistrationError, match="no builder"):
        register_model(ModelRecord("toy-no-builder", "nothing builds it", None))
    with pytest.raises(RegistrationError, match="does not resolve"):
        register_model(ModelRecord("toy-misspelt", "a typo", "crowdtk.models.csrnet:CSRNett"))
    with pytest.raises(RegistrationError, match="has name 'csrnet'"):
        register_model(ModelRecord("toy-renamed", "another name", "crowdtk.models.csrnet:CSRNet"))
    with pytest.raises(RegistrationError, match="no strategy 'toy-absent'"):
        register_method(Method("toy-method", "of no strategy", "toy-absent"))
    with pytest.raises(RegistrationError, match="one-line help"):
        register_strategy("toy-no-help", "")(pick_leftmost)
    with pytest.raises(RegistrationError, match="name"):
        register_strategy("Toy Strategy", "spaces")(pick_leftmost)
    names = {*STRATEGIES, *TOOLS, *MODELS, *METHODS}
    assert not {n for n in names if n.startswith("toy")}  # nothing half-made was kept
