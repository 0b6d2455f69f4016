"""Trial schedulers by name: each owns its keys of the spec's `scheduler` section (a settings
model: their defaults, rules and checks), the Ray scheduler built from them, the milestones a
dashboard shows, and its resume step. The section itself keeps only the keys every scheduler
reads, so a new scheduler brings its keys along instead of adding them to everyone's section."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from trainables import metrics as m
from trainables.registry import Registry

if TYPE_CHECKING:
    from ray.tune.schedulers import TrialScheduler


class CommonKeys(Protocol):
    """The keys of the spec's `scheduler` section that every scheduler may read (the section's
    model, tuner.spec.job_spec.SchedulerSpec, validates them and the named scheduler's own keys
    with its settings model)."""

    name: str
    max_epochs: int


class SchedulerSettings(BaseModel):
    """A scheduler's own keys of the `scheduler` section, read like a spec section: unknown keys
    are errors, values are not silently coerced. A check across keys (a model validator) finds
    the section's keys every scheduler reads in `section_of(info)`."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


#: the validation context key that holds the section being validated (see section_of)
SECTION = "section"


def section_of(info: ValidationInfo) -> CommonKeys | None:
    """The section whose keys a settings model is validating (None: validated on its own, as
    when a dashboard reads a run's logged params, which it does not judge)."""
    return (info.context or {}).get(SECTION)


S = TypeVar("S", bound=BaseModel)


@dataclass(frozen=True)
class SchedulerKind(Generic[S]):
    """A trial scheduler that `scheduler.name` can name (a `SCHEDULERS` entry).

    Attributes:
        description: one line for messages and docs.
        settings: the scheduler's own keys of the section (a SchedulerSettings: defaults,
            rules, checks across keys); the spec takes only these beside the common keys, and
            refuses the others naming the scheduler and the keys it takes.
        build: `(section, settings, journal) -> TrialScheduler`: the Ray Tune scheduler for the
            spec's `scheduler` section; `journal` is the study's journal file, from which a
            scheduler that keeps state rebuilds it on `tuner resume` (None: nothing to resume
            from).
        milestones: `(section, settings) -> [epoch, ...]`: the epochs at which it may stop a trial
            (the dashboard draws them; empty for a scheduler that never stops one).
    """

    description: str
    settings: type[S]
    build: Callable[[CommonKeys, S, Path | None], TrialScheduler]
    milestones: Callable[[CommonKeys, S], list[int]]


SCHEDULERS: Registry[SchedulerKind[Any]] = Registry("scheduler")


# --------------------------------------------------------------------------- ASHA


class AshaSettings(SchedulerSettings):
    """ASHA's keys: trials run grace_period epochs before the first rung, and each rung keeps
    the best 1/reduction_factor of the trials that reach it."""

    grace_period: int = Field(1, ge=1)  # epochs before a trial can be stopped
    reduction_factor: float = Field(3.0, gt=1)  # keep 1/reduction_factor at each rung

    @model_validator(mode="after")
    def _grace_within_max_epochs(self, info: ValidationInfo) -> AshaSettings:
        section = section_of(info)
        if section is not None and self.grace_period > section.max_epochs:
            raise ValueError(
                f"scheduler.grace_period must be at most scheduler.max_epochs "
                f"({section.max_epochs}) but got {self.grace_period}"
            )
        return self


def asha_milestones(section: CommonKeys, asha: AshaSettings) -> list[int]:
    """grace_period * reduction_factor**k below max_epochs, then max_epochs."""
    rungs, rung = [], float(asha.grace_period)
    while rung < section.max_epochs:
        rungs.append(int(rung))
        rung *= asha.reduction_factor
    return [*rungs, section.max_epochs]


def build_asha(section: CommonKeys, asha: AshaSettings, journal: Path | None) -> TrialScheduler:
    from tuner.driver.asha import ResumableASHA  # resumes from the journal (see its docstring)

    return ResumableASHA(
        time_attr=m.EPOCH,
        max_t=section.max_epochs,
        grace_period=asha.grace_period,
        reduction_factor=asha.reduction_factor,
        journal=journal,
    )


SCHEDULERS.register("asha")(
    SchedulerKind(
        "asynchronous successive halving: keeps the best 1/reduction_factor at each rung",
        AshaSettings,
        build_asha,
        asha_milestones,
    )
)


# --------------------------------------------------------------------------- FIFO


class NoSettings(SchedulerSettings):
    """A scheduler with no keys of its own (FIFO): any key beyond the common ones is refused."""


def build_fifo(section: CommonKeys, settings: NoSettings, journal: Path | None) -> TrialScheduler:
    from tuner.driver.live_trials import LiveFIFO  # nothing to resume: it never stops a trial

    return LiveFIFO()


SCHEDULERS.register("fifo")(
    SchedulerKind(
        "every trial runs max_epochs", NoSettings, build_fifo, lambda section, settings: []
    )
)


class ValidatedSection(CommonKeys, Protocol):
    """A section validated with its scheduler's settings (tuner.spec.job_spec.SchedulerSpec)."""

    @property
    def settings(self) -> BaseModel: ...


def make_scheduler(section: ValidatedSection, journal: Path | None = None) -> TrialScheduler:
    return SCHEDULERS.get(section.name).build(section, section.settings, journal)


def milestones(section: ValidatedSection) -> list[int]:
    """The epochs at which the section's scheduler may stop a trial."""
    return SCHEDULERS.get(section.name).milestones(section, section.settings)
