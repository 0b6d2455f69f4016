"""tuner/spec/spaces.py: YAML -> space -> sampled config, `when` conditions, validation,
samplers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

import search_spaces
from trainables.loop import OPTIMIZER_DEFAULTS
from trainables.models import MODELS
from tuner.errors import SpecError
from tuner.spec.spaces import SearchSpace, check_batch_split, load_space, parse_space

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

SPACE_YAML = """
lr:           {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
dropout:      {type: float, low: 0.0, high: 0.5}
step_float:   {type: float, low: 0.0, high: 1.0, step: 0.25}
hidden_units: {type: int, low: 32, high: 512, log: true}
num_layers:   {type: int, low: 1, high: 3}
stepped_int:  {type: int, low: 2, high: 20, step: 6}
batch_size:   {type: categorical, choices: [32, 64, 128, 256]}
optimizer:    {type: categorical, choices: [adam, adamw, sgd]}
batch_norm:   {type: categorical, choices: [false, true]}
momentum:     {type: float, low: 0.5, high: 0.99, when: {optimizer: sgd}}
activation:   relu
epsilon:      1.0e-8
"""

N_SAMPLES = 300


def sample_many(
    space: SearchSpace, n: int = N_SAMPLES, seed: int = 0
) -> tuple[list[dict[str, Any]], optuna.Study]:
    """Sample `n` configs with a seeded RandomSampler, as a study would (ask, sample, tell)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    configs = []
    for _ in range(n):
        trial = study.ask()
        configs.append(space.sample(trial))
        study.tell(trial, 0.0)
    return configs, study


@pytest.fixture(scope="module")
def sampled() -> tuple[list[dict[str, Any]], optuna.Study]:
    return sample_many(parse_space(yaml.safe_load(SPACE_YAML)))


# --------------------------------------------------------------------------- round trip


def test_floats_within_inclusive_bounds(sampled) -> None:
    configs, _ = sampled
    for c in configs:
        assert isinstance(c["lr"], float)
        assert 1e-4 <= c["lr"] <= 1e-1
        assert 0.0 <= c["dropout"] <= 0.5


def test_ints_are_ints_within_bounds(sampled) -> None:
    configs, _ = sampled
    for c in configs:
        for name, low, high in (("hidden_units", 32, 512), ("num_layers", 1, 3)):
            assert type(c[name]) is int
            assert low <= c[name] <= high
    assert {c["num_layers"] for c in configs} == {1, 2, 3}  # both bounds are reachable


def test_log_scale_floats_and_ints(sampled) -> None:
    configs, study = sampled
    dists = study.trials[0].distributions
    assert dists["lr"].log and dists["hidden_units"].log
    assert not dists["dropout"].log
    # log-uniform over [1e-4, 1e-1]: P(lr < 1e-2) = 2/3 (uniform would give 0.099)
    below = sum(c["lr"] < 1e-2 for c in configs) / len(configs)
    assert 0.55 < below < 0.78
    # log-uniform over [32, 512]: P(h < 128) = 1/2 (uniform would give 0.2)
    below = sum(c["hidden_units"] < 128 for c in configs) / len(configs)
    assert 0.38 < below < 0.62


def test_step_is_respected(sampled) -> None:
    configs, _ = sampled
    floats = {c["step_float"] for c in configs}
    assert floats == {0.0, 0.25, 0.5, 0.75, 1.0}
    ints = {c["stepped_int"] for c in configs}
    assert ints <= {2, 8, 14, 20}
    assert len(ints) >= 3
    assert all(type(v) is int for v in ints)


def test_categoricals_come_from_choices(sampled) -> None:
    configs, _ = sampled
    assert {c["batch_size"] for c in configs} == {32, 64, 128, 256}
    assert {c["optimizer"] for c in configs} == {"adam", "adamw", "sgd"}
    assert {c["batch_norm"] for c in configs} == {False, True}
    assert all(type(c["batch_size"]) is int for c in configs)
    assert all(type(c["batch_norm"]) is bool for c in configs)


def test_constants_pass_through(sampled) -> None:
    configs, study = sampled
    for c in configs:
        assert c["activation"] == "relu"
        assert c["epsilon"] == 1e-8
    assert "activation" not in study.trials[0].params  # constants are not Optuna parameters


def test_call_returns_constants_and_suggests_on_the_trial() -> None:
    space = parse_space(yaml.safe_load(SPACE_YAML))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    trial = study.ask()
    assert space(trial) == {"activation": "relu", "epsilon": 1e-8}
    assert {"lr", "optimizer", "batch_size"} <= set(trial.params)


def test_names_lists_params_then_constants() -> None:
    space = parse_space(yaml.safe_load(SPACE_YAML))
    assert space.names()[-2:] == ["activation", "epsilon"]
    assert set(space.names()) == set(yaml.safe_load(SPACE_YAML))


# --------------------------------------------------------------------------- conditions


def test_conditional_entry_only_when_parent_has_the_value(sampled) -> None:
    configs, _ = sampled
    with_sgd = [c for c in configs if c["optimizer"] == "sgd"]
    without = [c for c in configs if c["optimizer"] != "sgd"]
    assert with_sgd and without
    assert all(0.5 <= c["momentum"] <= 0.99 for c in with_sgd)
    assert all("momentum" not in c for c in without)


def test_list_valued_when() -> None:
    space = parse_space(
        {
            "optimizer": {"type": "categorical", "choices": ["adam", "adamw", "sgd"]},
            "weight_decay": {
                "type": "float",
                "low": 1e-6,
                "high": 1e-2,
                "log": True,
                "when": {"optimizer": ["adamw", "sgd"]},
            },
        }
    )
    configs, _ = sample_many(space, n=120)
    seen = {c["optimizer"] for c in configs}
    assert seen == {"adam", "adamw", "sgd"}
    for c in configs:
        assert ("weight_decay" in c) == (c["optimizer"] in ("adamw", "sgd"))


def test_several_conditions_must_all_hold() -> None:
    space = parse_space(
        {
            "a": {"type": "categorical", "choices": ["x", "y"]},
            "b": {"type": "categorical", "choices": [1, 2]},
            "c": {"type": "int", "low": 0, "high": 5, "when": {"a": "x", "b": 2}},
        }
    )
    configs, _ = sample_many(space, n=120)
    for c in configs:
        assert ("c" in c) == (c["a"] == "x" and c["b"] == 2)
    assert any("c" in c for c in configs)


def test_boolean_condition() -> None:
    space = parse_space(
        {
            "batch_norm": {"type": "categorical", "choices": [False, True]},
            "momentum": {"type": "float", "low": 0.1, "high": 0.9, "when": {"batch_norm": True}},
        }
    )
    configs, _ = sample_many(space, n=60)
    for c in configs:
        assert ("momentum" in c) == (c["batch_norm"] is True)


def test_parents_are_sampled_before_dependants_written_after() -> None:
    raw = {
        "momentum": {"type": "float", "low": 0.5, "high": 0.99, "when": {"optimizer": "sgd"}},
        "nesterov": {"type": "categorical", "choices": [False, True], "when": {"schedule": "x"}},
        "schedule": {"type": "categorical", "choices": ["x", "y"], "when": {"optimizer": "sgd"}},
        "lr": {"type": "float", "low": 0.01, "high": 0.1},
        "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
    }
    space = parse_space(raw)
    order = list(space.params)
    assert order.index("optimizer") < order.index("momentum")
    assert order.index("optimizer") < order.index("schedule") < order.index("nesterov")
    assert order.index("momentum") < order.index("lr")  # independent entries keep written order
    configs, _ = sample_many(space, n=150)
    for c in configs:
        assert ("momentum" in c) == (c["optimizer"] == "sgd")
        assert ("schedule" in c) == (c["optimizer"] == "sgd")
        assert ("nesterov" in c) == (c.get("schedule") == "x")  # inactive parent: inactive child
    assert any("nesterov" in c for c in configs)


# --------------------------------------------------------------------------- validation errors


def space_error(raw: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as info:
        parse_space(raw)
    return str(info.value)


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ({"type": "float", "low": 1.0, "high": 1.0}, "low must be less than high"),
        ({"type": "float", "low": 2.0, "high": 1.0}, "low=2.0, high=1.0"),
        ({"type": "int", "low": 5, "high": 5}, "low must be less than high"),
        ({"type": "float", "low": 0.0, "high": 1.0, "log": True}, "log: true needs low > 0"),
        ({"type": "float", "low": -1.0, "high": 1.0, "log": True}, "low=-1.0"),
        ({"type": "int", "low": 0, "high": 8, "log": True}, "log: true needs low > 0"),
        ({"type": "float", "low": 0.1, "high": 1, "log": True, "step": 0.1}, "cannot be combined"),
        ({"type": "int", "low": 1, "high": 9, "log": True, "step": 2}, "cannot be combined"),
        ({"type": "float", "low": 0.0, "high": 1.0, "step": 0}, "step"),
        ({"type": "categorical", "choices": []}, "choices"),
        ({"type": "categorical", "choices": [1, 1]}, "distinct"),
        ({"type": "categorical"}, "choices is required"),
        ({"type": "float", "low": 0.0}, "high is required"),
        ({"type": "float", "low": "0", "high": 1.0}, "low"),
        ({"type": "int", "low": 1.5, "high": 4}, "low"),
        ({"type": "uniform", "low": 0.0, "high": 1.0}, "type"),
        ({"low": 0.0, "high": 1.0}, "type"),
        ({"type": "float", "low": 0.0, "high": 1.0, "scale": "log"}, "scale"),
    ],
)
def test_invalid_entries(entry: dict[str, Any], words: str) -> None:
    msg = space_error({"x": entry})
    assert msg.startswith("search_space.x:")
    assert words in msg


def test_log_with_step_one_int_is_fine() -> None:
    space = parse_space({"h": {"type": "int", "low": 8, "high": 64, "log": True, "step": 1}})
    assert space.params["h"].log


def test_when_naming_a_missing_entry() -> None:
    msg = space_error(
        {"momentum": {"type": "float", "low": 0.5, "high": 0.9, "when": {"optimiser": "sgd"}}}
    )
    assert "search_space.momentum.when.optimiser" in msg
    assert "'optimiser' must be a categorical entry" in msg


def test_when_naming_a_non_categorical_entry() -> None:
    msg = space_error(
        {
            "lr": {"type": "float", "low": 0.01, "high": 0.1},
            "opt": {"type": "categorical", "choices": ["a", "b"]},
            "momentum": {"type": "float", "low": 0.5, "high": 0.9, "when": {"lr": 0.05}},
        }
    )
    assert "search_space.momentum.when.lr" in msg
    assert "categoricals: ['opt']" in msg


def test_when_naming_a_constant() -> None:
    msg = space_error(
        {
            "activation": "relu",
            "slope": {"type": "float", "low": 0.01, "high": 0.3, "when": {"activation": "relu"}},
        }
    )
    assert "search_space.slope.when.activation" in msg


@pytest.mark.parametrize("wanted", ["rmsprop", ["sgd", "rmsprop"]])
def test_when_value_not_among_choices(wanted: Any) -> None:
    msg = space_error(
        {
            "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
            "momentum": {"type": "float", "low": 0.5, "high": 0.9, "when": {"optimizer": wanted}},
        }
    )
    assert "search_space.momentum.when.optimizer" in msg
    assert "'rmsprop' is not one of optimizer's choices ['adam', 'sgd']" in msg


def test_self_dependency() -> None:
    msg = space_error({"opt": {"type": "categorical", "choices": ["a", "b"], "when": {"opt": "a"}}})
    assert "search_space.opt.when.opt" in msg
    assert "cannot depend on itself" in msg


def test_cyclic_conditions() -> None:
    msg = space_error(
        {
            "a": {"type": "categorical", "choices": ["x", "y"], "when": {"c": "z"}},
            "b": {"type": "categorical", "choices": ["u", "v"], "when": {"a": "x"}},
            "c": {"type": "categorical", "choices": ["z", "w"], "when": {"b": "u"}},
        }
    )
    assert "cycle" in msg
    assert msg.startswith("search_space.")


def test_entry_name_must_be_a_string() -> None:
    assert "entry name 3" in space_error({3: {"type": "int", "low": 0, "high": 2}})


def test_entry_that_is_not_a_hyperparameter_of_the_model() -> None:
    raw = {
        "hiden_units": {"type": "int", "low": 32, "high": 64},
        "lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
    }
    with pytest.raises(SpecError) as info:
        load_space(raw, "mlp")
    msg = str(info.value)
    assert "'hiden_units' is not a hyperparameter of model 'mlp'" in msg
    assert "hidden_units" in msg.split("known:")[1]
    assert "'lr'" not in msg.split("known:")[0]


def test_constant_typo_is_caught_too() -> None:
    with pytest.raises(SpecError, match="'activaton'"):
        load_space({"activaton": "relu"}, "mlp")


def test_another_models_space_does_not_fit() -> None:
    with pytest.raises(SpecError, match=r"'conv_blocks'.*model 'mlp'"):
        load_space("cnn", "mlp")


@pytest.mark.parametrize(
    ("entry", "key", "value"),
    [
        ({"type": "int", "low": 1, "high": 64}, "search_space.batch_size.low", "1"),
        ({"type": "float", "low": 1.5, "high": 64.0}, "search_space.batch_size.low", "1.5"),
        ({"type": "categorical", "choices": [32, 1, 64]}, "search_space.batch_size.choices", "1"),
        ({"type": "categorical", "choices": [32, "64"]}, "search_space.batch_size.choices", "'64'"),
        ({"type": "categorical", "choices": [True, 32]}, "search_space.batch_size.choices", "True"),
        (1, "search_space.batch_size", "1"),
        (0, "search_space.batch_size", "0"),
    ],
)
def test_a_batch_size_below_two_is_refused(entry: Any, key: str, value: str) -> None:
    """A one-row batch is skipped in training: at batch_size 1 a trial took no optimizer step
    and still reported its untrained model as a finished trial."""
    with pytest.raises(SpecError) as info:
        load_space({"batch_size": entry}, "mlp")
    assert str(info.value).startswith(f"{key}: {value} is not a batch size: ")
    assert "batch_size must be a number of at least 2" in str(info.value)


@pytest.mark.parametrize(
    "entry",
    [
        {"type": "int", "low": 2, "high": 64},
        {"type": "int", "low": 2, "high": 512, "log": True},
        {"type": "categorical", "choices": [2, 64]},
        2,
        64,
    ],
)
def test_batch_sizes_of_two_and_more_are_fine(entry: Any) -> None:
    assert load_space({"batch_size": entry}, "mlp").names() == ["batch_size"]


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("model", ["mlp", "cnn", "lstm"])
def test_every_builtin_space_loads_for_its_model(model: str) -> None:
    assert model in search_spaces.names()
    space = load_space(model, model)
    known = {*MODELS.get(model).defaults, *OPTIMIZER_DEFAULTS}
    assert set(space.names()) <= known
    assert {"lr", "batch_size", "weight_decay", "optimizer"} <= set(space.names())
    assert "dropout" in space.names()
    configs, _ = sample_many(space, n=20, seed=3)
    for c in configs:
        assert set(c) <= known
        assert c["lr"] > 0


def test_builtin_space_names_match_models() -> None:
    assert set(search_spaces.names()) == set(MODELS.names())


def test_space_from_a_yaml_path(tmp_path: Path) -> None:
    path = tmp_path / "custom.yaml"
    path.write_text("lr: {type: float, low: 0.001, high: 0.1, log: true}\nactivation: gelu\n")
    space = load_space(str(path), "mlp")
    assert list(space.params) == ["lr"]
    assert space.constants == {"activation": "gelu"}


def test_errors_in_a_yaml_file_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "custom.yaml"
    path.write_text("lr: {type: float, low: 0.1, high: 0.001}\n")
    with pytest.raises(SpecError) as info:
        load_space(str(path), "mlp")
    msg = str(info.value)
    assert msg.startswith("search_space (custom.yaml).lr:")
    assert "low must be less than high but got low=0.1, high=0.001" in msg


@pytest.mark.parametrize(
    "entry",
    [
        {"type": "float", "low": 0.1, "high": 0.001},
        {"type": "categorical", "choices": [1, 1]},
    ],
)
def test_entry_level_rule_is_not_attributed_to_the_type_key(entry: dict[str, Any]) -> None:
    """A rule about the whole entry (bounds, distinct choices) must not read "type low must ..."."""
    msg = space_error({"x": entry})
    assert not msg.startswith("search_space.x: type "), msg


def test_unknown_space_name_lists_the_builtins() -> None:
    with pytest.raises(SpecError, match=r"'resnet' is neither a built-in space \(cnn, lstm, mlp\)"):
        load_space("resnet", "mlp")


@pytest.mark.parametrize(
    ("text", "words"),
    [("lr: [unclosed\n", "not valid YAML"), ("", "non-empty mapping"), ("- 1\n", "mapping")],
)
def test_bad_space_files(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=words):
        load_space(str(path), "mlp")


# --------------------------------------------------------------------------- recipe knobs


@pytest.mark.parametrize(
    ("name", "entry", "message"),
    [
        (
            "lr_schedule",
            {"type": "categorical", "choices": ["cosine", "linear"]},
            "search_space.lr_schedule.choices: 'linear' is not a learning-rate schedule: "
            "lr_schedule must be one of constant, cosine, onecycle, step",
        ),
        (
            "warmup_epochs",
            {"type": "int", "low": -1, "high": 3},
            "search_space.warmup_epochs.low: -1 is not a warm-up length: warmup_epochs must be "
            "a number of epochs, 0 or more",
        ),
        (
            "grad_clip_norm",
            {"type": "float", "low": 0.0, "high": 5.0},
            "search_space.grad_clip_norm.low: 0.0 is not a gradient norm bound: grad_clip_norm "
            "must be a number above 0 (or null: no clipping)",
        ),
        (
            "label_smoothing",
            {"type": "float", "low": 0.0, "high": 1.0},
            "search_space.label_smoothing.high: 1.0 is not a label-smoothing weight: "
            "label_smoothing must be at least 0 and less than 1",
        ),
        (
            "augment",
            "flip",
            "search_space.augment: 'flip' is not an augmentation: augment must be one of none, "
            "shift, shift_flip",
        ),
    ],
)
def test_recipe_values_that_cannot_run_are_refused(name: str, entry: Any, message: str) -> None:
    """Every bound, choice or constant a recipe knob can draw is checked when the space loads,
    before any trial, with the key, the value and the rule."""
    with pytest.raises(SpecError) as info:
        load_space({name: entry, "lr": 0.01}, "cnn")
    assert str(info.value) == message


def test_recipe_knobs_are_hyperparameters_of_every_model() -> None:
    space = {
        "lr_schedule": {
            "type": "categorical",
            "choices": ["constant", "cosine", "onecycle", "step"],
        },
        "warmup_epochs": {"type": "int", "low": 0, "high": 3},
        "grad_clip_norm": {"type": "float", "low": 0.5, "high": 5.0},
        "label_smoothing": {"type": "float", "low": 0.0, "high": 0.1},
        "augment": {"type": "categorical", "choices": ["none", "shift", "shift_flip"]},
    }
    for model in ("mlp", "cnn", "lstm"):
        assert load_space(space, model).names() == list(space)
    assert load_space({"grad_clip_norm": None}, "lstm").constants == {"grad_clip_norm": None}


# --------------------------------------------------------------------------- data-parallel workers


@pytest.mark.parametrize(
    "batch_size",
    [
        {"type": "categorical", "choices": [32, 64, 128]},
        64,
        {"type": "int", "low": 32, "high": 256, "step": 32},
    ],
)
def test_batch_sizes_the_workers_divide_pass(batch_size: Any) -> None:
    check_batch_split(parse_space({"batch_size": batch_size}), 4)


@pytest.mark.parametrize(
    ("batch_size", "expect"),
    [
        ({"type": "categorical", "choices": [32, 50]}, "search_space.batch_size.choices: 50"),
        (30, "search_space.batch_size: 30 is not divisible by resources.workers 4"),
        ({"type": "int", "low": 32, "high": 256}, "a range from 32 to 256 (step 1)"),
        ({"type": "int", "low": 32, "high": 256, "log": True}, "log"),
    ],
)
def test_batch_sizes_the_workers_do_not_divide_are_refused(batch_size: Any, expect: str) -> None:
    with pytest.raises(SpecError) as caught:
        check_batch_split(parse_space({"batch_size": batch_size}), 4)
    assert expect in str(caught.value) and "resources.workers 4" in str(caught.value)


def test_the_default_batch_size_must_divide_too() -> None:
    check_batch_split(parse_space({"lr": 0.01}), 4)  # 64
    with pytest.raises(SpecError, match="the default batch_size: 64 is not divisible"):
        check_batch_split(parse_space({"lr": 0.01}), 3)
    check_batch_split(parse_space({"batch_size": 30}), 1)  # one worker: anything
