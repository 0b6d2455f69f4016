"""`resources.gpu: auto`: each trial's GPU share from its own config's memory, learning from the
trials that finished, and one retry at twice the share for a trial that runs out of memory.

The share. Ray Tune asks a function of the config for each trial's resources
(`tune.with_resources(trainable, resources=planner)`, where the planner returns a
`PlacementGroupFactory`); it asks once, when the trial is created on the driver. The planner
estimates the config's memory (`trainables.memory`), and gives it the smallest share of
`SHARES` (1/8, 1/4, 1/2, 1) at which floor(1 / share) such trials fit one GPU's memory less
`resources.gpu_memory_headroom`: shares that divide a GPU into whole trials, so that Ray packs
trials of one size exactly. The largest share is a whole GPU (the largest trial of the space was
checked to fit one before the study started: `placement.plan_gpu_memory`).

The correction. Every trial reports `peak_memory_mb`; on a GPU that is the CUDA allocator's peak,
the same tensors the estimate counts less the CUDA context. Once trials have finished on a GPU,
the estimate of each new trial's tensors is scaled by the largest measured/estimated ratio of
those trials (`correction_ratio`), up or down; the CUDA context stays as estimated. The largest
ratio, not the mean: one config underestimated is a warning for the rest, and packing too
tightly costs a retry while packing too loosely costs only idle memory. Peaks measured on the
CPU (resident growth, not GPU memory; the simulated GPUs of the tests) correct nothing.

The retry. A trial that runs out of GPU memory below a whole GPU raises
`trainables.usage.TrialOutOfMemory`; Ray Tune retries a failed trial from its last checkpoint
(`FailureConfig(max_failures)`), asking for the resources the trial holds. `OutOfMemoryRetry`, a
Tune callback, runs when Ray has decided to retry it (`on_trial_recover`, the trial pending
again): it doubles the trial's share (`Trial.update_resources`) and sets the trial's
`max_failures` to the failures so far, so that a second failure, out of memory or not, ends the
trial instead of being retried again; at a whole GPU the trainable ends itself `out_of_memory`
without a retry (nothing larger to give). A Tune callback and not a scheduler or searcher
hook: schedulers see errors only after the retry is decided, searchers not at all, and a
resources function is asked only when a trial is created. The retry is one of
`failure.max_retries`: with 0, a trial out of memory is not retried.
"""

from __future__ import annotations

import json
import math
import weakref
from collections.abc import Iterable
from typing import Any

from ray import tune
from ray.tune import Callback

from trainables import metrics as m
from trainables.data import Dataset
from trainables.loop import TrainingOptions
from trainables.memory import MemoryEstimate, estimate_trial_memory, gib
from trainables.trainable import FINALIST
from tuner.driver.placement import config_text, largest_config, trials_per_gpu, usable_memory
from tuner.driver.progress import trial_error
from tuner.internals.ray_internals import held_resources, resources_of, retry_last_time
from tuner.results import outcomes
from tuner.spec.job_spec import JobSpec
from tuner.spec.spaces import SearchSpace

#: the shares `gpu: auto` gives, smallest first: each packs whole trials onto a GPU
SHARES = (0.125, 0.25, 0.5, 1.0)
MIB = 1024**2
#: the planners of the studies this driver runs, by id: Ray pickles the trainable (with its
#: resources function) into its registry and unpickles a copy to create trials, which finds the
#: live planner here (`_live_planner`); weak, so that a finished study's planner and the dataset
#: it holds go (a study keeps its own alive: `StudyRun.planner`)
_PLANNERS: weakref.WeakValueDictionary[int, SharePlanner] = weakref.WeakValueDictionary()


def share_for(needed: int, usable: int) -> float | None:
    """The smallest share of `SHARES` at which floor(1 / share) trials of `needed` bytes fit in
    `usable` bytes (None: not even a whole GPU holds one)."""
    for share in SHARES:
        if trials_per_gpu(share) * needed <= usable:
            return share
    return None


def correction_ratio(measured: Iterable[tuple[float, float]]) -> float | None:
    """The largest peak / estimate of (measured peak bytes, estimated tensor bytes) pairs; None
    when there are none to learn from."""
    ratios = [peak / estimated for peak, estimated in measured if peak > 0 and estimated > 0]
    return max(ratios) if ratios else None


def corrected_bytes(estimate: MemoryEstimate, on_device: bool, ratio: float | None) -> int:
    """The estimate's total with its tensors (all but the CUDA context) scaled by `ratio`."""
    total = estimate.total(on_device)
    if ratio is None:
        return total
    return estimate.cuda_context + math.ceil(ratio * (total - estimate.cuda_context))


def share_text(share: float) -> str:
    return "1 GPU" if share >= 1 else f"1/{round(1 / share)} GPU"


class SharePlanner:
    """Ray Tune's resources function of `gpu: auto`: config -> `PlacementGroupFactory` with the
    trial's CPUs and its GPU share. Watches the driver's recorder (`watch`) for measured peaks."""

    def __init__(
        self, spec: JobSpec, data: Dataset, training: TrainingOptions, gpu_memory: int
    ) -> None:
        self.model, self.cpu = spec.model, spec.resources.cpu
        self.data, self.training = data, training
        self.gpu_memory = gpu_memory
        self.usable = usable_memory(gpu_memory, spec.resources.gpu_memory_headroom)
        self.recorder: Any = None  # tuner.driver.progress.StudyRecorder, once watched
        self._estimates: dict[str, MemoryEstimate] = {}
        _PLANNERS[id(self)] = self

    def __reduce__(self):
        return (_live_planner, (id(self), self.cpu))

    def close(self) -> None:
        _PLANNERS.pop(id(self), None)

    def estimate(self, hparams: dict[str, Any]) -> MemoryEstimate:
        key = json.dumps(hparams, sort_keys=True, default=str)
        if key not in self._estimates:
            self._estimates[key] = estimate_trial_memory(
                self.model, hparams, self.data, self.training
            )
        return self._estimates[key]

    def ratio(self) -> float | None:
        """The correction the finished trials measured on a GPU (None: none yet)."""
        if self.recorder is None:
            return None
        measured = []
        for record in list(self.recorder.trials.values()):
            rows = [r for r in record.history if outcomes.is_finite(r.get(m.PEAK_MEMORY_MB))]
            if record.status is None or not rows or not str(record.device).startswith("cuda"):
                continue
            estimate = self.estimate(record.config)
            tensors = estimate.total(self.training.data_on_device) - estimate.cuda_context
            measured.append((max(r[m.PEAK_MEMORY_MB] for r in rows) * MIB, tensors))
        return correction_ratio(measured)

    def needed(self, hparams: dict[str, Any], ratio: float | None = None) -> int:
        return corrected_bytes(self.estimate(hparams), self.training.data_on_device, ratio)

    def share(self, config: dict[str, Any]) -> float:
        """The config's share (a finalist re-run's: its tuned config's); a whole GPU when even
        that is too small by the corrected estimate (the uncorrected one fitted)."""
        hparams = config[FINALIST]["hparams"] if FINALIST in config else config
        return share_for(self.needed(hparams, self.ratio()), self.usable) or 1.0

    def __call__(self, config: dict[str, Any]) -> tune.PlacementGroupFactory:
        return tune.PlacementGroupFactory([{"CPU": self.cpu, "GPU": self.share(config)}])

    def lines(self, space: SearchSpace) -> list[str]:
        """What to print at the start: the share of the smallest and the largest trial."""

        def size(config: dict[str, Any]) -> int:
            return self.needed(config)

        ends = [("smallest", largest_config(space, size, smallest=True))]
        ends.append(("largest", largest_config(space, size)))
        lines = [
            f"resources.gpu auto: each trial's GPU share (1, 1/2, 1/4 or 1/8) from its estimated "
            f"memory, in {gib(self.usable)} usable of each GPU's {gib(self.gpu_memory)}; "
            "corrected by the peaks that finished trials measure"
        ]
        for what, config in ends:
            needed = size(config)
            lines.append(
                f"  {what} trial of the space ({config_text(config)}): {gib(needed)} -> "
                f"{share_text(share_for(needed, self.usable) or 1.0)}"
            )
        return lines


class FixedShare:
    """What a planner unpickles to outside the driver that made it (a Ray worker): the largest
    share. Ray asks for trial resources only on the driver."""

    def __init__(self, cpu: float) -> None:
        self.cpu = cpu

    def __call__(self, config: dict[str, Any]) -> tune.PlacementGroupFactory:
        return tune.PlacementGroupFactory([{"CPU": self.cpu, "GPU": 1.0}])


def _live_planner(key: int, cpu: float) -> SharePlanner | FixedShare:
    return _PLANNERS.get(key) or FixedShare(cpu)


def planner_of(trainable: Any) -> SharePlanner | None:
    """The planner `tune.with_resources` attached to a trainable (None: fixed resources)."""
    resources = resources_of(trainable)
    return resources if isinstance(resources, SharePlanner) else None


class OutOfMemoryRetry(Callback):
    """Ray Tune callback of `gpu: auto`: a trial out of GPU memory that Ray retries gets twice
    its share (up to a whole GPU) and no retry after that one (see the module docstring)."""

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        if not outcomes.is_out_of_memory(trial_error(trial)):
            return
        held = held_resources(trial)
        share = float(held.get("GPU", 0.0))
        grown = {"cpu": held.get("CPU", 1.0), "gpu": min(1.0, 2 * share)}
        retry_last_time(trial, grown if 0 < share < 1 else None)
