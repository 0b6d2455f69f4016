"""`overhead_tiny`, `overhead_small`, `overhead_vs_optuna`: what a whole study through tuner costs
against what a user would write without it.

Like with like: both sides are whole processes timed from start to exit (Python's start and
imports included on both), the two alternate which runs first from one repeat to the next, and
each benchmark reports the median repeat's ratio with the ratio's spread over the repeats.

- `overhead_tiny` (sub-second trials, target <= 1.3) and `overhead_small` (trials of seconds,
  target <= 1.10; both issue 29's): `python -m tuner run SPEC` (random search, FIFO, Optuna and
  MLflow in SQLite) against `python -m benchmarks.local_trials`, which trains the configs tuner
  sampled with the same loop in a pool of 2 processes, tracking and checkpointing nothing.
- `overhead_vs_optuna` (target <= 1.2): `tuner run` with TPE and ASHA against
  `python -m benchmarks.optuna_study`, the plain Optuna script: two worker processes sharing a
  SQLite study, the same seeded TPE settings and ASHA's rule as an Optuna pruner, MLflow runs in
  SQLite.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import (
    LR,
    Benchmark,
    Workload,
    alternate,
    first_epoch_began,
    journal,
    median_sample,
    repeats_text,
    spread,
    study_spec,
    timed_process,
)
from trainables import metrics as m

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
VS_OPTUNA = Workload(  # ASHA stops most trials after 2 epochs; about a minute on 2 cores
    "cnn",
    "mnist_sample",
    {"channels": {"type": "categorical", "choices": [8, 16]}, "conv_blocks": 2, "lr": LR},
    trials=16,
    epochs=6,
)
GRACE, REDUCTION = 2, 3  # ASHA's grace period and reduction factor in overhead_vs_optuna
WORKERS = 2  # trials at a time, on both sides
QUICK_REPEATS, FULL_REPEATS = 2, 4  # even: each side runs first equally often


def repeats(quick: bool) -> int:
    return QUICK_REPEATS if quick else FULL_REPEATS


# --------------------------------------------------------------------------- the two sides


def tuner_process(spec: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Wall time, start-up (until a trial trains), epochs trained and the seconds spent in them
    of `python -m tuner run SPEC`, with the configs its trials trained."""
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    wall, began, _ = timed_process([sys.executable, "-m", "tuner", "run", str(path)])
    events = journal(folder / "results")
    rows = [e["row"] for e in events if e["event"] == "result"]
    return {
        "s": wall,
        "began": began,
        "startup_s": first_epoch_began(events) - began,
        "epochs": len(rows),
        "training_s": sum(row[m.EPOCH_TIME_S] for row in rows),
        "configs": trial_configs(folder / "results"),
    }


def trial_configs(results: Path) -> list[dict[str, Any]]:
    """Each trial's config, in trial order, from the study's trials.csv."""
    import pandas as pd

    from tuner.results.summary import TRIALS_FILE

    table = pd.read_csv(next(results.glob(f"*/{TRIALS_FILE}"))).sort_values("trial")
    columns = [c for c in table.columns if c.startswith("config.")]
    rows = json.loads(table[columns].to_json(orient="records"))  # numpy -> plain Python
    return [{k.removeprefix("config."): v for k, v in row.items()} for row in rows]


def local_process(work: Workload, configs: list[dict[str, Any]], folder: Path) -> dict[str, Any]:
    """Wall time and start-up of `python -m benchmarks.local_trials` training `configs`."""
    path = folder / "configs.json"
    path.write_text(json.dumps(configs))
    command = [sys.executable, "-m", "benchmarks.local_trials", f"--model={work.model}"]
    command += [f"--dataset={work.dataset}", f"--epochs={work.epochs}", f"--configs={path}"]
    wall, began, output = timed_process([*command, f"--processes={WORKERS}"])
    done = json.loads(output.strip().splitlines()[-1])
    return {"s": wall, "startup_s": done["first_epoch_began"] - began}


def optuna_process(work: Workload, folder: Path) -> dict[str, Any]:
    """The same figures for the plain Optuna script, and the trials its pruner stopped."""
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
            f"--workers={WORKERS}",
            f"--grace-period={GRACE}",
            f"--reduction-factor={REDUCTION}",
            f"--storage=sqlite:///{folder / 'optuna.db'}",
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


def in_temporary_folder(side: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """`side(folder)` run in a fresh temporary folder."""
    with tempfile.TemporaryDirectory() as folder:
        return side(Path(folder))


# --------------------------------------------------------------------------- against local runs


def overhead(work: Workload, quick: bool) -> dict[str, Any]:
    """tuner's whole path (Ray, Optuna, MLflow, checkpoints) against the same configs trained by
    the same loop in plain local processes; both whole processes, alternating."""
    sampled: list[dict[str, Any]] = []  # the configs of the latest tuner run (search.seed 0)

    def tuner() -> dict[str, Any]:
        figures = in_temporary_folder(
            lambda folder: tuner_process(study_spec(work, folder), folder)
        )
        sampled[:] = figures.pop("configs")
        return figures

    def local() -> dict[str, Any]:
        return in_temporary_folder(lambda folder: local_process(work, sampled, folder))

    # tuner runs first in the first repeat: the local side trains the configs it sampled
    rounds = alternate({"tuner": tuner, "local": local}, repeats(quick))
    samples = [
        {
            "ratio": r["tuner"]["s"] / r["local"]["s"],
            "order": r["order"],
            "tuner_s": r["tuner"]["s"],
            "local_s": r["local"]["s"],
            "tuner_startup_s": r["tuner"]["startup_s"],
            "local_startup_s": r["local"]["startup_s"],
        }
        for r in rounds
    ]
    s = median_sample(samples)
    return {
        "ratio": s["ratio"],
        "spread": spread([x["ratio"] for x in samples]),
        "detail": f"{work.trials} {work.model} trials x {work.epochs} epochs on {work.dataset}, "
        f"{WORKERS} at a time: `tuner run` {s['tuner_s']:.1f} s vs local processes "
        f"{s['local_s']:.1f} s, whole processes; start-up (until the first trial trains) "
        f"{s['tuner_startup_s']:.1f} s vs {s['local_startup_s']:.1f} s, "
        f"{repeats_text(samples)}, alternating which runs first",
        "spans": {
            "tuner": "the `python -m tuner run SPEC` process from start to exit: Python's start "
            "and imports, loading the data and checking the spec, a local Ray started and "
            "stopped, the Optuna and MLflow SQLite stores created from nothing, every trial "
            "with its checkpoints and per-epoch MLflow writes, then the results table, the HTML "
            "report and the MLflow summary",
            "baseline": "the `python -m benchmarks.local_trials` process from start to exit: "
            "Python's start and imports, a pool of 2 freshly spawned processes (their start, "
            "imports and data loading), then the configs the latest tuner run sampled "
            "(search.seed 0), trained by the same loop for the same epochs; no search, "
            "tracking, checkpoints or results written",
        },
        "samples": samples,
    }


def overhead_tiny(quick: bool) -> dict[str, Any]:
    return {"name": "overhead_tiny", "target": "<= 1.3", **overhead(TINY, quick)}


def overhead_small(quick: bool) -> dict[str, Any]:
    return {"name": "overhead_small", "target": "<= 1.10", **overhead(SMALL, quick)}


# --------------------------------------------------------------------------- against Optuna


def tpe_asha_spec(work: Workload, folder: Path) -> dict[str, Any]:
    """`study_spec` with TPE and ASHA (grace GRACE, factor REDUCTION)."""
    spec = study_spec(work, folder)
    spec["search"]["algorithm"] = "tpe"
    spec["scheduler"] = {
        "name": "asha",
        "max_epochs": work.epochs,
        "grace_period": GRACE,
        "reduction_factor": REDUCTION,
    }
    return spec


def overhead_vs_optuna(quick: bool) -> dict[str, Any]:
    """The whole `tuner run` process against a plain Optuna script doing the same study."""
    work = VS_OPTUNA

    def tuner() -> dict[str, Any]:
        figures = in_temporary_folder(lambda f: tuner_process(tpe_asha_spec(work, f), f))
        figures.pop("configs")
        return figures

    rounds = alternate(
        {"tuner": tuner, "optuna": lambda: in_temporary_folder(lambda f: optuna_process(work, f))},
        repeats(quick),
    )
    samples = [
        {
            "ratio": r["tuner"]["s"] / r["optuna"]["s"],
            "order": r["order"],
            **{f"tuner_{k}": v for k, v in r["tuner"].items()},
            **{f"optuna_{k}": v for k, v in r["optuna"].items()},
        }
        for r in rounds
    ]
    s = median_sample(samples)
    return {
        "name": "overhead_vs_optuna",
        "ratio": s["ratio"],
        "spread": spread([x["ratio"] for x in samples]),
        "target": "<= 1.2",
        "detail": f"{work.trials} {work.model} trials of up to {work.epochs} epochs on "
        f"{work.dataset}, TPE, {WORKERS} at a time, ASHA's rule on both sides (grace {GRACE}, "
        f"factor {REDUCTION}), Optuna and MLflow in SQLite: `tuner run` {s['tuner_s']:.1f} s "
        f"({s['tuner_epochs']} epochs trained, {s['tuner_training_s']:.0f} s in them) vs a "
        f"plain Optuna script {s['optuna_s']:.1f} s ({s['optuna_epochs']} epochs, "
        f"{s['optuna_training_s']:.0f} s), whole processes; start-up (until the first trial "
        f"trains) {s['tuner_startup_s']:.1f} s vs {s['optuna_startup_s']:.1f} s, "
        f"{repeats_text(samples)}, alternating which runs first",
        "spans": {
            "tuner": "the `python -m tuner run SPEC` process from start to exit: Python start "
            "and imports, the spec and the data, a local Ray started and stopped, the Optuna "
            "and MLflow SQLite stores created from nothing, the trials as Ray actors with "
            "checkpoints, an MLflow parent run and a child run per trial (per-epoch metrics, a "
            "learning-curve figure), the results table and the HTML report",
            "baseline": "the `python -m benchmarks.optuna_study` process from start to exit: "
            "Python start and imports, the Optuna and MLflow SQLite stores created from "
            f"nothing, {WORKERS} spawned worker processes (their imports and data) sharing the "
            "Optuna study in SQLite, each running study.optimize with TPE (the same settings, "
            "seeded per worker) and AshaPruner (Ray's ASHA rule: same rungs, same cutoff), the "
            "same loop, one MLflow run per trial with its params and per-epoch metrics; no "
            "checkpoints, figures, parent run or report",
        },
        "samples": samples,
    }


BENCHMARKS: dict[str, Benchmark] = {
    "overhead_tiny": overhead_tiny,
    "overhead_small": overhead_small,
    "overhead_vs_optuna": overhead_vs_optuna,
}
