"""What tuner writes into MLflow and reads back: tag keys, column names, the objective's encoding.

Every writer (tracking, retrain) and every reader (runs, export, the dashboard data) goes through
these names, so a run written by one part of tuner is read the same way by every other.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from trainables import metrics as m
from tuner.results import outcomes

# MLflow's own tags
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
NOTE_TAG = "mlflow.note.content"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"

# tuner's tags on every run it creates
ROLE_TAG = "tuner.role"
STUDY_ROLE, TRIAL_ROLE, TRAIN_ROLE = "study", "trial", "train"
STUDY_TAG = "tuner.study"

# the parent run of a study execution
EXECUTION_TAG = "tuner.execution"
MODEL_TAG = "tuner.model"  # the model family, or the training function's name (LOOP_TAG)
LOOP_TAG = "tuner.loop"  # the plug-in training function that trained the trials (spec `loop`)
DATASET_TAG = "tuner.dataset"  # JSON: the dataset section
OBJECTIVE_TAG = "tuner.objective"  # "metric:mode", see encode_objective (the first objective)
OBJECTIVES_TAG = "tuner.objectives"  # several objectives: "val_loss:min,params:min"
SEED_TAG = "tuner.seed"
TRAINING_TAG = "tuner.training"  # JSON: the training section (precision, compile, ...)
RESULTS_PATH_TAG = "tuner.results_path"
OPTUNA_TAG = "tuner.optuna"  # storage#study_name, password redacted
PLUGINS_TAG = "tuner.plugins"  # JSON: [{entry, module, sha256}], files as artifacts plugins/*.py
STOP_REASON_TAG = "tuner.stop_reason"  # completed | time_budget | patience | interrupted
WARM_START_TAG = "tuner.warm_start"  # JSON: {study, run_id, enqueued, skipped: {trial: why}}
EXTENDED_TAG = "tuner.num_samples"  # N, once `tuner resume --set search.num_samples=N` extended it

# a trial's child run
CONFIG_TAG = "tuner.config"  # JSON: the trial's hyperparameters
TRIAL_ID_TAG = "tuner.trial_id"  # also the Optuna trial's user attribute
#: the Optuna user attribute of a trial told FAIL because its study was interrupted
INTERRUPTED_ATTR = "tuner.interrupted"
TRIAL_NUMBER_TAG = "tuner.trial_number"
GPU_IDS_TAG = "tuner.gpu_ids"  # the GPU ids Ray assigned the trial ("" for none)
DEVICE_TAG = "tuner.device"  # what the trial trained on: "cuda:0" or "cpu"
WORKERS_TAG = "tuner.workers"  # its data-parallel workers (resources.workers; 1: none)
#: a data-parallel trial's workers' Ray node ids, in rank order, comma-separated; its
#: GPU_IDS_TAG then holds each worker's GPU ids, one worker's per ';'-separated part
WORKER_NODES_TAG = "tuner.worker_nodes"
GPU_SHARE_TAG = "tuner.gpu_share"  # the GPU share of its last epoch (resources.gpu, or auto's)
PARETO_TAG = "tuner.pareto"  # several objectives: "true" on the Pareto front, else "false"
TRIAL_STATUS_TAG = "trial_status"
DIAGNOSIS_TAG = "diagnosis"
ERROR_TAG = "error"

# a finalist's re-run (`selection`): a child run of the study's parent, like a trial's
FINALIST_ROLE = "finalist"
CONFIRMS_TRIAL_TAG = "tuner.confirms_trial"  # the number of the tuned trial it re-runs
CONFIRMS_RUN_TAG = "tuner.confirms_run"  # that trial's run id
# SEED_TAG: the re-run's own seed; TRIAL_ID_TAG, CONFIG_TAG: the tuned trial's
TUNED_PREFIX = "tuned_"  # tuned_<objective>: the tuned trial's best-epoch score, on each re-run
# the parent run of a study with finalists
WINNER_TRIAL_TAG = "tuner.winner_trial"  # the winning finalist's trial number
WINNER_RUN_TAG = "tuner.winner_run_id"  # its tuned trial's run id

# a `tuner train` run (and DEVICE_TAG: where it trained)
SOURCE_RUN_TAG = "tuner.source_run_id"

#: the trials table's hyperparameter columns: "config.lr", "config.batch_size", ...
CONFIG_PREFIX = "config."
BEST_PREFIX = "best_"
BEST_EPOCH = "best_epoch"
PARETO = "pareto"  # several objectives: the trials table's column, True on the Pareto front
IMPORTANCE_PREFIX = "importance."
STATUS_COUNT_PREFIX = "trials_"  # a parent run's count of trials per status: trials_completed
DIAGNOSIS_COUNT_PREFIX = "diagnosis_"
TRIALS_TOTAL = "trials_total"
DEFAULT_OBJECTIVE = (m.VAL_LOSS, "min")


def best(metric: str) -> str:
    """The summary metric (and trials-table column) of `metric` at a trial's best epoch."""
    return f"{BEST_PREFIX}{metric}"


def encode_objective(metric: str, mode: str) -> str:
    return f"{metric}:{mode}"


def decode_objective(tags: Mapping[str, str]) -> tuple[str, str]:
    """(metric, mode) of a study's parent run; runs written before the tag existed: val_loss."""
    text = tags.get(OBJECTIVE_TAG)
    if not text or ":" not in text:
        return DEFAULT_OBJECTIVE
    metric, mode = text.split(":", 1)
    return metric, mode


def encode_objectives(objectives: list[tuple[str, str]]) -> str:
    return ",".join(encode_objective(metric, mode) for metric, mode in objectives)


def decode_objectives(tags: Mapping[str, str]) -> list[tuple[str, str]]:
    """Every (metric, mode) of a study's parent run, the first leading; one for single-objective
    studies (and runs written before the tag existed)."""
    text = tags.get(OBJECTIVES_TAG)
    if not text:
        return [decode_objective(tags)]
    pairs = [item.split(":", 1) for item in text.split(",") if ":" in item]
    return [(metric, mode) for metric, mode in pairs] or [decode_objective(tags)]


def config_columns(config: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's hyperparameters as trials-table columns."""
    return {f"{CONFIG_PREFIX}{k}": v for k, v in config.items()}


def config_from_columns(row: Mapping[str, Any]) -> dict[str, Any]:
    """The hyperparameters back out of a trials-table row (every config.* column)."""
    return {k.removeprefix(CONFIG_PREFIX): v for k, v in row.items() if k.startswith(CONFIG_PREFIX)}


def trial_config(tags: Mapping[str, str]) -> dict[str, Any]:
    """A child run's hyperparameters, from its config tag."""
    return json.loads(tags.get(CONFIG_TAG, "{}"))


def trial_status(tags: Mapping[str, str], default: str = "running") -> str:
    """A child run's status tag, in today's vocabulary (old runs said stopped_by_asha)."""
    return outcomes.current_status(tags.get(TRIAL_STATUS_TAG, default))
