"""Ray Jobs: submit a study to a cluster as a Ray Job, then follow, inspect and stop it.

Everything goes over the cluster's Jobs API (the dashboard, `http://HEAD:8265`) with Ray's
`JobSubmissionClient`. The spec is validated here before anything is sent; the job ships the
resolved spec, its plug-in files, local module plug-ins and the project's packages, and its driver
runs `tuner run` attached to the cluster.
Every failure to reach, authenticate with or find something on the cluster is a `ClusterError`
whose message says what to do and never contains the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlencode, urlparse

from tuner.cluster.redaction import SECRET_ENV, SECRET_KEY, has_password, is_token_user, redact
from tuner.errors import ClusterError, SpecError

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

    from tuner.spec.job_spec import JobSpec

#: The project's packages, shipped with every job as `py_modules` (the cluster's Python needs
#: their dependencies: torch, ray[tune,default], optuna, mlflow, ...).
PACKAGES = ("tuner", "trainables", "search_spaces", "dashboards")
#: Data and result files that may sit inside a package folder of a working copy: never shipped.
EXCLUDES = [
    "__pycache__",
    "*.pyc",
    "*.db",
    "*.db-journal",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "mlruns",
    "mlartifacts",
    "tuner-results",
    ".ipynb_checkpoints",
]
SPEC_FILE = "spec.yaml"
ENTRYPOINT = f"python -m tuner run {SPEC_FILE} --address auto"
#: What `tuner submit` copies from this environment into the job's (Ray's runtime_env
#: `env_vars`, which the job's driver and every trial inherit): the stores' credentials and
#: where to find them, so that no file sent to the cluster needs to hold a secret. Not the
#: cluster's own token: the nodes have it already.
JOB_ENV = tuple(name for name in SECRET_ENV if name != "RAY_AUTH_TOKEN") + (
    "AWS_ACCESS_KEY_ID",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "MLFLOW_TRACKING_USERNAME",
)
#: Where a job finds a password `tuner submit` took out of a URL, by the URL's scheme: the
#: variables that scheme's client reads (libpq, MLflow's REST client, S3 clients), as (the
#: variable for the user, the variable for the password); None: the user stays in the URL.
PASSWORD_ENV: dict[str, tuple[str | None, str]] = {
    "postgresql": (None, "PGPASSWORD"),
    "postgres": (None, "PGPASSWORD"),
    "http": ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"),
    "https": ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"),
    "s3": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
}
#: How long `tuner stop` (`ray job stop`) lets a study's driver close its books after SIGTERM
#: before Ray kills it: Ray's default, 3 s, did not always leave a busy driver time to tell
#: Optuna its unfinished trials FAIL and close the MLflow runs KILLED. Ray's job supervisor
#: reads RAY_JOB_STOP_WAIT_TIME_S from the job's runtime_env, where `tuner submit` puts it.
STOP_WAIT_S = 20
_CHATTY_LOGGERS = (
    "ray.dashboard.modules.dashboard_sdk",
    "ray.dashboard.modules.job.sdk",
    "ray._private.runtime_env.packaging",
)

_ADDRESS_RULE = (
    "must be the Ray Jobs server of the cluster's head node, http://HEAD:8265 (or https://); "
    "'auto' and ray:// addresses are for `tuner run` on the cluster itself"
)
_TOKEN_HELP = (
    "Ray 2.5x+ clusters use token authentication: put the cluster's token in ~/.ray/auth_token "
    "on this machine (or set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH to a file holding it); "
    "`ray get-auth-token` on the head node prints it"
)


# --------------------------------------------------------------------------- address and token


def resolve_address(address: str | None) -> str:
    """The Jobs server address: `--address`, else $RAY_ADDRESS; it must be http(s)://HOST:PORT."""
    source = "--address"
    if not address:
        address = os.environ.get("RAY_ADDRESS") or None
        source = "--address (from RAY_ADDRESS)"
    if not address:
        raise SpecError(
            f"--address is required (or set RAY_ADDRESS): it {_ADDRESS_RULE}, "
            "e.g. --address http://127.0.0.1:8265"
        )
    parsed = urlparse(address)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise SpecError(f"{source} {address!r} {_ADDRESS_RULE}")
    return address.rstrip("/")


def auth_token() -> str | None:
    """The cluster token, found where Ray looks: $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, then
    ~/.ray/auth_token. None when there is none, or when RAY_AUTH_MODE=disabled says not to send it.
    """
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path_var = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path_var:
        path = Path(path_var).expanduser()
        token = path.read_text().strip() if path.is_file() else ""
        if not token:
            raise ClusterError(
                f"RAY_AUTH_TOKEN_PATH is {path_var!r}, but that file does not exist or is empty. "
                f"{_TOKEN_HELP}."
            )
        return token
    default = Path.home() / ".ray" / "auth_token"
    if default.is_file():
        return default.read_text().strip() or None
    return None


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def _token_or_none() -> str | None:
    with contextlib.suppress(ClusterError, OSError):
        return auth_token()
    return None


@contextlib.contextmanager
def _cluster_errors(address: str, job_id: str | None = None) -> Iterator[None]:
    """Ray's connection, authentication and not-found errors -> one-paragraph ClusterErrors."""
    import aiohttp
    import requests
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as exc:
        detail = _scrub(str(exc).splitlines()[0], _token_or_none())
        refused = "Authentication required" not in detail
        what = "refused the token this machine sent" if refused else "got no token from here"
        raise ClusterError(
            f"the Ray cluster at {address} requires token authentication and {what} "
            f"({detail}). {_TOKEN_HELP}."
        ) from None
    except aiohttp.WSServerHandshakeError as exc:  # tail_job_logs' websocket
        if exc.status in (401, 403):
            raise ClusterError(
                f"the Ray cluster at {address} refused to stream the logs (HTTP {exc.status}: "
                f"no valid token). {_TOKEN_HELP}."
            ) from None
        raise ClusterError(
            f"the Ray Jobs server at {address} refused to stream the logs of {job_id!r} "
            f"(HTTP {exc.status})"
        ) from None
    except (
        ConnectionError,
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
        aiohttp.ClientConnectionError,
    ) as exc:
        raise ClusterError(
            f"cannot reach the Ray Jobs server at {address} ({type(exc).__name__}). Is the "
            "cluster running (`ray status` on the head node), is this the dashboard's address "
            "(port 8265 by default), and does the dashboard listen on an interface this machine "
            "can reach (`ray start --head --dashboard-host 0.0.0.0`)?"
        ) from None
    except RuntimeError as exc:
        message = _scrub(str(exc), _token_or_none())
        if job_id and "status code 404" in message:
            raise ClusterError(
                f"there is no job {job_id!r} on the Ray cluster at {address} "
                f"(`ray job list --address {address}` lists its jobs)"
            ) from None
        raise ClusterError(
            f"the Ray Jobs server at {address} refused the request: {message}"
        ) from None


def listens(address: str, timeout_s: float = 3.0) -> bool:
    """Whether something accepts TCP connections at HOST:PORT (a ray:// address too)."""
    import socket

    parsed = urlparse(address if "://" in address else f"ray://{address}")
    try:
        port = parsed.port
    except ValueError:
        return False
    if not parsed.hostname or port is None:
        return False
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout_s).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def driver_connection_errors(address: str) -> Iterator[None]:
    """`tuner run --address`: Ray's bare "Failed to connect to Ray cluster" -> what to set. A
    cluster with token authentication refuses a driver that has no RAY_AUTH_MODE=token (or no
    valid token) exactly like an unreachable one, after retrying for about 20 s."""
    try:
        with native_output_to_log():
            yield
    except ConnectionError as exc:
        detail = _scrub(str(exc).splitlines()[0] if str(exc) else "", _token_or_none())
        token_mode = os.environ.get("RAY_AUTH_MODE", "").lower() == "token"
        if not listens(address) and address != "auto":
            raise ClusterError(
                f"cannot connect to the Ray cluster at {address} ({detail}): nothing answers "
                "there. Is the cluster running (`ray status` on the head node), and is this its "
                "GCS address, HEAD:6379 by default (or ray://HEAD:10001)?"
            ) from None
        if not token_mode:
            raise ClusterError(
                f"the Ray cluster at {address} refused this driver ({detail}). A cluster with "
                "token authentication needs it on the driver too: set RAY_AUTH_MODE=token in "
                f"this environment, and the token: {_TOKEN_HELP}."
            ) from None
        raise ClusterError(
            f"the Ray cluster at {address} refused this driver ({detail}) although "
            f"RAY_AUTH_MODE=token is set: the token is missing or wrong. {_TOKEN_HELP}."
        ) from None


@contextlib.contextmanager
def native_output_to_log() -> Iterator[None]:
    """While a driver connects: what Ray's C++ core writes to the process's stderr (file
    descriptor 2: `gcs_client.cc ... InvalidAuthToken` a few times a second for the ~20 s it
    retries a refused connection) goes to the study's log (the `ray` logger), token scrubbed,
    not the terminal; tuner's own message says what went wrong."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode(errors="replace").strip()
            if text:
                logging.getLogger("ray").warning(
                    "while connecting:\n%s", _scrub(text, _token_or_none())
                )


@contextlib.contextmanager
def _client(address: str, job_id: str | None = None) -> Iterator[JobSubmissionClient]:
    """A JobSubmissionClient on exactly `address`, sending the token if there is one."""
    from ray.job_submission import JobSubmissionClient

    for name in _CHATTY_LOGGERS:  # "Uploading package ..." at INFO on every submit
        logging.getLogger(name).setLevel(logging.WARNING)
    token = auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    # Ray lets RAY_API_SERVER_ADDRESS / RAY_ADDRESS override the address it is given; the one we
    # resolved (from --address, else RAY_ADDRESS) must win.
    saved = os.environ.get("RAY_API_SERVER_ADDRESS")
    os.environ["RAY_API_SERVER_ADDRESS"] = address
    try:
        with _cluster_errors(address, job_id):
            client = JobSubmissionClient(address, headers=headers)
    finally:
        if saved is None:
            os.environ.pop("RAY_API_SERVER_ADDRESS", None)
        else:
            os.environ["RAY_API_SERVER_ADDRESS"] = saved
    with _cluster_errors(address, job_id):
        yield client


# --------------------------------------------------------------------------- submit


def package_dirs() -> list[str]:
    """The folders of the project's packages, as this process imports them."""
    import importlib

    return [str(Path(importlib.import_module(name).__file__).parent) for name in PACKAGES]


def split_credentials(url: str, key: str) -> tuple[str, dict[str, str]]:
    """`url` without its credentials, and the variables that carry them instead
    (`postgresql://u:pw@db/x` -> `postgresql://u@db/x`, PGPASSWORD=pw). A job gets its secrets
    through its environment, never inside the files sent to the cluster. A credential tuner
    knows no variable for (another scheme, a token as the URL's user, a secret query key other
    than PostgreSQL's `password`) is an error naming `key`."""
    if not has_password(url):
        return url, {}
    scheme, _, rest = url.partition("://")
    transport = scheme.lower().partition("+")[0]
    userinfo, at, address = rest.rpartition("@")
    user, colon, password = userinfo.partition(":")
    where = PASSWORD_ENV.get(transport)
    refusal = (
        f"{key}: {redact(url)} holds a credential, and `tuner submit` sends none to the cluster "
        "inside a file; take it out of the URL and set the variable its client reads "
        "(PostgreSQL: PGPASSWORD; an MLflow server: MLFLOW_TRACKING_USERNAME and "
        "MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN; S3: AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY): `tuner submit` passes those to the job"
    )
    if where is None or (at and not colon and is_token_user(scheme, userinfo)):
        raise SpecError(refusal)  # another scheme, or a token as the user
    user_var, password_var = where
    found: dict[str, str] = {}
    if at and colon:
        found[password_var] = unquote(password)
        if user_var is None:
            rest = f"{user}@{address}"
        else:
            found[user_var] = unquote(user)
            rest = address
    head, mark, query = rest.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True) if mark else []
    for name, value in pairs:
        if transport.startswith("postgres") and name == "password":
            if found.get(password_var, value) != value:
                raise SpecError(f"{key}: {redact(url)} holds two different passwords")
            found[password_var] = value
        elif SECRET_KEY.search(name):
            raise SpecError(refusal)
    kept = [(name, value) for name, value in pairs if name != "password"]
    bare = f"{scheme}://{head}" + (f"?{urlencode(kept)}" if kept else "")
    return bare, found


def job_environment(
    spec: JobSpec, environ: Mapping[str, str] | None = None
) -> tuple[JobSpec, dict[str, str]]:
    """The spec as it is sent (no URL holds a credential) and the job's environment: the
    `JOB_ENV` variables set here, and each credential taken out of a URL under the variable its
    client reads. A URL's password that differs from that variable as set here (or from
    another URL's, for the same variable) is an error naming both: the job can have only one.
    """
    environ = os.environ if environ is None else environ
    env = {name: environ[name] for name in JOB_ENV if environ.get(name)}
    origin = {name: f"{name} (set in this environment)" for name in env}
    urls = {"search.storage": spec.search.storage, "tracking.uri": spec.tracking.uri}
    urls["storage"] = spec.storage
    bare: dict[str, str] = {}
    for key, url in urls.items():
        if not url:
            continue
        bare[key], found = split_credentials(url, key)
        for name, value in found.items():
            if env.get(name, value) != value:
                what = "user" if name.endswith(("_USERNAME", "_KEY_ID")) else "password"
                raise SpecError(
                    f"{key}: the URL's {what} and {origin[name]} differ, and the job gets only "
                    f"{name}: drop the {what} from the URL, or make them the same"
                )
            env[name], origin[name] = value, f"the one in {key}"
    search = spec.search.model_copy(update={"storage": bare.get("search.storage")})
    tracking = spec.tracking.model_copy(update={"uri": bare["tracking.uri"]})
    update = {"search": search, "tracking": tracking, "storage": bare["storage"]}
    return spec.model_copy(update=update), env


def check_no_secret(folder: Path) -> None:
    """The last look before upload: no file of the job's working directory holds anything
    `redact` would hide (a URL's password, a secret query value, a secret variable's value)."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            text = path.read_text(errors="replace")
            if redact(text) != text:
                raise SpecError(
                    f"{path.relative_to(folder)}: holds a password or a secret variable's value, "
                    "and `tuner submit` sends no secret to the cluster inside a file; take it out "
                    "(the job gets the stores' credentials through its environment)"
                )


def submission_id(name: str) -> str:
    return f"tuner-{name}-{secrets.token_hex(4)}"


def submit_study(spec_path: Path, address: str, overrides: list[str] | None = None) -> str:
    """Validate the spec here, then submit it as a Ray Job; returns the job (submission) id.

    The job's working directory holds only the resolved spec, without any URL's credentials,
    and copies of its plug-in files (named relative to it); the credentials travel in the job's
    environment (`job_environment`), the code as `py_modules`, with the folder of each module
    plug-in that is a local package (installed ones must be installed on the cluster). Paths in
    the spec are resolved on this machine, so on a real cluster they must name shared storage (or
    be URLs): results, SQLite files and dataset paths must exist on the head node.
    """
    from tuner.spec.job_spec import load_plugins, load_spec
    from tuner.spec.plugin_files import copy_plugins, local_module_path
    from tuner.spec.spaces import load_space, read_space

    spec = load_spec(spec_path, overrides)
    plugins = load_plugins(spec.plugins)  # imported by load_spec: this names their code
    load_space(spec.search_space, spec.model_family)
    if isinstance(spec.search_space, str):
        import search_spaces

        if search_spaces.path_of(spec.search_space) is None:  # a file here: ship its entries
            spec.search_space = read_space(spec.search_space)[0]
    job_id = submission_id(spec.name)
    local_modules = [str(p) for code in plugins if (p := local_module_path(code))]
    spec, env_vars = job_environment(spec)
    with tempfile.TemporaryDirectory(prefix="tuner-job-") as folder:
        spec.plugins = copy_plugins(plugins, Path(folder))
        (Path(folder) / SPEC_FILE).write_text(spec.to_yaml())
        check_no_secret(Path(folder))
        runtime_env = {
            "working_dir": folder,
            "py_modules": package_dirs() + list(dict.fromkeys(local_modules)),
            "excludes": EXCLUDES,
            # the stores' credentials (see JOB_ENV); the time a stop leaves the driver
            "env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT_S), **env_vars},
        }
        with _client(address) as client:
            return client.submit_job(
                entrypoint=ENTRYPOINT,
                submission_id=job_id,
                runtime_env=runtime_env,
                metadata={"tuner.study": spec.name},
            )


# --------------------------------------------------------------------------- lifecycle


def cluster_ray_version(address: str) -> str:
    """The Ray version of the cluster whose Jobs server is at `address` (`tuner doctor`): the
    Jobs client checks the connection and the token; the REST API's /api/version names Ray's
    version, which the client reads but does not return."""
    import json
    import urllib.request

    address = resolve_address(address)
    with _client(address):
        pass
    token = auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"{address}/api/version", headers=headers)
    with _cluster_errors(address), urllib.request.urlopen(request, timeout=10) as response:
        return str(json.loads(response.read())["ray_version"])


def job_status(job_id: str, address: str) -> str:
    """PENDING, RUNNING, STOPPED, SUCCEEDED or FAILED."""
    return str(job_info(job_id, address)["status"])


def job_info(job_id: str, address: str) -> dict[str, str | None]:
    """The job's status, Ray's message about it and, when it failed, the error type."""
    with _client(address, job_id) as client:
        info = client.get_job_info(job_id)
    status = getattr(info.status, "value", info.status)
    return {"status": str(status), "message": info.message, "error_type": info.error_type}


def job_logs(job_id: str, address: str) -> str:
    """Everything the job's driver printed so far."""
    with _client(address, job_id) as client:
        return client.get_job_logs(job_id)


def follow_logs(job_id: str, address: str) -> Iterator[str]:
    """The job's output as it comes, until the job ends (Ray's async tail, driven here)."""
    with _client(address, job_id) as client:
        client.get_job_info(job_id)  # an unknown id: a clear error, not a closed socket
        loop = asyncio.new_event_loop()
        chunks = client.tail_job_logs(job_id)
        try:
            while True:
                try:
                    chunk = loop.run_until_complete(chunks.__anext__())
                except StopAsyncIteration:
                    return
                yield chunk
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(chunks.aclose())
            loop.close()


def stop_job(job_id: str, address: str) -> bool:
    """Ask the cluster to stop the job (SIGTERM, then SIGKILL); False if it had already ended."""
    with _client(address, job_id) as client:
        return bool(client.stop_job(job_id))
