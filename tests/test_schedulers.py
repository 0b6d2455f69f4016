"""tuner/driver/schedulers.py: the schedulers `scheduler.name` can name, each with its own keys
(a settings model), the Ray scheduler built from them and the milestones the dashboard draws."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import Field, ValidationError, ValidationInfo, model_validator

from tuner.driver.asha import ResumableASHA
from tuner.driver.live_trials import LiveFIFO
from tuner.driver.schedulers import (
    SCHEDULERS,
    AshaSettings,
    CommonKeys,
    SchedulerKind,
    SchedulerSettings,
    asha_milestones,
    make_scheduler,
    milestones,
    section_of,
)
from tuner.internals.ray_internals import asha_rungs
from tuner.spec.job_spec import SchedulerSpec


def test_the_registry_holds_asha_and_fifo() -> None:
    assert SCHEDULERS.names() == ["asha", "fifo"]
    assert SCHEDULERS.get("asha").settings is AshaSettings
    assert list(SCHEDULERS.get("fifo").settings.model_fields) == []


def test_each_name_builds_its_ray_scheduler_from_its_settings() -> None:
    asha = make_scheduler(SchedulerSpec(name="asha", max_epochs=20, grace_period=2))
    assert isinstance(asha, ResumableASHA)
    assert [milestone for milestone, _ in asha_rungs(asha)] == [18, 6, 2]  # grace 2, factor 3
    assert isinstance(make_scheduler(SchedulerSpec(name="fifo")), LiveFIFO)


def test_the_section_exposes_its_schedulers_settings_with_defaults_filled_in() -> None:
    section = SchedulerSpec(name="asha", max_epochs=9, reduction_factor=2)
    assert section.settings == AshaSettings(grace_period=1, reduction_factor=2.0)
    assert (section.grace_period, section.reduction_factor) == (1, 2.0)
    assert section.model_dump() == {
        "name": "asha",
        "max_epochs": 9,
        "stop_on_overfit": None,
        "grace_period": 1,
        "reduction_factor": 2.0,
    }
    fifo = SchedulerSpec(name="fifo", max_epochs=9)
    assert fifo.model_dump() == {"name": "fifo", "max_epochs": 9, "stop_on_overfit": None}
    assert not hasattr(fifo, "grace_period")


@pytest.mark.parametrize(
    ("grace", "factor", "max_epochs", "expected"),
    [(1, 3, 9, [1, 3, 9]), (2, 3, 20, [2, 6, 18, 20]), (1, 2, 5, [1, 2, 4, 5]), (5, 3, 5, [5])],
)
def test_asha_stops_trials_only_at_its_rungs(
    grace: int, factor: float, max_epochs: int, expected: list[int]
) -> None:
    section = SchedulerSpec(grace_period=grace, reduction_factor=factor, max_epochs=max_epochs)
    assert asha_milestones(section, AshaSettings(grace_period=grace, reduction_factor=factor)) == (
        expected
    )
    assert milestones(section) == expected
    assert milestones(SchedulerSpec(name="fifo", max_epochs=max_epochs)) == []


def test_asha_checks_its_keys_against_max_epochs_only_within_a_section() -> None:
    with pytest.raises(ValidationError, match="grace_period must be at most scheduler.max_epochs"):
        SchedulerSpec(name="asha", max_epochs=3, grace_period=4)
    assert AshaSettings(grace_period=4).grace_period == 4  # on its own: no max_epochs to judge


@pytest.mark.parametrize(
    ("keys", "rule"),
    [
        ({"reduction_factor": 1}, "greater_than"),
        ({"grace_period": 0}, "greater_than_equal"),
        ({"grace_period": "2"}, "int_type"),  # not coerced, as elsewhere in the spec
        ({"reduction_factor": float("nan")}, "finite_number"),
    ],
)
def test_a_bad_value_is_refused_at_its_key_by_its_schedulers_rule(keys: dict, rule: str) -> None:
    with pytest.raises(ValidationError) as caught:
        SchedulerSpec(name="asha", max_epochs=9, **keys)
    [(key, value)] = keys.items()
    [error] = caught.value.errors()
    assert (error["loc"], error["type"]) == ((key,), rule)
    assert error["input"] is value


def test_fifo_sets_ashas_keys_aside_and_refuses_a_key_nobody_takes() -> None:
    fifo = SchedulerSpec(name="fifo", max_epochs=3, grace_period=4)
    assert not hasattr(fifo, "grace_period") and "grace_period" not in fifo.model_dump()
    with pytest.raises(ValidationError) as caught:
        SchedulerSpec(name="fifo", max_epochs=3, grace=4)
    assert caught.value.errors()[0]["loc"] == ("grace",)
    assert caught.value.errors()[0]["msg"] == (
        "scheduler.grace is not a known key of scheduler fifo (value 4); valid keys here: "
        "name, max_epochs, stop_on_overfit"
    )


# --------------------------------------------------------------------------- a new scheduler


class HalvingSettings(SchedulerSettings):
    """A test scheduler's own keys: stops trials every `every` epochs from `first`."""

    first: int = Field(2, ge=1)
    every: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _first_within_max_epochs(self, info: ValidationInfo) -> HalvingSettings:
        section = section_of(info)
        if section is not None and self.first > section.max_epochs:
            raise ValueError(f"scheduler.first must be at most {section.max_epochs}")
        return self


def halving_milestones(section: CommonKeys, settings: HalvingSettings) -> list[int]:
    return list(range(settings.first, section.max_epochs + 1, settings.every))


@pytest.fixture
def halving() -> Iterator[str]:
    """A scheduler registered by a test, as a plug-in would, and forgotten after it."""
    SCHEDULERS.register("halving", owner=__name__)(
        SchedulerKind(
            "a test scheduler",
            HalvingSettings,
            lambda section, settings, journal: LiveFIFO(),
            halving_milestones,
        )
    )
    yield "halving"
    SCHEDULERS.forget(__name__)


def test_a_new_scheduler_brings_its_own_keys(halving: str, tmp_path: Path) -> None:
    section = SchedulerSpec(name=halving, max_epochs=10, every=3)
    assert section.settings == HalvingSettings(first=2, every=3)
    assert (section.first, section.every) == (2, 3)
    assert milestones(section) == [2, 5, 8]
    assert isinstance(make_scheduler(section, tmp_path / "journal.jsonl"), LiveFIFO)
    with pytest.raises(ValidationError, match="scheduler.first must be at most 10"):
        SchedulerSpec(name=halving, max_epochs=10, first=11)
    assert (
        "grace_period"
        not in SchedulerSpec(name=halving, max_epochs=10, grace_period=2).model_dump()
    )
    with pytest.raises(ValidationError) as caught:
        SchedulerSpec(name=halving, max_epochs=10, firts=2)
    assert "valid keys here: name, max_epochs, stop_on_overfit, first, every" in str(caught.value)
    asha = SchedulerSpec(name="asha", max_epochs=10, grace_period=2)
    assert asha.grace_period == 2  # the others keep theirs


def test_a_forgotten_scheduler_is_no_longer_a_name(halving: str) -> None:
    SCHEDULERS.forget(__name__)
    assert halving not in SCHEDULERS
    with pytest.raises(ValidationError, match="must be one of \\['asha', 'fifo'\\]"):
        SchedulerSpec(name=halving, max_epochs=10)
