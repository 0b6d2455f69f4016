"""Shared fixtures: one local 2-CPU Ray for the whole run, and a study folder per test."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tuner.spec import JobSpec, spec_from_dict


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A real local Ray with 2 CPUs, started once; `run_study` reuses it instead of its own."""
    import ray

    from tuner.study import QUIET_RAY

    os.environ.update(QUIET_RAY)
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    yield
    ray.shutdown()


@pytest.fixture
def study_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a fresh folder, so the default SQLite stores and results land there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def tiny_spec(**sections: Any) -> JobSpec:
    """A small study spec (digits MLP, 2 epochs); keyword sections override the defaults."""
    raw: dict[str, Any] = {
        "name": "tiny",
        "model": "mlp",
        "dataset": {"name": "digits"},
        "search": {"num_samples": 2, "max_concurrent": 2, "seed": 0},
        "scheduler": {"name": "fifo", "max_epochs": 2},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return spec_from_dict(raw)
