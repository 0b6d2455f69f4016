"""`gpu_packing`, `gpu_precision`: what a GPU gives tuner's trials (skipped without CUDA).

- `gpu_packing` (report): trials per hour of the MNIST CNN at gpu 1, 0.5, 0.25 and 0.125 per
  trial (as many trials at once as the GPUs hold), with the GPU's mean utilisation and peak
  memory per trial: whether sharing a GPU between trials pays.
- `gpu_precision` (>= 1.0): epochs per second of one TrainingRun in bf16 and through
  torch.compile against fp32, alternating in one process: whether the precision options pay.

Full MNIST when $TUNER_BENCH_MNIST names a folder of its IDX files, else mnist_sample. Runs on a
bare GPU machine too (benchmarks/gpu_check.sh), where Ray and tuner may be missing.
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    LR,
    Benchmark,
    Workload,
    median_sample,
    repeats_text,
    spread,
    study_spec,
)
from trainables import metrics as m

NO_GPU = "skipped: no CUDA GPU on this machine"
#: a folder of full-MNIST IDX files; without it the GPU benchmarks use mnist_sample (5,000)
MNIST_FOLDER_ENV = "TUNER_BENCH_MNIST"
GPU_FRACTIONS = (1, 0.5, 0.25, 0.125)


def skipped(name: str, why: str) -> dict[str, Any]:
    return {
        "name": name,
        "ratio": None,
        "spread": None,
        "target": "skipped",
        "detail": why,
        "samples": [],
    }


def mnist_dataset() -> dict[str, Any]:
    """The dataset section of the GPU benchmarks: full MNIST when $TUNER_BENCH_MNIST names a
    folder of its IDX files, else mnist_sample."""
    folder = os.environ.get(MNIST_FOLDER_ENV)
    return {"name": "mnist", "path": folder} if folder else {"name": "mnist_sample"}


def gpu_packing(quick: bool) -> dict[str, Any]:
    """Trials per hour of the MNIST CNN at gpu 1, 0.5, 0.25 and 0.125 per trial (as many trials
    at once as the GPUs hold), with the GPU's mean utilisation and peak memory per trial."""
    if not torch.cuda.is_available():
        return skipped("gpu_packing", NO_GPU)
    try:
        from tuner.driver.ray_session import ray_session
        from tuner.driver.study import run_study
        from tuner.spec.job_spec import spec_from_dict
    except ImportError as exc:
        return skipped("gpu_packing", f"skipped: {exc.name} is not installed on this machine")
    dataset = mnist_dataset()
    work = Workload(
        "cnn",
        dataset["name"],
        {"channels": {"type": "categorical", "choices": [16, 32]}, "conv_blocks": 2, "lr": LR},
        trials=8 if quick else 16,
        epochs=3,
    )
    gpus = torch.cuda.device_count()
    # full mode: the fractions forward, then backward, so neither end always runs first
    orders = [GPU_FRACTIONS] if quick else [GPU_FRACTIONS, GPU_FRACTIONS[::-1]]
    samples = []
    with gpu_sampler() as sampler:
        for order in orders:
            for fraction in order:
                concurrent = max(1, int(gpus / fraction))
                with tempfile.TemporaryDirectory() as folder:
                    spec = study_spec(work, Path(folder), resources={"gpu": fraction, "cpu": 1})
                    spec["dataset"] = dataset
                    spec["search"]["max_concurrent"] = concurrent
                    began = time.time()
                    start = time.perf_counter()
                    with ray_session(num_cpus=max(2, concurrent)):
                        run_study(spec_from_dict(spec), show_progress=False)
                    wall = time.perf_counter() - start
                    ended = time.time()
                gpu = sampler.summary(began, ended)
                samples.append(
                    {
                        "gpu_fraction": fraction,
                        "concurrent_trials": concurrent,
                        "wall_s": wall,
                        "trials_per_hour": work.trials / wall * 3600,
                        **gpu,
                        **memory_per_trial(gpu, trials_per_gpu=max(1, int(1 / fraction))),
                    }
                )
    by_fraction = {
        f: {
            key: statistics.mean(s[key] for s in samples if s["gpu_fraction"] == f)
            if all(s[key] is not None for s in samples if s["gpu_fraction"] == f)
            else None
            for key in ("trials_per_hour", "mean_gpu_utilisation", "peak_memory_per_trial_mib")
        }
        for f in GPU_FRACTIONS
    }
    best = max(v["trials_per_hour"] for v in by_fraction.values())

    def shown(f: float) -> str:
        v = by_fraction[f]
        utilisation = optional(v["mean_gpu_utilisation"], "{:.0f}%")
        memory = optional(v["peak_memory_per_trial_mib"], "{:.0f} MiB")
        return f"gpu {f}: {v['trials_per_hour']:.0f}/h, {utilisation}, {memory}"

    return {
        "name": "gpu_packing",
        "ratio": best / by_fraction[1]["trials_per_hour"],
        "spread": spread(pass_ratios(samples)),
        "target": "report",
        "detail": f"CNN on {dataset['name']}, {work.trials} trials x {work.epochs} epochs per "
        f"fraction, {gpus} GPU(s); trials/hour, mean GPU utilisation, peak memory per trial "
        f"({sampler.source}): " + "; ".join(shown(f) for f in GPU_FRACTIONS),
        "spans": {
            "tuner": "each fraction: a local Ray started, run_study of the trials (as many at "
            "once as the GPUs hold at that fraction), Ray stopped; trials/hour from that wall "
            "time. The ratio is the best fraction's trials/hour over a whole GPU per trial",
            "gpu": "sampled every 0.5 s over each fraction's span: utilisation averaged over the "
            "GPUs; peak memory per trial is the largest memory any one process held (NVML's "
            "per-process figure), or, where the driver gives none, the peak memory in use on a "
            "GPU divided by the trials sharing it",
        },
        "samples": samples,
    }


def pass_ratios(samples: list[dict[str, Any]]) -> list[float]:
    """Each pass over the fractions (forward, then backward in full mode): its best trials/hour
    over its trials/hour at a whole GPU per trial."""
    size = len(GPU_FRACTIONS)
    passes = [samples[i : i + size] for i in range(0, len(samples), size)]
    return [
        max(s["trials_per_hour"] for s in p)
        / next(s["trials_per_hour"] for s in p if s["gpu_fraction"] == 1)
        for p in passes
    ]


def memory_per_trial(gpu: dict[str, Any], trials_per_gpu: int) -> dict[str, Any]:
    """A trial's peak GPU memory: the largest process's (NVML), or where the driver names no
    processes (containers often hide them), a GPU's peak in use shared by its trials."""
    if gpu["peak_process_memory_mib"] is not None:
        peak = gpu["peak_process_memory_mib"]
        return {"peak_memory_per_trial_mib": peak, "memory_from": "process"}
    if gpu["peak_gpu_memory_mib"] is not None:
        return {
            "peak_memory_per_trial_mib": gpu["peak_gpu_memory_mib"] / trials_per_gpu,
            "memory_from": "GPU in use / trials per GPU",
        }
    return {"peak_memory_per_trial_mib": None, "memory_from": None}


def optional(value: float | None, form: str) -> str:
    return "?" if value is None else form.format(value)


def precision_epochs_per_s(run, epochs: int) -> float:
    """Epochs per second of `epochs` more epochs of a warmed-up TrainingRun (each epoch ends on
    the host reading its metrics, so the GPU's queue is drained inside the span)."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(epochs):
        run.run_epoch()
    torch.cuda.synchronize()
    return epochs / (time.perf_counter() - start)


def gpu_precision(quick: bool) -> dict[str, Any]:
    """Epochs per second of one TrainingRun of the MNIST CNN on a GPU: fp32 against bf16 and
    against fp32 through torch.compile, alternating the three in one process."""
    if not torch.cuda.is_available():
        return skipped("gpu_precision", NO_GPU)
    from trainables.accel import native_bf16
    from trainables.data import DataOptions, load_dataset
    from trainables.loop import TrainingOptions, TrainingRun

    dataset = mnist_dataset()
    data = load_dataset(DataOptions(dataset["name"], path=dataset.get("path")))
    hparams = {"channels": 32, "conv_blocks": 2, "hidden_units": 128, "batch_size": 128}
    arms = {"fp32": TrainingOptions(), "compile": TrainingOptions(compile=True)}
    if native_bf16(torch.device("cuda")):  # what trials accept: emulated bf16 is refused
        arms["bf16"] = TrainingOptions(precision="bf16")
    runs, first_epoch = {}, {}
    for name, options in arms.items():  # built and warmed up: compile time is outside the spans
        runs[name] = TrainingRun("cnn", hparams, data, device="cuda", options=options)
        first_epoch[name] = runs[name].run_epoch()
    epochs, repeats = (5, 3) if quick else (10, 5)
    samples = []
    for i in range(repeats):  # fp32, compile, bf16, then bf16, compile, fp32, ...
        order = list(runs) if i % 2 == 0 else list(runs)[::-1]
        rates = {name: precision_epochs_per_s(runs[name], epochs) for name in order}
        samples.append(
            {
                "ratio": rates.get("bf16", math.nan) / rates["fp32"],
                "order": order,
                "compile_ratio": rates["compile"] / rates["fp32"],
                **{f"{name}_epochs_per_s": rate for name, rate in rates.items()},
            }
        )
    chosen = median_sample(samples) if "bf16" in arms else samples[len(samples) // 2]
    compile_time = (
        first_epoch["compile"].get(m.COMPILE_TIME_S) if hasattr(m, "COMPILE_TIME_S") else None
    )
    bf16 = (
        f"bf16 {chosen['bf16_epochs_per_s']:.2f} ({chosen['ratio']:.2f}x)"
        if "bf16" in arms
        else "bf16 not supported on this GPU"
    )
    return {
        "name": "gpu_precision",
        "ratio": chosen["ratio"] if "bf16" in arms else None,
        "spread": spread([s["ratio"] for s in samples]) if "bf16" in arms else None,
        "target": ">= 1.0",
        "detail": f"CNN (32 channels, 2 blocks, batch 128) on {dataset['name']}, {epochs} epochs "
        f"per span: fp32 {chosen['fp32_epochs_per_s']:.2f} epochs/s, {bf16}, torch.compile "
        f"{chosen['compile_epochs_per_s']:.2f} ({chosen['compile_ratio']:.2f}x); compile time "
        + ("not reported" if compile_time is None else f"{compile_time:.1f} s")
        + f", {repeats_text(samples)}",
        "spans": {
            "tuner": "bf16 (autocast) and fp32 through torch.compile: TrainingRun.run_epoch "
            "(training, then train and validation metrics) on the GPU, after a first epoch "
            "outside the span (compilation, cuDNN's autotuning, allocator warm-up)",
            "baseline": "the same TrainingRun in fp32, in the same process, alternating with them",
        },
        "first_epoch": first_epoch,
        "samples": samples,
    }


class GpuSamples:
    """Utilisation (%, averaged over the GPUs), memory in use on each GPU (MiB) and per process
    (MiB, None where the driver does not say), each with its time."""

    def __init__(self, source: str):
        self.source = source
        self.samples: list[dict[str, Any]] = []

    def summary(self, since: float, until: float) -> dict[str, Any]:
        window = [s for s in self.samples if since <= s["time"] <= until]
        per_process = [v for s in window for v in s["process_mib"].values()]
        peak_used = max((s["max_used_mib"] for s in window), default=None)
        return {
            "mean_gpu_utilisation": statistics.mean(s["utilisation"] for s in window)
            if window
            else None,
            "peak_gpu_memory_mib": peak_used,
            "peak_process_memory_mib": max(per_process) if per_process else None,
            "gpu_samples": len(window),
        }


def nvml_reader() -> Callable[[], dict[str, Any]] | None:
    """A function reading every GPU through NVML (nvidia-ml-py), or None without it."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # not installed, or no driver library: nvidia-smi instead
        return None
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]

    def read() -> dict[str, Any]:
        utilisation, used, processes = [], [], {}
        for handle in handles:
            utilisation.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            used.append(pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20)
            try:
                for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if p.usedGpuMemory is not None:
                        processes[p.pid] = processes.get(p.pid, 0) + p.usedGpuMemory / 2**20
            except pynvml.NVMLError:
                pass
        return {
            "utilisation": statistics.mean(utilisation),
            "max_used_mib": max(used),
            "process_mib": processes,
        }

    return read


def nvidia_smi_read() -> dict[str, Any]:
    out = subprocess.run(
        [
            "nvidia-smi",
            "--query-gpu=utilization.gpu,memory.used",
            "--format=csv,noheader,nounits",
        ],
        capture_output=True,
        text=True,
        timeout=5,
    ).stdout
    rows = [[float(v) for v in line.split(",")] for line in out.strip().splitlines()]
    return {
        "utilisation": statistics.mean(r[0] for r in rows),
        "max_used_mib": max(r[1] for r in rows),
        "process_mib": {},
    }


@contextmanager
def gpu_sampler(every_s: float = 0.5) -> Iterator[GpuSamples]:
    """The GPUs sampled in a thread: NVML when nvidia-ml-py is installed, else nvidia-smi."""
    read = nvml_reader()
    result = GpuSamples("NVML" if read else "nvidia-smi")
    read = read or nvidia_smi_read
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            with suppress(Exception):  # a missed sample (nvidia-smi slow or absent) is a gap
                result.samples.append({"time": time.time(), **read()})
            stop.wait(every_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()


BENCHMARKS: dict[str, Benchmark] = {"gpu_packing": gpu_packing, "gpu_precision": gpu_precision}
