"""Best configs out of a study, in the format `tuner train` reads (SPEC.md, "Exported config")."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from trainables import metrics as m
from tuner.spec import JobSpec

CONFIG_PREFIX = "config."


def plain(value: Any) -> Any:
    """numpy scalars -> Python scalars, so YAML and JSON stay readable."""
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and math.isnan(value) else value


def exported_config(spec: JobSpec, row: pd.Series, rank: int, study: str) -> dict[str, Any]:
    """One ranked trial as a config to retrain: its hyperparameters, trained to its best epoch."""
    hyperparameters = {
        k.removeprefix(CONFIG_PREFIX): plain(v)
        for k, v in row.items()
        if k.startswith(CONFIG_PREFIX) and plain(v) is not None
    }
    metrics = {
        k: plain(row[f"best_{k}"])
        for k in (m.VAL_LOSS, m.VAL_ACC, m.TRAIN_LOSS)
        if plain(row.get(f"best_{k}")) is not None
    }
    dataset = {k: v for k, v in spec.dataset.model_dump().items() if v is not None}
    return {
        "model": spec.model,
        "dataset": dataset,
        "hyperparameters": hyperparameters,
        "epochs": int(row["best_epoch"]),
        "metrics": metrics,
        "source": {"study": study, "trial_id": row["trial_id"], "rank": rank},
    }
