"""`scale`: what one driver sustains with thousands of trivial trials at many slots.

10,000 trials (400 with `--quick`; $TUNER_BENCH_SCALE_TRIALS sets another count) of a trainable
that trains nothing and reports 10 results, 64 at a time (16 with `--quick`) on a local Ray told
of that many CPUs, through `run_study`'s whole path: tracked to an `mlflow server` on 127.0.0.1,
then with tracking off. On a cluster one driver serves every trial, so its results per second,
CPU per trial, peak memory and how far MLflow trails it are what limit dozens of slots. The
figures are checked against issue 18's targets in a table; the ratio is results/s tracked
(target >= 100/s). One study per side: no repeats, so no spread.
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    LR,
    Benchmark,
    Workload,
    journal,
    mlflow_server,
    mlflow_server_cpu_s,
    study_spec,
)
from trainables import metrics as m

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
    "cpu_ms_per_trial_tracking": (35.0, "lower"),  # issue 29 (issue 18: 50)
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
        "spread": None,  # one study a side: nothing to spread over
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


BENCHMARKS: dict[str, Benchmark] = {"scale": scale}
