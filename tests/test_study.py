"""Whole studies through a real local Ray: TPE + ASHA, what Optuna hears, datasets, determinism."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from tests.helpers import (
    add_worker,
    free_port,
    node_raylet,
    ray_head,
    spawn,
    tiny_spec,
)
from tuner.driver.journal import JOURNAL_FILE, read_journal
from tuner.driver.study import require_success, run_study
from tuner.errors import SpecError, StudyError
from tuner.results import outcomes
from tuner.results.summary import BEST_CONFIG_FILE, TRIALS_FILE, summary_lines
from tuner.spec.job_spec import JobSpec

pytestmark = pytest.mark.usefixtures("ray_local")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def optuna_trials(spec: JobSpec, execution: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=execution, storage=spec.search.storage)
    return sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)


def asha_spec(model: str, **sections) -> JobSpec:
    return tiny_spec(
        name=f"asha-{model}",
        model=model,
        search={"algorithm": "tpe", "num_samples": 8, "max_concurrent": 2},
        scheduler={"name": "asha", "max_epochs": 4, "grace_period": 1, "reduction_factor": 2},
        **sections,
    )


@pytest.mark.parametrize("model", ["mlp", "cnn", "lstm"])
def test_tpe_asha_study_tells_optuna_the_truth(model: str, study_dir: Path) -> None:
    spec = asha_spec(model)
    result = run_study(spec, show_progress=False)
    trials = result.trials

    assert len(trials) == 8
    assert set(trials["status"]) <= {outcomes.COMPLETED, outcomes.STOPPED_BY_SCHEDULER}
    stopped = trials[trials["status"] == outcomes.STOPPED_BY_SCHEDULER]
    assert len(stopped) >= 1, "ASHA stopped no trial"
    assert (stopped["epochs"] < spec.scheduler.max_epochs).all()
    assert (trials[trials["status"] == outcomes.COMPLETED]["epochs"] == 4).all()
    for column in ("best_val_loss", "best_val_acc", "best_train_loss", "best_train_acc"):
        assert trials[column].notna().all()
    assert ((trials["best_val_acc"] >= 0) & (trials["best_val_acc"] <= 1)).all()
    gap = trials["best_val_loss"] - trials["best_train_loss"]
    assert (gap - trials["best_generalization_gap"]).abs().max() < 1e-6

    by_id = trials.set_index("trial_id")
    ot_trials = optuna_trials(spec, result.execution)
    assert len(ot_trials) == 8
    states = {t.state for t in ot_trials}
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states
    for ot_trial, (_, row) in zip(ot_trials, trials.sort_values("trial").iterrows(), strict=True):
        curve = ot_trial.intermediate_values
        assert sorted(curve) == list(range(1, int(row["epochs"]) + 1)), "a curve lost an epoch"
        if ot_trial.state == TrialState.COMPLETE:
            assert ot_trial.value == pytest.approx(min(curve.values()))
            assert row["status"] == outcomes.COMPLETED
        else:
            assert ot_trial.state == TrialState.PRUNED
            assert row["status"] == outcomes.STOPPED_BY_SCHEDULER
        assert by_id.loc[row["trial_id"], "best_val_loss"] == pytest.approx(min(curve.values()))

    best = result.best
    assert best["best_val_loss"] == trials["best_val_loss"].min()
    saved = yaml.safe_load((result.results_path / BEST_CONFIG_FILE).read_text())
    assert saved["model"] == model and saved["epochs"] == int(best["best_epoch"])
    assert saved["metrics"]["val_loss"] == pytest.approx(best["best_val_loss"])
    assert (result.results_path / TRIALS_FILE).is_file()


@pytest.mark.parametrize(
    ("model", "dataset"),
    [
        ("mlp", {"name": "mnist_sample"}),
        ("cnn", {"name": "mnist1d"}),
        ("mlp", {"name": "table", "path": str(EXAMPLES / "data/wine.csv"), "target": "cultivar"}),
        (
            "lstm",
            {
                "name": "table",
                "path": str(EXAMPLES / "data/sunspots.csv"),
                "target": "next_activity",
                "window": 12,
            },
        ),
    ],
    ids=["mnist_sample-mlp", "mnist1d-cnn", "csv-table-mlp", "csv-windows-lstm"],
)
def test_study_on_each_dataset(model: str, dataset: dict, study_dir: Path) -> None:
    spec = tiny_spec(name="datasets", model=model, dataset=dataset)
    result = run_study(spec, show_progress=False)
    require_success(result)
    assert len(result.trials) == 2
    assert (result.trials["epochs"] == 2).all()
    assert result.trials["best_val_loss"].notna().all()
    if dataset.get("target") == "next_activity":  # regression: no accuracy
        assert result.trials["best_val_acc"].isna().all()
    else:
        assert result.best["best_val_acc"] > 0.3  # well above chance (0.1 or 0.33) after 2 epochs


def test_same_spec_and_seed_give_the_same_trial_configs(study_dir: Path) -> None:
    """Sequential TPE (past its 10 random start-up trials) repeats exactly on CPU."""

    def configs() -> list[dict]:
        spec = tiny_spec(
            name="repeat",
            search={"algorithm": "tpe", "num_samples": 12, "max_concurrent": 1, "seed": 7},
            scheduler={"name": "asha", "max_epochs": 2, "grace_period": 1},
        )
        result = run_study(spec, show_progress=False)
        return [t.params for t in optuna_trials(spec, result.execution)]

    first, second = configs(), configs()
    assert len(first) == 12
    assert first == second


def test_stop_on_overfit_ends_a_trial_and_counts_it_complete(study_dir: Path) -> None:
    overfitting = {"hidden_units": 512, "lr": 0.01, "batch_size": 32, "dropout": 0.0}
    spec = tiny_spec(
        name="overfit",
        search={"num_samples": 1},
        search_space=overfitting,
        scheduler={"name": "fifo", "max_epochs": 30, "stop_on_overfit": {"patience": 2}},
    )
    result = run_study(spec, show_progress=False)
    row = result.trials.iloc[0]
    assert row["status"] == outcomes.STOPPED_ON_OVERFIT
    assert row["epochs"] == row["best_epoch"] + 2
    (ot_trial,) = optuna_trials(spec, result.execution)
    assert ot_trial.state == TrialState.COMPLETE
    assert ot_trial.value == pytest.approx(row["best_val_loss"])


def test_diverging_trials_end_cleanly_and_fail_the_study(study_dir: Path) -> None:
    spec = tiny_spec(
        name="diverge",
        search_space={"optimizer": "sgd", "lr": 1.0e6, "momentum": 0.9},
        scheduler={"name": "fifo", "max_epochs": 5},
    )
    result = run_study(spec, show_progress=False)
    assert (result.trials["status"] == outcomes.DIVERGED).all()  # not counted as completed
    assert "(2 diverged)" in summary_lines(result)[0]
    assert (result.trials["epochs"] < 5).all(), "a diverged trial kept training"
    # Optuna hears PRUNED, so TPE learns to avoid the region (not FAIL, which it ignores)
    assert [t.state for t in optuna_trials(spec, result.execution)] == [TrialState.PRUNED] * 2
    with pytest.raises(StudyError, match="finite val_loss"):
        require_success(result)


def assert_nothing_claimed(spec: JobSpec, study_dir: Path) -> None:
    """A refused run leaves no Optuna study and no results folder behind."""
    assert optuna.get_all_study_names(spec.search.storage) == []
    assert not (study_dir / "tuner-results").exists()


@pytest.mark.parametrize("step", ["save_spec", "publish"])
def test_a_ctrl_c_while_the_claimed_folder_is_written_releases_the_claim(
    step: str, study_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The moment between claiming the execution and starting its trials (the folder, the spec,
    the upload), where a Ctrl-C once left a folder and an Optuna study that nothing could resume:
    the interrupt lands there every time when that step raises it."""

    def ctrl_c(*args) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(f"tuner.driver.study.{step}", ctrl_c)
    spec = tiny_spec(name="ctrl-c-at-the-claim")
    with pytest.raises(StudyError, match="before its first trial started: nothing was kept"):
        run_study(spec, show_progress=False)
    assert optuna.get_all_study_names(spec.search.storage) == []
    assert list((study_dir / "tuner-results").glob("*")) == []


def test_gpu_request_on_a_cpu_cluster_is_refused_up_front(study_dir: Path) -> None:
    spec = tiny_spec(resources={"gpu": 0.25})
    with pytest.raises(SpecError, match=r"resources.gpu.*0.25 GPU.*cluster has 0 GPU"):
        run_study(spec, show_progress=False)
    assert_nothing_claimed(spec, study_dir)


def test_an_unreachable_tracking_server_is_refused_before_anything_is_claimed(
    study_dir: Path,
) -> None:
    spec = tiny_spec(tracking={"uri": f"http://127.0.0.1:{free_port()}"})
    with pytest.raises(StudyError, match="tracking.uri: the MLflow server at .* cannot be reached"):
        run_study(spec, show_progress=False)
    assert_nothing_claimed(spec, study_dir)


def trial_results(journal: Path) -> dict[str, list[dict]]:
    """Each trial's result events, in order."""
    results: dict[str, list[dict]] = {}
    for event in read_journal(journal):
        if event["event"] == "result":
            results.setdefault(event["trial_id"], []).append(event)
    return results


@pytest.mark.integration
def test_a_worker_node_that_dies_and_returns_costs_no_work(tmp_path: Path) -> None:
    """A two-node cluster on 127.0.0.1; while trials run on the worker node its raylet is
    killed. Its trials go on from their checkpoints on the head, another worker node joins
    mid-study, and the study completes: every trial once in the journal, MLflow and Optuna,
    each with its whole curve, none started over."""
    epochs, num_trials = 6, 4
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "node-dies",
                "model": "mlp",
                "dataset": {"name": "digits"},
                "search_space": {"hidden_units": 512, "num_layers": 3, "batch_size": 16},
                "search": {"num_samples": num_trials, "max_concurrent": 2},
                "scheduler": {"name": "fifo", "max_epochs": epochs},
                "resources": {"cpu": 1},
            }
        )
    )
    with ray_head(num_cpus=1, workers=1, dashboard=False) as head:
        driver = spawn(
            [sys.executable, "-m", "tuner", "run", str(spec), "--address", head.gcs],
            cwd=tmp_path,
            env=head.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        journals = tmp_path / "tuner-results"
        deadline = time.monotonic() + 240
        nodes: set[str] = set()
        while time.monotonic() < deadline and driver.poll() is None and len(nodes) < 2:
            found = list(journals.glob(f"*/{JOURNAL_FILE}"))
            results = trial_results(found[0]) if found else {}
            nodes = {r[-1]["node"] for r in results.values() if r[-1]["row"]["epoch"] >= 2}
            time.sleep(0.1)
        assert len(nodes) == 2, f"no trial ran on both nodes: {nodes}"
        raylet = node_raylet(head, "w0")  # the worker node dies, its trial's process with it
        for process in [*raylet.children(recursive=True), raylet]:
            process.kill()
        killed_at = time.time()
        time.sleep(5)
        add_worker(head, "w1")  # and another joins mid-study
        output, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, output

    (folder,) = journals.iterdir()
    trials = pd.read_csv(folder / TRIALS_FILE)
    assert list(trials["status"]) == [outcomes.COMPLETED] * num_trials, trials
    assert list(trials["epochs"]) == [epochs] * num_trials
    results = trial_results(folder / JOURNAL_FILE)
    summary = {
        t: [(r["row"]["epoch"], r["node"][:6], round(r["time"] - killed_at, 1)) for r in rows]
        for t, rows in results.items()
    }
    # the trial that ran on the dead node went on elsewhere, and that node reported no more
    moved = [rows for rows in results.values() if rows[0]["node"] != rows[-1]["node"]]
    assert len(moved) == 1, summary
    dead = moved[0][0]["node"]
    elsewhere = min(r["time"] for r in moved[0] if r["node"] != dead)
    later = {r["node"] for rows in results.values() for r in rows if r["time"] >= elsewhere}
    assert dead not in later, summary
    for trial_id, rows in results.items():
        seen = [r["row"]["epoch"] for r in rows]
        assert seen.count(1) == 1, (trial_id, seen)  # from a checkpoint, not from scratch
        assert sorted(set(seen)) == list(range(1, epochs + 1)), (trial_id, seen)
    ends = [e for e in read_journal(folder / JOURNAL_FILE) if e["event"] == "end"]
    assert sorted(e["trial_id"] for e in ends) == sorted(results)

    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        runs = db.execute("select status from runs where lifecycle_stage = 'active'").fetchall()
        assert sorted(s for (s,) in runs) == ["FINISHED"] * (num_trials + 1)
        for trial_id in results:
            steps = [
                s
                for (s,) in db.execute(
                    "select m.step from metrics m join tags t on t.run_uuid = m.run_uuid "
                    "where t.key = 'tuner.trial_id' and t.value = ? and m.key = 'val_loss' "
                    "order by m.step",
                    (trial_id,),
                )
            ]
            assert steps == list(range(1, epochs + 1)), (trial_id, steps)
    study = optuna.load_study(study_name=folder.name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * num_trials
    assert sorted(t.user_attrs["tuner.trial_id"] for t in study.trials) == sorted(results)
    assert all(sorted(t.intermediate_values) == list(range(1, epochs + 1)) for t in study.trials)
