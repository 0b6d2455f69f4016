"""Side-by-side performance measurements: `python -m benchmarks.run [--quick] [--json PATH]`.

Each benchmark times tuner against a baseline in the same run (interleaved, repeated: the median
of 3 in full mode, 1 in quick mode unless said otherwise) and reports `{"name", "ratio",
"target", "detail"}`. Timings are never asserted in tests; these ratios are the measure. Run it
from the repository root on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

BENCHMARKS: dict[str, Callable[[bool], dict[str, Any]]] = {}
FULL_ONLY = {"scale"}


def benchmark(fn: Callable[[bool], dict[str, Any]]) -> Callable[[bool], dict[str, Any]]:
    BENCHMARKS[fn.__name__] = fn
    return fn


def median_run(runs: list[tuple[float, ...]]) -> tuple[float, ...]:
    """The run whose first element (the ratio) is the median."""
    return sorted(runs)[len(runs) // 2]


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
    tuner_epochs_per_s(data, 1), bare_epochs_per_s(data, 1)  # warm-up: first-call costs
    runs = []
    for _ in range(3):  # interleaved, so that both sides see the same machine
        ours, bare = tuner_epochs_per_s(data, epochs), bare_epochs_per_s(data, epochs)
        runs.append((ours / bare, ours, bare))
    ratio, ours, bare = median_run(runs)
    return {
        "name": "trainable_vs_bare",
        "ratio": ratio,
        "target": ">= 0.95",
        "detail": f"MLP 784-128-10 on mnist_sample, 1 thread: {ours:.2f} epochs/s (tuner) "
        f"vs {bare:.2f} (hand-written loop), median of 3",
    }


# --------------------------------------------------------------------------- study overhead


@dataclass(frozen=True)
class Workload:
    """A fixed study: the space random search samples the fixed configs from, and its budget."""

    model: str
    dataset: str
    space: dict[str, Any]
    trials: int
    epochs: int


TINY = Workload(  # sub-second trials: 10 epochs of a 2-layer digits MLP at batch size 16
    "mlp",
    "digits",
    {
        "hidden_units": {"type": "int", "low": 256, "high": 512, "log": True},
        "num_layers": 2,
        "batch_size": 16,
    },
    trials=16,
    epochs=10,
)
SMALL = Workload(  # a few seconds per trial (4 to 7.5 s): 5 epochs of a 2-block CNN on 4,000
    "cnn",  # MNIST digits
    "mnist_sample",
    {"channels": {"type": "categorical", "choices": [8, 16]}, "conv_blocks": 2},
    trials=16,
    epochs=5,
)


def study_spec(work: Workload, folder: Path, tracking_uri: str | None = None, **extra) -> dict:
    lr = {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}
    return {
        "name": f"bench-{work.model}",
        "model": work.model,
        "dataset": {"name": work.dataset},
        "search_space": {**work.space, "lr": lr},
        "search": {
            "algorithm": "random",
            "num_samples": work.trials,
            "max_concurrent": 2,
            "storage": f"sqlite:///{folder / 'optuna.db'}",
        },
        "scheduler": {"name": "fifo", "max_epochs": work.epochs},
        "tracking": {"uri": tracking_uri or f"sqlite:///{folder / 'mlflow.db'}"},
        "storage": str(folder / "results"),
        **extra,
    }


def create_stores(spec) -> None:
    """The MLflow and Optuna stores a user has after their first study (creating an empty MLflow
    SQLite store runs its migrations: ~2 s, once per store)."""
    import optuna

    from tuner.runs import client_for

    if spec.tracking.enabled:
        client_for(spec.tracking.uri).search_experiments()
    optuna.storages.RDBStorage(spec.search.storage)


def journal(results: Path) -> list[dict]:
    from tuner.journal import JOURNAL_FILE, read_journal

    return read_journal(next(results.glob(f"*/{JOURNAL_FILE}")))


def first_epoch_began(events: list[dict]) -> float:
    """When the first trial started training: its first result's time less that epoch's."""
    from trainables import metrics as m

    return min(e["time"] - e["row"][m.EPOCH_TIME_S] for e in events if e["event"] == "result")


def run_tuner(spec_dict: dict, **kwargs) -> tuple[float, float, Any]:
    """(wall, start-up, result) of `run_study`: start-up is the time until a trial trains."""
    from tuner.spec import spec_from_dict
    from tuner.study import run_study

    spec = spec_from_dict(spec_dict)
    create_stores(spec)
    began = time.time()
    start = time.perf_counter()
    result = run_study(spec, num_cpus=2, show_progress=False, **kwargs)
    wall = time.perf_counter() - start
    return wall, first_epoch_began(journal(Path(spec.storage))) - began, result


_local_data = None


def _load_local_data(dataset: str) -> None:
    global _local_data
    torch.set_num_threads(1)
    from trainables.data import DataOptions, load_dataset

    _local_data = load_dataset(DataOptions(dataset))


def _train_config(args: tuple[str, dict, int]) -> float:
    """One trial in a plain local process: the same loop, data and epochs; no Ray or MLflow.
    Returns when it started training."""
    from trainables.loop import TrainingRun

    model, hparams, epochs = args
    run = TrainingRun(model, hparams, _local_data)
    began = time.time()
    for _ in range(epochs):
        run.run_epoch()
    return began


def run_local(work: Workload, configs: list[dict]) -> tuple[float, float]:
    """(wall, start-up) of the same trials in 2 fresh local processes, each loading the data
    once: what a user would write without tuner."""
    called = time.time()
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with context.Pool(2, initializer=_load_local_data, initargs=(work.dataset,)) as pool:
        # chunksize 1: a free process takes the next trial, as Ray Tune gives a free slot one
        began = pool.map(
            _train_config, [(work.model, c, work.epochs) for c in configs], chunksize=1
        )
    return time.perf_counter() - start, min(began) - called


def trial_configs(result) -> list[dict]:
    return [
        {k.removeprefix("config."): v for k, v in row.items() if k.startswith("config.")}
        for _, row in result.trials.sort_values("trial").iterrows()
    ]


def overhead(work: Workload, repeats: int) -> dict[str, Any]:
    """tuner's whole path (Ray start, Optuna, MLflow, checkpoints) against the same configs
    trained by the same loop in 2 local processes; start-up included on both sides."""
    runs = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as folder:
            wall, startup, result = run_tuner(study_spec(work, Path(folder)))
        local, local_startup = run_local(work, trial_configs(result))
        runs.append((wall / local, wall, local, startup, local_startup))
    ratio, wall, local, startup, local_startup = median_run(runs)
    return {
        "ratio": ratio,
        "detail": f"{work.trials} {work.model} trials x {work.epochs} epochs on {work.dataset}, "
        f"2 at a time: tuner {wall:.1f} s vs local processes {local:.1f} s; start-up (until "
        f"the first trial trains) {startup:.1f} s vs {local_startup:.1f} s, median of {repeats}",
        "tuner_s": wall,
        "local_s": local,
        "startup_s": startup,
        "local_startup_s": local_startup,
    }


@benchmark
def overhead_tiny(quick: bool) -> dict[str, Any]:
    return {"name": "overhead_tiny", "target": "<= 2.0", **overhead(TINY, repeats=3)}


@benchmark
def overhead_small(quick: bool) -> dict[str, Any]:
    return {
        "name": "overhead_small",
        "target": "<= 1.15",
        **overhead(SMALL, repeats=1 if quick else 3),
    }


# --------------------------------------------------------------------------- tracking


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def mlflow_server(folder: Path) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1, run as `tuner ui` runs it (SQLite backend, 1 worker,
    MLflow's job runner off), warmed up."""
    import signal

    from tuner.tracking import UI_SERVER_ENV, ui_server_command

    port = free_port()
    command = ui_server_command(
        f"sqlite:///{folder / 'server.db'}", "127.0.0.1", port, folder / "artifacts"
    )
    with open(folder / "server.log", "w") as log:
        server = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **UI_SERVER_ENV},
        )
        uri = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 90
            while True:
                try:
                    with urllib.request.urlopen(f"{uri}/health", timeout=2):
                        break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"mlflow server did not start: {folder}") from None
                    time.sleep(0.5)
            warm_up(uri, folder)
            yield uri
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)


def warm_up(uri: str, folder: Path) -> None:
    """One call of each endpoint a study uses: a fresh server spends seconds of CPU on its first
    requests (lazy imports, its store's set-up), which a long-running server has behind it."""
    from mlflow.entities import Metric, Param

    from tuner.runs import client_for

    client = client_for(uri)
    experiment = client.create_experiment("warm-up")
    run = client.create_run(experiment, run_name="warm-up").info.run_id
    client.log_batch(run, metrics=[Metric("m", 1.0, 0, 1)], params=[Param("p", "1")])
    (folder / "warm-up.txt").write_text("warm-up")
    client.log_artifact(run, str(folder / "warm-up.txt"))
    client.set_terminated(run)
    client.search_runs([experiment])
    client.delete_experiment(experiment)


@benchmark
def tracking_overhead(quick: bool) -> dict[str, Any]:
    """The SMALL study with MLflow tracking to a server on 127.0.0.1 against tracking off."""
    runs = []
    with tempfile.TemporaryDirectory() as server_folder, mlflow_server(Path(server_folder)) as uri:
        for _ in range(1 if quick else 3):
            with tempfile.TemporaryDirectory() as folder:
                tracked, _, _ = run_tuner(study_spec(SMALL, Path(folder), tracking_uri=uri))
            with tempfile.TemporaryDirectory() as folder:
                spec = study_spec(SMALL, Path(folder), tracking_uri=uri)
                spec["tracking"]["enabled"] = False
                untracked, _, _ = run_tuner(spec)
            runs.append((tracked / untracked, tracked, untracked))
    ratio, tracked, untracked = median_run(runs)
    return {
        "name": "tracking_overhead",
        "ratio": ratio,
        "target": "<= 1.05",
        "detail": f"{SMALL.trials} {SMALL.model} trials on {SMALL.dataset}: {tracked:.1f} s "
        f"tracked to an mlflow server on 127.0.0.1 vs {untracked:.1f} s with tracking off"
        + ("" if quick else ", median of 3"),
    }


# --------------------------------------------------------------------------- search efficiency

TARGET_VAL_ACC = 0.98
EFFICIENCY = Workload(  # few configs reach the target; most look bad after an epoch or two
    "mlp",
    "digits",
    {
        "lr": {"type": "float", "low": 1e-6, "high": 10.0, "log": True},
        "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
        "hidden_units": {"type": "int", "low": 4, "high": 512, "log": True},
        "batch_size": {"type": "categorical", "choices": [16, 64, 256, 1024]},
    },
    trials=30,
    epochs=50,
)


def epochs_to_target(events: list[dict], target: float) -> tuple[int, bool]:
    """Epochs trained, in the order results arrived, until one reached `target` val_acc
    (all epochs, and False, if none did)."""
    from trainables import metrics as m

    spent = 0
    for event in events:
        if event["event"] != "result":
            continue
        spent += 1
        if event["row"].get(m.VAL_ACC, 0.0) >= target:
            return spent, True
    return spent, False


def search_spec(folder: Path, algorithm: str, scheduler: str, seed: int) -> dict:
    schedulers = {
        "fifo": {"name": "fifo", "max_epochs": EFFICIENCY.epochs},
        "asha": {
            "name": "asha",
            "max_epochs": EFFICIENCY.epochs,
            "grace_period": 1,
            "reduction_factor": 3,
        },
    }
    return {
        "name": f"efficiency-{algorithm}-{scheduler}-{seed}",
        "model": EFFICIENCY.model,
        "dataset": {"name": EFFICIENCY.dataset},
        "search_space": EFFICIENCY.space,
        "search": {
            "algorithm": algorithm,
            "num_samples": EFFICIENCY.trials,
            "max_concurrent": 2,
            "seed": seed,
            "storage": f"sqlite:///{folder / 'optuna.db'}",
        },
        "scheduler": schedulers[scheduler],
        "objective": {"metric": "val_acc", "mode": "max"},
        "tracking": {"enabled": False},
        "storage": str(folder / "results"),
    }


@benchmark
def search_efficiency(quick: bool) -> dict[str, Any]:
    """Epochs until the first trial reaches val_acc >= TARGET_VAL_ACC: random search with FIFO
    against TPE with ASHA, over seeds, all in one Ray session."""
    from tuner.spec import spec_from_dict
    from tuner.study import ray_session, run_study

    seeds = range(3 if quick else 5)
    spent: dict[str, list[tuple[int, bool]]] = {"random+fifo": [], "tpe+asha": []}
    with ray_session(num_cpus=2):
        for seed in seeds:
            for label, (algorithm, scheduler) in (
                ("random+fifo", ("random", "fifo")),
                ("tpe+asha", ("tpe", "asha")),
            ):
                with tempfile.TemporaryDirectory() as folder:
                    spec = spec_from_dict(search_spec(Path(folder), algorithm, scheduler, seed))
                    run_study(spec, show_progress=False)
                    events = journal(Path(spec.storage))
                    spent[label].append(epochs_to_target(events, TARGET_VAL_ACC))
    random_fifo = statistics.median(n for n, _ in spent["random+fifo"])
    tpe_asha = statistics.median(n for n, _ in spent["tpe+asha"])

    def per_seed(label: str) -> str:
        return ", ".join(f"{n}" + ("" if hit else " (not reached)") for n, hit in spent[label])

    return {
        "name": "search_efficiency",
        "ratio": random_fifo / tpe_asha,
        "target": ">= 3",
        "detail": f"epochs until a trial reaches val_acc {TARGET_VAL_ACC} (digits MLP, lr "
        f"1e-6..10, {EFFICIENCY.trials} trials of up to {EFFICIENCY.epochs} epochs), median of "
        f"{len(seeds)} seeds: random+FIFO {random_fifo:g} [{per_seed('random+fifo')}] vs "
        f"TPE+ASHA {tpe_asha:g} [{per_seed('tpe+asha')}]",
    }


# --------------------------------------------------------------------------- scale


def trivial_trial(config: dict[str, Any], data, settings) -> None:
    """A trial that trains nothing: 10 results of made-up curves, no checkpoint."""
    from ray import tune

    from trainables import metrics as m

    for epoch in range(1, settings.max_epochs + 1):
        loss = 1.0 / epoch + config["lr"]
        tune.report(
            {
                m.EPOCH: epoch,
                m.TRAIN_LOSS: loss,
                m.VAL_LOSS: loss * 1.1,
                m.GENERALIZATION_GAP: loss * 0.1,
                m.TRAIN_ACC: 1 - loss / 2,
                m.VAL_ACC: 1 - loss / 1.9,
                m.EPOCH_TIME_S: 0.0,
            }
        )


class PeakMemory:
    """Samples a process's resident memory in a thread: (time, rss) pairs."""

    def __init__(self, every_s: float = 0.1):
        import psutil

        self.process, self.every_s = psutil.Process(), every_s
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), self.process.memory_info().rss))
            self._stop.wait(self.every_s)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def peak_until(self, moment: float) -> int:
        return max((rss for t, rss in self.samples if t <= moment), default=0)


@benchmark
def scale(quick: bool) -> dict[str, Any]:
    """1,000 trials of a trivial trainable through the full path (Ray, Optuna, MLflow on
    SQLite): per-trial overhead and the driver's peak memory as trials accumulate."""
    trials, marks = 1000, (250, 500, 1000)
    work = Workload("mlp", "digits", {"hidden_units": 8}, trials=trials, epochs=10)
    with tempfile.TemporaryDirectory() as folder, PeakMemory() as memory:
        spec = study_spec(work, Path(folder))
        wall, startup, result = run_tuner(spec, trainable=trivial_trial)
        ends = sorted(e["time"] for e in journal(Path(folder) / "results") if e["event"] == "end")
    done = len(result.trials)
    per_trial_ms = (wall - startup) / done * 1000 * 2  # 2 trials at a time
    peaks = {n: memory.peak_until(ends[n - 1]) / 2**20 for n in marks if n <= len(ends)}
    growth = (peaks[marks[-1]] - peaks[marks[0]]) / (marks[-1] - marks[0]) * 1024
    return {
        "name": "scale",
        "ratio": per_trial_ms,
        "target": "report",
        "detail": f"{done} trivial trials x 10 results, 2 at a time: {wall:.0f} s, "
        f"{per_trial_ms:.0f} ms of overhead per trial per slot; driver peak RSS "
        + ", ".join(f"{peaks[n]:.0f} MiB at {n}" for n in peaks)
        + f" ({growth:.0f} KiB per trial)",
        "peak_rss_mib": peaks,
    }


# --------------------------------------------------------------------------- GPU packing


@benchmark
def gpu_packing(quick: bool) -> dict[str, Any]:
    """Trials per hour of the MNIST CNN at fractional GPUs, and the GPU's utilisation."""
    if not torch.cuda.is_available():
        return {
            "name": "gpu_packing",
            "ratio": None,
            "target": "skipped",
            "detail": "skipped: no CUDA GPU on this machine",
        }
    work = Workload(
        "cnn",
        "mnist_sample",
        {"channels": {"type": "categorical", "choices": [16, 32]}, "conv_blocks": 2},
        trials=8 if quick else 16,
        epochs=3,
    )
    from tuner.spec import spec_from_dict
    from tuner.study import ray_session, run_study

    rates = {}
    gpus = torch.cuda.device_count()
    with utilization_sampler() as sampler:
        for fraction in (1, 0.5, 0.25, 0.125):
            concurrent = max(1, int(gpus / fraction))
            with tempfile.TemporaryDirectory() as folder:
                spec = study_spec(work, Path(folder), resources={"gpu": fraction, "cpu": 1})
                spec["search"]["max_concurrent"] = concurrent
                began = time.time()
                start = time.perf_counter()
                with ray_session(num_cpus=max(2, concurrent)):
                    run_study(spec_from_dict(spec), show_progress=False)
                wall = time.perf_counter() - start
            rates[fraction] = (work.trials / wall * 3600, sampler.mean_since(began))
    best = max(r for r, _ in rates.values())
    return {
        "name": "gpu_packing",
        "ratio": best / rates[1][0],
        "target": "report",
        "detail": "trials/hour (mean GPU utilisation): "
        + ", ".join(f"gpu {f}: {r:.0f} ({u:.0f}%)" for f, (r, u) in rates.items()),
    }


class _Utilization:
    def __init__(self):
        self.samples: list[tuple[float, float]] = []

    def mean_since(self, moment: float) -> float:
        values = [u for t, u in self.samples if t >= moment]
        return statistics.mean(values) if values else 0.0


@contextmanager
def utilization_sampler(every_s: float = 0.5) -> Iterator[_Utilization]:
    """GPU utilisation (%) from nvidia-smi, sampled in a thread."""
    result, stop = _Utilization(), threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                ).stdout.split()
                result.samples.append((time.time(), statistics.mean(float(v) for v in out)))
            except (OSError, ValueError, subprocess.TimeoutExpired, statistics.StatisticsError):
                pass
            stop.wait(every_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()


# --------------------------------------------------------------------------- entry point


def machine() -> str:
    import psutil

    memory = psutil.virtual_memory().total / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{os.cpu_count()} cores, {memory:.0f} GiB, {gpu}, Python {platform.python_version()}, "
        f"torch {torch.__version__}"
    )


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat, no scale benchmark")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS), help="run just these")
    args = parser.parse_args(argv)
    names = args.only or [n for n in BENCHMARKS if not (args.quick and n in FULL_ONLY)]
    print(f"{'quick' if args.quick else 'full'} mode on {machine()}", flush=True)
    results = []
    for name in names:
        started = time.perf_counter()
        result = BENCHMARKS[name](args.quick)
        result["seconds"] = round(time.perf_counter() - started, 1)
        results.append(result)
        ratio = "-" if result["ratio"] is None else f"{result['ratio']:.2f}"
        print(
            f"{result['name']:<18} {ratio:>7}  target {result['target']:<8} {result['detail']}",
            flush=True,
        )
        if args.json:  # after each benchmark: a long run that dies keeps what it measured
            args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
