"""GPU packing that measures itself (tuner/driver/gpu_shares.py, trainables/usage.py):
`resources.gpu: auto` shares from each config's memory estimate, corrected by measured peaks;
`out_of_memory` as a status with one retry at twice the share; `gpu_hours` as an objective and a
budget. The studies run on a Ray node told it has 2 GPUs (as tests/test_gpu_cluster.py's), where
a plug-in model raises CUDA's out-of-memory error below a GPU share."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.helpers import ray_head, spec_file, tiny_spec, tuner_run_on
from trainables import metrics as m
from trainables.loop import TrainingOptions
from trainables.memory import GIB, MemoryEstimate
from trainables.usage import UsageMeter
from tuner.driver.gpu_shares import (
    MIB,
    SHARES,
    SharePlanner,
    corrected_bytes,
    correction_ratio,
    share_for,
)
from tuner.driver.journal import JOURNAL_FILE, read_journal
from tuner.driver.placement import plan_gpu_memory
from tuner.driver.preparation import prepare
from tuner.driver.stoppers import StudyStop
from tuner.errors import SpecError
from tuner.results import outcomes
from tuner.results.trials import TrialRecord
from tuner.tracking import schema

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- the share


def test_shares_pack_whole_trials_from_an_eighth_to_a_whole_gpu() -> None:
    assert SHARES == (0.125, 0.25, 0.5, 1.0)
    usable = 8 * GIB
    assert share_for(1 * GIB, usable) == 0.125  # 8 fit
    assert share_for(1 * GIB + 1, usable) == 0.25  # 8 do not, 4 do
    assert share_for(2 * GIB, usable) == 0.25
    assert share_for(3 * GIB, usable) == 0.5
    assert share_for(4 * GIB + 1, usable) == 1.0
    assert share_for(8 * GIB, usable) == 1.0
    assert share_for(8 * GIB + 1, usable) is None  # not even alone


def estimate(tensors: int, context: int = 512 * MIB) -> MemoryEstimate:
    return MemoryEstimate(
        batch_size=32,
        data=0,
        batch_data=0,
        parameters=tensors,
        gradients=0,
        optimizer_state=0,
        activations=0,
        cuda_context=context,
    )


def planner(gpu_gb: float, headroom: float = 0.1, **resources: Any) -> SharePlanner:
    spec = tiny_spec(
        resources={"gpu": "auto", "gpu_memory_gb": gpu_gb, "gpu_memory_headroom": headroom},
        **resources,
    )
    study = prepare(spec)
    return SharePlanner(spec, study.dataset, TrainingOptions(), int(gpu_gb * GIB))


@pytest.fixture(scope="module")
def sized() -> SharePlanner:
    """A planner whose estimates are set by hand: {"size": MiB of tensors}."""
    shares = planner(16.0)
    shares.estimate = lambda hp: estimate(int(hp["size"] * MIB))  # type: ignore[method-assign]
    return shares


def test_configs_get_larger_shares_as_their_estimates_grow(sized: SharePlanner) -> None:
    """16 GiB less 10 % is 14.4 GiB: 8 trials fit up to 1.8 GiB each, 4 up to 3.6, 2 up to 7.2;
    each trial also holds its 0.5 GiB CUDA context."""
    sizes = {1000: 0.125, 1300: 0.125, 1400: 0.25, 3000: 0.25, 3200: 0.5, 6700: 0.5, 7000: 1.0}
    for mib, share in sizes.items():
        assert sized.share({"size": mib}) == share, mib
        assert sized({"size": mib}).required_resources == {"CPU": 1.0, "GPU": share}


def test_the_headroom_is_kept_free() -> None:
    with_headroom, without = planner(4.0, headroom=0.5), planner(4.0, headroom=0.0)
    for shares in (with_headroom, without):
        shares.estimate = lambda hp: estimate(0, context=int(hp["gb"] * GIB))
    assert without.share({"gb": 0.5}) == 0.125  # 8 x 0.5 GiB = 4 GiB: all of it
    assert with_headroom.share({"gb": 0.5}) == 0.25  # 2 GiB usable: 4 fit
    assert with_headroom.share({"gb": 0.25}) == 0.125  # 8 x 0.25 = 2 GiB, just
    assert with_headroom.share({"gb": 0.26}) == 0.25
    assert with_headroom.share({"gb": 1.1}) == 1.0  # over half of the usable 2 GiB


def test_the_largest_measured_ratio_corrects_the_tensors_not_the_context() -> None:
    assert correction_ratio([]) is None
    assert correction_ratio([(150.0, 100.0), (90.0, 100.0), (0.0, 50.0)]) == 1.5
    est = estimate(100 * MIB)
    assert corrected_bytes(est, True, None) == est.total()
    assert corrected_bytes(est, True, 1.5) == 512 * MIB + 150 * MIB
    assert corrected_bytes(est, True, 0.5) == 512 * MIB + 50 * MIB


def test_peaks_of_finished_gpu_trials_correct_the_next_shares(sized: SharePlanner) -> None:
    """1.2 GiB of tensors: 1/8 by the estimate. A finished trial measured twice its estimate on
    a GPU: 2.4 GiB + context needs 1/4. CPU peaks and running trials teach nothing."""

    def record(trial: str, size: int, peak_mb: float, device: str, status: str | None):
        rec = TrialRecord(trial, 1, {"size": size}, status=status, device=device)
        rec.epochs = {
            1: {m.EPOCH: 1, m.PEAK_MEMORY_MB: peak_mb / 2},
            2: {m.EPOCH: 2, m.PEAK_MEMORY_MB: peak_mb},
        }
        return rec

    sized.recorder = SimpleNamespace(trials={})
    assert sized.share({"size": 1200}) == 0.125
    sized.recorder.trials = {
        "cpu": record("cpu", 100, 900.0, "cpu", "completed"),
        "running": record("running", 100, 900.0, "cuda:0", None),
    }
    assert sized.ratio() is None and sized.share({"size": 1200}) == 0.125
    sized.recorder.trials["done"] = record("done", 100, 200.0, "cuda:0", "completed")
    assert sized.ratio() == pytest.approx(2.0)
    assert sized.share({"size": 1200}) == 0.25
    sized.recorder.trials["done"] = record("done", 100, 50.0, "cuda:0", "out_of_memory")
    assert sized.ratio() == pytest.approx(0.5)  # it used half its estimate: pack tighter
    sized.recorder = None
    assert sized.share({"size": 2400}) == 0.25
    sized.recorder = SimpleNamespace(trials={"done": record("done", 100, 50.0, "cuda:0", "x")})
    assert sized.share({"size": 2400}) == 0.125  # 0.5 GiB + 1.2 GiB, 8 in 14.4 GiB
    sized.recorder = None


def test_auto_without_a_gpu_memory_is_refused_naming_what_to_set() -> None:
    study = prepare(tiny_spec(resources={"gpu": "auto"}))
    with pytest.raises(SpecError) as caught:
        plan_gpu_memory(study.spec, study.space, study.dataset, None, "")
    msg = str(caught.value)
    assert msg.startswith("resources.gpu: auto sizes each trial's GPU share")
    assert "set resources.gpu_memory_gb to the memory of one GPU" in msg


def test_auto_checks_the_largest_trial_against_a_whole_gpu() -> None:
    study = prepare(tiny_spec(resources={"gpu": "auto"}))
    with pytest.raises(SpecError, match=r"1 trial\(s\) per GPU at 1 GPU each do not fit"):
        plan_gpu_memory(study.spec, study.space, study.dataset, int(0.4 * GIB), "probed")
    packing = plan_gpu_memory(study.spec, study.space, study.dataset, 2 * GIB, "probed")
    assert packing.training.data_on_device is True


# --------------------------------------------------------------------------- the spec


@pytest.mark.parametrize(
    ("gpu", "message"),
    [
        (
            "half",
            "resources.gpu must be auto (each trial's share sized from its memory estimate) "
            "or a number: 0 (no GPU), or a share above 0 up to 1 (0.25: four trials share a GPU) "
            "but got 'half'",
        ),
        (
            -0.5,
            "resources.gpu must be auto, 0 (no GPU) or a share above 0 up to 1 (0.25: four "
            "trials share a GPU) but got -0.5",
        ),
        (
            True,
            "resources.gpu must be auto (each trial's share sized from its memory estimate) or "
            "a number",
        ),
        (1.5, "resources.gpu must be a fraction up to 1"),
    ],
)
def test_resources_gpu_is_auto_or_a_share(gpu: Any, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        tiny_spec(resources={"gpu": gpu})
    assert message in str(caught.value)


def test_auto_and_shares_are_accepted() -> None:
    auto = tiny_spec(resources={"gpu": "auto"}).resources
    assert auto.auto_gpu and auto.largest_gpu == 1.0
    assert tiny_spec(resources={"gpu": 0.25}).resources.largest_gpu == 0.25
    assert not tiny_spec().resources.auto_gpu


def test_gpu_hours_is_a_further_objective_never_the_first() -> None:
    spec = tiny_spec(objective=[{"metric": "val_loss"}, {"metric": "gpu_hours"}])
    assert [(o.metric, o.mode) for o in spec.objectives] == [
        ("val_loss", "min"),
        ("gpu_hours", "min"),
    ]
    with pytest.raises(SpecError, match="objective.metric 'gpu_hours' grows with every epoch"):
        tiny_spec(objective={"metric": "gpu_hours"})


def test_a_gpu_hours_budget_needs_gpus() -> None:
    with pytest.raises(
        SpecError, match="search.gpu_hours_budget: 2 GPU-hours, but resources.gpu is 0"
    ):
        tiny_spec(search={"gpu_hours_budget": 2})
    assert (
        tiny_spec(search={"gpu_hours_budget": 2}, resources={"gpu": 0.5}).search.gpu_hours_budget
        == 2
    )


def test_the_gpu_hours_budget_stops_the_search_once_spent(tmp_path: Path) -> None:
    stop = StudyStop("val_loss", "min", gpu_hours_budget=1.0, journal=tmp_path / JOURNAL_FILE)
    stop.gpu_hours_used("a", 0.4)
    stop.gpu_hours_used("b", 0.5)
    stop.gpu_hours_used("a", 0.45)  # a trial's latest figure, not a sum of its epochs
    assert stop.reason() is None
    stop.gpu_hours_used("b", 0.6)
    assert stop.reason() == outcomes.GPU_HOURS_BUDGET


# --------------------------------------------------------------------------- measured usage


FIRST_EPOCH_USAGE = """
import json, sys, torch
from trainables.data import DataOptions, load_dataset
from trainables.loop import TrainingRun
from trainables.usage import UsageMeter
digits = load_dataset(DataOptions("digits"))
meter = UsageMeter(torch.device("cpu"), share=0.5)
run = TrainingRun("mlp", {"hidden_units": int(sys.argv[1]), "num_layers": 3}, digits, seed=0)
print(json.dumps({**run.run_epoch(), **meter.epoch()}))
"""


def first_epoch_usage(hidden_units: int) -> dict[str, float]:
    """One epoch's usage in a new process, as a fresh Ray actor's first trial measures it: the
    resident set of a process that already ran other tests' models is reused, not grown, so
    there a small model's growth can be 0 (trainables/usage.py says so)."""
    done = subprocess.run(
        [sys.executable, "-c", FIRST_EPOCH_USAGE, str(hidden_units)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_cpu_peak_memory_is_positive_and_grows_with_the_model() -> None:
    peaks = {}
    for hidden in (32, 2048):
        result = first_epoch_usage(hidden)
        peaks[hidden] = result[m.PEAK_MEMORY_MB]
        assert result[m.GPU_SHARE] == 0.5 and result[m.GPU_HOURS] > 0
        assert m.GPU_UTIL_PCT not in result and m.ENERGY_WH not in result  # no NVML on the CPU
    assert peaks[32] > 0
    # 2048-wide layers: 2 x 16 MiB of weights, with gradients and Adam's two moments, 128 MiB
    assert peaks[2048] > peaks[32] + 64, peaks


def test_gpu_hours_are_the_share_times_the_wall_time() -> None:
    meter = UsageMeter(torch.device("cpu"), share=0.25)
    meter.started -= 3600  # an hour ago
    assert meter.gpu_hours() == pytest.approx(0.25, rel=1e-3)
    meter.resume([{m.EPOCH: 3, m.GPU_HOURS: 1.0}])  # restored: it goes on from its checkpoint
    assert meter.epochs == 3 and meter.gpu_hours() == pytest.approx(1.25, rel=1e-3)
    row = meter.out_of_memory_row(4)
    assert row[m.OUT_OF_MEMORY] == 0.25 and row[m.EPOCH] == 4 and math.isnan(row[m.VAL_LOSS])


# --------------------------------------------------------------------------- studies on 2 GPUs

#: a plug-in model: `case` picks its width, and the GPU share below which its forward pass
#: raises CUDA's out-of-memory error (never on the driver, where the memory estimate runs it)
OOM_PLUGIN = """\
import math

import torch
from torch import nn

import tuner
from trainables.trainable import gpu_share

CASES = {"small": (16, 0.0), "big": (2048, 0.0), "once": (16, 0.25), "always": (16, 2.0)}


class Net(nn.Module):
    def __init__(self, inputs, width, outputs, oom_below):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(inputs, width), nn.ReLU(), nn.Linear(width, outputs))
        self.oom_below = oom_below

    def forward(self, x):
        share = gpu_share()
        if 0 < share < self.oom_below:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (a test at share {share:g})")
        return self.body(x.flatten(1))


@tuner.register_model("oomnet", layouts=("image", "vector"), defaults={"case": "small"})
def oomnet(hp, sample_shape, layout, output_dim):
    width, oom_below = CASES[hp["case"]]
    return Net(math.prod(sample_shape), width, output_dim, oom_below)
"""
CASES = ["small", "big", "once", "always"]


@pytest.fixture(scope="module")
def gpu_node() -> Iterator[SimpleNamespace]:
    """One node with 8 CPUs and 2 (simulated) GPUs; trials import this checkout."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    with ray_head(
        8, {"PYTHONPATH": path}, num_gpus=2, dashboard=False, object_store_mb=100
    ) as head:
        yield SimpleNamespace(address=head.gcs, env=head.env)


def write_study(folder: Path, **sections: Any) -> Path:
    (folder / "oomnet.py").write_text(OOM_PLUGIN)
    raw = {
        "name": "pack",
        "plugins": ["oomnet.py"],
        "model": "oomnet",
        "dataset": {"name": "digits"},
        "search_space": {"case": {"type": "categorical", "choices": CASES}, "batch_size": 64},
        "search": {"algorithm": "random", "num_samples": 5, "max_concurrent": 4, "seed": 15},
        "scheduler": {"name": "fifo", "max_epochs": 2},
    }
    return spec_file(folder, raw, **sections)


def tuner_run(node: SimpleNamespace, spec: Path) -> subprocess.CompletedProcess:
    return tuner_run_on(node.address, node.env, spec, columns=250)


def auto_memory_gb(folder: Path) -> tuple[float, dict[str, float]]:
    """A GPU memory at which the small cases get 1/8 of a GPU and the big one 1/4, and the
    shares the planner gives each case there."""
    spec = tiny_spec(
        plugins=[str(folder / "oomnet.py")],
        model="oomnet",
        search_space={"case": {"type": "categorical", "choices": CASES}, "batch_size": 64},
        resources={"gpu": "auto"},
    )
    study = prepare(spec)
    probe = SharePlanner(spec, study.dataset, TrainingOptions(), GIB)
    small, big = (probe.needed({"case": c, "batch_size": 64}) for c in ("small", "big"))
    assert small < big < 2 * small
    gb = 8 * (small + big) / 2 / 0.9 / GIB  # 8 small fit, 8 big do not, 4 big do
    shares = SharePlanner(spec, study.dataset, TrainingOptions(), int(gb * GIB))
    return gb, {c: shares.share({"case": c, "batch_size": 64}) for c in CASES}


@pytest.mark.integration
def test_auto_shares_and_out_of_memory_retries_on_two_gpus(
    gpu_node: SimpleNamespace, tmp_path: Path
) -> None:
    write_study(tmp_path)
    gb, shares = auto_memory_gb(tmp_path)
    assert shares == {"small": 0.125, "big": 0.25, "once": 0.125, "always": 0.125}
    spec = write_study(
        tmp_path,
        resources={"cpu": 1, "gpu": "auto", "gpu_memory_gb": gb},
        objective=[{"metric": "val_loss"}, {"metric": "gpu_hours"}],
    )
    proc = tuner_run(gpu_node, spec)
    out = " ".join(proc.stdout.split())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resources.gpu auto: each trial's GPU share" in out
    assert "-> 1/8 GPU" in out and "-> 1/4 GPU" in out  # the smallest and the largest trial

    (results,) = (tmp_path / "results").glob("pack-*")
    table = pd.read_csv(results / "trials.csv")
    cases = table["config.case"].tolist()
    assert set(cases) == set(CASES), cases  # seed 15 draws every case in five trials
    for _, row in table.iterrows():
        case = row["config.case"]
        if case == "always":  # out of memory at 1/8, then at 1/4: out_of_memory
            assert row["status"] == outcomes.OUT_OF_MEMORY
            assert "CUDA out of memory at GPU share 0.25" in row["error"]
            continue
        assert row["status"] == outcomes.COMPLETED, row.to_dict()
        # "once" ran out of memory at its 1/8 and completed at twice that
        assert row[m.GPU_SHARE] == (0.25 if case == "once" else shares[case]), case
        assert row[m.PEAK_MEMORY_MB] > 0 and row[m.GPU_HOURS] > 0
        assert row[schema.best(m.GPU_HOURS)] > 0

    events = read_journal(results / JOURNAL_FILE)
    number = {e["trial_id"]: e["config"]["case"] for e in events if "config" in e}
    retries = [(number[e["trial_id"]], e["error"]) for e in events if e["event"] == "retry"]
    assert sorted(c for c, _ in retries) == sorted(c for c in cases if c in ("once", "always"))
    assert all("CUDA out of memory at GPU share 0.125" in error for _, error in retries)

    optuna_db = f"sqlite:///{tmp_path / 'optuna.db'}"
    (study,) = optuna.get_all_study_summaries(optuna_db)
    trials = optuna.load_study(study_name=study.study_name, storage=optuna_db).trials
    by_case = {t.params["case"]: t for t in trials}
    assert by_case["always"].state == optuna.trial.TrialState.FAIL
    for case in ("small", "big", "once"):
        assert by_case[case].state == optuna.trial.TrialState.COMPLETE
        assert len(by_case[case].values) == 2 and by_case[case].values[1] > 0  # gpu_hours

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("pack").experiment_id])
    tags = [r.data.tags for r in runs if r.data.tags.get(schema.ROLE_TAG) == schema.TRIAL_ROLE]
    statuses = {t[schema.TRIAL_STATUS_TAG] for t in tags}
    assert statuses == {outcomes.COMPLETED, outcomes.OUT_OF_MEMORY}
    assert {t[schema.GPU_SHARE_TAG] for t in tags if "always" not in t[schema.CONFIG_TAG]} <= {
        "0.125",
        "0.25",
    }
    oom = [t for t in tags if t[schema.TRIAL_STATUS_TAG] == outcomes.OUT_OF_MEMORY]
    assert all("**out_of_memory**" in t[schema.NOTE_TAG] for t in oom)


@pytest.mark.integration
def test_a_gpu_hours_budget_stops_the_search(gpu_node: SimpleNamespace, tmp_path: Path) -> None:
    """A budget of 0.01 GPU-seconds is spent by the first results: no trial starts after them."""
    spec = write_study(
        tmp_path,
        search_space={"case": "small", "batch_size": 64},
        search={"num_samples": 6, "max_concurrent": 2, "gpu_hours_budget": 0.01 / 3600},
        resources={"cpu": 1, "gpu": 0.5},
    )
    proc = tuner_run(gpu_node, spec)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = " ".join(proc.stdout.split())
    assert "Stop reason: gpu_hours_budget (search.gpu_hours_budget" in out
    (results,) = (tmp_path / "results").glob("pack-*")
    table = pd.read_csv(results / "trials.csv")
    assert 1 <= len(table) < 6
    assert (table[m.GPU_SHARE] == 0.5).all() and (table[m.GPU_HOURS] > 0).all()
