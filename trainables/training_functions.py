"""Training functions: a plug-in's own loop (`@tuner.register_training`), tuned like a model.

The built-in loop trains a registered model with cross-entropy or MSE; a training function owns
the whole loop instead (a custom loss, several inputs, an autoencoder, its own scheduler). It is
called once per trial with a `TrialContext` (trainables/contracts.py) and reports every epoch
through `trial.report`. The rules of `report` live here, in `EpochReports`, shared by the Ray
trainable and `tuner train`, so both accept and refuse the same reports. No Ray, no MLflow.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from trainables import metrics as m
from trainables.contracts import TrainingFunction
from trainables.registry import Registry


@dataclass(frozen=True)
class RegisteredTraining:
    """A registered training function and its line for `tuner models`."""

    name: str
    fn: TrainingFunction
    description: str


TRAINING_FUNCTIONS: Registry = Registry("training function")

#: what every report must hold: the diagnosis, ASHA and the curves read them
REQUIRED = (m.TRAIN_LOSS, m.VAL_LOSS)
#: keys tuner (or Ray) puts on a result row itself; a function's metrics may not use them
RESERVED = frozenset(
    {
        m.EPOCH,
        m.DIVERGED,
        m.EARLIER_EPOCHS,
        m.STOPPED_ON_OVERFIT,
        "node_id",
        "gpu_ids",
        "device",
        "done",
        "training_iteration",
        "trial_id",
        "config",
        "time_total_s",
        "time_this_iter_s",
        "timestamp",
    }
)


def register_training(name: str, description: str = "") -> Callable:
    """Register a `TrainingFunction`, `train(trial) -> None`, as training function `name`: a
    spec's `loop: name` trains every trial with it (trainables/contracts.py says what `trial`
    holds and what `trial.report` requires). `description` defaults to the function's
    docstring's first line. A bad name raises ValueError when the decorator runs (at import)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"register_training: the name must be a non-empty string but got {name!r}")

    def decorator(fn: TrainingFunction) -> TrainingFunction:
        if not callable(fn):
            raise ValueError(f"register_training({name!r}) decorates a function train(trial)")
        lines = (getattr(fn, "__doc__", None) or "").strip().splitlines()
        text = description or (lines[0].strip() if lines else "")
        entry = RegisteredTraining(name, fn, text)
        TRAINING_FUNCTIONS.register(name, owner=getattr(fn, "__module__", None))(entry)
        return fn

    return decorator


class TrialEnded(BaseException):
    """Raised by `report` after a diverged epoch was reported: the trial ends there, as the
    built-in loop's does. A BaseException, so that a function's `except Exception` lets it
    through; the trainable catches it."""


class EpochReports:
    """`trial.report`'s rules for one call of a training function: epochs in order within
    `epochs`, train_loss, val_loss and the `required` metrics present, numbers only. Turns each
    report into the result row the built-in loop would have reported."""

    def __init__(self, name: str, epochs: range, required: tuple[str, ...] = ()):
        self.name = name
        self.epochs = epochs
        self.required = tuple(dict.fromkeys((*REQUIRED, *required)))
        self.next_epoch = epochs.start
        self.since = time.perf_counter()

    def row(self, epoch: Any, metrics: Any) -> dict[str, float]:
        """The result row of `report(epoch, metrics)`: the metrics as floats, with `epoch`,
        `generalization_gap` and `epoch_time_s` (the seconds since the previous report, or since
        the function started) unless given, and `diverged: 1` when a loss is not finite. Any
        broken rule is a ValueError naming the function and the rule."""
        where = f"training function {self.name!r}: report(epoch={epoch!r}, ...)"
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            raise ValueError(f"{where}: epoch must be an int (one of trial.epochs)")
        if epoch >= self.epochs.stop:
            raise ValueError(
                f"{where}: epoch {epoch} is past the trial's last epoch {self.epochs.stop - 1}; "
                "train for `epoch in trial.epochs` only"
            )
        if epoch != self.next_epoch:
            raise ValueError(
                f"{where}: epoch {epoch} reported where epoch {self.next_epoch} was expected; "
                "report every epoch of trial.epochs once, in order"
            )
        if not isinstance(metrics, Mapping):
            raise ValueError(
                f"{where}: metrics must be a mapping of names to numbers but got "
                f"{type(metrics).__name__}"
            )
        missing = [key for key in self.required if key not in metrics]
        if missing:
            raise ValueError(
                f"{where}: the metrics lack {', '.join(missing)}; every report needs "
                f"{', '.join(self.required)} (got {', '.join(map(str, metrics)) or 'none'})"
            )
        row: dict[str, float] = {m.EPOCH: epoch}
        for key, value in metrics.items():
            if not isinstance(key, str) or key in RESERVED:
                raise ValueError(
                    f"{where}: {key!r} cannot be a metric name (tuner sets it, or it is not a "
                    f"string); reserved: {', '.join(sorted(RESERVED))}"
                )
            row[key] = number(where, key, value)
        train, val = row[m.TRAIN_LOSS], row[m.VAL_LOSS]
        now = time.perf_counter()
        row.setdefault(m.GENERALIZATION_GAP, val - train)
        row.setdefault(m.EPOCH_TIME_S, now - self.since)
        self.since = now
        if not (math.isfinite(train) and math.isfinite(val)):
            row[m.DIVERGED] = 1
        self.next_epoch = epoch + 1
        return row


def number(where: str, key: str, value: Any) -> float:
    """A metric's value as a float: Python and NumPy numbers, one-element tensors."""
    if isinstance(value, (str, bytes, bool)) or value is None:
        raise ValueError(f"{where}: metric {key!r} must be a number but got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(
            f"{where}: metric {key!r} must be a number (or a one-element tensor) but got "
            f"{type(value).__name__}"
        ) from None


def run_training_function(
    name: str,
    hp: dict[str, Any],
    data: Any,
    device: Any,
    seed: int,
    epochs: int,
) -> tuple[list[dict[str, float]], dict[str, Any] | None]:
    """Run training function `name` outside Ray (`tuner train`) from scratch for `epochs`
    epochs, under `report`'s rules: every epoch's row, and the last checkpoint it passed (on
    CPU; None if it passed none). A diverged epoch ends it, as in a study."""
    import torch

    from trainables.contracts import TrialContext
    from trainables.loop import to_cpu

    entry = TRAINING_FUNCTIONS.get(name)
    rules = EpochReports(entry.name, range(1, epochs + 1))
    history: list[dict[str, float]] = []
    last: list[dict[str, Any]] = []

    def report(epoch: int, metrics: Any, checkpoint: dict[str, Any] | None) -> None:
        history.append(rules.row(epoch, metrics))
        if history[-1].get(m.DIVERGED):
            raise TrialEnded
        if checkpoint is not None:
            last[:] = [to_cpu(checkpoint)]

    torch.manual_seed(seed)
    trial = TrialContext(
        hp=dict(hp),
        seed=seed,
        device=torch.device(device),
        epochs=rules.epochs,
        state=None,
        data=data,
        reporter=report,
    )
    with contextlib.suppress(TrialEnded):
        entry.fn(trial)
    return history, (last[0] if last else None)
