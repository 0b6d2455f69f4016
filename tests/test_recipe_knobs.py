"""trainables/recipe.py: the recipe knobs of the built-in loop (lr schedule and warm-up, gradient
clipping, label smoothing, augmentation) as TrainingRun applies them, checkpoints them and
refuses their bad values."""

from __future__ import annotations

import copy
import dataclasses
import io
import math

import numpy as np
import pytest
import torch

from trainables import metrics as m
from trainables.data import DataOptions, Dataset, load_dataset
from trainables.loop import (
    OPTIMIZER_DEFAULTS,
    TrainingOptions,
    TrainingRun,
    check_trainable,
    load_state,
    loss_function,
    save_state,
)
from trainables.recipe import (
    RECIPE_DEFAULTS,
    Augmentation,
    augment,
    lr_factor,
    max_shift,
    recipe_of,
    steps_per_epoch,
)

LR = 0.01
BATCH = 128
EPOCHS = 4


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset(DataOptions("digits"))


@pytest.fixture(scope="module")
def flippable(digits: Dataset) -> Dataset:
    """Digits as if a mirrored image kept its label (what an image folder of photos may say)."""
    return dataclasses.replace(digits, flips_valid=True)


def lrs_of_each_step(run: TrainingRun, epochs: int) -> list[float]:
    """The lr every optimizer step of `epochs` epochs trained at."""
    lrs: list[float] = []
    run.optimizer.register_step_pre_hook(
        lambda optimizer, *_: lrs.append(optimizer.param_groups[0]["lr"])
    )
    for _ in range(epochs):
        run.run_epoch()
    return lrs


def expected_lr(schedule: str, s: int, steps: int, warmup: int) -> float:
    """The formula, written out independently: a linear warm-up of `warmup` epochs, then the
    schedule over the rest of the EPOCHS-epoch budget (`steps` optimizer steps an epoch)."""
    total, warm = EPOCHS * steps, warmup * steps
    if s < warm:
        return LR * (s + 1) / warm
    p = (s - warm) / (total - warm)
    if schedule == "constant":
        return LR
    if schedule == "cosine":
        return LR * (1 + math.cos(math.pi * p)) / 2
    assert schedule == "step"
    return LR * (1.0 if p < 0.5 else 0.1 if p < 0.75 else 0.01)


@pytest.mark.parametrize(
    ("schedule", "warmup"),
    [("constant", 0), ("constant", 1), ("cosine", 0), ("cosine", 2), ("step", 0), ("step", 1)],
)
def test_each_schedule_trains_at_its_formulas_lr(
    digits: Dataset, schedule: str, warmup: int
) -> None:
    hp = {"lr": LR, "batch_size": BATCH, "lr_schedule": schedule, "warmup_epochs": warmup}
    run = TrainingRun("mlp", {**hp, "hidden_units": 8}, digits, seed=0, max_epochs=EPOCHS)
    steps = steps_per_epoch(len(digits.x_train), BATCH)
    assert steps == 12  # 1,437 rows: 11 full batches and a tail of 29
    lrs = lrs_of_each_step(run, EPOCHS)
    assert len(lrs) == EPOCHS * steps
    expected = [expected_lr(schedule, s, steps, warmup) for s in range(len(lrs))]
    assert lrs == pytest.approx(expected, rel=1e-12, abs=1e-15)
    if schedule == "constant" and warmup == 0:
        assert run.lr_scheduler is None  # nothing to step, nothing in the checkpoint
    else:  # the lr each epoch starts at, per the formula too
        starts = [lrs[e * steps] for e in range(EPOCHS)]
        assert starts == pytest.approx(
            [expected_lr(schedule, e * steps, steps, warmup) for e in range(EPOCHS)]
        )
        assert len(set(starts)) > 1


@pytest.mark.parametrize("warmup", [0, 1])
def test_onecycle_is_torchs_one_cycle_policy(digits: Dataset, warmup: int) -> None:
    """onecycle trains at the lrs of torch's OneCycleLR over the budget (its defaults, no
    momentum cycling), its rise lasting warmup_epochs when set, else 30 % of the budget."""
    hp = {"lr": LR, "batch_size": BATCH, "lr_schedule": "onecycle", "warmup_epochs": warmup}
    run = TrainingRun("mlp", {**hp, "hidden_units": 8}, digits, seed=0, max_epochs=EPOCHS)
    lrs = lrs_of_each_step(run, EPOCHS)
    total = len(lrs)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    reference = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=LR,
        total_steps=total,
        pct_start=warmup / EPOCHS if warmup else 0.3,
        cycle_momentum=False,
    )
    expected = []
    for _ in range(total):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert lrs[0] == pytest.approx(LR / 25) and max(lrs) == pytest.approx(LR, rel=1e-3)


def test_the_curve_depends_on_the_budget_not_on_where_a_run_stops(digits: Dataset) -> None:
    """A trial ASHA stops after 2 epochs trained at the lrs of the first 2 epochs of one that
    runs its whole budget; a different budget is a different curve."""
    hp = {"lr": LR, "batch_size": BATCH, "lr_schedule": "cosine", "hidden_units": 8}
    stopped = lrs_of_each_step(TrainingRun("mlp", hp, digits, seed=0, max_epochs=EPOCHS), 2)
    full = lrs_of_each_step(TrainingRun("mlp", hp, digits, seed=0, max_epochs=EPOCHS), EPOCHS)
    assert stopped == full[: len(stopped)]
    shorter = lrs_of_each_step(TrainingRun("mlp", hp, digits, seed=0, max_epochs=2), 2)
    assert shorter != stopped


def test_lr_factor_past_the_budget_stays_at_its_end() -> None:
    assert lr_factor("cosine", 10_000, 10, 4, 0) == pytest.approx(0.0)
    assert lr_factor("step", 10_000, 10, 4, 1) == pytest.approx(0.01)
    assert lr_factor("onecycle", 10_000, 10, 4, 0) == pytest.approx(1 / 25 / 1e4)
    # warm-up longer than the budget (a finalist re-run to an early best epoch): still ramping
    assert lr_factor("cosine", 9, 10, 2, 4) == pytest.approx(10 / 40)


def through_bytes(state: dict) -> dict:
    buffer = io.BytesIO()
    save_state(state, buffer)
    buffer.seek(0)
    return load_state(buffer)


@pytest.mark.parametrize(
    "hparams",
    [
        {"lr_schedule": "cosine", "warmup_epochs": 1, "augment": "shift_flip"},
        {"lr_schedule": "onecycle", "augment": "shift", "grad_clip_norm": 0.5},
        {"lr_schedule": "step", "label_smoothing": 0.1, "dropout": 0.2, "augment": "shift"},
    ],
    ids=["cosine-warmup-shift-flip", "onecycle-shift-clip", "step-smoothing-dropout-shift"],
)
def test_a_resumed_run_is_the_uninterrupted_one(flippable: Dataset, hparams: dict) -> None:
    """2 epochs, checkpoint, a fresh run resumes for 2 more: the same losses, weights and lr,
    bit for bit, as 4 epochs straight (the schedule's step count and the augmentation's draws
    from the run's generator both continue)."""
    hp = {"lr": LR, "batch_size": BATCH, "hidden_units": 16, **hparams}
    straight = TrainingRun("mlp", hp, flippable, seed=3, max_epochs=EPOCHS)
    expected = [straight.run_epoch() for _ in range(EPOCHS)]

    first = TrainingRun("mlp", hp, flippable, seed=3, max_epochs=EPOCHS)
    for _ in range(2):
        first.run_epoch()
    state = through_bytes(copy.deepcopy(first.state_dict()))
    assert state["lr_scheduler"]["last_epoch"] == 2 * steps_per_epoch(len(flippable.x_train), BATCH)

    resumed = TrainingRun("mlp", hp, flippable, seed=3, max_epochs=EPOCHS)
    resumed.load_state_dict(state)
    got = [resumed.run_epoch() for _ in range(2)]
    for want, have in zip(expected[2:], got, strict=True):
        for key in (m.EPOCH, m.TRAIN_LOSS, m.VAL_LOSS, m.TRAIN_ACC, m.VAL_ACC):
            assert have[key] == want[key], key
    assert resumed.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"]
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name


def grad_norms(run: TrainingRun, epochs: int = 1) -> list[float]:
    """The gradients' total L2 norm as each optimizer step sees them."""
    norms: list[float] = []

    def record(optimizer, *_):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    run.optimizer.register_step_pre_hook(record)
    for _ in range(epochs):
        run.run_epoch()
    return norms


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_grad_clipping_bounds_the_gradient_norm(digits: Dataset, precision: str) -> None:
    """Every step's gradient norm is at most grad_clip_norm, and in fp16 the clipped norm is
    the true one (clipped after unscaling, not the loss-scaled gradients: those would leave a
    norm 2**16 times smaller)."""
    hp = {"hidden_units": 32, "batch_size": BATCH, "lr": 0.05}
    options = TrainingOptions(precision)
    free = grad_norms(TrainingRun("mlp", hp, digits, seed=0, options=options))
    bound = 0.1
    assert max(free) > 5 * bound  # so that clipping has something to do
    clipped = grad_norms(
        TrainingRun("mlp", {**hp, "grad_clip_norm": bound}, digits, seed=0, options=options)
    )
    finite = [n for n in clipped if math.isfinite(n)]  # fp16 may overflow (the step is skipped)
    assert len(finite) >= len(clipped) - 2
    assert max(finite) <= bound * (1 + 1e-4)
    assert np.median(finite) == pytest.approx(bound, rel=1e-3)


def test_label_smoothing_changes_the_training_loss_only(digits: Dataset) -> None:
    """The training loss is torch's smoothed cross-entropy, (1 - e) CE + e * mean_k(-log p_k);
    every reported loss is the plain one, so that trials with different smoothing compare."""
    logits = torch.randn(16, 10, generator=torch.Generator().manual_seed(0))
    target = torch.arange(16) % 10
    log_p = torch.log_softmax(logits, dim=1)
    plain = float(-log_p[torch.arange(16), target].mean())
    uniform = float(-log_p.mean())
    smoothed = float(loss_function("classification", 0.2)(logits, target))
    assert smoothed == pytest.approx(0.8 * plain + 0.2 * uniform, rel=1e-6)
    assert float(loss_function("classification")(logits, target)) == pytest.approx(plain)

    hp = {"hidden_units": 16, "batch_size": BATCH}
    run = TrainingRun("mlp", {**hp, "label_smoothing": 0.2}, digits, seed=0)
    assert run.train_loss_fn.label_smoothing == 0.2 and run.loss_fn.label_smoothing == 0.0
    result = run.run_epoch()
    run.model.eval()
    with torch.no_grad():
        val = torch.nn.functional.cross_entropy(
            run.model(torch.from_numpy(digits.x_val)), torch.from_numpy(digits.y_val)
        )
    assert result[m.VAL_LOSS] == pytest.approx(float(val), rel=1e-5)
    unsmoothed = TrainingRun("mlp", hp, digits, seed=0).run_epoch()
    assert result[m.TRAIN_LOSS] != unsmoothed[m.TRAIN_LOSS]  # it trained on another loss


def reference_shift(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """out[i, j] = x[i + dy, j + dx], indices clamped to the edge."""
    h, w = x.shape[-2:]
    rows = np.clip(np.arange(h) + dy, 0, h - 1)
    cols = np.clip(np.arange(w) + dx, 0, w - 1)
    return x[..., rows[:, None], cols[None, :]]


def test_augment_shifts_and_flips_each_image_by_its_own_draw() -> None:
    x = torch.arange(3 * 2 * 5 * 6, dtype=torch.float32).reshape(3, 2, 5, 6)
    before = x.clone()
    shifts = torch.tensor([[0, 0], [1, -2], [-2, 2]])
    flips = torch.tensor([False, True, False])
    out = augment(x, shifts, flips, pad=2)
    assert torch.equal(x, before)  # the batch itself is untouched
    for i, (dy, dx) in enumerate(shifts.tolist()):
        want = reference_shift(x[i].numpy(), dy, dx)
        if flips[i]:
            want = want[..., ::-1]
        assert np.array_equal(out[i].numpy(), want), i
    assert torch.equal(
        augment(x, shifts, None, pad=2)[1],
        torch.from_numpy(reference_shift(x[1].numpy(), 1, -2).copy()),
    )


def test_max_shift_is_a_couple_of_pixels() -> None:
    assert max_shift((1, 28, 28)) == 2
    assert max_shift((1, 8, 8)) == 1
    assert max_shift((3, 64, 48)) == 4


def test_shift_never_flips_and_shift_flip_flips_about_half(flippable: Dataset) -> None:
    generator = torch.Generator().manual_seed(0)
    shifts, flips = Augmentation("shift", 2).draw(1000, generator, torch.device("cpu"))
    assert flips is None
    assert shifts.abs().max() == 2 and set(shifts.flatten().tolist()) == {-2, -1, 0, 1, 2}
    _, flips = Augmentation("shift_flip", 2).draw(1000, generator, torch.device("cpu"))
    assert 400 < int(flips.sum()) < 600


def rows_known(batch: torch.Tensor, *splits: np.ndarray) -> np.ndarray:
    """For each row of `batch`, whether it is exactly a row of one of `splits`."""
    known = {row.tobytes() for split in splits for row in split}
    return np.array([row.tobytes() in known for row in batch.numpy()])


@pytest.mark.parametrize("mode", ["shift", "shift_flip"])
def test_augmentation_touches_training_batches_only(flippable: Dataset, mode: str) -> None:
    """Every image the model sees in eval mode (train metrics, validation, test) is a row of
    the data as it is; in training most are shifted (or flipped)."""
    hp = {"hidden_units": 16, "batch_size": BATCH, "augment": mode}
    run = TrainingRun("mlp", hp, flippable, seed=0)
    seen: dict[bool, list[torch.Tensor]] = {True: [], False: []}
    run.model.register_forward_pre_hook(
        lambda module, args: seen[module.training].append(args[0].detach().clone())
    )
    run.run_epoch()
    run.test_metrics(flippable.x_val, flippable.y_val)
    evaluated = torch.cat(seen[False])
    assert len(evaluated) == 360 * 3  # the train subsample, validation, the "test" split
    assert rows_known(evaluated, flippable.x_train, flippable.x_val).all()
    trained = torch.cat(seen[True])
    assert len(trained) == len(flippable.x_train)
    assert rows_known(trained, flippable.x_train).mean() < 0.5


def test_no_augmentation_draws_nothing(digits: Dataset) -> None:
    """augment: none leaves the run's generator, and so every earlier result, as it was."""
    plain = TrainingRun("mlp", {"hidden_units": 8}, digits, seed=0)
    plain.run_epoch()
    same = TrainingRun("mlp", {"hidden_units": 8, "augment": "none"}, digits, seed=0)
    same.run_epoch()
    assert torch.equal(plain.generator.get_state(), same.generator.get_state())
    assert same.augmentation is None


def test_defaults_are_every_models_hyperparameters() -> None:
    assert RECIPE_DEFAULTS.items() <= OPTIMIZER_DEFAULTS.items()
    recipe = recipe_of({})
    assert (recipe.lr_schedule, recipe.warmup_epochs, recipe.grad_clip_norm) == (
        "constant",
        0,
        None,
    )
    assert (recipe.label_smoothing, recipe.augment) == (0.0, "none")


BAD_VALUES = [
    (
        {"lr_schedule": "linear"},
        "lr_schedule: 'linear' is not a learning-rate schedule: lr_schedule must be one of "
        "constant, cosine, onecycle, step",
    ),
    (
        {"warmup_epochs": -1},
        "warmup_epochs: -1 is not a warm-up length: warmup_epochs must be a number of epochs, "
        "0 or more",
    ),
    (
        {"grad_clip_norm": 0},
        "grad_clip_norm: 0 is not a gradient norm bound: grad_clip_norm must be a number above 0 "
        "(or null: no clipping)",
    ),
    (
        {"label_smoothing": 1.0},
        "label_smoothing: 1.0 is not a label-smoothing weight: label_smoothing must be at least "
        "0 and less than 1",
    ),
    (
        {"label_smoothing": -0.1},
        "label_smoothing: -0.1 is not a label-smoothing weight: label_smoothing must be at least "
        "0 and less than 1",
    ),
    (
        {"augment": "crop"},
        "augment: 'crop' is not an augmentation: augment must be one of none, shift, shift_flip",
    ),
    (
        {"augment": "shift_flip"},
        "augment: 'shift_flip' flips images, but dataset 'digits' says a flipped image may not "
        "keep its label (flips_valid: false; a mirrored digit is not that digit): use shift, or "
        "set dataset.options.flips_valid: true for data where flips are valid",
    ),
]


@pytest.mark.parametrize(("hparams", "message"), BAD_VALUES)
def test_bad_values_are_refused_naming_key_value_and_rule(
    digits: Dataset, hparams: dict, message: str
) -> None:
    for refuse in (
        lambda: TrainingRun("mlp", hparams, digits, max_epochs=EPOCHS),
        lambda: check_trainable("mlp", hparams, digits),
    ):
        with pytest.raises(ValueError) as info:
            refuse()
        assert str(info.value) == message


def test_knobs_for_another_kind_of_data_are_refused(digits: Dataset) -> None:
    regression = dataclasses.replace(
        digits, name="table", num_classes=None, y_train=digits.y_train.astype(np.float32)
    )
    with pytest.raises(ValueError) as info:
        TrainingRun("mlp", {"label_smoothing": 0.1}, regression)
    assert str(info.value) == (
        "label_smoothing: 0.1 smooths class labels, but dataset 'table' has a regression "
        "target: label_smoothing must be 0 (or left out) for regression"
    )
    TrainingRun("mlp", {"label_smoothing": 0.0}, regression)  # 0 is no smoothing: fine
    sequences = dataclasses.replace(
        digits, name="mnist1d", layout="sequence", x_train=digits.x_train[:, 0]
    )
    with pytest.raises(ValueError) as info:
        check_trainable("lstm", {"augment": "shift"}, sequences)
    assert str(info.value) == (
        "augment: 'shift' shifts and flips images, but dataset 'mnist1d' has sequence inputs: "
        "augment must be none for non-image data"
    )


def test_a_schedule_needs_the_runs_budget(digits: Dataset) -> None:
    with pytest.raises(ValueError, match=r"^lr_schedule: 'cosine' is spread over the run's epoch"):
        TrainingRun("mlp", {"lr_schedule": "cosine"}, digits)
    # a warm-up alone needs no budget
    assert TrainingRun("mlp", {"warmup_epochs": 1}, digits).lr_scheduler is not None


def test_a_trial_spreads_its_schedule_over_its_epochs(
    digits: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainable gives TrainingRun the study's max_epochs as the schedule's budget, for a
    finalist re-run to an earlier best epoch too: it follows the tuned trial's lr curve."""
    from trainables import trainable

    budgets: list[int | None] = []
    original = trainable.TrainingRun

    def recording(*args, **kwargs):
        budgets.append(kwargs.get("max_epochs"))
        return original(*args, **kwargs)

    monkeypatch.setattr(trainable, "TrainingRun", recording)
    monkeypatch.setattr(trainable, "trial_plan", lambda config, settings: (config, 0, 4))
    run_epochs: list[int] = []

    class Stop(Exception):
        pass

    def report(result, **_):
        run_epochs.append(result[m.EPOCH])
        raise Stop  # one epoch is enough to see the budget it was given

    monkeypatch.setattr(trainable.tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(trainable.tune, "report", report)
    monkeypatch.setattr(trainable.ray, "get_gpu_ids", lambda: [])
    context = type("C", (), {"get_node_id": staticmethod(lambda: "node")})
    monkeypatch.setattr(trainable.ray, "get_runtime_context", lambda: context)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    with pytest.raises(Stop):
        trainable.train_trial(
            {"lr_schedule": "cosine", "hidden_units": 8},
            digits,
            trainable.TrialSettings("mlp", max_epochs=7),
        )
    assert budgets == [7] and run_epochs == [1]
