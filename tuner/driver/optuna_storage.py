"""The study's Optuna storage, and the claim of an execution's name in it.

Every execution of a study has its own Optuna study, created in the storage before Ray starts:
that creation is the atomic claim on the execution's name (two drivers starting the same spec in
the same second get two executions), and opening the storage first makes a wrong URL, a missing
driver or a refused password fail before any MLflow run is opened.
"""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import sqlalchemy

from tuner.cluster.databases import OptunaStorage, engine_options, remember, reveal, sqlalchemy_url
from tuner.cluster.redaction import has_password, redact
from tuner.errors import StudyError, brief
from tuner.spec.job_spec import JobSpec


def optuna_storage(url: str) -> optuna.storages.RDBStorage:
    """The Optuna study's storage. A SQLite file runs in WAL mode with normal syncs: every epoch
    writes an intermediate value, and that halves what each write costs the driver (about 1 ms
    instead of 2). Like any SQLite file, keep it off network filesystems. A server (PostgreSQL:
    `postgresql://` takes whichever driver is installed) is pinged before each use. A storage
    that cannot be opened is a StudyError that shows the URL without its password."""
    url = sqlalchemy_url(remember(reveal(url)), "search.storage")
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        storage = new_rdb_storage(url)
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise StudyError(storage_failure(url, exc)) from None
    if url.startswith("sqlite:"):

        @sqlalchemy.event.listens_for(storage.engine, "connect")
        def _pragmas(connection, _record) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        storage.engine.dispose()  # reconnect, with the pragmas
    return storage


def storage_failure(url: str, exc: Exception) -> str:
    """Why the Optuna storage did not open (the driver's own words, redacted), and what to do."""
    detail = brief(str(getattr(exc, "orig", None) or exc), 300)
    message = f"search.storage: cannot open the Optuna storage {redact(url)} ({redact(detail)})"
    if url.startswith("postgresql") and not has_password(url):
        message += (
            "; the URL has no password, so the driver looks for it in PGPASSWORD or ~/.pgpass "
            "(a study's results folder keeps none: `tuner resume` needs it there)"
        )
    return message


def open_optuna_storage(spec: JobSpec) -> None:
    """Connect to the study's Optuna storage once, before Ray starts: a wrong URL, a missing
    driver or a refused password fail here, with no MLflow run opened yet."""
    optuna_storage(spec.search.storage).engine.dispose()


def new_rdb_storage(url: str, attempts: int = 5) -> OptunaStorage:
    """Optuna's RDBStorage, which creates its tables in a new database: two drivers doing that
    at once on PostgreSQL collide (a duplicate type or table), and the loser finds them made."""
    for attempt in range(1, attempts):
        try:
            return OptunaStorage(url, engine_kwargs=engine_options(url))
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            time.sleep(0.2 * attempt)
    return OptunaStorage(url, engine_kwargs=engine_options(url))


def execution_name(spec: JobSpec) -> str:
    return f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"


MAX_SAME_SECOND = 100  # executions of one study name started in the same second


def claim_execution(spec: JobSpec, stamp: str | None = None) -> str:
    """A new execution's name, claimed by creating its Optuna study in the study's storage.

    Executions are `NAME-YYYYmmdd-HHMMSS`, so two drivers starting a study of the same name in
    the same second (two submissions of one spec) would share an Optuna study, a results folder
    and a parent run's name. The storage's unique study names make the claim atomic across
    machines: the second driver gets `NAME-...-2`, its own execution, never the first's."""
    base = f"{spec.name}-{stamp or time.strftime('%Y%m%d-%H%M%S')}"
    # Optuna's "[I ...] A new study created in RDB" is tuner's bookkeeping, not news to the user
    # (the study's own log keeps Optuna at WARNING too)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna_storage(spec.search.storage)
    direction = optuna.study.StudyDirection
    directions = [
        direction.MAXIMIZE if objective.mode == "max" else direction.MINIMIZE
        for objective in spec.objectives
    ]
    for n in range(1, MAX_SAME_SECOND + 1):
        execution = base if n == 1 else f"{base}-{n}"
        try:
            storage.create_new_study(directions, execution)
        except optuna.exceptions.DuplicatedStudyError:
            continue
        finally:
            storage.engine.dispose()
        if n > 1:
            print(
                f"Execution {base} of study {spec.name!r} already exists in its Optuna storage "
                f"(started this second by another driver): this one is {execution}, with its "
                "own Optuna study, results folder and MLflow run"
            )
        return execution
    raise StudyError(
        f"study {spec.name!r}: {MAX_SAME_SECOND} executions named {base} already exist in its "
        "Optuna storage; start it again in a second"
    )
