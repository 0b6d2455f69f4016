"""The project's exceptions: one root, one subclass per kind of failure."""

from __future__ import annotations


class TunerError(Exception):
    """Root of every error tuner raises on purpose."""


class SpecError(TunerError):
    """A job spec, search space, override or dataset that cannot be used (CLI exit code 2)."""


class StudyError(TunerError):
    """A study that ran but failed as a whole (CLI exit code 1)."""


class ClusterError(TunerError):
    """A Ray cluster that cannot be reached, refuses the request or has no such job (exit 1)."""
