"""Datasets as MLflow inputs: one per split (training, validation), named, sourced, with a digest
of the arrays the trials see, on real data and a real MLflow SQLite store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.helpers import tiny_spec
from trainables.data import DataOptions, load_dataset, register_dataset
from tuner.tracking.inputs import dataset_inputs, digests
from tuner.tracking.runs import client_for
from tuner.tracking.study_run import start_parent_run


def logged_inputs(client, run_id: str) -> dict[str, dict]:
    """context -> {name, digest, source_type, source, profile, schema} as MLflow holds them."""
    run = client.get_run(run_id)
    found = {}
    for item in run.inputs.dataset_inputs:
        (context,) = [t.value for t in item.tags if t.key == "mlflow.data.context"]
        found[context] = {
            "name": item.dataset.name,
            "digest": item.dataset.digest,
            "source_type": item.dataset.source_type,
            "source": json.loads(item.dataset.source),
            "profile": json.loads(item.dataset.profile),
            "schema": json.loads(item.dataset.schema),
        }
    return found


def test_each_split_is_an_input_with_its_sizes_schema_source_and_digest() -> None:
    options = DataOptions(name="digits")
    data = load_dataset(options)
    inputs = {i["context"]: i["dataset"] for i in dataset_inputs(data, options)}
    assert sorted(inputs) == ["training", "validation"]
    assert len(data.x_train) + len(data.x_val) == 1797  # sklearn's digits
    for context, x, y in (
        ("training", data.x_train, data.y_train),
        ("validation", data.x_val, data.y_val),
    ):
        entry = inputs[context]
        assert entry["name"] == "digits"
        assert entry["source_type"] == "code"
        assert json.loads(entry["source"]) == {
            "tags": {"dataset": "digits", "loader": "trainables.datasets.load_digits"}
        }
        profile = json.loads(entry["profile"])
        assert profile["features_shape"] == list(x.shape) and profile["targets_shape"] == [len(y)]
        schema = json.loads(json.loads(entry["schema"])["mlflow_tensorspec"]["features"])
        assert schema[0]["tensor-spec"] == {"dtype": "float32", "shape": [-1, 1, 8, 8]}
        assert len(entry["digest"]) == 16
    assert inputs["training"]["digest"] != inputs["validation"]["digest"]
    assert digests(dataset_inputs(load_dataset(options), options)) == {
        "training": inputs["training"]["digest"],
        "validation": inputs["validation"]["digest"],
    }


def test_two_studies_on_the_same_data_log_the_same_digest_and_another_split_another(
    study_dir: Path,
) -> None:
    logged = []
    for name, val_fraction in (("first", 0.2), ("second", 0.2), ("other-split", 0.3)):
        spec = tiny_spec(name=name, dataset={"name": "digits", "val_fraction": val_fraction})
        options = DataOptions(**spec.dataset.model_dump())
        inputs = dataset_inputs(load_dataset(options), options)
        client = client_for(spec.tracking.uri)
        _, run_id = start_parent_run(client, spec, f"{name}-x", study_dir, inputs=inputs)
        logged.append(logged_inputs(client, run_id))
    first, second, other = logged
    assert first == second
    assert first["validation"]["profile"]["features_shape"][0] == 360  # 20% of 1797
    assert other["validation"]["profile"]["features_shape"][0] == 540  # 30%
    for context in ("training", "validation"):
        assert other[context]["digest"] != first[context]["digest"]


def test_a_file_is_its_source_and_a_plugin_dataset_its_loader(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    table = tmp_path / "points.csv"
    rows = ["a,b,label"] + [f"{x:.3f},{y:.3f},{int(x > y)}" for x, y in rng.random((60, 2))]
    table.write_text("\n".join(rows) + "\n")
    options = DataOptions(name="table", path=str(table), target="label")
    inputs = dataset_inputs(load_dataset(options), options)
    assert {i["dataset"]["source_type"] for i in inputs} == {"local"}
    assert {json.loads(i["dataset"]["source"])["uri"] for i in inputs} == {str(table)}
    assert [json.loads(i["dataset"]["profile"])["features_shape"] for i in inputs] == [
        [48, 2],
        [12, 2],
    ]

    @register_dataset("blobs_for_inputs", layout="vector")
    def blobs(options: dict) -> tuple[np.ndarray, np.ndarray]:
        x = np.random.default_rng(1).normal(size=(40, 3)).astype(np.float32)
        return x, (x[:, 0] > 0).astype(np.int64)

    options = DataOptions(name="blobs_for_inputs")
    (training, _) = dataset_inputs(load_dataset(options), options)
    assert training["dataset"]["name"] == "blobs_for_inputs"
    loader = json.loads(training["dataset"]["source"])["tags"]["loader"]
    assert loader.endswith("blobs")


def test_digest_is_of_the_arrays_not_of_the_options() -> None:
    """Another seed shuffles other rows into validation: the same sizes, another digest."""
    a = DataOptions(name="digits", seed=0)
    b = DataOptions(name="digits", seed=1)
    da, db = (digests(dataset_inputs(load_dataset(o), o)) for o in (a, b))
    assert da["validation"] != db["validation"]
