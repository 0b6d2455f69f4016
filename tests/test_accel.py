"""trainables/accel.py: precision, device setup, compile, and training with the data on the device
or in host memory (the batches themselves: tests/test_batches.py).

Everything here runs on CPU: autocast takes bf16 and fp16 there, GradScaler("cpu") exists and
torch.compile works, so only what is CUDA-specific by nature (TF32, cuDNN, pinned memory, bf16
support) is checked as the pure decision it is.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from trainables import accel
from trainables import metrics as m
from trainables.batches import InHostMemory, OnDevice
from trainables.data import DataOptions, Dataset, load_dataset
from trainables.loop import (
    PRECISIONS,
    TrainingOptions,
    TrainingRun,
    evaluate,
    loss_function,
    make_optimizer,
    train_epoch,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset(DataOptions("digits"))


# --------------------------------------------------------------------------- precision


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError) as info:
        TrainingOptions(precision="fp8")
    assert str(info.value) == (
        "training.precision: 'fp8' is unknown; choose one of: fp32, bf16, fp16"
    )
    assert PRECISIONS == ("fp32", "bf16", "fp16")


def test_bf16_on_a_gpu_without_it_is_refused() -> None:
    with pytest.raises(ValueError) as info:
        accel.autocast_dtype("bf16", "cuda", bf16_supported=False)
    message = str(info.value)
    assert message.startswith("training.precision: 'bf16' needs a GPU with native bfloat16")
    assert "compute capability 8.0" in message
    assert "use 'fp16' or 'fp32'" in message
    assert accel.autocast_dtype("bf16", "cuda", bf16_supported=True) is torch.bfloat16
    assert accel.autocast_dtype("bf16", "cpu", bf16_supported=False) is torch.bfloat16
    assert accel.autocast_dtype("fp16", "cuda", bf16_supported=False) is torch.float16
    assert accel.autocast_dtype("fp32", "cuda", bf16_supported=False) is None


@pytest.mark.parametrize("native", [False, True])
def test_bf16_is_native_or_refused_never_emulated(
    monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    """A GPU that only emulates bf16 (plain `is_bf16_supported()` says yes there) is refused by
    trials and skipped by the GPU suite: both ask `accel.native_bf16`."""
    monkeypatch.setattr(
        torch.cuda,
        "is_bf16_supported",
        lambda including_emulation=True: including_emulation or native,
    )
    cuda = torch.device("cuda")
    assert accel.native_bf16(cuda) is native
    assert accel.native_bf16(CPU) is True
    if native:
        assert accel.device_autocast_dtype("bf16", cuda) is torch.bfloat16
    else:
        with pytest.raises(ValueError, match="needs a GPU with native bfloat16"):
            accel.device_autocast_dtype("bf16", cuda)
    assert accel.device_autocast_dtype("fp16", cuda) is torch.float16


def test_only_fp16_scales_the_loss() -> None:
    assert {p: accel.gradient_scaler(p, CPU).is_enabled() for p in PRECISIONS} == {
        "fp32": False,
        "bf16": False,
        "fp16": True,
    }


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_in_its_dtype_and_learns(digits: Dataset, precision: str) -> None:
    run = TrainingRun("mlp", {}, digits, seed=0, options=TrainingOptions(precision=precision))
    seen: set[torch.dtype] = set()
    run.model[1].register_forward_hook(lambda module, args, out: seen.add(out.dtype))
    results = [run.run_epoch() for _ in range(3)]
    assert seen == {accel.AUTOCAST_DTYPES[precision]}
    assert results[-1][m.VAL_ACC] >= 0.85
    assert results[-1][m.VAL_LOSS] < results[0][m.VAL_LOSS]
    assert (run.scaler.state_dict() != {}) == (precision == "fp16")


# --------------------------------------------------------------------------- device setup


@pytest.fixture
def restored_backend_flags():
    saved = (
        torch.backends.cuda.matmul.fp32_precision,
        torch.backends.cudnn.conv.fp32_precision,
        torch.backends.cudnn.benchmark,
    )
    yield
    (
        torch.backends.cuda.matmul.fp32_precision,
        torch.backends.cudnn.conv.fp32_precision,
        torch.backends.cudnn.benchmark,
    ) = saved


def test_cuda_gets_tf32_and_cudnn_benchmark_cpu_nothing(restored_backend_flags) -> None:
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    accel.configure_device(CPU)
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    assert torch.backends.cudnn.benchmark is False
    accel.configure_device(torch.device("cuda", 0))  # flags only: no CUDA call is made
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    assert torch.backends.cudnn.conv.fp32_precision == "tf32"
    assert torch.backends.cudnn.benchmark is True


def test_channels_last_for_the_cnn_on_images_on_cuda_only() -> None:
    cuda = torch.device("cuda", 0)
    assert accel.memory_format("cnn", (1, 28, 28), cuda) is torch.channels_last
    assert accel.memory_format("cnn", (1, 28, 28), CPU) is torch.contiguous_format
    assert accel.memory_format("cnn", (40, 1), cuda) is torch.contiguous_format  # sequence
    assert accel.memory_format("mlp", (1, 28, 28), cuda) is torch.contiguous_format


# --------------------------------------------------------------------------- compile


def test_preserved_training_state_restores_weights_grads_and_rngs(digits: Dataset) -> None:
    """A warm-up draws dropout masks, moves batch-norm statistics and leaves gradients; none of
    it stays (it never steps the optimizer, whose state is not saved)."""
    hp = {"batch_norm": True, "dropout": 0.3}
    straight = TrainingRun("mlp", hp, digits, seed=5)
    expected = [straight.run_epoch() for _ in range(2)]

    run = TrainingRun("mlp", hp, digits, seed=5)
    run.run_epoch()
    run._warm_up()  # eager here: the same passes as the compile warm-up, just not compiled
    with accel.preserved_training_state(run.model, CPU):
        run.model.train()
        x = torch.from_numpy(digits.x_train[:64])
        run.loss_fn(run.model(x), torch.from_numpy(digits.y_train[:64])).backward()
        with torch.no_grad():
            run.model[1].weight.add_(1.0)
        torch.rand(3)
    assert {**run.run_epoch(), m.EPOCH_TIME_S: 0} == {**expected[1], m.EPOCH_TIME_S: 0}
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(run.model.state_dict()[name], tensor), name


@pytest.mark.integration  # torch.compile runs its compiler (17 s)
def test_compile_reports_its_time_once_and_trains_as_eager(digits: Dataset) -> None:
    hp = {"hidden_units": 32}
    eager = TrainingRun("mlp", hp, digits, seed=0)
    compiled = TrainingRun("mlp", hp, digits, seed=0, options=TrainingOptions(compile=True))
    eager_results = [eager.run_epoch() for _ in range(2)]
    results = [compiled.run_epoch() for _ in range(2)]
    assert results[0][m.COMPILE_TIME_S] > 0
    assert m.COMPILE_TIME_S not in results[1]
    assert all(m.COMPILE_TIME_S not in r for r in eager_results)
    for key in (m.TRAIN_LOSS, m.VAL_LOSS, m.VAL_ACC):
        np.testing.assert_allclose(
            [r[key] for r in results], [r[key] for r in eager_results], rtol=1e-3, err_msg=key
        )
    assert type(compiled.forward_model).__name__ == "OptimizedModule"
    assert set(compiled.state_dict()["model"]) == set(eager.state_dict()["model"])


# --------------------------------------------------------------------------- data placement


def test_data_in_host_memory_trains_exactly_as_on_device(digits: Dataset) -> None:
    hp = {"dropout": 0.2, "batch_norm": True, "batch_size": 100}  # a 37-row tail
    resident = TrainingRun("mlp", hp, digits, seed=2)
    assert isinstance(resident.train_data, OnDevice)
    expected = [{**resident.run_epoch(), m.EPOCH_TIME_S: 0} for _ in range(2)]
    # one run at a time: dropout draws from the process's RNG, which TrainingRun seeds
    host = TrainingRun("mlp", hp, digits, seed=2, options=TrainingOptions(data_on_device=False))
    assert isinstance(host.train_data, InHostMemory)
    assert [{**host.run_epoch(), m.EPOCH_TIME_S: 0} for _ in range(2)] == expected


# --------------------------------------------------------------------------- host syncs

SYNCS = {"item", "tolist", "__float__", "__int__", "__bool__", "cpu", "numpy"}


class HostReads(TorchFunctionMode):
    """Every read of a tensor's values by the host (each one a synchronisation on a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in SYNCS:
            self.reads.append(func.__name__)
        return func(*args, **(kwargs or {}))


def test_no_host_reads_per_batch_and_one_per_evaluation(digits: Dataset) -> None:
    run = TrainingRun("mlp", {"optimizer": "sgd", "batch_size": 32}, digits, seed=0)
    batches = list(run._train_batches())
    assert len(batches) == 45
    with HostReads() as training:
        train_epoch(run.model, run.optimizer, run.scaler, run.loss_fn, batches, len(run.train_data))
    assert training.reads == []
    with HostReads() as evaluation:
        loss, acc = evaluate(
            run.model, loss_function("classification"), batches, classification=True
        )
    assert evaluation.reads == ["tolist"]
    assert loss > 0 and 0 <= acc <= 1


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_fp16_with_a_fused_optimizer_reads_nothing_per_batch(name: str) -> None:
    """An unfused step reads the scaler's inf flag on the host every batch; the fused one (what
    a CUDA run gets) takes it on the device."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    optimizer = make_optimizer(model.parameters(), {"optimizer": name}, fused=True)
    assert optimizer.defaults["fused"] is True
    scaler = accel.gradient_scaler("fp16", CPU)
    generator = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(16, 4, generator=generator), torch.randint(0, 3, (16,), generator=generator))
        for _ in range(3)
    ]
    before = [p.detach().clone() for p in model.parameters()]
    autocast = accel.autocast(CPU, torch.float16)
    loss_fn = loss_function("classification")
    with HostReads() as training:
        train_epoch(model, optimizer, scaler, loss_fn, batches, 48, autocast)
    assert training.reads == []
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
