"""`recipe_knobs`: what the recipe knobs of the built-in loop (lr schedule and warm-up, gradient
clipping, label smoothing, augmentation; `trainables.recipe`) buy a search of the same budget.

Two problems: the CNN on the 5,000 real MNIST digits (`mnist_sample`) and the LSTM on MNIST-1D
(`mnist1d`), each with a held-out test split (test_fraction 0.2). Two arms per problem, the
same trial budget: *before*, the shipped space without any recipe knob (each at its default),
and *after*, the same space with the knobs in it (`KNOBS`). Each study is TPE (tuner's sampler
settings) with Ray's ASHA rule (grace 1, factor 3, as `benchmarks.optuna_study.AshaPruner`) on
val_acc, in one process per study without Ray, the trials one after another on one core, each
trained by `TrainingRun` with the study's epochs as its schedule's budget. A study's result is
its best trial's best epoch: validation accuracy there, and the test accuracy of that epoch's
model (the test split never picks anything). Reported: the median over seeds of each, per arm,
and the ratio after/before of the median test accuracies (the CNN's; the LSTM's in detail).
Accuracy, not time: nothing here is timed but the wall clock of each study, for the record.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from typing import Any

from benchmarks.common import Benchmark, spread

PROBLEMS = {"cnn": "mnist_sample", "lstm": "mnist1d"}
#: the recipe knobs each problem's *after* arm adds to the shipped space
KNOBS: dict[str, dict[str, Any]] = {
    "cnn": {
        "lr_schedule": {"type": "categorical", "choices": ["constant", "cosine", "onecycle"]},
        "augment": {"type": "categorical", "choices": ["none", "shift"]},
        "label_smoothing": {"type": "float", "low": 0.0, "high": 0.1},
    },
    "lstm": {
        "lr_schedule": {"type": "categorical", "choices": ["constant", "cosine", "onecycle"]},
        "grad_clip_norm": {"type": "float", "low": 0.5, "high": 5.0, "log": True},
    },
}
ARMS = ("before", "after")
TEST_FRACTION = 0.2
#: (trials, epochs, seeds)
QUICK = (6, 4, 3)
FULL = (16, 12, 5)
GRACE_PERIOD, REDUCTION_FACTOR = 1, 3


def arm_space(model: str, arm: str) -> dict[str, Any]:
    """The shipped space for `model` with every recipe knob taken out (before) or set to
    `KNOBS` (after)."""
    from trainables.recipe import RECIPE_DEFAULTS
    from tuner.spec.spaces import read_space

    shipped, _ = read_space(model)
    space = {k: v for k, v in shipped.items() if k not in RECIPE_DEFAULTS}
    return {**space, **KNOBS[model]} if arm == "after" else space


_DATA: dict[str, Any] = {}


def dataset(name: str):
    if name not in _DATA:
        from trainables.data import DataOptions, load_dataset

        _DATA[name] = load_dataset(DataOptions(name, test_fraction=TEST_FRACTION))
    return _DATA[name]


def study(job: tuple[str, str, int, int, int]) -> dict[str, Any]:
    """One study: `trials` TPE trials of up to `epochs` epochs, pruned by ASHA's rule on
    val_acc; its best trial's best epoch, with that epoch's test accuracy."""
    import optuna
    import torch

    from benchmarks.optuna_study import AshaPruner
    from trainables import metrics as m
    from trainables.loop import TrainingRun
    from tuner.driver.samplers import make_sampler
    from tuner.spec.spaces import load_space

    model, arm, seed, trials, epochs = job
    torch.set_num_threads(1)  # one core per study, as a tuner trial with cpu: 1
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = dataset(PROBLEMS[model])
    space = load_space(arm_space(model, arm), model)
    best: dict[str, Any] = {"val_acc": -1.0}
    started = time.perf_counter()
    epochs_trained = 0

    def objective(trial: optuna.Trial) -> float:
        nonlocal epochs_trained
        config = space.sample(trial)
        run = TrainingRun(model, config, data, seed=seed, max_epochs=epochs)
        top = -1.0
        for epoch in range(1, epochs + 1):
            row = run.run_epoch()
            epochs_trained += 1
            value = row[m.VAL_ACC] if not row.get(m.DIVERGED) else 0.0
            if value > best["val_acc"]:
                test = run.test_metrics(data.x_test, data.y_test)[m.TEST_ACC]
                best.update(val_acc=value, test_acc=test, trial=trial.number, epoch=epoch)
                best["config"] = config
            top = max(top, value)
            trial.report(value, epoch)
            if row.get(m.DIVERGED) or trial.should_prune():
                raise optuna.TrialPruned()
        return top

    optuna_study = optuna.create_study(
        direction="maximize",
        sampler=make_sampler("tpe", seed),
        pruner=AshaPruner(GRACE_PERIOD, REDUCTION_FACTOR, epochs),
    )
    optuna_study.optimize(objective, n_trials=trials)
    return {
        "model": model,
        "arm": arm,
        "seed": seed,
        "val_acc": best["val_acc"],
        "test_acc": best["test_acc"],
        "best_trial": best["trial"],
        "best_epoch": best["epoch"],
        "best_config": best["config"],
        "epochs_trained": epochs_trained,
        "wall_s": round(time.perf_counter() - started, 1),
    }


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def recipe_knobs(quick: bool) -> dict[str, Any]:
    trials, epochs, seeds = QUICK if quick else FULL
    # the arms alternate which goes first within each seed; two studies at a time, one core each
    jobs = [
        (model, arm, seed, trials, epochs)
        for seed in range(seeds)
        for model in PROBLEMS
        for arm in (ARMS if seed % 2 == 0 else ARMS[::-1])
    ]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        done = pool.map(study, jobs, chunksize=1)
    runs = {
        (model, arm): [r for r in done if (r["model"], r["arm"]) == (model, arm)]
        for model in PROBLEMS
        for arm in ARMS
    }
    medians = {
        f"{model}/{arm}": {key: median_of(runs[model, arm], key) for key in ("val_acc", "test_acc")}
        for model in PROBLEMS
        for arm in ARMS
    }

    def ratio(model: str) -> float:
        return medians[f"{model}/after"]["test_acc"] / medians[f"{model}/before"]["test_acc"]

    per_seed = [
        a["test_acc"] / b["test_acc"]
        for b, a in zip(runs["cnn", "before"], runs["cnn", "after"], strict=True)
    ]
    arms = "; ".join(
        f"{name} val {figures['val_acc']:.3f} test {figures['test_acc']:.3f}"
        for name, figures in medians.items()
    )
    return {
        "name": "recipe_knobs",
        "ratio": ratio("cnn"),
        "spread": spread(per_seed),
        "spread_is": "the lowest and highest of the seeds' own CNN test-accuracy ratios",
        "target": "report",
        "detail": f"best trial's val/test accuracy, median of {seeds} seeds, {trials} trials of "
        f"up to {epochs} epochs (TPE + ASHA on val_acc), shipped space before / with the "
        f"recipe knobs after: {arms}; LSTM after/before test {ratio('lstm'):.3f}",
        "spans": {
            "before": "the shipped space, recipe knobs at their defaults (constant lr, no "
            "clipping, smoothing or augmentation)",
            "after": f"the same space plus {KNOBS}",
            "measured": "the best trial's best epoch by val_acc; test_acc of that epoch's model "
            f"on a held-out test split ({TEST_FRACTION} of the rows, never used to choose)",
        },
        "samples": done,
        "medians": medians,
    }


BENCHMARKS: dict[str, Benchmark] = {"recipe_knobs": recipe_knobs}
