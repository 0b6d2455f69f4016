"""`tracking_overhead`: what MLflow tracking to a server costs a study, against tracking off.

The `overhead_small` study run by `run_study` in the benchmark process, tracked to a warmed-up
`mlflow server` on 127.0.0.1 (started before the spans, as `tuner ui` runs it), against the same
study with tracking off. Both sides share the process model (in this process, imports behind
them), so the ratio is tracking's price alone; they alternate which runs first. Target: <= 1.03
(issue 29).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    Benchmark,
    alternate,
    median_sample,
    mlflow_server,
    repeats_text,
    spread,
    study_spec,
)
from benchmarks.overhead import SMALL


def run_tuner(spec_dict: dict[str, Any]) -> float:
    """Seconds of `run_study` in this process, which has imported tuner, Ray, Optuna and MLflow
    already; its stores do not exist yet."""
    import mlflow.tracking  # noqa: F401  (imported here before the span, as tuner.driver.study is)

    from tuner.driver.study import run_study
    from tuner.spec.job_spec import spec_from_dict

    spec = spec_from_dict(spec_dict)
    start = time.perf_counter()
    run_study(spec, num_cpus=2, show_progress=False)
    return time.perf_counter() - start


def small_study(uri: str, tracked: bool) -> float:
    """The SMALL study's seconds in a fresh folder, tracked to `uri` or with tracking off."""
    with tempfile.TemporaryDirectory() as folder:
        spec = study_spec(SMALL, Path(folder), tracking_uri=uri)
        spec["tracking"]["enabled"] = tracked
        return run_tuner(spec)


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
            "ratio": r["tracked"] / r["untracked"],
            "order": r["order"],
            "tracked_s": r["tracked"],
            "untracked_s": r["untracked"],
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
        f"off, {repeats_text(samples)}, alternating which runs first",
        "spans": {
            "tuner": "run_study in the benchmark process, tracking to a warmed-up mlflow "
            "server on 127.0.0.1 started before the span: the data, a local Ray started and "
            "stopped, the Optuna SQLite store created from nothing, every trial with its "
            "checkpoints and per-epoch MLflow writes, the results, report and MLflow summary",
            "baseline": "the same study with tracking off, in the same process: no MLflow calls "
            "at all",
        },
        "samples": samples,
    }


BENCHMARKS: dict[str, Benchmark] = {"tracking_overhead": tracking_overhead}
