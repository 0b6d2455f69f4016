"""The finalists' re-runs: the search's best configs trained again with new seeds, to their best
epoch, as Ray Tune trials of the study's own trainable on the same cluster, with the test split
in their data. Which trials and seeds, and what the re-runs say, is `tuner.results.finalists`."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from ray import tune

from trainables.trainable import FINALIST
from tuner.driver.progress import FinalistRecorder, trial_dirname
from tuner.results import outcomes
from tuner.results.finalists import finalist_seeds, finalists_table, plan_finalists, rerun_row
from tuner.results.trials import Finalists
from tuner.spec.job_spec import JobSpec

FINALISTS_FOLDER = "finalists"  # the finalists' Ray run, inside the study's Ray run folder


@dataclass
class FinalistRuns:
    """The finalists table, and each re-run's per-epoch rows by its Ray trial id."""

    finalists: Finalists
    curves: dict[str, list[dict[str, float]]]


def run_finalists(
    spec: JobSpec,
    trainable: Any,
    location: str,
    trials: pd.DataFrame,
    configs: dict[str, dict[str, Any]],
    run_ids: dict[str, str],
    *,
    announce: bool,
    max_concurrent: int | None = None,
) -> FinalistRuns:
    """Train the best `selection.finalists` trials of `trials` again, `selection.seeds` times
    each, in the study folder at `location` (a folder left by an earlier execution, of an
    interrupted or extended study, is replaced). `configs` and `run_ids` are by Ray trial id.
    `max_concurrent`: re-runs at once (default search.max_concurrent; fewer for data-parallel
    trials whose worker groups would not all fit)."""
    selection = spec.selection
    assert selection is not None
    metric, mode = spec.objective.metric, spec.objective.mode
    seeds = finalist_seeds(spec.search.seed, selection.seeds)
    plans, note = plan_finalists(trials, configs, metric, selection.finalists, seeds)
    if not plans:
        empty = pd.DataFrame()
        return FinalistRuns(
            Finalists(metric, mode, empty, finalists_table(empty, metric, mode), note), {}
        )
    if announce:
        print(
            f"Finalists: {len(plans) // selection.seeds} configs trained again, "
            f"{selection.seeds} seeds each, to their best epoch"
        )
    if "://" not in location:
        shutil.rmtree(Path(location) / FINALISTS_FOLDER, ignore_errors=True)
    recorder = FinalistRecorder(metric, mode)
    tune.Tuner(
        trainable,
        param_space={FINALIST: tune.grid_search([plan.as_config() for plan in plans])},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=max_concurrent or spec.search.max_concurrent,
            reuse_actors=True,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=FINALISTS_FOLDER,
            storage_path=location,  # shared storage: finalists run on any node
            failure_config=tune.FailureConfig(max_failures=spec.failure.max_retries),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=[recorder],
            verbose=0,
            log_to_file=True,
        ),
    ).fit()
    reruns = [
        {
            **rerun_row(
                recorder.plans[trial_id],
                record.history[-1] if record.history else None,
                metric,
                run_ids.get(recorder.plans[trial_id]["trial_id"]),
            ),
            "rerun_id": trial_id,
            "status": record.status or outcomes.INTERRUPTED,
        }
        for trial_id, record in recorder.trials.items()
    ]
    frame = pd.DataFrame(reruns).sort_values(["trial", "seed"]).reset_index(drop=True)
    table = finalists_table(frame, metric, mode)
    curves = {trial_id: record.history for trial_id, record in recorder.trials.items()}
    return FinalistRuns(Finalists(metric, mode, frame, table, note), curves)
