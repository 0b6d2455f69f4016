"""The benchmark runner's pure parts: how repeats alternate and are summed up, when results may
be written, how censored seeds rank, how epochs to a target are counted, the plain Optuna
baseline's space and its ASHA rule. (The benchmarks themselves are not run here.)"""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from benchmarks.common import abab, dirty_refusal, git_state, median_sample, spread, spread_text
from benchmarks.gpu import GpuSamples, memory_per_trial, pass_ratios
from benchmarks.optuna_study import AshaPruner, asha_rungs, asha_stops, suggest
from benchmarks.run import BENCHMARKS, parse, result_line
from benchmarks.search_efficiency import (
    ARMS,
    ARMS_ENV,
    SHIPPED,
    WIDE,
    TargetWatch,
    asha_text,
    censored_median,
    chosen_arms,
    per_seed_ratios,
    search_spec,
    shown,
)
from benchmarks.tracking_overhead import differences_text
from benchmarks.trainable_vs_bare import loop_vs_bare
from tuner.driver.schedulers import AshaSettings


def run(epochs: int, reached: bool) -> dict:
    return {"epochs": epochs, "reached": reached}


def test_a_seed_that_never_reached_the_target_ranks_after_every_seed_that_did():
    # 85 epochs without reaching it is not better than 300 epochs to reach it
    assert censored_median([run(85, False), run(300, True), run(120, True)]) == run(300, True)


def test_a_median_on_a_censored_seed_is_that_seed_and_shows_as_a_lower_bound():
    median = censored_median([run(1500, False), run(979, True), run(1400, False)])
    assert median == run(1400, False)
    assert shown(median) == "1400+"
    assert shown(run(979, True)) == "979"


def test_median_sample_is_the_middle_ratio():
    samples = [{"ratio": 1.3}, {"ratio": 0.9}, {"ratio": 1.1}]
    assert median_sample(samples) == {"ratio": 1.1}


def test_target_watch_counts_epochs_in_arrival_order_until_the_target_then_stops_all():
    watch = TargetWatch("val_acc", 0.98)
    arrivals = [("a", 1, 0.5), ("b", 1, 0.6), ("a", 2, 0.97), ("b", 2, 0.985), ("a", 3, 0.99)]
    for trial, epoch, value in arrivals[:3]:
        assert watch(trial, {"epoch": epoch, "val_acc": value}) is False
        assert not watch.stop_all()
    watch("b", {"epoch": 2, "val_acc": 0.985})
    watch("a", {"epoch": 3, "val_acc": 0.99})
    assert watch.until_target == 4
    assert watch.stop_all()


def test_target_watch_ignores_the_repeated_last_result_of_a_finished_trial():
    watch = TargetWatch("val_acc", 0.98)
    watch("a", {"epoch": 1, "val_acc": 0.5})
    watch("a", {"epoch": 1, "val_acc": 0.5})  # Ray's duplicate of the last result
    watch("a", {"epoch": 2, "val_acc": float("nan")})
    assert len(watch.results) == 2
    assert watch.until_target is None and not watch.stop_all()


def test_the_optuna_baseline_samples_the_same_kinds_of_entries_as_a_tuner_space():
    space = {
        "channels": {"type": "categorical", "choices": [8, 16]},
        "conv_blocks": 2,
        "lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
        "units": {"type": "int", "low": 4, "high": 8},
    }
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    config = suggest(trial, space)
    assert config["channels"] in (8, 16) and config["conv_blocks"] == 2
    assert 1e-3 <= config["lr"] <= 1e-2 and 4 <= config["units"] <= 8
    assert set(trial.params) == {"channels", "lr", "units"}


def test_gpu_samples_summarise_only_their_window_and_per_trial_memory_prefers_processes():
    samples = GpuSamples("NVML")
    samples.samples = [
        {"time": 1.0, "utilisation": 90.0, "max_used_mib": 9000.0, "process_mib": {7: 5000.0}},
        {"time": 10.0, "utilisation": 40.0, "max_used_mib": 4000.0, "process_mib": {}},
        {"time": 11.0, "utilisation": 60.0, "max_used_mib": 6000.0, "process_mib": {}},
    ]
    hidden = samples.summary(5.0, 12.0)  # the first sample belongs to an earlier span
    assert hidden["mean_gpu_utilisation"] == 50.0 and hidden["peak_gpu_memory_mib"] == 6000.0
    assert hidden["peak_process_memory_mib"] is None
    assert memory_per_trial(hidden, trials_per_gpu=4)["peak_memory_per_trial_mib"] == 1500.0
    samples.samples[2]["process_mib"] = {1: 900.0, 2: 1100.0}
    named = memory_per_trial(samples.summary(5.0, 12.0), trials_per_gpu=4)
    assert named == {"peak_memory_per_trial_mib": 1100.0, "memory_from": "process"}
    assert memory_per_trial(samples.summary(20.0, 30.0), 2)["peak_memory_per_trial_mib"] is None


def test_the_two_sides_alternate_which_runs_first():
    assert abab(4, "tuner", "local") == [
        ("tuner", "local"),
        ("local", "tuner"),
        ("tuner", "local"),
        ("local", "tuner"),
    ]
    assert abab(1, "a", "b") == [("a", "b")]
    assert abab(0, "a", "b") == []


def test_the_median_repeat_and_the_spread_of_the_ratio():
    samples = [{"ratio": 1.3}, {"ratio": 0.9}, {"ratio": 1.1}, {"ratio": 1.2}]
    assert median_sample(samples) == {"ratio": 1.2}  # the upper middle of an even number
    assert spread([s["ratio"] for s in samples]) == [0.9, 1.3]
    assert spread([]) is None and spread([None, 2.0]) == [2.0, 2.0]
    assert spread_text([0.9, 1.3]) == "0.90-1.30" and spread_text(None) == ""


def test_the_printed_line_carries_the_median_ratio_and_its_spread():
    result = {"name": "overhead_tiny", "ratio": 1.634, "spread": [1.55, 1.702], "target": "<= 2.0"}
    line = result_line({**result, "detail": "16 mlp trials", "seconds": 61.4})
    assert line.split()[:6] == ["overhead_tiny", "1.63", "spread", "1.55-1.70", "target", "<="]
    assert line.endswith("16 mlp trials  [61 s]")
    unspread = result_line({**result, "spread": None, "detail": "d", "seconds": 1.0})
    assert "spread -" in unspread


def test_search_efficiency_spread_is_over_each_seeds_own_ratio():
    slow = [{"epochs": 300}, {"epochs": 90}, {"epochs": 100}]
    fast = [{"epochs": 100}, {"epochs": 90}, {"epochs": 20}]
    assert per_seed_ratios(slow, fast) == [3.0, 1.0, 5.0]


def test_search_efficiency_runs_every_arm_or_the_ones_named(monkeypatch):
    monkeypatch.delenv(ARMS_ENV, raising=False)
    assert chosen_arms() == list(ARMS)
    monkeypatch.setenv(ARMS_ENV, "tpe+asha, random+fifo")
    assert chosen_arms() == ["random+fifo", "tpe+asha"]  # in ARMS' order
    monkeypatch.setenv(ARMS_ENV, "tpe+hyperband")
    with pytest.raises(ValueError, match="tpe\\+hyperband"):
        chosen_arms()


def test_the_shipped_spaces_are_searched_with_the_schedulers_defaults():
    spec = search_spec(SHIPPED, Path("study"), "tpe", "asha", seed=0)
    assert spec["scheduler"] == {"name": "asha", "max_epochs": SHIPPED.work.epochs}
    defaults = AshaSettings()
    assert asha_text(SHIPPED) == (
        f"the defaults, grace {defaults.grace_period}, factor {defaults.reduction_factor:g}"
    )
    assert asha_text(WIDE) == "grace 1, factor 3"  # the wide space keeps its own settings
    assert {"search_efficiency_mlp", "search_efficiency_cnn", "search_efficiency_lstm"} <= set(
        BENCHMARKS
    )


def git(folder: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com", *args],
        cwd=folder,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """A git repository with one committed file."""
    git(tmp_path, "init", "-q")
    (tmp_path / "tuner.py").write_text("x = 1\n")
    git(tmp_path, "add", "tuner.py")
    git(tmp_path, "commit", "-q", "-m", "first")
    return tmp_path


def test_results_from_a_clean_tree_are_written_and_untracked_files_do_not_count(repository):
    (repository / "scratch.txt").write_text("not tracked")
    assert dirty_refusal(repository, None) is None
    assert git_state(repository)["dirty"] is False


def test_results_from_a_dirty_tree_are_refused_without_a_reason(repository):
    (repository / "tuner.py").write_text("x = 2\n")
    refusal = dirty_refusal(repository, None)
    assert refusal is not None
    assert "1 tracked file(s) have uncommitted changes" in refusal
    assert "--dirty-because" in refusal
    assert dirty_refusal(repository, "  ") == refusal  # a blank reason is no reason


def test_a_dirty_tree_with_a_reason_is_allowed_and_the_reason_is_recorded(repository):
    (repository / "tuner.py").write_text("x = 2\n")
    assert dirty_refusal(repository, "timing the old scheduler against the new") is None
    state = git_state(repository, "timing the old scheduler against the new")
    assert state["dirty"] is True
    assert state["dirty_because"] == "timing the old scheduler against the new"
    assert git_state(repository)["dirty_because"] is None


def test_the_command_keeps_its_flags_and_refuses_json_only_from_a_dirty_tree(monkeypatch, tmp_path):
    monkeypatch.setattr("benchmarks.run.dirty_refusal", lambda root, why: None if why else "no")
    args = parse(["--quick", "--only", "overhead_tiny", "overhead_small"])
    assert args.quick and args.only == ["overhead_tiny", "overhead_small"]
    assert parse([]).json is None  # no file written: nothing refused
    with pytest.raises(SystemExit) as refused:
        parse(["--json", str(tmp_path / "r.json")])
    assert refused.value.code == 2
    assert parse(["--json", str(tmp_path / "r.json"), "--dirty-because", "why"]).dirty_because
    assert list(BENCHMARKS)[:4] == [
        "trainable_vs_bare",
        "overhead_tiny",
        "overhead_small",
        "overhead_vs_optuna",
    ]


def test_the_optuna_baseline_prunes_by_rays_asha_rule():
    from ray.tune.schedulers.async_hyperband import _Bracket

    assert asha_rungs(2, 3, 6) == [2] and asha_rungs(1, 3, 27) == [1, 3, 9]
    bracket = _Bracket(min_t=2, max_t=6, reduction_factor=3, s=0)
    values = [0.5, 0.7, 0.4, 0.45, 0.9, 0.3, 0.42, 0.41, 0.6, 0.35]  # val_loss: lower is better
    for i, value in enumerate(values):
        ray_stops = bracket.on_result(SimpleNamespace(trial_id=str(i)), 2, -value) == "STOP"
        assert asha_stops(-value, [-v for v in values[:i]], 3) == ray_stops, i


def test_the_asha_pruner_compares_with_the_trials_that_reached_the_rung_before():
    study = optuna.create_study(direction="minimize", pruner=AshaPruner(2, 3, 6))
    decisions = []
    for value in (0.5, 0.7, 0.4, 0.45):
        trial = study.ask()
        trial.report(1.0, 1)
        assert not trial.should_prune()  # epoch 1 is no rung
        trial.report(value, 2)
        decisions.append(trial.should_prune())
        if decisions[-1]:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, value)
    # Optuna's SuccessiveHalvingPruner would also stop 0.45: only 4 // 3 = 1 value goes on
    assert decisions == [False, True, False, False]


def test_gpu_packing_spreads_over_its_passes_best_fraction_against_a_whole_gpu():
    forward = [(1, 100.0), (0.5, 150.0), (0.25, 180.0), (0.125, 120.0)]
    backward = [(0.125, 110.0), (0.25, 160.0), (0.5, 140.0), (1, 80.0)]
    samples = [{"gpu_fraction": f, "trials_per_hour": t} for f, t in forward + backward]
    assert pass_ratios(samples) == [1.8, 2.0]


def test_the_recipe_arms_differ_by_the_knobs_alone():
    from benchmarks.recipe_knobs import KNOBS, arm_space
    from trainables.recipe import RECIPE_DEFAULTS
    from tuner.spec.spaces import load_space

    for model in ("cnn", "lstm"):
        before, after = arm_space(model, "before"), arm_space(model, "after")
        assert not set(before) & set(RECIPE_DEFAULTS)
        assert after == {**before, **KNOBS[model]} and set(KNOBS[model]) <= set(RECIPE_DEFAULTS)
        load_space(after, model)  # a space tuner accepts
    assert "recipe_knobs" in BENCHMARKS


def test_the_data_parallel_suite_splits_its_batches_evenly_over_two_workers():
    from benchmarks import data_parallel

    assert BENCHMARKS["data_parallel"] is data_parallel.data_parallel
    for _, _, hparams, epochs, repeats in (data_parallel.QUICK, data_parallel.FULL):
        assert hparams["batch_size"] % 2 == 0 and epochs >= 2 and repeats >= 1


def test_the_loop_alone_is_timed_epoch_by_epoch_against_the_bare_loop():
    """Each side's epochs are timed one by one in turn; the ratio is the bare loop's median epoch
    over the loop's (above 1: the loop is faster)."""
    from trainables.data import DataOptions, load_dataset

    digits = load_dataset(DataOptions("digits"))
    figures = loop_vs_bare(digits, 4)
    assert figures["loop_ms_per_epoch"] > 0 and figures["bare_ms_per_epoch"] > 0
    assert figures["ratio"] == figures["bare_ms_per_epoch"] / figures["loop_ms_per_epoch"]


def test_tracking_s_price_is_split_into_the_study_s_spans():
    def side(trials: float, end: float, epochs: float, cpu: float = 0.0) -> dict:
        spans = {"to the trials": 5.0, "trials": trials, "results": 1.0, "end": end}
        return {"spans_s": spans, "epochs_s": epochs, "driver_cpu_s": 9 + cpu, "server_cpu_s": cpu}

    samples = [
        {"tracked": side(40.0, 3.0, 70.0, 2.0), "untracked": side(38.0, 1.0, 69.0)},
        {"tracked": side(41.0, 2.5, 71.0, 3.0), "untracked": side(38.0, 1.5, 69.0)},
        {"tracked": side(39.0, 2.0, 69.5, 4.0), "untracked": side(38.0, 1.0, 69.0)},
    ]
    assert differences_text(samples) == (
        "to the trials +0.00, trials +2.00, results +0.00, end +1.00, trials' epochs +1.00, "
        "driver CPU +3.00, server CPU +3.00"
    )
