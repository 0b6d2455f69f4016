"""The baseline of `overhead_tiny` and `overhead_small`: given configs trained in a pool of plain
local processes, no Ray, Optuna or MLflow: what a user would write without tuner.

Run as a whole process, as `tuner run` is on the other side, so both spans hold Python's start
and imports. It prints one JSON line: when the first trial began training (Unix time).

    python -m benchmarks.local_trials --model mlp --dataset digits --epochs 10 \
        --configs /tmp/x/configs.json --processes 2

Its imports are only what it trains with (torch and `trainables`), so each spawned process
imports no more than a trial needs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

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
    run = TrainingRun(model, hparams, _data, max_epochs=epochs)
    began = time.time()
    for _ in range(epochs):
        run.run_epoch()
    return began


def train_all(model: str, dataset: str, epochs: int, configs: list[dict], processes: int) -> float:
    """Every config trained in a pool of `processes` freshly spawned processes; when the first
    began training."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes, initializer=load_data, initargs=(dataset,)) as pool:
        # chunksize 1: a free process takes the next trial, as Ray Tune gives a free slot one
        began = pool.map(train_config, [(model, c, epochs) for c in configs], chunksize=1)
    return min(began)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--configs", type=Path, required=True, help="a JSON list of configs")
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    configs = json.loads(args.configs.read_text())
    began = train_all(args.model, args.dataset, args.epochs, configs, args.processes)
    done = {"trials": len(configs), "first_epoch_began": began}
    print(json.dumps(done), flush=True)
    return done


if __name__ == "__main__":
    main()
