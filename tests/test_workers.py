"""Worker processes end with their command (crowdtk.workers): `synth` and `gen-density` killed with SIGKILL
leave no worker behind, so a pipe reading their output reaches its end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import HANG_GUARD_S, run

DEADLINE_S = HANG_GUARD_S  # polled, so a pass takes about a second


def children(pid: int) -> dict[int, str]:
    """{child pid: its start time}, from /proc/*/stat (/proc/PID/task/*/children needs a kernel option)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                found[int(entry.name)] = fields[19]
    return found


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state first), or None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2 :].split()


def running(pid: int, started: str) -> bool:
    """Whether process ``pid`` started at ``started`` still runs (a zombie has ended; a reused pid is another
    process)."""
    fields = _stat(pid)
    return fields is not None and fields[19] == started and fields[0] not in ("Z", "X")


def kill_and_watch_workers(args: list[str], cwd: Path) -> None:
    """Start ``args`` in its own process group, its stdout and stderr on one pipe; once it has two workers, SIGKILL it
    alone; then every worker must end and the pipe must reach its end, each within DEADLINE_S."""
    proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    stdout = proc.stdout
    assert stdout is not None  # stdout=PIPE
    ended = threading.Event()  # the pipe's end, read in a thread: a worker holding the pipe would block the read

    def read_to_the_end() -> None:
        stdout.read()
        ended.set()

    reader = threading.Thread(target=read_to_the_end, daemon=True)
    try:
        reader.start()
        deadline = time.monotonic() + DEADLINE_S * 2  # the command imports and prepares before its pool starts
        workers: dict[int, str] = {}
        while len(workers) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
            workers = children(proc.pid)
        assert len(workers) >= 2, f"the command did not start two workers (exit code {proc.poll()})"
        proc.kill()  # SIGKILL to the command only, not to its group
        proc.wait(timeout=DEADLINE_S)
        deadline = time.monotonic() + DEADLINE_S
        while any(running(pid, started) for pid, started in workers.items()) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [pid for pid, started in workers.items() if running(pid, started)]
        assert not left, f"workers {left} outlived their command by {DEADLINE_S:.0f} s"
        assert ended.wait(DEADLINE_S), "the output pipe did not reach its end"
    finally:
        try:  # whatever failed, nothing of this test keeps running: the group holds the command and its workers
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=DEADLINE_S)
        if reader.is_alive():
            reader.join(DEADLINE_S)  # the group's end closed the pipe: the read returns
        stdout.close()


CROWDTK = [sys.executable, "-m", "crowdtk"]
# The same command with the fallback for systems without prctl: a thread in each worker watches the parent.
WITHOUT_PRCTL = [
    sys.executable,
    "-c",
    ("import crowdtk.workers as w; w._kernel_kills_orphan = lambda: False; from crowdtk.cli import main; main()"),
]
WAYS = pytest.mark.parametrize("launcher", [CROWDTK, WITHOUT_PRCTL], ids=["prctl", "polling"])


@WAYS
def test_synth_workers_end_with_a_killed_command(launcher: list[str], tmp_path: Path) -> None:
    # Minutes of work at two workers, so that it is still running when killed.
    kill_and_watch_workers(
        [
            *launcher,
            "synth",
            "-o",
            str(tmp_path / "out"),
            "--train",
            "2000",
            "--test",
            "0",
            "--width",
            "1024",
            "--height",
            "768",
            "--workers",
            "2",
        ],
        tmp_path,
    )


@pytest.fixture(scope="module")
def dense_manifest(tmp_path_factory) -> Path:
    """400 black 1024×768 images with 3000 heads each, indexed: slow enough per image for gen-density --stride 1
    --adaptive."""
    root = tmp_path_factory.mktemp("dense")
    (root / "data" / "images").mkdir(parents=True)
    (root / "data" / "points").mkdir()
    rng = np.random.default_rng(0)
    black = np.zeros((768, 1024, 3), np.uint8)
    for i in range(400):
        cv2.imwrite(str(root / "data" / "images" / f"im{i:03d}.png"), black)
        points = np.c_[rng.uniform(0, 1024, 3000), rng.uniform(0, 768, 3000)]
        (root / "data" / "points" / f"im{i:03d}.txt").write_text("".join(f"{x:.2f} {y:.2f}\n" for x, y in points))
    result = run("index", root / "data", "-o", root / "m.jsonl", "-q", "--workers", "2")
    assert result.exit_code == 0, result.output
    return root / "m.jsonl"


@WAYS
def test_gen_density_workers_end_with_a_killed_command(
    launcher: list[str], dense_manifest: Path, tmp_path: Path
) -> None:
    kill_and_watch_workers(
        [
            *launcher,
            "gen-density",
            str(dense_manifest),
            "-o",
            str(tmp_path / "d"),
            "--stride",
            "1",
            "--adaptive",
            "--workers",
            "2",
        ],
        tmp_path,
    )
