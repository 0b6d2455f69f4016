"""trainables/memory.py: a trial's device memory, against figures worked out by hand for an MLP."""

from __future__ import annotations

import pytest

from trainables.data import DataOptions, Dataset, load_dataset
from trainables.loop import TrainingOptions
from trainables.memory import CUDA_CONTEXT_BYTES, estimate_trial_memory

F32, I64 = 4, 8
FEATURES, CLASSES = 64, 10  # digits: 8 x 8 images, 10 classes


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset(DataOptions("digits"))


def mlp(hidden: int, **hp) -> dict:
    return {"hidden_units": hidden, "num_layers": 1, "dropout": 0.0, **hp}


def mlp_parameter_bytes(hidden: int) -> int:
    return ((FEATURES + 1) * hidden + (hidden + 1) * CLASSES) * F32


def test_data_parameters_gradients_and_optimizer_state_are_exact(digits: Dataset) -> None:
    # both splits, and the train-metric rows: a validation-sized copy of training rows
    n = len(digits.x_train) + 2 * len(digits.x_val)  # 1437 + 2 x 360
    estimate = estimate_trial_memory("mlp", mlp(128, batch_size=32), digits)
    params = mlp_parameter_bytes(128)
    assert params == 38_440
    assert estimate.data == n * (FEATURES * F32 + I64)
    assert estimate.parameters == estimate.gradients == params
    assert estimate.optimizer_state == 2 * params  # Adam: exp_avg and exp_avg_sq
    assert estimate.cuda_context == CUDA_CONTEXT_BYTES == 512 * 1024**2
    parts = estimate.data + 4 * params + estimate.activations + CUDA_CONTEXT_BYTES
    assert estimate.total() == parts
    assert estimate.total(data_on_device=False) == parts - estimate.data + estimate.batch_data


@pytest.mark.parametrize(
    ("hp", "factor"),
    [
        ({"optimizer": "adamw"}, 2),
        ({"optimizer": "sgd", "momentum": 0.9}, 1),
        ({"optimizer": "sgd", "momentum": 0.0}, 0),
    ],
)
def test_optimizer_state_per_optimizer(digits: Dataset, hp: dict, factor: int) -> None:
    estimate = estimate_trial_memory("mlp", mlp(64, **hp), digits)
    assert estimate.optimizer_state == factor * mlp_parameter_bytes(64)


def test_batch_norm_buffers_count_as_parameters_not_gradients(digits: Dataset) -> None:
    estimate = estimate_trial_memory("mlp", mlp(64, batch_norm=True), digits)
    weights = mlp_parameter_bytes(64) + 2 * 64 * F32  # + BN weight and bias
    buffers = 2 * 64 * F32 + I64  # running mean and var, num_batches_tracked
    assert estimate.gradients == weights
    assert estimate.parameters == weights + buffers


def test_training_activations_at_a_large_batch(digits: Dataset) -> None:
    """Per sample, autograd keeps the input (64 floats, for the first Linear), the ReLU output
    (128; the second Linear saves the same tensor: dropout 0 passes it through), the log-softmax
    output (10) and the target (one int64); backward adds one gradient as large as the widest
    layer output (128). Eval at min(4096, 1437) rows needs less than 2048 such samples."""
    batch, hidden = 2048, 128
    estimate = estimate_trial_memory("mlp", mlp(hidden, batch_size=batch), digits)
    per_sample = (FEATURES + hidden + CLASSES) * F32 + I64 + hidden * F32
    assert estimate.activations == pytest.approx(batch * per_sample, rel=0.01)


def test_evaluation_activations_dominate_a_small_batch(digits: Dataset) -> None:
    """Evaluation takes every training row at once (1437 < 4096): the widest layer's input and
    output are alive together: the ReLU's 128 + 128 floats per row."""
    estimate = estimate_trial_memory("mlp", mlp(128, batch_size=32), digits)
    assert estimate.activations == pytest.approx(len(digits.x_train) * 2 * 128 * F32, rel=0.01)


def test_activations_grow_with_the_batch_and_shrink_with_half_precision(digits: Dataset) -> None:
    def activations(batch: int, precision: str = "fp32") -> int:
        hp = mlp(512, batch_size=batch)
        return estimate_trial_memory("mlp", hp, digits, TrainingOptions(precision)).activations

    assert activations(8192) == pytest.approx(2 * activations(4096), rel=0.01)
    # autocast halves the linear layers' outputs; the cast cache adds half the weights
    cast_cache = mlp_parameter_bytes(512) // 2
    assert activations(8192, "bf16") - cast_cache < 0.75 * activations(8192)
    assert activations(8192, "fp16") - cast_cache < 0.75 * activations(8192)


def test_host_memory_data_puts_one_train_and_one_eval_batch_on_the_device(
    digits: Dataset,
) -> None:
    estimate = estimate_trial_memory("mlp", mlp(64, batch_size=32), digits)
    assert estimate.batch_data == (32 + len(digits.x_train)) * (FEATURES * F32 + I64)


def test_breakdown_names_every_part(digits: Dataset) -> None:
    estimate = estimate_trial_memory("mlp", mlp(64, batch_size=32), digits)
    text = estimate.breakdown()
    for part in ("data", "parameters", "gradients", "optimizer state", "CUDA context"):
        assert part in text
    assert "activations" in text and "training at batch_size 32" in text
    assert text.startswith("0.50 GiB = ")
    assert "host memory" in estimate.breakdown(data_on_device=False)


@pytest.mark.parametrize(
    ("model", "hp"),
    [
        ("cnn", {"channels": 8, "conv_blocks": 2, "batch_size": 64}),
        ("lstm", {"hidden_size": 32, "num_layers": 2, "batch_size": 64}),
    ],
)
def test_every_family_gets_an_estimate(digits: Dataset, model: str, hp: dict) -> None:
    small = estimate_trial_memory(model, hp, digits)
    larger = estimate_trial_memory(model, {**hp, "batch_size": 4096}, digits)
    assert small.parameters > 0 and 0 < small.activations < larger.activations
