"""`data_parallel`: one trial from 1 to 2 data-parallel workers on CPU (`resources.workers`).

The same config, seed and global batch trained for the same epochs twice: by one worker
(`TrainingRun` in this process, 1 torch thread, as a trial with cpu: 1) and by two Ray Train
workers of 1 CPU each, gloo, exactly as a 2-worker trial trains (`trainables.data_parallel`'s
worker group; the first worker's rows). Measured: epochs per second from each side's
`epoch_time_s` (an epoch's training and evaluation, the all-reduces included, start-up not),
their ratio (the speed-up; 2 would be perfect) and the efficiency (speed-up / 2); and, for the
record, the two-worker run's wall clock with Ray Train's start-up (worker group, process
group). Quick: the digits MLP (small: the all-reduce of every step weighs); full: the CNN on
the 5,000 MNIST digits, where each step has more to compute. On a 2-core machine two workers
share the two cores with the driver, so the figure is a floor.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any

from benchmarks.common import Benchmark, abab, spread

#: (model, dataset, hyperparameters, epochs, repeats)
QUICK = ("mlp", "digits", {"hidden_units": 256, "num_layers": 2, "batch_size": 128}, 3, 1)
FULL = ("cnn", "mnist_sample", {"batch_size": 128}, 3, 3)


def one_worker(model: str, data: Any, hparams: dict[str, Any], epochs: int) -> list[float]:
    """Each epoch's seconds, trained by one worker in this process on one thread."""
    import torch

    from trainables import metrics as m
    from trainables.loop import TrainingRun

    torch.set_num_threads(1)
    run = TrainingRun(model, hparams, data, seed=0, max_epochs=epochs)
    return [run.run_epoch()[m.EPOCH_TIME_S] for _ in range(epochs)]


def two_workers(model: str, data: Any, hparams: dict[str, Any], epochs: int) -> dict[str, Any]:
    """Each epoch's seconds on the first of two Ray Train workers, and the run's wall clock."""
    from ray.util.queue import Queue

    from trainables import metrics as m
    from trainables.data_parallel import worker_group
    from trainables.trainable import TrialSettings

    settings = TrialSettings(model=model, max_epochs=epochs, workers=2, cpus=1.0)
    results = Queue(maxsize=epochs + 1, actor_options={"num_cpus": 0})
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        worker_group(hparams, data, settings, None, results, folder).fit()
    wall = time.perf_counter() - started
    rows = [results.get(timeout=10)[0] for _ in range(results.size())]
    results.shutdown()
    return {"epoch_s": [r[m.EPOCH_TIME_S] for r in rows], "wall_s": wall}


def data_parallel(quick: bool) -> dict[str, Any]:
    import ray

    from trainables.data import DataOptions, load_dataset

    model, dataset, hparams, epochs, repeats = QUICK if quick else FULL
    data = load_dataset(DataOptions(name=dataset))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    samples = []
    try:
        for order in abab(repeats, "one", "two"):
            figures: dict[str, Any] = {}
            for side in order:
                if side == "one":
                    figures["one_epoch_s"] = one_worker(model, data, hparams, epochs)
                else:
                    two = two_workers(model, data, hparams, epochs)
                    figures["two_epoch_s"], figures["two_wall_s"] = two["epoch_s"], two["wall_s"]
            one_rate = epochs / sum(figures["one_epoch_s"])
            two_rate = epochs / sum(figures["two_epoch_s"])
            samples.append(
                {
                    "order": list(order),
                    **figures,
                    "one_epochs_per_s": one_rate,
                    "two_epochs_per_s": two_rate,
                    "ratio": two_rate / one_rate,
                }
            )
    finally:
        ray.shutdown()
    ratios = [s["ratio"] for s in samples]
    speedup = statistics.median(ratios)
    median = sorted(samples, key=lambda s: s["ratio"])[len(samples) // 2]
    return {
        "name": "data_parallel",
        "ratio": speedup,
        "spread": spread(ratios) if len(samples) > 1 else None,
        "target": "higher",
        "detail": f"{model} on {dataset} ({hparams}), {epochs} epochs: 1 worker "
        f"{median['one_epochs_per_s']:.2f} epochs/s, 2 workers {median['two_epochs_per_s']:.2f} "
        f"epochs/s: speed-up {speedup:.2f}, efficiency {speedup / 2:.0%}; the 2-worker run "
        f"took {median['two_wall_s']:.1f} s of wall clock with Ray Train's start-up",
        "spans": {
            "one": "each epoch's training + evaluation (epoch_time_s), one process, 1 thread",
            "two": "the first worker's epoch_time_s (its all-reduces and waits included), two "
            "Ray Train workers of 1 CPU, gloo; start-up outside, shown as two_wall_s",
        },
        "samples": samples,
    }


BENCHMARKS: dict[str, Benchmark] = {"data_parallel": data_parallel}
