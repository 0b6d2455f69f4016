"""The training loop: one epoch of training, one of evaluation. Pure PyTorch, no Ray, no MLflow.

Data sits on the device as whole tensors and is batched by index, so an epoch costs no DataLoader
workers, no collation and no host-to-device copies.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from trainables import metrics as m
from trainables.data import Dataset
from trainables.models import build_model

#: Optimisation hyperparameters every model takes, with the textbook defaults.
OPTIMIZER_DEFAULTS: dict[str, Any] = {
    "lr": 1e-3,
    "batch_size": 64,
    "optimizer": "adam",
    "weight_decay": 0.0,
    "momentum": 0.9,  # sgd only
}
OPTIMIZERS = ("adam", "adamw", "sgd")
EVAL_BATCH_SIZE = 4096
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class TrainingOptions:
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; GradScaler for fp16)
    compile: bool = False  # torch.compile; compile time reported as its own metric
    data_on_device: bool = True  # False: data stays in host memory (pinned on CUDA),
    # copied per batch, non-blocking


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


def make_optimizer(params, hp: dict[str, Any]) -> torch.optim.Optimizer:
    optimizer_class, kwargs = optimizer_settings(hp)
    return optimizer_class(params, **kwargs)


def check_trainable(model_name: str, hparams: dict[str, Any], data: Dataset) -> None:
    """Fail as a trial would if these hyperparameters cannot train on `data`: build the model and
    run one forward and backward pass on its first 2 samples. The optimizer is checked but not
    built: the first optimizer of a process imports torch._dynamo (1.5 s on 2 cores), which the
    driver never needs."""
    hp = {**OPTIMIZER_DEFAULTS, **hparams}
    optimizer_settings(hp)
    int(hp["batch_size"])
    model = build_model(model_name, hp, data.sample_shape, data.layout, data.output_dim)
    x = torch.from_numpy(np.ascontiguousarray(data.x_train[:2]))
    y = torch.from_numpy(np.ascontiguousarray(data.y_train[:2]))
    loss_function(data.task)(model(x), y).backward()


class RegressionLoss(nn.MSELoss):
    """MSE of a (N, 1) prediction against a (N,) target (plain MSELoss would broadcast to N x N)."""

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().forward(prediction.squeeze(-1), target)


def loss_function(task: str) -> nn.Module:
    return nn.CrossEntropyLoss() if task == "classification" else RegressionLoss()


@dataclass
class DeviceData:
    """A dataset's splits as tensors on one device."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor

    @classmethod
    def from_dataset(cls, data: Dataset, device: torch.device) -> DeviceData:
        def put(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(device)

        return cls(put(data.x_train), put(data.y_train), put(data.x_val), put(data.y_val))


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
) -> None:
    """One pass over (x, y) in shuffled mini-batches."""
    model.train()
    order = torch.randperm(len(x), generator=generator).to(x.device)
    for start in range(0, len(x), batch_size):
        idx = order[start : start + batch_size]
        if len(idx) < 2 and len(x) >= 2:  # a 1-sample batch breaks batch norm; skip the tail
            continue
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        optimizer.step()


@torch.inference_mode()
def evaluate(
    model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor, classification: bool
) -> tuple[float, float | None]:
    """Mean loss (and accuracy for classification) in eval mode."""
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(x), EVAL_BATCH_SIZE):
        xb, yb = x[start : start + EVAL_BATCH_SIZE], y[start : start + EVAL_BATCH_SIZE]
        out = model(xb)
        total_loss += float(loss_fn(out, yb)) * len(xb)
        if classification:
            correct += int((out.argmax(dim=1) == yb).sum())
    n = max(len(x), 1)
    return total_loss / n, (correct / n if classification else None)


class TrainingRun:
    """A model, its optimizer and its data, advanced one epoch at a time.

    Used by the Ray trainable, by `tuner train` and by the benchmarks, so that all three train
    exactly the same way. `state_dict`/`load_state_dict` carry everything a resumed run needs.
    """

    def __init__(
        self,
        model_name: str,
        hparams: dict[str, Any],
        data: Dataset,
        device: torch.device | str = "cpu",
        seed: int = 0,
        options: TrainingOptions = TrainingOptions(),  # placeholder until the loop side lands
    ):
        self.device = torch.device(device)
        self.options = options
        self.hparams = {**OPTIMIZER_DEFAULTS, **hparams}
        self.classification = data.task == "classification"
        torch.manual_seed(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.model = build_model(
            model_name, self.hparams, data.sample_shape, data.layout, data.output_dim
        ).to(self.device)
        self.optimizer = make_optimizer(self.model.parameters(), self.hparams)
        self.loss_fn = loss_function(data.task)
        self.tensors = DeviceData.from_dataset(data, self.device)
        self.batch_size = int(self.hparams["batch_size"])
        self.epoch = 0

    def run_epoch(self) -> dict[str, float]:
        """Train one epoch, then measure train and validation metrics in eval mode."""
        t = self.tensors
        start = time.perf_counter()
        train_epoch(
            self.model,
            self.optimizer,
            self.loss_fn,
            t.x_train,
            t.y_train,
            self.batch_size,
            self.generator,
        )
        train_loss, train_acc = evaluate(
            self.model, self.loss_fn, t.x_train, t.y_train, self.classification
        )
        val_loss, val_acc = evaluate(
            self.model, self.loss_fn, t.x_val, t.y_val, self.classification
        )
        self.epoch += 1
        result = {
            m.EPOCH: self.epoch,
            m.TRAIN_LOSS: train_loss,
            m.VAL_LOSS: val_loss,
            m.GENERALIZATION_GAP: val_loss - train_loss,
            m.EPOCH_TIME_S: time.perf_counter() - start,
        }
        if self.classification:
            result[m.TRAIN_ACC] = train_acc
            result[m.VAL_ACC] = val_acc
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            result[m.DIVERGED] = 1
        return result

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),  # dropout masks come from the global RNG
            "cuda_rng": torch.cuda.get_rng_state(self.device)
            if self.device.type == "cuda"
            else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"].cpu())
        if state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), self.device)
