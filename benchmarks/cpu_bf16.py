"""Training step of the frozen tier (back end + CAP on 4 cached Part B maps at half size), float32
against bfloat16 autocast, alternating, in one run:

    .venv/bin/python benchmarks/cpu_bf16.py

Prints milliseconds per step each way and their ratio (train --cpu-bf16 is worth it where the
ratio is well above 1; it needs AVX512-BF16 or AMX).
"""

from __future__ import annotations

import torch

from benchmarks.harness import timed
from crowdtk.cap import TrainNet
from crowdtk.models import build_model
from crowdtk.runtime import cpu_bf16_supported
from crowdtk.train import density_loss


def main(steps: int = 10) -> None:
    torch.manual_seed(0)
    net = TrainNet(build_model("lite", pretrained=False), cap=True, freeze="encoder").to(
        memory_format=torch.channels_last
    )
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], 1e-3)
    x = torch.randn(4, 112, 48, 64).contiguous(memory_format=torch.channels_last)  # 4 maps of 384×512 images
    target = torch.rand(4, 48, 64)
    mask = torch.zeros(4, 48, 64, dtype=torch.bool)
    mask[..., :6] = True  # one strip of 10%

    def train_steps(n: int) -> None:
        for _ in range(n):
            loss = density_loss()(net(x, mask), target, mask.float(), 1.0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    best: dict[bool, float] = {}  # ms per step, the best of two runs, by bfloat16 on
    for bf16 in (False, True, False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            train_steps(3)  # warm-up, not timed
            seconds, _ = timed(train_steps, steps)
        ms = seconds / steps * 1000
        best[bf16] = min(best.get(bf16, ms), ms)
    print(f"bf16 natively supported: {cpu_bf16_supported()}")
    print(f"float32 {best[False]:.1f} ms/step, bfloat16 {best[True]:.1f} ms/step: {best[False] / best[True]:.2f}x")


if __name__ == "__main__":
    main()
