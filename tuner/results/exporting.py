"""Best configs out of a study, as files `tuner train` accepts.

The exported format is SPEC.md's "Exported config": model, dataset, hyperparameters, the epoch
count to train (the trial's best epoch), the metrics it reached and where it came from. Trials
are ranked by their best-epoch objective, as everywhere else. With several objectives,
`--pareto` writes every config on the Pareto front instead, one file each.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trainables import metrics as m
from tuner.cluster.redaction import redact
from tuner.errors import SpecError
from tuner.results.exported_plugins import fetch_plugins
from tuner.results.finalists import confirmed_metrics, finalists_table, rerun_from_run
from tuner.results.trials import Finalists, plain
from tuner.safe_names import file_name
from tuner.spec.job_spec import (
    DatasetSpec,
    JobSpec,
    LoopName,
    ModelName,
    Precision,
    format_validation_error,
    load_plugins,
    read_yaml_file,
    show,
    without_loop_model,
)
from tuner.spec.plugin_files import relative_entries, resolve_entries
from tuner.tracking import schema
from tuner.tracking.runs import (
    client_for,
    finalist_runs,
    find_study_run,
    pareto_trial_runs,
    ranked_trial_runs,
)

FORMATS = ("yaml", "json")


class ExportedTraining(BaseModel):
    """How the study's trials trained, so that `tuner train` trains the same way. Files
    exported before this section existed have none: fp32, no compile."""

    model_config = ConfigDict(extra="forbid")

    precision: Precision = "fp32"
    compile: bool = False
    #: the trial's data-parallel workers (resources.workers): `tuner train` trains on as many
    workers: int = Field(1, ge=1)


def exported_training(spec: JobSpec) -> ExportedTraining:
    """The spec's training section as far as it concerns retraining, with the worker count."""
    return ExportedTraining(
        precision=spec.training.precision,
        compile=spec.training.compile,
        workers=spec.resources.workers,
    )


def training_from_tag(text: str | None, workers: str | None = None) -> ExportedTraining:
    """A study parent run's training tag (runs written before it existed have none), and the
    trial run's worker count (`tuner.workers`; none before data-parallel trials: 1)."""
    fields = json.loads(text) if text else {}  # data_on_device is the cluster's business
    known = set(ExportedTraining.model_fields) - {"workers"}
    return ExportedTraining(
        **{k: v for k, v in fields.items() if k in known}, workers=int(workers or 1)
    )


#: the parent run's param holding the study's epoch budget (the spec, flattened)
MAX_EPOCHS_PARAM = "scheduler.max_epochs"


def schedule_epochs(hyperparameters: dict[str, Any], max_epochs: Any) -> int | None:
    """The study's epoch budget when the config's lr_schedule is spread over one (any schedule
    but `constant`), else None: the exported config says only what applies."""
    if hyperparameters.get("lr_schedule", "constant") == "constant" or max_epochs is None:
        return None
    return int(max_epochs)


class ExportedConfig(BaseModel):
    """What `tuner export` writes and `tuner train` reads."""

    model_config = ConfigDict(extra="forbid")

    #: plug-in files (relative to this config's folder) or modules; imported before `model` and
    #: `dataset` are validated
    plugins: list[str] = []
    #: the model family; with `loop`, the loop's name (written so, read back as omitted)
    model: ModelName | None = None
    #: the plug-in training function the study trained with (`tuner train` runs it again)
    loop: LoopName | None = None
    dataset: DatasetSpec
    hyperparameters: dict[str, Any]
    epochs: int = Field(ge=1)  # the trial's best epoch
    #: the epochs the trial's lr_schedule was spread over (the study's scheduler.max_epochs),
    #: when it had one: `tuner train` follows the same curve to `epochs`
    schedule_epochs: int | None = Field(None, ge=1)
    seed: int = 0  # the study's seed: same initialisation and shuffling as the trial
    training: ExportedTraining = ExportedTraining()
    metrics: dict[str, Any] = {}
    source: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _loop_names_the_model(cls, raw: Any) -> Any:
        return without_loop_model(raw)

    @model_validator(mode="after")
    def _model_or_loop(self) -> ExportedConfig:
        if self.loop is not None:
            self.model = self.loop
        elif self.model is None:
            raise ValueError("model is required and has no default (or loop: a training function)")
        return self

    def as_dict(self) -> dict[str, Any]:
        """The config as written: what says nothing is left out (no plug-ins; dataset keys at
        their defaults, but the split's `val_fraction` and `seed`), and reads back the same."""
        data = self.model_dump(mode="json")
        if not data["plugins"]:
            del data["plugins"]
        if data["loop"] is None:
            del data["loop"]
        if data["schedule_epochs"] is None:
            del data["schedule_epochs"]
        if data["training"]["workers"] == 1:  # one process, as every config before workers
            del data["training"]["workers"]
        dataset = self.dataset.model_dump(mode="json", exclude_none=True)
        fields = DatasetSpec.model_fields
        data["dataset"] = {
            key: value
            for key, value in dataset.items()
            if key in ("name", "val_fraction", "seed") or value != fields[key].default
        }
        return data


def exported_config(
    spec: JobSpec,
    row: pd.Series,
    rank: int,
    study: str,
    confirmed: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One ranked row of a study's trials table as an exported config; `confirmed`: what its
    finalist re-runs measured (`driver.finalists.confirmed_metrics`), when it was a finalist."""
    keys = (m.VAL_LOSS, m.VAL_ACC, m.TRAIN_LOSS, *m.MODEL_COSTS)
    metrics = {k: plain(row.get(schema.best(k))) for k in keys}
    metrics["diagnosis"] = plain(row.get("diagnosis"))
    metrics.update(confirmed or {})
    hyperparameters = {
        k: plain(v) for k, v in schema.config_from_columns(row).items() if plain(v) is not None
    }
    return ExportedConfig(
        plugins=relative_entries(spec.plugins),  # the copies beside the study's results
        model=spec.model,
        loop=spec.loop,
        dataset=spec.dataset,
        hyperparameters=hyperparameters,
        epochs=int(row[schema.BEST_EPOCH]),
        schedule_epochs=schedule_epochs(hyperparameters, spec.scheduler.max_epochs),
        seed=spec.search.seed,
        training=exported_training(spec),
        metrics={k: v for k, v in metrics.items() if v is not None},
        source={"study": study, "trial_id": row["trial_id"], "rank": rank},
    ).as_dict()


# --------------------------------------------------------------------------- from MLflow


def config_from_runs(
    parent,
    child,
    rank: int,
    tracking_uri: str,
    plugins: list[str] | None = None,
    confirmed: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """SPEC.md's exported config from a study's parent run and one of its trial runs; `plugins`
    name the plug-ins as written beside the config (imported already); `confirmed`: what its
    finalist re-runs measured, when it was a finalist."""
    tags, metrics = child.data.tags, child.data.metrics
    hyperparameters = schema.trial_config(tags)
    summary = {
        m.VAL_LOSS: metrics.get(schema.best(m.VAL_LOSS)),
        m.VAL_ACC: metrics.get(schema.best(m.VAL_ACC)),
        m.TRAIN_LOSS: metrics.get(f"{m.TRAIN_LOSS}_at_best"),
        **{k: metrics.get(schema.best(k)) for k in m.MODEL_COSTS},
        "diagnosis": tags.get(schema.DIAGNOSIS_TAG),
        **(confirmed or {}),
    }
    source = {
        "study": parent.data.tags.get(schema.STUDY_TAG),
        "execution": parent.info.run_name,
        "mlflow_run_id": child.info.run_id,
        "parent_run_id": parent.info.run_id,
        "trial_id": tags.get(schema.TRIAL_ID_TAG),
        "rank": rank,
    }
    if schema.PARETO_TAG in tags:
        source["pareto"] = tags[schema.PARETO_TAG] == "true"
    if redact(tracking_uri) == tracking_uri:  # never write a password into a file
        source["tracking_uri"] = tracking_uri
    return ExportedConfig(
        plugins=plugins or [],
        model=parent.data.tags[schema.MODEL_TAG],
        loop=parent.data.tags.get(schema.LOOP_TAG),
        dataset=json.loads(parent.data.tags[schema.DATASET_TAG]),
        hyperparameters=hyperparameters,
        epochs=int(metrics[schema.BEST_EPOCH]),
        schedule_epochs=schedule_epochs(hyperparameters, parent.data.params.get(MAX_EPOCHS_PARAM)),
        seed=int(parent.data.tags.get(schema.SEED_TAG, 0)),
        training=training_from_tag(
            parent.data.tags.get(schema.TRAINING_TAG), tags.get(schema.WORKERS_TAG)
        ),
        metrics={k: v for k, v in summary.items() if v is not None},
        source=source,
    ).as_dict()


def export_study(
    study: str,
    tracking_uri: str,
    top_k: int = 1,
    fmt: str = "yaml",
    out: Path | None = None,
    pareto: bool = False,
    trust_plugins: bool = False,
    show: Callable[[str], None] = print,
) -> list[Path]:
    """Write the top-k configs of a study; `out` is a file for one config, a folder for several.
    The study's plug-in files go to `plugins/` beside them: from files the user has, or, with
    `trust_plugins`, from its parent run, each shown (`show`) first (`exported_plugins`). With
    `pareto`, every config on the Pareto front instead (`export_pareto`)."""
    if top_k < 1:
        raise SpecError(f"--top-k must be at least 1 but got {top_k}")
    if fmt not in FORMATS:
        raise SpecError(f"--format must be one of {list(FORMATS)} but got {fmt!r}")
    client = client_for(tracking_uri)
    parent = find_study_run(client, study)
    if pareto:
        return export_pareto(client, parent, study, tracking_uri, fmt, out, trust_plugins, show)
    children = [r for r in ranked_trial_runs(client, parent) if schema.BEST_EPOCH in r.data.metrics]
    if not children:
        raise SpecError(f"STUDY: {study!r} has no trial with a finite objective to export")
    name = parent.data.tags.get(schema.STUDY_TAG, "study")
    children, confirmed = confirmed_order(client, parent, children)
    ranked = children[:top_k]
    folder = config_paths(list(range(1, len(ranked) + 1)), fmt, out, name)[0].parent
    plugins = fetch_plugins(client, parent, folder, trust_plugins, show)
    load_plugins(resolve_entries(plugins, folder))
    configs = [
        config_from_runs(
            parent, child, rank, tracking_uri, plugins, confirmed.get(child.info.run_id)
        )
        for rank, child in enumerate(ranked, start=1)
    ]
    return write_configs(configs, fmt, out, name)


def export_pareto(
    client,
    parent,
    study: str,
    tracking_uri: str,
    fmt: str,
    out: Path | None,
    trust_plugins: bool = False,
    show: Callable[[str], None] = print,
) -> list[Path]:
    """Every config on the study's Pareto front, one file each named by its trial
    (`<name>-pareto-trial0007.yaml`), ranked (`source.rank`) by the first objective; `out` is a
    folder."""
    objectives = schema.decode_objectives(parent.data.tags)
    if len(objectives) < 2:
        raise SpecError(
            f"--pareto: study {study!r} has one objective ({objectives[0][0]}), so no Pareto "
            "front; export its best with --top-k"
        )
    front = [r for r in pareto_trial_runs(client, parent) if schema.BEST_EPOCH in r.data.metrics]
    if not front:
        raise SpecError(f"STUDY: {study!r} has no finished trial on its Pareto front to export")
    if out is not None and out.suffix in (".yaml", ".yml", ".json"):
        raise SpecError(f"--out {str(out)!r}: with --pareto it must be a folder (one file each)")
    name = parent.data.tags.get(schema.STUDY_TAG, "study")
    folder = out if out is not None else Path.cwd()
    plugins = fetch_plugins(client, parent, folder, trust_plugins, show)
    load_plugins(resolve_entries(plugins, folder))
    paths = []
    for rank, child in enumerate(front, start=1):
        number = int(child.data.tags.get(schema.TRIAL_NUMBER_TAG, 0))
        path = folder / f"{file_name(name)}-pareto-trial{number:04d}.{fmt}"
        write_config(path, config_from_runs(parent, child, rank, tracking_uri, plugins))
        paths.append(path)
    return paths


def finalists_from_runs(client, parent) -> Finalists | None:
    """A study's finalists as its re-runs' MLflow runs tell (None: it had none)."""
    runs = finalist_runs(client, parent)
    if not runs:
        return None
    metric, mode = schema.decode_objective(parent.data.tags)
    reruns = pd.DataFrame([rerun_from_run(run, metric) for run in runs])
    reruns = reruns.sort_values(["trial", "seed"]).reset_index(drop=True)
    return Finalists(metric, mode, reruns, finalists_table(reruns, metric, mode))


def confirmed_order(client, parent, ranked: list) -> tuple[list, dict[str, dict[str, Any]]]:
    """The trial runs ranked by confirmed score: the finalists first, by their re-runs' mean
    (the winner first), then the other trials by their tuned score; and, by run id, what each
    finalist's re-runs measured."""
    finalists = finalists_from_runs(client, parent)
    if finalists is None:
        return ranked, {}
    confirmed = {
        row["run_id"]: confirmed_metrics(row, finalists.metric)
        for _, row in finalists.table.iterrows()
        if row["run_id"]
    }
    order = {run_id: i for i, run_id in enumerate(confirmed)}
    first = sorted(
        (r for r in ranked if r.info.run_id in order), key=lambda r: order[r.info.run_id]
    )
    return first + [r for r in ranked if r.info.run_id not in order], confirmed


def config_paths(ranks: list[int], fmt: str, out: Path | None, name: str) -> list[Path]:
    """`out` itself for a single config named *.yaml/*.json, else `<name>-rank<k>` in a folder."""
    if len(ranks) == 1 and out is not None and out.suffix in (".yaml", ".yml", ".json"):
        return [out]
    folder = out if out is not None else Path.cwd()
    return [folder / f"{file_name(name)}-rank{rank}.{fmt}" for rank in ranks]


def write_configs(
    configs: list[dict[str, Any]], fmt: str, out: Path | None, name: str
) -> list[Path]:
    """One file per config (see `config_paths`)."""
    paths = config_paths([int(c["source"]["rank"]) for c in configs], fmt, out, name)
    for path, config in zip(paths, configs, strict=True):
        write_config(path, config)
    return paths


def write_config(path: Path, config: dict[str, Any]) -> None:
    """One exported config, as JSON or YAML by the file's suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (
        json.dumps(config, indent=2)
        if path.suffix == ".json"
        else yaml.safe_dump(config, sort_keys=False)
    )
    path.write_text(text)


def load_exported(path: Path) -> ExportedConfig:
    """Read and validate an exported config (YAML or JSON); problems are SpecErrors. Its
    plug-ins are imported first (files relative to the config) and come back as absolute paths."""
    raw = read_yaml_file(path, "config file")  # JSON is YAML
    if not isinstance(raw, dict):
        raise SpecError(f"config file {show(str(path))} must hold a mapping, got {show(raw)}")
    if isinstance(raw.get("plugins"), list) and all(isinstance(e, str) for e in raw["plugins"]):
        raw["plugins"] = resolve_entries(raw["plugins"], Path(path).resolve().parent)
    load_plugins(raw.get("plugins"))
    try:
        return ExportedConfig.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, ExportedConfig, "exported config")) from None
