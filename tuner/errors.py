"""The project's exceptions: one root, one subclass per kind of failure."""

from __future__ import annotations


class TunerError(Exception):
    """Root of every error tuner raises on purpose."""


class SpecError(TunerError):
    """A job spec, search space, override or dataset that cannot be used (CLI exit code 2)."""


class StudyError(TunerError):
    """A study that ran but failed as a whole (CLI exit code 1)."""


class AccessError(TunerError):
    """A server that refused this client's credentials or permissions (CLI exit code 1)."""


class ClusterError(TunerError):
    """A Ray cluster that cannot be reached, refuses the request or has no such job (exit 1)."""


def brief(text: str, limit: int = 200) -> str:
    """`text` on one line, cut after about `limit` characters at a space, never inside a word:
    a URL or a path in an error stays whole."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    end = text.find(" ", limit)
    return text if end == -1 else f"{text[:end]} …"
