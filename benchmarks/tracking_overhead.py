"""`tracking_overhead`: what MLflow tracking to a server costs a study, against tracking off.

The `overhead_small` study run by `run_study` in the benchmark process, tracked to a warmed-up
`mlflow server` on 127.0.0.1 (started before the spans, as `tuner ui` runs it), against the same
study with tracking off. Both sides share the process model (in this process, imports behind
them), so the ratio is tracking's price alone; they alternate which runs first. Target: <= 1.03
(issue 29).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    Benchmark,
    alternate,
    journal,
    median_sample,
    mlflow_server,
    mlflow_server_cpu_s,
    phase_marks,
    repeats_text,
    spread,
    study_spec,
)
from benchmarks.overhead import SMALL
from trainables import metrics as m
from tuner.driver import phases

#: (label, from, to): where a study's seconds go, from the phases its log marks
SPANS = (
    ("to the trials", phases.BEGAN, phases.TRIALS_LAUNCHED),
    ("trials", phases.TRIALS_LAUNCHED, phases.TRIALS_DONE),
    ("results", phases.TRIALS_DONE, phases.RESULTS_WRITTEN),
    ("end", phases.RESULTS_WRITTEN, phases.ENDED),
)


def run_tuner(spec_dict: dict[str, Any]) -> tuple[float, float]:
    """Seconds of `run_study` in this process, which has imported tuner, Ray, Optuna and MLflow
    already (its stores do not exist yet), and the CPU seconds this process used meanwhile."""
    import mlflow.tracking  # noqa: F401  (imported here before the span, as tuner.driver.study is)

    from tuner.driver.study import run_study
    from tuner.spec.job_spec import spec_from_dict

    spec = spec_from_dict(spec_dict)
    start, cpu = time.perf_counter(), time.process_time()
    run_study(spec, num_cpus=2, show_progress=False)
    return time.perf_counter() - start, time.process_time() - cpu


def small_study(uri: str, tracked: bool) -> dict[str, Any]:
    """The SMALL study in a fresh folder, tracked to `uri` or with tracking off: its seconds,
    the seconds of each of its `SPANS`, the seconds its epochs trained (all trials'), and the
    CPU seconds of the driver (this process: Tune's loop, the MLflow writer thread) and of the
    mlflow server meanwhile."""
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        spec = study_spec(SMALL, folder, tracking_uri=uri)
        spec["tracking"]["enabled"] = tracked
        server_cpu = mlflow_server_cpu_s()
        seconds, driver_cpu = run_tuner(spec)
        server_cpu = mlflow_server_cpu_s() - server_cpu
        marks = phase_marks(folder / "results")
        events = journal(folder / "results")
    return {
        "seconds": seconds,
        "spans_s": {label: marks[b] - marks[a] for label, a, b in SPANS},
        "epochs_s": sum(e["row"][m.EPOCH_TIME_S] for e in events if e["event"] == "result"),
        "driver_cpu_s": driver_cpu,
        "server_cpu_s": server_cpu,
    }


def differences_text(samples: list[dict[str, Any]]) -> str:
    """Each span's median over the repeats of (tracked - untracked) seconds, and the epochs',
    the driver's CPU and the server's CPU."""
    keys = [label for label, _, _ in SPANS]
    medians = {
        key: statistics.median(
            s["tracked"]["spans_s"][key] - s["untracked"]["spans_s"][key] for s in samples
        )
        for key in keys
    }
    for key, name in (
        ("epochs_s", "trials' epochs"),
        ("driver_cpu_s", "driver CPU"),
        ("server_cpu_s", "server CPU"),
    ):
        medians[name] = statistics.median(s["tracked"][key] - s["untracked"][key] for s in samples)
    return ", ".join(f"{key} {value:+.2f}" for key, value in medians.items())


def tracking_overhead(quick: bool) -> dict[str, Any]:
    """The SMALL study with MLflow tracking to a server on 127.0.0.1 against tracking off."""
    with tempfile.TemporaryDirectory() as server_folder, mlflow_server(Path(server_folder)) as uri:
        rounds = alternate(
            {
                "tracked": lambda: small_study(uri, tracked=True),
                "untracked": lambda: small_study(uri, tracked=False),
            },
            repeats=2 if quick else 4,
        )
    samples = [
        {
            "ratio": r["tracked"]["seconds"] / r["untracked"]["seconds"],
            "order": r["order"],
            "tracked_s": r["tracked"]["seconds"],
            "untracked_s": r["untracked"]["seconds"],
            "tracked": r["tracked"],
            "untracked": r["untracked"],
        }
        for r in rounds
    ]
    s = median_sample(samples)
    return {
        "name": "tracking_overhead",
        "ratio": s["ratio"],
        "spread": spread([x["ratio"] for x in samples]),
        "target": "<= 1.03",
        "detail": f"{SMALL.trials} {SMALL.model} trials on {SMALL.dataset}: {s['tracked_s']:.1f} "
        f"s tracked to an mlflow server on 127.0.0.1 vs {s['untracked_s']:.1f} s with tracking "
        f"off, {repeats_text(samples)}, alternating which runs first; tracked less untracked, "
        f"s (medians): {differences_text(samples)}",
        "spans": {
            "tuner": "run_study in the benchmark process, tracking to a warmed-up mlflow "
            "server on 127.0.0.1 started before the span: the data, a local Ray started and "
            "stopped, the Optuna SQLite store created from nothing, every trial with its "
            "checkpoints and per-epoch MLflow writes, the results, report and MLflow summary",
            "baseline": "the same study with tracking off, in the same process: no MLflow calls "
            "at all (the server runs idle beside it)",
        },
        "samples": samples,
    }


BENCHMARKS: dict[str, Benchmark] = {"tracking_overhead": tracking_overhead}
