"""The variables torchrun sets for each process (RANK, WORLD_SIZE, LOCAL_RANK, ...), met where no torchrun launched
the command: ignored with a warning naming what to unset. Launched by torchrun, malformed ones are a clear error.

(A real two-process torchrun run is test_train.py's test_torchrun_two_processes_match_one.)"""

from __future__ import annotations

import pytest
from conftest import FAST_TRAIN, assert_clean_failure, run

LAUNCHER = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


@pytest.fixture
def environment(monkeypatch):
    """Set launch variables on a clean slate: `environment(RANK="1", ...)`."""
    for name in LAUNCHER:
        monkeypatch.delenv(name, raising=False)

    def set_(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return set_


STRAYS = [
    {"RANK": "1"},
    {"WORLD_SIZE": "abc"},
    {"WORLD_SIZE": "2"},
    {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"},
    {"WORLD_SIZE": "2", "MASTER_ADDR": "localhost"},
]


@pytest.mark.parametrize("values", STRAYS, ids=[" ".join(f"{k}={v}" for k, v in s.items()) for s in STRAYS])
def test_eval_outside_torchrun_ignores_launch_variables_with_a_warning(
    values, environment, warm_ckpt, strip_pool, tmp_path
):
    environment(**values)
    csv = tmp_path / "e.csv"
    result = run("eval", warm_ckpt, strip_pool["manifest"], "--csv", csv)
    assert result.exit_code == 0, result.output
    assert "MAE" in result.stdout and csv.is_file()
    stray = [name for name in values if name != "MASTER_ADDR"]
    assert "crowdtk eval: warning: ignoring " in result.stderr and f"unset {' '.join(stray)}" in result.stderr, (
        result.stderr
    )
    assert "error" not in result.stderr


def test_train_outside_torchrun_ignores_launch_variables_with_a_warning(environment, strip_pool, tmp_path):
    environment(RANK="1", WORLD_SIZE="2")
    out = tmp_path / "m.safetensors"
    result = run("train", strip_pool["labels"], *FAST_TRAIN[:-1], "--epochs", "1", "-o", out)
    assert result.exit_code == 0, result.output
    assert out.is_file()
    assert "warning: ignoring RANK=1, WORLD_SIZE=2" in result.stderr and "unset RANK WORLD_SIZE" in result.stderr, (
        result.stderr
    )


MALFORMED = [
    ({"RANK": "0", "WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not a whole number"),
    ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x' is not a whole number"),
    ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE='0' is not a whole number of at least 1"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2 with WORLD_SIZE=2"),
    ({"WORLD_SIZE": "2"}, "RANK is not set"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "-1"}, "LOCAL_RANK='-1'"),
]


@pytest.mark.parametrize("launcher", ["torchrun", "job script"])
@pytest.mark.parametrize("values,message", MALFORMED, ids=[m for _, m in MALFORMED])
@pytest.mark.parametrize("command", ["eval", "train"])
def test_malformed_launch_variables_under_a_launcher_are_a_clear_error(
    command, values, message, launcher, environment, warm_ckpt, strip_pool, tmp_path
):
    launch = (
        {"TORCHELASTIC_RUN_ID": "none"}
        if launcher == "torchrun"
        else {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    )
    environment(**launch, **values)
    out = tmp_path / ("e.csv" if command == "eval" else "m.safetensors")
    args = (
        ["eval", warm_ckpt, strip_pool["manifest"], "--csv", out]
        if command == "eval"
        else ["train", strip_pool["labels"], *FAST_TRAIN, "--epochs", "1", "-o", out]
    )
    result = run(*args)
    assert_clean_failure(result, f"environment: {message}", leftovers=out)
    assert "launch with torchrun" in result.stderr and result.stderr.count("\n") == 1, result.stderr
