"""tuner/driver/schedulers.py: the schedulers `scheduler.name` can name, each with its keys'
check, the Ray scheduler built from them and the milestones the dashboard draws."""

from __future__ import annotations

import pytest

from tuner.driver.asha import ResumableASHA
from tuner.driver.live_trials import LiveFIFO
from tuner.driver.schedulers import SCHEDULERS, asha_milestones, make_scheduler
from tuner.spec.job_spec import SchedulerSpec


def test_the_registry_holds_asha_and_fifo() -> None:
    assert SCHEDULERS.names() == ["asha", "fifo"]


def test_each_name_builds_its_ray_scheduler() -> None:
    asha = make_scheduler(SchedulerSpec(name="asha", max_epochs=9, grace_period=2))
    assert isinstance(asha, ResumableASHA)
    assert isinstance(make_scheduler(SchedulerSpec(name="fifo")), LiveFIFO)


@pytest.mark.parametrize(
    ("grace", "factor", "max_epochs", "milestones"),
    [(1, 3, 9, [1, 3, 9]), (2, 3, 20, [2, 6, 18, 20]), (1, 2, 5, [1, 2, 4, 5]), (5, 3, 5, [5])],
)
def test_asha_stops_trials_only_at_its_rungs(
    grace: int, factor: float, max_epochs: int, milestones: list[int]
) -> None:
    section = SchedulerSpec(grace_period=grace, reduction_factor=factor, max_epochs=max_epochs)
    assert asha_milestones(section) == milestones
    assert SCHEDULERS.get("fifo").milestones(section) == []


def test_asha_checks_its_own_keys_and_fifo_ignores_them() -> None:
    with pytest.raises(ValueError, match="grace_period must be at most scheduler.max_epochs"):
        SchedulerSpec(name="asha", max_epochs=3, grace_period=4)
    assert SchedulerSpec(name="fifo", max_epochs=3, grace_period=4).grace_period == 4
