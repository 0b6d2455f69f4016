"""The study's data as MLflow dataset inputs: one per split, with the contexts MLflow's UI shows.

Each split is described once per study, on the driver (`dataset_inputs`), by MLflow's dataset API
(`mlflow.data.from_numpy`): the dataset's name, its source (the file or folder it was read from,
or the loader of a built-in or plug-in dataset), a digest of the split's arrays as the trials see
them (split and standardised), the split's shapes (the profile) and its schema. The result is
plain JSON-able dicts, so that a write of them can wait in the tracking buffer like any other;
`as_dataset_inputs` turns them into MLflow entities when they are sent.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from trainables.data import DATASETS, DataOptions, Dataset

TRAINING, VALIDATION = "training", "validation"
CONTEXT_TAG = "mlflow.data.context"  # mlflow.utils.mlflow_tags.MLFLOW_DATASET_CONTEXT
DIGEST_LENGTH = 16  # hex characters; MLflow keeps up to 36


def data_digest(x: np.ndarray, y: np.ndarray) -> str:
    """A fingerprint of one split: its arrays' dtypes, shapes and bytes (SHA-256, shortened)."""
    hasher = hashlib.sha256()
    for array in (x, y):
        array = np.ascontiguousarray(array)
        hasher.update(f"{array.dtype.str}{array.shape}".encode())
        hasher.update(memoryview(array).cast("B"))
    return hasher.hexdigest()[:DIGEST_LENGTH]


def dataset_source(options: DataOptions):
    """Where the data came from: the file or folder read, else the registered loader."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.sources import LocalArtifactDatasetSource

    if options.path:
        return LocalArtifactDatasetSource(options.path)
    loader = DATASETS.get(options.name).loader
    return CodeDatasetSource(
        {"dataset": options.name, "loader": f"{loader.__module__}.{loader.__qualname__}"}
    )


def dataset_inputs(dataset: Dataset, options: DataOptions) -> list[dict[str, Any]]:
    """One input per split: {"context": training | validation, "dataset": MLflow's dict of the
    dataset (name, digest, source, source_type, schema, profile)}."""
    import mlflow.data

    source = dataset_source(options)
    splits = (
        (TRAINING, dataset.x_train, dataset.y_train),
        (VALIDATION, dataset.x_val, dataset.y_val),
    )
    return [
        {
            "context": context,
            "dataset": mlflow.data.from_numpy(
                x, source=source, targets=y, name=dataset.name, digest=data_digest(x, y)
            ).to_dict(),
        }
        for context, x, y in splits
    ]


def as_dataset_inputs(inputs: list[dict[str, Any]]) -> list:
    """`dataset_inputs`' dicts as the entities `MlflowClient.log_inputs` takes."""
    from mlflow.entities import Dataset as MlflowDataset
    from mlflow.entities import DatasetInput, InputTag

    return [
        DatasetInput(MlflowDataset(**item["dataset"]), [InputTag(CONTEXT_TAG, item["context"])])
        for item in inputs
    ]


def digests(inputs: list[dict[str, Any]]) -> dict[str, str]:
    """context -> digest, e.g. {"training": "…", "validation": "…"}."""
    return {item["context"]: item["dataset"]["digest"] for item in inputs}
