"""Where trials go, checked before any starts: one node each, and as many per GPU as memory allows.

A trial runs on one node: its CPU and GPU request must fit the largest node, not the cluster's
sum. With a fraction of a GPU per trial, floor(1 / gpu) trials share a GPU, each holding its own
copy of the model, optimizer state, activations and (unless it stays in host memory) the data.
`plan_gpu_memory` checks that the largest trial the search space can draw fits that many times
in a GPU's memory less `resources.gpu_memory_headroom` (the estimate is no promise), and decides
where the data lives when `training.data_on_device` is left to it. A plug-in's training function
(`loop`) is not estimated: it passes unchecked, with a note.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from trainables.data import Dataset
from trainables.loop import TrainingOptions
from trainables.memory import MemoryEstimate, estimate_trial_memory, gib
from tuner.errors import SpecError
from tuner.spec.job_spec import JobSpec
from tuner.spec.spaces import CategoricalParam, FloatParam, IntParam, SearchSpace, is_active

#: how long the driver waits for the GPU memory probe (a Ray task on a GPU) before going on
PROBE_TIMEOUT_S = 60.0
BATCH_SIZE = "batch_size"

# --------------------------------------------------------------------------- nodes


@dataclass(frozen=True)
class NodeSize:
    address: str
    cpu: float
    gpu: float

    def describe(self) -> str:
        return f"{self.cpu:g} CPU and {self.gpu:g} GPU (node {self.address})"


def alive_nodes(nodes: Iterable[Mapping[str, Any]]) -> list[NodeSize]:
    """The alive nodes of `ray.nodes()` with their CPU and GPU totals."""
    return [
        NodeSize(
            str(node.get("NodeManagerAddress", "?")),
            float(node.get("Resources", {}).get("CPU", 0)),
            float(node.get("Resources", {}).get("GPU", 0)),
        )
        for node in nodes
        if node.get("Alive")
    ]


def check_fits_one_node(cpu: float, gpu: float, nodes: list[NodeSize]) -> None:
    """Refuse a trial request that no single node can hold (it would pend forever)."""
    if any(n.cpu >= cpu and n.gpu >= gpu for n in nodes):
        return
    if not nodes:
        raise SpecError("the Ray cluster has no alive node to run trials on")
    largest = max(nodes, key=lambda n: (n.gpu, n.cpu) if gpu > 0 else (n.cpu, n.gpu))
    request = f"each trial asks for {cpu:g} CPU and {gpu:g} GPU"
    if gpu > 0 and not any(n.gpu for n in nodes):
        raise SpecError(
            f"resources.gpu: {request} but the cluster has 0 GPU (largest node: "
            f"{largest.describe()}); set resources.gpu to 0 or run on a GPU cluster"
        )
    key = "resources.gpu" if gpu > 0 and largest.gpu < gpu else "resources.cpu"
    raise SpecError(
        f"{key}: {request} but the largest node has {largest.describe()}, and a trial cannot "
        f"span nodes; ask for at most what one node has"
    )


def worker_slots(node: NodeSize, cpu: float, gpu: float) -> int:
    """How many workers of `cpu` CPU and `gpu` GPU each `node` holds at once."""
    slots = math.floor(node.cpu / cpu + 1e-9)
    return min(slots, math.floor(node.gpu / gpu + 1e-9)) if gpu > 0 else slots


def trials_at_once(
    workers: int, cpu: float, gpu: float, spread: bool, nodes: list[NodeSize]
) -> int:
    """How many trials of `workers` data-parallel workers the nodes hold at once: packed, as
    many as the workers' slots allow; spread, each worker of a trial on its own node."""
    slots = [worker_slots(n, cpu, gpu) for n in nodes]
    if not spread:
        return sum(slots) // workers
    trials = 0
    while sum(min(s, trials + 1) for s in slots) >= (trials + 1) * workers:
        trials += 1
    return trials


def check_workers_fit(
    workers: int, cpu: float, gpu: float, spread: bool, nodes: list[NodeSize]
) -> int:
    """Refuse a data-parallel trial whose workers the cluster can never place (packed: their
    slots summed over the nodes; spread: one node each); else how many such trials run at once
    (Ray Train holds a trial's workers, not Tune, so the study starts no more trials than
    that: a trial whose workers wait for another's would time out)."""
    at_once = trials_at_once(workers, cpu, gpu, spread, nodes)
    if at_once >= 1:
        return at_once
    if not nodes:
        raise SpecError("the Ray cluster has no alive node to run trials on")
    each = f"{cpu:g} CPU and {gpu:g} GPU"
    slots = [worker_slots(n, cpu, gpu) for n in nodes]
    if spread:
        usable = sum(1 for s in slots if s)
        raise SpecError(
            f"resources.workers: {workers} workers of {each} each, placement spread (one node "
            f"each), but only {usable} of the cluster's {len(nodes)} node(s) can hold one "
            f"({', '.join(n.describe() for n in nodes)}); use at most {usable} workers, or "
            "placement: pack"
        )
    raise SpecError(
        f"resources.workers: {workers} workers of {each} each, but the cluster can place at "
        f"most {sum(slots)} such worker(s) at once ({', '.join(n.describe() for n in nodes)}); "
        f"use at most {sum(slots)} workers, or fewer resources.cpu / resources.gpu per worker"
    )


def check_trials_fit(spec: JobSpec, nodes: list[NodeSize]) -> int:
    """Refuse trials the cluster can never place (`check_fits_one_node`, or with
    resources.workers above 1 `check_workers_fit`); else how many trials the study may run at
    once: search.max_concurrent, or fewer when whole worker groups would not fit."""
    res = spec.resources
    if res.workers == 1:
        check_fits_one_node(res.cpu, res.largest_gpu, nodes)
        return spec.search.max_concurrent
    spread = res.placement == "spread"
    at_once = check_workers_fit(res.workers, res.cpu, res.largest_gpu, spread, nodes)
    return min(spec.search.max_concurrent, at_once)


# --------------------------------------------------------------------------- the largest trial


def upper_value(param: FloatParam | IntParam) -> float | int:
    """The largest value a numeric entry can take (the last step at or below `high`)."""
    if param.step is None or (isinstance(param, IntParam) and param.step == 1):
        return param.high
    return param.low + math.floor((param.high - param.low) / param.step) * param.step


def largest_config(
    space: SearchSpace, size: Callable[[dict[str, Any]], int], smallest: bool = False
) -> dict[str, Any]:
    """The config of the space that `size` ranks largest, as far as a greedy walk finds it:
    numeric entries at their upper bounds, then each categorical entry (parents first) set to
    the choice that makes `size` largest with the others held; `when` conditions are honoured.
    Choices that `size` cannot evaluate (it raises ValueError) are skipped. `smallest`: the
    other end (lower bounds, the smallest batch, the choices that make `size` smallest)."""
    picks = {n: p.choices[0] for n, p in space.params.items() if isinstance(p, CategoricalParam)}
    sign = -1 if smallest else 1

    def bound(param: FloatParam | IntParam) -> float | int:
        return param.low if smallest else upper_value(param)

    def config(chosen: dict[str, Any]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, param in space.params.items():
            if is_active(param.when, values):
                values[name] = chosen[name] if name in chosen else bound(param)
        return {**values, **space.constants}

    for name in picks:
        choices = space.params[name].choices
        if name == BATCH_SIZE and all(isinstance(c, int | float) for c in choices):
            # the largest batch, even where evaluation dominates
            picks[name] = min(choices) if smallest else max(choices)
            continue
        best: int | None = None
        for choice in choices:
            try:
                score = sign * size(config({**picks, name: choice}))
            except (ValueError, RuntimeError, TypeError):
                continue
            if best is None or score >= best:  # ties: the later (usually larger) choice
                best, picks[name] = score, choice
    return config(picks)


# --------------------------------------------------------------------------- packing


def trials_per_gpu(gpu: float) -> int:
    """How many trials Ray places on one GPU at `gpu` GPUs each (1 for a whole GPU)."""
    return max(1, math.floor(1 / gpu + 1e-9))


def training_options(spec: JobSpec, data_on_device: bool = True) -> TrainingOptions:
    return TrainingOptions(
        precision=spec.training.precision,
        compile=spec.training.compile,
        data_on_device=data_on_device,
    )


@dataclass(frozen=True)
class Packing:
    """The decision: the options trials train with, and the lines to show the user."""

    training: TrainingOptions
    notes: list[str]


def worst_case_estimate(
    spec: JobSpec, space: SearchSpace, data: Dataset, options: TrainingOptions
) -> tuple[MemoryEstimate, dict[str, Any]]:
    """The memory estimate of the largest trial the space can draw, and that trial's config;
    with resources.workers above 1, of one of its workers (each holds the model, its optimizer
    state and the data, and trains batch_size / workers rows at a time)."""
    workers = spec.resources.workers

    def estimate(config: dict[str, Any]) -> MemoryEstimate:
        if workers > 1 and BATCH_SIZE in config:
            config = {**config, BATCH_SIZE: max(1, int(config[BATCH_SIZE]) // workers)}
        return estimate_trial_memory(spec.model, config, data, options)

    config = largest_config(space, lambda c: estimate(c).total())
    return estimate(config), config


def plan_gpu_memory(
    spec: JobSpec, space: SearchSpace, data: Dataset, gpu_memory: int | None, source: str
) -> Packing:
    """Check that floor(1 / resources.gpu) of the space's largest trial fit `gpu_memory` bytes
    (from `source`: the spec or a probe) less the headroom (`usable_memory`); decide where the
    data lives. CPU-only studies and an unknown GPU memory pass unchecked (data on the device
    unless the spec says otherwise)."""
    gpu = spec.resources.largest_gpu  # auto: the largest trial must fit a whole GPU
    wanted = spec.training.data_on_device
    if gpu == 0:
        return Packing(training_options(spec), [])
    if spec.loop is not None:
        if spec.resources.auto_gpu:
            raise SpecError(
                f"resources.gpu: auto sizes each trial's GPU share from tuner's estimate of its "
                f"model's memory, and training function {spec.loop!r} is the plug-in's own loop, "
                "which tuner cannot estimate; set resources.gpu to a share (e.g. 0.25)"
            )
        note = (
            f"GPU memory: training function {spec.loop!r} is the plug-in's own loop, whose "
            f"memory tuner cannot estimate: {trials_per_gpu(gpu)} trial(s) per GPU not checked "
            "against memory"
        )
        return Packing(training_options(spec), [note])
    if gpu_memory is None and spec.resources.auto_gpu:
        raise SpecError(
            "resources.gpu: auto sizes each trial's GPU share from its estimated memory and the "
            "GPU's, but no GPU answered the memory probe (no CUDA where Ray runs the trials); "
            "set resources.gpu_memory_gb to the memory of one GPU, or resources.gpu to a share "
            "(e.g. 0.25)"
        )
    if gpu_memory is None:
        note = (
            "GPU memory unknown (no CUDA answered the probe; set resources.gpu_memory_gb to "
            "check it): trials per GPU not checked against memory"
        )
        return Packing(training_options(spec, wanted is not False), [note])
    estimate, config = worst_case_estimate(spec, space, data, training_options(spec))
    per_gpu = trials_per_gpu(gpu)
    usable = usable_memory(gpu_memory, spec.resources.gpu_memory_headroom)

    def fits(on_device: bool) -> bool:
        return per_gpu * estimate.total(on_device) <= usable

    if wanted is None and fits(True):
        return Packing(training_options(spec, True), [])
    if wanted is None and fits(False):
        note = (
            f"training.data_on_device: the dataset stays in host memory (copied per batch): "
            f"{per_gpu} trials per GPU with a copy of it each would need "
            f"{gib(per_gpu * estimate.total(True))} of the "
            f"{memory_text(spec, gpu_memory, source)}"
        )
        return Packing(training_options(spec, False), [note])
    if wanted is not None and fits(wanted):
        return Packing(training_options(spec, wanted), [])
    on_device = wanted is not False
    host_fits = on_device and fits(False)
    raise SpecError(refusal(spec, estimate, config, gpu_memory, source, on_device, host_fits))


def refusal(
    spec: JobSpec,
    estimate: MemoryEstimate,
    config: dict[str, Any],
    gpu_memory: int,
    source: str,
    on_device: bool,
    host_fits: bool,
) -> str:
    gpu = spec.resources.largest_gpu
    per_gpu = trials_per_gpu(gpu)
    fixes = ["a larger resources.gpu (fewer trials per GPU)" if gpu < 1 else "a larger GPU"]
    fixes.append("a smaller largest batch_size or model in the search space")
    if host_fits:
        fixes.append("training.data_on_device: false (the dataset in host memory: that fits)")
    if spec.training.precision == "fp32":
        fixes.append("training.precision: bf16 or fp16 (half-size activations)")
    if per_gpu * estimate.total(on_device) <= gpu_memory:
        fixes.append(
            "a smaller resources.gpu_memory_headroom (it fits in the whole GPU, leaving nothing "
            "for what the estimate leaves out)"
        )
    per_trial = estimate.breakdown(on_device)
    return (
        f"resources.gpu: {per_gpu} trial(s) per GPU at {gpu:g} GPU each do not fit in "
        f"{memory_text(spec, gpu_memory, source)}: the largest trial of the search space "
        f"(batch_size {estimate.batch_size}; {config_text(config)}) needs {per_trial} per trial, "
        f"{gib(per_gpu * estimate.total(on_device))} for {per_gpu}; use " + ", or ".join(fixes)
    )


def usable_memory(gpu_memory: int, headroom: float) -> int:
    """The bytes of a GPU's `gpu_memory` that packed trials may fill: all but the `headroom`
    share, for what the estimate leaves out (allocator rounding, fragmentation, workspaces)."""
    return int(gpu_memory * (1 - headroom))


def memory_text(spec: JobSpec, gpu_memory: int, source: str) -> str:
    """'4.00 GiB of GPU memory (probed) less resources.gpu_memory_headroom 0.1 = 3.60 GiB'."""
    headroom = spec.resources.gpu_memory_headroom
    return (
        f"{gib(gpu_memory)} of GPU memory ({source}) less resources.gpu_memory_headroom "
        f"{headroom:g} = {gib(usable_memory(gpu_memory, headroom))}"
    )


def config_text(config: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items()
    )
