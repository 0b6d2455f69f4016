"""Secrets out of what tuner prints, logs and stores (tuner/cluster/redaction.py)."""

from __future__ import annotations

import logging

import pytest

from tuner.cluster.redaction import RedactingFormatter, has_password, redact, redact_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://user:s3cret@host:5432/db", "postgresql://user:***@host:5432/db"),
        ("postgresql://user:p@ss@host/db", "postgresql://user:***@host/db"),
        ("postgresql+psycopg://user:a/b@host/db", "postgresql+psycopg://user:***@host/db"),
        ("redis://:secret@host:6379/0", "redis://:***@host:6379/0"),
        ("mysql://u:p?w#d@host/db", "mysql://u:***@host/db"),
        ("postgresql://u:p%40ss%2Fw%3Ard@127.0.0.1:1/db", "postgresql://u:***@127.0.0.1:1/db"),
        (
            "postgresql://u@host/db?sslmode=require&password=hunter22",
            "postgresql://u@host/db?sslmode=require&password=***",
        ),
        ("https://host/x?token=abc123&page=2", "https://host/x?token=***&page=2"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("sqlite:////tmp/optuna.db", "sqlite:////tmp/optuna.db"),
        ("postgresql://user@host/db", "postgresql://user@host/db"),
    ],
)
def test_each_leaking_form_is_hidden(url: str, expected: str) -> None:
    assert redact_url(url) == expected
    assert has_password(url) == (url != expected)


def test_urls_in_free_text_and_quotes_are_found() -> None:
    text = (
        "Optuna study 'x': postgresql://u:p@ss/w:rd@db:5432/optuna, failed "
        "(connect('redis://:tok3n@cache:6379/0') and \"mysql://a:b@c/d\")"
    )
    hidden = redact(text)
    for secret in ("p@ss/w:rd", "tok3n", "a:b@"):
        assert secret not in hidden
    assert "postgresql://u:***@db:5432/optuna," in hidden
    assert "'redis://:***@cache:6379/0'" in hidden
    assert '"mysql://a:***@c/d"' in hidden


def test_secret_environment_values_are_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws/secret+key")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "ray-token-123")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "mlflow-pw-9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAPUBLICID")  # an id, not a secret
    text = "key aws/secret+key (aws%2Fsecret%2Bkey) token ray-token-123 pw mlflow-pw-9 AKIAPUBLICID"
    assert redact(text) == "key *** (***) token *** pw *** AKIAPUBLICID"


def test_log_lines_and_tracebacks_are_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    formatter = RedactingFormatter("%(message)s")
    try:
        raise RuntimeError("could not connect to postgresql://u:hunter22@db/x")
    except RuntimeError:
        import sys

        record = logging.LogRecord(
            "t", logging.ERROR, __file__, 1, "url %s", ("redis://:s3@h",), sys.exc_info()
        )
    line = formatter.format(record)
    assert "hunter22" not in line and "s3@" not in line
    assert "url redis://:***@h" in line and "postgresql://u:***@db/x" in line


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # a token as the user of an http(s) URL (GitHub, MLflow/Databricks): a credential
        ("https://ghp_T0ken123@host/org/repo.git", "https://***@host/org/repo.git"),
        ("http://tok@127.0.0.1:5000", "http://***@127.0.0.1:5000"),
        ("git+https://tok3n@github.com/o/r", "git+https://***@github.com/o/r"),
        # other schemes name a plain user: it stays
        ("postgresql://optuna@db:5432/optuna", "postgresql://optuna@db:5432/optuna"),
        ("ssh://git@github.com/o/r", "ssh://git@github.com/o/r"),
        # an `@` after the host belongs to the path or query, not to a user
        ("https://host/x?email=a@b.org", "https://host/x?email=a@b.org"),
        # Azure SAS: `sig` is the signature; the expiry and permissions are not secret
        (
            "https://acct.blob.core.windows.net/c/b?sv=2022-11-02&se=2026-01-01&sp=r&sig=Ab%2Bc%3D",
            "https://acct.blob.core.windows.net/c/b?sv=2022-11-02&se=2026-01-01&sp=r&sig=***",
        ),
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=ab12",
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***",
        ),
    ],
)
def test_token_users_and_signatures_are_hidden(url: str, expected: str) -> None:
    assert redact_url(url) == expected
    assert redact(f"see {url} now") == f"see {expected} now"


def test_short_secret_values_are_hidden_whole_but_never_inside_words(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 3-character PGPASSWORD is hidden where it stands whole (a URL's user or query value, a
    word of its own); ordinary words that contain it keep their letters."""
    for name in ("AWS_SECRET_ACCESS_KEY", "RAY_AUTH_TOKEN", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PGPASSWORD", "pw1")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "ab/c")
    assert redact_url("postgresql://pw1@db/optuna") == "postgresql://***@db/optuna"
    assert redact_url("postgresql://u@db/optuna?x=pw1&y=2") == "postgresql://u@db/optuna?x=***&y=2"
    assert redact_url("postgresql://u@db/optuna?x=pw12") == "postgresql://u@db/optuna?x=pw12"
    text = "password pw1, (ab/c) or ab%2Fc; but pw12, xpw1 and ab/cd stay"
    assert redact(text) == "password ***, (***) or ***; but pw12, xpw1 and ab/cd stay"


def test_saved_specs_and_their_pickles_keep_no_token_signature_or_short_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What `spec.yaml`, Ray's pickles (the callback's and searcher's state) and MLflow's
    spec artifact and tags are made of: `without_passwords` and `redact`."""
    import pickle

    from tests.helpers import tiny_spec
    from tuner.cluster.databases import reveal
    from tuner.cluster.redaction import without_passwords

    monkeypatch.setenv("PGPASSWORD", "pw1")
    spec = tiny_spec(
        tracking={"uri": "https://mlflow-T0KEN@mlflow.example.com"},
        search={"storage": "postgresql://pw1@db/optuna?sslmode=require&sig=S1GNATURE"},
    )
    saved = without_passwords(spec)
    assert saved.tracking.uri == "https://***@mlflow.example.com"
    # a later process (tuner resume) drops the hidden token: MLflow takes it from its variables
    assert reveal(saved.tracking.uri) == "https://mlflow.example.com"
    assert saved.search.storage == "postgresql://***@db/optuna?sslmode=require&sig=***"
    for stored in (saved.to_yaml(), redact(spec.to_yaml()), repr(pickle.dumps(saved))):
        for secret in ("mlflow-T0KEN", "pw1", "S1GNATURE"):
            assert secret not in stored, (secret, stored)
