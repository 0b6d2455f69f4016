"""`search.warm_start`: an earlier study's best configs run first in a new one.

The earlier study is found in the tracking store as `tuner export` finds it (a name's newest
execution, or a parent run id), its trials ranked by their best-epoch objective. Each of its
`top_k` best configs that fits the new search space is enqueued in the new Optuna study (Ray's
`points_to_evaluate`), so Optuna asks them first; the others are named with the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tuner.cluster.redaction import redact
from tuner.errors import SpecError
from tuner.results import outcomes
from tuner.spec.job_spec import JobSpec, show
from tuner.spec.spaces import SearchSpace, is_active
from tuner.tracking import schema
from tuner.tracking.runs import client_for, find_study_run, ranked_trial_runs

KEY = "search.warm_start.study"


@dataclass
class WarmStart:
    """What a warm start takes from the earlier study: the configs to run first (sampled
    entries only, as Optuna enqueues them), their trial numbers there, and the skipped ones."""

    study: str
    run_id: str
    points: list[dict[str, Any]] = field(default_factory=list)
    taken: list[int] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)  # trial number -> why

    def lines(self) -> list[str]:
        """What the study prints about it."""
        lines = [
            f"Warm start from study {self.study!r} (run {self.run_id}): "
            + (
                f"its trials {', '.join(map(str, self.taken))} run first"
                if self.taken
                else "none of its best configs fits this search space"
            )
        ]
        lines += [f"  skipped its trial {n}: {why}" for n, why in self.skipped.items()]
        return lines

    def tag(self) -> str:
        """The parent run's `tuner.warm_start` tag."""
        return json.dumps(
            {
                "study": self.study,
                "run_id": self.run_id,
                "enqueued": self.taken,
                "skipped": {str(n): why for n, why in self.skipped.items()},
            }
        )


def misfit(config: dict[str, Any], space: SearchSpace) -> str | None:
    """Why `config` is not a point of `space` (None: it is): an entry the space samples that is
    missing or out of its range, a constant that differs, or a value the space has no entry for."""
    values: dict[str, Any] = {}
    for name, param in space.params.items():
        if not is_active(param.when, values):
            continue
        if name not in config:
            return f"it has no {name}, which this space samples"
        if not param.contains(config[name]):
            return f"{name}={show(config[name])} is outside this space's {describe(param)}"
        values[name] = config[name]
    for name, value in space.constants.items():
        if config.get(name) != value:
            return f"{name}={show(config.get(name))} but this space fixes {name}={show(value)}"
    extra = sorted(set(config) - set(values) - set(space.constants))
    if extra:
        return f"{', '.join(extra)} {'is' if len(extra) == 1 else 'are'} not in this space"
    return None


def describe(param: Any) -> str:
    if hasattr(param, "choices"):
        return f"choices {param.choices}"
    step = f" step {param.step}" if getattr(param, "step", None) not in (None, 1) else ""
    return f"range [{param.low}, {param.high}]{step}"


def plan_warm_start(spec: JobSpec, space: SearchSpace) -> WarmStart | None:
    """The earlier study's `top_k` best configs, split into those that fit `space` and those
    that do not; a study that cannot be found or trained another model is a SpecError."""
    wanted = spec.search.warm_start
    if wanted is None:
        return None
    client = client_for(spec.tracking.uri)
    try:
        parent = find_study_run(client, wanted.study)
    except SpecError:
        raise SpecError(
            f"{KEY}: {wanted.study!r} is not a study in the tracking store "
            f"{redact(spec.tracking.uri)} (a warm start needs an earlier study's name or parent "
            "run id; `tuner list` shows them)"
        ) from None
    model = parent.data.tags.get(schema.MODEL_TAG)
    if model != spec.model:
        raise SpecError(
            f"{KEY}: {wanted.study!r} trained model {model!r}, this study trains "
            f"{spec.model!r}; a warm start takes configs of the same model"
        )
    metric, _ = schema.decode_objective(parent.data.tags)
    ranked = [
        run
        for run in ranked_trial_runs(client, parent)
        if outcomes.is_finite(run.data.metrics.get(schema.best(metric)))
    ]
    plan = WarmStart(wanted.study, parent.info.run_id)
    for run in ranked[: wanted.top_k]:
        number = int(run.data.tags.get(schema.TRIAL_NUMBER_TAG, 0))
        config = schema.trial_config(run.data.tags)
        reason = misfit(config, space)
        if reason is None:
            plan.points.append({k: v for k, v in config.items() if k in space.params})
            plan.taken.append(number)
        else:
            plan.skipped[number] = reason
    # no more than the study runs: Optuna would keep the rest waiting in its storage
    del plan.points[spec.search.num_samples :], plan.taken[spec.search.num_samples :]
    return plan
