"""Command line (from the repository root): .venv/bin/python -m benchmarks.floor [--quick] [--json OUT]

The ``floor`` stage of crowdtk's performance table (python -m benchmarks): the machine's float32
matmul rate and each model's forward FLOPs, whose quotient the inference and training stages
divide their times by.

float32 matmul rate (2048³ torch.matmul, best of 5) and each model's forward FLOPs, counted
from its layers (hooks on Conv2d/Linear, 2·MACs, on the meta device, so nothing is computed);
floor = FLOPs / rate.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from benchmarks.harness import Race, Report, Row, Sizes, parser, run, timed


def count_flops(name: str, options: dict[str, Any] | None, shape: tuple[int, ...]) -> int:
    """Forward FLOPs (2·MACs of every Conv2d and Linear), from the layers' output shapes on the meta device."""
    import torch

    from crowdtk.models import build_model

    with torch.device("meta"):
        model = build_model(name, pretrained=False, **(options or {})).eval()
    total = [0]

    def hook(module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        if isinstance(module, torch.nn.Conv2d):
            kh, kw = module.kernel_size
            total[0] += 2 * output.numel() * kh * kw * (module.in_channels // module.groups)
        elif isinstance(module, torch.nn.Linear):
            total[0] += 2 * output.numel() * module.in_features

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    with torch.no_grad():
        model(torch.empty(shape, device="meta"))
    for h in handles:
        h.remove()
    return total[0]


def matmul_rate(n: int, repeats: int) -> float:
    """Best float32 torch.matmul rate in GFLOP/s (n×n by n×n)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = min(timed(torch.matmul, a, b)[0] for _ in range(repeats))
    return 2 * n**3 / best / 1e9


class Matmul:
    """One n×n by n×n float32 torch.matmul per run(): the floor's rate, measured alongside the other sides."""

    def __init__(self, n: int) -> None:
        import torch

        self.a, self.b, self.torch = torch.randn(n, n), torch.randn(n, n), torch

    def run(self) -> None:
        self.torch.matmul(self.a, self.b)


def stage_floor(report: Report, sizes: Sizes, root: Path) -> None:
    rate = matmul_rate(sizes.matmul, sizes.matmul_repeats)
    report.facts["gflops"] = rate
    shape = (1, 3, sizes.height, sizes.width)
    report.rows.append(
        Row(
            "floor",
            f"torch.matmul {sizes.matmul}³ fp32, best of {sizes.matmul_repeats}",
            None,
            None,
            None,
            what=f"{rate:.1f} GFLOP/s",
        )
    )
    for name, options, label in (
        ("csrnet", {}, "csrnet"),
        ("lite", {}, "lite"),
        ("lite", {"dilated": False}, "lite dilated=False"),
    ):
        flops = count_flops(name, options, shape)
        report.facts[f"flops:{label}"] = flops
        report.rows.append(
            Row(
                "floor",
                f"{label} forward FLOPs at {sizes.height}×{sizes.width}",
                None,
                flops / rate / 1e9,
                None,
                what=f"floor; {flops / 1e9:.1f} GFLOP",
            )
        )
    csr = report.facts["flops:csrnet"] * (768 * 1024) / (sizes.height * sizes.width)
    report.check(
        "csrnet FLOPs at 768×1024 ≈ 650 GFLOP (layer count check)",
        f"{csr / 1e9:.1f} GFLOP",
        abs(csr / 650e9 - 1) < 0.02,
    )


def floor_seconds(
    report: Report, label: str, height: int, width: int, sizes: Sizes, gflops: float | None = None
) -> float:
    """FLOPs / rate; ``gflops`` is a rate measured alongside (else the floor stage's)."""
    flops = report.facts[f"flops:{label}"] * (height * width) / (sizes.height * sizes.width)
    return flops / (gflops or report.facts["gflops"]) / 1e9


def alongside_rate(report: Report, result: Race, sizes: Sizes, stage: str) -> float:
    """The best matmul rate of a race's "matmul" side (the floor at the time of the stage), or the floor stage's
    when that is higher (a loaded machine lowers both sides alike)."""
    rate = 2 * sizes.matmul**3 / result.best("matmul") / 1e9
    report.facts[f"gflops:{stage}"] = rate
    report.notes.append(
        f"{stage}: matmul rate measured alongside {rate:.1f} GFLOP/s (floor stage: {report.facts['gflops']:.1f}); "
        "floor multiples use the larger"
    )
    return max(rate, report.facts["gflops"])


def main(argv: list[str] | None = None) -> int:
    return run({"floor": stage_floor}, parser(__doc__).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
