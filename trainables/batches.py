"""How a split's mini-batches reach the device: resident on it, or copied from host memory.

`OnDevice` holds the whole split on the device and batches it by index: no copy per batch, but
one copy of the data per trial on the device. `InHostMemory` keeps the split in host memory and,
per batch, gathers the rows into a pinned staging buffer (on CUDA) and copies it to the device
without blocking, so the next batch is gathered while the GPU works on this one. Both yield the
same batches in the same order, so a run gives the same numbers either way.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

Batch = tuple[torch.Tensor, torch.Tensor]


def as_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


class OnDevice:
    """A split's tensors on the device, batched by index."""

    def __init__(self, x: np.ndarray, y: np.ndarray, device: torch.device):
        self.x, self.y = as_tensor(x).to(device), as_tensor(y).to(device)

    def __len__(self) -> int:
        return len(self.x)

    def batches(self, batch_size: int, order: torch.Tensor | None = None) -> Iterator[Batch]:
        """Batches of `batch_size` in `order` (row indices), or in stored order when None."""
        if order is not None:
            order = order.to(self.x.device)  # one copy per pass, not one per batch
        for start in range(0, len(order if order is not None else self.x), batch_size):
            if order is None:
                yield self.x[start : start + batch_size], self.y[start : start + batch_size]
            else:
                idx = order[start : start + batch_size]
                yield self.x[idx], self.y[idx]


@dataclass
class Stage:
    """A staging buffer pair and the event that marks its last copy to the device done."""

    x: torch.Tensor
    y: torch.Tensor
    copied: torch.cuda.Event | None = None


class InHostMemory:
    """A split's tensors in host memory; each batch gathered into one of two staging buffers
    (pinned on CUDA) and copied to the device with `non_blocking=True`.

    A buffer is rewritten only after the copy out of it has finished (its CUDA event), so the host
    can run at most one batch ahead of the device and never overwrites rows still in flight. On
    CPU the "copy" is the buffer itself, consumed before the next-but-one batch reuses it.
    """

    STAGES = 2

    def __init__(self, x: np.ndarray, y: np.ndarray, device: torch.device):
        self.x, self.y = as_tensor(x), as_tensor(y)
        self.device = device
        self.pinned = device.type == "cuda"
        self._stages: dict[int, list[Stage]] = {}
        self._next: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.x)

    def _stage(self, batch_size: int) -> Stage:
        """The next staging buffer pair for batches of this size, free to be written."""
        if batch_size not in self._stages:
            self._stages[batch_size] = [
                Stage(self._buffer(self.x, batch_size), self._buffer(self.y, batch_size))
                for _ in range(self.STAGES)
            ]
            self._next[batch_size] = 0
        k = self._next[batch_size]
        self._next[batch_size] = (k + 1) % self.STAGES
        stage = self._stages[batch_size][k]
        if stage.copied is not None:
            stage.copied.synchronize()
        return stage

    def _buffer(self, like: torch.Tensor, rows: int) -> torch.Tensor:
        return torch.empty((rows, *like.shape[1:]), dtype=like.dtype, pin_memory=self.pinned)

    def batches(self, batch_size: int, order: torch.Tensor | None = None) -> Iterator[Batch]:
        """Batches of `batch_size` in `order` (row indices, on CPU), or in stored order."""
        n = len(order) if order is not None else len(self.x)
        size = min(batch_size, n)
        for start in range(0, n, batch_size):
            stage = self._stage(size)
            rows = min(batch_size, n - start)
            bx, by = stage.x[:rows], stage.y[:rows]
            if order is None:
                bx.copy_(self.x[start : start + rows])
                by.copy_(self.y[start : start + rows])
            else:
                idx = order[start : start + rows]
                torch.index_select(self.x, 0, idx, out=bx)
                torch.index_select(self.y, 0, idx, out=by)
            xb = bx.to(self.device, non_blocking=True)
            yb = by.to(self.device, non_blocking=True)
            if self.pinned:
                stage.copied = torch.cuda.Event()
                stage.copied.record()
            yield xb, yb


def place(x: np.ndarray, y: np.ndarray, device: torch.device, on_device: bool):
    """A split on the device, or in host memory copied per batch."""
    return OnDevice(x, y, device) if on_device else InHostMemory(x, y, device)


def shard_rows(order: torch.Tensor, rank: int, world: int, pad: bool = True) -> torch.Tensor:
    """Rank `rank`'s rows of `order` among `world` data-parallel workers, as torch's
    DistributedSampler takes them: every world-th row from the rank's offset, the order first
    padded with its own head to a multiple of `world` (`pad`, for training: every worker then
    takes the same number of batches, which DDP's collectives need). Batched at
    batch_size / world, the workers' k-th batches together hold exactly the rows of the k-th
    batch of `order` at batch_size (one worker's), up to the padding. Without `pad` (evaluation,
    whose sums are added up across workers) no row is counted twice."""
    n = len(order)
    if pad and n % world:
        extra = world - n % world
        head = order[:extra].repeat(math.ceil(extra / n))  # n < extra: the head repeated
        order = torch.cat([order, head])[: n + extra]
    return order[rank::world]
