"""tuner/results/trials.py: the trials table, one row per trial, best best-epoch objective first
(trials without one last, ties by number), its Pareto column for several objectives, and what a
finished study's result reads from it (best trial, front, winner, status counts)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from tests.helpers import tiny_spec
from tuner.results import outcomes
from tuner.results.trials import (
    Finalists,
    StudyResult,
    TrialRecord,
    plain,
    rank_trials,
    trial_row,
    trials_table,
    with_pareto,
)

NAN = float("nan")


def epoch(n: int, val_loss: float, **extra: float) -> dict[str, float]:
    return {"epoch": n, "train_loss": val_loss / 2, "val_loss": val_loss, **extra}


def test_plain_makes_numpy_scalars_python_and_nan_none() -> None:
    assert plain(np.float32(0.5)) == 0.5 and type(plain(np.float32(0.5))) is float
    assert plain(np.int64(3)) == 3 and type(plain(np.int64(3))) is int
    assert plain(NAN) is None and plain(np.float64("nan")) is None
    assert plain("text") == "text" and plain(None) is None


def test_trial_row_names_its_columns_after_the_schema() -> None:
    row = trial_row(
        4,
        "abc",
        "stopped_by_asha",  # a status an earlier version wrote
        "good_fit",
        6,
        {"epoch": 3, "val_loss": 0.4, "val_acc": 0.9},
        {"lr": 0.01, "layers": 2},
        node="n1",
    )
    assert row == {
        "trial": 4,
        "trial_id": "abc",
        "status": outcomes.STOPPED_BY_SCHEDULER,
        "diagnosis": "good_fit",
        "epochs": 6,
        "best_epoch": 3,
        "best_val_loss": 0.4,
        "best_val_acc": 0.9,
        "node": "n1",
        "config.lr": 0.01,
        "config.layers": 2,
    }


def rows(*scores: float | None) -> list[dict]:
    """Rows numbered 1, 2, ... in the given order, with these best_val_loss values (None: the
    trial reported no epoch, so the row has no such column at all)."""
    return [
        {"trial": n, **({} if s is None else {"best_val_loss": s})}
        for n, s in enumerate(scores, start=1)
    ]


def test_rank_trials_orders_by_the_objective_with_ties_by_number() -> None:
    table = rank_trials(rows(0.5, 0.2, NAN, 0.5, 0.1), "val_loss", "min")
    assert list(table["trial"]) == [5, 2, 1, 4, 3]  # the NaN last; 1 before 4 on the tie
    assert list(table.index) == [0, 1, 2, 3, 4]
    maxed = rank_trials(rows(0.5, 0.2, NAN, 0.5, 0.1), "val_loss", "max")
    assert list(maxed["trial"]) == [1, 4, 2, 5, 3]


def test_rank_trials_puts_trials_without_the_objective_last() -> None:
    table = rank_trials(rows(None, 0.3, None, 0.1), "val_loss", "min")
    assert list(table["trial"]) == [4, 2, 1, 3]
    nobody = rank_trials(rows(None, None), "val_loss", "min")  # no column at all: added, NaN
    assert list(nobody["trial"]) == [1, 2] and nobody["best_val_loss"].isna().all()
    assert rank_trials([], "val_loss", "min").empty


def test_with_pareto_marks_the_front_of_finished_trials_only() -> None:
    table = pd.DataFrame(
        {
            "trial": [1, 2, 3, 4, 5],
            "status": ["completed", "completed", "completed", "errored", "stopped_on_overfit"],
            "best_val_loss": [0.1, 0.2, 0.3, 0.05, 0.4],
            "best_params": [300, 100, 200, 10, 50],
        }
    )
    objectives = [("val_loss", "min"), ("params", "min")]
    marked = with_pareto(table, objectives)
    # 3 is dominated by 2; the errored 4 would dominate everything but is never on the front
    assert list(marked["pareto"]) == [True, True, False, False, True]
    assert "pareto" not in table  # a new table
    assert with_pareto(table, [("val_loss", "min")]) is table  # one objective: unchanged
    assert with_pareto(table.iloc[0:0], objectives).empty


def test_a_missing_objective_value_keeps_a_trial_off_the_front() -> None:
    table = pd.DataFrame(
        {
            "trial": [1, 2],
            "status": ["completed", "completed"],
            "best_val_loss": [0.1, np.float64("nan")],
            "best_params": [100, 1],
        }
    )
    assert list(with_pareto(table, [("val_loss", "min"), ("params", "min")])["pareto"]) == [
        True,
        False,
    ]


def test_a_record_keeps_its_epochs_in_order_and_finds_its_best() -> None:
    record = TrialRecord("a", 1, {}, {3: epoch(3, 0.4), 1: epoch(1, 0.9), 2: epoch(2, 0.4)})
    assert [r["epoch"] for r in record.history] == [1, 2, 3]
    assert record.best("val_loss", "min")["epoch"] == 2  # the earliest of equal bests
    assert record.best("val_loss", "max")["epoch"] == 1
    assert TrialRecord("b", 2, {}).best("val_loss", "min") is None


def records() -> list[TrialRecord]:
    return [
        TrialRecord("a", 1, {"lr": 0.1}, {1: epoch(1, 0.9), 2: epoch(2, 0.6)}, "completed"),
        TrialRecord("b", 2, {"lr": 0.01}, {1: epoch(1, 0.7), 2: epoch(2, 0.3)}, "completed"),
        TrialRecord("c", 3, {"lr": 1.0}, {1: epoch(1, NAN, diverged=1)}, "diverged"),
        TrialRecord("d", 4, {"lr": 0.5}, {}, None, node="n2"),  # still running when stopped
    ]


def test_trials_table_ranks_the_records_at_their_best_epoch() -> None:
    table = trials_table(records(), tiny_spec())
    assert list(table["trial"]) == [2, 1, 3, 4]
    best = table.iloc[0]
    assert (best["trial_id"], best["best_epoch"], best["best_val_loss"]) == ("b", 2, 0.3)
    assert best["best_train_loss"] == 0.15 and best["config.lr"] == 0.01
    assert list(table["epochs"]) == [2, 2, 1, 0]
    assert list(table["status"]) == ["completed", "completed", "diverged", "interrupted"]
    assert table.iloc[3]["node"] == "n2" and math.isnan(table.iloc[3]["best_val_loss"])
    assert "pareto" not in table  # one objective


def test_trials_table_of_several_objectives_has_the_pareto_column() -> None:
    spec = tiny_spec(objective=[{"metric": "val_loss"}, {"metric": "params"}])
    recs = records()
    for record, params in zip(recs, (100, 900, 1, 1), strict=True):
        for row in record.epochs.values():
            row["params"] = params
    table = trials_table(recs, spec)
    assert dict(zip(table["trial"], table["pareto"], strict=True)) == {
        1: True,  # fewer parameters than 2
        2: True,  # the lower loss
        3: False,  # diverged: no finite loss
        4: False,  # never reported
    }


def study(tmp_path: Path, table: pd.DataFrame, finalists: Finalists | None = None) -> StudyResult:
    return StudyResult(tiny_spec(), "tiny-1", tmp_path, table, 1.0, finalists=finalists)


def test_a_studys_best_is_its_first_trial_with_an_objective(tmp_path: Path) -> None:
    result = study(tmp_path, trials_table(records(), tiny_spec()))
    assert result.best["trial"] == 2 and result.winner["trial"] == 2
    assert result.status_counts() == {"completed": 2, "diverged": 1, "interrupted": 1}
    assert result.pareto.empty and list(result.pareto.columns) == list(result.trials.columns)
    nothing = study(
        tmp_path, rank_trials(rows(None, None), "val_loss", "min").drop(columns="best_val_loss")
    )
    assert nothing.best is None and nothing.winner is None
    assert study(tmp_path, pd.DataFrame()).status_counts() == {}


def test_the_winner_is_the_finalist_with_the_best_rerun_mean(tmp_path: Path) -> None:
    table = trials_table(records(), tiny_spec())
    finalists_table = pd.DataFrame({"trial_id": ["z", "a", "b"], "mean": [NAN, 0.5, 0.6]})
    finalists = Finalists("val_loss", "min", pd.DataFrame(), finalists_table)
    assert finalists.winner["trial_id"] == "a"  # a re-run mean of NaN cannot win
    result = study(tmp_path, table, finalists)
    assert result.best["trial_id"] == "b" and result.winner["trial_id"] == "a"
    no_mean = Finalists("val_loss", "min", pd.DataFrame(), finalists_table.iloc[:1])
    assert no_mean.winner is None and study(tmp_path, table, no_mean).winner["trial_id"] == "b"
    unknown = Finalists("val_loss", "min", pd.DataFrame(), finalists_table.iloc[:1].fillna(0.1))
    assert study(tmp_path, table, unknown).winner["trial_id"] == "b"  # not in the table
    assert Finalists("val_loss", "min", pd.DataFrame(), pd.DataFrame()).winner is None
