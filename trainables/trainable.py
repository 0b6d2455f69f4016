"""The Ray Tune function trainable: config -> model -> epochs -> `tune.report` (+ checkpoint).

With `data_parallel` (which trains a trial on several workers with this module's
`train_epochs`), the only module of `trainables` that imports Ray. The dataset arrives once
through the object store (`tune.with_parameters`); what to train and for how long arrives as
`TrialSettings`, so the trial's config holds nothing but its hyperparameters. A study whose
spec names a `loop` trains with that registered training function instead of `TrainingRun`; its
reports become the same result rows and checkpoints (`train_with_function`).
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from trainables import metrics as m
from trainables import plugins
from trainables.contracts import TrialContext
from trainables.data import Dataset
from trainables.loop import TrainingOptions, TrainingRun, load_state, save_state
from trainables.plugins import PluginCode
from trainables.reporting import ReportsAhead
from trainables.training_functions import TRAINING_FUNCTIONS, EpochReports, TrialEnded
from trainables.usage import TrialOutOfMemory, UsageMeter, out_of_memory_message

CHECKPOINT_FILE = "state.pt"
NODE_ID = "node_id"  # which Ray node ran the epoch (not a metric)
GPU_IDS = "gpu_ids"  # the GPU ids Ray assigned the trial, "0" or "0,1" ("" for none; not a metric)
DEVICE = "device"  # what the trial trains on: "cuda:0" or "cpu" (not a metric)
#: a data-parallel trial's workers' Ray nodes, in rank order, comma-separated (not a metric);
#: its GPU_IDS then hold each worker's ids, one worker's per ';'-separated part
WORKER_NODES = "worker_nodes"
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
    #: the registered training function that trains each trial (spec `loop`), instead of
    #: `TrainingRun` on `model`
    loop: str | None = None
    #: what a training function's every report must hold besides train_loss and val_loss: the
    #: objectives' metrics
    required_metrics: tuple[str, ...] = ()
    #: `resources.gpu: auto`: a trial that runs out of GPU memory below a whole GPU raises, to
    #: be retried at twice the share; otherwise (or at a whole GPU) it ends `out_of_memory`
    retry_out_of_memory: bool = False
    #: data-parallel workers per trial (`resources.workers`; above 1: `trainables.data_parallel`)
    workers: int = 1
    #: where those workers go: "pack" (few nodes) or "spread" (one node each)
    placement: str = "pack"
    #: GPUs per worker (`resources.gpu`, a whole one or none when workers > 1)
    gpus: float = 0.0


def trial_device() -> torch.device:
    """CUDA when Ray gave this trial a GPU (Ray sets CUDA_VISIBLE_DEVICES), else CPU."""
    if ray.get_gpu_ids() and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")


def gpu_share() -> float:
    """The share of a GPU Ray assigned this trial (0: none, or not in a Ray worker)."""
    if not ray.is_initialized():  # get_runtime_context() would start a Ray
        return 0.0
    try:
        return float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))
    except (AssertionError, AttributeError, RuntimeError):
        return 0.0


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
    test metrics too. Out of GPU memory, it raises `TrialOutOfMemory` to be retried at a larger
    share (`settings.retry_out_of_memory`, below a whole GPU), or ends with a last result that
    says so (`metrics.OUT_OF_MEMORY`)."""
    for code in settings.plugins:
        plugins.ensure(code)
    meter = UsageMeter(trial_device(), gpu_share())
    try:
        run_trial(config, data, settings, meter)
    except torch.cuda.OutOfMemoryError as error:
        if settings.retry_out_of_memory and 0 < meter.share < 1:
            raise TrialOutOfMemory(out_of_memory_message(meter.share, error)) from error
        tune.report(meter.out_of_memory_row(meter.epochs + 1))


def run_trial(
    config: dict[str, Any], data: Dataset, settings: TrialSettings, meter: UsageMeter
) -> None:
    """`train_trial`'s epochs, `meter` measuring them."""
    device = meter.device
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(settings.cpus)))
    if settings.loop is not None:
        train_with_function(config, data, settings, meter)
        return
    hparams, seed, epochs = trial_plan(config, settings)
    run = training_run(hparams, data, settings, device, seed)
    state = saved_state(tune.get_checkpoint())
    # each epoch trains while the driver handles the one before (`ReportsAhead`); an epoch
    # cancelled by a stop or a failed report ends in that stop or error as the block is left
    with ReportsAhead(tune.report, run.cancel) as reports:
        train_epochs(run, data, settings, meter, epochs, state, reporting_ahead(reports))


def training_run(
    hparams: dict[str, Any], data: Dataset, settings: TrialSettings, device: torch.device, seed: int
) -> TrainingRun:
    """The trial's `TrainingRun`: the study's max_epochs is the lr schedule's budget, for a
    finalist re-run to its best epoch too (it follows the tuned trial's curve)."""
    return TrainingRun(
        settings.model,
        hparams,
        data,
        device=device,
        seed=seed,
        options=settings.training,
        max_epochs=settings.max_epochs,
    )


def saved_state(checkpoint: tune.Checkpoint | None) -> dict[str, Any] | None:
    """The state a trial's checkpoint holds (on CPU, wherever written), or None."""
    if not checkpoint:
        return None
    with checkpoint.as_directory() as folder:
        return load_state(Path(folder) / CHECKPOINT_FILE)


def report_to_tune(result: dict[str, Any], folder: Path | None) -> None:
    """One epoch's result to Ray Tune, with the checkpoint in `folder` when there is one (then
    removed: Ray has copied it when `tune.report` returns)."""
    try:
        tune.report(
            result, checkpoint=None if folder is None else tune.Checkpoint.from_directory(folder)
        )
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def reporting_ahead(reports: ReportsAhead) -> Reporter:
    """A `Reporter` that returns while Ray Tune still handles the result, so the next epoch
    trains meanwhile; the checkpoint's folder is removed once Ray has copied it."""

    def send(result: dict[str, Any], folder: Path | None) -> None:
        if folder is None:
            reports.report(result)
            return
        reports.report(result, tune.Checkpoint.from_directory(folder), str(folder))

    return send


#: what `train_epochs` sends each epoch to: the result row and the folder of its checkpoint,
#: which is the reporter's to remove once it has sent it
Reporter = Callable[[dict[str, Any], Path | None], None]


def train_epochs(
    run: TrainingRun,
    data: Dataset,
    settings: TrialSettings,
    meter: UsageMeter,
    epochs: int,
    state: dict[str, Any] | None,
    reporter: Reporter,
    placement: dict[str, str] | None = None,
    checkpoints: bool = True,
) -> None:
    """Train `run` from `state` (a checkpoint's, or None) to `epochs`, sending each epoch's
    result row to `reporter` with, every `settings.checkpoint_every_s` (and after the first
    epoch), a checkpoint that resumes the trial exactly (none when not `checkpoints`: a
    data-parallel worker other than the first). `placement`: where it ran (default: here)."""
    reported: list[dict[str, float]] = []  # every epoch's numbers, kept in each checkpoint
    if state:
        reported = list(state.pop(REPORTED_STATE, []))
        run.load_state_dict(state)
        meter.resume(reported)
    earlier = list(reported)

    placement = placement_keys(meter.device) if placement is None else placement
    costs = run.costs(latency=settings.measure_latency)  # once: the architecture is fixed
    last_checkpoint = -math.inf
    while run.epoch < epochs:
        result = {**run.run_epoch(), **costs, **placement, **meter.epoch()}
        meter.epochs = run.epoch
        if run.epoch == epochs and data.has_test and not result.get(m.DIVERGED):
            result.update(run.test_metrics(data.x_test, data.y_test))
        reported.append({k: v for k, v in result.items() if isinstance(v, int | float)})
        if earlier:
            result[m.EARLIER_EPOCHS], earlier = earlier, []
        if result.get(m.DIVERGED):
            reporter(result, None)  # no checkpoint of a diverged model; the trial ends here
            return
        if not checkpoints or time.monotonic() - last_checkpoint < settings.checkpoint_every_s:
            reporter(result, None)
            continue
        # written before the next epoch changes the state; the reporter removes it once sent
        folder = Path(tempfile.mkdtemp(prefix="checkpoint-"))
        save_state({**run.state_dict(), REPORTED_STATE: reported}, folder / CHECKPOINT_FILE)
        reporter(result, folder)
        last_checkpoint = time.monotonic()


def placement_keys(device: torch.device) -> dict[str, str]:
    """Where an epoch ran, on every result row (not metrics)."""
    return {
        NODE_ID: ray.get_runtime_context().get_node_id(),
        GPU_IDS: ",".join(str(i) for i in ray.get_gpu_ids()),
        DEVICE: str(device),
    }


def train_with_function(
    config: dict[str, Any], data: Dataset, settings: TrialSettings, meter: UsageMeter
) -> None:
    """Train one trial with the study's training function: its reports become the built-in
    loop's result rows, its checkpoints tuner's (the function's state, device-independent, with
    the epoch and every earlier row), restored as `trial.state` with the epochs left."""
    entry = TRAINING_FUNCTIONS.get(settings.loop)
    device = meter.device
    hparams, seed, epochs = trial_plan(config, settings)
    reported: list[dict[str, float]] = []  # every epoch's numbers, kept in each checkpoint
    start, state = 0, None
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            saved = load_state(Path(folder) / CHECKPOINT_FILE)  # on CPU, wherever written
        start, state = int(saved["epoch"]), saved["state"]
        reported = list(saved.get(REPORTED_STATE, []))
        meter.resume(reported)
    if start >= epochs:
        return
    earlier = list(reported)
    rules = EpochReports(entry.name, range(start + 1, epochs + 1), settings.required_metrics)
    placement = placement_keys(device)
    last_checkpoint = -math.inf

    def report(epoch: int, metrics: Any, to_save: dict[str, Any] | None) -> None:
        nonlocal earlier, last_checkpoint
        result: dict[str, Any] = {**rules.row(epoch, metrics), **placement, **meter.epoch()}
        meter.epochs = epoch
        reported.append({k: v for k, v in result.items() if isinstance(v, int | float)})
        if earlier:
            result[m.EARLIER_EPOCHS], earlier = earlier, []
        if result.get(m.DIVERGED):
            tune.report(result)  # no checkpoint of a diverged model; the trial ends here
            raise TrialEnded
        if to_save is None or time.monotonic() - last_checkpoint < settings.checkpoint_every_s:
            tune.report(result)
            return
        with tempfile.TemporaryDirectory() as folder:
            file = Path(folder) / CHECKPOINT_FILE
            save_state({"epoch": epoch, "state": to_save, REPORTED_STATE: reported}, file)
            if last_checkpoint == -math.inf:
                readable(entry.name, epoch, file)
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))
        last_checkpoint = time.monotonic()

    torch.manual_seed(seed)
    trial = TrialContext(
        hp=dict(hparams),
        seed=seed,
        device=device,
        epochs=rules.epochs,
        state=state,
        data=data,
        reporter=report,
    )
    try:
        entry.fn(trial)
    except TrialEnded:
        return


def readable(name: str, epoch: int, file: Path) -> None:
    """Refuse, at a trial's first checkpoint, a state that would not load back on resume
    (`torch.load(weights_only=True)` reads tensors, numbers, strings, lists and dicts)."""
    try:
        load_state(file)
    except Exception as exc:
        message = " ".join(str(exc).split())[:300]
        raise ValueError(
            f"training function {name!r}: report(epoch={epoch}, checkpoint=...) holds something "
            "a checkpoint cannot load back (use tensors, numbers, strings, and lists and dicts "
            f"of them, e.g. model.state_dict()): {message}"
        ) from None
