"""How much device memory one trial needs: data, weights, optimizer state, activations, context.

Pure PyTorch, measured on the CPU, so the driver can check a packing of trials onto GPUs before
any GPU is touched. The figures follow the training loop (trainables/loop.py):

- data: every split as whole tensors on the device, and a validation-sized copy of training rows
  for the train metrics (or, with the data in host memory, one training batch and one
  evaluation batch copied over);
- parameters (and buffers, e.g. batch-norm statistics) and their gradients, fp32;
- optimizer state: Adam and AdamW keep two tensors per parameter, SGD with momentum one;
- activations: what autograd saves for the backward pass at the config's batch size, plus one
  activation gradient as large as the largest layer output; or, if larger, an evaluation batch
  (no autograd, the largest layer's input and output alive at once). Training and evaluation do
  not overlap, so the larger of the two counts. Measured with two small forward passes on the CPU
  (saved tensors through autograd's pack hook, layer sizes through forward hooks) and scaled
  linearly in the batch size; with bf16/fp16 the passes run under CPU autocast, and a half-size
  copy of the weights (autocast's cast cache) is added;
- CUDA context: a constant per trial process (`CUDA_CONTEXT_BYTES`).

It is an estimate: the caching allocator's rounding, cuDNN/cuBLAS workspaces beyond the
constant and fragmentation come on top, and CPU autocast casts a few ops differently from CUDA.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from trainables.data import Dataset
from trainables.loop import (
    EVAL_BATCH_SIZE,
    OPTIMIZER_DEFAULTS,
    TrainingOptions,
    loss_function,
    subsample_size,
)
from trainables.models import build_model

GIB = 1024**3
#: what a process's CUDA context takes on the device before any tensor (the driver's context,
#: cuBLAS and cuDNN handles and workspaces): 300-600 MiB on recent GPUs and CUDA 12; each trial
#: is its own process, so each pays it
CUDA_CONTEXT_BYTES = 512 * 1024**2
#: optimizer state per parameter byte: Adam/AdamW keep exp_avg and exp_avg_sq
ADAM_STATE_FACTOR = 2
#: the two small batch sizes the activation probe runs at (two points fix a line a + b * batch)
PROBE_BATCHES = (2, 4)
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one trial holds on its device; `total` adds them up."""

    batch_size: int
    data: int  # every split, when the data sits on the device
    batch_data: int  # one training and one evaluation batch, when the data stays in host memory
    parameters: int
    gradients: int
    optimizer_state: int
    activations: int
    cuda_context: int = CUDA_CONTEXT_BYTES

    def total(self, data_on_device: bool = True) -> int:
        data = self.data if data_on_device else self.batch_data
        rest = self.parameters + self.gradients + self.optimizer_state + self.activations
        return data + rest + self.cuda_context

    def breakdown(self, data_on_device: bool = True) -> str:
        """One line: the total and each part, in GiB (MiB below one GiB)."""
        data = (
            f"data {gib(self.data)}"
            if data_on_device
            else f"data batches {gib(self.batch_data)} (dataset in host memory)"
        )
        parts = [
            data,
            f"parameters {gib(self.parameters)}",
            f"gradients {gib(self.gradients)}",
            f"optimizer state {gib(self.optimizer_state)}",
            f"activations {gib(self.activations)} (training at batch_size {self.batch_size} "
            "or an evaluation batch, the larger)",
            f"CUDA context {gib(self.cuda_context)}",
        ]
        return f"{gib(self.total(data_on_device))} = " + " + ".join(parts)


def gib(nbytes: float) -> str:
    if nbytes >= 0.1 * GIB:
        return f"{nbytes / GIB:.2f} GiB"
    return f"{nbytes / 1024**2:.1f} MiB"


def estimate_trial_memory(
    model_name: str,
    hparams: dict[str, Any],
    data: Dataset,
    options: TrainingOptions | None = None,
) -> MemoryEstimate:
    """The device memory one trial with these hyperparameters needs (see the module docstring)."""
    options = options or TrainingOptions()
    hp = {**OPTIMIZER_DEFAULTS, **hparams}
    batch_size = int(hp["batch_size"])
    model = build_model(model_name, hp, data.sample_shape, data.layout, data.output_dim)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    cast_cache = params // 2 if options.precision in AUTOCAST_DTYPES else 0
    eval_rows = min(EVAL_BATCH_SIZE, max(len(data.x_train), len(data.x_val)))
    return MemoryEstimate(
        batch_size=batch_size,
        data=dataset_bytes(data),
        batch_data=row_bytes(data) * (batch_size + eval_rows),
        parameters=params + buffers,
        gradients=trainable,
        optimizer_state=trainable * optimizer_state_factor(hp),
        activations=cast_cache
        + activation_bytes(model, data, batch_size, eval_rows, options.precision),
    )


def dataset_bytes(data: Dataset) -> int:
    """Every split, and the copy of the training rows the train metrics are measured on
    (`TrainingRun.train_metric_data`: as many as the validation split has, when fewer than all)."""
    splits = sum(a.nbytes for a in (data.x_train, data.y_train, data.x_val, data.y_val))
    return splits + subsample_size(len(data.x_train), len(data.x_val)) * row_bytes(data)


def row_bytes(data: Dataset) -> int:
    """One sample's input and target."""
    return data.x_train[:1].nbytes + data.y_train[:1].nbytes


def optimizer_state_factor(hparams: dict[str, Any]) -> int:
    """Optimizer state per parameter byte: 2 for Adam/AdamW, 1 for SGD with momentum, else 0."""
    name = hparams["optimizer"]
    if name in ("adam", "adamw"):
        return ADAM_STATE_FACTOR
    return 1 if name == "sgd" and float(hparams["momentum"]) > 0 else 0


def activation_bytes(
    model: nn.Module, data: Dataset, batch_size: int, eval_rows: int, precision: str = "fp32"
) -> int:
    """The larger of training (saved tensors + one activation gradient) at `batch_size` and
    evaluation at `eval_rows`, extrapolated from two small probe batches."""
    probes = [probe(model, data, n, precision) for n in PROBE_BATCHES]
    (n1, (saved1, widest1, live1)), (n2, (saved2, widest2, live2)) = zip(
        PROBE_BATCHES, probes, strict=True
    )

    def at(rows: int, small: int, large: int) -> int:
        per_row = (large - small) / (n2 - n1)
        return max(0, math.ceil(small + per_row * (rows - n1)))

    training = at(batch_size, saved1, saved2) + at(batch_size, widest1, widest2)
    evaluation = at(eval_rows, live1, live2)
    return max(training, evaluation)


def probe(model: nn.Module, data: Dataset, rows: int, precision: str) -> tuple[int, int, int]:
    """One training-mode forward pass and loss on `rows` samples: bytes autograd saves for
    backward (parameters excluded, each storage once), the largest layer output, and the largest
    input + output of a layer (what evaluation holds at once)."""
    x = torch.from_numpy(np.ascontiguousarray(data.x_train[:rows]))
    y = torch.from_numpy(np.ascontiguousarray(data.y_train[:rows]))
    if len(x) < rows:  # fewer samples than the probe: repeat them
        x, y = x.repeat_interleave(math.ceil(rows / len(x)), 0)[:rows], y.repeat(rows)[:rows]
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    model.train()
    keep = torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor)
    with layer_sizes(model) as sizes, autocast(precision), keep:
        loss_function(data.task)(model(x), y)
    widest = max((out for _, out in sizes), default=0)
    live = max((inp + out for inp, out in sizes), default=0)
    return sum(saved.values()), widest, live


@contextmanager
def layer_sizes(model: nn.Module) -> Iterator[list[tuple[int, int]]]:
    """Forward hooks on every leaf module recording (input bytes, output bytes)."""
    sizes: list[tuple[int, int]] = []

    def hook(_module: nn.Module, inputs: tuple, output: Any) -> None:
        sizes.append((tensor_bytes(inputs), tensor_bytes(output)))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        yield sizes
    finally:
        for handle in handles:
            handle.remove()


def tensor_bytes(value: Any) -> int:
    """Bytes of the tensors in a (nested) tuple of module inputs or outputs."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, tuple | list):
        return sum(tensor_bytes(v) for v in value)
    return 0


@contextmanager
def autocast(precision: str) -> Iterator[None]:
    if precision not in AUTOCAST_DTYPES:
        yield
        return
    with torch.autocast("cpu", dtype=AUTOCAST_DTYPES[precision]):
        yield
