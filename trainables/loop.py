"""The training loop: one epoch of training, one of evaluation. Pure PyTorch, no Ray, no MLflow.

By default the data sits on the device as whole tensors, batched by index, so an epoch costs no
DataLoader workers, no collation and no host-to-device copies; with `data_on_device=False` it stays
in host memory and each batch is copied without blocking (`trainables.batches`). Nothing in an
epoch waits for the device per batch: evaluation sums on the device and reads the sums once.
Mixed precision, TF32, channels_last and `torch.compile` come from `trainables.accel`; the
recipe knobs (lr schedule and warm-up, gradient clipping, label smoothing, augmentation) from
`trainables.recipe`.
"""

from __future__ import annotations

import math
import numbers
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import torch
from torch import nn

from trainables import accel
from trainables import metrics as m
from trainables.accel import PRECISIONS
from trainables.batches import Batch, place, shard_rows
from trainables.costs import LATENCY_BATCH, model_costs
from trainables.data import Dataset
from trainables.models import build_model
from trainables.recipe import (
    RECIPE_DEFAULTS,
    Augmentation,
    make_lr_scheduler,
    max_shift,
    recipe_of,
    step_lr_scheduler,
    steps_per_epoch,
)

__all__ = ["PRECISIONS", "EpochCancelled", "TrainingOptions", "TrainingRun"]

#: Optimisation hyperparameters every model takes, with the textbook defaults; the recipe's
#: (`trainables.recipe`: lr_schedule, warmup_epochs, grad_clip_norm, label_smoothing, augment)
#: among them.
OPTIMIZER_DEFAULTS: dict[str, Any] = {
    "lr": 1e-3,
    "batch_size": 64,
    "optimizer": "adam",
    "weight_decay": 0.0,
    "momentum": 0.9,  # sgd only
    **RECIPE_DEFAULTS,
}
OPTIMIZERS = ("adam", "adamw", "sgd")
EVAL_BATCH_SIZE = 4096
#: the train-split subsample's seed is (run seed, this), so it is not the first epoch's shuffle
SUBSAMPLE_STREAM = 1
#: training skips one-row batches (batch norm cannot normalise one row): at batch_size 1 a trial
#: would take no optimizer step at all
MIN_BATCH_SIZE = 2


class EpochCancelled(Exception):
    """An epoch given up between two batches because `TrainingRun.cancel` was set (the trial was
    stopped while it trained ahead of its last report); the run is mid-epoch and not to be used
    again."""


class NoOptimizerStep(RuntimeError):
    """An epoch ended without one optimizer step: the trial must fail, not report the untrained
    model's metrics as if it had trained."""


def check_batch_size(value: Any, key: str = "batch_size") -> int:
    """The batch size `value` as an int, or a ValueError naming `key`, the value and the rule."""
    number = isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)
    if number and value >= MIN_BATCH_SIZE:  # numbers.Real: NumPy's too (a trials table's)
        return int(value)
    raise ValueError(
        f"{key}: {value!r} is not a batch size: batch_size must be a number of at least "
        f"{MIN_BATCH_SIZE} (training skips one-row batches, which batch norm cannot normalise, "
        "so at 1 a trial would train nothing)"
    )


@dataclass(frozen=True)
class TrainingOptions:
    """How to train, as opposed to what: none of these changes what a model can learn."""

    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; GradScaler for fp16)
    compile: bool = False  # torch.compile; compile time reported as its own metric
    data_on_device: bool = True  # False: data stays in host memory (pinned on CUDA),
    #                              copied per batch, non-blocking

    def __post_init__(self) -> None:
        accel.check_precision(self.precision)


def optimizer_settings(hp: dict[str, Any]) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The optimizer class and its arguments for the trial's hyperparameters (Adam, AdamW, SGD)."""
    hp = {**OPTIMIZER_DEFAULTS, **hp}
    lr, wd = float(hp["lr"]), float(hp["weight_decay"])
    name = hp["optimizer"]
    if name == "adam":
        return torch.optim.Adam, {"lr": lr, "weight_decay": wd}
    if name == "adamw":
        return torch.optim.AdamW, {"lr": lr, "weight_decay": wd}
    if name == "sgd":
        return torch.optim.SGD, {"lr": lr, "weight_decay": wd, "momentum": float(hp["momentum"])}
    raise ValueError(f"optimizer {name!r} is unknown; choose one of: {', '.join(OPTIMIZERS)}")


def make_optimizer(params, hp: dict[str, Any], fused: bool = False) -> torch.optim.Optimizer:
    """The trial's optimizer; `fused` (one kernel per step, used on CUDA) also takes the fp16
    loss scaler's inf check on the device, where an unfused step reads it on the host."""
    optimizer_class, kwargs = optimizer_settings(hp)
    return optimizer_class(params, **kwargs, **({"fused": True} if fused else {}))


#: the param-group flags that say how an optimizer's step runs on its device, not what it computes
#: (`load_optimizer_state` keeps the built optimizer's)
DEVICE_FLAGS = ("fused", "foreach", "capturable")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load `state` (an optimizer's `state_dict`, written on any device) into `optimizer`, keeping
    the `DEVICE_FLAGS` it was built with here. torch's `load_state_dict` replaces the param groups
    with the checkpoint's: a CPU checkpoint (fused None) resumed on CUDA turned the fused
    optimizer into an unfused one, which the fp16 loss scaler still steps with its grad_scale set
    ("Expected grad_scale and found_inf to be None"), and a CUDA checkpoint resumed on CPU would
    run fused there. The flags go into the state before loading, as torch places each `step`
    tensor by them (on the parameter's device when fused or capturable)."""
    groups = [dict(saved) for saved in state["param_groups"]]
    # strict=False: a different number of groups is torch's to refuse, with its message
    for saved, built in zip(groups, optimizer.param_groups, strict=False):
        saved.update({k: built[k] for k in DEVICE_FLAGS if k in built})
    optimizer.load_state_dict({**state, "param_groups": groups})


def check_trainable(model_name: str, hparams: dict[str, Any], data: Dataset) -> None:
    """Fail as a trial would if these hyperparameters cannot train on `data`: build the model and
    run one forward and backward pass on its first 2 samples. The optimizer is checked but not
    built: the first optimizer of a process imports torch._dynamo (1.5 s on 2 cores), which the
    driver never needs."""
    hp = {**OPTIMIZER_DEFAULTS, **hparams}
    optimizer_settings(hp)
    check_batch_size(hp["batch_size"])
    recipe_of(hp, data)
    model = build_model(model_name, hp, data.sample_shape, data.layout, data.output_dim)
    x = torch.from_numpy(np.ascontiguousarray(data.x_train[:2]))
    y = torch.from_numpy(np.ascontiguousarray(data.y_train[:2]))
    loss_function(data.task)(model(x), y).backward()


class RegressionLoss(nn.MSELoss):
    """MSE of a (N, 1) prediction against a (N,) target (plain MSELoss would broadcast to N x N)."""

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().forward(prediction.squeeze(-1), target)


def loss_function(task: str, label_smoothing: float = 0.0) -> nn.Module:
    """Cross-entropy (with `label_smoothing`, for training) for classes, MSE for regression."""
    if task == "classification":
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    return RegressionLoss()


def subsample_size(n_train: int, n_val: int) -> int:
    """How many training rows `train_subsample` takes: as many as the validation split has, or
    0 (all of them, no subsample) when that is no fewer."""
    return n_val if n_val < n_train else 0


def train_subsample(n_train: int, n_val: int, seed: int) -> torch.Tensor | None:
    """The training rows the train metrics are measured on, fixed for a run: as many as the
    validation split has (sorted, seeded by the run's seed), or None (all) when that is no fewer."""
    if not subsample_size(n_train, n_val):
        return None
    rng = np.random.default_rng([seed, SUBSAMPLE_STREAM])
    rows = np.sort(rng.choice(n_train, size=n_val, replace=False))
    return torch.from_numpy(rows)


def batch_loss(
    model: nn.Module,
    loss_fn: nn.Module,
    xb: torch.Tensor,
    yb: torch.Tensor,
    autocast: AbstractContextManager | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's output and the mean loss on one batch: the forward pass in the run's precision,
    the loss in fp32."""
    with autocast or nullcontext():
        out = model(xb).float()
    return out, loss_fn(out, yb)


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    loss_fn: nn.Module,
    batches: Iterable[Batch],
    n: int,
    autocast: AbstractContextManager | None = None,
    grad_clip_norm: float | None = None,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> int:
    """One pass over shuffled mini-batches of a split of `n` rows; nothing here waits for the
    device (a 1-sample tail is told by its shape). With `grad_clip_norm`, the gradients' total
    norm is clipped to it once the scaler has unscaled them (fp16); `lr_scheduler` steps after
    every optimizer step. Returns the optimizer steps taken (as the host counts them: fp16's
    scaler may still skip one on an overflow), and raises `NoOptimizerStep` rather than
    return 0."""
    model.train()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    steps = 0
    for xb, yb in batches:
        if len(xb) < 2 and n >= 2:  # a 1-sample batch breaks batch norm; skip the tail
            continue
        optimizer.zero_grad(set_to_none=True)
        _, loss = batch_loss(model, loss_fn, xb, yb, autocast)
        scaler.scale(loss).backward()
        if grad_clip_norm is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not the loss-scaled ones
            nn.utils.clip_grad_norm_(params, grad_clip_norm)
        scaler.step(optimizer)
        scaler.update()
        if lr_scheduler is not None:
            step_lr_scheduler(lr_scheduler)
        steps += 1
    if steps == 0:
        cause = (
            "the training split is empty"
            if n == 0
            else f"every batch of the {n}-row training split had one row, which training skips "
            f"(batch norm cannot normalise one row); use a batch_size of at least {MIN_BATCH_SIZE}"
        )
        raise NoOptimizerStep(f"an epoch took no optimizer step: {cause}")
    return steps


#: sums across data-parallel workers: a tensor in, the element-wise sum over every worker out
Reduce = Callable[[torch.Tensor], torch.Tensor]


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loss_fn: nn.Module,
    batches: Iterable[Batch],
    classification: bool,
    autocast: AbstractContextManager | None = None,
    reduce: Reduce | None = None,
) -> tuple[float, float | None]:
    """Mean loss (and accuracy for classification) in eval mode. Sums stay on the device and are
    read once, at the end; with `reduce` (data-parallel workers, each on its shard) the sums of
    every worker are added up first, so each gets the means over all the rows."""
    model.eval()
    total_loss = correct = None
    n = 0
    for xb, yb in batches:
        out, loss = batch_loss(model, loss_fn, xb, yb, autocast)
        loss_sum = loss.double() * len(xb)
        total_loss = loss_sum if total_loss is None else total_loss + loss_sum
        if classification:
            hits = (out.argmax(dim=1) == yb).sum()
            correct = hits if correct is None else correct + hits
        n += len(xb)
    if reduce is None and total_loss is None:
        return 0.0, (0.0 if classification else None)
    device = total_loss.device if total_loss is not None else next(model.parameters()).device
    zero = torch.zeros((), dtype=torch.float64, device=device)
    loss_sum = zero if total_loss is None else total_loss
    correct_sum = zero if correct is None else correct.double()
    sums = torch.stack([loss_sum, correct_sum, zero + n])
    if reduce is not None:
        sums = reduce(sums)
    loss_sum, correct_sum, n = sums.tolist()  # the one host synchronisation
    if n == 0:
        return 0.0, (0.0 if classification else None)
    return loss_sum / n, (correct_sum / n if classification else None)


def to_cpu(state: Any) -> Any:
    """A nested state with every tensor on CPU, so that a checkpoint loads on any device."""
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return {k: to_cpu(v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(to_cpu(v) for v in state)
    return state


def save_state(state: dict[str, Any], file: str | IO[bytes]) -> None:
    torch.save(to_cpu(state), file)


def load_state(file: str | IO[bytes]) -> dict[str, Any]:
    """A checkpoint's state on CPU, wherever it was written: `TrainingRun.load_state_dict` moves
    the model and optimizer state to the run's device; RNG states must stay CPU tensors."""
    return torch.load(file, map_location="cpu", weights_only=True)


class TrainingRun:
    """A model, its optimizer and its data, advanced one epoch at a time.

    Used by the Ray trainable, by `tuner train` and by the benchmarks, so that all three train
    exactly the same way. `state_dict`/`load_state_dict` carry everything a resumed run needs, on
    CPU, so that a checkpoint written on one device resumes on another.

    Train metrics are measured like validation ones, in eval mode after the epoch, on a fixed
    seeded subsample of the training split as large as the validation split (`train_subsample`):
    a second full pass over the training data every epoch would cost as much as training does.

    `max_epochs` is the run's epoch budget, over which an `lr_schedule` is spread (a search
    trial's is the study's max_epochs, whether or not ASHA stops it earlier; needed by every
    schedule but constant). The recipe knobs (`trainables.recipe`) are checked here: a bad
    value raises a ValueError naming the key, the value and the rule.
    """

    def __init__(
        self,
        model_name: str,
        hparams: dict[str, Any],
        data: Dataset,
        device: torch.device | str = "cpu",
        seed: int = 0,
        options: TrainingOptions = TrainingOptions(),  # noqa: B008 (frozen, so shared safely)
        max_epochs: int | None = None,
    ):
        self.device = torch.device(device)
        self.options = options
        self.hparams = {**OPTIMIZER_DEFAULTS, **hparams}
        self.recipe = recipe_of(self.hparams, data)
        self.max_epochs = max_epochs
        self.classification = data.task == "classification"
        self.autocast_dtype = accel.device_autocast_dtype(options.precision, self.device)
        accel.configure_device(self.device)
        self.memory_format = accel.memory_format(model_name, data.sample_shape, self.device)
        torch.manual_seed(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.model = build_model(
            model_name, self.hparams, data.sample_shape, data.layout, data.output_dim
        ).to(self.device, memory_format=self.memory_format)
        #: what the loop calls: the model itself, or its compiled wrapper (which shares its
        #: parameters; checkpoints hold `model`'s state, the same with and without compile)
        self.forward_model = torch.compile(self.model) if options.compile else self.model
        self.optimizer = make_optimizer(
            self.model.parameters(), self.hparams, fused=self.device.type == "cuda"
        )
        self.scaler = accel.gradient_scaler(options.precision, self.device)
        #: what every reported loss is measured with; training's own is smoothed
        self.loss_fn = loss_function(data.task)
        self.train_loss_fn = loss_function(data.task, self.recipe.label_smoothing)
        self.train_data = place(data.x_train, data.y_train, self.device, options.data_on_device)
        self.val_data = place(data.x_val, data.y_val, self.device, options.data_on_device)
        self.train_rows = train_subsample(len(data.x_train), len(data.x_val), seed)
        #: the rows train metrics are measured on, gathered once: a validation-sized copy, where
        #: a gather every epoch cost 1 ms of a 90 ms epoch (the MLP on mnist_sample, 1 thread)
        self.train_metric_data = self.train_data
        if self.train_rows is not None:
            rows = self.train_rows.numpy()
            self.train_metric_data = place(
                data.x_train[rows], data.y_train[rows], self.device, options.data_on_device
            )
        self.batch_size = check_batch_size(self.hparams["batch_size"])
        self.lr_scheduler = make_lr_scheduler(
            self.optimizer,
            self.recipe,
            steps_per_epoch(len(data.x_train), self.batch_size),
            max_epochs,
        )
        self.augmentation = (
            None
            if self.recipe.augment == "none"
            else Augmentation(self.recipe.augment, max_shift(data.sample_shape))
        )
        self.epoch = 0
        self.compiled = False
        #: set from another thread to give up the epoch in progress at its next batch
        #: (`EpochCancelled`); the trainable's `ReportsAhead` sets it when Ray stops the trial
        self.cancel = threading.Event()
        #: what evaluates: the model (or its compiled wrapper), also once `shard` wrapped
        #: `forward_model` for data-parallel training, whose collectives evaluation must not run
        self.eval_model = self.forward_model
        #: (rank, workers, reduce) of a data-parallel worker (`shard`); None: the whole split
        self.sharding: tuple[int, int, Reduce] | None = None

    def shard(
        self, rank: int, workers: int, reduce: Reduce, wrap: Callable[[nn.Module], nn.Module]
    ):
        """Train as worker `rank` of `workers` data-parallel ones: the model wrapped by `wrap`
        (DistributedDataParallel: gradients averaged across workers), each global batch split
        into `workers` parts of batch_size / workers rows (`batches.shard_rows`: the same rows
        as one worker's batch), and evaluation on each worker's share of the rows with the
        sums added up by `reduce`, so every worker measures the same global metrics. Every
        worker must have been built with the same seed: the shuffle order is shared."""
        if self.batch_size % workers:
            raise ValueError(
                f"batch_size: {self.batch_size} is not divisible by resources.workers {workers}"
            )
        self.batch_size //= workers
        self.sharding = (rank, workers, reduce)
        wrapped = wrap(self.model)
        self.forward_model = torch.compile(wrapped) if self.options.compile else wrapped

    def autocast(self) -> AbstractContextManager:
        return accel.autocast(self.device, self.autocast_dtype)

    def _formatted(self, batches: Iterable[Batch]) -> Iterable[Batch]:
        if self.memory_format is torch.contiguous_format:
            yield from batches
            return
        for xb, yb in batches:
            yield xb.contiguous(memory_format=self.memory_format), yb

    def _cancellable(self, batches: Iterable[Batch]) -> Iterable[Batch]:
        for batch in batches:
            if self.cancel.is_set():
                raise EpochCancelled(f"epoch {self.epoch + 1} given up: the run was cancelled")
            yield batch

    def _train_batches(self) -> Iterable[Batch]:
        """The epoch's shuffled training batches, augmented when the recipe says so (with
        draws from the run's generator after the shuffle's, so a resumed run draws the same)."""
        order = torch.randperm(len(self.train_data), generator=self.generator)
        if self.sharding is not None:
            rank, workers, _ = self.sharding
            order = shard_rows(order, rank, workers)
        n = len(order)
        batches = self.train_data.batches(self.batch_size, order)
        if self.augmentation is not None:
            batches = self.augmentation.batches(batches, n, self.generator, self.device)
        return self._cancellable(self._formatted(batches))

    def _eval_batches(self) -> tuple[Iterable[Batch], Iterable[Batch]]:
        train_rows = val_rows = None
        if self.sharding is not None:  # each worker its share of the rows, none twice
            rank, workers, _ = self.sharding
            train_rows, val_rows = (
                shard_rows(torch.arange(len(split)), rank, workers, pad=False)
                for split in (self.train_metric_data, self.val_data)
            )
        train = self.train_metric_data.batches(EVAL_BATCH_SIZE, train_rows)
        val = self.val_data.batches(EVAL_BATCH_SIZE, val_rows)
        return self._cancellable(self._formatted(train)), self._cancellable(self._formatted(val))

    def _evaluate(self, batches: Iterable[Batch]) -> tuple[float, float | None]:
        reduce = self.sharding[2] if self.sharding is not None else None
        return evaluate(
            self.eval_model, self.loss_fn, batches, self.classification, self.autocast(), reduce
        )

    def _warm_up(self) -> float:
        """Compile every graph this run will need (train and eval mode, each batch shape) by one
        forward and backward pass of each, then restore the model, gradients and RNGs, so that
        training goes on as if nothing ran. Returns the seconds it took."""
        start = time.perf_counter()
        n = len(self.train_data)
        sizes = {min(self.batch_size, n), n % self.batch_size}
        train_shapes = [s for s in sizes if s >= 2 or (s == 1 and n < 2)]
        with accel.preserved_training_state(self.model, self.device):
            self.forward_model.train()
            for size in train_shapes:
                xb, yb = next(iter(self._formatted(self.train_data.batches(size))))
                _, loss = batch_loss(self.forward_model, self.loss_fn, xb, yb, self.autocast())
                loss.backward()
            for batches in self._eval_batches():
                self._evaluate(batches)
        return time.perf_counter() - start

    def run_epoch(self) -> dict[str, float]:
        """Train one epoch, then measure train and validation metrics in eval mode."""
        compile_time = None
        if self.options.compile and not self.compiled:
            compile_time = self._warm_up()
            self.compiled = True
        start = time.perf_counter()
        train_epoch(
            self.forward_model,
            self.optimizer,
            self.scaler,
            self.train_loss_fn,
            self._train_batches(),
            len(self.train_data),
            self.autocast(),
            grad_clip_norm=self.recipe.grad_clip_norm,
            lr_scheduler=self.lr_scheduler,
        )
        train_batches, val_batches = self._eval_batches()
        train_loss, train_acc = self._evaluate(train_batches)
        val_loss, val_acc = self._evaluate(val_batches)
        self.epoch += 1
        result = {
            m.EPOCH: self.epoch,
            m.TRAIN_LOSS: train_loss,
            m.VAL_LOSS: val_loss,
            m.GENERALIZATION_GAP: val_loss - train_loss,
            m.EPOCH_TIME_S: time.perf_counter() - start,
        }
        if compile_time is not None:
            result[m.COMPILE_TIME_S] = compile_time
        if self.classification:
            result[m.TRAIN_ACC] = train_acc
            result[m.VAL_ACC] = val_acc
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            result[m.DIVERGED] = 1
        return result

    def costs(self, latency: bool = False) -> dict[str, float]:
        """What the model costs (`trainables.costs`): its parameter count, and with `latency`
        its per-sample inference time on this run's device, on the first validation rows."""
        if not latency:
            return model_costs(self.model)
        xb, _ = next(iter(self._formatted(self.val_data.batches(LATENCY_BATCH))))
        return model_costs(self.model, xb.clone(), self.autocast())

    def test_metrics(self, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """test_loss (and test_acc) of the model as it is now on the held-out test split, in eval
        mode, measured like validation."""
        batches = place(x, y, self.device, self.options.data_on_device).batches(EVAL_BATCH_SIZE)
        loss, acc = evaluate(
            self.eval_model,
            self.loss_fn,
            self._formatted(batches),
            self.classification,
            self.autocast(),
        )
        return {m.TEST_LOSS: loss, **({m.TEST_ACC: acc} if self.classification else {})}

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs, every tensor on CPU (device-independent)."""
        return to_cpu(
            {
                "epoch": self.epoch,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),  # empty unless fp16
                #: the lr schedule's step count (None: the lr never changes)
                "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler else None,
                "generator": self.generator.get_state(),
                "torch_rng": torch.get_rng_state(),  # dropout masks come from the global RNG
                "cuda_rng": torch.cuda.get_rng_state(self.device)
                if self.device.type == "cuda"
                else None,
            }
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from `state_dict()`, written on any device: the model and optimizer state move
        to this run's device; RNG states go back where they belong (the CUDA one only on CUDA)."""
        self.epoch = int(state["epoch"])
        self.model.load_state_dict(state["model"])
        load_optimizer_state(self.optimizer, state["optimizer"])
        if state.get("scaler"):  # a checkpoint of an fp32/bf16 run resumed in fp16 has none
            self.scaler.load_state_dict(state["scaler"])
        if self.lr_scheduler is not None and state.get("lr_scheduler"):
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.generator.set_state(state["generator"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        if state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), self.device)
