"""tuner/tracking/study_run.py: the study's parent run in MLflow (a real SQLite store), and how
a stopped study closes it (tuner/driver/study_run.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from tests.helpers import EPOCH_1, callbacks, drive, fake_trial, tiny_spec
from tuner.driver.study_run import StudyRun
from tuner.results import outcomes
from tuner.results.trials import StudyResult
from tuner.tracking.runs import client_for
from tuner.tracking.study_run import finish_parent_run, start_parent_run


def test_the_counts_a_resumed_study_ends_with_replace_those_of_its_interruption(
    study_dir: Path,
) -> None:
    """Ctrl-C logged 2 interrupted of 3; the resumed study ends with 3 completed: the parent run
    says 3 completed and 0 interrupted (it said 2 interrupted + 3 completed of 3)."""
    _, tracking, client = callbacks(study_dir)

    def end(statuses: list[str]) -> None:
        trials = pd.DataFrame(
            {"trial": [1, 2, 3], "status": statuses, "diagnosis": ["good_fit"] * 3, "epochs": 2}
        )
        result = StudyResult(tracking.spec, "callbacks-x", study_dir, trials, 1.0)
        finish_parent_run(tracking.writer, tracking.parent_run_id, result, None, None)
        tracking.writer.drain_until(10)

    end([outcomes.COMPLETED, outcomes.INTERRUPTED, outcomes.INTERRUPTED])
    end([outcomes.COMPLETED] * 3)
    metrics = client.get_run(tracking.parent_run_id).data.metrics
    statuses = {k: v for k, v in metrics.items() if k.startswith("trials_") and k != "trials_total"}
    counted = {k for k in statuses if k.removeprefix("trials_") in outcomes.STATUSES}
    assert {k: statuses[k] for k in counted} == {
        f"trials_{s}": (3 if s == outcomes.COMPLETED else 0) for s in outcomes.STATUSES
    }
    assert metrics["trials_total"] == 3


def test_passwords_in_urls_never_reach_mlflow(study_dir: Path) -> None:
    spec = tiny_spec(
        name="secrets",
        search={"storage": "postgresql://optuna:s3cr3t-pw@db-host:5432/optuna"},
    )
    client = client_for(spec.tracking.uri)
    _, run_id = start_parent_run(client, spec, "secrets-x", study_dir)
    run = client.get_run(run_id)
    logged = [*run.data.params.values(), *run.data.tags.values()]
    spec_artifact = client.download_artifacts(run_id, "spec.yaml", str(study_dir))
    logged.append(Path(spec_artifact).read_text())
    assert not [text for text in logged if "s3cr3t-pw" in text]
    assert run.data.params["search.storage"] == "postgresql://optuna:***@db-host:5432/optuna"


def test_a_stopped_study_s_runs_end_killed_though_a_write_before_the_stop_failed(
    study_dir: Path,
) -> None:
    """`tuner stop` leaves the driver 20 s: the parent run (the study's status) is closed first,
    and a write MLflow refused before the stop neither keeps a run RUNNING nor replaces what
    stopped the study with its own error."""
    recorder, tracking, client = callbacks(study_dir)
    tracking.background = True  # as a study runs it: writes on the writer thread
    trial = fake_trial("t1", 1)
    drive([recorder, tracking], "on_trial_start", trial)
    drive([recorder, tracking], "on_trial_result", trial, result=EPOCH_1)

    def refused() -> None:
        raise RuntimeError("INVALID_PARAMETER_VALUE: a batch MLflow refused")

    tracking._submit(refused)
    stopped = SimpleNamespace(tracking=tracking, parent_run_id=tracking.parent_run_id)
    StudyRun.close_runs_killed(stopped)  # type: ignore[arg-type]

    assert client.get_run(tracking.parent_run_id).info.status == "KILLED"
    assert client.get_run(tracking.run_ids["t1"]).info.status == "KILLED"
