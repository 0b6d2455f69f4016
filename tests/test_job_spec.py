"""tuner/spec/job_spec.py: defaults, `--set` overrides, validation messages and path resolution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tuner.errors import SpecError, TunerError
from tuner.spec.job_spec import JobSpec, load_spec, parse_override, spec_from_dict

MINIMAL: dict[str, Any] = {"name": "study-1", "model": "mlp", "dataset": {"name": "digits"}}


def with_(**sections: Any) -> dict[str, Any]:
    """MINIMAL with some top-level keys replaced."""
    return {**MINIMAL, **sections}


def write_spec(folder: Path, raw: Any, name: str = "spec.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return path


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory (resolved, so that /tmp symlinks do not matter)."""
    folder = (tmp_path / "cwd").resolve()
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


# --------------------------------------------------------------------------- defaults


def test_minimal_spec_gets_every_default(cwd: Path) -> None:
    spec = spec_from_dict(MINIMAL)
    assert spec.name == "study-1"
    assert spec.model == "mlp"
    assert spec.dataset.name == "digits"
    assert spec.dataset.path is None
    assert spec.dataset.target is None
    assert spec.dataset.window is None
    assert spec.dataset.val_fraction == 0.2
    assert spec.dataset.seed == 0
    assert spec.search_space == "mlp"  # default: the model's built-in space
    assert spec.objective.metric == "val_loss"
    assert spec.objective.mode == "min"
    assert spec.search.algorithm == "tpe"
    assert spec.search.num_samples == 32
    assert spec.search.max_concurrent == 4
    assert spec.search.seed == 0
    assert spec.scheduler.name == "asha"
    assert spec.scheduler.max_epochs == 20
    assert spec.scheduler.grace_period == 1
    assert spec.scheduler.reduction_factor == 3
    assert spec.scheduler.stop_on_overfit is None
    assert spec.resources.cpu == 1
    assert spec.resources.gpu == 0
    assert spec.tracking.uri == f"sqlite:///{cwd / 'mlflow.db'}"
    assert spec.tracking.experiment == "study-1"  # default: the study name
    assert spec.storage == str(cwd / "tuner-results")
    assert spec.search.storage == f"sqlite:///{cwd / 'optuna.db'}"
    assert spec.failure.max_retries == 2
    assert spec.resources.gpu_memory_gb is None  # probed
    assert spec.resources.gpu_memory_headroom == 0.1
    assert (spec.training.precision, spec.training.compile) == ("fp32", False)
    assert spec.training.data_on_device is None  # auto: on the GPU when it fits


def test_only_name_model_and_dataset_name_are_required() -> None:
    required = {n for n, f in JobSpec.model_fields.items() if f.is_required()}
    assert required == {"name", "dataset"}  # and model, unless loop names a training function
    assert "model is required and has no default" in spec_error(
        {k: v for k, v in MINIMAL.items() if k != "model"}
    )
    dataset = JobSpec.model_fields["dataset"].annotation
    assert {n for n, f in dataset.model_fields.items() if f.is_required()} == {"name"}


def test_objective_mode_defaults_to_the_metrics_direction(cwd: Path) -> None:
    spec = spec_from_dict(with_(objective={"metric": "val_acc"}))
    assert spec.objective.mode == "max"


def test_search_space_and_experiment_can_be_set(cwd: Path) -> None:
    spec = spec_from_dict(with_(model="cnn", search_space="cnn", tracking={"experiment": "exp"}))
    assert spec.search_space == "cnn"
    assert spec.tracking.experiment == "exp"


def test_to_yaml_round_trips(cwd: Path) -> None:
    spec = spec_from_dict(MINIMAL)
    again = spec_from_dict(yaml.safe_load(spec.to_yaml()))
    assert again == spec


# --------------------------------------------------------------------------- --set overrides


@pytest.mark.parametrize(
    ("override", "path", "expected"),
    [
        ("scheduler.max_epochs=5", ("scheduler", "max_epochs"), 5),
        ("search.num_samples=3", ("search", "num_samples"), 3),
        ("dataset.val_fraction=0.3", ("dataset", "val_fraction"), 0.3),
        ("search.algorithm=random", ("search", "algorithm"), "random"),
        ("resources.gpu=0.25", ("resources", "gpu"), 0.25),
        ("name=other", ("name",), "other"),
        ("scheduler.stop_on_overfit.patience=2", ("scheduler", "stop_on_overfit", "patience"), 2),
    ],
)
def test_set_overrides_are_typed_by_yaml(
    cwd: Path, override: str, path: tuple[str, ...], expected: Any
) -> None:
    spec = spec_from_dict(MINIMAL, overrides=[override])
    value: Any = spec
    for key in path:
        value = getattr(value, key)
    assert value == expected
    assert type(value) is type(expected)


def test_parse_override_types() -> None:
    assert parse_override("scheduler.max_epochs=5") == (["scheduler", "max_epochs"], 5)
    assert parse_override("a.b=true") == (["a", "b"], True)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("a='5'") == (["a"], "5")
    assert parse_override("a=") == (["a"], None)
    assert parse_override("x=sqlite:///a=b.db") == (["x"], "sqlite:///a=b.db")


def test_set_overrides_a_value_written_in_the_file(tmp_path: Path, cwd: Path) -> None:
    path = write_spec(tmp_path / "specs", with_(scheduler={"max_epochs": 10, "grace_period": 2}))
    spec = load_spec(path, overrides=["scheduler.max_epochs=5"])
    assert spec.scheduler.max_epochs == 5
    assert spec.scheduler.grace_period == 2


def test_later_set_wins(cwd: Path) -> None:
    spec = spec_from_dict(MINIMAL, overrides=["search.seed=1", "search.seed=7"])
    assert spec.search.seed == 7


def test_set_search_storage_resolves_against_cwd(cwd: Path) -> None:
    spec = spec_from_dict(MINIMAL, overrides=["search.storage=sqlite:///studies/o.db"])
    assert spec.search.storage == f"sqlite:///{cwd / 'studies' / 'o.db'}"
    spec = spec_from_dict(MINIMAL, overrides=["search.storage=postgresql://u@host/db"])
    assert spec.search.storage == "postgresql://u@host/db"


@pytest.mark.parametrize("bad", ["scheduler.max_epochs", "noequals", "=5", " =5"])
def test_malformed_set_is_a_spec_error(bad: str) -> None:
    with pytest.raises(SpecError, match="dotted.key=value") as info:
        spec_from_dict(MINIMAL, overrides=[bad])
    assert repr(bad) in str(info.value)


def test_set_through_a_scalar_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match=r"name is 'study-1', not a mapping"):
        spec_from_dict(MINIMAL, overrides=["name.x=1"])


def test_set_with_invalid_yaml_value_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match=r"search.seed.*not valid YAML"):
        spec_from_dict(MINIMAL, overrides=["search.seed=[1, 2"])


def test_set_value_is_validated_strictly() -> None:
    with pytest.raises(SpecError, match=r"scheduler.max_epochs .*integer.* but got '5'"):
        spec_from_dict(MINIMAL, overrides=["scheduler.max_epochs='5'"])


# --------------------------------------------------------------------------- validation errors


def spec_error(raw: dict[str, Any], overrides: list[str] | None = None) -> str:
    with pytest.raises(SpecError) as info:
        spec_from_dict(raw, overrides=overrides)
    assert isinstance(info.value, TunerError)
    return str(info.value)


def test_unknown_top_level_key_lists_valid_keys() -> None:
    msg = spec_error(with_(epochs=5))
    assert "epochs is not a known key" in msg
    assert "value 5" in msg
    for key in ("name", "model", "dataset", "search", "scheduler", "storage", "failure"):
        assert key in msg.split("valid keys here:")[1]


@pytest.mark.parametrize(
    ("section", "valid"),
    [
        (
            "dataset",
            [
                "name",
                "path",
                "target",
                "window",
                "val_fraction",
                "seed",
                "image_size",
                "grayscale",
                "options",
            ],
        ),
        ("search", ["algorithm", "num_samples", "max_concurrent", "seed", "storage"]),
        ("scheduler", ["max_epochs", "grace_period", "reduction_factor", "stop_on_overfit"]),
        (
            "resources",
            ["workers", "cpu", "gpu", "placement", "gpu_memory_gb", "gpu_memory_headroom"],
        ),
        ("training", ["precision", "compile", "data_on_device"]),
        ("tracking", ["uri", "experiment"]),
        ("failure", ["max_retries"]),
        ("objective", ["metric", "mode"]),
    ],
)
def test_unknown_nested_key_lists_valid_keys(section: str, valid: list[str]) -> None:
    base = dict(MINIMAL[section]) if section in MINIMAL else {}
    msg = spec_error(with_(**{section: {**base, "bogus": 1}}))
    assert f"{section}.bogus is not a known key" in msg
    listed = msg.split("valid keys here:")[1]
    for key in valid:
        assert key in listed


def test_unknown_key_two_levels_down() -> None:
    msg = spec_error(with_(scheduler={"stop_on_overfit": {"patience": 3, "patiance": 4}}))
    assert "scheduler.stop_on_overfit.patiance is not a known key" in msg
    assert "patience, min_delta" in msg


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("scheduler", "max_epochs", "5"),
        ("search", "num_samples", "8"),
        ("search", "num_samples", 2.0),
        ("search", "num_samples", True),
        ("dataset", "seed", "0"),
        ("resources", "gpu", "0.5"),
        ("resources", "gpu_memory_gb", "16"),
        ("training", "compile", "true"),
        ("training", "data_on_device", "auto"),
        ("training", "data_on_device", 1),
        ("failure", "max_retries", "2"),
    ],
)
def test_wrong_types_are_not_coerced(section: str, key: str, value: Any) -> None:
    base = dict(MINIMAL[section]) if section in MINIMAL else {}
    msg = spec_error(with_(**{section: {**base, key: value}}))
    assert f"{section}.{key}" in msg
    assert f"but got {value!r}" in msg


def test_num_samples_must_be_at_least_one() -> None:
    msg = spec_error(with_(search={"num_samples": 0}))
    assert "search.num_samples" in msg
    assert "greater than or equal to 1" in msg
    assert "but got 0" in msg


@pytest.mark.parametrize(
    ("metric", "mode", "natural"),
    [("val_loss", "max", "min"), ("val_acc", "min", "max"), ("train_loss", "max", "min")],
)
def test_objective_mode_contrary_to_metric(metric: str, mode: str, natural: str) -> None:
    msg = spec_error(with_(objective={"metric": metric, "mode": mode}))
    assert f"objective.mode must be {natural!r} for {metric} but got {mode!r}" in msg


def test_unknown_objective_metric() -> None:
    msg = spec_error(with_(objective={"metric": "accuracy"}))
    assert "objective.metric" in msg
    assert "'accuracy'" in msg
    assert "val_loss" in msg


def test_unknown_model_lists_models() -> None:
    msg = spec_error(with_(model="resnet"))
    assert "model must be one of ['cnn', 'lstm', 'mlp'] but got 'resnet'" in msg


def test_unknown_dataset_lists_datasets() -> None:
    msg = spec_error(with_(dataset={"name": "cifar10"}))
    assert "dataset.name must be one of" in msg
    for name in ("digits", "mnist", "mnist1d", "mnist_sample", "table"):
        assert repr(name) in msg
    assert "but got 'cifar10'" in msg


@pytest.mark.parametrize("gpu", [1.5, 2, 2.25, 8])
def test_more_than_one_gpu_per_trial_is_an_error(gpu: float) -> None:
    """A trial trains on cuda:0 only: a second GPU would sit idle."""
    msg = spec_error(with_(resources={"gpu": gpu}))
    assert "resources.gpu must be a fraction up to 1" in msg
    assert "use resources.gpu up to 1" in msg and f"but got {gpu}" in msg


@pytest.mark.parametrize("gpu", [0, 0.125, 0.25, 0.5, 1])
def test_gpu_fractions_up_to_one_are_fine(cwd: Path, gpu: float) -> None:
    assert spec_from_dict(with_(resources={"gpu": gpu})).resources.gpu == gpu


@pytest.mark.parametrize("value", [0, -1, 0.0])
def test_gpu_memory_must_be_positive(value: float) -> None:
    msg = spec_error(MINIMAL, overrides=[f"resources.gpu_memory_gb={value}"])
    assert "resources.gpu_memory_gb must be greater than 0" in msg and f"but got {value}" in msg


@pytest.mark.parametrize("value", [-0.1, 1, 1.0, 2.5])
def test_gpu_memory_headroom_must_be_a_share_below_one(value: float) -> None:
    msg = spec_error(with_(resources={"gpu_memory_headroom": value}))
    assert "resources.gpu_memory_headroom must be a fraction from 0 to below 1: " in msg
    assert "the share of each GPU's memory" in msg and msg.endswith(f"but got {value}")


@pytest.mark.parametrize("value", [0, 0.0, 0.25, 0.9])
def test_gpu_memory_headroom_shares_are_fine(cwd: Path, value: float) -> None:
    resources = spec_from_dict(with_(resources={"gpu_memory_headroom": value})).resources
    assert resources.gpu_memory_headroom == value


def test_training_section_from_set_overrides(cwd: Path) -> None:
    overrides = [
        "training.precision=bf16",
        "training.compile=true",
        "training.data_on_device=false",
        "resources.gpu_memory_gb=80",
        "resources.gpu_memory_headroom=0.2",
    ]
    spec = spec_from_dict(MINIMAL, overrides=overrides)
    assert (spec.training.precision, spec.training.compile) == ("bf16", True)
    assert spec.training.data_on_device is False
    assert spec.resources.gpu_memory_gb == 80.0
    assert spec.resources.gpu_memory_headroom == 0.2
    assert spec_from_dict(yaml.safe_load(spec.to_yaml())) == spec


@pytest.mark.parametrize("precision", ["fp8", "FP16", "float32", ""])
def test_unknown_precision_is_an_error(precision: str) -> None:
    msg = spec_error(MINIMAL, overrides=[f"training.precision={precision}"])
    assert "training.precision must be 'fp32', 'bf16' or 'fp16'" in msg
    assert f"but got {precision!r}" in msg or "but got None" in msg


def test_spec_precisions_are_the_loops() -> None:
    from typing import get_args

    from trainables.loop import PRECISIONS

    training = JobSpec.model_fields["training"].annotation
    assert get_args(training.model_fields["precision"].annotation) == PRECISIONS


def test_negative_gpu_is_an_error() -> None:
    msg = spec_error(MINIMAL, overrides=["resources.gpu=-1"])
    assert "resources.gpu" in msg
    assert "but got -1" in msg


@pytest.mark.parametrize("missing", ["name", "model", "dataset"])
def test_required_keys(missing: str) -> None:
    raw = {k: v for k, v in MINIMAL.items() if k != missing}
    assert f"{missing} is required and has no default" in spec_error(raw)


def test_dataset_name_is_required() -> None:
    msg = spec_error(with_(dataset={"val_fraction": 0.1}))
    assert "dataset.name is required" in msg


@pytest.mark.parametrize("fraction", [0, 1, 1.5])
def test_val_fraction_must_be_inside_0_1(fraction: float) -> None:
    msg = spec_error(with_(dataset={"name": "digits", "val_fraction": fraction}))
    assert "dataset.val_fraction" in msg
    assert f"but got {fraction}" in msg


def test_search_space_of_wrong_type_names_the_key() -> None:
    """search_space is `str | mapping`: the message must not name pydantic's union member."""
    msg = spec_error(with_(search_space=5))
    assert "search_space" in msg
    assert "but got 5" in msg
    assert "search_space.str" not in msg


def test_bad_study_name() -> None:
    msg = spec_error(with_(name="my study"))
    assert "name" in msg
    assert "'my study'" in msg


def test_several_errors_are_reported_together() -> None:
    msg = spec_error(with_(search={"num_samples": 0}, resources={"gpu": 1.5}))
    assert "search.num_samples" in msg
    assert "resources.gpu" in msg


# --------------------------------------------------------------------------- paths


def test_relative_paths_in_a_file_resolve_against_its_folder(tmp_path: Path, cwd: Path) -> None:
    folder = (tmp_path / "project" / "specs").resolve()
    raw = {
        "name": "paths",
        "model": "mlp",
        "dataset": {"name": "table", "path": "data/sales.csv", "target": "y"},
        "search_space": "spaces/my.yaml",
        "search": {"storage": "sqlite:///db/optuna.db"},
        "tracking": {"uri": "sqlite:///mlflow.db"},
        "storage": "./results",
    }
    spec = load_spec(write_spec(folder, raw))
    assert spec.dataset.path == str(folder / "data" / "sales.csv")
    assert spec.search_space == str(folder / "spaces" / "my.yaml")
    assert spec.search.storage == f"sqlite:///{folder / 'db' / 'optuna.db'}"
    assert spec.tracking.uri == f"sqlite:///{folder / 'mlflow.db'}"
    assert spec.storage == str(folder / "results")


def test_parent_relative_path_in_a_file(tmp_path: Path, cwd: Path) -> None:
    folder = (tmp_path / "project" / "specs").resolve()
    raw = with_(dataset={"name": "mnist", "path": "../data/mnist"})
    spec = load_spec(write_spec(folder, raw))
    assert spec.dataset.path == str(folder.parent / "data" / "mnist")


def test_yaml_search_space_without_slash_resolves_against_the_file(
    tmp_path: Path, cwd: Path
) -> None:
    folder = (tmp_path / "specs").resolve()
    spec = load_spec(write_spec(folder, with_(search_space="custom.yaml")))
    assert spec.search_space == str(folder / "custom.yaml")


def test_builtin_space_name_is_not_a_path(tmp_path: Path, cwd: Path) -> None:
    spec = load_spec(write_spec(tmp_path / "specs", with_(search_space="mlp")))
    assert spec.search_space == "mlp"


def test_defaults_resolve_against_the_working_directory(tmp_path: Path, cwd: Path) -> None:
    spec = load_spec(write_spec(tmp_path / "elsewhere", MINIMAL))
    assert spec.tracking.uri == f"sqlite:///{cwd / 'mlflow.db'}"
    assert spec.storage == str(cwd / "tuner-results")
    assert spec.search.storage == f"sqlite:///{cwd / 'optuna.db'}"


def test_set_values_resolve_against_the_working_directory(tmp_path: Path, cwd: Path) -> None:
    path = write_spec(
        tmp_path / "elsewhere",
        with_(dataset={"name": "table", "path": "in-file.csv", "target": "y"}),
    )
    spec = load_spec(
        path,
        overrides=[
            "dataset.path=data/x.csv",
            "tracking.uri=sqlite:///track/m.db",
            "storage=out",
            "search_space=spaces/s.yaml",
        ],
    )
    assert spec.dataset.path == str(cwd / "data" / "x.csv")
    assert spec.tracking.uri == f"sqlite:///{cwd / 'track' / 'm.db'}"
    assert spec.storage == str(cwd / "out")
    assert spec.search_space == str(cwd / "spaces" / "s.yaml")
    assert spec.search.storage == f"sqlite:///{cwd / 'track' / 'optuna.db'}"


def test_default_optuna_storage_sits_beside_a_sqlite_tracking_store(
    tmp_path: Path, cwd: Path
) -> None:
    folder = (tmp_path / "specs").resolve()
    spec = load_spec(write_spec(folder, with_(tracking={"uri": "sqlite:///stores/mlflow.db"})))
    assert spec.search.storage == f"sqlite:///{folder / 'stores' / 'optuna.db'}"


def test_default_optuna_storage_with_a_tracking_server_is_in_cwd(cwd: Path) -> None:
    spec = spec_from_dict(with_(tracking={"uri": "http://mlflow-host:5000"}))
    assert spec.tracking.uri == "http://mlflow-host:5000"
    assert spec.search.storage == f"sqlite:///{cwd / 'optuna.db'}"


def test_absolute_and_remote_paths_are_kept(tmp_path: Path, cwd: Path) -> None:
    absolute = (tmp_path / "abs").resolve()
    raw = with_(
        dataset={"name": "mnist", "path": str(absolute / "mnist")},
        tracking={"uri": f"sqlite:///{absolute / 'm.db'}"},
        search={"storage": "postgresql://user@db/optuna"},
        storage="s3://bucket/results",
    )
    spec = load_spec(write_spec(tmp_path / "specs", raw))
    assert spec.dataset.path == str(absolute / "mnist")
    assert spec.tracking.uri == f"sqlite:///{absolute / 'm.db'}"
    assert spec.search.storage == "postgresql://user@db/optuna"
    assert spec.storage == "s3://bucket/results"


def test_spec_from_dict_base_dir(tmp_path: Path, cwd: Path) -> None:
    base = (tmp_path / "base").resolve()
    spec = spec_from_dict(with_(storage="r"), base_dir=base)
    assert spec.storage == str(base / "r")


# --------------------------------------------------------------------------- load_spec errors


def test_missing_spec_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpecError, match="does not exist") as info:
        load_spec(missing)
    assert str(missing) in str(info.value)


def test_spec_path_that_is_a_folder(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path)


def test_invalid_yaml(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "name: [unclosed\nmodel: mlp\n")
    with pytest.raises(SpecError, match="is not valid YAML") as info:
        load_spec(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "", "42\n"])
def test_non_mapping_spec(tmp_path: Path, text: str) -> None:
    path = write_spec(tmp_path, text)
    with pytest.raises(SpecError, match="must hold a mapping"):
        load_spec(path)


def test_load_spec_validates(tmp_path: Path) -> None:
    path = write_spec(tmp_path, with_(search={"num_samples": 0}))
    with pytest.raises(SpecError, match="search.num_samples"):
        load_spec(path)


def test_load_spec_reads_the_example(cwd: Path) -> None:
    demo = Path(__file__).resolve().parents[1] / "tuner" / "demo.yaml"
    spec = load_spec(demo)
    assert spec.name
    assert spec.model in {"mlp", "cnn", "lstm"}


# --------------------------------------------------------------------------- several objectives

TWO_OBJECTIVES = [{"metric": "val_acc"}, {"metric": "params"}]


def test_a_single_objective_stays_a_mapping() -> None:
    spec = spec_from_dict(with_(objective={"metric": "val_acc"}))
    assert (spec.objective.metric, spec.objective.mode) == ("val_acc", "max")
    assert spec.objectives == [spec.objective] and not spec.multi_objective
    assert yaml.safe_load(spec.to_yaml())["objective"] == {"metric": "val_acc", "mode": "max"}


def test_an_objective_list_keeps_the_first_as_objective() -> None:
    spec = spec_from_dict(with_(objective=TWO_OBJECTIVES))
    assert spec.multi_objective
    assert (spec.objective.metric, spec.objective.mode) == ("val_acc", "max")
    assert [(o.metric, o.mode) for o in spec.objectives] == [("val_acc", "max"), ("params", "min")]
    assert spec.objectives[0] is spec.objective


def test_an_objective_list_round_trips_through_the_saved_spec(tmp_path: Path) -> None:
    spec = spec_from_dict(with_(objective=TWO_OBJECTIVES, search={"algorithm": "nsgaii"}))
    saved = write_spec(tmp_path, yaml.safe_load(spec.to_yaml()))
    again = load_spec(saved)
    assert again.objectives == spec.objectives and again.to_yaml() == spec.to_yaml()
    copied = spec.model_copy(update={"plugins": []})  # what save_spec writes
    assert yaml.safe_load(copied.to_yaml())["objective"] == [
        {"metric": "val_acc", "mode": "max"},
        {"metric": "params", "mode": "min"},
    ]


def test_a_one_item_list_is_a_single_objective() -> None:
    spec = spec_from_dict(with_(objective=[{"metric": "val_loss"}]))
    assert not spec.multi_objective
    assert yaml.safe_load(spec.to_yaml())["objective"] == {"metric": "val_loss", "mode": "min"}


def test_set_override_of_an_objective_list() -> None:
    spec = spec_from_dict(
        MINIMAL, overrides=["objective=[{metric: val_loss}, {metric: inference_ms}]"]
    )
    assert [o.metric for o in spec.objectives] == ["val_loss", "inference_ms"]


@pytest.mark.parametrize(
    ("objective", "algorithm", "expected"),
    [
        ([], "tpe", "objective must be a mapping {metric, mode} or a non-empty list"),
        ([{"metric": "params"}], "tpe", "objective.metric 'params' is measured once per trial"),
        (
            [{"metric": "val_loss"}, {"metric": "val_loss"}],
            "tpe",
            "objective.1.metric 'val_loss' is already objective 0",
        ),
        (
            [{"metric": "val_loss"}, {"metric": "inference_ms", "mode": "max"}],
            "tpe",
            "objective.1.mode must be 'min' for inference_ms but got 'max'",
        ),
        ([{"metric": "val_loss"}, {"mode": "min", "metrc": "x"}], "tpe", "objective.1.metrc"),
        (TWO_OBJECTIVES, "cmaes", "search.algorithm 'cmaes' cannot optimise several objectives"),
    ],
)
def test_bad_objective_lists(objective: list, algorithm: str, expected: str) -> None:
    assert expected in spec_error(with_(objective=objective, search={"algorithm": algorithm}))


def test_cmaes_stays_fine_for_one_objective() -> None:
    assert spec_from_dict(with_(search={"algorithm": "cmaes"})).search.algorithm == "cmaes"


def test_finalists_of_several_objectives_are_judged_on_the_first() -> None:
    """The rule README states: with several objectives, the first objective decides the winner
    (finalists included), so an objective list with `selection` is valid as it is."""
    spec = spec_from_dict(with_(objective=TWO_OBJECTIVES, selection={"finalists": 2, "seeds": 2}))
    assert spec.selection.finalists == 2
    assert spec.objective.metric == "val_acc" and len(spec.objectives) == 2


# --------------------------------------------------------------------------- scheduler keys


def test_grace_period_cannot_exceed_max_epochs() -> None:
    msg = spec_error(with_(scheduler={"max_epochs": 5, "grace_period": 6}))
    assert "scheduler.grace_period must be at most scheduler.max_epochs (5) but got 6" in msg


def test_grace_period_check_sees_set_overrides() -> None:
    msg = spec_error(MINIMAL, overrides=["scheduler.max_epochs=3", "scheduler.grace_period=4"])
    assert "scheduler.grace_period" in msg
    assert "(3) but got 4" in msg


def test_a_flat_asha_section_loads_as_written(tmp_path: Path, cwd: Path) -> None:
    """ASHA's keys sit beside `name` as they always did; the resolved spec keeps them."""
    written = "scheduler: {name: asha, max_epochs: 9, grace_period: 2, reduction_factor: 3}"
    path = write_spec(tmp_path, f"name: s\nmodel: mlp\ndataset: {{name: digits}}\n{written}\n")
    scheduler = load_spec(path).scheduler
    assert (scheduler.name, scheduler.max_epochs) == ("asha", 9)
    assert (scheduler.grace_period, scheduler.reduction_factor) == (2, 3.0)
    assert scheduler.settings.model_dump() == {"grace_period": 2, "reduction_factor": 3.0}
    saved = yaml.safe_load(load_spec(path).to_yaml())["scheduler"]
    assert saved == {
        "name": "asha",
        "max_epochs": 9,
        "stop_on_overfit": None,
        "grace_period": 2,
        "reduction_factor": 3.0,
    }


def test_ashas_defaults_are_filled_in_and_saved(cwd: Path) -> None:
    spec = spec_from_dict(with_(scheduler={"max_epochs": 9}))
    assert (spec.scheduler.grace_period, spec.scheduler.reduction_factor) == (1, 3.0)
    assert yaml.safe_load(spec.to_yaml())["scheduler"]["reduction_factor"] == 3.0


def test_fifo_saves_no_keys_of_ashas(cwd: Path) -> None:
    spec = spec_from_dict(with_(scheduler={"name": "fifo", "max_epochs": 5}))
    assert spec.scheduler.model_dump() == {"name": "fifo", "max_epochs": 5, "stop_on_overfit": None}


def test_fifo_sets_ashas_keys_aside_so_an_asha_spec_runs_under_fifo(cwd: Path) -> None:
    """grace_period belongs to ASHA: under FIFO it is neither applied nor saved, so a spec
    written for ASHA still runs with `--set scheduler.name=fifo` (as before schedulers owned
    their keys)."""
    spec = spec_from_dict(with_(scheduler={"name": "fifo", "max_epochs": 5, "grace_period": 2}))
    assert spec.scheduler.model_dump() == {"name": "fifo", "max_epochs": 5, "stop_on_overfit": None}
    assert not hasattr(spec.scheduler, "grace_period")
    asha = with_(scheduler={"name": "asha", "max_epochs": 9, "grace_period": 2})
    switched = spec_from_dict(asha, overrides=["scheduler.name=fifo"])
    assert (
        switched.scheduler.name == "fifo" and "grace_period" not in switched.scheduler.model_dump()
    )


def test_a_key_no_scheduler_takes_is_unknown_to_the_named_one() -> None:
    msg = spec_error(with_(scheduler={"grace_periode": 2}))
    assert msg == (
        "invalid job spec: scheduler.grace_periode is not a known key of scheduler asha (value 2); "
        "valid keys here: name, max_epochs, stop_on_overfit, grace_period, reduction_factor"
    )


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        (1, "must be greater than 1 but got 1"),
        (0.5, "must be greater than 1 but got 0.5"),
        ("3", "must be a valid number but got '3'"),
        (float("inf"), "must be a finite number but got inf"),
    ],
)
def test_a_bad_reduction_factor_names_the_key_the_value_and_the_rule(value: Any, rule: str) -> None:
    assert spec_error(with_(scheduler={"reduction_factor": value})) == (
        f"invalid job spec: scheduler.reduction_factor {rule}"
    )


def test_set_reaches_ashas_keys(cwd: Path) -> None:
    spec = spec_from_dict(MINIMAL, overrides=["scheduler.grace_period=2"])
    assert spec.scheduler.grace_period == 2
    msg = spec_error(MINIMAL, overrides=["scheduler.grace_period=0"])
    assert msg == (
        "invalid job spec: scheduler.grace_period must be greater than or equal to 1 but got 0"
    )


def test_a_registered_scheduler_is_named_by_the_spec_and_judges_its_own_keys(cwd: Path) -> None:
    """The extension point: a scheduler registered with its settings model is a `scheduler.name`
    whose keys the spec takes, validates with that model, fills in and saves."""
    from pydantic import Field

    from tuner.driver.live_trials import LiveFIFO
    from tuner.driver.schedulers import SCHEDULERS, SchedulerKind, SchedulerSettings

    class Budget(SchedulerSettings):
        budget: int = Field(ge=1)  # required: a key with no default
        patience: float = Field(0.5, gt=0, le=1)

    kind = SchedulerKind("a test scheduler", Budget, lambda s, b, j: LiveFIFO(), lambda s, b: [])
    SCHEDULERS.register("budgeted", owner=__name__)(kind)
    try:
        spec = spec_from_dict(with_(scheduler={"name": "budgeted", "budget": 7}))
        assert (spec.scheduler.budget, spec.scheduler.patience) == (7, 0.5)
        assert spec.scheduler.settings == Budget(budget=7, patience=0.5)
        assert yaml.safe_load(spec.to_yaml())["scheduler"]["patience"] == 0.5
        msg = spec_error(with_(scheduler={"name": "budgeted", "budget": 7, "patience": 2}))
        assert msg == (
            "invalid job spec: scheduler.patience must be less than or equal to 1 but got 2"
        )
        msg = spec_error(with_(scheduler={"name": "budgeted"}))
        assert msg == "invalid job spec: scheduler.budget is required and has no default"
        msg = spec_error(with_(scheduler={"name": "budgeted", "budget": 7, "budjet": 2}))
        assert "scheduler.budjet is not a known key of scheduler budgeted (value 2)" in msg
        assert "valid keys here: name, max_epochs, stop_on_overfit, budget, patience" in msg
        fifo = spec_from_dict(with_(scheduler={"name": "fifo", "budget": 7}))
        assert not hasattr(fifo.scheduler, "budget")  # budgeted's key: set aside under fifo
    finally:
        SCHEDULERS.forget(__name__)
    assert "budgeted" not in SCHEDULERS
    assert "must be one of ['asha', 'fifo']" in spec_error(with_(scheduler={"name": "budgeted"}))


def test_a_saved_spec_of_an_older_version_keeps_loading(tmp_path: Path, cwd: Path) -> None:
    """Older versions saved ASHA's keys under every scheduler; `tuner resume` reads them."""
    from tuner.driver.results_folder import SPEC_FILE, study_spec

    old = spec_from_dict(with_(scheduler={"name": "fifo", "max_epochs": 4})).model_dump()
    old["scheduler"] |= {"grace_period": 1, "reduction_factor": 3.0}  # as older versions saved it
    write_spec(tmp_path, old, SPEC_FILE)
    assert study_spec(tmp_path).scheduler.model_dump() == {
        "name": "fifo",
        "max_epochs": 4,
        "stop_on_overfit": None,
    }


def test_workers_default_to_one_packed(cwd: Path) -> None:
    resources = spec_from_dict(MINIMAL).resources
    assert (resources.workers, resources.placement) == (1, "pack")
    raw = with_(resources={"workers": 4, "gpu": 1, "placement": "spread"})
    resources = spec_from_dict(raw).resources
    assert (resources.workers, resources.gpu, resources.placement) == (4, 1.0, "spread")


@pytest.mark.parametrize("workers", [0, -2])
def test_workers_must_be_at_least_one(workers: int) -> None:
    msg = spec_error(with_(resources={"workers": workers}))
    assert "resources.workers must be greater than or equal to 1" in msg
    assert f"but got {workers}" in msg


@pytest.mark.parametrize("gpu", [0.5, 0.25, "auto"])
def test_a_gpu_share_with_several_workers_is_refused(gpu: Any) -> None:
    """NCCL cannot put two ranks of one process group on one GPU."""
    msg = spec_error(with_(resources={"workers": 2, "gpu": gpu}))
    assert f"resources.gpu: {gpu!r} with resources.workers 2" in msg
    assert "each need a whole GPU" in msg and "NCCL" in msg


def test_any_cpu_split_is_fine_with_several_workers(cwd: Path) -> None:
    resources = spec_from_dict(with_(resources={"workers": 2, "cpu": 0.5})).resources
    assert (resources.workers, resources.cpu, resources.gpu) == (2, 0.5, 0.0)


def test_placement_is_pack_or_spread() -> None:
    msg = spec_error(with_(resources={"placement": "scatter"}))
    assert "resources.placement" in msg and "'pack'" in msg and "'spread'" in msg
