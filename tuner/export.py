"""Best configs out of a study, and `tuner train` of one fixed config.

The exported format is SPEC.md's "Exported config": model, dataset, hyperparameters, the epoch
count to train (the trial's best epoch), the metrics it reached and where it came from. Trials
are ranked by their best-epoch objective, as everywhere else.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainables import metrics as m
from tuner.errors import SpecError
from tuner.spec import (
    DatasetSpec,
    DiagnosticsSpec,
    JobSpec,
    ModelName,
    ObjectiveSpec,
    format_validation_error,
    read_yaml_file,
    show,
)
from tuner.tracking import (
    CONFIG_TAG,
    EXECUTION_TAG,
    PARENT_TAG,
    ROLE_TAG,
    STUDY_TAG,
    as_params,
    client_for,
    epoch_metrics,
    log_batch,
    log_trial_end,
    now_ms,
    redact,
)

CONFIG_PREFIX = "config."
FORMATS = ("yaml", "json")


def plain(value: Any) -> Any:
    """numpy scalars -> Python scalars and NaN -> None, so YAML and JSON stay readable."""
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and math.isnan(value) else value


class ExportedConfig(BaseModel):
    """What `tuner export` writes and `tuner train` reads."""

    model_config = ConfigDict(extra="forbid")

    model: ModelName
    dataset: DatasetSpec
    hyperparameters: dict[str, Any]
    epochs: int = Field(ge=1)  # the trial's best epoch
    seed: int = 0  # the study's seed: same initialisation and shuffling as the trial
    metrics: dict[str, Any] = {}
    source: dict[str, Any] = {}

    def as_dict(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        data["dataset"] = self.dataset.model_dump(mode="json", exclude_none=True)
        return data


def exported_config(spec: JobSpec, row: pd.Series, rank: int, study: str) -> dict[str, Any]:
    """One ranked row of a study's trials table as an exported config."""
    metrics = {k: plain(row.get(f"best_{k}")) for k in (m.VAL_LOSS, m.VAL_ACC, m.TRAIN_LOSS)}
    metrics["diagnosis"] = plain(row.get("diagnosis"))
    return ExportedConfig(
        model=spec.model,
        dataset=spec.dataset,
        hyperparameters={
            k.removeprefix(CONFIG_PREFIX): plain(v)
            for k, v in row.items()
            if k.startswith(CONFIG_PREFIX) and plain(v) is not None
        },
        epochs=int(row["best_epoch"]),
        seed=spec.search.seed,
        metrics={k: v for k, v in metrics.items() if v is not None},
        source={"study": study, "trial_id": row["trial_id"], "rank": rank},
    ).as_dict()


# --------------------------------------------------------------------------- from MLflow

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def find_study_run(client, study: str):
    """The parent run of `study`: a run id, an execution's name, or a study name's newest."""
    from mlflow.exceptions import MlflowException

    if RUN_ID.match(study):
        try:
            run = client.get_run(study)
        except MlflowException:
            run = None
        if run is None or run.data.tags.get(ROLE_TAG) != "study":
            raise SpecError(f"STUDY: {study!r} is not the run id of a study in the tracking store")
        return run
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", study):
        raise SpecError(f"STUDY: {study!r} is neither a study name nor an MLflow run id")
    experiments = [e.experiment_id for e in client.search_experiments()]
    for tag in (STUDY_TAG, EXECUTION_TAG):  # a study name, or one execution's name
        runs = client.search_runs(
            experiments,
            filter_string=f"tags.`{tag}` = '{study}' and tags.`{ROLE_TAG}` = 'study'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if runs:
            break
    if not runs:
        raise SpecError(
            f"STUDY: no study named {study!r} in the tracking store; `tuner list` shows them"
        )
    return runs[0]


def ranked_trial_runs(client, parent) -> list:
    """The parent's child runs, best best-epoch objective first (no objective: last)."""
    metric, mode = parent.data.tags.get("tuner.objective", "val_loss:min").split(":")
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'",
        max_results=50_000,
    )
    sign = 1 if mode == "min" else -1

    def key(run) -> tuple:
        value = run.data.metrics.get(f"best_{metric}")
        number = int(run.data.tags.get("tuner.trial_number", 0))
        return (value is None, sign * value if value is not None else 0.0, number)

    return sorted(runs, key=key)


def config_from_runs(parent, child, rank: int, tracking_uri: str) -> dict[str, Any]:
    """SPEC.md's exported config from a study's parent run and one of its trial runs."""
    tags, metrics = child.data.tags, child.data.metrics
    summary = {
        m.VAL_LOSS: metrics.get(f"best_{m.VAL_LOSS}"),
        m.VAL_ACC: metrics.get(f"best_{m.VAL_ACC}"),
        m.TRAIN_LOSS: metrics.get("train_loss_at_best"),
        "diagnosis": tags.get("diagnosis"),
    }
    source = {
        "study": parent.data.tags.get(STUDY_TAG),
        "execution": parent.info.run_name,
        "mlflow_run_id": child.info.run_id,
        "parent_run_id": parent.info.run_id,
        "trial_id": tags.get("tuner.trial_id"),
        "rank": rank,
    }
    if redact(tracking_uri) == tracking_uri:  # never write a password into a file
        source["tracking_uri"] = tracking_uri
    return ExportedConfig(
        model=parent.data.tags["tuner.model"],
        dataset=json.loads(parent.data.tags["tuner.dataset"]),
        hyperparameters=json.loads(tags.get(CONFIG_TAG, "{}")),
        epochs=int(metrics["best_epoch"]),
        seed=int(parent.data.tags.get("tuner.seed", 0)),
        metrics={k: v for k, v in summary.items() if v is not None},
        source=source,
    ).as_dict()


def export_study(
    study: str, tracking_uri: str, top_k: int = 1, fmt: str = "yaml", out: Path | None = None
) -> list[Path]:
    """Write the top-k configs of a study; `out` is a file for one config, a folder for several."""
    if top_k < 1:
        raise SpecError(f"--top-k must be at least 1 but got {top_k}")
    if fmt not in FORMATS:
        raise SpecError(f"--format must be one of {list(FORMATS)} but got {fmt!r}")
    client = client_for(tracking_uri)
    parent = find_study_run(client, study)
    children = [r for r in ranked_trial_runs(client, parent) if "best_epoch" in r.data.metrics]
    if not children:
        raise SpecError(f"STUDY: {study!r} has no trial with a finite objective to export")
    configs = [
        config_from_runs(parent, child, rank, tracking_uri)
        for rank, child in enumerate(children[:top_k], start=1)
    ]
    name = parent.data.tags.get("tuner.study", "study")
    return write_configs(configs, fmt, out, name)


def write_configs(
    configs: list[dict[str, Any]], fmt: str, out: Path | None, name: str
) -> list[Path]:
    """One file per config: `out` itself for a single config named *.yaml/*.json, else a folder."""
    suffix = f".{fmt}"
    if len(configs) == 1 and out is not None and out.suffix in (".yaml", ".yml", ".json"):
        paths = [out]
    else:
        folder = out if out is not None else Path.cwd()
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".") or "study"  # never a path
        paths = [folder / f"{safe}-rank{int(c['source']['rank'])}{suffix}" for c in configs]
    for path, config in zip(paths, configs, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        text = (
            json.dumps(config, indent=2)
            if path.suffix == ".json"
            else yaml.safe_dump(config, sort_keys=False)
        )
        path.write_text(text)
    return paths


# --------------------------------------------------------------------------- tuner train


def load_exported(path: Path) -> ExportedConfig:
    """Read and validate an exported config (YAML or JSON); problems are SpecErrors."""
    raw = read_yaml_file(path, "config file")  # JSON is YAML
    if not isinstance(raw, dict):
        raise SpecError(f"config file {show(str(path))} must hold a mapping, got {show(raw)}")
    try:
        return ExportedConfig.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, ExportedConfig, "exported config")) from None


@dataclass
class TrainResult:
    run_id: str
    history: list[dict[str, float]]
    diagnosis: str
    registered_model: str | None

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1]


def train_config(
    path: Path, tracking_uri: str, epochs: int | None = None, register: bool = True
) -> TrainResult:
    """Train one exported config on the same data and split; log it, with the model, to MLflow."""
    from trainables.data import DataOptions, DatasetError, load_dataset
    from trainables.loop import TrainingRun

    config = load_exported(path)
    if epochs is not None and epochs < 1:
        raise SpecError(f"--epochs must be at least 1 but got {epochs}")
    try:
        data = load_dataset(DataOptions(**config.dataset.model_dump()))
    except DatasetError as exc:
        raise SpecError(str(exc)) from None
    run = TrainingRun(config.model, config.hyperparameters, data, seed=config.seed)
    history = []
    for _ in range(epochs or config.epochs):
        history.append(run.run_epoch())
        if history[-1].get(m.DIVERGED):
            break
    example = data.x_val[:4]
    return log_trained_model(config, run.model, example, history, tracking_uri, register)


def log_trained_model(
    config: ExportedConfig,
    model,
    input_example,
    history: list[dict[str, float]],
    tracking_uri: str,
    register: bool,
) -> TrainResult:
    """An MLflow run with the curves, diagnosis and the model; rank 1 goes to the registry."""
    import mlflow
    import mlflow.pytorch
    import torch

    client = client_for(tracking_uri)
    study = config.source.get("study") or "tuner-train"
    experiment = client.get_experiment_by_name(study)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(study)
    rank = config.source.get("rank")
    run = client.create_run(
        experiment_id,
        run_name=f"train-{study}" + (f"-rank{rank}" if rank else ""),
        tags={
            ROLE_TAG: "train",
            STUDY_TAG: study,
            "tuner.source_run_id": str(config.source.get("mlflow_run_id", "")),
        },
    )
    run_id = run.info.run_id
    ts = now_ms()
    log_batch(
        client,
        run_id,
        metrics=[p for row in history for p in epoch_metrics(row, ts)],
        params=as_params(
            {
                "model": config.model,
                "epochs": len(history),
                "dataset": config.dataset.model_dump(exclude_none=True),
                **config.hyperparameters,
            }
        ),
    )
    verdict = log_trial_end(
        client, run_id, history, ObjectiveSpec(), DiagnosticsSpec(), f"train {study}"
    )
    registered = f"{study}-best" if register and rank == 1 and config.source.get("study") else None
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        mlflow.pytorch.log_model(
            model.cpu().eval(),
            name="model",
            input_example=input_example,
            registered_model_name=registered,
            # stated, not inferred: inference loads the model in a subprocess and warns about
            # local version labels such as torch's "+cpu"
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
    client.set_terminated(run_id, status="FINISHED")
    return TrainResult(run_id, history, verdict.diagnosis, registered)
