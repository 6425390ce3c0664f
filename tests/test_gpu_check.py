"""benchmarks/gpu_check.sh where it cannot check anything: no CUDA device (exit 3), no project venv (exit 4); one line
on stderr, nothing run and nothing written."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import HANG_GUARD_S

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
NO_CUDA = (
    "benchmarks/gpu_check.sh: no CUDA device here; this script checks the GPU paths and runs nothing without one\n"
)
NVIDIA_DRIVER = shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia/version").exists()


def _run(script: Path, out: Path, path: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPU_CHECK_OUT": str(out)}
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [shutil.which("bash") or "/bin/bash", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )


def _tree_without_gpu_tools(tmp_path: Path, venv: bool) -> tuple[Path, Path]:
    """A copy of the script in a tree (with the project's venv or none) and a PATH folder with a stand-in nvidia-smi,
    as on a machine with an NVIDIA driver."""
    (tmp_path / "tree" / "benchmarks").mkdir(parents=True)
    script = tmp_path / "tree" / "benchmarks" / "gpu_check.sh"
    shutil.copy(SCRIPT, script)
    if venv:
        (tmp_path / "tree" / ".venv").symlink_to(REPO / ".venv")
    tools = tmp_path / "bin"
    tools.mkdir()
    dirname = shutil.which("dirname")
    assert dirname is not None, "no dirname on PATH"
    (tools / "dirname").symlink_to(dirname)
    (tools / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
    (tools / "nvidia-smi").chmod(0o755)
    return script, tools


@pytest.mark.skipif(
    NVIDIA_DRIVER, reason="an NVIDIA driver is here: the script may run the whole check (make gpu-check)"
)
def test_without_cuda_it_says_so_and_runs_nothing(tmp_path: Path) -> None:
    result = _run(SCRIPT, tmp_path / "gpu-check")
    assert result.returncode == 3, result.stderr
    assert result.stderr == NO_CUDA and result.stdout == ""
    assert not (tmp_path / "gpu-check").exists()


def test_with_a_driver_but_no_venv_it_asks_for_make_install(tmp_path: Path) -> None:
    script, tools = _tree_without_gpu_tools(tmp_path, venv=False)
    result = _run(script, tmp_path / "out", path=str(tools))
    assert (
        result.returncode == 4
        and result.stderr == "benchmarks/gpu_check.sh: no project venv (.venv/bin/python); run make install first\n"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(
    NVIDIA_DRIVER, reason="an NVIDIA driver is here: torch may see a device and the script run the whole check"
)
def test_with_a_driver_where_torch_sees_no_device_it_says_so(tmp_path: Path) -> None:
    script, tools = _tree_without_gpu_tools(tmp_path, venv=True)
    result = _run(script, tmp_path / "out", path=str(tools))
    assert result.returncode == 3 and result.stderr == NO_CUDA, result.stderr
    assert not (tmp_path / "out").exists()
