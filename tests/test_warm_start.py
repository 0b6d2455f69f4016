"""tuner/driver/warm_start.py: which of an earlier study's configs fit this study's space, and
why the others do not (the study test of a warm start is in tests/test_study_lifecycle.py)."""

from __future__ import annotations

from tuner.driver.warm_start import misfit
from tuner.spec.spaces import parse_space


def test_warm_start_misfit_names_why_a_config_is_not_a_point_of_the_space() -> None:
    space = parse_space(
        {
            "lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True},
            "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
            "momentum": {"type": "float", "low": 0.5, "high": 0.9, "when": {"optimizer": "sgd"}},
            "hidden_units": {"type": "int", "low": 16, "high": 64, "step": 16},
            "batch_size": 64,
        }
    )
    fits = {"lr": 0.01, "optimizer": "adam", "hidden_units": 32, "batch_size": 64}
    assert misfit(fits, space) is None  # momentum is inactive for adam
    cases = {
        "lr=0.5 is outside this space's range [0.001, 0.1]": {"lr": 0.5},
        "it has no momentum, which this space samples": {"optimizer": "sgd"},
        "hidden_units=40 is outside this space's range [16, 64] step 16": {"hidden_units": 40},
        "hidden_units=32.0 is outside": {"hidden_units": 32.0},
        "batch_size=128 but this space fixes batch_size=64": {"batch_size": 128},
        "dropout is not in this space": {"dropout": 0.1},
    }
    for reason, change in cases.items():
        assert misfit({**fits, **change}, space).startswith(reason), change
