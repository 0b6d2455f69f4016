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
