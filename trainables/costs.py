"""What a model costs, measured the same way in every trial: its trainable parameters and its
per-sample inference latency. Pure PyTorch, no Ray.

Latency is measured on a fixed batch (the first `LATENCY_BATCH` validation rows, the same for
every trial of a study), in eval mode under the trial's precision, on the trial's device: a few
warm-up passes, then the median of timed repeats (on CUDA each synchronised), divided by the
batch's rows. The measurement touches no RNG and leaves the model in the mode it found it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from trainables import metrics as m

LATENCY_BATCH = 64  # rows per timed forward pass
WARM_UP_PASSES = 3  # untimed passes first (allocator, cuDNN autotuning, lazy init)
TIMED_PASSES = 9  # the median of these


def parameter_count(model: nn.Module) -> int:
    """Trainable parameters (those with requires_grad), each shared tensor counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def synchronizer(device: torch.device) -> Callable[[], None]:
    """What waits for the device's queued work: CUDA synchronises, CPU runs eagerly."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


@torch.inference_mode()
def inference_ms(
    model: nn.Module,
    batch: torch.Tensor,
    autocast: AbstractContextManager | None = None,
    warm_up: int = WARM_UP_PASSES,
    repeats: int = TIMED_PASSES,
) -> float:
    """Median milliseconds per sample of `model`'s eval-mode forward pass over `batch` (already
    on the model's device)."""
    if len(batch) == 0:
        raise ValueError("inference_ms needs a batch of at least one row")
    was_training = model.training
    model.eval()
    sync = synchronizer(batch.device)
    times = []
    try:
        for index in range(warm_up + repeats):
            sync()
            start = time.perf_counter()
            with autocast or nullcontext():
                model(batch)
            sync()
            if index >= warm_up:
                times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return statistics.median(times) * 1000 / len(batch)


def model_costs(
    model: nn.Module,
    batch: torch.Tensor | None = None,
    autocast: AbstractContextManager | None = None,
) -> dict[str, float]:
    """`params` always; `inference_ms` too when a batch to time is given."""
    costs: dict[str, float] = {m.PARAMS: parameter_count(model)}
    if batch is not None:
        costs[m.INFERENCE_MS] = inference_ms(model, batch, autocast)
    return costs
