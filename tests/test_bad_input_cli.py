"""Bad input by hand: each bad input through the real CLI exits 2 with one paragraph
naming the key, the value and the rule, and no traceback, before Ray starts.

Every case runs `tuner.cli.app` in-process with `ray.init` replaced by a recorder that fails: a
case that gets as far as starting Ray fails on that alone. A few cases also run the console entry
(`python -m tuner`) in a subprocess, where a traceback would be printed for real.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from tuner.cli import app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An empty SQLite MLflow tracking store (created by the first command that opens it)."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: str) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    yield tmp_path


# --------------------------------------------------------------------------- inputs

BASE_SPEC: dict[str, Any] = {
    "name": "bad",
    "model": "mlp",
    "dataset": {"name": "digits"},
    "search": {"num_samples": 2, "max_concurrent": 1},
    "scheduler": {"name": "fifo", "max_epochs": 2},
}
BASE_EXPORT: dict[str, Any] = {
    "model": "mlp",
    "dataset": {"name": "digits", "val_fraction": 0.2, "seed": 0},
    "hyperparameters": {"lr": 0.01, "hidden_units": 32},
    "epochs": 2,
}


def merged(base: dict[str, Any], sections: dict[str, Any]) -> dict[str, Any]:
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return raw


def write_text(folder: Path, name: str, text: str | bytes) -> str:
    path = folder / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def write_spec(folder: Path, raw: dict[str, Any]) -> str:
    return write_text(folder, "spec.yaml", yaml.safe_dump(raw, sort_keys=False))


def run_spec(*overrides: str, **sections: Any) -> Callable[[Path, str], list[str]]:
    """`tuner run SPEC [--set ...]` of the base spec with `sections` merged in."""

    def args(tmp: Path, store: str) -> list[str]:
        spec = write_spec(tmp, merged(BASE_SPEC, sections))
        return ["run", spec, *[a for o in overrides for a in ("--set", o)]]

    return args


def run_file(content: str | bytes) -> Callable[[Path, str], list[str]]:
    return lambda tmp, store: ["run", write_text(tmp, "spec.yaml", content)]


def train_config(
    content: dict[str, Any] | str | bytes, *extra: str
) -> Callable[[Path, str], list[str]]:
    """`tuner train CONFIG` of an exported config given as a mapping or as raw file content."""

    def args(tmp: Path, store: str) -> list[str]:
        text = yaml.safe_dump(content) if isinstance(content, dict) else content
        return ["train", write_text(tmp, "config.yaml", text), *extra]

    return args


def with_store(*args: str) -> Callable[[Path, str], list[str]]:
    return lambda tmp, store: [*args, "--tracking-uri", store]


def table_spec(
    columns: dict[str, list[Any]],
    model: str = "mlp",
    objective: dict[str, Any] | None = None,
    **dataset: Any,
) -> Callable[[Path, str], list[str]]:
    """`tuner run` on a CSV written from `columns` (dataset: table, its path filled in)."""

    def args(tmp: Path, store: str) -> list[str]:
        import pandas as pd

        path = tmp / "table.csv"
        pd.DataFrame(columns).to_csv(path, index=False)
        options = {"name": "table", "path": str(path), "target": "label", **dataset}
        sections = {"model": model, "dataset": options, "objective": objective or {}}
        return ["run", write_spec(tmp, merged(BASE_SPEC, sections))]

    return args


def idx_bytes(array: np.ndarray) -> bytes:
    """An uint8 array as an IDX file: magic 0x00 0x00 0x08 ndim, then each dimension (u32 BE)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def mnist_spec(images: np.ndarray | None) -> Callable[[Path, str], list[str]]:
    """`tuner run` on dataset mnist from a folder holding `images` and matching labels (or
    holding nothing when `images` is None)."""

    def args(tmp: Path, store: str) -> list[str]:
        folder = tmp / "mnist"
        folder.mkdir()
        if images is not None:
            labels = np.arange(len(images)) % 10
            (folder / "train-images-idx3-ubyte").write_bytes(idx_bytes(images))
            (folder / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
        sections = {"dataset": {"name": "mnist", "path": str(folder)}}
        return ["run", write_spec(tmp, merged(BASE_SPEC, sections))]

    return args


REGRESSION = {"a": [float(i) for i in range(20)], "label": [i * 0.5 for i in range(20)]}
CLASSES = {"a": [float(i) for i in range(20)], "label": ["x", "y"] * 10}


# --------------------------------------------------------------------------- the table


@dataclass
class Case:
    id: str
    args: Callable[[Path, str], list[str]]
    expect: tuple[str, ...]  # the key, the value and the rule, as the message must say them


CASES = [
    # -- spec structure: unknown keys, wrong types, missing keys
    Case(
        "unknown-top-level-key",
        run_spec(modle="mlp"),
        ("modle is not a known key", "'mlp'", "valid keys here"),
    ),
    Case(
        "unknown-nested-key",
        run_spec(scheduler={"max_epoch": 5}),
        ("scheduler.max_epoch is not a known key", "5", "max_epochs"),
    ),
    Case(
        "unknown-nested-key-named-like-a-type",
        run_spec(dataset={"name": "digits", "int": 3}),
        ("dataset.int is not a known key", "3"),
    ),
    Case(
        "wrong-type-number",
        run_spec(search={"num_samples": "many"}),
        ("search.num_samples", "'many'", "valid integer"),
    ),
    Case(
        "wrong-type-section",
        run_spec(scheduler="fifo"),
        ("scheduler", "'fifo'", "valid dictionary"),
    ),
    Case("missing-name", run_file("model: mlp\ndataset: {name: digits}\n"), ("name is required",)),
    Case(
        "bad-study-name",
        run_spec(name="my study"),
        ("name", "'my study'", "match pattern"),
    ),
    # -- impossible values
    Case(
        "grace-period-above-max-epochs",
        run_spec(scheduler={"name": "asha", "max_epochs": 2, "grace_period": 5}),
        ("scheduler.grace_period", "5", "at most scheduler.max_epochs (2)"),
    ),
    Case(
        "num-samples-0",
        run_spec(search={"num_samples": 0}),
        ("search.num_samples", "greater than or equal to 1", "but got 0"),
    ),
    Case(
        "val-fraction-1.5",
        run_spec(dataset={"name": "digits", "val_fraction": 1.5}),
        ("dataset.val_fraction", "less than 1", "1.5"),
    ),
    Case(
        "gpu-1.5",
        run_spec(resources={"gpu": 1.5}),
        ("resources.gpu", "fraction up to 1", "1.5"),
    ),
    Case(
        "cpu-0",
        run_spec(resources={"cpu": 0}),
        ("resources.cpu", "greater than 0", "but got 0"),
    ),
    Case(
        "workers-0",
        run_spec(resources={"workers": 0}),
        ("resources.workers", "greater than or equal to 1", "but got 0"),
    ),
    Case(
        "workers-with-a-gpu-share",
        run_spec(resources={"workers": 2, "gpu": 0.5}),
        ("resources.gpu", "0.5", "workers 2", "whole GPU"),
    ),
    Case(
        "batch-size-the-workers-do-not-divide",
        run_spec(
            resources={"workers": 4},
            search_space={"lr": 0.01, "batch_size": {"type": "categorical", "choices": [64, 90]}},
        ),
        ("batch_size.choices", "90", "not divisible by resources.workers 4"),
    ),
    Case(
        "max-retries-negative",
        run_spec(failure={"max_retries": -1}),
        ("failure.max_retries", "greater than or equal to 0", "-1"),
    ),
    Case(
        "objective-mode-contrary-to-metric",
        run_spec(objective={"metric": "val_loss", "mode": "max"}),
        ("objective.mode", "'max'", "must be 'min' for val_loss"),
    ),
    Case(
        "objective-list-unknown-metric",
        run_spec(objective=[{"metric": "val_loss"}, {"metric": "flops"}]),
        ("objective.1.metric", "'flops'", "must be one of", "params"),
    ),
    Case(
        "objective-list-duplicate-metric",
        run_spec(objective=[{"metric": "val_loss"}, {"metric": "params"}, {"metric": "params"}]),
        ("objective.2.metric", "'params'", "each metric may appear once"),
    ),
    Case(
        "objective-list-mode-contrary-to-metric",
        run_spec(objective=[{"metric": "val_loss"}, {"metric": "params", "mode": "max"}]),
        ("objective.1.mode", "'max'", "must be 'min' for params"),
    ),
    Case(
        "objective-list-led-by-a-model-cost",
        run_spec(objective=[{"metric": "inference_ms"}, {"metric": "val_loss"}]),
        ("objective.0.metric", "'inference_ms'", "once per trial", "first objective"),
    ),
    Case(
        "objective-list-with-a-single-objective-sampler",
        run_spec(
            objective=[{"metric": "val_loss"}, {"metric": "params"}], search={"algorithm": "cmaes"}
        ),
        ("search.algorithm", "'cmaes'", "cannot optimise several objectives", "nsgaii"),
    ),
    Case(
        "val-acc-objective-on-a-regression-table",
        table_spec(REGRESSION, objective={"metric": "val_acc"}),
        ("objective.metric", "'val_acc'", "classification"),
    ),
    Case(
        "gpu-inf",
        run_spec(resources={"gpu": float("inf")}),
        ("resources.gpu", "inf"),
    ),
    Case(
        "cpu-inf",
        run_spec(resources={"cpu": float("inf")}),
        ("resources.cpu", "inf"),
    ),
    Case(
        "search-seed-negative",
        run_spec(search={"num_samples": 2, "seed": -1}),
        ("search.seed", "-1"),
    ),
    Case(
        "dataset-seed-negative",
        run_spec(dataset={"name": "digits", "seed": -1}),
        ("dataset.seed", "-1"),
    ),
    # -- unknown names
    Case(
        "unknown-model",
        run_spec(model="transformer"),
        ("model", "'transformer'", "must be one of", "mlp"),
    ),
    Case(
        "unknown-dataset",
        run_spec(dataset={"name": "cifar10"}),
        ("dataset.name", "'cifar10'", "must be one of", "digits"),
    ),
    Case(
        "unknown-algorithm",
        run_spec(search={"algorithm": "grid"}),
        ("search.algorithm", "'grid'", "'tpe'"),
    ),
    Case(
        "unknown-scheduler",
        run_spec(scheduler={"name": "hyperband", "max_epochs": 2}),
        ("scheduler.name", "'hyperband'", "'asha'"),
    ),
    Case(
        "unknown-search-space-name",
        run_spec(search_space="mlpp"),
        ("search_space", "'mlpp'", "neither a built-in space"),
    ),
    # -- search spaces
    Case(
        "space-low-not-below-high",
        run_spec(search_space={"lr": {"type": "float", "low": 0.1, "high": 0.01}}),
        ("search_space.lr", "low must be less than high", "low=0.1, high=0.01"),
    ),
    Case(
        "space-log-with-low-0",
        run_spec(search_space={"lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}),
        ("search_space.lr", "log: true needs low > 0", "low=0.0"),
    ),
    Case(
        "space-when-on-a-missing-entry",
        run_spec(
            search_space={
                "momentum": {"type": "float", "low": 0.5, "high": 0.9, "when": {"optimizer": "sgd"}}
            }
        ),
        ("search_space.momentum.when.optimizer", "'optimizer'", "must be a categorical entry"),
    ),
    Case(
        "space-when-on-a-float-entry",
        run_spec(
            search_space={
                "lr": {"type": "float", "low": 0.001, "high": 0.1},
                "momentum": {"type": "float", "low": 0.5, "high": 0.9, "when": {"lr": 0.01}},
            }
        ),
        ("search_space.momentum.when.lr", "'lr'", "must be a categorical entry"),
    ),
    Case(
        "space-when-value-not-a-choice",
        run_spec(
            search_space={
                "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
                "momentum": {
                    "type": "float",
                    "low": 0.5,
                    "high": 0.9,
                    "when": {"optimizer": "rmsprop"},
                },
            }
        ),
        ("search_space.momentum.when.optimizer", "'rmsprop'", "is not one of"),
    ),
    Case(
        "space-misspelt-hyperparameter",
        run_spec(search_space={"learning_rate": {"type": "float", "low": 0.001, "high": 0.1}}),
        ("'learning_rate'", "is not a hyperparameter of model 'mlp'", "lr"),
    ),
    Case(
        "space-unknown-type",
        run_spec(search_space={"lr": {"type": "loguniform", "low": 0.001, "high": 0.1}}),
        ("search_space.lr", "'loguniform'", "'float', 'int', 'categorical'"),
    ),
    Case(
        "space-categorical-without-choices",
        run_spec(search_space={"optimizer": {"type": "categorical"}}),
        ("search_space.optimizer", "choices is required"),
    ),
    Case(
        "space-infinite-bound",
        run_spec(search_space={"lr": {"type": "float", "low": 0.0, "high": float("inf")}}),
        ("search_space.lr", "inf"),
    ),
    Case(
        "space-step-too-fine-for-optuna",
        run_spec(search_space={"lr": {"type": "float", "low": 0.0, "high": 1e10, "step": 1e-30}}),
        ("search_space.lr", "step"),
    ),
    # -- --set
    Case(
        "set-without-equals",
        run_spec("scheduler.max_epochs"),
        ("--set", "'scheduler.max_epochs'", "dotted.key=value"),
    ),
    Case(
        "set-into-a-scalar",
        run_spec("name.first=x"),
        ("--set name.first", "'bad'", "not a mapping"),
    ),
    Case(
        "set-invalid-yaml",
        run_spec("search.num_samples=[1"),
        ("--set search.num_samples", "'[1'", "not valid YAML"),
    ),
    Case(
        "set-wrong-type",
        run_spec("search.num_samples=abc"),
        ("search.num_samples", "'abc'", "valid integer"),
    ),
    Case(
        "set-misspelt-hyperparameter-into-the-space",
        run_spec("search_space.learning_rate=0.1"),
        ("'learning_rate'", "is not a hyperparameter of model 'mlp'"),
    ),
    Case(
        "set-int-of-5000-digits",
        run_spec("search.seed=" + "9" * 5000),
        ("search.seed",),
    ),
    Case(
        "set-storage-with-nul",
        run_spec('storage="res\\0ults"'),
        ("storage",),
    ),
    # -- datasets
    Case(
        "table-missing-csv",
        run_spec(dataset={"name": "table", "path": "nope.csv", "target": "label"}),
        ("dataset.path", "nope.csv", "does not exist"),
    ),
    Case(
        "table-missing-target-column",
        table_spec({"a": [1.0, 2.0], "b": [0, 1]}),
        ("dataset.target", "'label'", "is not a column", "columns: a, b"),
    ),
    Case(
        "table-target-with-one-class",
        table_spec({"a": [float(i) for i in range(10)], "label": ["x"] * 10}),
        ("dataset.target", "'label'", "one class", "at least 2"),
    ),
    Case(
        "table-nan-in-features",
        table_spec({"a": [1.0, None, 3.0, 4.0], "label": ["x", "y", "x", "y"]}),
        ("dataset.path", "['a']", "missing values"),
    ),
    Case(
        "table-window-larger-than-the-data",
        table_spec(REGRESSION, model="lstm", window=50),
        ("dataset.window", "50", "more than 20 rows"),
    ),
    Case(
        "table-without-target",
        run_spec(dataset={"name": "table", "path": "x.csv"}),
        ("dataset.target", "missing"),
    ),
    Case(
        "lstm-on-a-table-without-window",
        table_spec(CLASSES, model="lstm"),
        ("lstm", "table", "window"),
    ),
    Case(
        "mnist-folder-without-idx-files",
        mnist_spec(None),
        ("dataset.path", "train-images-idx3-ubyte", "IDX"),
    ),
    Case(
        "mnist-idx-images-of-the-wrong-shape",
        mnist_spec(np.zeros((10, 784), dtype=np.uint8)),
        ("dataset.path", "(10, 784)", "(N, H, W)"),
    ),
    # -- spec files
    Case(
        "spec-file-missing",
        lambda tmp, store: ["run", str(tmp / "absent.yaml")],
        ("absent.yaml", "does not exist"),
    ),
    Case(
        # the YAML error quotes the line `name: [bad`; printed as rich markup, "[bad ... ]" vanishes
        "spec-file-not-yaml",
        run_file("name: [bad\n"),
        ("spec.yaml", "not valid YAML", "name: [bad"),
    ),
    Case("spec-file-a-list", run_file("- name: bad\n"), ("spec.yaml", "must hold a mapping")),
    Case("spec-file-not-utf8", run_file(b"\xff\xfename: bad\n"), ("spec.yaml",)),
    Case(
        "spec-value-with-rich-markup-closing-tag",
        run_spec(name="x[/]"),
        ("name", "'x[/]'", "match pattern"),
    ),
    Case(
        "spec-value-with-rich-markup-tag",
        run_spec(dataset={"name": "[bold]"}),
        ("dataset.name", "'[bold]'", "must be one of"),
    ),
    # -- exported configs through `tuner train`
    Case(
        "config-not-yaml",
        train_config("model: [mlp\n"),
        ("config.yaml", "not valid YAML", "model: [mlp"),
    ),
    Case("config-a-list", train_config("- mlp\n"), ("config.yaml", "must hold a mapping")),
    Case(
        "config-missing-keys",
        train_config({"model": "mlp", "dataset": {"name": "digits"}}),
        ("invalid exported config", "hyperparameters is required", "epochs is required"),
    ),
    Case(
        "config-epochs-0",
        train_config({**BASE_EXPORT, "epochs": 0}),
        ("epochs", "greater than or equal to 1", "but got 0"),
    ),
    Case(
        "config-unknown-model",
        train_config({**BASE_EXPORT, "model": "transformer"}),
        ("model", "'transformer'", "must be one of"),
    ),
    Case(
        "config-misspelt-key",
        train_config({**{k: v for k, v in BASE_EXPORT.items() if k != "epochs"}, "epoch": 2}),
        ("epoch is not a known key", "epochs is required"),
    ),
    Case(
        "config-dataset-missing-csv",
        train_config(
            {**BASE_EXPORT, "dataset": {"name": "table", "path": "/nope.csv", "target": "y"}}
        ),
        ("dataset.path", "/nope.csv", "does not exist"),
    ),
    Case(
        "config-file-missing",
        lambda tmp, store: ["train", str(tmp / "absent.yaml")],
        ("absent.yaml", "does not exist"),
    ),
    Case("config-not-utf8", train_config(b"\xff\xfe model: mlp\n"), ("config.yaml",)),
    Case(
        "config-int-of-5000-digits",
        train_config("model: mlp\nepochs: " + "9" * 5000 + "\n"),
        ("config.yaml",),
    ),
    Case(
        "train-epochs-0",
        train_config(BASE_EXPORT, "--epochs", "0"),
        ("--epochs", "at least 1", "but got 0"),
    ),
    Case(
        "train-device-unknown",
        train_config(BASE_EXPORT, "--device", "tpu"),
        ("--device", "'tpu'", "'auto'", "'cuda'"),
    ),
    Case(
        "config-precision-unknown",
        train_config({**BASE_EXPORT, "training": {"precision": "fp8"}}),
        ("training.precision", "'fp8'"),
    ),
    # -- CLI arguments
    Case(
        "export-top-k-0",
        with_store("export", "some-study", "--top-k", "0"),
        ("--top-k", "at least 1", "0"),
    ),
    Case(
        "export-format-xml",
        with_store("export", "some-study", "--format", "xml"),
        ("--format", "'xml'", "'yaml', 'json'"),
    ),
    Case(
        "export-top-k-not-a-number",
        with_store("export", "some-study", "--top-k", "abc"),
        ("--top-k", "integer"),
    ),
    Case(
        "export-unknown-study",
        with_store("export", "no-such-study"),
        ("STUDY", "'no-such-study'", "no study named"),
    ),
    Case(
        "export-unknown-run-id",
        with_store("export", "0123456789abcdef0123456789abcdef"),
        ("STUDY", "'0123456789abcdef0123456789abcdef'", "not the run id of a study"),
    ),
    Case(
        "export-study-name-with-a-space",
        with_store("export", "my study"),
        ("STUDY", "'my study'", "neither a study name nor an MLflow run id"),
    ),
    Case(
        "report-unknown-study",
        with_store("report", "no-such-study"),
        ("STUDY", "'no-such-study'", "no study named"),
    ),
    Case(
        "resume-unknown-study",
        with_store("resume", "no-such-study"),
        ("STUDY", "'no-such-study'"),
    ),
    Case(
        "sync-unknown-study",  # the store from $MLFLOW_TRACKING_URI
        lambda tmp, store: ["sync", "no-such-study"],
        ("STUDY", "'no-such-study'"),
    ),
    Case(
        "run-address-is-a-jobs-server",
        lambda tmp, store: ["run", write_spec(tmp, BASE_SPEC), "--address", "http://head:8265"],
        ("--address", "'http://head:8265'", "Ray Jobs server"),
    ),
    Case("run-without-spec", lambda tmp, store: ["run"], ("Missing argument",)),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_bad_input_exits_2_naming_key_value_and_rule(
    case: Case, workdir: Path, store: str, ray_starts: list[dict[str, Any]]
) -> None:
    args = case.args(workdir, store)
    result = runner.invoke(app, args)
    output = " ".join(result.output.split())
    shown = f"tuner {' '.join(a[:80] for a in args)}\n-> exit {result.exit_code}: {output[:1500]}"
    assert not ray_starts, f"Ray started: the input passed validation\n{shown}"
    crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
    assert not crashed, f"uncaught {type(result.exception).__name__}: {result.exception}\n{shown}"
    assert result.exit_code == 2, shown
    assert "Traceback" not in result.output, shown
    assert "TUNER_DEBUG" not in output, shown  # the catch-all for unexpected exceptions
    missing = [text for text in case.expect if text not in output]
    assert not missing, f"the message does not say {missing}\n{shown}"


def test_the_table_has_every_kind_of_case() -> None:
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES)


# --------------------------------------------------------------------------- console entry


@pytest.mark.integration  # each case a whole `tuner` process (its imports: seconds)
@pytest.mark.parametrize(
    ("content", "overrides", "expect"),
    [
        pytest.param(None, [], ("absent.yaml", "does not exist"), id="missing-file"),
        pytest.param(
            BASE_SPEC, ["scheduler.max_epochs"], ("dotted.key=value",), id="set-without-equals"
        ),
        pytest.param(
            {**BASE_SPEC, "modle": "mlp"}, [], ("modle is not a known key",), id="unknown-key"
        ),
        pytest.param({**BASE_SPEC, "name": "x[/]"}, [], ("'x[/]'",), id="rich-markup-in-value"),
        pytest.param(b"\xff\xfename: x\n", [], ("spec.yaml",), id="not-utf8"),
    ],
)
def test_console_entry_exits_2_without_traceback(
    tmp_path: Path, content: dict | bytes | None, overrides: list[str], expect: tuple[str, ...]
) -> None:
    if content is None:
        spec = str(tmp_path / "absent.yaml")
    elif isinstance(content, bytes):
        spec = write_text(tmp_path, "spec.yaml", content)
    else:
        spec = write_spec(tmp_path, content)
    args = [sys.executable, "-m", "tuner", "run", spec]
    args += [a for o in overrides for a in ("--set", o)]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    output = " ".join((proc.stdout + proc.stderr).split())
    shown = f"exit {proc.returncode}: {(proc.stdout + proc.stderr)[-3000:]}"
    assert "Traceback" not in proc.stderr, shown
    assert proc.returncode == 2, shown
    assert "TUNER_DEBUG" not in output, shown
    missing = [text for text in expect if text not in output]
    assert not missing, f"the message does not say {missing}\n{shown}"
