"""`trainable_vs_bare`: what the real trainable costs per epoch against a hand-written loop.

tuner's trial (`train_trial`: `tune.report` every epoch, a checkpoint per second of training) as
one 1-CPU trial of a local Ray, against the same MLP trained by a minimal loop as a 1-CPU task of
a local Ray: both sides in a Ray worker process, so the ratio is what tuner's trial adds, not what
Ray's worker (its core-worker threads beside the training) costs every Ray Tune user. Only
steady-state epochs are timed on both sides (start-up is `overhead_*`'s business), so the ratio is
the per-epoch price of the trial's loop, reports and checkpoints. Target: >= 0.97 (issue 29).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

try:
    from ray.tune import Callback
except ImportError:  # a bare GPU machine (benchmarks/gpu_check.sh): this benchmark is not run
    Callback = object  # type: ignore[assignment,misc]

from benchmarks.common import Benchmark, abab, alternate, median_sample, repeats_text, spread

REPEATS = 8
#: epochs of each side before `loop_vs_bare` times any: after one, its first run in a process
#: measured the loop 0.94-0.95 of the bare loop, a third run 1.00
WARM_UP_EPOCHS = 5
BARE_MLP = {"hidden_units": 128, "num_layers": 1}  # 784-128-10, Adam 1e-3, batch size 64


def bare_epoch(data, seed: int = 0) -> Callable[[], None]:
    """One epoch of a minimal hand-written loop doing what `TrainingRun.run_epoch` does (one
    shuffled training pass, then loss and accuracy on a validation-sized part of the train split
    and on the validation split), no checkpoints."""
    torch.manual_seed(seed)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    xv, yv = torch.from_numpy(data.x_val), torch.from_numpy(data.y_val)
    xs, ys = x[: len(xv)], y[: len(yv)]
    width = x[0].numel()
    model = nn.Sequential(nn.Flatten(), nn.Linear(width, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def epoch() -> None:
        model.train()
        order = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = order[i : i + 64]
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
        model.eval()
        with torch.inference_mode():
            for inputs, targets in ((xs, ys), (xv, yv)):
                out = model(inputs)
                float(loss_fn(out, targets)), int((out.argmax(1) == targets).sum())

    return epoch


def bare_epochs_per_s(data, epochs: int) -> float:
    """The bare loop's epochs per second: it trains `epochs + 1` epochs and is timed from the
    end of the first, as the trial is."""
    epoch = bare_epoch(data)
    epoch()
    start = time.perf_counter()
    for _ in range(epochs):
        epoch()
    return epochs / (time.perf_counter() - start)


def loop_vs_bare(data, epochs: int) -> dict[str, float]:
    """tuner's loop alone (`TrainingRun.run_epoch`: no Ray, no reports, no checkpoints) against
    the bare loop in this process, one epoch of each in turn (A B B A ...), so that the
    machine's drift, which moves whole runs by a quarter here, falls on both alike: the share
    of the trial's gap that is the loop's own, apart from Ray and reporting."""
    from trainables.loop import TrainingRun

    sides = {
        "loop": TrainingRun("mlp", dict(BARE_MLP), data, max_epochs=epochs + 1).run_epoch,
        "bare": bare_epoch(data),
    }
    seconds: dict[str, list[float]] = {side: [] for side in sides}
    for _ in range(WARM_UP_EPOCHS):  # first-call costs, the allocator's included
        for side in sides.values():
            side()
    for first, second in abab(epochs, *sides):
        for side in (first, second):
            start = time.perf_counter()
            sides[side]()
            seconds[side].append(time.perf_counter() - start)
    loop_ms, bare_ms = (1000 * statistics.median(seconds[side]) for side in ("loop", "bare"))
    return {"ratio": bare_ms / loop_ms, "loop_ms_per_epoch": loop_ms, "bare_ms_per_epoch": bare_ms}


class ReportClock(Callback):
    """When each result of the study's trials reached the driver."""

    def __init__(self):
        self.times: list[float] = []

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.times.append(time.perf_counter())


def bare_in_ray_epochs_per_s(data, epochs: int) -> float:
    """`bare_epochs_per_s` as a 1-CPU task of this process's Ray, one torch thread, as a trial
    has."""
    import ray

    task = ray.remote(num_cpus=1)(one_thread_bare_epochs_per_s)
    return ray.get(task.remote(data, epochs))


def one_thread_bare_epochs_per_s(data, epochs: int) -> float:
    torch.set_num_threads(1)
    return bare_epochs_per_s(data, epochs)


def trial_epochs_per_s(data, epochs: int) -> float:
    """`train_trial` as one 1-CPU trial of this process's Ray: epochs per second from its first
    epoch's report reaching the driver to its last's. The actor's start, the data's transfer,
    the model's build and the first epoch are outside the span."""
    from ray import tune

    from trainables.trainable import TrialSettings, train_trial

    clock = ReportClock()
    settings = TrialSettings(model="mlp", max_epochs=epochs + 1, cpus=1)
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, data=data, settings=settings), {"cpu": 1, "gpu": 0}
    )
    with tempfile.TemporaryDirectory() as folder:
        tune.Tuner(
            trainable,
            param_space=dict(BARE_MLP),
            run_config=tune.RunConfig(
                name="trainable", storage_path=folder, callbacks=[clock], verbose=0
            ),
        ).fit()
    if len(clock.times) != epochs + 1:
        raise RuntimeError(f"the trial reported {len(clock.times)} of {epochs + 1} epochs")
    return epochs / (clock.times[-1] - clock.times[0])


def trainable_vs_bare(quick: bool) -> dict[str, Any]:
    """Both sides alternate in one local Ray of 2 CPUs, started once (outside every span): 8
    short repeats, as this machine's speed drifts by a quarter between runs of seconds."""
    import ray

    from trainables.data import DataOptions, load_dataset
    from tuner.driver.ray_session import QUIET_RAY, ray_session
    from tuner.driver.study_log import logs_to_file

    torch.set_num_threads(1)
    data = load_dataset(DataOptions("mnist_sample"))
    epochs = 20 if quick else 40
    loop = loop_vs_bare(data, 2 * epochs)
    os.environ.update(QUIET_RAY)
    with (
        tempfile.TemporaryDirectory() as logs,
        logs_to_file(Path(logs) / "ray.log"),
        ray_session(num_cpus=2),
    ):
        shared = ray.put(data)
        rounds = alternate(
            {
                "trial": lambda: trial_epochs_per_s(data, epochs),
                "bare": lambda: bare_in_ray_epochs_per_s(shared, epochs),
            },
            repeats=REPEATS,
        )
    samples = [
        {
            "ratio": r["trial"] / r["bare"],
            "order": r["order"],
            "trial_epochs_per_s": r["trial"],
            "bare_epochs_per_s": r["bare"],
        }
        for r in rounds
    ]
    chosen = median_sample(samples)
    return {
        "name": "trainable_vs_bare",
        "ratio": chosen["ratio"],
        "spread": spread([s["ratio"] for s in samples]),
        "target": ">= 0.97",
        "detail": f"MLP 784-128-10 on mnist_sample, 1 thread, {epochs} epochs timed: "
        f"{chosen['trial_epochs_per_s']:.2f} epochs/s (train_trial in Ray) vs "
        f"{chosen['bare_epochs_per_s']:.2f} (hand-written loop in Ray), {repeats_text(samples)}, "
        "alternating which runs first; of that, tuner's loop alone (TrainingRun, no Ray, no "
        f"reports) against the bare loop, epoch by epoch in turn: {loop['ratio']:.3f} "
        f"({loop['loop_ms_per_epoch']:.1f} vs {loop['bare_ms_per_epoch']:.1f} ms an epoch, "
        f"median of {2 * epochs})",
        "spans": {
            "tuner": "train_trial as one 1-CPU trial of a Ray Tune run in a local Ray: from its "
            "first epoch's report reaching the driver to its last's (each epoch: training, "
            "evaluation, tune.report, a checkpoint per second of training); Ray's and the "
            "actor's start, data transfer, model build and the first epoch are outside",
            "baseline": "a hand-written loop as a 1-CPU task of the same local Ray, one torch "
            "thread: from the end of its first epoch to the end of its last; no reports, no "
            "checkpoints; Ray's start and the task's are outside",
        },
        "loop_vs_bare": loop,
        "samples": samples,
    }


BENCHMARKS: dict[str, Benchmark] = {"trainable_vs_bare": trainable_vs_bare}
