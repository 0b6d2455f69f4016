"""`tuner train`: train one exported config to completion and log it, with the model, to MLflow.

The config is rebuilt on the same data and split, with the study's seed and training options
(precision, compile); the run carries the same curves, summary and diagnosis as a trial's, the
device it trained on, and rank 1 is registered as `<study>-best`. The model is logged on CPU.
When the study held out a test split (`dataset.test_fraction`), the trained model is scored on it
once, at the end: `test_loss` (and `test_acc`), the figures to ship it on.

A config exported from a `loop` study runs the plug-in's training function again, from scratch,
for the same epochs; its reports make the history (test metrics: what its last epoch reported)
and the last checkpoint it passed is logged as the artifact `model/state.pt` (load it with
`torch.load(path, weights_only=True)`); there is no module to log or register.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainables import metrics as m
from tuner.errors import SpecError, StudyError
from tuner.results.exporting import ExportedConfig, load_exported
from tuner.spec.job_spec import DiagnosticsSpec, ObjectiveSpec, load_plugins
from tuner.spec.plugin_files import code_paths, plugins_tag
from tuner.tracking import schema
from tuner.tracking.buffer import SUPPRESS_URLS
from tuner.tracking.inputs import as_dataset_inputs, dataset_inputs
from tuner.tracking.run_writes import (
    as_params,
    epoch_metrics,
    log_batch,
    log_trial_end,
    now_ms,
)
from tuner.tracking.runs import client_for

DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainResult:
    run_id: str
    history: list[dict[str, float]]
    diagnosis: str
    registered_model: str | None
    device: str = "cpu"
    test: dict[str, float] = field(default_factory=dict)  # test_loss, test_acc: with a test split
    #: a training function's last checkpoint, logged as this artifact path (None: none passed)
    state_artifact: str | None = None

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1]


def training_device(requested: str) -> str:
    """`--device`: auto is CUDA when torch sees a GPU, else CPU; cuda without one is refused."""
    import torch

    if requested not in DEVICES:
        raise SpecError(f"--device must be one of {list(DEVICES)} but got {requested!r}")
    cuda = torch.cuda.is_available()
    if requested == "cuda" and not cuda:
        raise SpecError(
            f"--device cuda: no CUDA GPU is available on this machine (torch {torch.__version__} "
            "sees none); use --device cpu or --device auto"
        )
    if requested == "auto":
        return "cuda" if cuda else "cpu"
    return requested


def train_config(
    path: Path,
    tracking_uri: str,
    epochs: int | None = None,
    register: bool = True,
    device: str = "auto",
    workers: int | None = None,
) -> TrainResult:
    """Train one exported config on the same data and split, with the study's training options,
    on `device` (auto, cpu or cuda) and the trial's data-parallel workers (`workers` overrides
    them; several start a local Ray); log it, with the model, to MLflow."""
    from trainables.data import DataOptions, DatasetError, load_dataset
    from trainables.loop import TrainingOptions, TrainingRun

    config = load_exported(path)
    if epochs is not None and epochs < 1:
        raise SpecError(f"--epochs must be at least 1 but got {epochs}")
    workers = config.training.workers if workers is None else workers
    if workers < 1:
        raise SpecError(f"--workers must be at least 1 but got {workers}")
    if workers > 1 and config.loop is not None:
        raise SpecError(
            f"--workers {workers}: training function {config.loop!r} trains in one process"
        )
    where = training_device(device)
    options = DataOptions(**config.dataset.model_dump())
    try:
        data = load_dataset(options)
    except DatasetError as exc:
        raise SpecError(str(exc)) from None
    inputs = dataset_inputs(data, options)  # the same digests as the study's runs
    if config.loop is not None:
        return train_loop_config(config, data, where, epochs or config.epochs, tracking_uri, inputs)
    options = TrainingOptions(precision=config.training.precision, compile=config.training.compile)
    # the lr schedule's budget: the study's, so that the trial's curve is followed to its best
    # epoch; with --epochs, the epochs asked for
    budget = epochs or config.schedule_epochs or config.epochs
    epochs = epochs or config.epochs
    run = TrainingRun(
        config.model,
        config.hyperparameters,
        data,
        device=where,
        seed=config.seed,
        options=options,
        max_epochs=budget,
    )
    if workers > 1:
        history, test = train_on_workers(config, data, run, where, workers, epochs, budget)
    else:
        history = []
        for _ in range(epochs):
            history.append(run.run_epoch())
            if history[-1].get(m.DIVERGED):
                break
        test = run.test_metrics(data.x_test, data.y_test) if data.has_test else {}
    example = data.x_val[:4]
    return log_trained_model(
        config,
        run.model,
        example,
        history,
        tracking_uri,
        register,
        device=where,
        inputs=inputs,
        test=test,
    )


def train_on_workers(
    config: ExportedConfig,
    data,
    run,
    device: str,
    workers: int,
    epochs: int,
    budget: int,
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Train `config` on `workers` data-parallel workers (Ray Train on a local Ray, as a trial
    with that many workers trains) for `epochs`; `run` gets the first worker's model at the
    end. Returns the epochs' rows and the last epoch's test metrics (none without a split)."""
    import tempfile

    from ray.util.queue import Queue

    from trainables.data_parallel import run_worker_group, worker_group
    from trainables.loop import load_state
    from trainables.trainable import FINALIST, REPORTED_STATE, TrialSettings
    from tuner.driver.ray_session import ray_session

    settings = TrialSettings(
        model=config.model,
        max_epochs=budget,
        seed=config.seed,
        checkpoint_every_s=0.0,  # every epoch: the last one's model is the one logged
        training=run.options,
        workers=workers,
        gpus=1.0 if device == "cuda" else 0.0,
    )
    history: list[dict[str, float]] = []
    last: list[bytes] = []

    def on_row(result: dict[str, Any], checkpoint: bytes | None) -> None:
        history.append({k: v for k, v in result.items() if isinstance(v, int | float)})
        if checkpoint is not None:
            last[:] = [checkpoint]

    # a finalist's plan: these hyperparameters, this seed, these epochs (the budget: the study's)
    plan = {FINALIST: {"hparams": config.hyperparameters, "seed": config.seed, "epochs": epochs}}
    with ray_session(), tempfile.TemporaryDirectory() as folder:
        results = Queue(maxsize=1, actor_options={"num_cpus": 0})
        trainer = worker_group(plan, data, settings, None, results, folder)
        run_worker_group(trainer, results, on_row)
    if not history:
        raise StudyError("tuner train: the workers ended without reporting an epoch")
    if last:
        state = load_state(io.BytesIO(last[0]))
        state.pop(REPORTED_STATE, None)
        run.load_state_dict(state)
    test = {k: history[-1].pop(k) for k in (m.TEST_LOSS, m.TEST_ACC) if k in history[-1]}
    return history, test


STATE_ARTIFACT = "model/state.pt"


def train_loop_config(
    config: ExportedConfig, data, device: str, epochs: int, tracking_uri: str, inputs: list[dict]
) -> TrainResult:
    """`tuner train` of a config a `loop` study exported: its training function run again, the
    history its reports make, and its last checkpoint logged as `STATE_ARTIFACT`."""
    from trainables.training_functions import run_training_function

    history, state = run_training_function(
        config.loop, config.hyperparameters, data, device, config.seed, epochs
    )
    if not history:
        raise SpecError(
            f"training function {config.loop!r} reported no epoch; it must call "
            "trial.report(epoch, metrics) for each epoch of trial.epochs"
        )
    last = history[-1]
    test = {k: last[k] for k in (m.TEST_LOSS, m.TEST_ACC) if k in last}
    return log_trained_model(
        config, None, None, history, tracking_uri, False, device, inputs, test, state=state
    )


@contextlib.contextmanager
def mlflow_echoes_off() -> Iterator[None]:
    """Around logging and registering the model: MLflow's lines there repeat what `tuner train`
    prints ("Successfully registered model", "Created version", on a server "View run ..." and
    "View experiment ..." at each end of the run), and torch's export notes on the input
    example's shape say nothing to the user. Failures still raise."""
    saved = os.environ.get(SUPPRESS_URLS)
    os.environ[SUPPRESS_URLS] = "true"
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        if saved is None:
            os.environ.pop(SUPPRESS_URLS, None)
        else:
            os.environ[SUPPRESS_URLS] = saved


def log_trained_model(
    config: ExportedConfig,
    model,
    input_example,
    history: list[dict[str, float]],
    tracking_uri: str,
    register: bool,
    device: str = "cpu",
    inputs: list[dict] = (),
    test: dict[str, float] | None = None,
    state: dict | None = None,
) -> TrainResult:
    """An MLflow run with the curves, diagnosis, device, dataset inputs (`tracking.inputs`), the
    test split's scores (`test`, logged once) and the model (moved to CPU); rank 1 goes to the
    registry. Without a model (a training function's run), its last checkpoint `state` is
    logged as `STATE_ARTIFACT` instead."""
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.entities import Metric

    client = client_for(tracking_uri)
    study = config.source.get("study") or "tuner-train"
    experiment = client.get_experiment_by_name(study)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(study)
    rank = config.source.get("rank")
    plugins = load_plugins(config.plugins)
    run = client.create_run(
        experiment_id,
        run_name=f"train-{study}" + (f"-rank{rank}" if rank else ""),
        tags={
            schema.ROLE_TAG: schema.TRAIN_ROLE,
            schema.STUDY_TAG: study,
            schema.SOURCE_RUN_TAG: str(config.source.get("mlflow_run_id", "")),
            schema.DEVICE_TAG: device,
            **plugins_tag(plugins),  # which code the model's family came from
            **({schema.LOOP_TAG: config.loop} if config.loop else {}),
        },
    )
    run_id = run.info.run_id
    ts = now_ms()
    log_batch(
        client,
        run_id,
        metrics=[p for row in history for p in epoch_metrics(row, ts)]
        + [Metric(key, float(value), ts, len(history)) for key, value in (test or {}).items()],
        params=as_params(
            {
                "model": config.model,
                "epochs": len(history),
                "dataset": config.dataset.model_dump(exclude_none=True),
                "training": config.training.model_dump(),
                **config.hyperparameters,
            }
        ),
    )
    if inputs:
        client.log_inputs(run_id, datasets=as_dataset_inputs(inputs))
    verdict = log_trial_end(
        client,
        run_id,
        history,
        ObjectiveSpec(),
        DiagnosticsSpec(),
        f"train {study}",
        headline=f"`tuner train` of {study}"
        + (f" rank {rank}" if rank else "")
        + f": **{len(history)} epochs**",
    )
    if model is None:
        artifact = log_state(client, run_id, state) if state is not None else None
        with mlflow_echoes_off():
            client.set_terminated(run_id, status="FINISHED")
        return TrainResult(
            run_id, history, verdict.diagnosis, None, device, dict(test or {}), artifact
        )
    registered = f"{study}-best" if register and rank == 1 and config.source.get("study") else None
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper: log the model itself
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow_echoes_off(), mlflow.start_run(run_id=run_id):
        mlflow.pytorch.log_model(
            model.cpu().eval(),
            name="model",
            input_example=input_example,
            registered_model_name=registered,
            # stated, not inferred: inference loads the model in a subprocess and warns about
            # local version labels such as torch's "+cpu"
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            # the plug-in code the model's classes live in, loaded with it from the model's folder
            code_paths=code_paths(plugins) or None,
        )
    with mlflow_echoes_off():
        client.set_terminated(run_id, status="FINISHED")
    return TrainResult(run_id, history, verdict.diagnosis, registered, device, dict(test or {}))


def log_state(client, run_id: str, state: dict) -> str:
    """A training function's checkpoint as the run's artifact `STATE_ARTIFACT` (on CPU)."""
    import tempfile

    from trainables.loop import save_state

    folder_name, file_name = STATE_ARTIFACT.split("/")
    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / file_name
        save_state(state, file)
        client.log_artifact(run_id, str(file), folder_name)
    return STATE_ARTIFACT
