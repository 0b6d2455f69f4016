"""tuner/driver/searcher.py: what TruthfulOptunaSearch tells Optuna, driven by hand as Ray would
(no Ray).

Ray calls `on_trial_result` for every reported epoch except the one on which a scheduler stops the
trial; that last result reaches the searcher only through `on_trial_complete`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.helpers import save_ray_trials
from tuner.driver.samplers import make_sampler
from tuner.driver.searcher import TruthfulOptunaSearch
from tuner.spec.spaces import load_space

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

MAX_EPOCHS = 5
STUDY = "searcher-test"


@pytest.fixture
def storage_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'optuna.db'}"


@pytest.fixture
def make_searcher(storage_url: str) -> Callable[..., TruthfulOptunaSearch]:
    def make(metric: str = "val_loss", mode: str = "min") -> TruthfulOptunaSearch:
        return TruthfulOptunaSearch(
            load_space("mlp", "mlp"),
            metric=metric,
            mode=mode,
            sampler=make_sampler("random", 0),
            storage=optuna.storages.RDBStorage(storage_url),
            study_name=STUDY,
            max_epochs=MAX_EPOCHS,
        )

    return make


@pytest.fixture
def searcher(make_searcher) -> TruthfulOptunaSearch:
    return make_searcher()


def stored_trials(storage_url: str) -> list[optuna.trial.FrozenTrial]:
    """The trials as another process (optuna-dashboard) would read them from the database."""
    return optuna.load_study(study_name=STUDY, storage=storage_url).get_trials(deepcopy=False)


def run_trial(
    searcher: TruthfulOptunaSearch,
    trial_id: str,
    curve: list[float],
    *,
    stop_result_hidden: bool,
    metric: str = "val_loss",
    extra_last: dict | None = None,
) -> dict:
    """Report `curve` (epochs 1..n); the last result goes only to on_trial_complete if hidden."""
    assert searcher.suggest(trial_id)
    results = [{"epoch": e, metric: v} for e, v in enumerate(curve, start=1)]
    results[-1].update(extra_last or {})
    shown = results[:-1] if stop_result_hidden else results
    for result in shown:
        searcher.on_trial_result(trial_id, result)
    searcher.on_trial_complete(trial_id, result=results[-1])
    return results[-1]


def test_suggest_returns_a_full_config(searcher: TruthfulOptunaSearch) -> None:
    config = searcher.suggest("t0")
    space = load_space("mlp", "mlp")
    required = set(space.names()) - {"momentum"}
    assert required <= set(config)
    assert ("momentum" in config) == (config["optimizer"] == "sgd")
    assert 1e-4 <= config["lr"] <= 3e-2


def test_trial_stopped_early_is_pruned_with_its_whole_curve(
    searcher: TruthfulOptunaSearch, storage_url: str
) -> None:
    run_trial(searcher, "t0", [0.9, 0.7], stop_result_hidden=True)
    (trial,) = stored_trials(storage_url)
    assert trial.state == TrialState.PRUNED
    assert trial.intermediate_values == {1: 0.9, 2: 0.7}  # the stopping epoch included
    assert trial.value == pytest.approx(0.7)  # Optuna values a PRUNED trial at its last step


def test_trial_that_ran_its_budget_is_complete_at_its_best_epoch(
    searcher: TruthfulOptunaSearch, storage_url: str
) -> None:
    curve = [0.9, 0.5, 0.4, 0.45, 0.6]  # best at epoch 3, the last is worse
    run_trial(searcher, "t0", curve, stop_result_hidden=False)
    (trial,) = stored_trials(storage_url)
    assert trial.state == TrialState.COMPLETE
    assert trial.value == pytest.approx(0.4)
    assert trial.intermediate_values == dict(enumerate(curve, start=1))


def test_final_result_seen_twice_is_reported_once(
    searcher: TruthfulOptunaSearch, storage_url: str
) -> None:
    """Ray passes a finished trial's last result to on_trial_result and to on_trial_complete."""
    run_trial(searcher, "t0", [0.5, 0.4, 0.3, 0.2, 0.1], stop_result_hidden=False)
    (trial,) = stored_trials(storage_url)
    assert trial.intermediate_values == {1: 0.5, 2: 0.4, 3: 0.3, 4: 0.2, 5: 0.1}
    assert trial.value == pytest.approx(0.1)


def test_trial_reaching_max_epochs_through_complete_only(
    searcher: TruthfulOptunaSearch, storage_url: str
) -> None:
    run_trial(searcher, "t0", [0.8, 0.6, 0.3, 0.35, 0.5], stop_result_hidden=True)
    (trial,) = stored_trials(storage_url)
    assert trial.state == TrialState.COMPLETE
    assert trial.value == pytest.approx(0.3)
    assert sorted(trial.intermediate_values) == [1, 2, 3, 4, 5]


def test_errored_trial_fails(searcher: TruthfulOptunaSearch, storage_url: str) -> None:
    searcher.suggest("t0")
    searcher.on_trial_result("t0", {"epoch": 1, "val_loss": 0.8})
    searcher.on_trial_complete("t0", result=None, error=True)
    searcher.suggest("t1")
    searcher.on_trial_result("t1", {"epoch": 1, "val_loss": 0.8})
    searcher.on_trial_complete("t1", result={"epoch": 2, "val_loss": 0.7}, error=True)
    searcher.suggest("t2")
    searcher.on_trial_complete("t2", result=None, error=True)  # failed before any epoch
    states = [t.state for t in stored_trials(storage_url)]
    assert states == [TrialState.FAIL] * 3


def test_diverged_trial_is_pruned_with_finite_values(
    searcher: TruthfulOptunaSearch, storage_url: str
) -> None:
    run_trial(
        searcher,
        "t0",
        [0.9, 0.8, math.nan],
        stop_result_hidden=False,
        extra_last={"diverged": 1},
    )
    (trial,) = stored_trials(storage_url)
    assert trial.state == TrialState.PRUNED
    assert trial.intermediate_values == {1: 0.9, 2: 0.8}


def test_trial_diverged_on_first_epoch(searcher: TruthfulOptunaSearch, storage_url: str) -> None:
    """Diverged with no finite epoch is still PRUNED: TPE ranks such trials worst, while it
    ignores FAIL trials and would keep sampling the region that diverges."""
    run_trial(searcher, "t0", [math.inf], stop_result_hidden=False, extra_last={"diverged": 1})
    (trial,) = stored_trials(storage_url)
    assert trial.state == TrialState.PRUNED
    assert trial.intermediate_values == {}


def test_stopped_on_overfit_is_complete_at_its_best(make_searcher, storage_url: str) -> None:
    searcher = make_searcher()
    run_trial(
        searcher,
        "overfit",
        [0.5, 0.3, 0.4, 0.45],
        stop_result_hidden=True,
        extra_last={"stopped_on_overfit": 1},  # what OverfitStopper writes on the stopping result
    )
    run_trial(searcher, "asha", [0.6, 0.55], stop_result_hidden=True)
    overfit, asha = stored_trials(storage_url)
    assert overfit.state == TrialState.COMPLETE
    assert overfit.value == pytest.approx(0.3)
    assert overfit.intermediate_values == {1: 0.5, 2: 0.3, 3: 0.4, 4: 0.45}
    assert asha.state == TrialState.PRUNED


def test_mode_max_uses_the_highest_epoch(make_searcher, storage_url: str) -> None:
    searcher = make_searcher(metric="val_acc", mode="max")
    run_trial(
        searcher, "t0", [0.5, 0.9, 0.8, 0.85, 0.7], stop_result_hidden=False, metric="val_acc"
    )
    (trial,) = stored_trials(storage_url)
    assert trial.state == TrialState.COMPLETE
    assert trial.value == pytest.approx(0.9)


def test_several_trials_interleaved(searcher: TruthfulOptunaSearch, storage_url: str) -> None:
    for trial_id in ("a", "b", "c"):
        searcher.suggest(trial_id)
    for epoch in (1, 2):
        for trial_id, base in (("a", 1.0), ("b", 2.0), ("c", 3.0)):
            searcher.on_trial_result(trial_id, {"epoch": epoch, "val_loss": base / epoch})
    searcher.on_trial_complete("b", result={"epoch": 3, "val_loss": 0.6})  # stopped at 3
    for epoch in (3, 4, 5):
        searcher.on_trial_result("a", {"epoch": epoch, "val_loss": 1.0 / epoch})
    searcher.on_trial_complete("a", result={"epoch": 5, "val_loss": 0.2})
    searcher.on_trial_complete("c", result=None, error=True)
    a, b, c = stored_trials(storage_url)
    assert (a.state, a.value) == (TrialState.COMPLETE, pytest.approx(0.2))
    assert b.state == TrialState.PRUNED
    assert b.intermediate_values == {1: 2.0, 2: 1.0, 3: 0.6}
    assert c.state == TrialState.FAIL
    assert [t.user_attrs["tuner.trial_id"] for t in (a, b, c)] == ["a", "b", "c"]  # Ray's ids


def test_second_completion_is_ignored(searcher: TruthfulOptunaSearch, storage_url: str) -> None:
    run_trial(searcher, "t0", [0.5, 0.4, 0.3, 0.2, 0.1], stop_result_hidden=False)
    searcher.on_trial_complete("t0", result={"epoch": 6, "val_loss": 0.01}, error=True)
    (trial,) = stored_trials(storage_url)
    assert trial.state == TrialState.COMPLETE
    assert trial.value == pytest.approx(0.1)


def test_unknown_trial_completion_is_ignored(
    searcher: TruthfulOptunaSearch, storage_url: str
) -> None:
    searcher.on_trial_complete("never-suggested", result={"epoch": 1, "val_loss": 0.1})
    assert stored_trials(storage_url) == []


def test_restore_from_a_searcher_checkpoint_keeps_curves(
    make_searcher, storage_url: str, tmp_path: Path
) -> None:
    """Tuner.restore pickles the searcher: a resumed trial keeps the epochs it reported before."""
    first = make_searcher()
    first.suggest("t0")
    for epoch, value in ((1, 0.5), (2, 0.2), (3, 0.4)):
        first.on_trial_result("t0", {"epoch": epoch, "val_loss": value})
    checkpoint = tmp_path / "searcher.pkl"
    first.save(str(checkpoint))
    save_ray_trials(tmp_path, ["t0"])

    resumed = make_searcher()
    resumed.restore(str(checkpoint))
    for epoch, value in ((4, 0.45), (5, 0.5)):
        resumed.on_trial_result("t0", {"epoch": epoch, "val_loss": value})
    resumed.on_trial_complete("t0", result={"epoch": 5, "val_loss": 0.5})
    (trial,) = stored_trials(storage_url)
    assert trial.state == TrialState.COMPLETE
    assert trial.value == pytest.approx(0.2)
    assert trial.intermediate_values == {1: 0.5, 2: 0.2, 3: 0.4, 4: 0.45, 5: 0.5}


def test_restore_fails_the_trial_ray_saved_no_state_for(
    make_searcher, storage_url: str, tmp_path: Path
) -> None:
    """Ray's trials were saved before t1 was suggested (a bucket upload between two saves):
    Ray never runs t1 again, so Optuna hears it failed and t0 carries on."""
    first = make_searcher()
    first.suggest("t0")
    first.suggest("t1")
    first.on_trial_result("t1", {"epoch": 1, "val_loss": 0.3})
    checkpoint = tmp_path / "searcher.pkl"
    first.save(str(checkpoint))
    save_ray_trials(tmp_path, ["t0"])

    resumed = make_searcher()
    resumed.restore(str(checkpoint))
    resumed.on_trial_complete("t1", result={"epoch": 2, "val_loss": 0.2})  # not Ray's: ignored
    resumed.on_trial_complete("t0", result={"epoch": MAX_EPOCHS, "val_loss": 0.1})
    states = {t.user_attrs["tuner.trial_id"]: t.state for t in stored_trials(storage_url)}
    assert states == {"t0": TrialState.COMPLETE, "t1": TrialState.FAIL}


def test_restore_takes_back_the_trial_ray_saved_after_the_searcher(
    make_searcher, storage_url: str, tmp_path: Path
) -> None:
    """The driver died between Ray's two saves: Ray's trials list t1, the searcher's state
    predates it. t1 is told to Optuna when it ends, not failed and asked again."""
    first = make_searcher()
    first.suggest("t0")
    checkpoint = tmp_path / "searcher.pkl"
    first.save(str(checkpoint))
    first.suggest("t1")
    save_ray_trials(tmp_path, ["t0", "t1"])

    resumed = make_searcher()
    resumed.restore(str(checkpoint))
    for epoch, value in ((1, 0.5), (2, 0.25)):
        resumed.on_trial_result("t1", {"epoch": epoch, "val_loss": value})
    resumed.on_trial_complete("t1", result={"epoch": MAX_EPOCHS, "val_loss": 0.3})
    trials = {t.user_attrs["tuner.trial_id"]: t for t in stored_trials(storage_url)}
    assert set(trials) == {"t0", "t1"}
    assert trials["t1"].state == TrialState.COMPLETE
    assert trials["t1"].value == pytest.approx(0.25)
    assert trials["t0"].state == TrialState.RUNNING  # Ray runs it on


# --------------------------------------------------------------------------- several objectives


@pytest.mark.parametrize("algorithm", ["tpe", "nsgaii"])
def test_several_objectives_are_told_at_the_first_ones_best_epoch(
    storage_url: str, algorithm: str
) -> None:
    """val_loss is best at epoch 2: Optuna gets [val_loss, params] of epoch 2, not the last."""
    searcher = TruthfulOptunaSearch(
        load_space("mlp", "mlp"),
        metric=["val_loss", "params"],
        mode=["min", "min"],
        sampler=make_sampler(algorithm, 0),
        storage=optuna.storages.RDBStorage(storage_url),
        study_name=STUDY,
        max_epochs=3,
    )
    assert searcher.suggest("t0")
    for epoch, loss in enumerate([0.9, 0.4, 0.6], start=1):
        searcher.on_trial_result("t0", {"epoch": epoch, "val_loss": loss, "params": 1000 + epoch})
    searcher.on_trial_complete("t0", result={"epoch": 3, "val_loss": 0.6, "params": 1003})
    [trial] = stored_trials(storage_url)
    assert trial.state == TrialState.COMPLETE
    assert trial.values == [0.4, 1002.0]
    assert trial.intermediate_values == {}  # Optuna keeps none for several objectives
    assert len(optuna.load_study(study_name=STUDY, storage=storage_url).directions) == 2
    assert searcher.suggest("t1")  # the sampler asks again with a told multi-objective trial


def test_several_objectives_without_a_reported_one_fail(storage_url: str) -> None:
    searcher = TruthfulOptunaSearch(
        load_space("mlp", "mlp"),
        metric=["val_loss", "inference_ms"],
        mode=["min", "min"],
        sampler=make_sampler("tpe", 0),
        storage=optuna.storages.RDBStorage(storage_url),
        study_name=STUDY,
        max_epochs=1,
    )
    run_trial(searcher, "t0", [0.5], stop_result_hidden=False)
    assert stored_trials(storage_url)[0].state == TrialState.FAIL
