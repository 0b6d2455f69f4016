"""A new local SQLite tracking store, copied from an empty one instead of migrated into being.

MLflow makes a new SQLite store by running every schema migration since its first release:
about 1.7 s on 2 cores, a tenth of a small study's start-up, paid again by every new study
folder (the default `tracking.uri` is `sqlite:///mlflow.db` beside the spec). For one MLflow
version those migrations always end in the same tables, so tuner makes them once per version in
its cache folder and copies that file into place, in milliseconds; MLflow then opens it as the
store it would have made (its schema check passes, and it adds the Default experiment as it
does to any new store). Anything that goes wrong here leaves the store to MLflow's slow path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from pathlib import Path

#: where tuner keeps files it can always make again; `TUNER_CACHE_DIR` overrides it
CACHE_ENV = "TUNER_CACHE_DIR"
#: MLflow's migrations are not safe in two threads at once (Alembic's environment is global):
#: threads of one process make the empty store one at a time; processes each in a file of
#: their own
_making = threading.Lock()


def cache_folder() -> Path:
    """$TUNER_CACHE_DIR, else $XDG_CACHE_HOME/tuner, else ~/.cache/tuner."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tuner"


def new_sqlite_file(uri: str) -> Path | None:
    """The file of a `sqlite:///` URI when it does not exist yet in a folder that does."""
    if not uri.startswith("sqlite:///"):
        return None
    database = uri.removeprefix("sqlite:///").split("?", 1)[0]
    if not database or database == ":memory:":
        return None
    path = Path(database)
    return path if path.parent.is_dir() and not path.exists() else None


def empty_store() -> Path:
    """This MLflow version's empty store in the cache folder, made the first time it is asked."""
    import mlflow

    from tuner.internals.mlflow_internals import create_store_tables

    template = cache_folder() / f"mlflow-{mlflow.__version__}-empty-store.db"
    with _making:
        if template.exists():
            return template
        template.parent.mkdir(parents=True, exist_ok=True)
        with _scratch_file(template.parent) as scratch:
            create_store_tables(f"sqlite:///{scratch}")
            os.replace(scratch, template)  # whole or absent, for processes making it at once
    return template


def prepare_new_store(uri: str) -> None:
    """Put an empty store at a new SQLite tracking URI's file; any other URI is left alone. The
    copy appears whole or not at all: a study that makes the same store at the same moment
    opens one or the other's, never half a file."""
    target = new_sqlite_file(uri)
    if target is None:
        return
    with contextlib.suppress(Exception), _scratch_file(target.parent) as scratch:
        shutil.copyfile(empty_store(), scratch)
        with contextlib.suppress(FileExistsError):
            os.link(scratch, target)  # never replaces a store another process just made


@contextlib.contextmanager
def _scratch_file(folder: Path):
    """A new file's path in `folder`, removed afterwards unless it was moved away."""
    handle, name = tempfile.mkstemp(dir=folder, prefix=".tuner-", suffix=".db")
    os.close(handle)
    try:
        yield Path(name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
