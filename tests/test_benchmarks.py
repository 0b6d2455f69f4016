"""The benchmark runner's pure parts: how censored seeds rank, how epochs to a target are
counted, and the plain Optuna baseline's space. (The benchmarks themselves are not run here.)"""

from __future__ import annotations

import optuna

from benchmarks.optuna_study import suggest
from benchmarks.run import (
    GpuSamples,
    TargetWatch,
    censored_median,
    median_sample,
    memory_per_trial,
    shown,
)


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
