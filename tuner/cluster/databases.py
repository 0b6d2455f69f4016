"""The databases a study connects to by URL: a driver that is installed for `postgresql://`, and
Optuna's storage as Ray pickles it into the results folder (without its password).

Passwords never reach the results folder: what tuner and Ray save there names the URL with
`***`. In the process that was given the real URL, `reveal` maps it back; in a later one (`tuner
resume`) the password is dropped from the URL, so the driver takes it from its own environment
(PostgreSQL: PGPASSWORD or ~/.pgpass).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy.exc
from optuna.storages import BaseStorage, RDBStorage

from tuner.cluster.redaction import MASK, redact, redact_url
from tuner.errors import SpecError

#: the driver SQLAlchemy takes for a `postgresql://` URL, in order of preference, with its module
POSTGRES_DRIVERS = {"psycopg2": "psycopg2", "psycopg": "psycopg"}
POSTGRES_SCHEMES = ("postgresql", "postgres")
INSTALL_HINT = "pip install 'tuner[cluster]' (it brings psycopg, PostgreSQL's driver)"
#: real URLs this process was given, by their redacted form
_REAL_URLS: dict[str, str] = {}
#: how long an Optuna storage call waits for a database server that stopped answering (a
#: restart, a failover, a network blip) before the study fails, as MLflow's writes wait
OUTAGE_S = 60.0
log = logging.getLogger(__name__)
T = TypeVar("T")
_calling = threading.local()  # inside a storage call: its own inner calls do not retry again


def remember(url: str) -> str:
    """Note a URL with its password, so that its redacted form maps back to it here."""
    _REAL_URLS[redact_url(url)] = url
    return url


def reveal(url: str) -> str:
    """A URL as it was given to this process; else, when its password was redacted, the URL
    without it (the driver finds the password in its own environment)."""
    if url in _REAL_URLS:
        return _REAL_URLS[url]
    if not any(hidden in url for hidden in (f":{MASK}@", f"//{MASK}@", f"={MASK}")):
        return url
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    query = {k: v for k, v in parsed.query.items() if v != MASK}
    password = None if parsed.password == MASK else parsed.password
    user = None if parsed.username == MASK else parsed.username  # a token as the user
    bare = parsed._replace(username=user, password=password).set(query=query)  # set(): not None
    return bare.render_as_string(hide_password=False)


def is_installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def sqlalchemy_url(url: str, key: str) -> str:
    """`url` with an installed driver named: `postgresql://` takes psycopg2 when it is installed,
    else psycopg (3); a named driver that is missing is an error naming `key` and what to
    install. Other URLs are returned as they are."""
    scheme = url.partition("://")[0]
    dialect, _, driver = scheme.partition("+")
    if dialect not in POSTGRES_SCHEMES:
        return url
    installed = [name for name, module in POSTGRES_DRIVERS.items() if is_installed(module)]
    if driver and not is_installed(POSTGRES_DRIVERS.get(driver, driver)):
        raise SpecError(
            f"{key}: {redact(url)} names the PostgreSQL driver {driver!r}, which is not "
            f"installed here; {INSTALL_HINT}, then use postgresql+psycopg://"
        )
    if not driver and not installed:
        raise SpecError(
            f"{key}: {redact(url)} needs a PostgreSQL driver and none is installed; {INSTALL_HINT}"
        )
    rest = url.partition("://")[2]
    return f"postgresql+{driver or installed[0]}://{rest}"


def engine_options(url: str) -> dict[str, Any]:
    """A server's connections can drop between a study's writes (idle timeouts, a restart):
    test each before use. SQLite files need nothing."""
    return {} if url.startswith("sqlite:") else {"pool_pre_ping": True}


class OptunaStorage(RDBStorage):
    """Optuna's RDB storage, pickled (by Ray, into the results folder) without its password,
    whose calls wait out a database server that is briefly unreachable (`riding_out_outages`)."""

    outage_s = OUTAGE_S

    def __init__(self, url: str, **kwargs: Any):
        super().__init__(remember(url), **kwargs)

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state["url"] = redact_url(state["url"])
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__({**state, "url": reveal(state["url"])})


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it: Optuna wraps SQLAlchemy's errors) says the database
    server could not be reached or dropped the connection, rather than refusing the request."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
            return True
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def riding_out_outages(method: Callable) -> Callable:
    """`method` of a database server's Optuna storage, tried again while the server is
    unreachable (`ride_out`)."""

    @functools.wraps(method)
    def call(self: OptunaStorage, *args: Any, **kwargs: Any) -> Any:
        return ride_out(self, method, self, *args, **kwargs)

    return call


def ride_out(storage: BaseStorage, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`call(*args, **kwargs)`, a request to `storage` (an Optuna storage, or Optuna's cache
    over one), tried again while its database server is unreachable, for up to `OUTAGE_S` (the
    study pauses, then goes on; a SQLite file is never unreachable). A call that failed was
    rolled back, so trying it again does it once."""
    backend = getattr(storage, "_backend", storage)  # Optuna's _CachedStorage wraps an RDB
    if (
        not isinstance(backend, OptunaStorage)
        or backend.url.startswith("sqlite")
        or getattr(_calling, "inside", False)
    ):
        return call(*args, **kwargs)
    _calling.inside = True
    try:
        started, delay = time.monotonic(), 0.25
        while True:
            try:
                return call(*args, **kwargs)
            except Exception as exc:
                waited = time.monotonic() - started
                if not unreachable(exc) or waited + delay > backend.outage_s:
                    raise
                log.warning(
                    "Optuna storage %s unreachable (%s); trying %s again for up to %.0f s",
                    redact(backend.url),
                    type(exc).__name__,
                    getattr(call, "__name__", "the call"),
                    backend.outage_s - waited,
                )
                time.sleep(delay)
                delay = min(2 * delay, 5.0)
    finally:
        _calling.inside = False


for _name in sorted(BaseStorage.__abstractmethods__):  # every call Optuna's Study makes
    setattr(OptunaStorage, _name, riding_out_outages(getattr(RDBStorage, _name)))
