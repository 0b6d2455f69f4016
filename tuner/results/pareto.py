"""The Pareto front of a study with several objectives: a pure function over trials' values.

A trial is on the front when no other trial is at least as good on every objective and better on
one. Optuna's own front helpers are private (`optuna.study._multi_objective`) and need its trials;
the front here is computed from any trials table, the driver's or MLflow's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    """`a` is at least as good as `b` on every objective and better on at least one."""
    signs = [1 if mode == "min" else -1 for mode in modes]
    at_least = all(s * x <= s * y for s, x, y in zip(signs, a, b, strict=True))
    return at_least and any(s * x < s * y for s, x, y in zip(signs, a, b, strict=True))


def pareto_front(points: Sequence[Sequence[float | None]], modes: Sequence[str]) -> list[bool]:
    """For each point, whether it is on the front of `points` (one value per objective, `modes`
    'min' or 'max'). A point missing a finite value is never on it, nor counted against others;
    equal points are on it together."""
    finite = [
        all(isinstance(v, int | float) and math.isfinite(v) for v in point) for point in points
    ]
    candidates = [p for p, ok in zip(points, finite, strict=True) if ok]
    return [
        ok and not any(dominates(other, point, modes) for other in candidates)
        for point, ok in zip(points, finite, strict=True)
    ]
