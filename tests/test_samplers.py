"""tuner/driver/samplers.py: every sampler of the registry survives Ray's pickling and a resume's
restore on the locked Optuna (NSGA-II holds a lock since Optuna 5.1), and keeps its place in the
search."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
import ray.cloudpickle
from ray import tune

from tests.helpers import save_ray_trials
from trainables.registry import UnknownNameError
from tuner.driver.samplers import SAMPLERS, make_sampler
from tuner.driver.searcher import TruthfulOptunaSearch
from tuner.spec.spaces import load_space

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings(
    "ignore::optuna.exceptions.ExperimentalWarning", "ignore::UserWarning"
)

ALGORITHMS = SAMPLERS.names()


def searcher_after_trials(algorithm: str, trials: int = 8) -> TruthfulOptunaSearch:
    """A study's searcher (Optuna in memory, so that a copy is independent) that told `trials`."""
    searcher = TruthfulOptunaSearch(
        load_space("mlp", "mlp"),
        metric="val_loss",
        mode="min",
        sampler=make_sampler(algorithm, 0),
        study_name="samplers",
        max_epochs=1,
    )
    for number in range(trials):
        config = searcher.suggest(f"t{number}")
        searcher.on_trial_complete(f"t{number}", {"epoch": 1, "val_loss": config["lr"]})
    return searcher


def test_the_registry_holds_the_built_in_samplers() -> None:
    assert set(ALGORITHMS) == {"tpe", "nsgaii", "random", "cmaes", "qmc"}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_searcher_restored_from_its_checkpoint_asks_what_it_would_have(
    algorithm: str, tmp_path: Path
) -> None:
    """`tuner resume`: Ray restores the searcher from the file `save` wrote."""
    searcher = searcher_after_trials(algorithm)
    searcher.save(str(tmp_path / "searcher.pkl"))
    save_ray_trials(tmp_path, [f"t{n}" for n in range(8)])  # Ray's trials, saved beside it
    restored = searcher_after_trials(algorithm, trials=0)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert type(restored._sampler) is type(searcher._sampler)
    assert [restored.suggest(f"t{n}") for n in (8, 9)] == [
        searcher.suggest(f"t{n}") for n in (8, 9)
    ]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_searcher_pickled_as_ray_does_asks_what_it_would_have(algorithm: str) -> None:
    """Ray pickles the searcher with the Tuner and into every experiment snapshot."""
    searcher = searcher_after_trials(algorithm)
    copy = ray.cloudpickle.loads(ray.cloudpickle.dumps(searcher))
    assert copy.suggest("t8") == searcher.suggest("t8")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_tuner_can_be_made_with_each_sampler(algorithm: str) -> None:
    """Where Optuna 5.1's NSGA-II crashed: tune.Tuner pickles its search algorithm."""
    searcher = searcher_after_trials(algorithm, trials=0)
    tuner = tune.Tuner(lambda config: None, tune_config=tune.TuneConfig(search_alg=searcher))
    assert tuner is not None


# --------------------------------------------------------------------------- seeds and names


def first_configs(algorithm: str, seed: int, n: int = 4) -> list[dict[str, Any]]:
    space = load_space("mlp", "mlp")
    study = optuna.create_study(sampler=make_sampler(algorithm, seed))
    configs = []
    for _ in range(n):
        trial = study.ask()
        config = space.sample(trial)
        configs.append(config)
        study.tell(trial, math.log10(config["lr"]) + config["num_layers"])
    return configs


def test_cmaes_sampler_can_sample_relative() -> None:
    """CmaEsSampler imports the `cmaes` package from its second trial on."""
    assert importlib.util.find_spec("cmaes") is not None, (
        "search.algorithm=cmaes needs the `cmaes` package, which is not installed"
    )


@pytest.mark.parametrize("algorithm", SAMPLERS.names())
def test_same_seed_same_first_configs(algorithm: str) -> None:
    first = first_configs(algorithm, seed=11)
    assert first == first_configs(algorithm, seed=11)
    assert len({repr(c) for c in first}) > 1  # not one config repeated


@pytest.mark.parametrize("algorithm", ["tpe", "random", "cmaes"])
def test_different_seed_different_first_configs(algorithm: str) -> None:
    assert first_configs(algorithm, seed=1) != first_configs(algorithm, seed=2)


@pytest.mark.parametrize(
    ("algorithm", "kind"),
    [
        ("tpe", optuna.samplers.TPESampler),
        ("random", optuna.samplers.RandomSampler),
        ("cmaes", optuna.samplers.CmaEsSampler),
        ("qmc", optuna.samplers.QMCSampler),
    ],
)
def test_make_sampler_kinds(algorithm: str, kind: type) -> None:
    assert isinstance(make_sampler(algorithm, 0), kind)


def test_unknown_algorithm() -> None:
    with pytest.raises(UnknownNameError) as info:
        make_sampler("grid", 0)
    msg = str(info.value)
    assert "search.algorithm" in msg
    assert "'grid'" in msg
    assert "cmaes, nsgaii, qmc, random, tpe" in msg
