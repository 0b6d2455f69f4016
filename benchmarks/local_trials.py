"""The baseline of `overhead_*`: trials in a pool of plain local processes, no Ray or MLflow.

Its own module so that each spawned process imports only what it trains with (torch and
`trainables`), not the benchmark runner's imports (Ray).
"""

from __future__ import annotations

import time

import torch

_data = None


def load_data(dataset: str) -> None:
    """The pool's initializer: one thread, and the dataset loaded once per process."""
    global _data
    torch.set_num_threads(1)
    from trainables.data import DataOptions, load_dataset

    _data = load_dataset(DataOptions(dataset))


def train_config(args: tuple[str, dict, int]) -> float:
    """One trial: the same loop, data and epochs as a tuner trial. Returns when it started
    training."""
    from trainables.loop import TrainingRun

    model, hparams, epochs = args
    run = TrainingRun(model, hparams, _data)
    began = time.time()
    for _ in range(epochs):
        run.run_epoch()
    return began
