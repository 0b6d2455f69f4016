"""Finalists: the search's best configs trained again from scratch with new seeds, and what that
says about their tuned scores.

A tuned score is the best of many tries on the validation split it was chosen on, so it flatters
itself. `selection: {finalists: K, seeds: S}` re-runs the K best trials S times each, to their
best epoch, and scores each re-run at its last epoch (no epoch is picked again) on validation and,
with `dataset.test_fraction`, on the test split. This module holds the pure part: which trials and
seeds (`plan_finalists`), and the finalists table (`finalists_table`): per finalist the re-runs'
mean and standard deviation, the test mean, and the **optimism** of its tuned score (tuned minus
the re-runs' mean, and tuned minus the test mean, in the objective's units). The winner is the
finalist with the best mean on the first objective (`spec.objective`), the first row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from trainables import metrics as m
from tuner.results.trials import plain
from tuner.tracking import schema

#: a re-run's columns: the tuned trial it confirms (number, Ray id, MLflow run id), its seed and
#: epochs, the tuned score, its own score (the objective at its last epoch) and its metrics there
RERUN_COLUMNS = (
    "trial",
    "trial_id",
    "run_id",
    "seed",
    "epochs",
    "tuned",
    "score",
    m.VAL_LOSS,
    m.VAL_ACC,
    m.TEST_LOSS,
    m.TEST_ACC,
)
TEST_METRICS = (m.TEST_LOSS, m.TEST_ACC)


@dataclass(frozen=True)
class FinalistPlan:
    """One re-run: the tuned trial's hyperparameters, a new seed, the tuned trial's best epoch."""

    trial: int
    trial_id: str
    hparams: dict[str, Any]
    seed: int
    epochs: int
    tuned: float

    def as_config(self) -> dict[str, Any]:
        """The `trainables.trainable.FINALIST` entry of the re-run's Ray config."""
        return {
            "hparams": self.hparams,
            "seed": self.seed,
            "epochs": self.epochs,
            "trial": self.trial,
            "trial_id": self.trial_id,
            "tuned": self.tuned,
        }


def finalist_seeds(study_seed: int, count: int) -> list[int]:
    """The re-runs' seeds: search.seed + 1, + 2, ... (every search trial used search.seed). Each
    finalist gets the same seeds, so finalists differ by their configs, not their luck."""
    return [(study_seed + i) % 2**32 for i in range(1, count + 1)]


def plan_finalists(
    trials: pd.DataFrame,
    configs: dict[str, dict[str, Any]],
    metric: str,
    finalists: int,
    seeds: list[int],
) -> tuple[list[FinalistPlan], str | None]:
    """The re-runs of the `finalists` best trials of a ranked trials table (`configs`: trial id
    -> hyperparameters as the trial got them), and a note when fewer trials than that finished
    with a finite objective (those there are are re-run)."""
    column = schema.best(metric)
    finished = trials.dropna(subset=[column, schema.BEST_EPOCH]) if len(trials) else trials
    chosen = finished.head(finalists)
    note = None
    if len(chosen) < finalists:
        note = (
            f"selection.finalists: {finalists} asked for, but {len(chosen)} trials finished with "
            f"a finite {metric}; re-running {'those' if len(chosen) != 1 else 'that one'}"
        )
    plans = [
        FinalistPlan(
            int(row["trial"]),
            str(row["trial_id"]),
            configs[row["trial_id"]],
            seed,
            int(row[schema.BEST_EPOCH]),
            float(row[column]),
        )
        for _, row in chosen.iterrows()
        for seed in seeds
    ]
    return plans, note


def rerun_row(
    plan: dict[str, Any], last: dict[str, Any] | None, metric: str, run_id: str | None = None
) -> dict[str, Any]:
    """A re-run as a row (`RERUN_COLUMNS`): `plan` as `FinalistPlan.as_config` wrote it, `last`
    its last epoch's result (None: it reported nothing)."""
    last = last or {}
    values = {k: plain(last.get(k)) for k in (m.VAL_LOSS, m.VAL_ACC, *TEST_METRICS)}
    score = plain(last.get(metric))
    finite = isinstance(score, int | float) and math.isfinite(score)
    return {
        "trial": int(plan["trial"]),
        "trial_id": plan["trial_id"],
        "run_id": run_id,
        "seed": int(plan["seed"]),
        "epochs": int(plan["epochs"]),
        "tuned": float(plan["tuned"]),
        "score": float(score) if finite else float("nan"),
        **values,
    }


def rerun_from_run(run, metric: str) -> dict[str, Any]:
    """A finalist's MLflow run (`tuner.tracking.study_run.log_finalists`) as a re-run row."""
    tags, metrics = run.data.tags, run.data.metrics
    plan = {
        "trial": tags.get(schema.CONFIRMS_TRIAL_TAG, 0),
        "trial_id": tags.get(schema.TRIAL_ID_TAG),
        "seed": tags.get(schema.SEED_TAG, 0),
        "epochs": metrics.get(m.EPOCH, 0),
        "tuned": metrics.get(f"{schema.TUNED_PREFIX}{metric}", float("nan")),
    }
    return rerun_row(plan, metrics, metric, tags.get(schema.CONFIRMS_RUN_TAG))


def finalists_table(reruns: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    """One row per finalist, the winner first (best mean `score`, i.e. the first objective):
    rank, trial, trial_id, run_id, epochs, tuned, runs (re-runs with a finite score), mean, std,
    test_loss/test_acc (means) and their _std, optimism (tuned - mean) and test_optimism (tuned -
    the test mean of the same measure: val_loss against test_loss, val_acc against test_acc)."""
    if reruns.empty:
        return pd.DataFrame(columns=["rank", "trial", "tuned", "mean", "std", "optimism"])
    groups = reruns.groupby("trial", sort=False)
    table = groups.agg(
        trial_id=("trial_id", "first"),
        run_id=("run_id", "first"),
        epochs=("epochs", "first"),
        tuned=("tuned", "first"),
        runs=("score", "count"),
        mean=("score", "mean"),
        std=("score", "std"),
    )
    for key in TEST_METRICS:
        if key in reruns and reruns[key].notna().any():
            table[key] = groups[key].mean()
            table[f"{key}_std"] = groups[key].std()
    table["optimism"] = table["tuned"] - table["mean"]
    test_key = m.TEST_OF.get(metric)
    if test_key in table:
        table["test_optimism"] = table["tuned"] - table[test_key]
    table = table.reset_index().sort_values(
        ["mean", "trial"], ascending=[mode == "min", True], na_position="last"
    )
    table.insert(0, "rank", range(1, len(table) + 1))
    return table.reset_index(drop=True)


def confirmed_metrics(finalist: pd.Series, metric: str) -> dict[str, Any]:
    """What an exported config and the parent run say of a finalist: the re-runs' mean and std
    of the objective, the test means, the optimism."""
    values = {
        f"confirmed_{metric}": finalist.get("mean"),
        f"confirmed_{metric}_std": finalist.get("std"),
        "finalist_runs": finalist.get("runs"),
        "finalist_rank": finalist.get("rank"),
        **{k: finalist.get(k) for k in TEST_METRICS},
        "optimism": finalist.get("optimism"),
        "test_optimism": finalist.get("test_optimism"),
    }
    return {k: plain(v) for k, v in values.items() if plain(v) is not None}
