"""tuner/cluster/databases.py: a study's Optuna storage on a database server waits out a brief
outage of that server instead of failing the study."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy.exc
from optuna.exceptions import StorageInternalError
from optuna.trial import TrialState

from tests.helpers import OutageProxy, Postgres, tiny_spec
from tuner.cluster.databases import unreachable
from tuner.driver.journal import JOURNAL_FILE, read_journal
from tuner.driver.study import LOG_FILE, run_study
from tuner.results import outcomes

EPOCHS, TRIALS = 4, 3


def test_only_a_lost_connection_counts_as_an_outage() -> None:
    lost = sqlalchemy.exc.OperationalError("SELECT 1", {}, ConnectionResetError("reset by peer"))
    try:
        raise StorageInternalError("during the commit") from lost
    except StorageInternalError as wrapped:  # how Optuna hands it on
        assert unreachable(wrapped)
    duplicate = sqlalchemy.exc.IntegrityError("INSERT", {}, ValueError("duplicate key"))
    assert not unreachable(duplicate)
    assert not unreachable(ValueError("a trial that is already finished"))


def first_journal(results: Path) -> list[dict]:
    found = list(results.glob(f"*/{JOURNAL_FILE}"))
    return read_journal(found[0]) if found else []


@pytest.mark.usefixtures("ray_local")
def test_a_study_waits_out_its_database_going_away(postgres: Postgres, study_dir: Path) -> None:
    """PostgreSQL, behind a relay, turns every request away for at least 3 s from the moment
    the first trial reports its last epoch, so Optuna's tell and the next ask meet the outage:
    the study pauses, then completes with every trial told to Optuna with its whole curve."""
    url = postgres.create_database("outage")
    proxy = OutageProxy(f"127.0.0.1:{postgres.port}")
    proxied = url.replace(f":{postgres.port}/", f":{proxy.port}/")
    spec = tiny_spec(
        name="db-outage",
        search={"num_samples": TRIALS, "max_concurrent": 1, "storage": proxied},
        scheduler={"name": "fifo", "max_epochs": EPOCHS},
    )

    def outage_at_the_first_last_epoch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            events = first_journal(study_dir / "tuner-results")
            if any(e["event"] == "result" and e["row"]["epoch"] == EPOCHS for e in events):
                proxy.outage(min_s=3.0)
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=outage_at_the_first_last_epoch, daemon=True)
    watcher.start()
    try:
        result = run_study(spec, show_progress=False)
    finally:
        watcher.join(timeout=5)
        proxy.close()

    assert proxy.outages == 1 and proxy.turned_away >= 1, "the outage met no request"
    assert list(result.trials["status"]) == [outcomes.COMPLETED] * TRIALS
    study = optuna.load_study(study_name=result.execution, storage=url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * TRIALS
    for trial in study.trials:
        assert sorted(trial.intermediate_values) == list(range(1, EPOCHS + 1)), trial.number
    log = (result.results_path / LOG_FILE).read_text()
    assert "Optuna storage" in log and "unreachable" in log
    assert "Traceback" not in log, "a request to the storage met the outage unguarded"
