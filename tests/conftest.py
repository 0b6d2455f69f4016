"""Shared fixtures: one local 2-CPU Ray for the whole run, and a study folder per test."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# what tests start and share (servers, clusters, a browser, builders): tests/helpers.py
pytest_plugins = ["tests.helpers"]


#: fixtures that start a Ray, a server or a browser: a test that uses one (itself or through
#: another fixture) is marked `integration`, and `make test-quick` leaves it out
STARTS_SOMETHING = frozenset(
    {
        "ray_local",
        "mlflow_server",
        "mlflow_auth_server",
        "postgres",
        "object_store",
        "stack_mlflow",
        "browser",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if STARTS_SOMETHING & set(getattr(item, "fixturenames", ())) or item.get_closest_marker(
            "ray"
        ):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", autouse=True)
def tuner_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """tuner's cache folder (the empty MLflow store, tuner.tracking.store_template) in the
    run's temporary folder, never the user's ~/.cache; processes the tests start inherit it."""
    from tuner.tracking.store_template import CACHE_ENV

    folder = tmp_path_factory.mktemp("tuner-cache")
    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(folder)
    yield folder
    if before is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = before


class RayStarted(RuntimeError):
    """Raised by the stand-in for `ray.init`: validation let the input through to Ray."""


@pytest.fixture
def ray_starts(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every call of `ray.init` during the test (none expected); Ray is never really started,
    and a Ray that another test started is hidden, so no study can run."""
    import ray

    calls: list[dict[str, Any]] = []

    def fake_init(*args: Any, **kwargs: Any) -> None:
        calls.append(kwargs)
        raise RayStarted("ray.init was called: the input passed validation")

    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    return calls


@pytest.fixture(autouse=True)
def forget_plugins() -> Iterator[None]:
    """After each test, drop every model, dataset and training function a plug-in registered (and
    the plug-in's module), so that no test sees another's names. Loading a plug-in again
    re-imports it."""
    from trainables import plugins
    from trainables.data import DATASETS
    from trainables.models import MODELS
    from trainables.training_functions import TRAINING_FUNCTIONS

    yield
    registries = (MODELS, DATASETS, TRAINING_FUNCTIONS)
    owners = {r.owner(n) for r in registries for n in r.names()}
    owners |= {n for n, m in list(sys.modules.items()) if hasattr(m, plugins.SHA_ATTRIBUTE)}
    for owner in owners - {"trainables.datasets", "trainables.models"}:
        if owner.startswith("tests."):  # a test registered directly: its module stays
            for registry in registries:
                registry.forget(owner)
        else:  # a plug-in: the next load imports it again
            plugins.forget(owner)


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A real local Ray with 2 CPUs, started once; `run_study` reuses it instead of its own."""
    import ray

    from tuner.driver.ray_session import QUIET_RAY
    from tuner.internals.ray_internals import loopback_node, without_idle_daemons

    os.environ.update(QUIET_RAY)
    # listening on 127.0.0.1 only, without the daemons a study's own Ray goes without
    with loopback_node(), without_idle_daemons():
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
