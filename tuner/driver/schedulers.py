"""Trial schedulers by name: each owns its keys of the spec's `scheduler` section (their check,
the Ray scheduler built from them, the milestones a dashboard shows) and its resume step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from trainables import metrics as m
from trainables.registry import Registry

if TYPE_CHECKING:
    from ray.tune.schedulers import TrialScheduler


class SchedulerSpec(Protocol):
    """What a scheduler reads of the spec's `scheduler` section (the section's model,
    tuner.spec.job_spec.SchedulerSpec, validates it and calls each scheduler's check)."""

    name: str
    max_epochs: int
    grace_period: int
    reduction_factor: float


@dataclass(frozen=True)
class SchedulerKind:
    """A trial scheduler that `scheduler.name` can name (a `SCHEDULERS` entry).

    Attributes:
        description: one line for messages and docs.
        build: `(section, journal) -> TrialScheduler`: the Ray Tune scheduler for the spec's
            `scheduler` section; `journal` is the study's journal file, from which a scheduler
            that keeps state rebuilds it on `tuner resume` (None: nothing to resume from).
        milestones: `(section) -> [epoch, ...]`: the epochs at which it may stop a trial (the
            dashboard draws them; empty for a scheduler that never stops one).
        check: `(section) -> None`: raises ValueError, naming the key, the value and the rule,
            when the section's keys do not fit this scheduler (run as the spec is validated).
    """

    description: str
    build: Callable[[SchedulerSpec, Path | None], TrialScheduler]
    milestones: Callable[[SchedulerSpec], list[int]]
    check: Callable[[SchedulerSpec], None] = lambda section: None


SCHEDULERS: Registry[SchedulerKind] = Registry("scheduler")


# --------------------------------------------------------------------------- ASHA


def asha_milestones(section: SchedulerSpec) -> list[int]:
    """grace_period * reduction_factor**k below max_epochs, then max_epochs."""
    rungs, rung = [], float(section.grace_period)
    while rung < section.max_epochs:
        rungs.append(int(rung))
        rung *= section.reduction_factor
    return [*rungs, section.max_epochs]


def check_asha(section: SchedulerSpec) -> None:
    if section.grace_period > section.max_epochs:
        raise ValueError(
            f"scheduler.grace_period must be at most scheduler.max_epochs "
            f"({section.max_epochs}) but got {section.grace_period}"
        )


def build_asha(section: SchedulerSpec, journal: Path | None) -> TrialScheduler:
    from tuner.driver.asha import ResumableASHA  # resumes from the journal (see its docstring)

    return ResumableASHA(
        time_attr=m.EPOCH,
        max_t=section.max_epochs,
        grace_period=section.grace_period,
        reduction_factor=section.reduction_factor,
        journal=journal,
    )


SCHEDULERS.register("asha")(
    SchedulerKind(
        "asynchronous successive halving: keeps the best 1/reduction_factor at each rung",
        build_asha,
        asha_milestones,
        check_asha,
    )
)


# --------------------------------------------------------------------------- FIFO


def build_fifo(section: SchedulerSpec, journal: Path | None) -> TrialScheduler:
    from tuner.driver.live_trials import LiveFIFO  # nothing to resume: it never stops a trial

    return LiveFIFO()


SCHEDULERS.register("fifo")(
    SchedulerKind("every trial runs max_epochs", build_fifo, lambda section: [])
)


def make_scheduler(section: SchedulerSpec, journal: Path | None = None) -> TrialScheduler:
    return SCHEDULERS.get(section.name).build(section, journal)
