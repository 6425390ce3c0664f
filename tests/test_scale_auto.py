"""`--scale auto`: one working scale per data set from a pixel budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from crowdtk.errors import CrowdtkError
from crowdtk.geometry import PIXEL_BUDGET, scale_for_pixels


def test_part_b_sized_images_get_the_measured_half_scale() -> None:
    assert scale_for_pixels([(1024, 768)] * 10) == 0.5


def test_small_images_are_not_shrunk_and_never_enlarged() -> None:
    assert scale_for_pixels([(384, 256)] * 3) == 1.0
    assert scale_for_pixels([(400, 300), (200, 150)]) == 1.0


def test_large_images_shrink_to_the_budget_on_a_sixteenth_grid() -> None:
    scale = scale_for_pixels([(4000, 3000), (6000, 4000), (3000, 2000)])
    assert scale * 16 == int(scale * 16)
    assert 0.5 * PIXEL_BUDGET < scale**2 * 4000 * 3000 <= PIXEL_BUDGET  # the median image, just under the budget


def test_mixed_pools_follow_the_median_image() -> None:
    # 2 of 3 images are Part B sized: the median decides, not the one huge image.
    assert scale_for_pixels([(1024, 768), (1024, 768), (6000, 6000)]) == 0.5


def test_bad_inputs_are_errors() -> None:
    with pytest.raises(CrowdtkError):
        scale_for_pixels([])
    with pytest.raises(CrowdtkError):
        scale_for_pixels([(10, 10)], pixel_budget=10)


def _manifest(path: Path, sizes: list[tuple[int, int]]) -> Path:
    import json

    from crowdtk.formats import MANIFEST, Provenance, make_header

    lines = [json.dumps(make_header(MANIFEST, Provenance("index")))]
    lines += [
        json.dumps({"id": f"i{k}", "image": f"i{k}.jpg", "width": w, "height": h, "count": 0, "sha256": "0" * 64})
        for k, (w, h) in enumerate(sizes)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(("sizes", "expected"), [([(1024, 768)] * 3, 0.5), ([(400, 300)] * 3, 1.0)])
def test_the_bench_resolves_its_scale_from_the_pool_unless_given(
    tmp_path: Path, sizes: list[tuple[int, int]], expected: float
) -> None:
    from crowdtk.experiment import Schedule, open_bench

    train = _manifest(tmp_path / "train.jsonl", sizes)
    test = _manifest(tmp_path / "test.jsonl", sizes[:1])
    experiment, settings = open_bench(
        train, test, tmp_path / "b", Schedule(), lambda step: None, "cpu", None, auto_scale=True
    )
    assert experiment.schedule.scale == expected and settings["scale"] == expected
    fixed, _ = open_bench(train, test, tmp_path / "c", Schedule(scale=0.75), lambda step: None, "cpu", None)
    assert fixed.schedule.scale == 0.75
