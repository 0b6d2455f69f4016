"""`search_efficiency`, `search_efficiency_mlp`, `_cnn`, `_lstm`: how many epochs search needs
before a trial reaches a target accuracy, random+FIFO against TPE+ASHA (and three arms between).

Time is not measured: epochs trained, in the order results reach the driver, until the first
result at or above the target. Every arm is built as `run_study` builds a study (tuner's space,
trainable, searcher and scheduler; tracking off) and stopped once a trial reaches the target;
the arms alternate within each seed, over 7 seeds (5 with `--quick`, where 3 had made the median
noise; even 5 move the shipped spaces' ratios by half between two runs of the same code, see
docs/performance.md; $TUNER_BENCH_SEARCH_SEEDS sets another count, $TUNER_BENCH_SEARCH_ARMS a
comma-separated subset of the arms). A seed that never reaches the target counts every epoch it
trained and ranks after every seed that did (a median on it is a lower bound). Targets:
`search_efficiency` >= 3 (a wide space where few configs reach val_acc 0.98), and >= 1 on each
shipped space (search_spaces/mlp.yaml, cnn.yaml, lstm.yaml, with the scheduler's defaults): the
spaces most users run, where TPE with ASHA must not need more epochs than random search.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    from ray.tune import Stopper
except ImportError:  # a bare GPU machine (benchmarks/gpu_check.sh): these benchmarks are not run
    Stopper = object  # type: ignore[assignment,misc]

from benchmarks.common import Benchmark, Workload, spread
from trainables import metrics as m


@dataclass(frozen=True)
class SearchProblem:
    """A space where search has to find the few configs that reach `target` val_acc."""

    work: Workload
    target: float
    about: str
    #: ASHA's keys beyond max_epochs; empty: the scheduler's defaults, what a user gets
    asha: dict[str, Any] = field(default_factory=dict)


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
    asha={"grace_period": 1, "reduction_factor": 3},
)
SHIPPED = SearchProblem(  # most configs are decent; 5 of 60 random ones reached 0.986 in 30 epochs
    Workload("mlp", "digits", "mlp", trials=30, epochs=30),
    target=0.986,  # 355 of the 360 validation digits
    about="digits MLP, the shipped search_spaces/mlp.yaml",
)
#: the CNN and LSTM spaces on digits, not MNIST or MNIST-1D: a seed's arms in minutes, not an hour
SHIPPED_CNN = SearchProblem(  # about 1 random config in 4 reaches the target in 12 epochs
    Workload("cnn", "digits", "cnn", trials=20, epochs=12),
    target=0.96,  # 346 of the 360 validation digits
    about="digits CNN, the shipped search_spaces/cnn.yaml",
)
SHIPPED_LSTM = SearchProblem(  # rows as steps (8 of 8); about 1 config in 4 reaches it in 12 epochs
    Workload("lstm", "digits", "lstm", trials=20, epochs=12),
    target=0.983,  # 354 of the 360 validation digits
    about="digits LSTM (rows as steps), the shipped search_spaces/lstm.yaml",
)
SEEDS_ENV = "TUNER_BENCH_SEARCH_SEEDS"  # overrides the number of seeds
ARMS_ENV = "TUNER_BENCH_SEARCH_ARMS"  # a comma-separated subset of ARMS
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
        "asha": {"name": "asha", "max_epochs": work.epochs, **problem.asha},
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

    from tuner.driver.optuna_storage import execution_name
    from tuner.driver.preparation import prepare
    from tuner.driver.schedulers import make_scheduler
    from tuner.driver.study import study_environment
    from tuner.driver.study_run import make_searcher, make_trainable
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


def per_seed_ratios(slow: list[dict[str, Any]], fast: list[dict[str, Any]]) -> list[float]:
    """Each seed's epochs on the slow arm over its epochs on the fast one."""
    return [s["epochs"] / f["epochs"] for s, f in zip(slow, fast, strict=True)]


def chosen_arms() -> list[str]:
    """The arms to run: every one, or $TUNER_BENCH_SEARCH_ARMS's (comma-separated; without
    random+fifo and tpe+asha there is no ratio, as when only the arms a change touched rerun)."""
    named = os.environ.get(ARMS_ENV)
    if not named:
        return list(ARMS)
    chosen = [arm.strip() for arm in named.split(",") if arm.strip()]
    unknown = sorted(set(chosen) - set(ARMS))
    if unknown or not chosen:
        raise ValueError(f"{ARMS_ENV} must name arms among {', '.join(ARMS)} but got {named!r}")
    return [arm for arm in ARMS if arm in chosen]


def asha_text(problem: SearchProblem) -> str:
    """ASHA's settings in the benchmark's words: the problem's, or the scheduler's defaults."""
    from tuner.driver.schedulers import AshaSettings

    asha = AshaSettings(**problem.asha)
    told = "" if problem.asha else "the defaults, "
    return f"{told}grace {asha.grace_period}, factor {asha.reduction_factor:g}"


def search_efficiency_on(problem: SearchProblem, name: str, target: str, quick: bool):
    """Epochs until the first trial reaches the target, for every arm over seeds (the arms take
    turns within each seed, in reverse order on every other seed), all in one Ray session."""
    from tuner.driver.ray_session import ray_session
    from tuner.driver.study_log import logs_to_file

    seeds = range(int(os.environ.get(SEEDS_ENV, 5 if quick else 7)))
    arms = chosen_arms()
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    with (
        tempfile.TemporaryDirectory() as folder,
        logs_to_file(Path(folder) / "ray.log"),
        ray_session(num_cpus=2),
    ):
        for seed in seeds:
            for arm in arms if seed % 2 == 0 else arms[::-1]:
                run = search_until_target(problem, arm, seed)
                runs[arm].append(run)
                print(  # a long benchmark shows each study as it ends (stderr: not the report)
                    f"  {name} seed {seed} {arm}: {shown(run)} epochs, {run['trials']} trials, "
                    f"{run['wall_s']} s",
                    file=sys.stderr,
                    flush=True,
                )
    medians = {arm: censored_median(r) for arm, r in runs.items()}
    slow, fast = medians.get("random+fifo"), medians.get("tpe+asha")
    if slow is None or fast is None:
        ratio, bound, ratios = None, "none: random+fifo or tpe+asha was not run", []
    else:
        ratio = slow["epochs"] / fast["epochs"] if fast["reached"] else None
        bound = "exact" if slow["reached"] else "lower bound"
        if ratio is None:
            bound = "none: TPE+ASHA's median seed never reached the target"
        ratios = per_seed_ratios(runs["random+fifo"], runs["tpe+asha"])
    work = problem.work
    per_arm = "; ".join(
        f"{ARM_NAMES[arm]} {shown(medians[arm])} [{', '.join(shown(r) for r in runs[arm])}]"
        for arm in arms
    )
    return {
        "name": name,
        "ratio": ratio,
        "ratio_is": bound,
        "spread": spread(ratios),
        "spread_is": "the lowest and highest of the seeds' own random+FIFO over TPE+ASHA "
        "ratios (a seed that did not reach the target on an arm gives a bound)",
        "target": target,
        "detail": f"epochs until a trial reaches val_acc {problem.target} ({problem.about}; "
        f"{work.trials} trials of up to {work.epochs} epochs, 2 at a time), median of "
        f"{len(seeds)} seeds [per seed; '+': never reached, epochs spent]: {per_arm}",
        "spans": {
            "counted": "epochs trained, in the order their results reached the driver, until "
            "the first result at or above the target; a seed that never gets there counts "
            "every epoch it trained, marked as not reached, and ranks after every seed that "
            "did, on every arm alike. A median on such a seed is a lower bound, and so is a "
            "ratio over it",
            "arms": f"tuner's space, trainable and scheduler (ASHA: {asha_text(problem)}); "
            "tuner's TruthfulOptunaSearch on every arm but the last, which uses Ray's stock "
            "OptunaSearch; tracking off; each study stops once a trial reaches the target",
        },
        "samples": runs,
        "medians": {
            arm: {"epochs": r["epochs"], "reached": r["reached"]} for arm, r in medians.items()
        },
    }


def search_efficiency(quick: bool) -> dict[str, Any]:
    return search_efficiency_on(WIDE, "search_efficiency", ">= 3", quick)


def search_efficiency_mlp(quick: bool) -> dict[str, Any]:
    return search_efficiency_on(SHIPPED, "search_efficiency_mlp", ">= 1", quick)


def search_efficiency_cnn(quick: bool) -> dict[str, Any]:
    return search_efficiency_on(SHIPPED_CNN, "search_efficiency_cnn", ">= 1", quick)


def search_efficiency_lstm(quick: bool) -> dict[str, Any]:
    return search_efficiency_on(SHIPPED_LSTM, "search_efficiency_lstm", ">= 1", quick)


BENCHMARKS: dict[str, Benchmark] = {
    "search_efficiency": search_efficiency,
    "search_efficiency_mlp": search_efficiency_mlp,
    "search_efficiency_cnn": search_efficiency_cnn,
    "search_efficiency_lstm": search_efficiency_lstm,
}
