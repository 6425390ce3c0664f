"""CPU settings of a training run, chosen for this machine and batch shape.

glibc would otherwise page-fault every large activation in afresh at each step
(runtime.retain_freed_memory). Whether the phase split of the dilated depthwise convolutions
(``models.phase_split_conv``) pays depends on the CPU's oneDNN kernels, so it is timed on the
run's batch shape; benchmarks/training.py compares the chosen settings with none.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from crowdtk.files import atomic_path
from crowdtk.models import SameConv2d
from crowdtk.runtime import retain_freed_memory
from crowdtk.train.steps import freeze_batchnorm


def speed_up_cpu_training(
    net: nn.Module, example: tuple[torch.Tensor, torch.Tensor], phase_split: bool | None = None
) -> bool:
    """CPU settings for training ``net`` on batches shaped like ``example`` (input, labeled mask); returns
    whether the dilated depthwise convolutions use ``models.phase_split_conv`` in training.

    ``phase_split=None`` takes this machine's choice for this network and batch shape, timing both ways
    the first time (the gain differs from CPU to CPU, and may be a loss) and remembering the result, so
    that every later run of the command computes alike even when the machine is busy; a resumed run
    passes its first choice, so it repeats the same arithmetic."""
    retain_freed_memory()
    convs = [m for m in net.modules() if isinstance(m, SameConv2d) and m._phased and m.weight.requires_grad]
    if not convs:
        return False
    if phase_split is None:
        phase_split = _remembered_choice(convs, example, lambda: _phase_split_is_faster(net, convs, example))
    for m in convs:
        m.phase_split_backward = phase_split
    return phase_split


PHASE_SPLIT_MARGIN = 1.2
CHOICES_FILE = "cpu-phase-split.json"


def choices_path() -> Path:
    """Where this machine's choices are kept: $CROWDTK_CACHE_DIR, else the user's cache folder."""
    root = os.environ.get("CROWDTK_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "crowdtk"
    )
    return Path(root) / CHOICES_FILE


def _machine() -> str:
    """The CPU, as far as its speed on these kernels goes: its model name, oneDNN's ISA, torch, the threads."""
    model = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
    except OSError:
        pass
    return (
        f"{model}|{torch.backends.cpu.get_cpu_capability()}|torch {torch.__version__}|{torch.get_num_threads()} threads"
    )


def _remembered_choice(
    convs: list[SameConv2d], example: tuple[torch.Tensor, torch.Tensor], measure: Callable[[], bool]
) -> bool:
    """The choice recorded for this machine, network and batch shape, else ``measure()``, recorded.
    A cache that cannot be read or written only costs the timing again."""
    shapes = [(m.in_channels, m.out_channels, m.kernel_size, m.dilation, m.groups) for m in convs]
    key = hashlib.sha256(
        json.dumps([_machine(), list(example[0].shape), list(example[1].shape), shapes], default=str).encode()
    ).hexdigest()
    path = choices_path()
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if isinstance(known.get(key), bool):
        return known[key]
    choice = measure()
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({**known, key: choice}, indent=1), encoding="utf-8")
    except OSError:
        pass
    return choice


def example_batch(x_shape: tuple[int, ...], cells: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A zero input of ``x_shape`` and a mask of ``cells`` with one labeled strip (so that CAP, if
    any, has work as in training), for timing a training step."""
    x = torch.zeros(*x_shape).contiguous(memory_format=torch.channels_last)
    mask = torch.zeros(x_shape[0], *cells, dtype=torch.bool)
    mask[..., : max(1, cells[1] // 10)] = True
    return x, mask


def _phase_split_is_faster(net: nn.Module, convs: list[SameConv2d], example: tuple[torch.Tensor, torch.Tensor]) -> bool:
    """Best of two forward + backward passes each way, alternating, on a zero batch (about 6 training
    steps; gradients are cleared and no random state is used)."""
    x, mask = example
    net.train()
    freeze_batchnorm(net)
    best = {False: math.inf, True: math.inf}
    for split in (
        False,
        True,
        False,
        True,
        True,
        False,
    ):  # each way's first pass is slow (warm-up); the minimum ignores it
        for m in convs:
            m.phase_split_backward = split
        start = time.perf_counter()
        net(x, mask).sum().backward()
        best[split] = min(best[split], time.perf_counter() - start)
    net.zero_grad(set_to_none=True)
    # Only a clear gain switches it on: near a tie, timing noise would make runs of the same
    # command pick differently, and so differ in their float arithmetic.
    return best[True] * PHASE_SPLIT_MARGIN < best[False]
