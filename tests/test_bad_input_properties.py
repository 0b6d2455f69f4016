"""Bad input as properties: bad input reaches the user as a `SpecError`, never otherwise.

Generated job specs, `--set` overrides, search spaces, exported configs and raw files go through
the functions the CLI calls before Ray starts. Each must either accept the input or raise
`SpecError` (CLI exit code 2, one paragraph); any other exception type would reach the user as
exit code 1 with the exception's class name, or as a traceback. A search space that is accepted
must also be one that Optuna can sample inside the declared bounds and `when` conditions.

Hypothesis runs derandomized and without its example database, so a failure reproduces on every
run; the `test_pinned_*` tables pin the inputs that the properties found, each with the
outcome it must have: accepted, or refused with a message naming the key and the rule.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from trainables.loop import OPTIMIZER_DEFAULTS
from trainables.models import MODELS
from tuner.errors import SpecError
from tuner.results.exporting import ExportedConfig, load_exported
from tuner.spec.job_spec import (
    DatasetSpec,
    JobSpec,
    ResourcesSpec,
    SchedulerSpec,
    SearchSpec,
    load_spec,
    spec_from_dict,
)
from tuner.spec.spaces import SearchSpace, load_space

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],  # no "explain": it is slow
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.function_scoped_fixture,
    ],
)

optuna.logging.set_verbosity(optuna.logging.ERROR)

# --------------------------------------------------------------------------- building blocks

WEIRD_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "data/\x00.csv",
    "[/]",
    "[bold]x",
    "ü-名前",
    "../../etc/passwd",
    "s3://bucket/key",
    "sqlite:///x.db",
    "x" * 300,
    "None",
    "nan",
    "1e400",
    "-1",
]
HUGE_INTS = [2**63, 2**64 + 1, 10**30, -(10**30)]
SPECIAL_FLOATS = [math.nan, math.inf, -math.inf, -0.0, 1e308, -1e308, 5e-324, 0.5, 1.5, -1.5]
UNKNOWN_KEYS = ["modle", "int", "str", "float", "bool", "none", "max_epoch", "Name", "", "x.y"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(HUGE_INTS),
    st.floats(),
    st.sampled_from(SPECIAL_FLOATS),
    st.text(max_size=20),
    st.sampled_from(WEIRD_STRINGS),
)
garbage = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), inner, max_size=3),
    ),
    max_leaves=8,
)
ints = st.one_of(st.integers(-3, 50), st.integers(), st.sampled_from(HUGE_INTS))
numbers = st.one_of(
    st.floats(-2, 5), st.floats(), st.sampled_from(SPECIAL_FLOATS), st.integers(-2, 5), ints
)
texts = st.one_of(st.text(max_size=20), st.sampled_from(WEIRD_STRINGS))
unknown_keys = st.one_of(st.sampled_from(UNKNOWN_KEYS), st.text(max_size=8))


def maybe(good: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly a plausible value, sometimes garbage."""
    return st.one_of(good, good, good, good, garbage)


def section(fields: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """A spec section: a mapping of some known keys (plausible or garbage values), now and
    then an unknown key; or, sometimes, not a mapping at all."""
    known = st.fixed_dictionaries({}, optional={k: maybe(v) for k, v in fields.items()})
    extra = st.dictionaries(unknown_keys, garbage, max_size=1)
    no_extra = st.just({})
    mapping = st.builds(
        lambda a, b: {**b, **a}, known, st.one_of(no_extra, no_extra, no_extra, extra)
    )
    return st.one_of(mapping, mapping, mapping, mapping, garbage)


DATASET_FIELDS = {
    "name": st.sampled_from(
        ["digits", "images", "mnist", "mnist1d", "mnist_sample", "table", "cifar", ""]
    ),
    "path": texts,
    "target": texts,
    "window": ints,
    "val_fraction": numbers,
    "seed": ints,
    "image_size": st.one_of(st.lists(ints, max_size=3), st.none()),
    "grayscale": st.one_of(st.booleans(), scalars),
    "options": st.dictionaries(
        st.one_of(st.text(max_size=8), st.sampled_from(["path", "n"])), garbage, max_size=3
    ),
}
SECTIONS = {
    "dataset": section(DATASET_FIELDS),
    "objective": section(
        {
            "metric": st.sampled_from(["val_loss", "val_acc", "train_loss", "accuracy", ""]),
            "mode": st.sampled_from(["min", "max", None, "MIN"]),
        }
    ),
    "search": section(
        {
            "algorithm": st.sampled_from(["tpe", "random", "cmaes", "qmc", "grid"]),
            "num_samples": ints,
            "max_concurrent": ints,
            "seed": ints,
            "storage": texts,
        }
    ),
    "scheduler": section(
        {
            "name": st.sampled_from(["asha", "fifo", "pbt"]),
            "max_epochs": ints,
            "grace_period": ints,
            "reduction_factor": numbers,
            "stop_on_overfit": section({"patience": ints, "min_delta": numbers}),
        }
    ),
    "resources": section({"cpu": numbers, "gpu": numbers, "gpu_memory_gb": numbers}),
    "training": section(
        {
            "precision": st.sampled_from(["fp32", "bf16", "fp16", "fp8", "FP16", ""]),
            "compile": st.booleans(),
            "data_on_device": st.sampled_from([True, False, None, "auto"]),
        }
    ),
    "tracking": section({"enabled": st.booleans(), "uri": texts, "experiment": texts}),
    "failure": section({"max_retries": ints}),
    "diagnostics": section(
        {
            "min_epochs": ints,
            "overfit_rise": numbers,
            "underfit_train_acc": numbers,
            "underfit_loss_ratio": numbers,
            "diverge_factor": numbers,
        }
    ),
}
TOP_LEVEL = {
    "name": st.one_of(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,12}\Z"), texts),
    "model": st.sampled_from(["mlp", "cnn", "lstm", "rnn", ""]),
    "search_space": st.one_of(
        st.sampled_from(["mlp", "cnn", "lstm", "nope", "spaces/x.yaml", "a/\x00b"]), garbage
    ),
    "storage": texts,
}


@st.composite
def wild_specs(draw: st.DrawFn) -> dict[Any, Any]:
    """A job-spec mapping: the required keys (now and then one dropped), some optional
    sections, now and then an unknown top-level key; most of these are refused."""
    raw = draw(
        st.fixed_dictionaries(
            {
                "name": maybe(TOP_LEVEL["name"]),
                "model": maybe(TOP_LEVEL["model"]),
                "dataset": SECTIONS["dataset"],
            },
            optional={
                "search_space": maybe(TOP_LEVEL["search_space"]),
                "storage": maybe(TOP_LEVEL["storage"]),
                **{k: v for k, v in SECTIONS.items() if k != "dataset"},
            },
        )
    )
    for key in draw(st.lists(st.sampled_from(["name", "model", "dataset"]), max_size=1)):
        raw.pop(key)
    raw.update(draw(st.dictionaries(unknown_keys, garbage, max_size=1)))
    return raw


GOOD_SECTIONS = {
    "dataset": {
        "name": st.sampled_from(["digits", "mnist_sample", "mnist1d", "table", "mnist"]),
        "path": st.sampled_from(["data/sales.csv", "/data/mnist", "s3://b/k.parquet"]),
        "target": st.sampled_from(["label", "y"]),
        "window": st.integers(2, 100),
        "val_fraction": st.floats(0.01, 0.99),
        "seed": st.integers(0, 2**32 - 1),
    },
    "objective": {"metric": st.sampled_from(["val_loss", "train_loss", "generalization_gap"])},
    "search": {
        "algorithm": st.sampled_from(["tpe", "random", "cmaes", "qmc"]),
        "num_samples": st.integers(1, 1000),
        "max_concurrent": st.integers(1, 64),
        "seed": st.integers(0, 2**32 - 1),
        "storage": st.sampled_from(["sqlite:///optuna.db", "postgresql://h/db"]),
    },
    "scheduler": {
        "name": st.sampled_from(["asha", "fifo"]),
        "max_epochs": st.integers(20, 100),
        "grace_period": st.integers(1, 20),
        "reduction_factor": st.floats(1.5, 8),
        "stop_on_overfit": st.fixed_dictionaries({"patience": st.integers(1, 9)}),
    },
    "resources": {"cpu": st.floats(0.25, 16), "gpu": st.sampled_from([0, 0.25, 0.5, 1])},
    "tracking": {
        "enabled": st.booleans(),
        "uri": st.sampled_from(["sqlite:///mlflow.db", "http://mlflow:5000"]),
        "experiment": st.sampled_from(["exp", "mnist-mlp"]),
    },
    "failure": {"max_retries": st.integers(0, 5)},
    "diagnostics": {"min_epochs": st.integers(1, 5), "diverge_factor": st.floats(1.5, 10)},
}
MUTATION_VALUES = st.one_of(garbage, numbers, texts, ints)


@st.composite
def mutated_specs(draw: st.DrawFn) -> dict[Any, Any]:
    """A valid spec with 0 to 3 mutations: a key set to garbage (known or unknown key, top
    level or in a section), a required key dropped, or a whole section replaced."""
    raw: dict[Any, Any] = {
        "name": draw(st.from_regex(r"\Ap[a-z0-9_.-]{0,10}\Z")),
        "model": draw(st.sampled_from(["mlp", "cnn", "lstm"])),
        "dataset": {"name": "digits"},
    }
    for name, fields in GOOD_SECTIONS.items():
        if draw(st.booleans()):
            optional = {k: v for k, v in fields.items() if k != "name"}
            values = draw(st.fixed_dictionaries({}, optional=optional))
            raw[name] = {**raw.get(name, {}), **values}
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["field", "field", "field", "drop", "section"]))
        if kind == "drop":
            raw.pop(draw(st.sampled_from(["name", "model", "dataset"])), None)
        elif kind == "section":
            raw[draw(st.sampled_from(sorted(GOOD_SECTIONS)))] = draw(garbage)
        else:
            where = draw(st.sampled_from([None, *sorted(GOOD_SECTIONS)]))
            known = sorted(GOOD_SECTIONS[where]) if where else sorted(TOP_LEVEL)
            key = draw(st.one_of(st.sampled_from(known), unknown_keys))
            node = raw if where is None else raw.setdefault(where, {})
            if isinstance(node, dict):
                node[key] = draw(MUTATION_VALUES)
    return raw


job_specs = st.one_of(wild_specs(), mutated_specs())


SECTION_MODELS = {
    "dataset": DatasetSpec,
    "scheduler": SchedulerSpec,
    "search": SearchSpec,
    "resources": ResourcesSpec,
}
VALID_SPEC: dict[str, Any] = {
    "name": "prop",
    "model": "mlp",
    "dataset": {"name": "digits"},
    "scheduler": {"max_epochs": 4},
}


def outcome_of_spec(
    raw: dict[Any, Any], overrides: list[str] | None = None, record: bool = True
) -> JobSpec | None:
    """`spec_from_dict`'s answer: a JobSpec, or None for a SpecError whose message is one
    non-empty paragraph that says what it is about. Any other exception propagates.
    `record`: count the outcome as a hypothesis event (only inside a @given test)."""
    try:
        spec = spec_from_dict(copy.deepcopy(raw), overrides=overrides)
    except SpecError as exc:
        message = str(exc)
        assert message.strip(), "empty SpecError message"
        assert "Traceback" not in message and "\n\n" not in message, message
        assert message.startswith(("invalid job spec: ", "--set ")), message
        assert len(message) > len("invalid job spec: "), message
        if record:
            event("refused")
        return None
    assert isinstance(spec, JobSpec)
    if record:
        event("accepted")
    return spec


# --------------------------------------------------------------------------- job specs


@PROPERTY
@given(raw=job_specs)
def test_spec_from_dict_accepts_or_raises_spec_error(raw: dict[Any, Any]) -> None:
    outcome_of_spec(raw)


@PROPERTY
@given(
    where=st.sampled_from([(), ("dataset",), ("scheduler",), ("search",), ("resources",)]),
    key=unknown_keys.filter(bool),
    value=st.one_of(st.integers(0, 9), st.text(max_size=5)),
)
def test_an_unknown_key_is_named_with_its_dotted_path(
    where: tuple[str, ...], key: str, value: Any
) -> None:
    """`dataset.int: 3` is reported as `dataset.int`, whatever the unknown key is called."""
    raw = copy.deepcopy(VALID_SPEC)
    node, model = raw, JobSpec
    for part in where:
        node, model = node.setdefault(part, {}), SECTION_MODELS[part]
    if key in model.model_fields:
        return
    node[key] = value
    with pytest.raises(SpecError) as caught:
        spec_from_dict(raw)
    dotted = ".".join((*where, key))
    assert f"{dotted} is not a known key" in str(caught.value), str(caught.value)


def unusable_values(spec: JobSpec) -> list[str]:
    """The values of an accepted spec that Ray, Optuna, numpy or scikit-learn cannot use:
    non-finite resources, and seeds outside numpy's [0, 2**32)."""
    problems = [
        f"resources.{field}={value}"
        for field, value in spec.resources.model_dump().items()
        if isinstance(value, int | float) and not math.isfinite(value)  # not auto, pack, spread
    ]
    for key, seed in (("dataset.seed", spec.dataset.seed), ("search.seed", spec.search.seed)):
        if not 0 <= seed < 2**32:
            problems.append(f"{key}={seed}")
    return problems


USED_AFTER_VALIDATION = [
    ("dataset", "seed"),
    ("dataset", "val_fraction"),
    ("dataset", "window"),
    ("search", "seed"),
    ("search", "num_samples"),
    ("scheduler", "max_epochs"),
    ("resources", "cpu"),
    ("resources", "gpu"),
    ("resources", "gpu_memory_gb"),
]


@PROPERTY
@given(
    where=st.sampled_from(USED_AFTER_VALIDATION),
    value=st.one_of(st.sampled_from(SPECIAL_FLOATS), st.integers(), st.sampled_from(HUGE_INTS)),
)
def test_an_accepted_spec_holds_no_value_that_fails_after_ray_starts(
    where: tuple[str, str], value: Any
) -> None:
    """Validation is the last chance to answer with exit 2: an accepted spec must not hold
    values that only fail once Ray runs (inf CPUs, a seed numpy refuses)."""
    raw = copy.deepcopy(VALID_SPEC)
    section_name, field = where
    raw.setdefault(section_name, {})[field] = value
    spec = outcome_of_spec(raw)
    if spec is not None:
        assert not unusable_values(spec), unusable_values(spec)


OVERRIDE_KEYS = [
    "name",
    "model",
    "dataset.name",
    "dataset.path",
    "dataset.seed",
    "dataset.val_fraction",
    "dataset.window",
    "dataset.image_size",
    "dataset.grayscale",
    "dataset.options",
    "dataset.options.n",
    "search.num_samples",
    "search.seed",
    "search.storage",
    "scheduler.max_epochs",
    "scheduler.grace_period",
    "scheduler.stop_on_overfit.patience",
    "resources.gpu",
    "resources.cpu",
    "tracking.uri",
    "storage",
    "search_space",
    "search_space.lr.low",
    "name.first",
    "dataset.name.x",
    "scheduler.max_epochs.x",
    "objective.mode",
    "failure.max_retries",
    "modle",
    "",
    " ",
    ".",
    "a..b",
]
YAML_VALUES = [
    "",
    "5",
    "-1",
    "0",
    "1.5",
    ".inf",
    ".nan",
    "null",
    "~",
    "true",
    "[1, 2]",
    "{a: 1}",
    "[1",
    "{a: ",
    "'unterminated",
    '"a\\0b"',
    "!!python/object/apply:os.system ['true']",
    "!!binary aGVsbG8=",
    "&a [*a]",
    "*undefined",
    "2020-01-01",
    "0x1F",
    "1_000",
    "- a\n- b",
    "a: b: c",
    "\t",
    "\x00",
    "9" * 5000,
    "[" * 1000,
]
key_value = st.builds(
    lambda key, value: f"{key}={value}",
    st.one_of(st.sampled_from(OVERRIDE_KEYS), st.text(max_size=12)),
    st.one_of(st.sampled_from(YAML_VALUES), st.text(max_size=20)),
)
good_overrides = st.sampled_from(
    [
        "scheduler.max_epochs=10",
        "scheduler.grace_period=2",
        "search.num_samples=4",
        "search.algorithm=random",
        "dataset.val_fraction=0.3",
        "dataset.name=mnist1d",
        "resources.gpu=0.5",
        "resources.cpu=2",
        "name=other-name",
        "search_space=cnn",
        "tracking.enabled=false",
        "scheduler.stop_on_overfit={patience: 3}",
        "storage=./results",
        "dataset.path=data/x.csv",
    ]
)
overrides = st.lists(
    st.one_of(st.text(max_size=30), key_value, key_value, good_overrides, good_overrides),
    min_size=1,
    max_size=3,
)


@PROPERTY
@given(texts=overrides)
def test_set_overrides_accept_or_raise_spec_error(texts: list[str]) -> None:
    outcome_of_spec(VALID_SPEC, overrides=texts)


# --------------------------------------------------------------------------- search spaces

MODEL_NAMES = ["mlp", "cnn", "lstm"]
KNOWN_HPS = {
    model: sorted({*MODELS.get(model).defaults, *OPTIMIZER_DEFAULTS}) for model in MODEL_NAMES
}
ALL_HPS = sorted({n for names in KNOWN_HPS.values() for n in names})
TYPOS = ["learning_rate", "hiden_units", "lr ", ""]
entry_names = st.one_of(st.sampled_from(ALL_HPS), st.sampled_from(TYPOS))
bounds = st.one_of(
    st.integers(-10, 10),
    st.floats(-10, 10),
    st.floats(),
    st.integers(),
    st.sampled_from(SPECIAL_FLOATS + HUGE_INTS),
    garbage,
)
choice_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(-3, 3),
    st.text(max_size=4),
    st.sampled_from(["adam", "sgd", "relu"]),
)
conditions = st.one_of(
    st.dictionaries(
        entry_names,
        st.one_of(choice_values, st.lists(choice_values, max_size=3), garbage),
        max_size=2,
    ),
    garbage,
)


def typed_entry(kind: st.SearchStrategy, fields: dict[str, st.SearchStrategy]):
    return st.fixed_dictionaries({"type": kind}, optional={**fields, "when": conditions})


numeric_fields = {
    "low": bounds,
    "high": bounds,
    "log": maybe(st.booleans()),
    "step": st.one_of(st.none(), bounds),
}
any_entries = st.one_of(
    garbage,  # a constant, or a mapping with no usable type
    typed_entry(st.just("float"), numeric_fields),
    typed_entry(st.just("int"), numeric_fields),
    typed_entry(
        st.just("categorical"),
        {"choices": st.one_of(st.lists(choice_values, max_size=5), garbage)},
    ),
    typed_entry(
        st.one_of(st.sampled_from(["uniform", "loguniform", "Float", ""]), garbage),
        {**numeric_fields, "choices": garbage},
    ),
)
any_spaces = st.dictionaries(st.one_of(entry_names, st.integers()), any_entries, max_size=6)


@PROPERTY
@given(raw=any_spaces, model=st.sampled_from(MODEL_NAMES))
def test_load_space_accepts_or_raises_spec_error(raw: dict[Any, Any], model: str) -> None:
    try:
        space = load_space(copy.deepcopy(raw), model)
    except SpecError as exc:
        assert str(exc).startswith("search_space"), str(exc)
        assert "\n\n" not in str(exc), str(exc)
        event("refused")
        return
    assert isinstance(space, SearchSpace)
    event("accepted")


def sample_configs(space: SearchSpace, seed: int, n: int = 4) -> list[dict[str, Any]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna warns when a step does not divide the range
        return [space.sample(study.ask()) for _ in range(n)]


def same_choice(value: Any, choice: Any) -> bool:
    return value is choice or (type(value) is type(choice) and value == choice)


def check_config(raw: dict[str, Any], config: dict[str, Any]) -> None:
    """The config has every active entry inside its bounds or choices, no inactive entry, and
    the constants as written; active means every `when` parent took one of the given values."""
    assert set(config) <= set(raw), (config, raw)
    active: dict[str, bool] = {}

    def is_on(name: str) -> bool:
        if name not in active:
            when = raw[name].get("when") or {} if isinstance(raw[name], dict) else {}
            active[name] = all(
                is_on(parent)
                and any(
                    same_choice(config.get(parent), w)
                    for w in (wanted if isinstance(wanted, list) else [wanted])
                )
                for parent, wanted in when.items()
            )
        return active[name]

    for name, entry in raw.items():
        if not isinstance(entry, dict):
            assert config[name] is entry or config[name] == entry, (name, config)
            continue
        if not is_on(name):
            assert name not in config, f"{name} sampled although its `when` {entry} is off"
            continue
        assert name in config, f"{name} missing although its `when` holds: {config}"
        value = config[name]
        if entry["type"] == "categorical":
            assert any(same_choice(value, c) for c in entry["choices"]), (name, value, entry)
            continue
        low, high, step = entry["low"], entry["high"], entry.get("step")
        assert math.isfinite(value) and low <= value <= high, (name, value, entry)
        if entry["type"] == "int":
            assert isinstance(value, int) and not isinstance(value, bool), (name, value)
            assert (value - low) % (step or 1) == 0, (name, value, entry)
        elif step:
            k = (value - low) / step
            assert abs(k - round(k)) < 1e-6 * max(1.0, abs(k)), (name, value, entry)


@st.composite
def finite_spaces(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """Mostly valid spaces with finite, moderate numbers and `when` conditions between
    categoricals (in any order, now and then a cycle or a value outside the choices).
    Choices never mix types that compare equal (0 and False): see the aliasing test."""
    model = draw(st.sampled_from(MODEL_NAMES))
    names = draw(
        st.lists(
            st.sampled_from([*KNOWN_HPS[model], *KNOWN_HPS[model], "learning_rate"]),
            unique=True,
            min_size=1,
            max_size=6,
        )
    )
    raw: dict[str, Any] = {}
    for name in names:
        kind = draw(st.sampled_from(["float", "int", "categorical", "constant"]))
        wrong = draw(st.integers(0, 9)) == 0  # now and then bounds the space must refuse
        if kind == "float":
            low, width = draw(st.floats(-1e3, 1e3)), draw(st.floats(1e-3, 1e3))
            low, high = (low + width, low) if wrong else (low, low + width)
            log = draw(st.booleans()) and (low > 0 or wrong)
            entry = {"type": "float", "low": low, "high": high, "log": log}
            step = draw(st.one_of(st.none(), st.floats(1e-3, 50)))
            if step is not None and not log:
                entry["step"] = step
        elif kind == "int":
            low, width = draw(st.integers(-1000, 1000)), draw(st.integers(1, 1000))
            low, high = (low + width, low) if wrong else (low, low + width)
            log = draw(st.booleans()) and (low > 0 or wrong)
            entry = {"type": "int", "low": low, "high": high, "log": log}
            step = draw(st.one_of(st.none(), st.integers(1, 20)))
            if step is not None and not log:
                entry["step"] = step
        elif kind == "categorical":
            choice = st.one_of(st.text(max_size=4), st.integers(-5, 5), st.none())
            choices = draw(st.lists(choice, min_size=1, max_size=4, unique_by=repr))
            entry = {"type": "categorical", "choices": choices}
        else:
            entry = draw(st.one_of(st.integers(-5, 5), st.text(max_size=4), st.booleans()))
        raw[name] = entry
    categoricals = [n for n, e in raw.items() if isinstance(e, dict) and "choices" in e]
    for name, entry in raw.items():
        parents = [c for c in categoricals if c != name]
        if not isinstance(entry, dict) or not parents or not draw(st.booleans()):
            continue
        parent = draw(st.sampled_from(parents))
        in_choices = st.sampled_from(raw[parent]["choices"])
        entry["when"] = {
            parent: draw(
                st.one_of(in_choices, in_choices, st.lists(in_choices, min_size=1, max_size=2))
            )
        }
    return model, raw


@PROPERTY
@given(model_and_raw=finite_spaces(), seed=st.integers(0, 2**32 - 1))
def test_an_accepted_space_samples_inside_its_bounds_and_conditions(
    model_and_raw: tuple[str, dict[str, Any]], seed: int
) -> None:
    model, raw = model_and_raw
    try:
        space = load_space(copy.deepcopy(raw), model)
    except SpecError as exc:
        assert str(exc).startswith("search_space"), str(exc)
        event("refused")
        return
    event("accepted")
    for config in sample_configs(space, seed):
        check_config(raw, config)


EXTREME_BOUNDS = [math.inf, -math.inf, math.nan, 1e308, -1e308, 5e-324, 0.0, 1.0, -1.0]
EXTREME_STEPS = [None, 1e-30, 5e-324, 1e300, math.inf, 0.1]


@PROPERTY
@given(
    low=st.sampled_from(EXTREME_BOUNDS),
    high=st.sampled_from(EXTREME_BOUNDS),
    log=st.booleans(),
    step=st.sampled_from(EXTREME_STEPS),
    seed=st.integers(0, 2**32 - 1),
)
def test_extreme_float_bounds_are_refused_or_sampled_inside_them(
    low: float, high: float, log: bool, step: float | None, seed: int
) -> None:
    """Non-finite bounds, ranges that overflow and steps Optuna's Decimal arithmetic cannot
    divide by must be refused by `load_space`, not fail later inside Optuna (after Ray starts)."""
    raw: dict[str, Any] = {"lr": {"type": "float", "low": low, "high": high, "log": log}}
    if step is not None:
        raw["lr"]["step"] = step
    try:
        space = load_space(copy.deepcopy(raw), "mlp")
    except SpecError:
        event("refused")
        return
    event("accepted")
    for config in sample_configs(space, seed):
        check_config(raw, config)


ALIASING_CHOICES = [0, False, 1, True, 1.0, 0.0, None, "0", "1"]


@PROPERTY
@given(
    choices=st.lists(
        st.sampled_from(ALIASING_CHOICES), min_size=2, max_size=4, unique_by=repr
    ).flatmap(lambda cs: st.tuples(st.just(cs), st.sampled_from(cs))),
    seed=st.integers(0, 2**32 - 1),
)
def test_when_matches_the_choice_written_not_an_equal_value_of_another_type(
    choices: tuple[list[Any], Any], seed: int
) -> None:
    """Choices that compare equal across types ([0, false], [1, 1.0]) cannot be told apart by
    Optuna or by a `when` condition, so the space is refused rather than sampled ambiguously."""
    values, wanted = choices
    raw = {
        "batch_norm": {"type": "categorical", "choices": values},
        "momentum": {"type": "float", "low": 0.5, "high": 0.9, "when": {"batch_norm": wanted}},
    }
    aliased = any(a == b for i, a in enumerate(values) for b in values[i + 1 :])
    if aliased:
        with pytest.raises(SpecError, match="choices must be distinct"):
            load_space(copy.deepcopy(raw), "mlp")
        return
    space = load_space(copy.deepcopy(raw), "mlp")
    for config in sample_configs(space, seed, n=8):
        check_config(raw, config)


# --------------------------------------------------------------------------- exported configs

EXPORT_FIELDS = {
    "model": st.sampled_from(["mlp", "cnn", "lstm", "gpt"]),
    "dataset": SECTIONS["dataset"],
    "hyperparameters": st.dictionaries(st.sampled_from(ALL_HPS), choice_values, max_size=4),
    "epochs": ints,
    "seed": ints,
    "metrics": st.dictionaries(st.sampled_from(["val_loss", "val_acc"]), numbers, max_size=2),
    "source": st.dictionaries(st.sampled_from(["study", "rank", "tracking_uri"]), scalars),
}


@st.composite
def exported_mappings(draw: st.DrawFn) -> dict[Any, Any]:
    """What `tuner export` writes, with 0 to 3 keys dropped or set to anything; or a mapping
    of plausible-or-garbage values for some keys."""
    if draw(st.booleans()):
        raw = draw(
            st.fixed_dictionaries(
                {k: maybe(v) for k, v in EXPORT_FIELDS.items() if k in ("model", "dataset")},
                optional={
                    k: maybe(v) for k, v in EXPORT_FIELDS.items() if k not in ("model", "dataset")
                },
            )
        )
        raw.update(draw(st.dictionaries(unknown_keys, garbage, max_size=1)))
        return raw
    raw = {
        "model": draw(st.sampled_from(["mlp", "cnn", "lstm"])),
        "dataset": {"name": "digits", "val_fraction": 0.2, "seed": 0},
        "hyperparameters": draw(EXPORT_FIELDS["hyperparameters"]),
        "epochs": draw(st.integers(1, 50)),
        "seed": draw(st.integers(0, 100)),
        "metrics": {"val_loss": 0.08, "diagnosis": "good_fit"},
        "source": {"study": "s", "trial_id": "t1", "rank": 1},
    }
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.one_of(st.sampled_from(sorted(raw)), unknown_keys))
        if draw(st.booleans()):
            raw.pop(key, None)
        elif key == "dataset" and isinstance(raw.get("dataset"), dict) and draw(st.booleans()):
            field = draw(st.sampled_from(sorted(DATASET_FIELDS)))
            raw["dataset"] = {**raw["dataset"], field: draw(maybe(DATASET_FIELDS[field]))}
        else:
            raw[key] = draw(MUTATION_VALUES)
    return raw


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bad-input-files")


@PROPERTY
@given(raw=exported_mappings(), as_json=st.booleans())
def test_load_exported_accepts_or_raises_spec_error(
    scratch: Path, raw: dict[Any, Any], as_json: bool
) -> None:
    if as_json:
        path = scratch / "config.json"
        try:
            path.write_text(json.dumps(raw))
        except TypeError:  # keys JSON cannot hold: write YAML instead
            path.write_text(yaml.safe_dump(raw))
    else:
        path = scratch / "config.yaml"
        path.write_text(yaml.safe_dump(raw))
    try:
        config = load_exported(path)
    except SpecError as exc:
        message = str(exc)
        assert message.startswith(("invalid exported config: ", "config file ")), message
        assert "\n\n" not in message, message
        event("refused")
        return
    assert isinstance(config, ExportedConfig)
    event("accepted")


# --------------------------------------------------------------------------- raw files

PATHOLOGICAL_FILES = [
    "- name: x\n- model: mlp\n",
    "just a string",
    "42",
    "null",
    "",
    "[" * 1000,
    "{" * 1000,
    "name: " + "9" * 5000 + "\n",
    "epochs: " + "9" * 5000 + "\n",
    "name: !!python/object/apply:os.system ['true']\n",
    "%YAML 9.9\n---\nname: x\n",
    "---\nname: x\n---\nname: y\n",
    "\ufeffname: x\nmodel: mlp\n",
    "a: &x [*x]\n",
    "name: x\n\tmodel: mlp\n",
    'name: "a\\0b"\nmodel: mlp\ndataset: {name: digits}\nstorage: "a\\0b"\n',
]
raw_files = st.one_of(
    st.binary(max_size=200),
    st.binary(max_size=50).map(lambda b: b"\xff\xfe" + b),
    st.text(max_size=200).map(lambda s: s.encode()),
    st.text(max_size=50).map(lambda s: s.encode("utf-16")),
    st.sampled_from(PATHOLOGICAL_FILES).map(lambda s: s.encode()),
    garbage.filter(lambda v: not isinstance(v, dict)).map(
        lambda v: yaml.safe_dump(v, allow_unicode=True).encode()
    ),
)


FILE_LOADERS = {
    "load_spec": load_spec,  # a job spec file
    "load_exported": load_exported,  # an exported config (`tuner train`)
    "load_space": lambda path: load_space(str(path), "mlp"),  # a search-space file
}


@PROPERTY
@given(content=raw_files, loader=st.sampled_from(sorted(FILE_LOADERS)))
def test_a_file_of_anything_is_accepted_or_raises_spec_error(
    scratch: Path, content: bytes, loader: str
) -> None:
    path = scratch / "anything.yaml"
    path.write_bytes(content)
    try:
        result = FILE_LOADERS[loader](path)
    except SpecError as exc:
        assert str(exc).strip() and "\n\n" not in str(exc), str(exc)
        event("refused")
        return
    assert isinstance(result, (JobSpec, ExportedConfig, SearchSpace))
    event("accepted")


# --------------------------------------------------------------------------- pinned inputs
# What the properties above found, one test per input, so that each bug fails by its own name.
# Each input states its outcome: ACCEPTED, or the part of the SpecError message that names the
# key (or file) and the rule. The accepted neighbours show the rule refuses no more than it says.

ACCEPTED = "accepted"


def pinned_spec_outcome(raw: dict[str, Any], overrides: list[str] | None) -> str:
    """ACCEPTED, or the SpecError's message (checked as the properties check it)."""
    try:
        spec_from_dict(copy.deepcopy(raw), overrides=overrides)
    except SpecError as exc:
        outcome_of_spec(raw, overrides, record=False)  # the one-paragraph message rules
        return str(exc)
    return ACCEPTED


@pytest.mark.parametrize(
    ("raw", "overrides", "expected"),
    [
        pytest.param(
            {**VALID_SPEC, "resources": {"gpu": math.inf}},
            None,
            "resources.gpu must be a finite number but got inf",
            id="gpu-inf",
        ),
        pytest.param({**VALID_SPEC, "resources": {"gpu": 0.25}}, None, ACCEPTED, id="gpu-0.25"),
        pytest.param(
            {**VALID_SPEC, "dataset": {"name": "digits", "path": "a\x00b"}},
            None,
            r"dataset.path 'a\x00b' contains a NUL character",
            id="path-nul",
        ),
        pytest.param(
            {**VALID_SPEC, "dataset": {"name": "digits", "path": "data/ü-名前.csv"}},
            None,
            ACCEPTED,
            id="path-unicode",
        ),
        pytest.param(
            {**VALID_SPEC, "storage": "a\x00b"},
            None,
            r"storage 'a\x00b' contains a NUL character",
            id="storage-nul",
        ),
        pytest.param({**VALID_SPEC, "storage": "s3://b/results"}, None, ACCEPTED, id="storage-s3"),
        pytest.param(
            {**VALID_SPEC, "search_space": "a/\x00b"},
            None,
            r"search_space 'a/\x00b' contains a NUL character",
            id="space-path-nul",
        ),
        pytest.param(
            {**VALID_SPEC, "search": {"num_samples": -(10**5000)}},
            None,
            "search.num_samples must be greater than or equal to 1 but got <int of 16610 bits>",
            id="int-5000-digits",
        ),
        pytest.param(
            {**VALID_SPEC, "search": {"num_samples": 10**5}}, None, ACCEPTED, id="int-100000"
        ),
        pytest.param(
            VALID_SPEC,
            ["search.seed=" + "9" * 5000],
            "--set search.seed: value '9999",
            id="set-int-5000-digits",
        ),
        pytest.param(VALID_SPEC, ["search.seed=4294967295"], ACCEPTED, id="set-seed-2**32-1"),
        pytest.param(
            VALID_SPEC,
            ["search.seed=4294967296"],
            "search.seed must be less than 4294967296 but got 4294967296",
            id="set-seed-2**32",
        ),
        pytest.param(
            VALID_SPEC, ["name=" + "[" * 1000], "--set name: value '[[[[", id="set-deep-yaml"
        ),
        pytest.param(
            VALID_SPEC,
            ['storage="a\\0b"'],
            r"storage 'a\x00b' contains a NUL character",
            id="set-storage-nul",
        ),
        pytest.param(VALID_SPEC, ["storage=./results"], ACCEPTED, id="set-storage"),
    ],
)
def test_pinned_spec_outcome(
    raw: dict[str, Any], overrides: list[str] | None, expected: str
) -> None:
    outcome = pinned_spec_outcome(raw, overrides)
    if expected == ACCEPTED:
        assert outcome == ACCEPTED
    else:
        assert expected in outcome, outcome
        if expected.startswith("--set"):
            assert "is not valid YAML" in outcome, outcome


VALID_FILES = {
    "load_spec": "name: x\nmodel: mlp\ndataset: {name: digits}\n",
    "load_space": "lr: {type: float, low: 0.001, high: 0.1, log: true}\n",
    "load_exported": (
        "model: mlp\ndataset: {name: digits, val_fraction: 0.2, seed: 0}\n"
        "hyperparameters: {lr: 0.01}\nepochs: 3\nseed: 0\n"
    ),
}
FILE_WHAT = {
    "load_spec": "spec file",
    "load_space": "search_space file",
    "load_exported": "config file",
}
NUL_STORAGE = b'name: x\nmodel: mlp\ndataset: {name: digits}\nstorage: "a\\0b"\n'


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(b"\xff\xfe\x00 name: x\n", "{what} '{path}' is not UTF-8 text", id="not-utf8"),
        pytest.param(
            ("name: " + "9" * 5000 + "\n").encode(),
            "{what} '{path}' is not valid YAML: Exceeds the limit (4300 digits)",
            id="int-5000-digits",
        ),
        pytest.param(
            ("[" * 1000).encode(),
            "{what} '{path}' is not valid YAML: maximum recursion depth exceeded",
            id="deep-nesting",
        ),
    ],
)
@pytest.mark.parametrize("loader", sorted(FILE_LOADERS))
def test_pinned_unreadable_file_is_refused_naming_it(
    tmp_path: Path, content: bytes, expected: str, loader: str
) -> None:
    path = tmp_path / "file.yaml"
    path.write_bytes(content)
    with pytest.raises(SpecError) as caught:
        FILE_LOADERS[loader](path)
    assert expected.format(what=FILE_WHAT[loader], path=path) in str(caught.value)


@pytest.mark.parametrize("kind", sorted(VALID_FILES))
@pytest.mark.parametrize("loader", sorted(FILE_LOADERS))
def test_pinned_valid_file_is_accepted_by_its_own_loader_only(
    tmp_path: Path, kind: str, loader: str
) -> None:
    path = tmp_path / "file.yaml"
    path.write_text(VALID_FILES[kind])
    if kind == loader:
        assert isinstance(FILE_LOADERS[loader](path), (JobSpec, ExportedConfig, SearchSpace))
    else:
        with pytest.raises(SpecError):
            FILE_LOADERS[loader](path)


@pytest.mark.parametrize(
    ("loader", "expected"),
    [
        ("load_spec", r"invalid job spec: storage 'a\x00b' contains a NUL character"),
        ("load_exported", "invalid exported config: hyperparameters is required"),
        ("load_space", "search_space (file.yaml).dataset: type"),
    ],
)
def test_pinned_nul_storage_file_outcome(tmp_path: Path, loader: str, expected: str) -> None:
    path = tmp_path / "file.yaml"
    path.write_bytes(NUL_STORAGE)
    with pytest.raises(SpecError) as caught:
        FILE_LOADERS[loader](path)
    assert expected in str(caught.value), str(caught.value)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        pytest.param(
            {"type": "float", "low": 0.0, "high": math.inf},
            "search_space.lr: high must be a finite number",
            id="high-inf",
        ),
        pytest.param(
            {"type": "float", "low": math.nan, "high": 1.0},
            "search_space.lr: low must be a finite number",
            id="low-nan",
        ),
        pytest.param(
            {"type": "float", "low": -1e308, "high": 1e308},
            "search_space.lr: high - low must be a finite number but got low=-1e+308, high=1e+308",
            id="range-overflows",
        ),
        pytest.param({"type": "float", "low": -1e300, "high": 1e300}, ACCEPTED, id="range-1e300"),
        pytest.param(
            {"type": "float", "low": 0.0, "high": 1e10, "step": 1e-30},
            "search_space.lr: step 1e-30 makes more than 1e9 values between 0.0 and 10000000000.0",
            id="step-1e-30",
        ),
        pytest.param(
            {"type": "float", "low": 0.0, "high": 1e5, "step": 1e-3}, ACCEPTED, id="step-1e-3"
        ),
        pytest.param(
            {"type": "float", "low": 0.0, "high": 1.0, "step": math.inf},
            "search_space.lr: step must be a finite number",
            id="step-inf",
        ),
        pytest.param(
            {"type": "float", "low": 5e-324, "high": 1.0, "log": True}, ACCEPTED, id="log-tiny-low"
        ),
    ],
)
def test_pinned_space_outcome(entry: dict[str, Any], expected: str) -> None:
    """Refused naming the entry and the rule, or accepted and sampled inside its bounds."""
    raw = {"lr": entry}
    if expected != ACCEPTED:
        with pytest.raises(SpecError) as caught:
            load_space(copy.deepcopy(raw), "mlp")
        assert expected in str(caught.value), str(caught.value)
        return
    space = load_space(copy.deepcopy(raw), "mlp")
    for config in sample_configs(space, seed=0):
        check_config(raw, config)
