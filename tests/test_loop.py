"""trainables/loop.py: TrainingRun learns, reports the contract's metrics, resumes exactly."""

from __future__ import annotations

import copy
import dataclasses
import io
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_diabetes

from trainables import metrics as m
from trainables.data import DataOptions, Dataset, load_dataset
from trainables.loop import (
    DEVICE_FLAGS,
    OPTIMIZERS,
    PRECISIONS,
    EpochCancelled,
    NoOptimizerStep,
    TrainingOptions,
    TrainingRun,
    check_batch_size,
    check_trainable,
    evaluate,
    load_state,
    loss_function,
    make_optimizer,
    save_state,
    train_epoch,
    train_subsample,
)

CLASSIFICATION_KEYS = {
    m.EPOCH,
    m.TRAIN_LOSS,
    m.TRAIN_ACC,
    m.VAL_LOSS,
    m.VAL_ACC,
    m.GENERALIZATION_GAP,
    m.EPOCH_TIME_S,
}


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset(DataOptions("digits"))


@pytest.fixture(scope="module")
def diabetes(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    frame = load_diabetes(as_frame=True).frame
    path = tmp_path_factory.mktemp("tables") / "diabetes.csv"
    frame.to_csv(path, index=False)
    return load_dataset(DataOptions("table", path=str(path), target="target"))


@pytest.fixture(scope="module")
def mlp_history(digits: Dataset) -> list[dict[str, float]]:
    run = TrainingRun("mlp", {}, digits, seed=0)
    return [run.run_epoch() for _ in range(8)]


def test_mlp_learns_digits(mlp_history: list[dict[str, float]]) -> None:
    assert max(r[m.VAL_ACC] for r in mlp_history) >= 0.9
    assert mlp_history[-1][m.VAL_LOSS] < mlp_history[0][m.VAL_LOSS]
    assert mlp_history[-1][m.TRAIN_LOSS] < mlp_history[0][m.TRAIN_LOSS]


def test_reported_keys_and_values(mlp_history: list[dict[str, float]]) -> None:
    for epoch, result in enumerate(mlp_history, start=1):
        assert set(result) == CLASSIFICATION_KEYS  # no `diverged` key on a healthy run
        assert result[m.EPOCH] == epoch
        assert result[m.GENERALIZATION_GAP] == pytest.approx(
            result[m.VAL_LOSS] - result[m.TRAIN_LOSS], abs=1e-12
        )
        assert 0.0 <= result[m.TRAIN_ACC] <= 1.0
        assert 0.0 <= result[m.VAL_ACC] <= 1.0
        assert result[m.EPOCH_TIME_S] > 0
        assert all(isinstance(v, int | float) and math.isfinite(v) for v in result.values())


def independent_metrics(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> tuple:
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
    target = torch.from_numpy(y)
    loss = float(torch.nn.functional.cross_entropy(logits, target))
    return loss, float((logits.argmax(1) == target).float().mean())


def test_metrics_match_an_independent_evaluation(digits: Dataset) -> None:
    run = TrainingRun("mlp", {}, digits, seed=0)
    for _ in range(2):  # the train subsample is the same rows every epoch
        result = run.run_epoch()
        val_loss, val_acc = independent_metrics(run.model, digits.x_val, digits.y_val)
        assert result[m.VAL_LOSS] == pytest.approx(val_loss, rel=1e-5)
        assert result[m.VAL_ACC] == pytest.approx(val_acc)
        rows = run.train_rows.numpy()
        train_loss, train_acc = independent_metrics(
            run.model, digits.x_train[rows], digits.y_train[rows]
        )
        assert result[m.TRAIN_LOSS] == pytest.approx(train_loss, rel=1e-5)
        assert result[m.TRAIN_ACC] == pytest.approx(train_acc)


def test_train_subsample_is_validation_sized_seeded_and_fixed(digits: Dataset) -> None:
    n_train, n_val = len(digits.x_train), len(digits.x_val)
    rows = train_subsample(n_train, n_val, seed=0)
    assert len(rows) == n_val == 360
    assert len(set(rows.tolist())) == n_val
    assert int(rows.min()) >= 0 and int(rows.max()) < n_train
    assert torch.equal(rows, train_subsample(n_train, n_val, seed=0))
    assert not torch.equal(rows, train_subsample(n_train, n_val, seed=1))
    assert train_subsample(100, 100, seed=0) is None  # validation as large: all of it
    assert train_subsample(100, 300, seed=0) is None
    run = TrainingRun("mlp", {}, digits, seed=0)
    assert torch.equal(run.train_rows, rows)
    run.run_epoch()
    assert torch.equal(run.train_rows, rows)


def test_regression_has_no_accuracy(diabetes: Dataset) -> None:
    run = TrainingRun("mlp", {"lr": 3e-3}, diabetes, seed=0)
    results = [run.run_epoch() for _ in range(3)]
    for result in results:
        assert m.TRAIN_ACC not in result
        assert m.VAL_ACC not in result
        assert set(result) == CLASSIFICATION_KEYS - {m.TRAIN_ACC, m.VAL_ACC}
        assert math.isfinite(result[m.VAL_LOSS])
    assert results[-1][m.TRAIN_LOSS] < results[0][m.TRAIN_LOSS]
    assert isinstance(run.loss_fn, torch.nn.MSELoss)


def test_evaluate_regression_returns_no_accuracy() -> None:
    model = torch.nn.Linear(2, 1)
    x, y = torch.zeros(5, 2), torch.zeros(5, 1)
    loss, acc = evaluate(model, torch.nn.MSELoss(), [(x, y)], classification=False)
    assert acc is None
    assert loss >= 0


def test_same_seed_same_metrics(digits: Dataset, mlp_history: list[dict[str, float]]) -> None:
    run = TrainingRun("mlp", {}, digits, seed=0)
    again = [run.run_epoch() for _ in range(2)]
    for a, b in zip(again, mlp_history[:2], strict=True):
        assert a[m.VAL_LOSS] == pytest.approx(b[m.VAL_LOSS], abs=1e-6)


def test_different_seed_different_metrics(digits: Dataset, mlp_history) -> None:
    run = TrainingRun("mlp", {}, digits, seed=1)
    assert run.run_epoch()[m.VAL_LOSS] != pytest.approx(mlp_history[0][m.VAL_LOSS], abs=1e-6)


def through_bytes(state: dict) -> dict:
    """What a checkpoint does to a state: `save_state` to bytes, then `load_state`."""
    buffer = io.BytesIO()
    save_state(state, buffer)
    buffer.seek(0)
    return load_state(buffer)


FP32 = TrainingOptions()


def assert_resume_is_exact(
    data: Dataset, hparams: dict, model: str = "mlp", options: TrainingOptions = FP32
) -> None:
    """2 epochs, checkpoint, a fresh run resumes for 2 more: bit-identical to 4 straight epochs."""
    straight = TrainingRun(model, hparams, data, seed=3, options=options)
    expected = [straight.run_epoch() for _ in range(4)][-1]

    first = TrainingRun(model, hparams, data, seed=3, options=options)
    for _ in range(2):
        first.run_epoch()
    state = through_bytes(copy.deepcopy(first.state_dict()))

    resumed = TrainingRun(model, hparams, data, seed=3, options=options)
    resumed.load_state_dict(state)
    assert resumed.epoch == 2
    results = [resumed.run_epoch() for _ in range(2)]
    got = results[-1]
    assert got[m.EPOCH] == 4
    for key in (m.TRAIN_LOSS, m.VAL_LOSS, m.TRAIN_ACC, m.VAL_ACC):
        assert got[key] == expected[key], key
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name
    assert resumed.scaler.state_dict() == straight.scaler.state_dict()


@pytest.mark.parametrize(
    "hparams",
    [
        {},
        {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "batch_size": 128},
        {"optimizer": "adamw", "weight_decay": 1e-3, "batch_norm": True, "num_layers": 2},
    ],
    ids=["adam", "sgd", "adamw-batchnorm"],
)
def test_resume_from_state_dict_is_exact(digits: Dataset, hparams: dict) -> None:
    assert_resume_is_exact(digits, hparams)


@pytest.mark.parametrize(
    "options",
    [TrainingOptions(precision="fp16"), TrainingOptions(data_on_device=False)],
    ids=["fp16-with-its-scaler", "data-in-host-memory"],
)
def test_resume_with_training_options_is_exact(digits: Dataset, options) -> None:
    assert_resume_is_exact(digits, {"hidden_units": 32}, options=options)


def built_as(data: Dataset, options: TrainingOptions, fused: bool) -> TrainingRun:
    """A run whose optimizer is built as on CUDA (`fused`, as TrainingRun builds it there; CPU
    runs fused Adam, AdamW and SGD too) or as on CPU."""
    run = TrainingRun("mlp", {"hidden_units": 32}, data, seed=3, options=options)
    if fused:
        run.optimizer = make_optimizer(run.model.parameters(), run.hparams, fused=True)
    return run


def flags(optimizer: torch.optim.Optimizer) -> dict:
    return {k: optimizer.param_groups[0].get(k) for k in DEVICE_FLAGS}


@pytest.mark.parametrize("resumed_fused", [False, True], ids=["to-unfused", "to-fused"])
@pytest.mark.parametrize("written_fused", [False, True], ids=["from-unfused", "from-fused"])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_checkpoint_resumes_with_the_optimizer_built_where_it_resumes(
    digits: Dataset, precision: str, written_fused: bool, resumed_fused: bool
) -> None:
    """A CPU checkpoint resumed on CUDA (unfused to fused) crashed in fp16: loading it made the
    optimizer unfused, which GradScaler stepped with grad_scale set. The resumed optimizer keeps
    its own build; on the same build the second epoch is the uninterrupted run's, bit for bit,
    across builds it differs by the fused kernel's rounding only."""
    options = TrainingOptions(precision)
    straight = built_as(digits, options, resumed_fused)
    expected = [straight.run_epoch() for _ in range(2)][-1]

    first = built_as(digits, options, written_fused)
    first.run_epoch()
    state = through_bytes(first.state_dict())
    resumed = built_as(digits, options, resumed_fused)
    as_built = flags(resumed.optimizer)
    assert as_built["fused"] is (True if resumed_fused else None)
    resumed.load_state_dict(state)
    got = resumed.run_epoch()

    assert flags(resumed.optimizer) == as_built
    assert got[m.EPOCH] == 2 and m.DIVERGED not in got
    for key in (m.TRAIN_LOSS, m.VAL_LOSS, m.TRAIN_ACC, m.VAL_ACC):
        if written_fused == resumed_fused:
            assert got[key] == expected[key], key
        else:
            assert got[key] == pytest.approx(expected[key], rel=1e-5), key
    assert resumed.scaler.state_dict() == straight.scaler.state_dict()


def tensors_in(state) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for v in state.values() for t in tensors_in(v)]
    if isinstance(state, list | tuple):
        return [t for v in state for t in tensors_in(v)]
    return []


def test_state_dict_is_device_independent(digits: Dataset) -> None:
    """Every tensor on CPU (a GPU run's included, so its checkpoint resumes anywhere), and every
    part loadable with `weights_only=True`."""
    run = TrainingRun("mlp", {"batch_norm": True}, digits, seed=0, options=TrainingOptions("fp16"))
    run.run_epoch()
    state = run.state_dict()
    tensors = tensors_in(state)
    assert len(tensors) > 10
    assert {t.device.type for t in tensors} == {"cpu"}
    assert state["generator"].dtype == torch.uint8
    assert state["cuda_rng"] is None
    assert state["scaler"]["scale"] > 0
    assert set(through_bytes(state)) == set(state)


@pytest.fixture
def storages_tagged_cuda():
    """While active, torch.save writes every storage as a GPU run's checkpoint holds it, tagged
    `cuda:0` (what `torch.load` without a map_location restores to CUDA)."""
    from torch import serialization

    serialization.register_package(0, lambda storage: "cuda:0", lambda obj, location: None)
    yield
    serialization._package_registry[:] = [
        entry for entry in serialization._package_registry if entry[0] != 0
    ]


def test_a_checkpoint_written_on_a_gpu_resumes_on_cpu(
    digits: Dataset, tmp_path: Path, storages_tagged_cuda
) -> None:
    run = TrainingRun("mlp", {"dropout": 0.2}, digits, seed=4)
    run.run_epoch()
    path = tmp_path / "state.pt"
    torch.save(run.state_dict(), path)  # tagged cuda:0, like a GPU's checkpoint
    expected = run.run_epoch()
    if not torch.cuda.is_available():  # the file really says CUDA
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)

    state = load_state(path)
    assert {t.device.type for t in tensors_in(state)} == {"cpu"}
    assert state["generator"].device.type == "cpu"  # torch.Generator.set_state needs CPU
    resumed = TrainingRun("mlp", {"dropout": 0.2}, digits, seed=4)
    resumed.load_state_dict(state)
    assert resumed.run_epoch()[m.VAL_LOSS] == expected[m.VAL_LOSS]


def test_fp16_resumes_from_a_checkpoint_without_a_scaler(digits: Dataset) -> None:
    fp32 = TrainingRun("mlp", {"hidden_units": 16}, digits, seed=0)
    fp32.run_epoch()
    state = through_bytes(fp32.state_dict())
    assert state["scaler"] == {}
    fp16 = TrainingRun("mlp", {"hidden_units": 16}, digits, seed=0, options=TrainingOptions("fp16"))
    fp16.load_state_dict(state)
    assert fp16.epoch == 1
    assert math.isfinite(fp16.run_epoch()[m.VAL_LOSS])


def test_resume_with_dropout_is_exact(digits: Dataset) -> None:
    """Dropout draws from torch's global RNG, which a resumed run must restore as well."""
    assert_resume_is_exact(digits, {"dropout": 0.3})


def test_huge_learning_rate_diverges(digits: Dataset) -> None:
    run = TrainingRun("mlp", {"optimizer": "sgd", "lr": 1e6}, digits, seed=0)
    results = [run.run_epoch() for _ in range(3)]
    diverged = [r for r in results if r.get(m.DIVERGED)]
    assert diverged, results
    first = diverged[0]
    assert first[m.DIVERGED] == 1
    assert not (math.isfinite(first[m.TRAIN_LOSS]) and math.isfinite(first[m.VAL_LOSS]))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizers_build(name: str, digits: Dataset) -> None:
    model = torch.nn.Linear(3, 2)
    hp = {"optimizer": name, "lr": 0.01, "weight_decay": 1e-4, "momentum": 0.8}
    optimizer = make_optimizer(model.parameters(), hp)
    expected = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
    assert type(optimizer) is expected[name]
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.01
    assert group["weight_decay"] == 1e-4
    if name == "sgd":
        assert group["momentum"] == 0.8
    run = TrainingRun("mlp", {"optimizer": name, "hidden_units": 16}, digits, seed=0)
    assert type(run.optimizer) is expected[name]
    assert math.isfinite(run.run_epoch()[m.VAL_LOSS])


def test_optimizer_defaults() -> None:
    optimizer = make_optimizer(torch.nn.Linear(2, 2).parameters(), {})
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.param_groups[0]["lr"] == 1e-3
    sgd = make_optimizer(torch.nn.Linear(2, 2).parameters(), {"optimizer": "sgd"})
    assert sgd.param_groups[0]["momentum"] == 0.9


def test_unknown_optimizer() -> None:
    with pytest.raises(ValueError) as info:
        make_optimizer(torch.nn.Linear(2, 2).parameters(), {"optimizer": "rmsprop"})
    assert str(info.value) == "optimizer 'rmsprop' is unknown; choose one of: adam, adamw, sgd"


def test_unknown_optimizer_in_a_run(digits: Dataset) -> None:
    with pytest.raises(ValueError, match="'lbfgs'"):
        TrainingRun("mlp", {"optimizer": "lbfgs"}, digits)


def test_batch_size_is_used(digits: Dataset) -> None:
    run = TrainingRun("mlp", {"batch_size": 512}, digits, seed=0)
    assert run.batch_size == 512
    steps = []
    run.optimizer.register_step_post_hook(lambda *_: steps.append(1))
    run.run_epoch()
    assert len(steps) == math.ceil(len(digits.x_train) / 512)


def test_one_sample_tail_batch_is_skipped(tmp_path: Path) -> None:
    """With batch norm, a last batch of one sample would fail; the loop skips it."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(41, 3)), columns=["a", "b", "c"])
    frame["target"] = np.arange(41) % 2
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    data = load_dataset(DataOptions("table", path=str(path), target="target", val_fraction=0.2))
    batch = len(data.x_train) - 1  # leaves a tail of exactly one sample
    run = TrainingRun("mlp", {"batch_norm": True, "batch_size": batch}, data, seed=0)
    assert math.isfinite(run.run_epoch()[m.VAL_LOSS])


def test_a_batch_size_read_back_from_a_trials_table_is_a_number_like_any_other() -> None:
    """A config read back from trials.csv (finalists, export) holds NumPy numbers."""
    assert check_batch_size(np.int64(256)) == 256 and check_batch_size(np.float64(64.0)) == 64
    with pytest.raises(ValueError, match="at least 2"):
        check_batch_size(np.int64(1))
    with pytest.raises(ValueError, match="at least 2"):
        check_batch_size(np.bool_(True))


@pytest.mark.parametrize("batch_size", [1, 0, True, "64"])
def test_a_batch_size_below_two_is_refused(digits: Dataset, batch_size) -> None:
    """At 1, every batch has one row, which training skips: no optimizer step, yet the trial
    reported as trained. The run (and the driver's build check) refuse it, naming the rule."""
    expected = f"batch_size: {batch_size!r} is not a batch size: batch_size must be a number"
    with pytest.raises(ValueError) as info:
        TrainingRun("mlp", {"batch_size": batch_size}, digits)
    assert str(info.value).startswith(expected) and "at least 2" in str(info.value)
    with pytest.raises(ValueError, match="at least 2"):
        check_trainable("mlp", {"batch_size": batch_size}, digits)


def steps_of_one_epoch(run: TrainingRun) -> int:
    steps: list[int] = []
    run.optimizer.register_step_post_hook(lambda *_: steps.append(1))
    run.run_epoch()
    return len(steps)


@pytest.mark.parametrize(("rows", "hparams"), [(3, {"batch_norm": True}), (1, {})])
def test_a_training_split_smaller_than_a_batch_still_trains(
    digits: Dataset, rows: int, hparams: dict
) -> None:
    """No partial batch is dropped: a split of fewer rows than batch_size is one batch (a single
    row too, when it is the whole split and the model has no batch norm)."""
    small = dataclasses.replace(
        digits, x_train=digits.x_train[:rows], y_train=digits.y_train[:rows]
    )
    run = TrainingRun("mlp", {**hparams, "batch_size": 64}, small, seed=0)
    before = [p.detach().clone() for p in run.model.parameters()]
    assert steps_of_one_epoch(run) == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, run.model.parameters(), strict=True))


def test_an_epoch_without_an_optimizer_step_fails(digits: Dataset) -> None:
    """Never an epoch that reports the untrained model as trained (a trial errors instead)."""
    empty = dataclasses.replace(digits, x_train=digits.x_train[:0], y_train=digits.y_train[:0])
    run = TrainingRun("mlp", {}, empty, seed=0)
    with pytest.raises(NoOptimizerStep, match="no optimizer step: the training split is empty"):
        run.run_epoch()
    assert run.epoch == 0

    model = torch.nn.Linear(4, 3)
    optimizer = make_optimizer(model.parameters(), {})
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    one_row = [(torch.randn(1, 4), torch.tensor([0])) for _ in range(5)]  # batch_size 1
    with pytest.raises(NoOptimizerStep) as info:
        train_epoch(model, optimizer, scaler, loss_function("classification"), one_row, 5)
    assert str(info.value) == (
        "an epoch took no optimizer step: every batch of the 5-row training split had one row, "
        "which training skips (batch norm cannot normalise one row); use a batch_size of at "
        "least 2"
    )
    two_rows = [(torch.randn(2, 4), torch.tensor([0, 1]))] + one_row[:1]
    assert train_epoch(model, optimizer, scaler, loss_function("classification"), two_rows, 3) == 1


def test_a_trial_without_an_optimizer_step_errors_and_reports_nothing(
    digits: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trial raises (Ray marks it errored, with the message) before its first report, so the
    untrained model's epoch never reaches the results as a completed one."""
    from trainables import trainable

    reports: list[dict] = []
    tune = SimpleNamespace(
        get_checkpoint=lambda: None,
        report=lambda result, **_: reports.append(result),
        Checkpoint=SimpleNamespace(from_directory=str),
    )
    monkeypatch.setattr(trainable, "tune", tune)
    monkeypatch.setattr(trainable.ray, "get_gpu_ids", lambda: [])
    context = SimpleNamespace(get_node_id=lambda: "node")
    monkeypatch.setattr(trainable.ray, "get_runtime_context", lambda: context)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # this process keeps its own
    empty = dataclasses.replace(digits, x_train=digits.x_train[:0], y_train=digits.y_train[:0])
    settings = trainable.TrialSettings("mlp", max_epochs=2)
    with pytest.raises(NoOptimizerStep, match="the training split is empty"):
        trainable.train_trial({"lr": 0.01}, empty, settings)
    assert reports == []
    trainable.train_trial({"lr": 0.01}, digits, dataclasses.replace(settings, max_epochs=1))
    assert [r[m.EPOCH] for r in reports] == [1]  # the stand-ins do run a trial


def test_a_cancelled_run_gives_up_its_epoch_at_the_next_batch(digits) -> None:
    """`TrainingRun.cancel` (set by the trainable when Ray stops a trial that trains ahead of
    its report): the epoch stops before its next batch, taking no optimizer step."""
    run = TrainingRun("mlp", {"hidden_units": 8}, digits)
    steps = []
    run.optimizer.register_step_post_hook(lambda *_: steps.append(1))
    run.cancel.set()
    with pytest.raises(EpochCancelled):
        run.run_epoch()
    assert steps == [] and run.epoch == 0
