"""A trial trained by several data-parallel workers (`resources.workers`), on Ray Train.

The Tune trial function (`train_data_parallel`) holds no CPU or GPU itself (`DRIVER_RESOURCES`):
it starts a `TorchTrainer` whose workers each build the trial's `TrainingRun`, wrapped for
DistributedDataParallel (gloo on CPU, NCCL on CUDA: Ray Train sets up the process group and
places the workers), and train it with the same `trainable.train_epochs` a one-worker trial
runs. Each worker trains its shard of every global batch and evaluates its share of the rows,
the sums added up across workers (`TrainingRun.shard`), so every worker measures the same
global metrics. The first worker (rank 0) sends each epoch's row, and its checkpoint in the
one-worker format, to the trial function through a one-item queue; the trial function reports
them to Tune (`tune.report`), so ASHA, the stoppers, Optuna, MLflow and resuming see one trial
exactly as before. Tune's checkpoint is given to every worker on a retry or resume. When Tune
stops the trial, the queue goes and the workers stop after the epoch they are in.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray import tune
from ray.util.queue import Empty, Queue
from torch.nn.parallel import DistributedDataParallel

from trainables import plugins
from trainables.data import Dataset
from trainables.trainable import (
    CHECKPOINT_FILE,
    DEVICE,
    GPU_IDS,
    NODE_ID,
    WORKER_NODES,
    TrialSettings,
    gpu_share,
    report_to_tune,
    saved_state,
    train_epochs,
    training_run,
    trial_plan,
)
from trainables.usage import UsageMeter

#: the trial function's own request: a byte of memory (a Ray request cannot be empty), so that
#: every CPU and GPU of the trial is its workers' (a CPU held here would be one they wait for)
DRIVER_RESOURCES = {"cpu": 0, "gpu": 0, "memory": 1}
#: `resources.placement` -> Ray's placement-group strategy for the trial's workers
STRATEGIES = {"pack": "PACK", "spread": "STRICT_SPREAD"}
#: how often the trial function looks whether the workers have ended, between their epochs
POLL_S = 0.5


class Stopped(Exception):
    """The trial function is gone (Tune stopped the trial): every worker ends after its epoch."""


def train_data_parallel(config: dict[str, Any], data: Dataset, settings: TrialSettings) -> None:
    """The Tune trial function of a `settings.workers`-worker trial: starts the workers, reports
    what the first sends, re-raises what made them fail (Tune then retries the trial from its
    last checkpoint)."""
    results = Queue(maxsize=1, actor_options={"num_cpus": 0})
    state = saved_state(tune.get_checkpoint())
    trainer = worker_group(
        config, data, settings, state, results, tune.get_context().get_trial_dir()
    )
    run_worker_group(trainer, results, report)


def run_worker_group(
    trainer: ray.train.torch.TorchTrainer,
    results: Queue,
    on_row: Callable[[dict[str, Any], bytes | None], None],
) -> None:
    """Run `trainer`'s workers, passing each row (and checkpoint file) its first worker sends to
    `results` to `on_row` as it comes; re-raise what made the workers fail. If `on_row` raises
    (Tune stopped the trial), the queue goes and the workers stop after their epoch."""
    failure: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as error:  # re-raised on the caller's thread
            failure.append(error)

    workers = threading.Thread(target=fit, name="train-workers", daemon=True)
    workers.start()
    try:
        while workers.is_alive() or not results.empty():
            try:
                result, checkpoint = results.get(timeout=POLL_S)
            except Empty:
                continue
            on_row(result, checkpoint)
    finally:
        results.shutdown(force=True)  # a worker waiting to send gets an error, and stops
        workers.join()
    if failure:
        raise failure[0]


def worker_group(
    config: dict[str, Any],
    data: Dataset,
    settings: TrialSettings,
    state: dict[str, Any] | None,
    results: Queue,
    folder: str,
) -> ray.train.torch.TorchTrainer:
    """The trial's `TorchTrainer`: `settings.workers` workers of `settings.cpus` CPU and
    `settings.gpus` GPU each, placed by `settings.placement`, each running `train_worker` from
    `state` (a checkpoint's, or None); the first sends its rows to `results`. Ray Train keeps
    its own run state under `folder`; it does not retry (Tune retries the trial)."""
    return ray.train.torch.TorchTrainer(
        train_worker,
        train_loop_config={
            "config": config,
            "data": data,
            "settings": settings,
            "state": state,
            "results": results,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=settings.workers,
            use_gpu=settings.gpus > 0,
            resources_per_worker={"CPU": settings.cpus, "GPU": settings.gpus},
            placement_strategy=STRATEGIES[settings.placement],
        ),
        run_config=ray.train.RunConfig(
            name="train",
            storage_path=folder,
            failure_config=ray.train.FailureConfig(max_failures=0),
        ),
    )


def report(result: dict[str, Any], checkpoint: bytes | None) -> None:
    """One epoch's row to Tune, with the first worker's checkpoint file when it sent one."""
    if checkpoint is None:
        report_to_tune(result, None)
        return
    folder = Path(tempfile.mkdtemp(prefix="checkpoint-"))
    (folder / CHECKPOINT_FILE).write_bytes(checkpoint)
    report_to_tune(result, folder)  # removes it


def train_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: the trial's `TrainingRun` on this worker's device, wrapped for
    DDP and sharded, trained by `train_epochs` from the trial's checkpoint (if any)."""
    settings: TrialSettings = loop_config["settings"]
    data: Dataset = loop_config["data"]
    for code in settings.plugins:
        plugins.ensure(code)
    context = ray.train.get_context()
    rank, workers = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(settings.cpus)))
    hparams, seed, epochs = trial_plan(loop_config["config"], settings)
    run = training_run(hparams, data, settings, device, seed)
    run.shard(rank, workers, all_reduce_sum, wrap=lambda model: ddp(model, device))
    placement = worker_placement(device)
    meter = UsageMeter(device, gpu_share() * workers)  # the GPUs the whole trial holds
    reporter = FirstWorker(loop_config["results"], device) if rank == 0 else Follower(device)
    try:
        train_epochs(
            run,
            data,
            settings,
            meter,
            epochs,
            loop_config["state"],
            reporter,
            placement=placement,
            checkpoints=rank == 0,
        )
    except Stopped:
        return


def ddp(model: torch.nn.Module, device: torch.device) -> DistributedDataParallel:
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of `tensor` over every worker (a new tensor)."""
    total = tensor.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def worker_placement(device: torch.device) -> dict[str, str]:
    """Where every worker runs, the same on each: the first worker's node and device (the keys
    a one-worker trial reports), every worker's node in rank order, and their GPU ids, one
    worker's per ';'-separated part."""
    here = (ray.get_runtime_context().get_node_id(), ",".join(map(str, ray.get_gpu_ids())))
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, here)
    return {
        NODE_ID: everyone[0][0],
        GPU_IDS: ";".join(gpus for _, gpus in everyone) if any(g for _, g in everyone) else "",
        DEVICE: str(device),
        WORKER_NODES: ",".join(node for node, _ in everyone),
    }


class Follower:
    """A worker other than the first: after each epoch, learns whether to go on."""

    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self, result: dict[str, Any], folder: Path | None) -> None:
        self.go_on(True)

    def go_on(self, sent: bool) -> None:
        """Every worker learns from the first whether its row reached the trial function;
        when it did not (Tune stopped the trial), all stop."""
        flag = torch.tensor([1 if sent else 0], device=self.device)
        dist.broadcast(flag, src=0)
        if not flag.item():
            raise Stopped


class FirstWorker(Follower):
    """The first worker: sends each epoch's row and checkpoint file to the trial function
    (waiting while it still reports the one before), then tells the others whether to go on."""

    def __init__(self, results: Queue, device: torch.device):
        super().__init__(device)
        self.results = results

    def __call__(self, result: dict[str, Any], folder: Path | None) -> None:
        checkpoint = None
        if folder is not None:
            checkpoint = (folder / CHECKPOINT_FILE).read_bytes()
            shutil.rmtree(folder, ignore_errors=True)
        try:
            self.results.put((result, checkpoint))
            sent = True
        except ray.exceptions.RayError:  # the queue went with the trial function
            sent = False
        self.go_on(sent)
