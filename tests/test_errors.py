"""tuner/errors.py: the exceptions' exit codes live in the CLI; here, how an error's detail is
shortened for a one-line message."""

from __future__ import annotations

from tuner.errors import ClusterError, SpecError, StudyError, TunerError, brief

URL = "http://mlflow.example.org:5000/api/2.0/mlflow/experiments/get-by-name?experiment_name=x"


def test_brief_cuts_at_a_space_never_inside_a_word() -> None:
    text = f"HTTPConnectionPool: Max retries exceeded with url {URL} (Caused by refused)"
    short = brief(text, 60)
    assert short == f"HTTPConnectionPool: Max retries exceeded with url {URL} …"
    assert brief("a\n  b   c") == "a b c"  # one line
    assert brief("x" * 300, 10) == "x" * 300  # one long word stays whole


def test_every_error_is_a_tuner_error() -> None:
    assert all(issubclass(e, TunerError) for e in (SpecError, StudyError, ClusterError))
