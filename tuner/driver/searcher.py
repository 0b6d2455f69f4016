"""Ray Tune's OptunaSearch, telling Optuna the truth about trials ASHA stopped.

Ray's stock searcher never reports the result on which a scheduler stops a trial, and then tells
Optuna the trial COMPLETED with that truncated value, as if a 2-epoch curve were a finished run.
TPE then learns from values that mean different things. Here:

- every epoch's objective is reported as an intermediate value (step = epoch), the last one too,
  all in one write when the trial ends (a write per result was a SQLite commit per epoch);
- a trial that ran its whole budget (or was stopped for overfitting) is COMPLETE, valued at its
  best epoch;
- a trial stopped early by the scheduler is PRUNED, keeping its partial curve;
- a diverged trial is PRUNED with its finite values, an errored one FAIL, and so is one that ran
  out of GPU memory (`out_of_memory`: after its retry at twice the share, where it had one).

With a `StudyStop` (search.time_budget_s, search.patience_trials, search.gpu_hours_budget,
which it tells every result's GPU-hours) it suggests nothing more once
that says stop (Ray then starts no new trial and lets the running ones finish); with
`points_to_evaluate` (search.warm_start) those configs are Optuna's first trials.

With several objectives (`metric` and `mode` lists, the first one leading) Optuna keeps no
intermediate values; a COMPLETE trial is valued at its best epoch on the first objective, every
objective read at that epoch.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from trainables import metrics as m
from tuner.cluster.databases import ride_out
from tuner.driver.stoppers import StudyStop
from tuner.internals.optuna_internals import asked_again, report_curve, running_trial
from tuner.internals.ray_internals import (
    completed_trials,
    optuna_study,
    optuna_trials,
    saved_trial_ids,
)
from tuner.results import outcomes
from tuner.tracking import schema


class TruthfulOptunaSearch(OptunaSearch):
    """OptunaSearch that reports full curves and tells Optuna PRUNED for early-stopped trials."""

    def __init__(
        self, *args: Any, max_epochs: int, study_stop: StudyStop | None = None, **kwargs: Any
    ):
        super().__init__(*args, **kwargs)
        self._max_epochs = max_epochs
        #: each trial's objectives by epoch: {epoch: {"epoch": e, metric: value, ...}}
        self._curves: dict[str, dict[int, dict[str, float]]] = {}
        self._study_stop = study_stop

    @property
    def objectives(self) -> list[tuple[str, str]]:
        """(metric, mode) of each objective, the first leading."""
        if isinstance(self.metric, list):
            return list(zip(self.metric, self.mode, strict=True))
        return [(self.metric, self.mode)]

    def restore(self, checkpoint_path: str) -> None:
        """Ray's restore, then agree with the trials Ray restored (saved beside this searcher,
        in a file that can be a save older or newer than it): a trial Ray does not know is never
        run, so Optuna is told it failed; a trial Ray knows and this searcher does not is asked
        again for its Optuna trial. Optuna trials the crashed driver asked for and no trial
        runs fail too; a trial an interrupt told FAIL that Ray runs on is asked again."""
        super().restore(checkpoint_path)
        saved = saved_trial_ids(Path(checkpoint_path).parent)
        study, asked = optuna_study(self), optuna_trials(self)
        ray_trials = set(asked) if saved is None else set(saved)  # None: restored by hand
        for trial_id in set(asked) - ray_trials:
            study.tell(asked.pop(trial_id), state=TrialState.FAIL, skip_if_finished=True)
            self._curves.pop(trial_id, None)
        known = {t.number for t in asked.values()}
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            trial_id = frozen.user_attrs.get(schema.TRIAL_ID_TAG)
            if trial_id in ray_trials and trial_id not in asked:
                asked[trial_id] = running_trial(study, frozen)
            elif frozen.number not in known:
                study.tell(frozen.number, state=TrialState.FAIL)
        self._ask_again_for_interrupted(study, asked)

    def _ask_again_for_interrupted(self, study, asked: dict) -> None:
        """Trials the interrupt told FAIL (`interrupts.fail_asked_trials`) that Ray runs on:
        each gets a new RUNNING Optuna trial with the same parameters, told when it ends (Optuna
        cannot reopen a finished trial; the FAIL stays as the interrupted attempt)."""
        by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
        told = completed_trials(self)
        for trial_id, trial in list(asked.items()):
            frozen = by_number.get(trial.number)
            interrupted = frozen is not None and frozen.user_attrs.get(schema.INTERRUPTED_ATTR)
            if interrupted and frozen.state == TrialState.FAIL and trial_id not in told:
                asked[trial_id] = asked_again(study, frozen, without=schema.INTERRUPTED_ATTR)

    def suggest(self, trial_id: str) -> dict | None:
        """Ray's suggestion; the Optuna trial keeps Ray's trial id, as MLflow's runs do. None
        more once the study's stop says so."""
        stop = getattr(self, "_study_stop", None)  # a searcher saved before it existed has none
        if trial_id not in optuna_trials(self) and stop is not None and stop.reason():
            return Searcher.FINISHED
        config = super().suggest(trial_id)
        if trial_id in optuna_trials(self):
            optuna_trials(self)[trial_id].set_user_attr(schema.TRIAL_ID_TAG, trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        for earlier in result.get(m.EARLIER_EPOCHS) or ():  # a restored trial's, to its checkpoint
            self._report(trial_id, earlier)
        self._report(trial_id, result)
        stop = getattr(self, "_study_stop", None)
        if stop is not None and outcomes.is_finite(result.get(m.GPU_HOURS)):
            stop.gpu_hours_used(trial_id, result[m.GPU_HOURS])

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        asked, told = optuna_trials(self), completed_trials(self)
        if trial_id in told or trial_id not in asked:
            return
        if result and m.OUT_OF_MEMORY not in result:
            self._report(trial_id, result)  # the stopping result never went through on_trial_result
        self._write_curve(trial_id)
        state, value = self._verdict(trial_id, result, error)
        # skip_if_finished: a driver that crashed after telling Optuna but before Ray saved this
        # searcher tells again on resume; the stored verdict stands
        optuna_study(self).tell(asked[trial_id], value, state=state, skip_if_finished=True)
        told.add(trial_id)
        if getattr(self, "_study_stop", None) is not None:
            self._study_stop.trial_ended(self._best(trial_id))
        self._curves.pop(trial_id, None)

    def _report(self, trial_id: str, result: dict) -> None:
        """Keep the epoch's objectives; Optuna gets the curve when the trial ends."""
        curve = self._curves.setdefault(trial_id, {})
        metrics = [metric for metric, _ in self.objectives]
        step, value = result.get(m.EPOCH), result.get(metrics[0])
        if step is None or step in curve or not outcomes.is_finite(value):
            return
        curve[step] = {m.EPOCH: step, **{k: result.get(k) for k in metrics}}

    def _write_curve(self, trial_id: str) -> None:
        """The trial's intermediate values (first objective by epoch) in one write."""
        metric = self.objectives[0][0]
        curve = self._curves.get(trial_id)
        if not curve or len(self.objectives) > 1:
            return  # Optuna keeps intermediate values for one objective only
        values = {int(step): float(row[metric]) for step, row in sorted(curve.items())}
        with contextlib.suppress(UpdateFinishedTrialError):  # told before a crash (see below)
            trial = optuna_trials(self)[trial_id]
            ride_out(trial.storage, report_curve, trial, values)

    def _verdict(
        self, trial_id: str, result: dict | None, error: bool
    ) -> tuple[TrialState, float | list[float] | None]:
        curve = self._curves.get(trial_id, {})
        if error or (result and m.OUT_OF_MEMORY in result):
            return TrialState.FAIL, None
        if result and result.get(m.DIVERGED):  # even on epoch 1: TPE should learn to avoid it
            return TrialState.PRUNED, None
        if not curve:
            return TrialState.FAIL, None
        status = outcomes.trial_status(result, self._max_epochs)
        if status == outcomes.STOPPED_BY_SCHEDULER:
            return TrialState.PRUNED, None
        (first, mode), *others = self.objectives
        best = outcomes.best_epoch(curve.values(), first, mode)
        values = [best[metric] for metric, _ in self.objectives]
        if not all(outcomes.is_finite(v) for v in values):
            return TrialState.FAIL, None  # an objective the trial never reported
        return TrialState.COMPLETE, (values if others else values[0])

    def _best(self, trial_id: str) -> float | None:
        """The trial's best reported first objective (None: it reported none)."""
        curve = self._curves.get(trial_id)
        if not curve:
            return None
        first, mode = self.objectives[0]
        return outcomes.best_epoch(curve.values(), first, mode)[first]
