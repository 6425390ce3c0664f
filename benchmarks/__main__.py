"""Command line (from the repository root): .venv/bin/python -m benchmarks [--quick] [--only STAGE,...] [--json OUT]

crowdtk's performance table: every stage against a plain reference and against the
machine's hardware floor, measured as ratios in ONE run so that machine noise hits both sides.

Stages (``--only`` takes a comma-separated subset), each in its own module, which runs it alone
(.venv/bin/python -m benchmarks.MODULE [--quick] [--json OUT]) and describes it:

``floor``        floor.py: float32 matmul rate and each model's forward FLOPs; floor = FLOPs / rate.
``inference``    inference.py: CSRNet and lite, plain vs crowdtk's Predictor; tiled vs whole big image.
``onnx``         inference.py: per image, count --backend onnxruntime (export-model's graph) vs the torch path.
``training``     training.py: a plain CSRNet-style training loop vs crowdtk's step.
``select``       selection.py: ``select --strategy mdc`` vs one scikit-learn GaussianMixture per image.
``gen-density``  density.py: benchmarks/gen_density.py's kernels vs the textbook per-head filter.
``scaling``      scaling.py: index, gen-density, vectors, select at N and 2N images; torchrun 2 vs 1.

inference and training run floor first (their floor multiples need it). How it measures, and
what the columns mean: benchmarks/harness.py. ``--quick`` shrinks every size (seconds; for smoke
runs only: its numbers mean nothing).
"""

from __future__ import annotations

import sys

from benchmarks.density import stage_gen_density
from benchmarks.floor import stage_floor
from benchmarks.harness import Stage, parser, run
from benchmarks.inference import stage_inference, stage_onnx
from benchmarks.scaling import stage_scaling
from benchmarks.selection import stage_select
from benchmarks.training import stage_training

RUNNERS: dict[str, Stage] = {
    "floor": stage_floor,
    "inference": stage_inference,
    "onnx": stage_onnx,
    "training": stage_training,
    "select": stage_select,
    "gen-density": stage_gen_density,
    "scaling": stage_scaling,
}
STAGES = tuple(RUNNERS)


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, only=STAGES)
    args = p.parse_args(argv)
    stages = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        p.error(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    if ("inference" in stages or "training" in stages) and "floor" not in stages:
        stages.insert(0, "floor")  # their floor multiples need it
    return run({s: RUNNERS[s] for s in STAGES if s in stages}, args)


if __name__ == "__main__":
    sys.exit(main())
