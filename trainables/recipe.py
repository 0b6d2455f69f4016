"""The recipe knobs of the built-in loop: learning-rate schedule and warm-up, gradient clipping,
label smoothing and image augmentation. Hyperparameters like `lr` (any search space may name
them), checked here with messages that name the key, the value and the rule.

- ``lr_schedule``: ``constant`` (default), ``cosine``, ``onecycle`` or ``step``, over the run's
  epoch budget, after ``warmup_epochs`` (default 0) of linear warm-up (`lr_factor`).
- ``grad_clip_norm``: clip the gradients' total L2 norm to this (default None: no clipping),
  after the fp16 loss scaler has unscaled them.
- ``label_smoothing``: classification only; the training loss is smoothed, the reported losses
  (train, validation, test) are not, so that trials with different smoothing compare.
- ``augment``: image datasets only; ``none`` (default), ``shift`` (random shifts by up to
  `max_shift` pixels, edge pixels repeated) or ``shift_flip`` (and horizontal flips, only where
  the dataset says flips keep the label: `Dataset.flips_valid`). Training batches only.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from trainables.data import Dataset

LR_SCHEDULES = ("constant", "cosine", "onecycle", "step")
AUGMENTS = ("none", "shift", "shift_flip")
#: the recipe's hyperparameters and their defaults (none of them changes a model's architecture)
RECIPE_DEFAULTS: dict[str, Any] = {
    "lr_schedule": "constant",
    "warmup_epochs": 0,
    "grad_clip_norm": None,
    "label_smoothing": 0.0,
    "augment": "none",
}
#: onecycle follows torch's OneCycleLR with its defaults: from lr / DIV_FACTOR up to lr over the
#: first PCT_START of the budget (or `warmup_epochs`, when set), then down to
#: lr / (DIV_FACTOR * FINAL_DIV_FACTOR), both by cosine
ONECYCLE_DIV_FACTOR = 25.0
ONECYCLE_FINAL_DIV_FACTOR = 1e4
ONECYCLE_PCT_START = 0.3
#: step: the lr is multiplied by STEP_GAMMA at each of these shares of the post-warm-up budget
STEP_MILESTONES = (0.5, 0.75)
STEP_GAMMA = 0.1


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_lr_schedule(value: Any, key: str = "lr_schedule") -> str:
    if isinstance(value, str) and value in LR_SCHEDULES:
        return value
    raise ValueError(
        f"{key}: {value!r} is not a learning-rate schedule: lr_schedule must be one of "
        f"{', '.join(LR_SCHEDULES)}"
    )


def check_warmup_epochs(
    value: Any, key: str = "warmup_epochs", max_epochs: int | None = None
) -> float:
    """A number of epochs, 0 or more; with `max_epochs` (a study's budget), less than it."""
    if not (_is_number(value) and value >= 0):
        raise ValueError(
            f"{key}: {value!r} is not a warm-up length: warmup_epochs must be a number of "
            "epochs, 0 or more"
        )
    if max_epochs is not None and value >= max_epochs:
        raise ValueError(
            f"{key}: {value!r} is not shorter than the epoch budget: warmup_epochs must be less "
            f"than scheduler.max_epochs ({max_epochs}), or no trial would train at its full "
            "learning rate"
        )
    return value


def check_grad_clip_norm(value: Any, key: str = "grad_clip_norm") -> float | None:
    if value is None:
        return None
    if _is_number(value) and value > 0:
        return float(value)
    raise ValueError(
        f"{key}: {value!r} is not a gradient norm bound: grad_clip_norm must be a number above 0 "
        "(or null: no clipping)"
    )


def check_label_smoothing(
    value: Any, key: str = "label_smoothing", dataset: Dataset | None = None
) -> float:
    """A weight in [0, 1); above 0 only for a classification `dataset`."""
    if not (_is_number(value) and 0 <= value < 1):
        raise ValueError(
            f"{key}: {value!r} is not a label-smoothing weight: label_smoothing must be at "
            "least 0 and less than 1"
        )
    if dataset is not None and value > 0 and dataset.task != "classification":
        raise ValueError(
            f"{key}: {value!r} smooths class labels, but dataset {dataset.name!r} has a "
            "regression target: label_smoothing must be 0 (or left out) for regression"
        )
    return float(value)


def check_augment(value: Any, key: str = "augment", dataset: Dataset | None = None) -> str:
    """One of `AUGMENTS`; other than none only for image data, and flips only where valid."""
    if not (isinstance(value, str) and value in AUGMENTS):
        raise ValueError(
            f"{key}: {value!r} is not an augmentation: augment must be one of {', '.join(AUGMENTS)}"
        )
    if dataset is None or value == "none":
        return value
    if dataset.layout != "image":
        raise ValueError(
            f"{key}: {value!r} shifts and flips images, but dataset {dataset.name!r} has "
            f"{dataset.layout} inputs: augment must be none for non-image data"
        )
    if "flip" in value and not dataset.flips_valid:
        raise ValueError(
            f"{key}: {value!r} flips images, but dataset {dataset.name!r} says a flipped image "
            "may not keep its label (flips_valid: false; a mirrored digit is not that digit): "
            "use shift, or set dataset.options.flips_valid: true for data where flips are valid"
        )
    return value


@dataclass(frozen=True)
class Recipe:
    """The recipe knobs of one run, checked."""

    lr_schedule: str = "constant"
    warmup_epochs: float = 0
    grad_clip_norm: float | None = None
    label_smoothing: float = 0.0
    augment: str = "none"

    @property
    def scheduled(self) -> bool:
        """Whether the lr changes during the run at all."""
        return self.lr_schedule != "constant" or self.warmup_epochs > 0


def recipe_of(hparams: dict[str, Any], dataset: Dataset | None = None) -> Recipe:
    """The recipe in `hparams` (defaults for what they leave out), each value checked; with
    `dataset`, also against it (label smoothing needs classes, augmentation images)."""
    hp = {**RECIPE_DEFAULTS, **{k: v for k, v in hparams.items() if k in RECIPE_DEFAULTS}}
    return Recipe(
        lr_schedule=check_lr_schedule(hp["lr_schedule"]),
        warmup_epochs=check_warmup_epochs(hp["warmup_epochs"]),
        grad_clip_norm=check_grad_clip_norm(hp["grad_clip_norm"]),
        label_smoothing=check_label_smoothing(hp["label_smoothing"], dataset=dataset),
        augment=check_augment(hp["augment"], dataset=dataset),
    )


def check_recipe_value(
    name: str, value: Any, key: str, dataset: Dataset | None = None, max_epochs: int | None = None
) -> None:
    """Check one value of the recipe knob `name` (a search space's bound, choice or constant,
    named `key` in the message); ValueError if it cannot run."""
    if name == "lr_schedule":
        check_lr_schedule(value, key)
    elif name == "warmup_epochs":
        check_warmup_epochs(value, key, max_epochs)
    elif name == "grad_clip_norm":
        check_grad_clip_norm(value, key)
    elif name == "label_smoothing":
        check_label_smoothing(value, key, dataset)
    elif name == "augment":
        check_augment(value, key, dataset)


# --------------------------------------------------------------------------- the lr schedule


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """The optimizer steps an epoch of `n_train` rows takes (`loop.train_epoch` skips a one-row
    tail batch unless it is the whole split)."""
    full, tail = divmod(n_train, batch_size)
    return full + (1 if tail >= 2 or n_train == 1 else 0)


def _cosine(start: float, end: float, pct: float) -> float:
    """From `start` to `end` as pct goes 0 -> 1 (torch's OneCycleLR `_annealing_cos`)."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def lr_factor(
    schedule: str, step: int, steps_per_epoch: int, budget_epochs: float, warmup_epochs: float
) -> float:
    """The multiple of the base lr that optimizer step `step` (from 0) trains at.

    With W = warmup_epochs and T = budget_epochs, both in steps (times `steps_per_epoch`): the
    first W steps ramp linearly, step s at (s + 1) / W; after them, p = (s - W) / (T - W) runs
    from 0 towards 1 and the factor is 1 (constant), (1 + cos(pi p)) / 2 (cosine), or 1, 0.1,
    0.01 from p = 0, 1/2, 3/4 (step). onecycle is torch's OneCycleLR (div_factor 25,
    final_div_factor 1e4, cosine, no momentum cycling) over T, its rise lasting W when W > 0,
    else 30 % of T. Past the budget the factor stays at its end value.
    """
    total = max(budget_epochs * steps_per_epoch, 1)
    warm = warmup_epochs * steps_per_epoch
    if schedule == "onecycle":
        rise_end = (warm if warm > 0 else ONECYCLE_PCT_START * total) - 1
        start, low = 1 / ONECYCLE_DIV_FACTOR, 1 / ONECYCLE_DIV_FACTOR / ONECYCLE_FINAL_DIV_FACTOR
        if rise_end > 0 and step <= rise_end:
            return _cosine(start, 1.0, step / rise_end)
        fall_start, fall_end = max(rise_end, 0), total - 1
        pct = (step - fall_start) / (fall_end - fall_start) if fall_end > fall_start else 1.0
        return _cosine(1.0, low, min(pct, 1.0))
    if step < warm:
        return (step + 1) / warm
    if schedule == "constant":
        return 1.0
    p = min((step - warm) / max(total - warm, 1), 1.0)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * p))
    if schedule == "step":
        return STEP_GAMMA ** sum(p >= milestone for milestone in STEP_MILESTONES)
    raise ValueError(check_lr_schedule(schedule))  # unreachable for a checked schedule


def make_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    recipe: Recipe,
    steps_per_epoch: int,
    budget_epochs: int | None,
) -> torch.optim.lr_scheduler.LambdaLR | None:
    """A LambdaLR stepped once per optimizer step, or None when the lr never changes.

    Per step, not per epoch: a warm-up of one or two epochs ramps over their steps instead of
    in epoch-sized stairs, and one-cycle is defined per step. The curve is a function of the
    step number and the budget alone, so a trial ASHA stops at epoch k trained at exactly the
    lrs of the first k epochs of one that runs to the end. Its state (the step count) goes into
    the run's checkpoint."""
    if not recipe.scheduled:
        return None
    if budget_epochs is None and recipe.lr_schedule != "constant":
        raise ValueError(
            f"lr_schedule: {recipe.lr_schedule!r} is spread over the run's epoch budget, which "
            "this run was not given: pass TrainingRun(..., max_epochs=N)"
        )
    budget = budget_epochs or 1  # constant with warm-up only: the budget is never read
    schedule, warmup = recipe.lr_schedule, recipe.warmup_epochs
    steps = max(steps_per_epoch, 1)

    def factor(step: int) -> float:
        return lr_factor(schedule, step, steps, budget, warmup)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def step_lr_scheduler(scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """Advance the schedule by one optimizer step. The schedule counts batches trained, also
    one whose update the fp16 loss scaler skipped on an overflow, when torch would warn that
    the scheduler stepped before the optimizer: that is meant here, so the warning is not
    shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
        scheduler.step()


# --------------------------------------------------------------------------- augmentation


def max_shift(sample_shape: tuple[int, ...]) -> int:
    """The largest shift, in pixels, of `shift`: a twelfth of the shorter side, at least 1
    (2 on MNIST's 28x28, 1 on digits' 8x8)."""
    return max(1, min(sample_shape[-2:]) // 12)


@dataclass(frozen=True)
class Augmentation:
    """Random shifts (and flips) of training images, drawn from the run's generator once per
    epoch for every row in the epoch's order, and applied per batch on the device."""

    mode: str
    shift: int

    def draw(
        self, n: int, generator: torch.Generator, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One epoch's (shifts (n, 2) in rows and columns, flips (n,) or None), in row order."""
        shifts = torch.randint(-self.shift, self.shift + 1, (n, 2), generator=generator)
        flips = torch.rand(n, generator=generator) < 0.5 if "flip" in self.mode else None
        return shifts.to(device), None if flips is None else flips.to(device)

    def batches(self, batches, n: int, generator: torch.Generator, device: torch.device):
        """`batches` (one epoch's, in order) with each image shifted (and flipped)."""
        shifts, flips = self.draw(n, generator, device)
        start = 0
        for xb, yb in batches:
            end = start + len(xb)
            flipped = None if flips is None else flips[start:end]
            yield augment(xb, shifts[start:end], flipped, self.shift), yb
            start = end


def augment(
    x: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor | None, pad: int
) -> torch.Tensor:
    """Images `x` (N, C, H, W), each moved by its `shifts` row (dy, dx), each within [-pad,
    pad]: out[i, j] = x[i + dy, j + dx], edge pixels repeated where that falls outside; then
    mirrored left to right where `flips` is True. A new tensor; `x` is untouched. Nothing here
    waits for the device."""
    n, _, h, w = x.shape
    out = x
    if pad:
        padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
        rows = torch.arange(h, device=x.device) + pad + shifts[:, :1]  # (N, H)
        cols = torch.arange(w, device=x.device) + pad + shifts[:, 1:]  # (N, W)
        batch = torch.arange(n, device=x.device)[:, None, None]
        out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
        out = out.permute(0, 3, 1, 2).contiguous()
    if flips is not None:
        out = torch.where(flips[:, None, None, None], out.flip(-1), out)
    return out
