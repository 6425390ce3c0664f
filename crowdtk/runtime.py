"""Where and how this process runs, for every stage that runs a network (detectron2's ``comm.py``
is the model): the device, this process's rank in a torchrun job, and CPU settings (glibc's
heap, bfloat16 support). Kept apart from the stages so that none imports another for them."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from crowdtk.errors import CrowdtkError

_RETAINED: bool | None = None
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc mallopt parameters


def retain_freed_memory() -> bool:
    """Keep memory that is freed in this process's heap for reuse (glibc only; a no-op elsewhere).

    glibc serves blocks above 32 MB with fresh ``mmap`` pages and gives them back on ``free``,
    so every large feature map of every forward pass is page-faulted in anew: ~120k faults
    (~0.5 GB) per 768×1024 image for the lite counter, ~30% of its CPU time on this kind of
    machine. With ``mmap`` off for allocations and heap trimming raised to 2 GB, freed
    feature maps are reused by the next image. The process's peak memory does not change;
    its memory is returned to the system when it exits. Returns whether the setting is active.
    """
    global _RETAINED
    if _RETAINED is None:
        _RETAINED = False
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            try:
                mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
                mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                _RETAINED = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
            except (OSError, AttributeError):
                _RETAINED = False
    return _RETAINED


def cpu_bf16_supported() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX512-BF16 or AMX); elsewhere it is emulated and slow."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise CrowdtkError("--device cuda but no CUDA device is available", "use --device cpu or auto")
        return torch.device("cuda", local_rank)
    if name != "cpu":
        raise CrowdtkError(f"unknown --device '{name}'", "use auto, cpu or cuda")
    return torch.device("cpu")


# What a launcher of processes sets for each one (torchrun: all of them). Outside torchrun they are strays.
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
_RELAUNCH = "torchrun sets it for each process: launch with torchrun --nproc-per-node N, or unset it to run one process"


def launched() -> bool:
    """Whether torchrun (or another launcher of torch.distributed's env:// rendezvous) started this process.

    torchrun always sets TORCHELASTIC_RUN_ID. Another launcher (a cluster's job script) must set MASTER_ADDR and
    MASTER_PORT, without which no process group can form, together with a rank or world size; RANK alone in a
    shell (left from another job, or set for another program) is not a launch."""
    env = os.environ
    if "TORCHELASTIC_RUN_ID" in env:
        return True
    return "MASTER_ADDR" in env and "MASTER_PORT" in env and any(name in env for name in ("RANK", "WORLD_SIZE"))


def stray_launch_note() -> str | None:
    """A warning for the command to show when launch variables are set but this process was not launched
    (:func:`launched`): they are ignored, and naming them tells the user what to unset. None when there are none."""
    stray = [name for name in LAUNCH_VARIABLES if name in os.environ]
    if not stray or launched():
        return None
    values = ", ".join(f"{name}={os.environ[name]}" for name in stray)
    return (
        f"ignoring {values} in the environment: this process was not launched by torchrun (no TORCHELASTIC_RUN_ID, nor "
        "MASTER_ADDR and MASTER_PORT), so it runs alone; unset "
        f"{' '.join(stray)} to silence this, or launch with torchrun"
    )


def _whole(name: str, least: int) -> int:
    """The launch variable ``name`` as a whole number of at least ``least``;
    a clear error when it is missing or malformed."""
    value = os.environ.get(name)
    if value is None:
        raise CrowdtkError(f"environment: {name} is not set, but this process was launched by torchrun", _RELAUNCH)
    try:
        number = int(value.strip())
    except ValueError:
        number = None
    if number is None or number < least:
        raise CrowdtkError(f"environment: {name}={value!r} is not a whole number of at least {least}", _RELAUNCH)
    return number


@dataclass(frozen=True)
class Processes:
    """This process's place in a torchrun job (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Processes:
        """This process's place as its launcher describes it: one process (rank 0 of 1) unless it was launched by
        torchrun (:func:`launched`); then RANK and WORLD_SIZE must be set and consistent, or it is an error.

        Outside torchrun these variables are ignored (:func:`stray_launch_note` says so): a RANK left in the shell
        would otherwise make eval report nothing (only rank 0 writes), and a WORLD_SIZE would wait for a rendezvous
        that no launcher set up."""
        if not launched():
            return cls()
        rank, world = _whole("RANK", 0), _whole("WORLD_SIZE", 1)
        local_rank = _whole("LOCAL_RANK", 0) if "LOCAL_RANK" in os.environ else 0  # a job script may leave it out
        if "LOCAL_WORLD_SIZE" in os.environ:
            _whole("LOCAL_WORLD_SIZE", 1)  # start() divides the cores by it
        if rank >= world:
            raise CrowdtkError(
                f"environment: RANK={rank} with WORLD_SIZE={world}: the rank must be below the world size", _RELAUNCH
            )
        return cls(rank, world, local_rank)

    @property
    def writer(self) -> bool:
        return self.rank == 0

    def start(self, device: torch.device) -> None:
        if self.world > 1 and not torch_dist.is_initialized():
            torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            if device.type == "cpu":
                # Share the cores between the processes instead of oversubscribing them.
                torch.set_num_threads(
                    max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", self.world)))
                )

    def sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        torch_dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            torch_dist.barrier()
