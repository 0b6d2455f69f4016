"""What a study leaves in MLflow, against SQLite and a real `mlflow server` on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import (
    EPOCH_1,
    callbacks,
    ctrl_c_reaches_it,
    drive,
    fake_trial,
    recorded_ops,
    tiny_spec,
)
from trainables import metrics as m
from trainables.data import DataOptions, load_dataset
from tuner.driver.journal import JOURNAL_FILE, read_journal
from tuner.driver.study import run_study
from tuner.results import diagnostics, outcomes
from tuner.tracking.inputs import dataset_inputs, digests
from tuner.tracking.mlflow_callback import RUN_IDS_FILE, MlflowTracking, load_run_ids
from tuner.tracking.runs import client_for
from tuner.tracking.schema import PARENT_TAG, ROLE_TAG

NUM_TRIALS = 6


def logged_digests(client: MlflowClient, run_id: str) -> dict[str, str]:
    """context (training, validation) -> the digest of the dataset input MLflow holds."""
    return {
        tag.value: item.dataset.digest
        for item in client.get_run(run_id).inputs.dataset_inputs
        for tag in item.tags
        if tag.key == "mlflow.data.context"
    }


def child_runs(client: MlflowClient, parent) -> list:
    return client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'"
    )


@pytest.fixture(params=["sqlite", "http"])
def tracking_uri(request, study_dir: Path) -> str:
    if request.param == "http":
        return request.getfixturevalue("mlflow_server")
    return f"sqlite:///{study_dir / 'mlflow.db'}"


@pytest.mark.usefixtures("ray_local")
def test_study_in_mlflow_parent_children_curves_and_summaries(
    tracking_uri: str, study_dir: Path
) -> None:
    name = f"track-{'http' if tracking_uri.startswith('http') else 'sqlite'}"
    spec = tiny_spec(
        name=name,
        search={"algorithm": "tpe", "num_samples": NUM_TRIALS, "max_concurrent": 2},
        scheduler={"name": "asha", "max_epochs": 4, "grace_period": 1, "reduction_factor": 2},
        tracking={"uri": tracking_uri},
    )
    result = run_study(spec, show_progress=False)
    assert "mlflow-tracking" not in {t.name for t in threading.enumerate()}  # the writer ended
    client = client_for(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get(ROLE_TAG) == "study"]
    assert [p.info.run_id for p in parents] == [result.parent_run_id]
    parent = parents[0]
    children = child_runs(client, parent)
    assert len(children) == NUM_TRIALS
    assert all(r.info.status == "FINISHED" for r in runs), "a run was left RUNNING"

    table = result.trials.set_index("trial_id")
    options = DataOptions(**spec.dataset.model_dump())
    expected_inputs = digests(dataset_inputs(load_dataset(options), options))
    for run in [parent, *children]:
        assert logged_digests(client, run.info.run_id) == expected_inputs
    for child in children:
        tags, metrics = child.data.tags, child.data.metrics
        row = table.loc[tags["tuner.trial_id"]]
        assert child.info.run_name == f"trial-{int(row['trial']):04d}"
        assert tags["trial_status"] == row["status"]
        assert tags["diagnosis"] == row["diagnosis"] and tags["diagnosis"] in diagnostics.DIAGNOSES
        config = json.loads(tags["tuner.config"])
        assert child.data.params == {k: str(v) for k, v in config.items()}
        # where it trained: tags, not metrics (a CPU-only Ray gives no GPU ids)
        assert (tags["tuner.device"], tags["tuner.gpu_ids"]) == ("cpu", "")
        assert not {"device", "gpu_ids", "node_id"} & set(metrics)

        curves = {
            key: {p.step: p.value for p in client.get_metric_history(child.info.run_id, key)}
            for key in ("train_loss", "val_loss", "val_acc", "generalization_gap")
        }
        assert sorted(curves["val_loss"]) == list(range(1, int(row["epochs"]) + 1))
        best_step = min(curves["val_loss"], key=lambda s: (curves["val_loss"][s], s))
        assert metrics["best_val_loss"] == pytest.approx(min(curves["val_loss"].values()))
        assert metrics["best_epoch"] == best_step == row["best_epoch"]
        assert metrics["train_loss_at_best"] == pytest.approx(curves["train_loss"][best_step])
        assert metrics["best_val_acc"] == pytest.approx(curves["val_acc"][best_step])
        final = max(curves["val_loss"])
        assert metrics["final_val_loss"] == pytest.approx(curves["val_loss"][final])
        gap = curves["val_loss"][best_step] - curves["train_loss"][best_step]
        assert curves["generalization_gap"][best_step] == pytest.approx(gap)
        assert metrics["overfit_score"] >= 0
        assert [a.path for a in client.list_artifacts(child.info.run_id)] == ["learning_curve.png"]
        note = tags["mlflow.note.content"]
        assert note.startswith(f"Trial {int(row['trial'])}: **{row['status']}**, diagnosis ")
        assert f"at epoch {int(row['best_epoch'])}" in note

    statuses = {c.data.tags["trial_status"] for c in children}
    assert outcomes.STOPPED_BY_SCHEDULER in statuses
    pm = parent.data.metrics
    assert pm["trials_total"] == NUM_TRIALS
    assert pm["best_val_loss"] == pytest.approx(
        min(c.data.metrics["best_val_loss"] for c in children)
    )
    assert sum(v for k, v in pm.items() if k.startswith("diagnosis_")) == NUM_TRIALS
    assert sum(v for k, v in pm.items() if k.startswith("trials_") and k != "trials_total") == (
        NUM_TRIALS
    )
    assert pm["wall_time_s"] > 0
    assert any(k.startswith("importance.") for k in pm), "no parameter importances"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"spec.yaml", "results.csv", "results.parquet", "best_config.yaml"} <= artifacts
    assert "param_importances.json" in artifacts
    assert "report.html" in artifacts
    note = parent.data.tags["mlflow.note.content"]
    best = result.best
    run_name = f"trial-{int(best['trial']):04d}"
    assert (
        f"**Best:** trial {int(best['trial'])} (run `{run_name}`) at epoch "
        f"{int(best['best_epoch'])}: val_loss {best['best_val_loss']:.4f}"
    ) in note
    assert f"{len(children)} trials of mlp on digits, finished" in note
    counts = result.status_counts()
    assert all(f"{n} {status}" in note for status, n in counts.items())
    table_lines = [line for line in note.splitlines() if line.startswith("| ")]
    assert len(table_lines) == 2 + 5  # header, rule, the top 5
    assert table_lines[2].startswith(f"| 1 | trial-{int(best['trial']):04d} | ")
    assert "`report.html`" in note and f"tuner export {name} --top-k 3" in note
    results = [
        e for e in read_journal(result.results_path / JOURNAL_FILE) if e["event"] == "result"
    ]
    assert {(e["device"], e["gpu_ids"]) for e in results} == {("cpu", "")}
    saved = load_run_ids(result.results_path / RUN_IDS_FILE)
    assert sorted(saved.values()) == sorted(c.info.run_id for c in children)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        ("RuntimeError: mat1 and mat2 shapes cannot be multiplied", outcomes.ERRORED),
        ("RuntimeError: CUDA out of memory", outcomes.OUT_OF_MEMORY),  # older torch's OOM
    ],
)
def test_errored_trial_is_failed_with_its_message_and_traceback(
    study_dir: Path, error: str, status: str
) -> None:
    recorder, tracking, client = callbacks(study_dir)
    error_file = study_dir / "error.txt"
    error_file.write_text(f"Traceback ...\n{error}\n")
    trial = fake_trial("abc", 1, str(error_file))
    drive([recorder, tracking], "on_trial_start", trial)
    drive([recorder, tracking], "on_trial_result", trial, result=EPOCH_1)
    drive([recorder, tracking], "on_trial_error", trial)

    run = client.get_run(tracking.run_ids["abc"])
    assert run.info.status == "FAILED"
    assert run.data.tags["trial_status"] == status
    assert run.data.tags["error"] == error
    assert [p.value for p in client.get_metric_history(run.info.run_id, "val_loss")] == [1.0]
    # the whole traceback, the user's frames included, as a text artifact beside the tag
    text = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/error.txt")
    assert text == f"Traceback ...\n{error}\n"


def test_a_restored_trial_s_earlier_epochs_fill_what_the_journal_and_mlflow_lack(
    study_dir: Path,
) -> None:
    """A trial restored from a checkpoint newer than the driver's journal (a bucket's copy lags
    the trial's own upload) sends the rows up to its checkpoint with its first result: the
    epochs nobody recorded are journaled and logged once, the others not again."""
    recorder, tracking, client = callbacks(study_dir)
    recorder.journal = study_dir / JOURNAL_FILE
    trial = fake_trial("t1", 1)
    rows = [{**EPOCH_1, "epoch": e, "val_loss": 1.0 / e} for e in (1, 2, 3, 4)]
    drive([recorder, tracking], "on_trial_start", trial)
    drive([recorder, tracking], "on_trial_result", trial, result=rows[0])
    restored = {**rows[3], m.EARLIER_EPOCHS: rows[:3]}  # checkpointed at epoch 3
    drive([recorder, tracking], "on_trial_result", trial, result=restored)
    tracking.flush()

    journaled = [
        e["row"]["epoch"] for e in read_journal(recorder.journal) if e["event"] == "result"
    ]
    assert sorted(journaled) == [1, 2, 3, 4]
    assert sorted(recorder.trials["t1"].epochs) == [1, 2, 3, 4]
    history = client.get_metric_history(tracking.run_ids["t1"], "val_loss")
    assert sorted((p.step, p.value) for p in history) == [(e, 1.0 / e) for e in (1, 2, 3, 4)]


def test_interrupted_study_leaves_no_run_running(study_dir: Path) -> None:
    recorder, tracking, client = callbacks(study_dir)
    trials = [fake_trial(f"t{i}", i) for i in (1, 2)]
    for trial in trials:
        drive([recorder, tracking], "on_trial_start", trial)
        drive([recorder, tracking], "on_trial_result", trial, result=EPOCH_1)
    tracking.close_open_runs("KILLED")  # what StudyRun.fit does on Ctrl-C
    for trial in trials:
        run = client.get_run(tracking.run_ids[trial.trial_id])
        assert run.info.status == "KILLED"
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert [(p.step, p.value) for p in history] == [(1, 1.0)], "buffered epochs were lost"


def test_compile_time_is_logged_once_at_step_1(study_dir: Path) -> None:
    recorder, tracking, client = callbacks(study_dir)
    trial = fake_trial("t1", 1)
    drive([recorder, tracking], "on_trial_start", trial)
    drive([recorder, tracking], "on_trial_result", trial, result={**EPOCH_1, "compile_time_s": 3.5})
    drive([recorder, tracking], "on_trial_result", trial, result={**EPOCH_1, "epoch": 2})
    drive([recorder, tracking], "on_trial_complete", trial)
    run_id = tracking.run_ids["t1"]
    history = client.get_metric_history(run_id, "compile_time_s")
    assert [(p.step, p.value) for p in history] == [(1, 3.5)]
    assert [p.step for p in client.get_metric_history(run_id, "val_loss")] == [1, 2]


def test_a_restored_trial_continues_its_run(study_dir: Path) -> None:
    """Resume-safe: the trial -> run ids on disk bring the same run back, without a duplicate."""
    recorder, tracking, client = callbacks(study_dir)
    trial = fake_trial("t1", 1)
    drive([recorder, tracking], "on_trial_start", trial)
    drive([recorder, tracking], "on_trial_result", trial, result=EPOCH_1)
    tracking.close_open_runs("KILLED")
    first_run = tracking.run_ids["t1"]

    restored = MlflowTracking(
        tracking.spec,
        recorder,
        tracking.parent_run_id,
        tracking.experiment_id,
        study_dir / RUN_IDS_FILE,
    )
    drive([recorder, restored], "on_trial_start", trial)
    drive(
        [recorder, restored],
        "on_trial_result",
        trial,
        result={**EPOCH_1, "epoch": 2, "val_loss": 0.8},
    )
    drive([recorder, restored], "on_trial_complete", trial)
    assert restored.run_ids["t1"] == first_run
    runs = client.search_runs([tracking.experiment_id], filter_string="tags.`tuner.role` = 'trial'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = [p.step for p in client.get_metric_history(first_run, "val_loss")]
    assert steps == [1, 2]


@pytest.mark.integration  # a whole study in its own process
def test_ctrl_c_leaves_no_run_running_and_exits_1(tmp_path: Path) -> None:
    """A real `tuner run` in its own process, interrupted with SIGINT once trials have finished."""
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    import yaml

    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "interrupt-me",
                "model": "mlp",
                "dataset": {"name": "digits"},
                "search": {"num_samples": 40, "max_concurrent": 2},
                "scheduler": {"name": "fifo", "max_epochs": 15},
            }
        )
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "tuner", "run", str(spec)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=ctrl_c_reaches_it,
    )
    db = tmp_path / "mlflow.db"

    def finished_trials() -> int:
        if not db.exists():
            return 0
        query = "select count(*) from tags where key = 'trial_status' and value = 'completed'"
        try:
            with sqlite3.connect(db) as conn:
                return conn.execute(query).fetchone()[0]
        except sqlite3.OperationalError:  # MLflow is still creating its tables
            return 0

    deadline = time.monotonic() + 180
    while finished_trials() < 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.5)
    assert process.poll() is None, process.communicate()[0]
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)

    assert process.returncode == 1, output
    assert "was interrupted after" in output and "Traceback" not in output
    assert " INFO " not in output, output  # MLflow's table set-up went to the log, not here
    with sqlite3.connect(db) as conn:
        statuses = dict(conn.execute("select status, count(*) from runs group by status"))
    assert "RUNNING" not in statuses, statuses
    assert statuses.get("FINISHED", 0) >= 2 and statuses.get("KILLED", 0) >= 1  # parent killed


def test_a_trial_that_ended_before_its_run_was_made_takes_four_writes(study_dir: Path) -> None:
    """What the writer thread meets when it is behind: the trial's start, epochs and end are all
    queued when it creates the run. Params, every epoch and the summary go in one batch."""
    recorder, tracking, client = callbacks(study_dir)
    options = DataOptions(name="digits")
    tracking.inputs = dataset_inputs(load_dataset(options), options)
    tracking.spec.search.num_samples = 1_000  # no learning-curve figure
    ops = recorded_ops(tracking)
    trial = fake_trial("t1", 1)
    epochs = [EPOCH_1, {**EPOCH_1, "epoch": 2, "val_loss": 0.8}]
    drive([recorder], "on_trial_start", trial)
    for row in epochs:
        drive([recorder], "on_trial_result", trial, result=row)
    drive([recorder], "on_trial_complete", trial)
    drive([tracking], "on_trial_start", trial)
    for row in epochs:
        drive([tracking], "on_trial_result", trial, result=row)
    drive([tracking], "on_trial_complete", trial)

    assert ops == ["create_run", "log_inputs", "log_batch", "set_terminated"]
    run = client.get_run(tracking.run_ids["t1"])
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.01", "optimizer": "adam"}
    assert [p.value for p in client.get_metric_history(run.info.run_id, "val_loss")] == [1.0, 0.8]
    assert run.data.metrics["best_val_loss"] == 0.8
