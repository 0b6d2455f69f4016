"""The Ray Tune function trainable: config -> model -> epochs -> `tune.report` (+ checkpoint).

The only module of `trainables` that imports Ray. The dataset arrives once through the object
store (`tune.with_parameters`); what to train and for how long arrives as `TrialSettings`, so the
trial's config holds nothing but its hyperparameters.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from trainables import metrics as m
from trainables import plugins
from trainables.data import Dataset
from trainables.loop import TrainingOptions, TrainingRun, load_state, save_state
from trainables.plugins import PluginCode

CHECKPOINT_FILE = "state.pt"
NODE_ID = "node_id"  # which Ray node ran the epoch (not a metric)
GPU_IDS = "gpu_ids"  # the GPU ids Ray assigned the trial, "0" or "0,1" ("" for none; not a metric)
DEVICE = "device"  # what the trial trains on: "cuda:0" or "cpu" (not a metric)
REPORTED_STATE = "reported"  # a checkpoint's rows of every epoch to it (`m.EARLIER_EPOCHS`)
#: the config key of a finalist re-run: {"hparams": {...}, "seed": int, "epochs": int, "trial":
#: the tuned trial's number}; a search trial's config is its hyperparameters alone
FINALIST = "_finalist"


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a study shares: the model family, the epoch budget, seed, CPUs and how
    to train (precision, compile, data placement)."""

    model: str
    max_epochs: int
    seed: int = 0
    cpus: float = 1.0
    #: at most one checkpoint per this many seconds of training (always after a trial's first
    #: epoch): an epoch of seconds is checkpointed every time, a sub-second one is not made to
    #: pay the few milliseconds a checkpoint costs; a crash repeats at most this much training
    checkpoint_every_s: float = 1.0
    training: TrainingOptions = TrainingOptions()
    #: the study's plug-ins, imported by each trial before it builds its model
    plugins: tuple[PluginCode, ...] = ()
    #: measure the model's inference latency once (an objective names it); `params` is always
    #: reported, it costs nothing
    measure_latency: bool = False


def trial_device() -> torch.device:
    """CUDA when Ray gave this trial a GPU (Ray sets CUDA_VISIBLE_DEVICES), else CPU."""
    if ray.get_gpu_ids() and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")


def trial_plan(config: dict[str, Any], settings: TrialSettings) -> tuple[dict[str, Any], int, int]:
    """(hyperparameters, seed, epochs): a search trial's are its config, the study's seed and
    max_epochs; a finalist re-run's (`FINALIST`) its tuned config, its own seed, its best epoch."""
    finalist = config.get(FINALIST)
    if finalist is None:
        return config, settings.seed, settings.max_epochs
    return dict(finalist["hparams"]), int(finalist["seed"]), int(finalist["epochs"])


def train_trial(config: dict[str, Any], data: Dataset, settings: TrialSettings) -> None:
    """Train one trial, reporting every epoch with a checkpoint that resumes it exactly. With a
    test split (finalists only: the search's data has none), the last epoch's result carries the
    test metrics too."""
    for code in settings.plugins:
        plugins.ensure(code)
    device = trial_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(settings.cpus)))
    hparams, seed, epochs = trial_plan(config, settings)
    run = TrainingRun(  # the epochs it trains to are the lr schedule's budget
        settings.model,
        hparams,
        data,
        device=device,
        seed=seed,
        options=settings.training,
        max_epochs=epochs,
    )

    reported: list[dict[str, float]] = []  # every epoch's numbers, kept in each checkpoint
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            state = load_state(Path(folder) / CHECKPOINT_FILE)  # on CPU, wherever written
        reported = list(state.pop(REPORTED_STATE, []))
        run.load_state_dict(state)
    earlier = list(reported)

    placement = {
        NODE_ID: ray.get_runtime_context().get_node_id(),
        GPU_IDS: ",".join(str(i) for i in ray.get_gpu_ids()),
        DEVICE: str(device),
    }
    costs = run.costs(latency=settings.measure_latency)  # once: the architecture is fixed
    last_checkpoint = -math.inf
    while run.epoch < epochs:
        result = {**run.run_epoch(), **costs, **placement}
        if run.epoch == epochs and data.has_test and not result.get(m.DIVERGED):
            result.update(run.test_metrics(data.x_test, data.y_test))
        reported.append({k: v for k, v in result.items() if isinstance(v, int | float)})
        if earlier:
            result[m.EARLIER_EPOCHS], earlier = earlier, []
        if result.get(m.DIVERGED):
            tune.report(result)  # no checkpoint of a diverged model; the trial ends here
            return
        if time.monotonic() - last_checkpoint < settings.checkpoint_every_s:
            tune.report(result)
            continue
        with tempfile.TemporaryDirectory() as folder:
            save_state(
                {**run.state_dict(), REPORTED_STATE: reported}, Path(folder) / CHECKPOINT_FILE
            )
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))
        last_checkpoint = time.monotonic()
