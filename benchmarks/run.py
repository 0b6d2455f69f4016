"""Side-by-side performance measurements: `python -m benchmarks.run [--quick] [--json PATH]`.

Each benchmark times tuner against a baseline in the same run, repeats (median of 3), and
reports `{"name", "ratio", "target", "detail"}`. Timings are never asserted in tests; these
ratios are the measure. Implemented so far: trainable_vs_bare, overhead_tiny, overhead_small.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

BENCHMARKS: dict[str, Callable[[bool], dict[str, Any]]] = {}


def benchmark(fn: Callable[[bool], dict[str, Any]]) -> Callable[[bool], dict[str, Any]]:
    BENCHMARKS[fn.__name__] = fn
    return fn


def median_of(repeats: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(repeats))


# --------------------------------------------------------------------------- the training loop


def bare_epochs_per_s(data, epochs: int, seed: int = 0) -> float:
    """A minimal hand-written loop doing what `TrainingRun.run_epoch` does: one shuffled training
    pass, then loss and accuracy on the train and validation splits."""
    torch.manual_seed(seed)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    xv, yv = torch.from_numpy(data.x_val), torch.from_numpy(data.y_val)
    width = x[0].numel()
    model = nn.Sequential(nn.Flatten(), nn.Linear(width, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = order[i : i + 64]
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
        model.eval()
        with torch.inference_mode():
            for inputs, targets in ((x, y), (xv, yv)):
                out = model(inputs)
                float(loss_fn(out, targets)), int((out.argmax(1) == targets).sum())
    return epochs / (time.perf_counter() - start)


def tuner_epochs_per_s(data, epochs: int, seed: int = 0) -> float:
    from trainables.loop import TrainingRun

    run = TrainingRun("mlp", {"hidden_units": 128, "num_layers": 1}, data, seed=seed)
    start = time.perf_counter()
    for _ in range(epochs):
        run.run_epoch()
    return epochs / (time.perf_counter() - start)


@benchmark
def trainable_vs_bare(quick: bool) -> dict[str, Any]:
    from trainables.data import DataOptions, load_dataset

    torch.set_num_threads(1)
    data = load_dataset(DataOptions("mnist_sample"))
    epochs = 3 if quick else 8
    ours = median_of(3, lambda: tuner_epochs_per_s(data, epochs))
    bare = median_of(3, lambda: bare_epochs_per_s(data, epochs))
    return {
        "name": "trainable_vs_bare",
        "ratio": ours / bare,
        "target": ">= 0.95",
        "detail": f"MLP 784-128-10 on mnist_sample, 1 thread: {ours:.2f} epochs/s (tuner) "
        f"vs {bare:.2f} (hand-written loop), median of 3",
    }


# --------------------------------------------------------------------------- study overhead


def study_spec(model: str, dataset: str, trials: int, epochs: int, folder: Path) -> dict:
    space = {
        "mlp": {"hidden_units": {"type": "int", "low": 32, "high": 256}},
        "cnn": {"channels": {"type": "categorical", "choices": [8, 16]}, "conv_blocks": 2},
    }[model]
    return {
        "name": f"bench-{model}",
        "model": model,
        "dataset": {"name": dataset},
        "search_space": {**space, "lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
        "search": {"algorithm": "random", "num_samples": trials, "max_concurrent": 2},
        "scheduler": {"name": "fifo", "max_epochs": epochs},
        "tracking": {"uri": f"sqlite:///{folder / 'mlflow.db'}"},
        "storage": str(folder / "results"),
    }


def _train_config(args: tuple[str, str, dict, int]) -> float:
    """One trial in a plain local process: the same loop, data and epochs, no Ray or MLflow."""
    model, dataset, hparams, epochs = args
    torch.set_num_threads(1)
    from trainables.data import DataOptions, load_dataset
    from trainables.loop import TrainingRun

    run = TrainingRun(model, hparams, load_dataset(DataOptions(dataset)))
    for _ in range(epochs):
        run.run_epoch()
    return run.epoch


def overhead(model: str, dataset: str, trials: int, epochs: int, quick: bool) -> dict[str, Any]:
    """tuner's whole path (Ray start, Optuna, MLflow, checkpoints) against the same trials
    trained by the same loop in 2 local processes; start-up included on both sides."""
    from tuner.spec import spec_from_dict
    from tuner.study import run_study

    def tuner_wall() -> tuple[float, list[dict]]:
        with tempfile.TemporaryDirectory() as folder:
            spec = spec_from_dict(study_spec(model, dataset, trials, epochs, Path(folder)))
            start = time.perf_counter()
            result = run_study(spec, num_cpus=2, show_progress=False)
            wall = time.perf_counter() - start
        configs = [
            {k.removeprefix("config."): v for k, v in row.items() if k.startswith("config.")}
            for _, row in result.trials.iterrows()
        ]
        return wall, configs

    def local_wall(configs: list[dict]) -> float:
        start = time.perf_counter()
        context = multiprocessing.get_context("spawn")
        with context.Pool(2) as pool:
            pool.map(_train_config, [(model, dataset, c, epochs) for c in configs])
        return time.perf_counter() - start

    runs = []
    for _ in range(1 if quick else 3):
        wall, configs = tuner_wall()
        local = local_wall(configs)
        runs.append((wall / local, wall, local))
    ratio, wall, local = sorted(runs)[len(runs) // 2]  # the median run
    return {
        "ratio": ratio,
        "detail": f"{trials} {model} trials x {epochs} epochs on {dataset}, 2 at a time: "
        f"tuner {wall:.1f} s vs local processes {local:.1f} s",
    }


@benchmark
def overhead_tiny(quick: bool) -> dict[str, Any]:
    result = overhead("mlp", "digits", trials=16, epochs=10, quick=quick)
    return {"name": "overhead_tiny", "target": "<= 2.0", **result}


@benchmark
def overhead_small(quick: bool) -> dict[str, Any]:
    result = overhead("cnn", "mnist_sample", trials=16 if not quick else 8, epochs=3, quick=quick)
    return {"name": "overhead_small", "target": "<= 1.15", **result}


# --------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and trials")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS), help="run just these")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    results = []
    for name in args.only or list(BENCHMARKS):
        result = BENCHMARKS[name](args.quick)
        results.append(result)
        print(
            f"{result['name']:<20} ratio {result['ratio']:6.2f}  target {result['target']:<8} "
            f"{result['detail']}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
