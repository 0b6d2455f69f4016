"""`trainable_vs_bare`: what the real trainable costs per epoch against a hand-written loop.

tuner's trial (`train_trial`: `tune.report` every epoch, a checkpoint per second of training) as
one 1-CPU trial of a local Ray, against the same MLP trained by a minimal loop in the benchmark
process. Only steady-state epochs are timed on both sides (start-up is `overhead_*`'s business),
so the ratio is the per-epoch price of reporting and checkpointing. Target: >= 0.97 (issue 29).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

try:
    from ray.tune import Callback
except ImportError:  # a bare GPU machine (benchmarks/gpu_check.sh): this benchmark is not run
    Callback = object  # type: ignore[assignment,misc]

from benchmarks.common import Benchmark, alternate, median_sample, repeats_text, spread

BARE_MLP = {"hidden_units": 128, "num_layers": 1}  # 784-128-10, Adam 1e-3, batch size 64


def bare_epochs_per_s(data, epochs: int, seed: int = 0) -> float:
    """A minimal hand-written loop doing what `TrainingRun.run_epoch` does (one shuffled
    training pass, then loss and accuracy on a validation-sized part of the train split and on
    the validation split), no checkpoints. It trains `epochs + 1` epochs and is timed from the
    end of the first, as the trial is."""
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

    epoch()
    start = time.perf_counter()
    for _ in range(epochs):
        epoch()
    return epochs / (time.perf_counter() - start)


class ReportClock(Callback):
    """When each result of the study's trials reached the driver."""

    def __init__(self):
        self.times: list[float] = []

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.times.append(time.perf_counter())


def trial_epochs_per_s(data, epochs: int) -> float:
    """`train_trial` as one 1-CPU trial in a local Ray: epochs per second from its first epoch's
    report reaching the driver to its last's. Ray's start, the actor's start, the data's
    transfer, the model's build and the first epoch are outside the span."""
    from ray import tune

    from trainables.trainable import TrialSettings, train_trial
    from tuner.driver.ray_session import QUIET_RAY, ray_session
    from tuner.driver.study_log import logs_to_file

    os.environ.update(QUIET_RAY)
    clock = ReportClock()
    settings = TrialSettings(model="mlp", max_epochs=epochs + 1, cpus=1)
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, data=data, settings=settings), {"cpu": 1, "gpu": 0}
    )
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        with logs_to_file(folder / "ray.log"), ray_session(num_cpus=2):
            tune.Tuner(
                trainable,
                param_space=dict(BARE_MLP),
                run_config=tune.RunConfig(
                    name="trainable", storage_path=str(folder), callbacks=[clock], verbose=0
                ),
            ).fit()
    if len(clock.times) != epochs + 1:
        raise RuntimeError(f"the trial reported {len(clock.times)} of {epochs + 1} epochs")
    return epochs / (clock.times[-1] - clock.times[0])


def trainable_vs_bare(quick: bool) -> dict[str, Any]:
    from trainables.data import DataOptions, load_dataset

    torch.set_num_threads(1)
    data = load_dataset(DataOptions("mnist_sample"))
    epochs = 20 if quick else 40
    bare_epochs_per_s(data, 1)  # warm-up: this process's first-call costs
    rounds = alternate(
        {
            "trial": lambda: trial_epochs_per_s(data, epochs),
            "bare": lambda: bare_epochs_per_s(data, epochs),
        },
        repeats=4,
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
        f"{chosen['bare_epochs_per_s']:.2f} (hand-written loop), {repeats_text(samples)}, "
        "alternating which runs first",
        "spans": {
            "tuner": "train_trial as one 1-CPU trial of a local Ray Tune run: from its first "
            "epoch's report reaching the driver to its last's (each epoch: training, evaluation, "
            "tune.report, a checkpoint per second of training); Ray's and the actor's start, "
            "data transfer, model build and the first epoch are outside",
            "baseline": "a hand-written loop in the benchmark process, no Ray: from the end of "
            "its first epoch to the end of its last; no checkpoints",
        },
        "samples": samples,
    }


BENCHMARKS: dict[str, Benchmark] = {"trainable_vs_bare": trainable_vs_bare}
