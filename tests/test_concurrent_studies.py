"""Several studies at once on one cluster, sharing a PostgreSQL (Optuna) and an MLflow server
(PostgreSQL + S3 artifacts): each keeps its own Optuna study, parent run, trials and
`max_concurrent`; stopping one leaves the others running; one study name started twice gets two
executions, never one merged one."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.study import StudyDirection
from optuna.trial import TrialState

from tests.helpers import (
    Postgres,
    RayHead,
    max_concurrency,
    ray_head,
    runner,
    submit,
    tiny_spec,
    wait_for_status,
)
from tuner.cli import app
from tuner.driver.journal import JOURNAL_FILE, read_journal
from tuner.driver.optuna_storage import claim_execution
from tuner.driver.results_folder import SPEC_FILE
from tuner.tracking import schema

#: trials of a few seconds, so that the studies overlap and a trial is running when one stops
SLOW = {"hidden_units": 512, "num_layers": 3, "batch_size": 16}


def test_one_study_name_started_in_the_same_second_gets_distinct_executions(
    postgres: Postgres,
) -> None:
    """Four drivers claim the same execution name at once on one PostgreSQL: each gets its own,
    and each has its own (empty) Optuna study."""
    spec = tiny_spec(name="twin", search={"storage": postgres.create_database("claims")})
    start, names = threading.Barrier(4), []

    def claim() -> None:
        start.wait()
        names.append(claim_execution(spec, stamp="20260101-000000"))

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    base = "twin-20260101-000000"
    assert sorted(names) == [base, f"{base}-2", f"{base}-3", f"{base}-4"]
    stored = optuna.get_all_study_names(spec.search.storage)
    assert sorted(stored) == sorted(names)
    directions = {
        optuna.load_study(study_name=n, storage=spec.search.storage).direction for n in names
    }
    assert spec.objective.mode == "min" and directions == {StudyDirection.MINIMIZE}
    assert optuna.load_study(study_name=base, storage=spec.search.storage).trials == []


# --------------------------------------------------------------------------- on a cluster


@pytest.fixture(scope="module")
def head() -> Iterator[RayHead]:
    """4 CPUs: two trials of `alpha`, one of `beta`, one of the study that is stopped."""
    with ray_head(num_cpus=4) as cluster:
        yield cluster


def write_spec(folder: Path, name: str, storage: str, tracking: str, **search: Any) -> Path:
    raw = {
        "name": name,
        "model": "mlp",
        "dataset": {"name": "digits"},
        "search_space": SLOW,
        "search": {"seed": 0, "storage": storage, **search},
        "scheduler": {"name": "fifo", "max_epochs": 6},
        "tracking": {"uri": tracking},
        "storage": str(folder / "results"),
    }
    path = folder / f"{name}-{search['num_samples']}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def execution_folder(results: Path, name: str, num_samples: int) -> Path | None:
    """The results folder of the study `name` run with `num_samples` (two share a name)."""
    for folder in results.glob(f"{name}-*"):
        spec = yaml.safe_load((folder / SPEC_FILE).read_text())
        if spec["search"]["num_samples"] == num_samples:
            return folder
    return None


def wait_for_event(
    results: Path, name: str, num_samples: int, event: str, timeout_s: float = 300
) -> Path:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        folder = execution_folder(results, name, num_samples)
        if folder and any(e["event"] == event for e in read_journal(folder / JOURNAL_FILE)):
            return folder
        time.sleep(1)
    raise TimeoutError(f"no {event!r} event in study {name} ({num_samples}) in {timeout_s} s")


def children(client: MlflowClient, parent) -> list:
    return client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{schema.PARENT_TAG}` = '{parent.info.run_id}'",
    )


def test_concurrent_studies_keep_their_own_stores_and_limits_and_one_stops_alone(
    head: RayHead,
    postgres: Postgres,
    stack_mlflow: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", head.token)
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    optuna_url = postgres.create_database("studies")
    results = tmp_path / "results"

    def spec(name: str, **search: Any) -> Path:
        return write_spec(tmp_path, name, optuna_url, stack_mlflow, **search)

    # a long `beta` first, stopped once both others run; then `alpha` and a second `beta` at once
    doomed = submit(spec("beta", num_samples=20, max_concurrent=1), head.address)
    doomed_folder = wait_for_event(results, "beta", 20, "start")
    alpha = submit(spec("alpha", num_samples=4, max_concurrent=2), head.address)
    beta = submit(spec("beta", num_samples=3, max_concurrent=1), head.address)
    alpha_folder = wait_for_event(results, "alpha", 4, "start")
    wait_for_event(results, "beta", 3, "start")

    stopped = runner.invoke(app, ["stop", doomed, "--address", head.address])
    assert stopped.exit_code == 0 and f"Stopping {doomed}" in stopped.output, stopped.output
    stopped_at = time.time()
    assert wait_for_status(doomed, head.address, set(), timeout_s=120) == "STOPPED"
    for job in (alpha, beta):
        status = wait_for_status(job, head.address, set(), timeout_s=600)
        logs = runner.invoke(app, ["logs", job, "--address", head.address]).output
        assert status == "SUCCEEDED", logs

    # alpha ran on after the stop: trials of it ended later
    alpha_events = read_journal(alpha_folder / JOURNAL_FILE)
    assert max(e["time"] for e in alpha_events if e["event"] == "end") > stopped_at

    client = MlflowClient(stack_mlflow)
    beta_folder = execution_folder(results, "beta", 3)
    expected = {  # results folder -> (trials, max_concurrent, parent status)
        alpha_folder: (4, 2, "FINISHED"),
        beta_folder: (3, 1, "FINISHED"),
        doomed_folder: (None, 1, "KILLED"),
    }
    assert len({f.name for f in expected}) == 3  # three executions, two of them named beta
    parents = {}
    for folder, (trials, limit, parent_status) in expected.items():
        events = read_journal(folder / JOURNAL_FILE)
        journal_ids = {e["trial_id"] for e in events if e["event"] == "start"}
        assert max_concurrency(events) == limit, (folder.name, events)

        # its own Optuna study, named after its execution, holding exactly its trials (the
        # stopped one may also hold the trial it had asked for when the stop came, never
        # started); none left RUNNING: the stopped study told FAIL, marked interrupted, for
        # each trial it had asked for and not told
        study = optuna.load_study(study_name=folder.name, storage=optuna_url)
        ray_id = schema.TRIAL_ID_TAG
        asked = {t.user_attrs.get(ray_id, f"#{t.number}"): t for t in study.trials}
        optuna_ids = set(asked)
        unstarted = optuna_ids - journal_ids
        assert journal_ids <= optuna_ids, folder.name
        assert unstarted == set() or (trials is None and len(unstarted) == 1), folder.name
        assert TrialState.RUNNING not in {t.state for t in study.trials}, folder.name
        for trial in study.trials:
            if trial.state == TrialState.FAIL:
                assert trial.user_attrs.get(schema.INTERRUPTED_ATTR), (folder.name, trial)

        # its own parent run, whose children are exactly its trials
        (parent,) = client.search_runs(
            [client.get_experiment_by_name(folder.name.split("-")[0]).experiment_id],
            filter_string=f"tags.`{schema.EXECUTION_TAG}` = '{folder.name}'",
        )
        parents[folder] = parent
        assert parent.info.status == parent_status, folder.name
        runs = children(client, parent)
        assert {r.data.tags[schema.TRIAL_ID_TAG] for r in runs} == journal_ids, folder.name
        if trials is not None:
            assert len(runs) == len(journal_ids) == trials
            assert {r.info.status for r in runs} == {"FINISHED"}
            assert {t.state for t in study.trials} == {TrialState.COMPLETE}
        else:  # stopped: every run closed, the one running at the stop KILLED
            assert 1 <= len(runs) < 20
            assert "KILLED" in {r.info.status for r in runs}
            assert {r.info.status for r in runs} <= {"FINISHED", "KILLED"}

    assert parents[beta_folder].info.experiment_id == parents[doomed_folder].info.experiment_id
    assert parents[alpha_folder].info.experiment_id != parents[beta_folder].info.experiment_id
    assert sorted(optuna.get_all_study_names(optuna_url)) == sorted(f.name for f in expected)
