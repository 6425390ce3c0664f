"""eval's metrics on hand-made numbers: NAE (images without heads left out), MAE per level, localization precision,
recall and F1 with one-to-one matching, the per-image CSV; count's output lines and points files."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from crowdtk.count_formats import COUNT_FORMATS
from crowdtk.counting import points_text
from crowdtk.errors import CrowdtkError
from crowdtk.evaluate import ImageResult, level_maes, localization, matched_heads, nae, results_csv, summarize
from crowdtk.matching import match_points
from crowdtk.prelabel import image_heads


def result(true: int, predicted: float, **attributes: str | int) -> ImageResult:
    return ImageResult(f"im{true}-{predicted}", "x.jpg", true, predicted, [0.0, 0.0, 0.0], dict(attributes))


def test_nae_leaves_out_images_without_heads():
    # |12 - 10| / 10 = 0.2, |3 - 4| / 4 = 0.25; the image with 0 heads (predicted 5) is not in NAE, but is in MAE.
    results = [result(10, 12.0), result(4, 3.0), result(0, 5.0)]
    assert nae(results) == pytest.approx(0.225)
    summary = summarize(results)
    assert summary["nae"] == pytest.approx(0.225) and summary["nae_images"] == 2
    assert summary["mae"] == pytest.approx((2 + 1 + 5) / 3)
    assert nae([result(0, 1.0)]) is None and summarize([result(0, 1.0)])["nae"] is None


def test_mae_per_level_and_their_mean():
    results = [
        result(10, 12.0, scene_level=1, weather=0),
        result(20, 14.0, scene_level=1, weather=2),
        result(100, 90.0, scene_level=3, weather=0),
        result(5, 5.0, weather=2),  # no scene level: left out of that attribute's levels only
    ]
    levels = level_maes(results)
    assert list(levels) == ["scene_level", "weather"]
    assert levels["scene_level"]["mae"] == {"1": pytest.approx(4.0), "3": pytest.approx(10.0)}
    assert levels["scene_level"]["n_images"] == {"1": 2, "3": 1}
    assert levels["scene_level"]["mean_mae"] == pytest.approx(7.0)  # not the MAE over the 3 images (6.0)
    assert levels["weather"]["mae"] == {"0": pytest.approx(6.0), "2": pytest.approx(3.0)}
    assert levels["weather"]["mean_mae"] == pytest.approx(4.5)
    assert summarize([result(3, 4.0)])["levels"] == {}


def test_levels_sort_as_numbers():
    levels = level_maes([result(1, 2.0, scene_level=10), result(1, 4.0, scene_level=2), result(1, 1.0, scene_level=0)])
    assert list(levels["scene_level"]["mae"]) == ["0", "2", "10"]


def test_a_predicted_head_is_matched_once_only():
    truth = np.array([[10.0, 10.0], [50.0, 50.0]])
    # Two predictions near the first true head, one 7 px from the second, one far from both.
    predicted = np.array([[11.0, 10.0], [10.0, 12.0], [55.0, 55.0], [200.0, 200.0]])
    assert matched_heads(predicted, truth, [4, 8, 16]) == {"4": 1, "8": 2, "16": 2}
    i, j = match_points(predicted, truth, 4)
    assert i.tolist() == [0] and j.tolist() == [0]  # the closer of the two, and the true head only once
    # Per radius, over all images together: 4 px: 1 of 4 predicted, 1 of 2 true.
    image = ImageResult("a", "a.jpg", 2, 4.0, [0.0] * 3, {}, 4, matched_heads(predicted, truth, [4, 8]))
    empty = ImageResult("b", "b.jpg", 2, 0.0, [0.0] * 3, {}, 0, {"4": 0, "8": 0})
    scores = localization([image, empty], [4, 8])
    assert scores["4"]["precision"] == pytest.approx(1 / 4)
    assert scores["4"]["recall"] == pytest.approx(1 / 4)  # 1 matched of 2 + 2 true heads
    assert scores["4"]["f1"] == pytest.approx(1 / 4)
    assert scores["8"]["precision"] == pytest.approx(2 / 4) and scores["8"]["recall"] == pytest.approx(2 / 4)
    assert (scores["8"]["matched"], scores["8"]["predicted"], scores["8"]["true"]) == (2, 4, 4)


def test_f1_is_the_harmonic_mean_and_undefined_ratios_are_none():
    image = ImageResult("a", "a.jpg", 10, 4.0, [0.0] * 3, {}, 4, {"8": 3})
    scores = localization([image], [8])["8"]
    p, r = 3 / 4, 3 / 10
    assert scores["f1"] == pytest.approx(2 * p * r / (p + r))
    none_predicted = localization([ImageResult("a", "a.jpg", 3, 0.0, [0.0] * 3, {}, 0, {"8": 0})], [8])["8"]
    assert none_predicted["precision"] is None and none_predicted["recall"] == 0.0 and none_predicted["f1"] is None


def test_matching_is_the_one_of_labels_diff():
    from crowdtk.labeling.diff import match_points as diff_match

    rng = np.random.default_rng(3)
    a = rng.uniform(0, 60, (40, 2))
    b = a + rng.normal(0, 5, a.shape)
    for x, y in zip(diff_match(a, b), match_points(a, b, 16.0)):
        np.testing.assert_array_equal(x, y)


def test_per_image_csv_has_the_relative_error_levels_and_matches():
    rows = list(
        csv.DictReader(
            results_csv(
                [
                    ImageResult("a", "a.jpg", 10, 12.0, [1.0, 2.0, 3.0], {"scene_level": 2}, 11, {"4": 7, "8": 9}),
                    ImageResult("b", "b.jpg", 0, 1.5, [1.0, 2.0, 3.0], {}, 2, {"4": 0, "8": 0}),
                ],
                [4, 8],
            ).splitlines()
        )
    )
    assert rows[0]["relative_error"] == "0.2000" and rows[1]["relative_error"] == ""
    assert rows[0]["scene_level"] == "2" and rows[1]["scene_level"] == ""
    assert (rows[0]["predicted_points"], rows[0]["matched_4px"], rows[0]["matched_8px"]) == ("11", "7", "9")


def test_image_heads_keep_the_count_and_lie_on_the_peaks():
    density = np.zeros((12, 16))
    density[2, 3] = 1.0
    density[8, 12] = 0.9
    density[8, 13] = 0.2  # 2.1 in all: two heads
    heads = image_heads(density, 0.5, 0.5, 256, 192).points  # stride 8 at scale 0.5: a cell is 16 image pixels
    assert len(heads) == 2
    # Cell (row 2, col 3) is centred at (3.5 * 16, 2.5 * 16) = (56, 40) image pixels.
    assert np.min(np.linalg.norm(heads - [56.0, 40.0], axis=1)) < 8
    assert np.min(np.linalg.norm(heads - [12.6 * 16, 8.5 * 16], axis=1)) < 12
    assert len(image_heads(np.full((4, 4), np.nan), 1.0, 1.0, 32, 32).points) == 0


def test_nwpu_lines_and_points_files():
    nwpu = COUNT_FORMATS["nwpu"]
    assert nwpu.line({"image": "d/3610.jpg", "count": 100.0}, "3610", 100.0) == "3610 100.0000"
    assert nwpu.line({"image": "d/3611.jpg", "count": 2.246}, "3611", 2.24561) == "3611 2.2456"
    with pytest.raises(CrowdtkError, match="not finite"):
        nwpu.line({"image": "d/3612.jpg", "count": None}, "3612", math.nan)
    assert COUNT_FORMATS["jsonl"].line({"image": "a.jpg", "count": 1.5}, "a", 1.5) == '{"image": "a.jpg", "count": 1.5}'
    assert points_text(np.array([[1.0, 2.5], [30.125, 4.0]])) == "1.00 2.50\n30.12 4.00\n"
    assert points_text(np.zeros((0, 2))) == ""


def test_the_closest_pairing_wins_over_the_most_pairs():
    """The documented case: a prediction 1 px from a head, and another prediction and another head each exactly
    r from those two, give one pair (cost 1 + r), not two (cost 2r)."""
    r = 8.0
    predicted = np.array([[0.0, 0.0], [1.0, r]])
    truth = np.array([[1.0, 0.0], [0.0, -r]])
    i, j = match_points(predicted, truth, r)
    assert i.tolist() == [0] and j.tolist() == [0]
    assert matched_heads(predicted, truth, [r]) == {"8": 1}
