"""`startup`: where a small study's start-up goes, phase by phase, against a plain script's.

A user's first study is small, and half of its time is start-up. Both sides are whole processes
timed from their start, alternating which runs first: `python -m tuner run SPEC` (4 sub-second
digits MLP trials, 2 at a time, Optuna and MLflow in new SQLite files) and
`python -m benchmarks.local_trials` training the configs tuner sampled with the same loop in a
pool of 2 processes. The figure is tuner's start-up (until its first trial trains) less the
script's, in seconds (target: at most 1.5 s more); the detail splits tuner's into the phases its
log marks (`tuner.driver.phases`), each the median over the repeats.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from benchmarks.common import (
    LR,
    Workload,
    alternate,
    first_epoch_began,
    journal,
    phase_marks,
    repeats_text,
    spread,
    study_spec,
)
from benchmarks.overhead import in_temporary_folder, local_process, repeats, tuner_process
from tuner.driver import phases

WORK = Workload(
    "mlp",
    "digits",
    {"hidden_units": {"type": "int", "low": 64, "high": 256, "log": True}, "lr": LR},
    trials=4,
    epochs=3,
)
TARGET_EXTRA_S = 1.5
#: the spans the detail reports: (label, from phase, to phase); "spawn" is the process's start
SPANS = (
    ("imports", "spawn", phases.BEGAN),
    ("prepare", phases.BEGAN, phases.PREPARED),
    ("optuna storage", phases.PREPARED, phases.OPTUNA_READY),
    ("mlflow store", phases.OPTUNA_READY, phases.TRACKING_READY),
    # Ray starts on a thread beside MLflow's store: this is its start beyond that
    ("ray, beyond the mlflow store", phases.TRACKING_READY, phases.RAY_STARTED),
    ("to the first trial", phases.RAY_STARTED, phases.FIRST_TRIAL_STARTED),
    ("to its first batch", phases.FIRST_TRIAL_STARTED, "first_batch"),
    ("end", phases.TRIALS_DONE, phases.ENDED),
)


def phase_times(folder: Path, began: float) -> dict[str, float]:
    """Each phase's end (Unix time) from the study's log, with the spawn and the first batch."""
    marks = phase_marks(folder / "results")
    return {**marks, "spawn": began, "first_batch": first_epoch_began(journal(folder / "results"))}


def tuner_side(sampled: list[dict[str, Any]]) -> dict[str, Any]:
    def side(folder: Path) -> dict[str, Any]:
        figures = tuner_process(study_spec(WORK, folder), folder)
        times = phase_times(folder, figures["began"])
        figures["spans"] = {label: times[b] - times[a] for label, a, b in SPANS}
        return figures

    figures = in_temporary_folder(side)
    sampled[:] = figures.pop("configs")
    return figures


def startup(quick: bool) -> dict[str, Any]:
    sampled: list[dict[str, Any]] = []  # the configs of the latest tuner run (search.seed 0)
    rounds = alternate(
        {
            "tuner": lambda: tuner_side(sampled),
            "local": lambda: in_temporary_folder(lambda f: local_process(WORK, sampled, f)),
        },
        repeats(quick),
    )
    samples = [
        {
            "ratio": r["tuner"]["startup_s"] - r["local"]["startup_s"],
            "order": r["order"],
            "tuner_startup_s": r["tuner"]["startup_s"],
            "local_startup_s": r["local"]["startup_s"],
            "tuner_phases_s": r["tuner"]["spans"],
        }
        for r in rounds
    ]
    extra = statistics.median(s["ratio"] for s in samples)
    phase_medians = {
        label: statistics.median(s["tuner_phases_s"][label] for s in samples)
        for label, _, _ in SPANS
    }
    phases_text = ", ".join(f"{k} {v:.2f}" for k, v in phase_medians.items())
    return {
        "name": "startup",
        "ratio": extra,
        "spread": spread([s["ratio"] for s in samples]),
        "target": f"<= {TARGET_EXTRA_S} s",
        "detail": f"seconds of start-up beyond a plain script's, until the first trial trains "
        f"({WORK.trials} {WORK.model} trials on {WORK.dataset}): tuner "
        f"{statistics.median(s['tuner_startup_s'] for s in samples):.2f} s vs "
        f"{statistics.median(s['local_startup_s'] for s in samples):.2f} s, "
        f"{repeats_text(samples)}; tuner's phases (s, medians): {phases_text}",
        "spans": {
            "tuner": "from the `python -m tuner run SPEC` process's start to its first trial's "
            "first batch (its first result's time less that epoch's)",
            "baseline": "from the `python -m benchmarks.local_trials` process's start to its "
            "first config's first batch, in a pool of 2 freshly spawned processes",
        },
        "samples": samples,
    }


BENCHMARKS = {"startup": startup}
