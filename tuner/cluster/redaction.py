"""Secrets out of everything tuner prints, logs or stores: passwords in URLs, in query strings,
and the values of the environment's secret variables.

URLs are found in free text and their user info is split at the last `@` of the part before the
query, so passwords with `@`, `/` or `:` in them (written raw, as people do) are hidden whole;
when in doubt it hides too much rather than too little.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote, unquote, urlencode

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
#: from this length on a secret value is hidden wherever it occurs, even inside a word; a
#: shorter one only where it stands whole (a word of its own, a URL's user or query value), or
#: it would hide parts of ordinary words
MIN_SECRET_LENGTH = 6
#: query-string keys that carry secrets (`?password=`, `&sslpassword=`, `?token=`, Azure SAS's
#: `sig=`, S3's `X-Amz-Signature=`, ...)
SECRET_KEY = re.compile(r"pass|pwd|secret|token|signature|credential|api_?key|^sig$", re.IGNORECASE)
#: schemes where a user name alone (`https://TOKEN@host`) is a credential: GitHub, MLflow and
#: Databricks take a token there; other schemes' users (`postgresql://optuna@db`) are names
TOKEN_USER_SCHEMES = frozenset({"http", "https"})
URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>`]+")


def redact_url(url: str) -> str:
    """`scheme://user:secret@host/db?password=x` -> `scheme://user:***@host/db?password=***`;
    `https://TOKEN@host` -> `https://***@host`; a user or query value that is a secret
    variable's value, however short, -> `***`."""
    if "://" not in url:  # a path
        return url
    known = env_secret_values()
    scheme, _, rest = url.partition("://")
    userinfo, at, address = rest.rpartition("@")  # the last `@`: raw passwords may hold `@?/#`
    user, colon, _password = userinfo.partition(":")
    if at and colon:
        rest = f"{user}:{MASK}@{address}"
    elif at and is_token_user(scheme, userinfo, known):
        rest = f"{MASK}@{address}"
    head, mark, query = rest.partition("?")
    return f"{scheme}://{head}{mark}{redact_query(query, known) if mark else query}"


def is_token_user(scheme: str, userinfo: str, known: frozenset[str] = frozenset()) -> bool:
    """Whether a URL's user name alone is a credential: on http(s) by convention, anywhere when
    it is a secret variable's value. A `/`, `?` or `#` in it means the `@` was in the path or
    the query (`https://host/x?email=a@b`), not after a user."""
    if not userinfo or any(mark in userinfo for mark in "/?#") or userinfo == MASK:
        return False
    transport = scheme.lower().rpartition("+")[2]  # git+https:// is https
    return transport in TOKEN_USER_SCHEMES or unquote(userinfo) in known


def redact_query(query: str, known: frozenset[str] = frozenset()) -> str:
    """A query string with the values of secret keys (and values that are known secrets)
    hidden; returned unchanged, encoding and all, when it holds none."""
    fragment = ""
    if "#" in query:
        query, fragment = query.split("#", 1)
        fragment = "#" + fragment
    pairs = parse_qsl(query, keep_blank_values=True)

    def secret(key: str, value: str) -> bool:
        return bool(SECRET_KEY.search(key)) or (value != MASK and value in known)

    if not any(secret(key, value) for key, value in pairs):
        return query + fragment
    hidden = [(key, MASK if secret(key, value) else value) for key, value in pairs]
    return urlencode(hidden, safe="*/:@", quote_via=quote) + fragment


def env_secret_values(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """Every value of the secret variables set here, whatever its length, raw and URL-quoted."""
    environ = os.environ if environ is None else environ
    values = {environ.get(name, "") for name in SECRET_ENV}
    values |= {quote(v, safe="") for v in values}
    return frozenset(v for v in values if v)


def env_secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    """The values of the secret variables set here that are hidden even inside words (long
    enough not to be part of ordinary words), longest first, raw and URL-quoted."""
    values = env_secret_values(environ)
    return sorted((v for v in values if len(v) >= MIN_SECRET_LENGTH), key=len, reverse=True)


@functools.lru_cache(maxsize=16)
def whole_words(values: tuple[str, ...]) -> re.Pattern[str] | None:
    """A pattern for short secrets standing whole: not preceded or followed by a letter, digit
    or `_`, so `pw1` is hidden in `password pw1,` but not in `pw12` or `xpw1`."""
    if not values:
        return None
    alternatives = "|".join(re.escape(v) for v in sorted(values, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)")


def redact(text: str) -> str:
    """`text` with every URL's password, token user, query-string secret and secret env value
    hidden (short values only where they stand whole)."""
    text = URL.sub(lambda match: redact_url(match.group(0)), text)
    for secret in env_secrets():
        text = text.replace(secret, MASK)
    short = tuple(sorted(v for v in env_secret_values() if len(v) < MIN_SECRET_LENGTH))
    pattern = whole_words(short)
    return pattern.sub(MASK, text) if pattern else text


def has_password(url: str) -> bool:
    """Whether `url` holds anything `redact_url` hides (a password, a token, a secret)."""
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
