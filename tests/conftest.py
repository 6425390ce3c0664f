"""Shared fixtures: the real ShanghaiTech Part B data beside the project, and small data sets."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PART_B = REPO.parent / "shared" / "data" / "ShanghaiTech" / "part_B"


@pytest.fixture(scope="session")
def part_b() -> Path:
    if not (PART_B / "train_data" / "images").is_dir():
        pytest.skip(f"real ShanghaiTech Part B not found at {PART_B} (../shared is absent on this machine)")
    return PART_B


def write_generic(root: Path, scenes: dict[str, tuple[int, int, np.ndarray]], suffix: str = ".txt") -> Path:
    """A generic-layout data set: {name: (height, width, points)} -> root/images + root/points."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "points").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, (height, width, points) in scenes.items():
        image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        cv2.imwrite(str(root / "images" / f"{name}.jpg"), image)
        target = root / "points" / f"{name}{suffix}"
        if suffix == ".txt":
            target.write_text("# x y\n" + "".join(f"{x} {y}\n" for x, y in points))
        elif suffix == ".json":
            target.write_text(json.dumps([[float(x), float(y)] for x, y in points]))
        elif suffix == ".npy":
            np.save(target, np.asarray(points, dtype=np.float64).reshape(-1, 2))
        elif suffix == ".csv":
            target.write_text("x,y\n" + "".join(f"{x},{y}\n" for x, y in points))
    return root


@pytest.fixture
def small_set(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    scenes = {
        "a": (64, 96, np.c_[rng.uniform(0, 96, 30), rng.uniform(0, 64, 30)]),
        "b": (48, 80, np.c_[rng.uniform(0, 80, 5), rng.uniform(0, 48, 5)]),
        "c": (40, 40, np.zeros((0, 2))),
    }
    return write_generic(tmp_path / "set", scenes)


def assert_clean_failure(result, names: str, leftovers: Path | None = None, code: int = 1) -> None:
    """Exit ``code`` (1; 2 for a usage error) with one `crowdtk <cmd>: error:` line naming `names`, no traceback, no output left."""
    assert result.exit_code == code, result.output
    assert result.stderr.startswith("crowdtk "), result.stderr
    assert ": error: " in result.stderr and names in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    if leftovers is not None:
        assert not leftovers.exists()
