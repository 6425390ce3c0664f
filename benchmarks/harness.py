"""The timing harness of the benchmarks in this folder.

``python -m benchmarks`` (__main__.py) and its stage modules (floor, inference, training, selection,
density, scaling) share everything here: the sizes (full or ``--quick``), peak memory, worker
processes raced in alternation, the report (table, PASS/FAIL checks, notes, JSON), the
command line and the machine description, and the fixtures several stages use. The other
scripts take the timing helpers (``timed``, ``alternating``, ``run_child``) from here too.

How it measures: the two sides of a comparison live in two worker processes that run
alternately (A B B A A B …), best of the repeats (noise from other processes only adds
time). Each worker keeps its own memory settings, and its peak resident memory (VmHWM,
reset after warm-up) is the ``peak memory`` column (the crowdtk side's). Real images are
ShanghaiTech Part B (``--root``). ``ratio`` is reference time / crowdtk time (a speedup),
except in the scaling rows, where it is time(2N) / time(N). ``floor multiple`` is crowdtk's
time / the FLOP floor. Targets are listed under the table as PASS/FAIL; the exit status is 0
whatever they say. ``--quick`` shrinks every size (seconds; for smoke runs only: its numbers
mean nothing).

Nothing here imports torch, cv2 or crowdtk at module level: every worker process imports its
parent's main module again, and the peak memory column counts what those imports hold.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import resource
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[1]
PART_B = REPO.parent / "shared" / "data" / "ShanghaiTech" / "part_B"
DEFAULT_ROOT = PART_B / "train_data"
PY = sys.executable
CROWDTK = [PY, "-m", "crowdtk"]

T = TypeVar("T")


def prog() -> str:
    """The running benchmark as its messages name it (python -m benchmarks, python -m benchmarks.inference, …)."""
    module = Path(sys.argv[0]).stem
    return "python -m benchmarks" + ("" if module == "__main__" else f".{module}")


# --------------------------------------------------------------------------- sizes


def _size(full: Any, quick: Any = None) -> Any:
    """A field of :class:`Sizes`: its ``full`` value, and its ``--quick`` one (``full`` again where None)."""
    return field(default=full, metadata={"quick": full if quick is None else quick})


@dataclass(frozen=True)
class Sizes:
    """What the benchmarks run on: each field's full value, then its ``--quick`` value (where it has one)."""

    height: int = _size(768, 192)  # inference input (Part B's size)
    width: int = _size(1024, 256)
    matmul: int = _size(2048, 512)
    matmul_repeats: int = _size(5, 3)
    infer_rounds: int = _size(2, 1)  # alternating repeats per side
    lite_images: int = _size(4, 2)  # real images end to end (one lite batch)
    big: tuple[int, int] = _size((3000, 4000), (750, 1000))  # tiling memory image (h, w)
    max_side: int = _size(2048, 512)
    train_models: tuple[str, ...] = _size(("csrnet", "lite"), ("lite",))
    crop: int = _size(256, 64)
    train_steps: int = _size(5, 2)  # timed steps per side (after one warm-up step)
    select_images: int = _size(100_000, 2000)
    select_sample: int = _size(500, 50)
    select_budget: float = _size(0.4)
    gd_images: int = _size(2, 1)  # textbook comparison (per kernel)
    gd_worker_images: int = _size(100, 8)
    scale_n: int = _size(50, 4)  # index / gen-density
    scale_vec_n: int = _size(4, 2)  # vectors (lite forward per image)
    scale_select_n: int = _size(10_000, 1000)
    synth_train: int = _size(12, 6)
    synth_size: tuple[int, int] = _size((256, 384), (96, 128))
    torchrun_crop: int = _size(128, 32)
    torchrun_epochs: int = _size(3, 2)


QUICK = Sizes(**{f.name: f.metadata["quick"] for f in fields(Sizes)})


# --------------------------------------------------------------------------- timing


def timed(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[float, T]:
    """(wall seconds, result) of one call ``fn(*args, **kwargs)``."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def alternating(items: Sequence[T], round_: int) -> list[T]:
    """``items`` in order on even rounds and reversed on odd ones (A B, B A, A B …): no side always
    runs first, so machine noise and warm caches hit the sides alike."""
    return list(items) if round_ % 2 == 0 else list(items)[::-1]


# --------------------------------------------------------------------------- memory


def maxrss_mb(ru_maxrss: int) -> float:
    """A ``ru_maxrss`` (getrusage, wait4) in MB: the kernel gives KiB on Linux, bytes on macOS."""
    return ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)


def reset_peak() -> None:
    """Make VmHWM (peak resident memory) start again from the current RSS (Linux)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_mb() -> float:
    """VmHWM in MB (Linux), else ru_maxrss (never reset)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return maxrss_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


@dataclass
class ChildRun:
    returncode: int
    stdout: str  # "" when not captured
    stderr: str
    peak_mb: float  # the child's own peak RSS (wait4's ru_maxrss, as /usr/bin/time -v reports it)
    seconds: float  # wall time, start to exit


def run_child(args: list[str], stdout: int = subprocess.PIPE, timeout: float | None = None) -> ChildRun:
    """Run ``args`` in a fresh process and measure its peak RSS. The child is reaped with os.wait4 (the only
    way to get that one process's rusage), so its pipes are read after it exits: for children that print
    little. Past ``timeout`` seconds it is killed and TimeoutError raised."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=stdout, stderr=subprocess.PIPE)
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if timeout is not None and time.perf_counter() - start > timeout:
            proc.kill()
            raise TimeoutError(f"{' '.join(args)} ran past {timeout} s")
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    return ChildRun(proc.returncode, out, err, maxrss_mb(usage.ru_maxrss), seconds)


# --------------------------------------------------------------------------- worker processes


def _serve(conn: Any, factory: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    try:
        obj = factory(**kwargs)
        conn.send(("ready", None))
    except BaseException:  # noqa: BLE001 - report anything to the parent
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        cmd = conn.recv()
        try:
            if cmd == "run":
                conn.send(("ok", timed(obj.run)))
            elif cmd == "reset_peak":
                reset_peak()
                conn.send(("ok", None))
            elif cmd == "peak":
                conn.send(("ok", peak_mb()))
            elif cmd == "close":
                conn.send(("ok", None))
                return
        except BaseException:  # noqa: BLE001
            conn.send(("error", traceback.format_exc()))


class Remote:
    """One side of a comparison in its own process: ``factory(**kwargs)`` (a class with a ``run()``
    method, defined at module level so that the spawned process can import it) set up once, then
    ``run()`` on demand."""

    def __init__(self, factory: Callable[..., Any], **kwargs: Any) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, factory, kwargs), daemon=True)
        self.proc.start()
        self.kind = factory.__name__
        self._reply()

    def _reply(self) -> Any:
        status, value = self.conn.recv()
        if status == "error":
            raise RuntimeError(f"worker {self.kind} failed:\n{value}")
        return value

    def ask(self, cmd: str) -> Any:
        self.conn.send(cmd)
        return self._reply()

    def run(self) -> tuple[float, Any]:
        return self.ask("run")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ask("close")
        self.proc.join(timeout=30)


@dataclass
class Race:
    """Alternating timed runs of several sides; best time per side, last outputs, peak memory."""

    times: dict[str, list[float]] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    peaks: dict[str, float] = field(default_factory=dict)

    def best(self, name: str) -> float:
        return min(self.times[name])


def race(sides: dict[str, Remote], rounds: int, warmup: bool = True) -> Race:
    """``rounds`` alternating runs of every side, then closes them all (also when one fails)."""
    try:
        result = Race({name: [] for name in sides})
        if warmup:
            for side in sides.values():
                side.run()
        for side in sides.values():
            side.ask("reset_peak")
        for r in range(rounds):
            for name in alternating(list(sides), r):
                seconds, out = sides[name].run()
                result.times[name].append(seconds)
                result.outputs[name] = out
        for name, side in sides.items():
            result.peaks[name] = side.ask("peak")
        return result
    finally:
        for side in sides.values():
            side.close()


# --------------------------------------------------------------------------- fixtures several stages use


def read_rgb(path: str, size: tuple[int, int] | None = None) -> Any:
    """An image as RGB uint8, resized to (h, w) when ``size`` differs from its own."""
    import cv2

    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise OSError(f"{path}: OpenCV cannot read this image")
    image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if size is not None and image.shape[:2] != tuple(size):
        image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return image


def make_counter(name: str, options: dict[str, Any] | None = None) -> Any:
    """The same weights in every process: seed 0, random init (csrnet), packaged ImageNet weights (lite)."""
    import torch

    from crowdtk.models import build_model

    torch.manual_seed(0)
    return build_model(name, pretrained=(name == "lite"), **(options or {})).eval()


_MANIFESTS: dict[Path, Any] = {}


def manifest_of(root: Path) -> Any:
    """build_manifest(root), once per run."""
    from crowdtk.index import build_manifest

    if root not in _MANIFESTS:
        _MANIFESTS[root] = build_manifest(root, workers=2)
    return _MANIFESTS[root]


def part_b_paths(root: Path, n: int) -> list[str]:
    from crowdtk.index import _images_in

    images = _images_in(root / "images")
    if len(images) < n:
        raise SystemExit(f"{prog()}: error: {root / 'images'} holds {len(images)} images, {n} needed")
    return [str(p) for p in images[:n]]


# --------------------------------------------------------------------------- the report


@dataclass
class Row:
    stage: str
    reference: str
    ref_s: float | None
    ours_s: float | None
    ratio: float | None
    floor_multiple: float | None = None
    peak_mb: float | None = None
    what: str = ""  # what crowdtk's side is


@dataclass
class Check:
    what: str
    value: str
    ok: bool


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def check(self, what: str, value: str, ok: bool) -> None:
        self.checks.append(Check(what, value, bool(ok)))
        log(f"  {verdict(ok)}  {what}: {value}")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fmt_s(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.3g} s" if x < 100 else f"{x:.0f} s"


def fmt_x(x: float | None) -> str:
    return "–" if x is None else (f"{x:.2f}×" if x < 10 else f"{x:.0f}×")


def fmt_mb(x: float | None) -> str:
    return "–" if x is None else (f"{x:.0f} MB" if x < 1024 else f"{x / 1024:.2f} GB")


def markdown(report: Report) -> str:
    lines = [
        "| stage | reference | reference time | crowdtk time | ratio | floor multiple | peak memory |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report.rows:
        ours = fmt_s(r.ours_s) + (f" ({r.what})" if r.what else "")
        lines.append(
            f"| {r.stage} | {r.reference} | {fmt_s(r.ref_s)} | {ours} | {fmt_x(r.ratio)} | "
            f"{fmt_x(r.floor_multiple)} | {fmt_mb(r.peak_mb)} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line and the run


Stage = Callable[[Report, Sizes, Path], None]


def parser(doc: str, only: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The options every stage module takes; ``only`` (the stages __main__.py knows) adds ``--only``."""
    p = argparse.ArgumentParser(
        prog=prog(), description=doc.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes, for a smoke run (seconds; the numbers mean nothing)"
    )
    if only:
        p.add_argument(
            "--only", default=",".join(only), help=f"comma-separated stages [default: all: {','.join(only)}]"
        )
    p.add_argument("--json", type=Path, default=None, help="also write the rows, checks and facts as JSON to this file")
    p.add_argument(
        "--root", type=Path, default=DEFAULT_ROOT, help=f"ShanghaiTech Part B train split [default: {DEFAULT_ROOT}]"
    )
    return p


def load_line() -> str:
    try:
        one, five, fifteen = os.getloadavg()
        return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} CPUs"
    except OSError:
        return "load average unknown"


def run(stages: dict[str, Stage], args: argparse.Namespace) -> int:
    """Run ``stages`` in order into one report; print its table, checks and notes (and write --json)."""
    root = args.root.resolve()
    if not (root / "images").is_dir():
        print(f"{prog()}: error: ShanghaiTech Part B train split not found at {root} (pass --root)", file=sys.stderr)
        return 1
    sizes = QUICK if args.quick else Sizes()

    import torch

    report = Report()
    report.facts.update(
        quick=args.quick,
        stages=list(stages),
        python=platform.python_version(),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        cpus=os.cpu_count(),
        load_before=load_line(),
    )
    log(
        f"{prog()}: stages {', '.join(stages)}{' (quick)' if args.quick else ''}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {load_line()}"
    )
    started = time.perf_counter()
    for stage, runner in stages.items():
        log(f"== {stage}")
        stage_start = time.perf_counter()
        try:
            runner(report, sizes, root)
        except Exception as exc:  # noqa: BLE001 - one broken stage must not lose the others' numbers
            report.notes.append(f"stage {stage} failed: {type(exc).__name__}: {str(exc)[-1500:]}")
            report.check(f"stage {stage} ran", "failed", False)
            traceback.print_exc()
        report.facts[f"seconds:{stage}"] = time.perf_counter() - stage_start
    total = time.perf_counter() - started
    report.facts.update(total_seconds=total, load_after=load_line())

    print(markdown(report))
    print()
    print(
        "ratio = reference time / crowdtk time (scaling rows: time(2N) / time(N)); floor multiple = crowdtk time / "
        "(forward FLOPs / matmul rate), training: / (3 × forward floor); times are the best of alternating repeats."
    )
    print()
    for c in report.checks:
        print(f"{verdict(c.ok)}  {c.what}: {c.value}")
    for note in report.notes:
        print(f"note: {note}")
    print(f"\n{total:.0f} s in all; before: {report.facts['load_before']}; after: {report.facts['load_after']}")
    if args.json:
        payload = {
            "rows": [r.__dict__ for r in report.rows],
            "checks": [c.__dict__ for c in report.checks],
            "notes": report.notes,
            "facts": report.facts,
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    return 0
