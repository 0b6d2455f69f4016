"""tuner/results/pareto.py: which trials are on the Pareto front of several objectives."""

from __future__ import annotations

import math

import pytest

from tuner.results.pareto import dominates, pareto_front


def test_dominates_needs_one_strictly_better_value() -> None:
    assert dominates([1, 2], [1, 3], ["min", "min"])
    assert not dominates([1, 3], [1, 3], ["min", "min"])  # equal: neither dominates
    assert not dominates([1, 4], [2, 3], ["min", "min"])  # a trade-off
    assert dominates([0.9, 3], [0.8, 3], ["max", "min"])  # accuracy up, same size


def test_front_of_loss_and_size() -> None:
    points = [(0.10, 5000), (0.12, 900), (0.11, 6000), (0.30, 100), (0.30, 900), (0.10, 5000)]
    assert pareto_front(points, ["min", "min"]) == [True, True, False, True, False, True]


def test_max_mode_flips_the_direction() -> None:
    points = [(0.95, 5000), (0.90, 900), (0.80, 5000)]
    assert pareto_front(points, ["max", "min"]) == [True, True, False]


def test_points_without_a_finite_value_are_off_the_front_and_dominate_nothing() -> None:
    points = [(0.1, None), (0.2, 10), (math.nan, 1), (0.1, math.inf)]
    assert pareto_front(points, ["min", "min"]) == [False, True, False, False]


def test_empty_and_single() -> None:
    assert pareto_front([], ["min", "min"]) == []
    assert pareto_front([(1.0, 2.0)], ["min", "min"]) == [True]


@pytest.mark.parametrize("seed", range(3))
def test_no_front_point_is_dominated_and_every_other_is(seed: int) -> None:
    import random

    rng = random.Random(seed)
    points = [(rng.random(), rng.randint(1, 20), rng.random()) for _ in range(40)]
    modes = ["min", "min", "max"]
    front = pareto_front(points, modes)
    for point, on in zip(points, front, strict=True):
        beaten = any(dominates(other, point, modes) for other in points)
        assert on == (not beaten)
