"""Secrets out of everything tuner prints, logs or stores: passwords in URLs, in query strings,
and the values of the environment's secret variables.

URLs are found in free text and their user info is split at the last `@` of the part before the
query, so passwords with `@`, `/` or `:` in them (written raw, as people do) are hidden whole;
when in doubt it hides too much rather than too little.
"""

from __future__ import annotations

import logging
import os
import re
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote, urlencode

if TYPE_CHECKING:
    from tuner.spec.job_spec import JobSpec

MASK = "***"
#: environment variables whose values are secrets wherever they turn up
SECRET_ENV = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "RAY_AUTH_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "PGPASSWORD",
    "DATABRICKS_TOKEN",
)
MIN_SECRET_LENGTH = 6  # shorter env values would hide ordinary words
#: query-string keys that carry secrets (`?password=`, `&sslpassword=`, `?token=`, ...)
SECRET_KEY = re.compile(r"pass|pwd|secret|token|signature|credential|api_?key", re.IGNORECASE)
URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>`]+")


def redact_url(url: str) -> str:
    """`scheme://user:secret@host/db?password=x` -> `scheme://user:***@host/db?password=***`."""
    scheme, _, rest = url.partition("://")
    userinfo, at, address = rest.rpartition("@")  # the last `@`: raw passwords may hold `@?/#`
    user, colon, _password = userinfo.partition(":")
    if at and colon:
        rest = f"{user}:{MASK}@{address}"
    head, mark, query = rest.partition("?")
    return f"{scheme}://{head}{mark}{redact_query(query) if mark else query}"


def redact_query(query: str) -> str:
    fragment = ""
    if "#" in query:
        query, fragment = query.split("#", 1)
        fragment = "#" + fragment
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(SECRET_KEY.search(key) for key, _ in pairs):
        return query + fragment
    hidden = [(key, MASK if SECRET_KEY.search(key) else value) for key, value in pairs]
    return urlencode(hidden, safe="*/:@", quote_via=quote) + fragment


def env_secrets(environ: dict[str, str] | None = None) -> list[str]:
    """The values of the secret variables set here (longest first), raw and URL-quoted."""
    environ = os.environ if environ is None else environ
    values = {environ.get(name, "") for name in SECRET_ENV}
    values |= {quote(v, safe="") for v in values}
    return sorted((v for v in values if len(v) >= MIN_SECRET_LENGTH), key=len, reverse=True)


def redact(text: str) -> str:
    """`text` with every URL's password, query-string secret and secret env value hidden."""
    text = URL.sub(lambda match: redact_url(match.group(0)), text)
    for secret in env_secrets():
        text = text.replace(secret, MASK)
    return text


def has_password(url: str) -> bool:
    return redact_url(url) != url


class RedactingFormatter(logging.Formatter):
    """A log formatter whose lines (tracebacks included) go through `redact`."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def without_passwords(spec: JobSpec) -> JobSpec:
    """The spec as it may be saved: its Optuna storage and tracking URLs without passwords."""
    storage = spec.search.storage and redact_url(spec.search.storage)
    search = spec.search.model_copy(update={"storage": storage})
    tracking = spec.tracking.model_copy(update={"uri": redact_url(spec.tracking.uri)})
    return spec.model_copy(update={"search": search, "tracking": tracking})
