"""`storage: s3://bucket/prefix` on a real S3 server (moto's, `object_store`): a killed study
resumed from the bucket alone, and a two-node cluster whose only shared storage is the bucket.

Studies run in their own processes (`python -m tuner run`), with the S3 endpoint and credentials
in their environment as on a cluster: the session's local Ray (`ray_local`) started without them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.helpers import (
    BUCKET,
    EPOCH_1,
    NUM_TRIALS,
    ObjectStore,
    OutageProxy,
    assert_every_trial_once,
    callbacks,
    drive,
    fake_trial,
    make_study,
    ray_head,
    run_counts,
    tiny_spec,
)
from tuner.cluster.storage import WORK_DIR, download, is_remote, study_folder, working_folder
from tuner.driver.journal import JOURNAL_FILE, read_journal
from tuner.driver.results_folder import SPEC_FILE, find_results
from tuner.errors import SpecError, StudyError
from tuner.results import outcomes
from tuner.results.summary import TRIALS_FILE
from tuner.tracking import schema
from tuner.tracking.mlflow_callback import RUN_IDS_FILE, MlflowTracking, load_run_ids, save_run_ids

ROOT = Path(__file__).resolve().parents[1]


def test_a_remote_storage_keeps_a_local_working_folder_per_execution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert is_remote("s3://bucket/runs") and is_remote("gs://b/p")
    assert not is_remote("/data/runs") and not is_remote("runs") and not is_remote("file:///x")
    folder = study_folder("s3://bucket/team/runs/", "digits-20250101-120000")
    assert folder.uri == "s3://bucket/team/runs/digits-20250101-120000"
    assert folder.local == tmp_path / WORK_DIR / "s3/bucket/team/runs/digits-20250101-120000"
    assert folder.location == folder.uri
    local = study_folder(str(tmp_path / "runs"), "x-1")
    assert (local.local, local.uri, local.location) == (tmp_path / "runs/x-1", None, local.location)
    assert working_folder("s3://b/x-1") == tmp_path / WORK_DIR / "s3/b/x-1"


@pytest.mark.parametrize(
    "uri",
    ["s3://b/runs/../../../../escaped", "s3://../escaped", "s3:///escaped", "s3://b/a\\..\\x"],
)
def test_a_storage_uri_that_climbs_out_of_the_working_folder_is_refused(
    uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As written in a spec (exit 2 before anything starts), or read from a study's
    `tuner.results_path` tag, which anyone with access to the MLflow server can write."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError, match="must be a relative path that stays below its folder"):
        working_folder(uri)
    with pytest.raises(SpecError, match=r"storage '.*': bucket and path .* must be a relative"):
        tiny_spec(storage=uri)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(store)
    run_id = make_study(client, "steered", "val_loss:min", {1: 0.3}).info.run_id
    client.set_tag(run_id, schema.RESULTS_PATH_TAG, uri)
    with pytest.raises(SpecError, match="must be a relative path that stays below its folder"):
        find_results("steered", store)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]  # no .tuner/ folder


def test_a_bucket_key_that_climbs_out_is_not_downloaded(
    object_store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key written into the shared bucket below a study's prefix, with `..` in it."""
    monkeypatch.chdir(tmp_path)
    for name, value in object_store.env.items():
        monkeypatch.setenv(name, value)
    prefix = f"climb-{uuid.uuid4().hex[:8]}/exec"
    s3 = object_store.client()
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{SPEC_FILE}", Body=b"name: x\n")
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/a/../../../../../escaped", Body=b"x")
    assert f"{prefix}/a/../../../../../escaped" in object_store.keys(BUCKET, prefix)
    with pytest.raises(StudyError, match=r"bucket key 'a/\.\./.*escaped' must be a relative"):
        download(f"s3://{BUCKET}/{prefix}")
    assert not list(tmp_path.rglob("escaped"))


def s3_env(store: ObjectStore) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, **store.env}


def bucket_journal(store: ObjectStore, prefix: str) -> list[dict]:
    keys = [k for k in store.keys(BUCKET, prefix) if k.endswith(f"/{JOURNAL_FILE}")]
    if not keys:
        return []
    body = store.client().get_object(Bucket=BUCKET, Key=keys[0])["Body"].read().decode()
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def set_back_bucket_journal(store: ObjectStore, prefix: str) -> str:
    """The bucket's journal as an upload that the next snapshot overlapped can leave it: older
    than Ray's state beside it, without the end of the last trial that state holds as finished
    nor any event after it. Returns that trial's id."""
    keys = store.keys(BUCKET, prefix)
    (journal_key,) = [k for k in keys if k.endswith(f"/{JOURNAL_FILE}")]
    newest_state = max(k for k in keys if "/experiment_state-" in k)
    s3 = store.client()
    state = json.loads(s3.get_object(Bucket=BUCKET, Key=newest_state)["Body"].read())
    trials = [json.loads(trial) for trial, _ in state["trial_data"]]
    finished = {t["trial_id"] for t in trials if t["status"] == "TERMINATED"}
    events = bucket_journal(store, prefix)
    ends = [i for i, e in enumerate(events) if e["event"] == "end" and e["trial_id"] in finished]
    assert ends, (finished, events)
    kept = "".join(json.dumps(e) + "\n" for e in events[: ends[-1]])
    s3.put_object(Bucket=BUCKET, Key=journal_key, Body=kept.encode())
    return events[ends[-1]]["trial_id"]


def test_driver_killed_then_resumed_from_the_bucket_after_its_folder_is_deleted(
    object_store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bucket's journal is set back behind Ray's state (`set_back_bucket_journal`), as a
    kill during an overlapped upload leaves it; the trial whose end it lost runs again from its
    checkpoint under its own id (before, the resumed study ended one trial short, interrupted)."""
    prefix = f"resume-{uuid.uuid4().hex[:8]}"
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "crash-s3",
                "model": "mlp",
                "dataset": {"name": "digits"},
                "search": {"num_samples": NUM_TRIALS, "max_concurrent": 2},
                "scheduler": {"name": "asha", "max_epochs": 12, "grace_period": 2},
                "storage": f"s3://{BUCKET}/{prefix}",
            }
        )
    )
    env = s3_env(object_store)
    driver = subprocess.Popen(
        [sys.executable, "-m", "tuner", "run", str(spec)],
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and driver.poll() is None:
        if sum(e["event"] == "end" for e in bucket_journal(object_store, prefix)) >= 3:
            break
        time.sleep(0.5)
    assert driver.poll() is None, "the study ended before it could be killed"
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
    driver.wait()
    before = run_counts(tmp_path / "mlflow.db")
    assert before["RUNNING"] >= 1, before
    lagged = set_back_bucket_journal(object_store, prefix)

    work = tmp_path / WORK_DIR
    (local,) = work.glob(f"s3/{BUCKET}/{prefix}/*")
    execution = local.name
    shutil.rmtree(work)  # the driver's machine is gone: only the bucket is left
    keys = object_store.keys(BUCKET, f"{prefix}/{execution}/")
    names = {k.removeprefix(f"{prefix}/{execution}/") for k in keys}
    assert {SPEC_FILE, JOURNAL_FILE, "tuner.pkl"} <= names, sorted(names)
    assert any(n.startswith("experiment_state-") for n in names), sorted(names)
    assert any("/checkpoint_" in n for n in names), sorted(names)  # trials wrote to the bucket

    # found by name in MLflow (the parent run records the URI), from another directory: the
    # working folder the callbacks pickled is gone, their files are downloaded elsewhere
    resumer = tmp_path / "resumer"
    resumer.mkdir()
    tracking = ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    resumed = subprocess.run(
        [sys.executable, "-m", "tuner", "resume", "crash-s3", *tracking],
        cwd=resumer,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Best: trial" in resumed.stdout
    uri = f"s3://{BUCKET}/{prefix}/{execution}"
    assert uri in " ".join(resumed.stdout.split())

    after = run_counts(tmp_path / "mlflow.db")
    assert after == Counter({"FINISHED": NUM_TRIALS + 1}), after  # the parent + one per trial
    assert (resumer / WORK_DIR / f"s3/{BUCKET}/{prefix}/{execution}/{TRIALS_FILE}").is_file()
    assert not work.exists()
    monkeypatch.chdir(tmp_path)
    for name, value in object_store.env.items():
        monkeypatch.setenv(name, value)
    folder = find_results(uri, None)  # by the URI itself, downloaded again
    assert (
        folder.uri == uri
        and folder.local == tmp_path / WORK_DIR / f"s3/{BUCKET}/{prefix}/{execution}"
    )
    trials = pd.read_csv(folder.local / TRIALS_FILE)
    assert sorted(trials["trial"]) == list(range(1, NUM_TRIALS + 1))
    assert set(trials["status"]) <= {outcomes.COMPLETED, outcomes.STOPPED_BY_SCHEDULER}
    assert not list(folder.local.rglob("checkpoint_*")), "the driver downloads no checkpoints"
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        (location,) = db.execute(
            "select value from tags where key = ?", (schema.RESULTS_PATH_TAG,)
        ).fetchone()
    assert location == uri
    states, superseded = assert_every_trial_once(
        tmp_path, execution, folder.local / JOURNAL_FILE, trials, journal_sees_every_start=False
    )
    assert lagged in set(trials["trial_id"]), lagged  # finished again, under its own id
    figures = {
        "mlflow_before": dict(before),
        "mlflow_after": dict(after),
        "optuna": {s.name: n for s, n in states.items()},
        "superseded": len(superseded),
        "bucket_keys_at_kill": len(keys),
    }
    print(figures)


def test_a_study_rides_out_its_bucket_going_away(object_store: ObjectStore, tmp_path: Path) -> None:
    """The S3 server, behind a relay, turns every request away for at least 3 s from a trial's
    second epoch on (the trial's checkpoint upload, Ray's experiment sync and the driver's
    copies meet it): the study completes, every trial with its whole curve, all in the bucket."""
    prefix = f"outage-{uuid.uuid4().hex[:8]}"
    proxy = OutageProxy(object_store.endpoint)
    env = {**s3_env(object_store), "AWS_ENDPOINT_URL": proxy.uri}
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "s3-outage",
                "model": "mlp",
                "dataset": {"name": "digits"},
                "search_space": {"hidden_units": 512, "num_layers": 3, "batch_size": 16},
                "search": {"num_samples": 2, "max_concurrent": 1},
                "scheduler": {"name": "fifo", "max_epochs": 4},
                "storage": f"s3://{BUCKET}/{prefix}",
            }
        )
    )
    driver = subprocess.Popen(
        [sys.executable, "-m", "tuner", "run", str(spec)],
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and driver.poll() is None:
            journals = list((tmp_path / WORK_DIR).glob(f"s3/{BUCKET}/{prefix}/*/{JOURNAL_FILE}"))
            events = read_journal(journals[0]) if journals else []
            if any(e["event"] == "result" and e["row"]["epoch"] == 2 for e in events):
                proxy.outage(min_s=3.0)
                break
            time.sleep(0.05)
        output, _ = driver.communicate(timeout=600)
    finally:
        proxy.close()
    assert proxy.outages == 1 and proxy.turned_away >= 1, output
    assert driver.returncode == 0, output
    (local,) = (tmp_path / WORK_DIR).glob(f"s3/{BUCKET}/{prefix}/*")
    trials = pd.read_csv(local / TRIALS_FILE)
    assert list(trials["status"]) == [outcomes.COMPLETED] * 2, trials
    assert list(trials["epochs"]) == [4, 4]
    names = {k.rsplit("/", 1)[-1] for k in object_store.keys(BUCKET, f"{prefix}/{local.name}/")}
    assert {SPEC_FILE, JOURNAL_FILE, TRIALS_FILE} <= names, sorted(names)


def test_two_nodes_share_only_the_bucket(object_store: ObjectStore, tmp_path: Path) -> None:
    """Head and worker node, each with its own temp dir, the driver in a third folder: no folder
    is shared, so trials on the worker node could only checkpoint to the bucket."""
    prefix = f"nodes-{uuid.uuid4().hex[:8]}"
    driver_dir = tmp_path / "driver"
    driver_dir.mkdir()
    spec = driver_dir / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "s3-nodes",
                "model": "mlp",
                "dataset": {"name": "digits"},
                # a few seconds a trial: the two start together, one on each 1-CPU node
                "search_space": {"hidden_units": 512, "num_layers": 3, "batch_size": 16},
                "search": {"num_samples": 2, "max_concurrent": 2},
                "scheduler": {"name": "fifo", "max_epochs": 6},
                "storage": f"s3://{BUCKET}/{prefix}",
            }
        )
    )
    with ray_head(1, object_store.env, workers=1, dashboard=False, object_store_mb=100) as head:
        run = subprocess.run(
            [sys.executable, "-m", "tuner", "run", str(spec), "--address", head.gcs],
            cwd=driver_dir,
            env={**head.env, "COLUMNS": "200"},
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert run.returncode == 0, run.stdout + run.stderr
    (local,) = (driver_dir / WORK_DIR).glob(f"s3/{BUCKET}/{prefix}/*")
    trials = pd.read_csv(local / TRIALS_FILE)
    assert list(trials["status"]) == [outcomes.COMPLETED] * 2, trials.to_dict("records")
    assert trials["node"].nunique() == 2, trials["node"].tolist()  # both nodes ran trials
    assert not list(local.rglob("checkpoint_*")), "checkpoints belong in the bucket"

    root = f"{prefix}/{local.name}/"
    names = [k.removeprefix(root) for k in object_store.keys(BUCKET, root)]
    for trial_id in trials["trial_id"]:
        checkpoints = {n.split("/")[1] for n in names if n.split("/")[0].endswith(trial_id)}
        checkpoints = {c for c in checkpoints if c.startswith("checkpoint_")}
        assert checkpoints, (trial_id, names)  # every trial's checkpoints are in the bucket
    for name in (SPEC_FILE, JOURNAL_FILE, TRIALS_FILE, "best-config.yaml", "report.html"):
        assert name in names, (name, sorted(names))
    journal = [e for e in read_journal(local / JOURNAL_FILE) if e["event"] == "result"]
    bucket = [e for e in bucket_journal(object_store, root) if e["event"] == "result"]
    assert len(bucket) == len(journal) == 12  # 2 trials x 6 epochs, the same in the bucket


def test_restored_tracking_claims_runs_its_saved_ids_lack(study_dir: Path) -> None:
    """The bucket's copy of the run ids can lag the journal: a run of a trial the journal knows
    is taken back (no duplicate run), one of a trial it does not know is superseded."""
    recorder, tracking, client = callbacks(study_dir)
    known, unknown = fake_trial("t1", 1), fake_trial("t2", 2)
    for trial in (known, unknown):
        drive([recorder, tracking], "on_trial_start", trial)
        drive([recorder, tracking], "on_trial_result", trial, result=EPOCH_1)
    tracking.close_open_runs("KILLED")
    runs = dict(tracking.run_ids)
    save_run_ids(study_dir / RUN_IDS_FILE, tracking.parent_run_id, {})  # the stale copy
    recorder.forget({"t2"})  # the journal as it reached the bucket: t1 only

    restored = MlflowTracking(
        tracking.spec,
        recorder,
        tracking.parent_run_id,
        tracking.experiment_id,
        study_dir / RUN_IDS_FILE,
    )
    assert restored.claim_orphans() == {"t2"}  # returned: the restore journals it
    restored.writer.drain()
    assert restored.run_ids == {"t1": runs["t1"]}
    assert load_run_ids(study_dir / RUN_IDS_FILE) == {"t1": runs["t1"]}
    dropped = client.get_run(runs["t2"])
    assert (dropped.info.lifecycle_stage, dropped.info.status) == ("deleted", "KILLED")
    assert dropped.data.tags[schema.TRIAL_STATUS_TAG] == "superseded_by_restore"
    assert client.get_run(runs["t1"]).info.lifecycle_stage == "active"
