"""tuner/tracking/store_template.py: a new SQLite tracking store copied from an empty one made
once per MLflow version, which MLflow opens as the store it would have made itself."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tuner.tracking import store_template
from tuner.tracking.runs import client_for
from tuner.tracking.store_template import (
    cache_folder,
    empty_store,
    new_sqlite_file,
    prepare_new_store,
)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(store_template.CACHE_ENV, str(folder))
    return folder


def schema(db: Path) -> dict[str, list[str]]:
    """Each table's and index's definition, its lines sorted: MLflow's migrations write a
    table's constraints in an order that varies from one process to the next."""
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL")
        return {name: sorted(line.strip(" ,") for line in sql.splitlines()) for name, sql in rows}


def test_the_cache_folder_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(store_template.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere")
    assert cache_folder() == Path("/somewhere/tuner")
    monkeypatch.setenv(store_template.CACHE_ENV, "/elsewhere")
    assert cache_folder() == Path("/elsewhere")


def test_only_a_new_sqlite_file_in_an_existing_folder_is_made(tmp_path: Path) -> None:
    (tmp_path / "old.db").write_bytes(b"")
    assert new_sqlite_file(f"sqlite:///{tmp_path / 'new.db'}") == tmp_path / "new.db"
    assert new_sqlite_file(f"sqlite:///{tmp_path / 'old.db'}") is None
    assert new_sqlite_file(f"sqlite:///{tmp_path / 'no' / 'new.db'}") is None
    assert new_sqlite_file("sqlite:///:memory:") is None
    assert new_sqlite_file("postgresql://u@h/db") is None
    assert new_sqlite_file("http://127.0.0.1:5000") is None


def test_a_copied_store_is_the_store_mlflow_makes(tmp_path: Path, cache: Path) -> None:
    migrated = tmp_path / "migrated.db"
    MlflowClient(f"sqlite:///{migrated}").search_experiments()  # MLflow's own way
    copied = tmp_path / "copied.db"
    client = client_for(f"sqlite:///{copied}")
    assert (cache / f"mlflow-{mlflow.__version__}-empty-store.db").is_file()
    assert schema(copied) == schema(migrated)
    assert [e.name for e in client.search_experiments()] == ["Default"]
    run = client.create_run(client.create_experiment("e"))
    client.log_metric(run.info.run_id, "val_loss", 0.5)
    assert client.get_run(run.info.run_id).data.metrics == {"val_loss": 0.5}


def test_a_store_that_exists_is_never_touched(tmp_path: Path, cache: Path) -> None:
    db = tmp_path / "mlflow.db"
    client = client_for(f"sqlite:///{db}")
    experiment = client.create_experiment("kept")
    prepare_new_store(f"sqlite:///{db}")
    assert client_for(f"sqlite:///{db}").get_experiment(experiment).name == "kept"


def test_stores_made_at_once_are_each_whole(tmp_path: Path, cache: Path) -> None:
    uris = [f"sqlite:///{tmp_path / f's{i % 2}.db'}" for i in range(6)]  # 3 racers per store
    threads = [threading.Thread(target=prepare_new_store, args=(uri,)) for uri in uris]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["s0.db", "s1.db"]  # no scratch
    for uri in set(uris):
        assert [e.name for e in MlflowClient(uri).search_experiments()] == ["Default"]


def test_an_unwritable_cache_leaves_the_store_to_mlflow(tmp_path: Path, cache: Path) -> None:
    cache.write_text("a file where the folder should be")
    db = tmp_path / "mlflow.db"
    prepare_new_store(f"sqlite:///{db}")
    assert not db.exists() and list(tmp_path.glob(".tuner-*")) == []
    assert [e.name for e in client_for(f"sqlite:///{db}").search_experiments()] == ["Default"]


def test_the_empty_store_is_made_once(cache: Path) -> None:
    first = empty_store()
    made = first.stat().st_mtime_ns
    assert empty_store() == first and first.stat().st_mtime_ns == made
