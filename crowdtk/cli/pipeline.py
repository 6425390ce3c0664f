"""Runs chains of crowdtk commands in this process for `bench` and `demo`.

Each step is printed as the shell command a user would type; a step whose output exists
is reused, and an interrupted training run is continued with ``--resume``. The time each
step took is kept in ``DIR/timings.json`` so that reused steps still count in the table.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from crowdtk.cli.common import Log
from crowdtk.errors import CrowdtkError
from crowdtk.experiment import Experiment, Run, Step, aggregate, run_result
from crowdtk.files import atomic_path


class Runner:
    def __init__(self, out: Path, log: Log) -> None:
        self.log = log
        self.timings_path = out / "timings.json"
        self.timings: dict[str, float] = {}
        if self.timings_path.exists():
            try:
                self.timings = json.loads(self.timings_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                self.timings = {}  # only a cache of durations; losing it loses no results

    def execute(self, step: Step) -> None:
        from crowdtk.checkpoint import state_path, training_finished
        from crowdtk.cli import app

        training = step.argv[0] in ("train", "warmup")
        if training_finished(step.output) if training else step.output.exists():
            self.log.debug(f"= {step.shell()}   (finished earlier, reused)")
            return
        argv = list(step.argv)
        if training and state_path(step.output).exists():
            argv.append("--resume")  # an interrupted run continues from its last finished epoch
        self.log.info(f"+ {Step(tuple(argv), step.output, step.stdout).shell()}")
        start = time.perf_counter()
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured) if step.stdout else contextlib.nullcontext():
            try:
                code = app(args=argv, prog_name="crowdtk", standalone_mode=False)
            except Exception as exc:  # a usage error of the generated command line
                raise CrowdtkError(
                    f"step failed: {step.shell()} ({exc})", "report it: the generated command is wrong"
                ) from None
        if code:
            raise CrowdtkError(
                f"step failed: {step.shell()}", "see the error above; fix it and rerun, finished steps are reused"
            )
        if step.stdout:
            with atomic_path(step.output) as tmp:
                tmp.write_text(captured.getvalue(), encoding="utf-8")
        self.timings[str(step.output)] = time.perf_counter() - start
        with atomic_path(self.timings_path) as tmp:
            tmp.write_text(json.dumps(self.timings, indent=1), encoding="utf-8")

    def run_all(self, experiment: Experiment, runs: Iterable[Run]) -> list[dict[str, Any]]:
        """Run every run's chain (reusing finished steps) and aggregate over seeds."""
        rows: dict[tuple[str, float, str], list[dict[str, Any]]] = {}
        for run in runs:
            steps = []
            for step in experiment.chain(run):
                self.execute(step)
                steps.append(step)
            result = run_result(experiment, run, self.timings, steps)
            rows.setdefault((run.method, run.budget, run.shape), []).append(result)
            self.log.info(
                f"{run.name} at {100 * run.budget:g}%, seed {run.seed}: MAE {result['mae']:.2f}, RMSE "
                f"{result['rmse']:.2f}, {result['heads_labeled']} heads "
                f"in {100 * result['area_fraction']:.2f}% of the area"
            )
        return aggregate(rows)
