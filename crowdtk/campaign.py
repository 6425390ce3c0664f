"""A labeling campaign: the paper's Algorithm 1 as rounds of ordinary crowdtk commands in one folder.

Round 1 is the warm-up round (random strips on ``warmup_frac`` of the images at the budget's per-image
rate), then its counter (``warmup``); every later round selects with the counter of the round before
(``vectors`` over the images no round has labeled, then ``select --strategy mdc --exclude`` every
earlier round's regions), is labeled (a package for the labeling tool, or the oracle's ground truth),
merged with the labels of all rounds before it, and trains the next counter. The last round trains the
final counter (``train``, with CAP by default), holding out ``holdout`` of the labeled images, whose
validation MAE is the counter's error on labeled regions it never trained on.

The budget covers all rounds, as ``select --exclude`` counts it: round k's ``select --budget`` is the
share of the pool labeled by rounds 1..k together. With two rounds (the paper's) the warm-up round spends
``warmup_frac`` of the budget and the MDC round the rest; with more, the rest is spread evenly over the
later rounds. A head budget (``budget_heads``) labels the warm-up round by area (``warmup_budget``, as
the warm-up counter has no vectors to price heads with) and spreads the heads left after it over the
later rounds, each ``select --budget-heads`` its share of what is still left.

With an initial counter (``init``, e.g. one trained on a public data set) there is no warm-up round: the
initial counter's vectors choose round 1's strips (``vectors`` into ``init/``), and the budget is spread evenly
over the rounds. Its counters train from ImageNet weights as usual, or from the initial counter's (``finetune``).

Every step is a :class:`~crowdtk.experiment.Step`: its command line and the file it makes. A step is
done when its file exists, so the state of a campaign is its folder; ``campaign.json`` records the
settings, the plan and, after every step, each round's state as read from the folder.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crowdtk.errors import CrowdtkError
from crowdtk.experiment import Experiment, Schedule, Step
from crowdtk.experiment.plan import exact
from crowdtk.formats import (
    CAMPAIGN,
    Provenance,
    campaign_header,
    read_json,
    read_labels,
    read_manifest,
    read_regions,
    write_json,
)
from crowdtk.selection import STRATEGIES, round_half_up

CAMPAIGN_FILE = "campaign.json"
# Tools whose package folder, once labeled in place, is what `import --from` reads; the others return a file of
# their own (Label Studio's JSON export, CVAT's XML or .zip), which `campaign next DIR --package PATH` names.
IN_PLACE_TOOLS = ("crops", "labelme")

# Round phases, in order; campaign.json and `campaign status` name them.
SELECT, EXPORT, LABELING, IMPORT, TRAIN, STRIP, VECTORS, DONE = (
    "select",
    "export",
    "labeling",
    "import",
    "train",
    "strip-cap",
    "vectors",
    "done",
)


@dataclass(frozen=True)
class Settings:
    """What ``campaign init`` was given (paths absolute, so that ``next`` works from any folder)."""

    pool: str
    tool: str
    rounds: int = 2
    strategy: str = "mdc"
    budget: float | None = 0.1
    budget_heads: float | None = None
    warmup_budget: float = 0.1  # with budget_heads: the warm-up round's area budget (per-image rate)
    oracle: str | None = None
    seed: int = 0
    device: str = "auto"
    cap: bool = True
    holdout: float = 0.1  # share of the labeled images the final counter does not train on (its error on them)
    init: str | None = None  # an initial counter: it chooses round 1's strips, and there is no warm-up round
    finetune: bool = False  # with init: every counter starts from the initial counter's weights
    feature_cache: str | None = None  # the frozen front end's features [default: DIR/feature-cache]
    schedule: Schedule = field(default_factory=Schedule)

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any], source: str) -> Settings:
        try:
            return cls(**{**record, "schedule": Schedule(**record["schedule"])})
        except (KeyError, TypeError) as exc:
            raise CrowdtkError(
                f"{source}: unreadable campaign settings ({exc})", "start again with campaign init"
            ) from None


@dataclass(frozen=True)
class RoundPlan:
    """One round as planned: its strategy and what its ``select`` spends."""

    round: int
    strategy: str
    warmup: bool
    budget: float | None  # select --budget: the share of the pool labeled by this round and all before it
    heads_share: float | None = None  # head budget: this round's share of the heads left (1 / rounds left)

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


def plan_rounds(settings: Settings) -> list[RoundPlan]:
    """The rounds of a campaign: the warm-up round, then ``rounds - 1`` rounds of ``strategy``; with an initial
    counter, ``rounds`` rounds of ``strategy`` reaching the budget in even steps."""
    wf, n = settings.schedule.warmup_frac, settings.rounds
    if settings.init is not None:
        if settings.budget_heads is not None:
            return [RoundPlan(k, settings.strategy, False, None, 1 / (n - k + 1)) for k in range(1, n + 1)]
        assert settings.budget is not None
        return [RoundPlan(k, settings.strategy, False, settings.budget * k / n) for k in range(1, n + 1)]
    if settings.budget_heads is not None:
        first = RoundPlan(1, "random", True, settings.warmup_budget)
        return [first] + [RoundPlan(k, settings.strategy, False, None, 1 / (n - k + 1)) for k in range(2, n + 1)]
    b = settings.budget
    assert b is not None
    first = RoundPlan(1, "random", True, b)
    # The warm-up round spends wf of the budget; later rounds reach it in even steps (the last one exactly b).
    return [first] + [
        RoundPlan(k, settings.strategy, False, b if k == n else b * (wf + (1 - wf) * (k - 1) / (n - 1)))
        for k in range(2, n + 1)
    ]


def validate(settings: Settings) -> int:
    """Every check ``campaign init`` makes before it creates the folder; the pool's image count."""
    s = settings.schedule
    s.validate()
    if settings.init is None and settings.rounds < 2:
        raise CrowdtkError(f"--rounds {settings.rounds}: a campaign has at least 2", "a warm-up round and one more")
    if settings.rounds < 1:
        raise CrowdtkError(f"--rounds {settings.rounds}: a campaign has at least 1", "pass --rounds 1 or more")
    if settings.finetune and settings.init is None:
        raise CrowdtkError("--finetune without --init", "name the counter to start from with --init CKPT")
    if settings.budget is not None and not 0 < settings.budget <= 1:
        raise CrowdtkError(f"--budget {settings.budget}: outside (0, 1]", "give the share of the pool's area, e.g. 0.1")
    if settings.budget_heads is not None and not (math.isfinite(settings.budget_heads) and settings.budget_heads > 0):
        raise CrowdtkError(f"--budget-heads {settings.budget_heads}: not a positive number", "give heads, e.g. 2000")
    if not 0 < settings.warmup_budget <= 1:
        raise CrowdtkError(f"--warmup-budget {settings.warmup_budget}: outside (0, 1]", "pass e.g. 0.1")
    if not 0 <= settings.holdout < 1:
        raise CrowdtkError(f"--holdout {settings.holdout}: outside [0, 1)", "pass e.g. 0.1, or 0 for none")
    if settings.strategy not in STRATEGIES:
        raise CrowdtkError(f"--strategy {settings.strategy}: unknown", f"choose from {', '.join(STRATEGIES)}")
    _, entries = read_manifest(settings.pool)
    if settings.oracle is not None:
        read_manifest(settings.oracle)
    if settings.init is not None:
        _check_initial_counter(settings)
        if len(entries) < settings.rounds:
            raise CrowdtkError(
                f"{settings.pool}: {len(entries)} images cannot make {settings.rounds} rounds",
                "pass a larger pool or fewer --rounds",
            )
        return len(entries)
    warm = round_half_up(s.warmup_frac * len(entries))
    if warm < 1 or len(entries) - warm < settings.rounds - 1:
        raise CrowdtkError(
            f"{settings.pool}: {len(entries)} images cannot make a warm-up round of {s.warmup_frac:g} of them "
            f"and {settings.rounds - 1} more round(s)",
            "pass a larger pool, another --warmup-frac, or fewer --rounds",
        )
    return len(entries)


def _check_initial_counter(settings: Settings) -> None:
    """The initial counter is a crowdtk checkpoint, and of the campaign's model when its counters start from it."""
    from crowdtk.checkpoint import model_of, read_header

    assert settings.init is not None
    model, _ = model_of(read_header(Path(settings.init)), settings.init)
    if settings.finetune and model != settings.schedule.model:
        raise CrowdtkError(
            f"{settings.init}: a {model} counter, and this campaign trains {settings.schedule.model}",
            f"pass --model {model}, or drop --finetune to train from ImageNet weights",
        )


@dataclass
class Campaign:
    """A campaign folder: its settings, plan and the record of each round's state."""

    folder: Path
    settings: Settings
    plan: list[RoundPlan]
    returned: dict[int, str] = field(default_factory=dict)  # per round: what the labeling tool returned (--package)

    # ----------------------------------------------------------------- files

    @property
    def path(self) -> Path:
        return self.folder / CAMPAIGN_FILE

    def round_dir(self, k: int) -> Path:
        return self.folder / f"round-{k}"

    def regions(self, k: int) -> Path:
        return self.round_dir(k) / "regions.jsonl"

    def labels(self, k: int) -> Path:
        """The labels of round k merged with every round before it."""
        return self.round_dir(k) / "labels.jsonl"

    def package(self, k: int) -> Path:
        return self.round_dir(k) / "package"

    def model(self, k: int) -> Path:
        """Round k's counter; round 0's is the initial counter (``init``)."""
        if k == 0:
            assert self.settings.init is not None
            return Path(self.settings.init)
        return self.round_dir(k) / "model.safetensors"

    def infer(self, k: int) -> Path:
        return self.round_dir(k) / "infer.safetensors"

    def vectors(self, k: int) -> Path:
        return (self.folder / "init" if k == 0 else self.round_dir(k)) / "vectors.npz"

    def chooses_with(self, k: int) -> int | None:
        """The round whose counter's vectors round k's select reads (0: the initial counter); None: it reads none."""
        first = 1 if self.settings.init is not None else 2
        return k - 1 if k >= first and self.needs_vectors(k) else None

    @property
    def last(self) -> int:
        return self.plan[-1].round

    def final_model(self) -> Path:
        """The inference checkpoint of the last round (CAP removed when it trained with CAP)."""
        return self.infer(self.last) if self.settings.cap else self.model(self.last)

    def needs_vectors(self, k: int) -> bool:
        """Whether round k's select ranks strips (or prices heads) by the vectors of round k - 1's counter."""
        return STRATEGIES[self.plan[k - 1].strategy].needs_vectors or self.settings.budget_heads is not None

    def returned_path(self, k: int, package: Path | None = None) -> Path | None:
        """What round k's import reads: the path given now, or given before, or the package labeled in place."""
        if package is not None:
            return package
        if k in self.returned:
            return Path(self.returned[k])
        return self.package(k) if self.settings.tool in IN_PLACE_TOOLS else None

    # ----------------------------------------------------------------- record

    def save(self) -> None:
        write_json(
            self.path,
            campaign_header(Provenance("campaign", {}, self.settings.seed)),
            {
                "settings": self.settings.to_record(),
                "plan": [p.to_record() for p in self.plan],
                "rounds": [self.round_state(p.round) for p in self.plan],
            },
        )

    @classmethod
    def load(cls, folder: Path) -> Campaign:
        path = folder / CAMPAIGN_FILE
        if not path.is_file():
            raise CrowdtkError(f"{folder}: no {CAMPAIGN_FILE} here", "start a campaign with crowdtk campaign init")
        record = read_json(path, CAMPAIGN)
        settings = Settings.from_record(record.get("settings") or {}, str(path))
        try:
            plan = [RoundPlan(**p) for p in record["plan"]]
        except (KeyError, TypeError) as exc:
            raise CrowdtkError(f"{path}: unreadable plan ({exc})", "start again with campaign init") from None
        returned = {int(r["round"]): r["returned"] for r in record.get("rounds", []) if r.get("returned")}
        return cls(folder, settings, plan, returned)

    # ----------------------------------------------------------------- state

    def phase(self, k: int) -> str:
        """What round k needs next, read from its files."""
        from crowdtk.checkpoint import training_finished  # imports torch: only once a round has labels

        if not self.regions(k).exists():
            before = self.chooses_with(k)
            return VECTORS if before == 0 and not self.vectors(0).exists() else SELECT
        if not self.labels(k).exists():
            if self.settings.oracle is not None:
                return IMPORT
            return LABELING if self.package(k).exists() else EXPORT
        if not training_finished(self.model(k)):
            return TRAIN
        if k == self.last:
            return STRIP if self.settings.cap and not self.infer(k).exists() else DONE
        return VECTORS if self.needs_vectors(k + 1) and not self.vectors(k).exists() else DONE

    def current(self) -> int | None:
        """The first round not done; None when the campaign is."""
        return next((p.round for p in self.plan if self.phase(p.round) != DONE), None)

    def round_state(self, k: int) -> dict[str, Any]:
        """Round k as read from its files: phase, area and heads spent, its package and counter."""
        phase = self.phase(k)
        state: dict[str, Any] = {"round": k, "strategy": self.plan[k - 1].strategy, "phase": phase}
        if self.regions(k).exists():
            header, entries = read_regions(self.regions(k))
            state.update(
                regions=str(self.regions(k)),
                images=sum(1 for e in entries if e.regions),
                area_fraction=header.get("area_fraction"),
                cumulative_area_fraction=header.get("cumulative_area_fraction"),
                expected_heads=header.get("expected_heads"),
            )
        if self.settings.oracle is None and self.package(k).exists():
            state["package"] = str(self.package(k))
            state["package_state"] = "out" if phase == LABELING else "back"
        if k in self.returned:
            state["returned"] = self.returned[k]
        if self.labels(k).exists():
            state["labels"] = str(self.labels(k))
            state["heads_total"] = labeled_heads(self.labels(k))
            before = labeled_heads(self.labels(k - 1)) if k > 1 and self.labels(k - 1).exists() else 0
            state["heads"] = state["heads_total"] - before
        if phase in (STRIP, DONE) or (phase == VECTORS and self.regions(k).exists()):
            state["model"] = str(self.model(k))
        return state

    # ----------------------------------------------------------------- steps

    def _experiment(self, final: bool) -> Experiment:
        """The bench's option builder over this campaign's schedule (the final counter holds out ``holdout``)."""
        s = self.settings.schedule
        schedule = Schedule(**{**asdict(s), "val_frac": self.settings.holdout if final else 0.0})
        cache = self.settings.feature_cache
        pool = Path(self.settings.pool)
        return Experiment(
            pool, pool, self.folder, schedule, self.settings.device, None if cache is None else Path(cache)
        )

    def _cells(self, strategy: str) -> list[str]:
        """--strip-frac and --scale for selecting cells (as the bench passes them; whole images have none)."""
        if STRATEGIES[strategy].whole_images:
            return []
        e = self._experiment(False)
        return [*e.strip_option(), *e.grid_options()]

    def _excluded(self, upto: int) -> list[str]:
        return [a for j in range(1, upto + 1) for a in ("--exclude", str(self.regions(j)))]

    def step(self, k: int, phase: str, package: Path | None = None) -> Step | None:
        """The command of round k's ``phase``; None for LABELING without a returned path, and for DONE."""
        st, p = self.settings, self.plan[k - 1]
        pool, seed = st.pool, str(st.seed)
        if phase == SELECT:
            if p.warmup:
                spend = ["--budget", exact(p.budget or 0.0), "--warmup-frac", exact(st.schedule.warmup_frac)]
            elif p.heads_share is not None:
                spend = ["--budget-heads", exact(self.heads_left() * p.heads_share)]
            else:
                spend = ["--budget", exact(p.budget or 0.0)]
            before = self.chooses_with(k)
            choose = [] if before is None else ["--vectors", str(self.vectors(before))]
            argv = ["select", pool, *spend, "--strategy", p.strategy, *choose, *self._excluded(k - 1)]
            argv += [*self._cells(p.strategy), "--seed", seed, "-o", str(self.regions(k)), "-q"]
            return Step(tuple(argv), self.regions(k))
        merge = ["--merge", str(self.labels(k - 1))] if k > 1 else []
        if phase == IMPORT:
            assert st.oracle is not None
            argv = ["import", str(self.regions(k)), "--oracle", st.oracle, *merge, "-o", str(self.labels(k)), "-q"]
            return Step(tuple(argv), self.labels(k))
        if phase == EXPORT:
            return Step(
                ("export", str(self.regions(k)), "--to", st.tool, "-o", str(self.package(k)), "-q"), self.package(k)
            )
        if phase == LABELING:
            returned = self.returned_path(k, package)
            if returned is None:
                return None
            argv = ["import", str(self.regions(k)), "--from", st.tool, str(returned), *merge]
            return Step((*argv, "-o", str(self.labels(k)), "-q"), self.labels(k))
        if phase == TRAIN:
            final = k == self.last
            e, labels = self._experiment(final), self.labels(k)
            steps = st.schedule.steps if final else st.schedule.warmup_steps
            command = ["train", str(labels), *(["--cap"] if st.cap else [])] if final else ["warmup", str(labels)]
            options = e.train_options(steps, labels, st.seed)
            if st.finetune:
                options += ["--init", str(self.model(0))]
            return Step((*command, *options, "-o", str(self.model(k))), self.model(k))
        if phase == STRIP:
            return Step(("strip-cap", str(self.model(k)), "-o", str(self.infer(k)), "-q"), self.infer(k))
        if phase == VECTORS:
            # Before round k's select (the initial counter, for round 1), or after round k trained (for round k + 1).
            j = k if self.regions(k).exists() else k - 1
            e = self._experiment(False)
            argv = ["vectors", str(self.model(j)), pool, *self._excluded(j), *e.strip_option(), *e.grid_options()]
            argv += [*e.cache_option(), "--device", st.device, "-o", str(self.vectors(j)), "-q"]
            return Step(tuple(argv), self.vectors(j))
        return None

    def heads_left(self) -> float:
        """Head budget: the heads not yet labeled by the rounds before the current one (at least one)."""
        assert self.settings.budget_heads is not None
        labeled = max(
            (labeled_heads(self.labels(p.round)) for p in self.plan if self.labels(p.round).exists()), default=0
        )
        return max(self.settings.budget_heads - labeled, 1.0)

    # ----------------------------------------------------------------- accounting

    def spent(self) -> dict[str, Any]:
        """Area and heads labeled so far against the budget."""
        area = None
        for p in self.plan:
            if self.regions(p.round).exists():
                area = read_regions(self.regions(p.round))[0].get("cumulative_area_fraction")
        labeled = [p.round for p in self.plan if self.labels(p.round).exists()]
        heads = labeled_heads(self.labels(labeled[-1])) if labeled else 0
        out: dict[str, Any] = {"area_fraction": area or 0.0, "heads": heads}
        if self.settings.budget is not None:
            out["area_left"] = max(self.settings.budget - (area or 0.0), 0.0)
        if self.settings.budget_heads is not None:
            out["heads_left"] = max(self.settings.budget_heads - heads, 0.0)
        return out


def labeled_heads(labels: Path) -> int:
    """The head points in a labels file (the merged file of a round holds every round before it)."""
    return sum(len(e.points) for e in read_labels(labels)[1])


def counter_error(checkpoint: Path) -> dict[str, Any]:
    """The final counter's validation on the labeled images it did not train on, from its header; ``held_out``
    False when training had too few labeled images to hold any out (it then validated on its training images)."""
    from crowdtk.checkpoint import read_header

    header = read_header(checkpoint)
    mae = header.get("best_val_mae")
    held = header.get("val_on") == "held-out"
    return {"held_out": held, "val_mae": float(mae) if held and mae is not None and math.isfinite(mae) else None}
