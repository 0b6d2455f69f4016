"""tuner/driver/placement.py: trials fit one node; the largest trial of a space; the GPU memory
check."""

from __future__ import annotations

import math

import pytest

from tests.helpers import tiny_spec
from trainables.loop import TrainingOptions
from trainables.memory import GIB, gib
from tuner.driver.placement import (
    alive_nodes,
    check_fits_one_node,
    check_trials_fit,
    check_workers_fit,
    largest_config,
    plan_gpu_memory,
    trials_per_gpu,
    worst_case_estimate,
)
from tuner.driver.preparation import prepare
from tuner.driver.study_run import trial_settings
from tuner.errors import SpecError
from tuner.spec.spaces import parse_space


def ray_node(cpu: float, gpu: float = 0, alive: bool = True, ip: str = "10.0.0.1") -> dict:
    """An entry of `ray.nodes()`, as much of it as placement reads."""
    resources = {"CPU": cpu, "memory": 1e9, **({"GPU": gpu} if gpu else {})}
    return {"Alive": alive, "NodeManagerAddress": ip, "Resources": resources}


# --------------------------------------------------------------------------- one node per trial


def test_a_trial_must_fit_one_node_not_the_cluster_sum() -> None:
    nodes = alive_nodes([ray_node(4, 1, ip="10.0.0.1"), ray_node(4, 1, ip="10.0.0.2")])
    check_fits_one_node(4, 1, nodes)
    with pytest.raises(SpecError) as caught:
        check_fits_one_node(6, 0, nodes)  # 8 CPUs in all, 4 per node
    msg = str(caught.value)
    assert msg.startswith("resources.cpu: each trial asks for 6 CPU and 0 GPU")
    assert "the largest node has 4 CPU and 1 GPU" in msg and "cannot span nodes" in msg


def test_gpu_request_is_checked_against_the_node_with_most_gpus() -> None:
    nodes = alive_nodes([ray_node(16, 0), ray_node(2, 1, ip="10.0.0.9")])
    check_fits_one_node(2, 1, nodes)
    with pytest.raises(
        SpecError,
        match=r"resources.cpu: .* 4 CPU and 1 GPU .* largest node has "
        r"2 CPU and 1 GPU \(node 10.0.0.9\)",
    ):
        check_fits_one_node(4, 1, nodes)  # 16 CPUs are on a node without a GPU


def test_dead_nodes_do_not_count() -> None:
    nodes = alive_nodes([ray_node(2), ray_node(64, 8, alive=False)])
    with pytest.raises(SpecError, match=r"resources.gpu: .*0.5 GPU but the cluster has 0 GPU"):
        check_fits_one_node(1, 0.5, nodes)


@pytest.mark.parametrize(("gpu", "per_gpu"), [(1, 1), (0.5, 2), (0.3, 3), (0.25, 4), (0.1, 10)])
def test_trials_per_gpu(gpu: float, per_gpu: int) -> None:
    assert trials_per_gpu(gpu) == per_gpu


# --------------------------------------------------------------------------- the largest trial


def test_largest_config_takes_upper_bounds_largest_batch_and_the_worst_choices() -> None:
    space = parse_space(
        {
            "width": {"type": "int", "low": 8, "high": 100, "step": 8},  # 96 is the last step
            "rate": {"type": "float", "low": 0.0, "high": 0.5},
            "kind": {"type": "categorical", "choices": ["small", "big", "mid"]},
            "depth": {"type": "int", "low": 1, "high": 3, "when": {"kind": "big"}},
            "batch_size": {"type": "categorical", "choices": [256, 32, 64]},
            "optimizer": "adam",
        }
    )
    weights = {"small": 1, "mid": 2, "big": 3}

    def size(config: dict) -> int:
        return weights[config["kind"]] * config.get("depth", 1) * config["width"]

    config = largest_config(space, size)
    assert config == {
        "width": 96,
        "rate": 0.5,
        "kind": "big",
        "depth": 3,
        "batch_size": 256,
        "optimizer": "adam",
    }


def test_largest_config_skips_choices_that_cannot_be_estimated() -> None:
    space = parse_space({"kind": {"type": "categorical", "choices": ["ok", "broken"]}})

    def size(config: dict) -> int:
        if config["kind"] == "broken":
            raise ValueError("cannot build")
        return 1

    assert largest_config(space, size) == {"kind": "ok"}


@pytest.fixture(scope="module")
def gpu_study():
    """The built-in MLP space on digits, 4 trials per GPU."""
    return prepare(tiny_spec(resources={"gpu": 0.25}, search_space="mlp"))


def test_worst_case_of_the_mlp_space(gpu_study) -> None:
    spec = gpu_study.spec
    estimate, config = worst_case_estimate(
        spec, gpu_study.space, gpu_study.dataset, TrainingOptions()
    )
    assert config["batch_size"] == 256 and estimate.batch_size == 256
    assert (config["hidden_units"], config["num_layers"]) == (512, 3)
    assert config["batch_norm"] is True and config["optimizer"] in ("adam", "adamw")
    assert "momentum" not in config  # only drawn with sgd
    assert estimate.optimizer_state == 2 * estimate.gradients


# --------------------------------------------------------------------------- the memory check


def test_cpu_studies_are_not_checked(gpu_study) -> None:
    spec = tiny_spec()
    packing = plan_gpu_memory(spec, gpu_study.space, gpu_study.dataset, 1, "probed")
    assert packing.training == TrainingOptions(data_on_device=True) and not packing.notes


def test_unknown_gpu_memory_is_said_and_not_checked(gpu_study) -> None:
    packing = plan_gpu_memory(gpu_study.spec, gpu_study.space, gpu_study.dataset, None, "")
    assert packing.training.data_on_device is True
    (note,) = packing.notes
    assert "GPU memory unknown" in note and "resources.gpu_memory_gb" in note


def needed(gpu_study, on_device: bool, trials: int = 4) -> int:
    spec, space, data = gpu_study.spec, gpu_study.space, gpu_study.dataset
    estimate, _ = worst_case_estimate(spec, space, data, TrainingOptions())
    return trials * estimate.total(on_device)


def memory_for(gpu_study, on_device: bool, trials: int = 4) -> int:
    """A GPU whose memory less the default 10 % headroom just holds `trials` largest trials."""
    assert gpu_study.spec.resources.gpu_memory_headroom == 0.1
    return math.ceil(needed(gpu_study, on_device, trials) / 0.9) + 1


def test_a_packing_that_fits_keeps_the_data_on_the_device(gpu_study) -> None:
    memory = memory_for(gpu_study, on_device=True)
    packing = plan_gpu_memory(gpu_study.spec, gpu_study.space, gpu_study.dataset, memory, "x")
    assert packing.training == TrainingOptions(data_on_device=True) and not packing.notes


def test_auto_moves_the_data_to_host_memory_when_only_that_fits(gpu_study) -> None:
    """digits is 0.5 MiB, its batches 0.4 MiB: memory between the two totals."""
    memory = memory_for(gpu_study, on_device=False)
    assert memory < memory_for(gpu_study, on_device=True)
    packing = plan_gpu_memory(gpu_study.spec, gpu_study.space, gpu_study.dataset, memory, "x")
    assert packing.training.data_on_device is False
    (note,) = packing.notes
    assert "training.data_on_device: the dataset stays in host memory" in note
    assert note.endswith(
        f"would need {gib(needed(gpu_study, on_device=True))} of the {gib(memory)} of GPU memory "
        f"(x) less resources.gpu_memory_headroom 0.1 = {gib(int(memory * 0.9))}"
    )


def test_data_on_device_true_that_does_not_fit_is_refused(gpu_study) -> None:
    spec = gpu_study.spec.model_copy(deep=True)
    spec.training.data_on_device = True
    memory = memory_for(gpu_study, on_device=False)
    with pytest.raises(SpecError) as caught:
        plan_gpu_memory(spec, gpu_study.space, gpu_study.dataset, memory, "probed")
    assert "training.data_on_device: false" in str(caught.value)
    spec.training.data_on_device = False
    packing = plan_gpu_memory(spec, gpu_study.space, gpu_study.dataset, memory, "probed")
    assert packing.training.data_on_device is False and not packing.notes


def test_a_packing_that_cannot_fit_is_refused_with_the_figures(gpu_study) -> None:
    spec = gpu_study.spec
    memory = int(1.5 * GIB)  # four CUDA contexts alone take 2 GiB
    with pytest.raises(SpecError) as caught:
        plan_gpu_memory(spec, gpu_study.space, gpu_study.dataset, memory, "resources.gpu_memory_gb")
    msg = str(caught.value)
    assert msg.startswith("resources.gpu: 4 trial(s) per GPU at 0.25 GPU each do not fit in ")
    assert (
        "1.50 GiB of GPU memory (resources.gpu_memory_gb) less resources.gpu_memory_headroom" in msg
    )
    assert "(batch_size 256;" in msg and "hidden_units=512" in msg
    for part in ("data", "parameters", "gradients", "optimizer state", "activations", "CUDA"):
        assert part in msg
    assert "a larger resources.gpu (fewer trials per GPU)" in msg
    assert "data_on_device: false" not in msg  # it would not fit either
    assert "gpu_memory_headroom (it fits in the whole GPU" not in msg  # nor at no headroom


@pytest.mark.parametrize("on_device", [True, False])
def test_a_packing_that_fits_only_the_whole_gpu_is_refused_within_the_headroom(
    gpu_study, on_device: bool
) -> None:
    """The estimate leaves out the allocator's rounding and fragmentation: four trials that need
    exactly the GPU's memory do not fit the 90 % the default headroom leaves them."""
    spec = gpu_study.spec.model_copy(deep=True)
    spec.training.data_on_device = on_device
    memory = needed(gpu_study, on_device)  # all of it
    with pytest.raises(SpecError) as caught:
        plan_gpu_memory(spec, gpu_study.space, gpu_study.dataset, memory, "probed")
    msg = str(caught.value)
    usable = int(memory * 0.9)
    assert msg.startswith(
        f"resources.gpu: 4 trial(s) per GPU at 0.25 GPU each do not fit in {gib(memory)} of GPU "
        f"memory (probed) less resources.gpu_memory_headroom 0.1 = {gib(usable)}: "
    )
    assert f"{gib(memory)} for 4; use " in msg
    assert msg.endswith(
        "or a smaller resources.gpu_memory_headroom (it fits in the whole GPU, leaving nothing "
        "for what the estimate leaves out)"
    )
    spec.resources.gpu_memory_headroom = 0.0
    packing = plan_gpu_memory(spec, gpu_study.space, gpu_study.dataset, memory, "probed")
    assert packing.training.data_on_device is on_device and not packing.notes
    spec.resources.gpu_memory_headroom = 0.1
    packing = plan_gpu_memory(
        spec, gpu_study.space, gpu_study.dataset, memory_for(gpu_study, on_device), "probed"
    )
    assert packing.training.data_on_device is on_device and not packing.notes


def test_the_study_hands_the_training_options_to_its_trials() -> None:
    spec = tiny_spec(training={"precision": "bf16", "compile": True})
    assert trial_settings(spec).training == TrainingOptions("bf16", True, data_on_device=True)
    decided = TrainingOptions("bf16", True, data_on_device=False)
    assert trial_settings(spec, decided).training == decided


# --------------------------------------------------------------------------- data-parallel workers


def test_packed_workers_fit_the_clusters_slots_and_cap_the_trials_at_once() -> None:
    nodes = alive_nodes([ray_node(4, 2, ip="10.0.0.1"), ray_node(4, 2, ip="10.0.0.2")])
    assert check_workers_fit(4, 1, 1, spread=False, nodes=nodes) == 1  # 2 GPUs a node
    assert check_workers_fit(2, 2, 1, spread=False, nodes=nodes) == 2
    assert check_workers_fit(2, 1, 0, spread=False, nodes=nodes) == 4  # CPU: 8 slots
    with pytest.raises(SpecError) as caught:
        check_workers_fit(5, 1, 1, spread=False, nodes=nodes)
    msg = str(caught.value)
    assert msg.startswith("resources.workers: 5 workers of 1 CPU and 1 GPU each")
    assert "at most 4 such worker(s) at once" in msg and "use at most 4 workers" in msg
    assert "4 CPU and 2 GPU (node 10.0.0.2)" in msg


def test_spread_workers_need_a_node_each() -> None:
    nodes = alive_nodes([ray_node(8, ip="10.0.0.1"), ray_node(8, ip="10.0.0.2"), ray_node(0.5)])
    assert check_workers_fit(2, 1, 0, spread=True, nodes=nodes) == 8  # 8 slots on each of two
    with pytest.raises(SpecError) as caught:
        check_workers_fit(3, 1, 0, spread=True, nodes=nodes)  # the third node holds none
    msg = str(caught.value)
    assert "placement spread (one node each)" in msg
    assert "only 2 of the cluster's 3 node(s) can hold one" in msg and "placement: pack" in msg


def test_a_study_runs_no_more_trials_at_once_than_whole_worker_groups_fit() -> None:
    nodes = alive_nodes([ray_node(2)])  # the test Ray: 2 CPUs
    spec = tiny_spec(search={"max_concurrent": 4}, resources={"workers": 2, "cpu": 1})
    assert check_trials_fit(spec, nodes) == 1
    assert check_trials_fit(tiny_spec(search={"max_concurrent": 4}), nodes) == 4  # one worker
    with pytest.raises(SpecError, match="resources.workers: 3 workers of 1 CPU"):
        check_trials_fit(tiny_spec(resources={"workers": 3, "cpu": 1}), nodes)


def test_each_worker_is_estimated_at_its_share_of_the_batch() -> None:
    space = parse_space({"batch_size": 256, "hidden_units": 64})
    one = prepare(tiny_spec(search_space={"batch_size": 256, "hidden_units": 64}))
    four = prepare(
        tiny_spec(
            search_space={"batch_size": 256, "hidden_units": 64},
            resources={"workers": 4, "gpu": 1},
        )
    )
    whole, _ = worst_case_estimate(one.spec, space, one.dataset, TrainingOptions())
    worker, _ = worst_case_estimate(four.spec, space, four.dataset, TrainingOptions())
    assert (whole.batch_size, worker.batch_size) == (256, 64)
    assert worker.batch_data < whole.batch_data and worker.parameters == whole.parameters
