"""Command line (from the repository root): .venv/bin/python -m benchmarks.compile

Benchmark: does ``torch.compile`` (``train --compile``) speed up a CPU training step?

Trains the lite counter with CAP on random crops (8 of 128 px, a labeled strip of two cells
per crop) for eight steps, eager and then compiled, each in its own process so that the
compiled graph cannot help the eager side; prints the first step's time (compiling
included) and the best of the last six.
"""

from __future__ import annotations

import subprocess
import sys

from benchmarks.harness import timed


def measure(compiled: bool, batch: int = 8, crop: int = 128, steps: int = 8) -> tuple[float, float]:
    import torch

    from crowdtk.cap import TrainNet
    from crowdtk.models import build_model
    from crowdtk.train import density_loss, freeze_batchnorm

    torch.manual_seed(0)
    net = TrainNet(build_model("lite", pretrained=False), cap=True).to(memory_format=torch.channels_last)
    net.train()
    freeze_batchnorm(net)
    model = torch.compile(net) if compiled else net
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-7)
    x = torch.randn(batch, 3, crop, crop).contiguous(memory_format=torch.channels_last)
    mask = torch.zeros(batch, crop // 8, crop // 8, dtype=torch.bool)
    mask[:, :, :2] = True
    target = torch.rand(batch, crop // 8, crop // 8)

    def step() -> None:
        loss = density_loss()(model(x, mask), target, mask.float(), 1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    times = [timed(step)[0] for _ in range(steps)]
    return times[0], min(times[2:])


def main() -> int:
    if len(sys.argv) == 2:
        first, best = measure(sys.argv[1] == "compiled")
        print(f"{first} {best}")
        return 0
    print("side      first step s  best later step s")
    results = {}
    for side in ("eager", "compiled"):
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.compile", side], capture_output=True, text=True, check=True
        ).stdout.split()
        results[side] = float(out[-1])
        print(f"{side:<9} {float(out[-2]):>12.1f} {float(out[-1]):>18.3f}")
    print(f"compiled / eager step time: {results['compiled'] / results['eager']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
