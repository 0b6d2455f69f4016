"""Side-by-side performance measurements: `python -m benchmarks.run [--quick] [--json PATH]`.

Each benchmark times tuner against a baseline in the same run, alternating the two (tuner,
baseline, tuner, baseline, ...) so that both see the same machine, and repeating: 3 times in full
mode, once in quick mode unless said otherwise; the ratio is the median repeat's. Each reports
`{"name", "ratio", "target", "detail", "spans", "samples"}`: `spans` says what each side's timed
span includes, `samples` holds every repeat's raw figures. `--json` writes them with the machine,
the git commit and the date. Timings are never asserted in tests; these ratios are the measure.
Run it from the repository root on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

try:
    from ray.tune import Callback, Stopper
except ImportError:  # a bare GPU machine (benchmarks/gpu_check.sh): the benchmarks without Ray run
    Callback = Stopper = object  # type: ignore[assignment,misc]

from benchmarks import local_trials
from trainables import metrics as m

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS: dict[str, Callable[[bool], dict[str, Any]]] = {}
FULL_ONLY: set[str] = set()


def benchmark(fn: Callable[[bool], dict[str, Any]]) -> Callable[[bool], dict[str, Any]]:
    BENCHMARKS[fn.__name__] = fn
    return fn


def median_sample(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The repeat whose ratio is the median (the upper one of an even number)."""
    return sorted(samples, key=lambda s: s["ratio"])[len(samples) // 2]


def repeats_text(samples: list) -> str:
    return f"median of {len(samples)}" if len(samples) > 1 else "1 run"


# --------------------------------------------------------------------------- the training loop

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


def trial_epochs_per_s(data, epochs: int, folder: Path) -> float:
    """`train_trial` (tune.report every epoch, a checkpoint per second of training) as one
    1-CPU trial in a local Ray: epochs per second from its first epoch's report reaching the
    driver to its last's. Ray's start, the actor's start, the data's transfer, the model's
    build and the first epoch are outside the span."""
    from ray import tune

    from trainables.trainable import TrialSettings, train_trial
    from tuner.driver.study import QUIET_RAY, logs_to_file, ray_session

    os.environ.update(QUIET_RAY)
    clock = ReportClock()
    settings = TrialSettings(model="mlp", max_epochs=epochs + 1, cpus=1)
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, data=data, settings=settings), {"cpu": 1, "gpu": 0}
    )
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


@benchmark
def trainable_vs_bare(quick: bool) -> dict[str, Any]:
    from trainables.data import DataOptions, load_dataset

    torch.set_num_threads(1)
    data = load_dataset(DataOptions("mnist_sample"))
    epochs = 20 if quick else 40
    bare_epochs_per_s(data, 1)  # warm-up: this process's first-call costs
    samples = []
    for _ in range(3):
        with tempfile.TemporaryDirectory() as folder:
            ours = trial_epochs_per_s(data, epochs, Path(folder))
        bare = bare_epochs_per_s(data, epochs)
        samples.append(
            {"ratio": ours / bare, "trial_epochs_per_s": ours, "bare_epochs_per_s": bare}
        )
    chosen = median_sample(samples)
    return {
        "name": "trainable_vs_bare",
        "ratio": chosen["ratio"],
        "target": ">= 0.95",
        "detail": f"MLP 784-128-10 on mnist_sample, 1 thread, {epochs} epochs timed: "
        f"{chosen['trial_epochs_per_s']:.2f} epochs/s (train_trial in Ray) vs "
        f"{chosen['bare_epochs_per_s']:.2f} (hand-written loop), {repeats_text(samples)}",
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


# --------------------------------------------------------------------------- study overhead


@dataclass(frozen=True)
class Workload:
    """A fixed study: the space its configs are sampled from, and its budget."""

    model: str
    dataset: str
    space: dict[str, Any] | str  # a mapping in search-space YAML form, or a shipped space's name
    trials: int
    epochs: int


LR = {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}
TINY = Workload(  # sub-second trials: 10 epochs of a 2-layer digits MLP at batch size 16
    "mlp",
    "digits",
    {
        "hidden_units": {"type": "int", "low": 256, "high": 512, "log": True},
        "num_layers": 2,
        "batch_size": 16,
        "lr": LR,
    },
    trials=16,
    epochs=10,
)
SMALL = Workload(  # a few seconds per trial (4 to 7.5 s): 5 epochs of a 2-block CNN on 4,000
    "cnn",  # MNIST digits
    "mnist_sample",
    {"channels": {"type": "categorical", "choices": [8, 16]}, "conv_blocks": 2, "lr": LR},
    trials=16,
    epochs=5,
)


def study_spec(work: Workload, folder: Path, tracking_uri: str | None = None, **extra) -> dict:
    """Random search over `work` with FIFO, 2 trials at a time, every store in `folder`."""
    return {
        "name": f"bench-{work.model}",
        "model": work.model,
        "dataset": {"name": work.dataset},
        "search_space": work.space,
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


def journal(results: Path) -> list[dict]:
    from tuner.driver.journal import JOURNAL_FILE, read_journal

    return read_journal(next(results.glob(f"*/{JOURNAL_FILE}")))


def first_epoch_began(events: list[dict]) -> float:
    """When the first trial started training: its first result's time less that epoch's."""
    return min(e["time"] - e["row"][m.EPOCH_TIME_S] for e in events if e["event"] == "result")


def run_tuner(spec_dict: dict, **kwargs) -> tuple[float, float, Any]:
    """(wall, start-up, result) of `run_study` in this process, which has imported tuner, Ray,
    Optuna and MLflow already; its stores do not exist yet (creating an MLflow SQLite store runs
    its migrations: about 2 s). Start-up is the time until a trial trains."""
    import mlflow.tracking  # noqa: F401  (imported here before the span, as tuner.driver.study is)

    from tuner.driver.study import run_study
    from tuner.spec.job_spec import spec_from_dict

    spec = spec_from_dict(spec_dict)
    began = time.time()
    start = time.perf_counter()
    result = run_study(spec, num_cpus=2, show_progress=False, **kwargs)
    wall = time.perf_counter() - start
    return wall, first_epoch_began(journal(Path(spec.storage))) - began, result


def run_local(work: Workload, configs: list[dict]) -> tuple[float, float]:
    """(wall, start-up) of the same trials in 2 fresh local processes, each loading the data
    once: what a user would write without tuner."""
    called = time.time()
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with context.Pool(2, initializer=local_trials.load_data, initargs=(work.dataset,)) as pool:
        # chunksize 1: a free process takes the next trial, as Ray Tune gives a free slot one
        began = pool.map(
            local_trials.train_config,
            [(work.model, c, work.epochs) for c in configs],
            chunksize=1,
        )
    return time.perf_counter() - start, min(began) - called


def trial_configs(result) -> list[dict]:
    return [
        {k.removeprefix("config."): v for k, v in row.items() if k.startswith("config.")}
        for _, row in result.trials.sort_values("trial").iterrows()
    ]


IN_PROCESS_SPAN = (
    "run_study in the benchmark process (tuner, Ray, Optuna and MLflow already imported): "
    "loading the data and checking the spec, starting a local Ray (and stopping it, which "
    "overlaps writing the results), creating the Optuna and MLflow SQLite stores from nothing, "
    "every trial with its checkpoints and per-epoch MLflow writes, then the results table, the "
    "HTML report and the MLflow summary"
)


def overhead(work: Workload, repeats: int) -> dict[str, Any]:
    """tuner's whole path (Ray start, Optuna, MLflow, checkpoints) against the same configs
    trained by the same loop in 2 local processes; start-up included on both sides."""
    samples = []
    for _ in range(repeats):  # tuner, baseline, tuner, baseline, ...
        with tempfile.TemporaryDirectory() as folder:
            wall, startup, result = run_tuner(study_spec(work, Path(folder)))
        local, local_startup = run_local(work, trial_configs(result))
        samples.append(
            {
                "ratio": wall / local,
                "tuner_s": wall,
                "local_s": local,
                "tuner_startup_s": startup,
                "local_startup_s": local_startup,
            }
        )
    s = median_sample(samples)
    return {
        "ratio": s["ratio"],
        "detail": f"{work.trials} {work.model} trials x {work.epochs} epochs on {work.dataset}, "
        f"2 at a time: tuner {s['tuner_s']:.1f} s vs local processes {s['local_s']:.1f} s; "
        f"start-up (until the first trial trains) {s['tuner_startup_s']:.1f} s vs "
        f"{s['local_startup_s']:.1f} s, {repeats_text(samples)}",
        "spans": {
            "tuner": IN_PROCESS_SPAN,
            "baseline": "a pool of 2 freshly spawned processes: their start, imports and data "
            "loading, then the configs tuner sampled, trained by the same loop for the same "
            "epochs; no search, tracking, checkpoints or results written",
        },
        "samples": samples,
    }


@benchmark
def overhead_tiny(quick: bool) -> dict[str, Any]:
    return {"name": "overhead_tiny", "target": "<= 2.0", **overhead(TINY, 1 if quick else 3)}


@benchmark
def overhead_small(quick: bool) -> dict[str, Any]:
    return {
        "name": "overhead_small",
        "target": "<= 1.15",
        **overhead(SMALL, repeats=1 if quick else 3),
    }


# --------------------------------------------------------------------------- against Optuna

VS_OPTUNA = Workload(  # ASHA stops most trials after 2 epochs; about a minute on 2 cores
    "cnn",
    "mnist_sample",
    {"channels": {"type": "categorical", "choices": [8, 16]}, "conv_blocks": 2, "lr": LR},
    trials=16,
    epochs=6,
)
GRACE, REDUCTION = 2, 3


def timed_process(command: list[str]) -> tuple[float, float, str]:
    """Seconds from starting `command` (in the repository root) to its exit, when it started
    (Unix time) and its output."""
    began = time.time()
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(
            f"{' '.join(command[:4])} exited {done.returncode}: {done.stderr[-2000:]}"
        )
    return wall, began, done.stdout


def tuner_run_process(work: Workload, folder: Path) -> dict[str, float]:
    """Wall time, start-up (until a trial trains), epochs trained and the seconds spent in them
    of `python -m tuner run SPEC`: TPE + ASHA, tracked in SQLite."""
    spec = study_spec(work, folder)
    spec["search"]["algorithm"] = "tpe"
    spec["scheduler"] = {
        "name": "asha",
        "max_epochs": work.epochs,
        "grace_period": GRACE,
        "reduction_factor": REDUCTION,
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    wall, began, _ = timed_process([sys.executable, "-m", "tuner", "run", str(path)])
    events = journal(folder / "results")
    rows = [e["row"] for e in events if e["event"] == "result"]
    return {
        "s": wall,
        "startup_s": first_epoch_began(events) - began,
        "epochs": len(rows),
        "training_s": sum(row[m.EPOCH_TIME_S] for row in rows),
    }


def optuna_process(work: Workload, folder: Path) -> dict[str, float]:
    """The same figures for the plain Optuna script, tracked in SQLite, and the trials its
    pruner stopped."""
    wall, began, output = timed_process(
        [
            sys.executable,
            "-m",
            "benchmarks.optuna_study",
            f"--model={work.model}",
            f"--dataset={work.dataset}",
            f"--space={json.dumps(work.space)}",
            f"--trials={work.trials}",
            f"--epochs={work.epochs}",
            "--n-jobs=2",
            f"--min-resource={GRACE}",
            f"--reduction-factor={REDUCTION}",
            f"--tracking-uri=sqlite:///{folder / 'mlflow.db'}",
        ]
    )
    study = json.loads(output.strip().splitlines()[-1])
    return {
        "s": wall,
        "startup_s": study["first_epoch_began"] - began,
        "epochs": study["epochs"],
        "training_s": study["training_s"],
        "pruned": study["pruned"],
    }


@benchmark
def overhead_vs_optuna(quick: bool) -> dict[str, Any]:
    """The whole `tuner run` process against a plain Optuna script doing the same study."""
    work, samples = VS_OPTUNA, []
    for _ in range(1 if quick else 3):  # tuner, Optuna, tuner, Optuna, ...
        with tempfile.TemporaryDirectory() as folder:
            ours = tuner_run_process(work, Path(folder))
        with tempfile.TemporaryDirectory() as folder:
            theirs = optuna_process(work, Path(folder))
        samples.append(
            {
                "ratio": ours["s"] / theirs["s"],
                **{f"tuner_{k}": v for k, v in ours.items()},
                **{f"optuna_{k}": v for k, v in theirs.items()},
            }
        )
    s = median_sample(samples)
    return {
        "name": "overhead_vs_optuna",
        "ratio": s["ratio"],
        "target": "<= 1.5",
        "detail": f"{work.trials} {work.model} trials of up to {work.epochs} epochs on "
        f"{work.dataset}, TPE, 2 at a time, ASHA vs SuccessiveHalvingPruner (grace "
        f"{GRACE}, factor {REDUCTION}), MLflow in SQLite: `tuner run` {s['tuner_s']:.1f} s "
        f"({s['tuner_epochs']} epochs trained, {s['tuner_training_s']:.0f} s in them) vs a "
        f"plain Optuna script {s['optuna_s']:.1f} s ({s['optuna_epochs']} epochs, "
        f"{s['optuna_training_s']:.0f} s), whole processes; start-up (until the first trial "
        f"trains) {s['tuner_startup_s']:.1f} s vs {s['optuna_startup_s']:.1f} s, "
        f"{repeats_text(samples)}",
        "spans": {
            "tuner": "the `python -m tuner run SPEC` process from start to exit: Python start "
            "and imports, the spec and the data, a local Ray started and stopped, the Optuna "
            "and MLflow SQLite stores created from nothing, the trials as Ray actors with "
            "checkpoints, an MLflow parent run and a child run per trial (per-epoch metrics, a "
            "learning-curve figure), the results table and the HTML report",
            "baseline": "the `python -m benchmarks.optuna_study` process from start to exit: "
            "Python start and imports, the data, the MLflow SQLite store created from nothing, "
            "study.optimize(n_jobs=2: two threads sharing the GIL) with TPE and a "
            "SuccessiveHalvingPruner (in-memory Optuna storage), the same loop, one MLflow run "
            "per trial with its params and per-epoch metrics; no checkpoints, figures, parent "
            "run or report",
        },
        "samples": samples,
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

    from tuner.tracking.mlflow_server import UI_SERVER_ENV, ui_server_command

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

    from tuner.tracking.runs import client_for

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
    samples = []
    with tempfile.TemporaryDirectory() as server_folder, mlflow_server(Path(server_folder)) as uri:
        for _ in range(1 if quick else 3):  # tracked, untracked, tracked, untracked, ...
            with tempfile.TemporaryDirectory() as folder:
                tracked, _, _ = run_tuner(study_spec(SMALL, Path(folder), tracking_uri=uri))
            with tempfile.TemporaryDirectory() as folder:
                spec = study_spec(SMALL, Path(folder), tracking_uri=uri)
                spec["tracking"]["enabled"] = False
                untracked, _, _ = run_tuner(spec)
            samples.append(
                {"ratio": tracked / untracked, "tracked_s": tracked, "untracked_s": untracked}
            )
    s = median_sample(samples)
    return {
        "name": "tracking_overhead",
        "ratio": s["ratio"],
        "target": "<= 1.05",
        "detail": f"{SMALL.trials} {SMALL.model} trials on {SMALL.dataset}: {s['tracked_s']:.1f} "
        f"s tracked to an mlflow server on 127.0.0.1 vs {s['untracked_s']:.1f} s with tracking "
        f"off, {repeats_text(samples)}",
        "spans": {
            "tuner": "run_study in the benchmark process, tracking to a warmed-up mlflow "
            "server on 127.0.0.1 started before the span: the data, a local Ray started and "
            "stopped, the Optuna SQLite store created from nothing, every trial with its "
            "checkpoints and per-epoch MLflow writes, the results, report and MLflow summary",
            "baseline": "the same study with tracking off: no MLflow calls at all",
        },
        "samples": samples,
    }


# --------------------------------------------------------------------------- search efficiency


@dataclass(frozen=True)
class SearchProblem:
    """A space where search has to find the few configs that reach `target` val_acc."""

    work: Workload
    target: float
    about: str


WIDE = SearchProblem(  # few configs reach the target; most look bad after an epoch or two
    Workload(
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
    ),
    target=0.98,
    about="digits MLP, a wide space: lr 1e-6..10, adam|sgd, 4..512 units",
)
SHIPPED = SearchProblem(  # most configs are decent; about 1 in 6 reaches the target in 30 epochs
    Workload("mlp", "digits", "mlp", trials=30, epochs=30),
    target=0.986,  # 355 of the 360 validation digits
    about="digits MLP, the shipped search_spaces/mlp.yaml",
)
#: label -> (sampler, scheduler, Ray's stock OptunaSearch instead of tuner's)
ARMS = {
    "random+fifo": ("random", "fifo", False),
    "random+asha": ("random", "asha", False),
    "tpe+fifo": ("tpe", "fifo", False),
    "tpe+asha": ("tpe", "asha", False),
    "tpe+asha/stock": ("tpe", "asha", True),
}
ARM_NAMES = {
    "random+fifo": "random+FIFO",
    "random+asha": "random+ASHA",
    "tpe+fifo": "TPE+FIFO",
    "tpe+asha": "TPE+ASHA",
    "tpe+asha/stock": "TPE+ASHA through Ray's stock OptunaSearch",
}


class TargetWatch(Stopper):
    """Counts the epochs trained, in the order their results reach the driver, until a trial's
    `metric` first reaches `target`; then stops the study, since what follows cannot change the
    count."""

    def __init__(self, metric: str, target: float):
        self.metric, self.target = metric, target
        self.results: set[tuple[str, Any]] = set()
        self.until_target: int | None = None

    def __call__(self, trial_id: str, result: dict) -> bool:
        key = (trial_id, result.get(m.EPOCH))
        if key not in self.results:  # Ray repeats a finished function trial's last result
            self.results.add(key)
            value = result.get(self.metric)
            if self.until_target is None and value is not None and value >= self.target:
                self.until_target = len(self.results)
        return False

    def stop_all(self) -> bool:
        return self.until_target is not None


def search_spec(problem: SearchProblem, folder: Path, algorithm: str, scheduler: str, seed: int):
    work = problem.work
    schedulers = {
        "fifo": {"name": "fifo", "max_epochs": work.epochs},
        "asha": {
            "name": "asha",
            "max_epochs": work.epochs,
            "grace_period": 1,
            "reduction_factor": 3,
        },
    }
    return {
        "name": f"efficiency-{algorithm}-{scheduler}-{seed}",
        "model": work.model,
        "dataset": {"name": work.dataset},
        "search_space": work.space,
        "search": {
            "algorithm": algorithm,
            "num_samples": work.trials,
            "max_concurrent": 2,
            "seed": seed,
            "storage": f"sqlite:///{folder / 'optuna.db'}",
        },
        "scheduler": schedulers[scheduler],
        "objective": {"metric": "val_acc", "mode": "max"},
        "tracking": {"enabled": False},
        "storage": str(folder / "results"),
    }


def stock_searcher(spec, space, execution: str):
    """Ray's own OptunaSearch, set up as tuner sets up its TruthfulOptunaSearch: an ASHA-stopped
    trial reaches Optuna as COMPLETE, valued at its last result before the stop."""
    from ray.tune.search.optuna import OptunaSearch

    from tuner.driver.optuna_storage import optuna_storage
    from tuner.driver.samplers import make_sampler

    return OptunaSearch(
        space,
        metric=spec.objective.metric,
        mode=spec.objective.mode,
        sampler=make_sampler(spec.search.algorithm, spec.search.seed),
        storage=optuna_storage(spec.search.storage),
        study_name=execution,
    )


def search_until_target(problem: SearchProblem, arm: str, seed: int) -> dict[str, Any]:
    """One study of `arm`, built as `run_study` builds it (tuner's space, trainable, searcher
    and scheduler; tracking off) but stopped once a trial reaches the target."""
    from ray import tune

    from tuner.driver.schedulers import make_scheduler
    from tuner.driver.study import (
        execution_name,
        make_searcher,
        make_trainable,
        prepare,
        study_environment,
    )
    from tuner.spec.job_spec import spec_from_dict

    algorithm, scheduler, stock = ARMS[arm]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        spec = spec_from_dict(search_spec(problem, Path(folder), algorithm, scheduler, seed))
        prepared = prepare(spec)
        execution = execution_name(spec)
        watch = TargetWatch(spec.objective.metric, problem.target)
        with study_environment(Path(spec.storage) / execution, spec):
            searcher = (stock_searcher if stock else make_searcher)(spec, prepared.space, execution)
            tune.Tuner(
                make_trainable(prepared),
                tune_config=tune.TuneConfig(
                    metric=spec.objective.metric,
                    mode=spec.objective.mode,
                    search_alg=searcher,
                    scheduler=make_scheduler(spec.scheduler),
                    num_samples=spec.search.num_samples,
                    max_concurrent_trials=spec.search.max_concurrent,
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name=execution,
                    storage_path=spec.storage,
                    stop=watch,
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                    verbose=0,
                ),
            ).fit()
        told = optuna_states(spec.search.storage, execution)
    reached = watch.until_target is not None
    return {
        "seed": seed,
        "epochs": watch.until_target if reached else len(watch.results),
        "reached": reached,
        "trials": len({trial for trial, _ in watch.results}),
        "optuna_states": told,
        "wall_s": round(time.perf_counter() - start, 1),
    }


def optuna_states(storage: str, study: str) -> dict[str, int]:
    """How many of the study's trials the searcher told Optuna were COMPLETE, PRUNED, ..."""
    import collections

    import optuna

    trials = optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    return dict(collections.Counter(t.state.name for t in trials))


def censored_median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median seed, a seed that never reached the target ranking after every seed that did
    (as if it needed endless epochs); if the median is such a seed, its count is a lower bound."""
    ordered = sorted(runs, key=lambda r: (not r["reached"], r["epochs"]))
    return ordered[len(ordered) // 2]


def shown(run: dict[str, Any]) -> str:
    """A count, with '+' when the target was never reached (the epochs spent: a lower bound)."""
    return f"{run['epochs']}" + ("" if run["reached"] else "+")


def search_efficiency_on(problem: SearchProblem, name: str, target: str, quick: bool):
    """Epochs until the first trial reaches the target, for every arm over seeds (the arms
    alternate within each seed), all in one Ray session."""
    from tuner.driver.study import logs_to_file, ray_session

    seeds = range(3 if quick else 7)
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    with (
        tempfile.TemporaryDirectory() as folder,
        logs_to_file(Path(folder) / "ray.log"),
        ray_session(num_cpus=2),
    ):
        for seed in seeds:
            for arm in ARMS:
                runs[arm].append(search_until_target(problem, arm, seed))
    medians = {arm: censored_median(r) for arm, r in runs.items()}
    slow, fast = medians["random+fifo"], medians["tpe+asha"]
    ratio = slow["epochs"] / fast["epochs"] if fast["reached"] else None
    bound = "exact" if slow["reached"] else "lower bound"
    if ratio is None:
        bound = "none: TPE+ASHA's median seed never reached the target"
    work = problem.work
    arms = "; ".join(
        f"{ARM_NAMES[arm]} {shown(medians[arm])} [{', '.join(shown(r) for r in runs[arm])}]"
        for arm in ARMS
    )
    return {
        "name": name,
        "ratio": ratio,
        "ratio_is": bound,
        "target": target,
        "detail": f"epochs until a trial reaches val_acc {problem.target} ({problem.about}; "
        f"{work.trials} trials of up to {work.epochs} epochs, 2 at a time), median of "
        f"{len(seeds)} seeds [per seed; '+': never reached, epochs spent]: {arms}",
        "spans": {
            "counted": "epochs trained, in the order their results reached the driver, until "
            "the first result at or above the target; a seed that never gets there counts "
            "every epoch it trained, marked as not reached, and ranks after every seed that "
            "did, on every arm alike. A median on such a seed is a lower bound, and so is a "
            "ratio over it",
            "arms": "tuner's space, trainable and scheduler (ASHA: grace 1, factor 3); "
            "tuner's TruthfulOptunaSearch on every arm but the last, which uses Ray's stock "
            "OptunaSearch; tracking off; each study stops once a trial reaches the target",
        },
        "samples": runs,
        "medians": {
            arm: {"epochs": r["epochs"], "reached": r["reached"]} for arm, r in medians.items()
        },
    }


@benchmark
def search_efficiency(quick: bool) -> dict[str, Any]:
    return search_efficiency_on(WIDE, "search_efficiency", ">= 3", quick)


@benchmark
def search_efficiency_mlp(quick: bool) -> dict[str, Any]:
    return search_efficiency_on(SHIPPED, "search_efficiency_mlp", "report", quick)


# --------------------------------------------------------------------------- scale


SCALE_TRIALS_ENV = "TUNER_BENCH_SCALE_TRIALS"  # overrides the scale benchmark's trial count
REPORT_EVERY_S = 0.05  # the trivial trial's cadence: 64 slots offer 1,280 results/s


@dataclass(frozen=True)
class ScaleRun:
    """The scale benchmark's study: `trials` trivial trials, `slots` at a time on a local Ray
    told of `slots` CPUs, Optuna on SQLite, MLflow to a server on 127.0.0.1 (or off)."""

    trials: int
    slots: int
    marks: tuple[int, ...]  # the trial counts at which the driver's peak memory is read
    epochs: int = 10


SCALE_FULL = ScaleRun(10_000, 64, (1_000, 5_000, 10_000))
SCALE_QUICK = ScaleRun(400, 16, (100, 200, 400))
#: (figure, target, better direction): the issue's targets, checked in the table
SCALE_TARGETS = {
    "results_per_s_tracking": (100.0, "higher"),
    "results_per_s_no_tracking": (500.0, "higher"),
    "cpu_ms_per_trial_tracking": (50.0, "lower"),
    "peak_rss_mib_tracking": (1024.0, "lower"),
    "tracking_lag_s": (10.0, "lower"),
}


def scale_run(quick: bool) -> ScaleRun:
    base = SCALE_QUICK if quick else SCALE_FULL
    trials = int(os.environ.get(SCALE_TRIALS_ENV, base.trials))
    marks = tuple(sorted({min(n, trials) for n in base.marks} | {trials}))
    return ScaleRun(trials, base.slots, marks, base.epochs)


SLOTS_BARRIER_ENV = "TUNER_BENCH_SLOTS_BARRIER"  # "FOLDER:SLOTS", set by scale_study
SLOTS_BARRIER_TIMEOUT_S = 600.0
_slot_taken = False  # this worker process has passed the barrier


def wait_for_every_slot() -> None:
    """Hold a worker's first trial until a worker has started for every slot (or the timeout).

    Starting 64 worker processes that import Ray Tune and torch takes minutes on 2 cores; a
    first trial that ended meanwhile gave its actor to the next trial, whose own actor request
    Ray Tune then cancelled, so the raylet churned and 3 or 4 of the 64 slots ran every trial.
    Once every slot's worker is up, Tune hands each finished trial's actor to the next one."""
    global _slot_taken
    setting = os.environ.get(SLOTS_BARRIER_ENV)
    if _slot_taken or not setting:
        return
    _slot_taken = True
    folder, slots = Path(setting.rsplit(":", 1)[0]), int(setting.rsplit(":", 1)[1])
    (folder / str(os.getpid())).touch()
    deadline = time.monotonic() + SLOTS_BARRIER_TIMEOUT_S
    while len(os.listdir(folder)) < slots and time.monotonic() < deadline:
        time.sleep(0.2)


def trivial_trial(config: dict[str, Any], data, settings) -> None:
    """A trial that trains nothing: `max_epochs` results of made-up curves, one every
    REPORT_EVERY_S, no checkpoint (the first trial of each worker first waits for every slot's
    worker to start)."""
    from ray import tune

    wait_for_every_slot()
    for epoch in range(1, settings.max_epochs + 1):
        time.sleep(REPORT_EVERY_S)
        loss = 1.0 / epoch + config["lr"]
        tune.report(
            {
                m.EPOCH: epoch,
                m.TRAIN_LOSS: loss,
                m.VAL_LOSS: loss * 1.1,
                m.GENERALIZATION_GAP: loss * 0.1,
                m.TRAIN_ACC: 1 - loss / 2,
                m.VAL_ACC: 1 - loss / 1.9,
                m.EPOCH_TIME_S: REPORT_EVERY_S,
            }
        )


class DriverSamples:
    """Samples this process's resident memory and CPU time (user + system, every thread of the
    driver, none of its children) in a thread: (time, rss, cpu_s) triples."""

    def __init__(self, every_s: float = 0.1):
        import psutil

        self.process, self.every_s = psutil.Process(), every_s
        self.samples: list[tuple[float, int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            cpu = self.process.cpu_times()
            self.samples.append(
                (time.time(), self.process.memory_info().rss, cpu.user + cpu.system)
            )
            self._stop.wait(self.every_s)

    def __enter__(self) -> DriverSamples:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def peak_until(self, moment: float) -> int:
        return max((rss for t, rss, _ in self.samples if t <= moment), default=0)

    def cpu_at(self, moment: float) -> float:
        """CPU seconds used by the first sample at or after `moment` (the last one if none)."""
        return next((c for t, _, c in self.samples if t >= moment), self.samples[-1][2])


def mlflow_server_cpu_s() -> float:
    """CPU seconds used so far by this process's `mlflow server` (its uvicorn worker included)."""
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            if "mlflow" in " ".join(child.cmdline()):
                cpu = child.cpu_times()
                total += cpu.user + cpu.system
        except psutil.Error:
            continue
    return total


def tracking_lag_s(uri: str, experiment: str, last_end: float) -> float:
    """How long after the last trial ended its MLflow run was closed: the newest trial run's end
    time (set by the writer thread after the run's last batch) less the journal's last end.
    Asks the server for the 10 newest-ended runs only (searching all 10,000 timed out)."""
    from tuner.tracking import schema
    from tuner.tracking.runs import client_for

    client = client_for(uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs(
        [experiment_id],
        f"tags.{schema.ROLE_TAG} = '{schema.TRIAL_ROLE}'",
        max_results=10,
        order_by=["attributes.end_time DESC"],
    )
    ends = [r.info.end_time for r in runs if r.info.end_time]
    return max(ends) / 1000 - last_end if ends else math.inf


def scale_study(run: ScaleRun, folder: Path, uri: str | None) -> dict[str, Any]:
    """One scale study in this process; the driver's figures from its journal and samples."""
    from tuner.driver.study import run_study
    from tuner.spec.job_spec import spec_from_dict

    work = Workload("mlp", "digits", {"hidden_units": 8, "lr": LR}, run.trials, run.epochs)
    spec_dict = study_spec(work, folder, uri)
    spec_dict["search"]["max_concurrent"] = run.slots
    if uri is None:
        spec_dict["tracking"] = {"enabled": False}
    spec = spec_from_dict(spec_dict)
    barrier = folder / ("barrier-tracked" if uri else "barrier")
    barrier.mkdir()
    os.environ[SLOTS_BARRIER_ENV] = f"{barrier}:{run.slots}"  # the local Ray's workers inherit it
    server_cpu_before = mlflow_server_cpu_s()
    try:
        with DriverSamples() as driver:
            began = time.time()
            result = run_study(
                spec, num_cpus=run.slots, show_progress=False, trainable=trivial_trial
            )
            wall = time.time() - began
    finally:
        del os.environ[SLOTS_BARRIER_ENV]
    server_cpu_s = mlflow_server_cpu_s() - server_cpu_before
    events = journal(folder / "results")
    result_times = sorted(e["time"] for e in events if e["event"] == "result")
    ends = sorted(e["time"] for e in events if e["event"] == "end")
    first, last = result_times[0], ends[-1]
    cpu_s = driver.cpu_at(last) - driver.cpu_at(first)
    peaks = {n: driver.peak_until(ends[n - 1]) / 2**20 for n in run.marks if n <= len(ends)}
    low, high = min(peaks), max(peaks)
    growth_kib = (peaks[high] - peaks[low]) / (high - low) * 1024 if high > low else 0.0
    return {
        "tracking": uri is not None,
        "workers": len(os.listdir(barrier)),  # the trial worker processes that ran
        "trials": len(result.trials),
        "results": len(result_times),
        "wall_s": wall,
        "startup_s": first - began,
        "span_s": last - first,
        "results_per_s": len(result_times) / (last - first),
        "driver_cpu_s": cpu_s,
        "cpu_ms_per_trial": cpu_s / len(ends) * 1000,
        "cpu_ms_per_result": cpu_s / len(result_times) * 1000,
        "peak_rss_mib": peaks,
        "growth_kib_per_trial": growth_kib,
        "tracking_lag_s": tracking_lag_s(uri, spec.name, last) if uri else None,
        # the whole study, start-up and end included: what the server spent per trial
        "server_cpu_ms_per_trial": server_cpu_s / len(ends) * 1000 if uri else None,
    }


def scale_table(on: dict[str, Any], off: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its figure and pass/fail."""
    figures = {
        "results_per_s_tracking": on["results_per_s"],
        "results_per_s_no_tracking": off["results_per_s"],
        "cpu_ms_per_trial_tracking": on["cpu_ms_per_trial"],
        "peak_rss_mib_tracking": max(on["peak_rss_mib"].values()),
        "tracking_lag_s": on["tracking_lag_s"],
    }
    rows = []
    for name, (target, better) in SCALE_TARGETS.items():
        value = figures[name]
        passed = value >= target if better == "higher" else value <= target
        bound = ">=" if better == "higher" else "<="
        row = {"figure": name, "value": value, "target": f"{bound} {target:g}", "pass": passed}
        rows.append(row)
    return rows


def scale_text(run: ScaleRun, on: dict[str, Any], off: dict[str, Any], rows: list) -> str:
    lines = [
        f"{run.trials} trivial trials x {run.epochs} results, {run.slots} at a time "
        f"(num_cpus={run.slots}), Optuna on SQLite:"
    ]
    for side in (on, off):
        name = "MLflow server" if side["tracking"] else "tracking off "
        lines.append(
            f"  {name}: {side['results_per_s']:.0f} results/s over {side['span_s']:.0f} s; "
            f"driver CPU {side['cpu_ms_per_trial']:.1f} ms/trial, "
            f"{side['cpu_ms_per_result']:.2f} ms/result; peak RSS "
            + ", ".join(f"{v:.0f} MiB at {n}" for n, v in side["peak_rss_mib"].items())
            + f" ({side['growth_kib_per_trial']:.0f} KiB/trial)"
            + (
                f"; tracking lag {side['tracking_lag_s']:.1f} s; MLflow server CPU "
                f"{side['server_cpu_ms_per_trial']:.1f} ms/trial"
                if side["tracking"]
                else ""
            )
            + f"; {side['workers']} trial worker processes"
        )
    lines += [
        f"  {r['figure']:<28} {r['value']:>9.1f}  {r['target']:<8} "
        + ("pass" if r["pass"] else "FAIL")
        for r in rows
    ]
    return "\n".join(lines)


@benchmark
def scale(quick: bool) -> dict[str, Any]:
    """Thousands of trivial trials at 64 slots (full; 400 at 16 in quick mode) through the full
    path, tracking to an `mlflow server` on 127.0.0.1 and then off: what the driver sustains."""
    run = scale_run(quick)
    with (
        tempfile.TemporaryDirectory() as server_folder,
        mlflow_server(Path(server_folder)) as uri,
        tempfile.TemporaryDirectory() as folder,
    ):
        on = scale_study(run, Path(folder), uri)
    with tempfile.TemporaryDirectory() as folder:
        off = scale_study(run, Path(folder), None)
    rows = scale_table(on, off)
    return {
        "name": "scale",
        "ratio": on["results_per_s"],
        "target": ">= 100/s",
        "detail": scale_text(run, on, off, rows),
        "targets": rows,
        "spans": {
            "tuner": "run_study in the benchmark process with a trainable that trains nothing "
            f"and reports every {REPORT_EVERY_S} s; results/s and driver CPU over the span from "
            "the first result to the last trial's end (start-up and the final report left "
            "out); CPU is the driver process's own (every thread, no child process: Ray's "
            "workers, the figure helper and the MLflow server are not in it), sampled every "
            "0.1 s with its peak RSS; tracking lag: the newest trial run's end time in MLflow "
            "less the last trial's end in the journal",
        },
        "samples": [on, off],
    }


# --------------------------------------------------------------------------- GPU

NO_GPU = "skipped: no CUDA GPU on this machine"
#: a folder of full-MNIST IDX files; without it the GPU benchmarks use mnist_sample (5,000)
MNIST_FOLDER_ENV = "TUNER_BENCH_MNIST"
GPU_FRACTIONS = (1, 0.5, 0.25, 0.125)


def skipped(name: str, why: str) -> dict[str, Any]:
    return {"name": name, "ratio": None, "target": "skipped", "detail": why, "samples": []}


def mnist_dataset() -> dict[str, Any]:
    """The dataset section of the GPU benchmarks: full MNIST when $TUNER_BENCH_MNIST names a
    folder of its IDX files, else mnist_sample."""
    folder = os.environ.get(MNIST_FOLDER_ENV)
    return {"name": "mnist", "path": folder} if folder else {"name": "mnist_sample"}


@benchmark
def gpu_packing(quick: bool) -> dict[str, Any]:
    """Trials per hour of the MNIST CNN at gpu 1, 0.5, 0.25 and 0.125 per trial (as many trials
    at once as the GPUs hold), with the GPU's mean utilisation and peak memory per trial."""
    if not torch.cuda.is_available():
        return skipped("gpu_packing", NO_GPU)
    try:
        from tuner.driver.study import ray_session, run_study
        from tuner.spec.job_spec import spec_from_dict
    except ImportError as exc:
        return skipped("gpu_packing", f"skipped: {exc.name} is not installed on this machine")
    dataset = mnist_dataset()
    work = Workload(
        "cnn",
        dataset["name"],
        {"channels": {"type": "categorical", "choices": [16, 32]}, "conv_blocks": 2, "lr": LR},
        trials=8 if quick else 16,
        epochs=3,
    )
    gpus = torch.cuda.device_count()
    # full mode: the fractions forward, then backward, so neither end always runs first
    orders = [GPU_FRACTIONS] if quick else [GPU_FRACTIONS, GPU_FRACTIONS[::-1]]
    samples = []
    with gpu_sampler() as sampler:
        for order in orders:
            for fraction in order:
                concurrent = max(1, int(gpus / fraction))
                with tempfile.TemporaryDirectory() as folder:
                    spec = study_spec(work, Path(folder), resources={"gpu": fraction, "cpu": 1})
                    spec["dataset"] = dataset
                    spec["search"]["max_concurrent"] = concurrent
                    began = time.time()
                    start = time.perf_counter()
                    with ray_session(num_cpus=max(2, concurrent)):
                        run_study(spec_from_dict(spec), show_progress=False)
                    wall = time.perf_counter() - start
                    ended = time.time()
                gpu = sampler.summary(began, ended)
                samples.append(
                    {
                        "gpu_fraction": fraction,
                        "concurrent_trials": concurrent,
                        "wall_s": wall,
                        "trials_per_hour": work.trials / wall * 3600,
                        **gpu,
                        **memory_per_trial(gpu, trials_per_gpu=max(1, int(1 / fraction))),
                    }
                )
    by_fraction = {
        f: {
            key: statistics.mean(s[key] for s in samples if s["gpu_fraction"] == f)
            if all(s[key] is not None for s in samples if s["gpu_fraction"] == f)
            else None
            for key in ("trials_per_hour", "mean_gpu_utilisation", "peak_memory_per_trial_mib")
        }
        for f in GPU_FRACTIONS
    }
    best = max(v["trials_per_hour"] for v in by_fraction.values())

    def shown(f: float) -> str:
        v = by_fraction[f]
        utilisation = optional(v["mean_gpu_utilisation"], "{:.0f}%")
        memory = optional(v["peak_memory_per_trial_mib"], "{:.0f} MiB")
        return f"gpu {f}: {v['trials_per_hour']:.0f}/h, {utilisation}, {memory}"

    return {
        "name": "gpu_packing",
        "ratio": best / by_fraction[1]["trials_per_hour"],
        "target": "report",
        "detail": f"CNN on {dataset['name']}, {work.trials} trials x {work.epochs} epochs per "
        f"fraction, {gpus} GPU(s); trials/hour, mean GPU utilisation, peak memory per trial "
        f"({sampler.source}): " + "; ".join(shown(f) for f in GPU_FRACTIONS),
        "spans": {
            "tuner": "each fraction: a local Ray started, run_study of the trials (as many at "
            "once as the GPUs hold at that fraction), Ray stopped; trials/hour from that wall "
            "time. The ratio is the best fraction's trials/hour over a whole GPU per trial",
            "gpu": "sampled every 0.5 s over each fraction's span: utilisation averaged over the "
            "GPUs; peak memory per trial is the largest memory any one process held (NVML's "
            "per-process figure), or, where the driver gives none, the peak memory in use on a "
            "GPU divided by the trials sharing it",
        },
        "samples": samples,
    }


def memory_per_trial(gpu: dict[str, Any], trials_per_gpu: int) -> dict[str, Any]:
    """A trial's peak GPU memory: the largest process's (NVML), or where the driver names no
    processes (containers often hide them), a GPU's peak in use shared by its trials."""
    if gpu["peak_process_memory_mib"] is not None:
        peak = gpu["peak_process_memory_mib"]
        return {"peak_memory_per_trial_mib": peak, "memory_from": "process"}
    if gpu["peak_gpu_memory_mib"] is not None:
        return {
            "peak_memory_per_trial_mib": gpu["peak_gpu_memory_mib"] / trials_per_gpu,
            "memory_from": "GPU in use / trials per GPU",
        }
    return {"peak_memory_per_trial_mib": None, "memory_from": None}


def optional(value: float | None, form: str) -> str:
    return "?" if value is None else form.format(value)


def precision_epochs_per_s(run, epochs: int) -> float:
    """Epochs per second of `epochs` more epochs of a warmed-up TrainingRun (each epoch ends on
    the host reading its metrics, so the GPU's queue is drained inside the span)."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(epochs):
        run.run_epoch()
    torch.cuda.synchronize()
    return epochs / (time.perf_counter() - start)


@benchmark
def gpu_precision(quick: bool) -> dict[str, Any]:
    """Epochs per second of one TrainingRun of the MNIST CNN on a GPU: fp32 against bf16 and
    against fp32 through torch.compile, alternating the three in one process."""
    if not torch.cuda.is_available():
        return skipped("gpu_precision", NO_GPU)
    from trainables.data import DataOptions, load_dataset
    from trainables.loop import TrainingOptions, TrainingRun

    dataset = mnist_dataset()
    data = load_dataset(DataOptions(dataset["name"], path=dataset.get("path")))
    hparams = {"channels": 32, "conv_blocks": 2, "hidden_units": 128, "batch_size": 128}
    arms = {"fp32": TrainingOptions(), "compile": TrainingOptions(compile=True)}
    if torch.cuda.is_bf16_supported():
        arms["bf16"] = TrainingOptions(precision="bf16")
    runs, first_epoch = {}, {}
    for name, options in arms.items():  # built and warmed up: compile time is outside the spans
        runs[name] = TrainingRun("cnn", hparams, data, device="cuda", options=options)
        first_epoch[name] = runs[name].run_epoch()
    epochs, repeats = (5, 3) if quick else (10, 5)
    samples = []
    for _ in range(repeats):  # fp32, compile, bf16, fp32, compile, bf16, ...
        rates = {name: precision_epochs_per_s(run, epochs) for name, run in runs.items()}
        samples.append(
            {
                "ratio": rates.get("bf16", math.nan) / rates["fp32"],
                "compile_ratio": rates["compile"] / rates["fp32"],
                **{f"{name}_epochs_per_s": rate for name, rate in rates.items()},
            }
        )
    chosen = median_sample(samples) if "bf16" in arms else samples[len(samples) // 2]
    compile_time = (
        first_epoch["compile"].get(m.COMPILE_TIME_S) if hasattr(m, "COMPILE_TIME_S") else None
    )
    bf16 = (
        f"bf16 {chosen['bf16_epochs_per_s']:.2f} ({chosen['ratio']:.2f}x)"
        if "bf16" in arms
        else "bf16 not supported on this GPU"
    )
    return {
        "name": "gpu_precision",
        "ratio": chosen["ratio"] if "bf16" in arms else None,
        "target": ">= 1.0",
        "detail": f"CNN (32 channels, 2 blocks, batch 128) on {dataset['name']}, {epochs} epochs "
        f"per span: fp32 {chosen['fp32_epochs_per_s']:.2f} epochs/s, {bf16}, torch.compile "
        f"{chosen['compile_epochs_per_s']:.2f} ({chosen['compile_ratio']:.2f}x); compile time "
        + ("not reported" if compile_time is None else f"{compile_time:.1f} s")
        + f", {repeats_text(samples)}",
        "spans": {
            "tuner": "bf16 (autocast) and fp32 through torch.compile: TrainingRun.run_epoch "
            "(training, then train and validation metrics) on the GPU, after a first epoch "
            "outside the span (compilation, cuDNN's autotuning, allocator warm-up)",
            "baseline": "the same TrainingRun in fp32, in the same process, alternating with them",
        },
        "first_epoch": first_epoch,
        "samples": samples,
    }


class GpuSamples:
    """Utilisation (%, averaged over the GPUs), memory in use on each GPU (MiB) and per process
    (MiB, None where the driver does not say), each with its time."""

    def __init__(self, source: str):
        self.source = source
        self.samples: list[dict[str, Any]] = []

    def summary(self, since: float, until: float) -> dict[str, Any]:
        window = [s for s in self.samples if since <= s["time"] <= until]
        per_process = [v for s in window for v in s["process_mib"].values()]
        peak_used = max((s["max_used_mib"] for s in window), default=None)
        return {
            "mean_gpu_utilisation": statistics.mean(s["utilisation"] for s in window)
            if window
            else None,
            "peak_gpu_memory_mib": peak_used,
            "peak_process_memory_mib": max(per_process) if per_process else None,
            "gpu_samples": len(window),
        }


def nvml_reader() -> Callable[[], dict[str, Any]] | None:
    """A function reading every GPU through NVML (nvidia-ml-py), or None without it."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # not installed, or no driver library: nvidia-smi instead
        return None
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]

    def read() -> dict[str, Any]:
        utilisation, used, processes = [], [], {}
        for handle in handles:
            utilisation.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            used.append(pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20)
            try:
                for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if p.usedGpuMemory is not None:
                        processes[p.pid] = processes.get(p.pid, 0) + p.usedGpuMemory / 2**20
            except pynvml.NVMLError:
                pass
        return {
            "utilisation": statistics.mean(utilisation),
            "max_used_mib": max(used),
            "process_mib": processes,
        }

    return read


def nvidia_smi_read() -> dict[str, Any]:
    out = subprocess.run(
        [
            "nvidia-smi",
            "--query-gpu=utilization.gpu,memory.used",
            "--format=csv,noheader,nounits",
        ],
        capture_output=True,
        text=True,
        timeout=5,
    ).stdout
    rows = [[float(v) for v in line.split(",")] for line in out.strip().splitlines()]
    return {
        "utilisation": statistics.mean(r[0] for r in rows),
        "max_used_mib": max(r[1] for r in rows),
        "process_mib": {},
    }


@contextmanager
def gpu_sampler(every_s: float = 0.5) -> Iterator[GpuSamples]:
    """The GPUs sampled in a thread: NVML when nvidia-ml-py is installed, else nvidia-smi."""
    read = nvml_reader()
    result = GpuSamples("NVML" if read else "nvidia-smi")
    read = read or nvidia_smi_read
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            with suppress(Exception):  # a missed sample (nvidia-smi slow or absent) is a gap
                result.samples.append({"time": time.time(), **read()})
            stop.wait(every_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()


# --------------------------------------------------------------------------- entry point


def command_output(*command: str) -> str | None:
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import psutil

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        **{name: installed_version(name) for name in ("torch", "ray", "optuna", "mlflow")},
    }


def installed_version(name: str) -> str | None:
    """A package's version; None where it is not installed (a bare GPU machine)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine_line(about: dict[str, Any]) -> str:
    return (
        f"{about['cores']} cores ({about['cpu']}), {about['memory_gib']:.0f} GiB, "
        f"{about['gpu'] or 'no GPU'}, Python {about['python']}, torch {about['torch']}, "
        f"ray {about['ray']}, optuna {about['optuna']}, mlflow {about['mlflow']}"
    )


def git_state() -> dict[str, Any]:
    status = command_output("git", "status", "--porcelain", "--untracked-files=no")
    return {
        "commit": command_output("git", "rev-parse", "HEAD"),
        "branch": command_output("git", "rev-parse", "--abbrev-ref", "HEAD"),
        "dirty": None if status is None else bool(status),
    }


def ratio_text(result: dict[str, Any]) -> str:
    if result["ratio"] is None:
        return "-"
    bound = ">=" if result.get("ratio_is") == "lower bound" else ""
    return f"{bound}{result['ratio']:.2f}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller studies")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS), help="run just these")
    args = parser.parse_args(argv)
    names = args.only or [n for n in BENCHMARKS if not (args.quick and n in FULL_ONLY)]
    about = machine()
    report: dict[str, Any] = {
        "command": " ".join(
            ["python -m benchmarks.run", *(sys.argv[1:] if argv is None else argv)]
        ),
        "mode": "quick" if args.quick else "full",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": git_state(),
        "machine": about,
        "about": "ratio: tuner over its baseline in the median repeat (see each benchmark's "
        "target for the better direction); spans: what each side's timed span includes; "
        "samples: every repeat's raw figures, in the order they ran; load_avg: the machine's "
        "1, 5 and 15-minute load averages as the benchmark began",
        "benchmarks": [],
    }
    print(f"{report['mode']} mode on {machine_line(about)}", flush=True)
    started_all = time.perf_counter()
    for name in names:
        load = [round(x, 2) for x in os.getloadavg()]
        started = time.perf_counter()
        result = BENCHMARKS[name](args.quick)
        result["seconds"] = round(time.perf_counter() - started, 1)
        result["load_avg"] = load
        report["benchmarks"].append(result)
        report["wall_s"] = round(time.perf_counter() - started_all, 1)
        print(
            f"{result['name']:<22} {ratio_text(result):>7}  target {result['target']:<8} "
            f"{result['detail']}  [{result['seconds']:.0f} s]",
            flush=True,
        )
        if args.json:  # after each benchmark: a long run that dies keeps what it measured
            args.json.write_text(json.dumps(report, indent=2, default=str))
    return report


if __name__ == "__main__":
    main()
