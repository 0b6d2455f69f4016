"""What a trial uses, measured inside it: peak memory, its GPU share, GPU-hours, and (where NVML
answers) GPU utilisation and energy. Pure PyTorch and the OS; the share comes from the caller.

Peak memory is the number the GPU packing (`resources.gpu: auto`) learns from:

- on a GPU, the CUDA caching allocator's peak (`torch.cuda.max_memory_allocated`), its peak
  statistics reset when the trial starts: the tensors the trial held at its worst moment. The
  CUDA context and the allocator's cached-but-free blocks are not in it (the memory estimate
  counts the context apart, `trainables.memory.CUDA_CONTEXT_BYTES`);
- on the CPU, the growth of the process's peak resident set size since the trial started: the
  kernel's high-water mark `VmHWM`, reset at the start through `/proc/self/clear_refs` (Linux
  4.0+), less the resident size then. A Ray actor runs trial after trial (`reuse_actors`), so
  `getrusage`'s `ru_maxrss`, a lifetime peak that never comes down, would credit a small trial
  with a larger predecessor's peak; where the reset is refused, `ru_maxrss` is the fallback.
  Memory the process freed earlier and kept (the C allocator's free lists) is reused without
  growing the resident set, so on the CPU the figure can fall short of what the trial holds.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from trainables import metrics as m

MIB = 1024**2
PROC_STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


class TrialOutOfMemory(RuntimeError):
    """A trial ran out of GPU memory at its share; raised so that Ray retries it (from its last
    checkpoint) at the larger share the driver gives it (`tuner.driver.gpu_shares`)."""


def out_of_memory_message(share: float, error: BaseException) -> str:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"{m.OUT_OF_MEMORY_ERROR} {share:g}: {first[:300]}"


def proc_status_kib(field: str) -> int | None:
    """A `VmRSS:`-style line of /proc/self/status, in KiB (None where there is no such file)."""
    try:
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak resident set size of this process (True if it took)."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def max_rss_kib() -> int:
    """The process's lifetime peak resident set size, in KiB (`ru_maxrss`: bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak


def resident_kib() -> int:
    rss = proc_status_kib("VmRSS")
    return rss if rss is not None else max_rss_kib()


class UsageMeter:
    """Started as a trial starts (before its model and data are built); `epoch()` is what each
    epoch's result adds."""

    def __init__(self, device: torch.device, share: float, gpu_hours_before: float = 0.0):
        self.device, self.share = device, share
        self.gpu_hours_before = gpu_hours_before
        self.epochs = 0  # epochs the trial has finished (the trainable keeps it current)
        self.started = time.monotonic()
        self.utilisation: list[float] = []
        self._refused: set[str] = set()  # NVML figures that failed once (not asked again)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self._peak_reset = device.type != "cuda" and reset_peak_rss()
        self._rss_start = resident_kib()
        self._energy_start = self._energy_mj()

    def resume(self, reported: list[dict[str, float]]) -> None:
        """A trial restored from a checkpoint: its GPU-hours go on from the checkpoint's."""
        if reported:
            self.gpu_hours_before = float(reported[-1].get(m.GPU_HOURS, 0.0) or 0.0)
            self.epochs = int(reported[-1].get(m.EPOCH, 0))

    def peak_memory_mb(self) -> float:
        """See the module docstring: the allocator's peak on CUDA, resident growth on the CPU."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / MIB
        peak = proc_status_kib("VmHWM") if self._peak_reset else None
        if peak is None:
            peak = max(max_rss_kib(), resident_kib())
        return max(0, peak - self._rss_start) / 1024

    def gpu_hours(self) -> float:
        return self.gpu_hours_before + self.share * (time.monotonic() - self.started) / 3600

    def epoch(self) -> dict[str, float]:
        """This epoch's usage: every figure so far (peak, hours), the NVML ones where present."""
        usage = {
            m.PEAK_MEMORY_MB: round(self.peak_memory_mb(), 3),
            m.GPU_SHARE: self.share,
            m.GPU_HOURS: self.gpu_hours(),
        }
        utilisation = self._nvml_call("utilisation", torch.cuda.utilization, self.device)
        if utilisation is not None:
            self.utilisation.append(float(utilisation))
            usage[m.GPU_UTIL_PCT] = statistics.fmean(self.utilisation)
        energy = self._energy_mj()
        if energy is not None and self._energy_start is not None:
            # the whole GPU's energy, at this trial's share of it
            usage[m.ENERGY_WH] = self.share * (energy - self._energy_start) / 3.6e6
        return usage

    def out_of_memory_row(self, epoch: int) -> dict[str, Any]:
        """The result a trial ends with when it ran out of memory for good: the epoch it could
        not finish, its usage, no loss (NaN: the scheduler and searcher still find the
        objective's key), and `out_of_memory` set to the share it had."""
        nan = float("nan")
        losses = {k: nan for k in (*m.OBJECTIVES, *m.MODEL_COSTS)}
        return {m.EPOCH: epoch, **losses, **self.epoch(), m.OUT_OF_MEMORY: self.share}

    def _energy_mj(self) -> float | None:
        """The GPU's energy counter (mJ since the driver loaded), where pynvml answers."""
        if self.device.type != "cuda":
            return None

        def read(device: torch.device) -> float:
            import pynvml

            pynvml.nvmlInit()
            uuid = str(torch.cuda.get_device_properties(device).uuid)
            name = uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
            handle = pynvml.nvmlDeviceGetHandleByUUID(name)
            return float(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))

        return self._nvml_call("energy", read, self.device)

    def _nvml_call(self, what: str, function, *args: Any) -> Any:
        """NVML (pynvml) may be absent or refuse (no driver, a MIG slice, an old GPU without an
        energy counter): then the figure is left out, silently, and not asked for again."""
        if self.device.type != "cuda" or what in self._refused:
            return None
        try:
            return function(*args)
        except Exception:  # ModuleNotFoundError, pynvml's NVMLError, RuntimeError, ...
            self._refused.add(what)
            return None
