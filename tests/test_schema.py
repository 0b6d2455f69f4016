"""tuner/tracking/schema.py: what MLflow holds, written and read back the same way."""

from __future__ import annotations

import json

from tuner.tracking import schema


def test_objectives_read_back_as_written_and_old_runs_mean_val_loss() -> None:
    pairs = [("val_loss", "min"), ("params", "min")]
    tags = {
        schema.OBJECTIVE_TAG: schema.encode_objective(*pairs[0]),
        schema.OBJECTIVES_TAG: schema.encode_objectives(pairs),
    }
    assert tags == {
        "tuner.objective": "val_loss:min",
        "tuner.objectives": "val_loss:min,params:min",
    }
    assert schema.decode_objectives(tags) == pairs
    assert schema.decode_objective(tags) == ("val_loss", "min")
    assert schema.decode_objectives({schema.OBJECTIVE_TAG: "val_acc:max"}) == [("val_acc", "max")]
    assert schema.decode_objective({}) == schema.DEFAULT_OBJECTIVE == ("val_loss", "min")
    assert schema.decode_objective({schema.OBJECTIVE_TAG: "garbled"}) == ("val_loss", "min")


def test_a_config_goes_to_columns_and_back() -> None:
    config = {"lr": 0.01, "batch_size": 64, "optimizer": "adam"}
    columns = schema.config_columns(config)
    assert list(columns) == ["config.lr", "config.batch_size", "config.optimizer"]
    row = {**columns, "trial": 3, schema.best("val_loss"): 0.2}
    assert schema.config_from_columns(row) == config
    assert schema.best("val_loss") == "best_val_loss"
    assert schema.trial_config({schema.CONFIG_TAG: json.dumps(config)}) == config
    assert schema.trial_config({}) == {}


def test_a_run_s_status_tag_speaks_today_s_vocabulary() -> None:
    assert schema.trial_status({}) == "running"
    assert schema.trial_status({schema.TRIAL_STATUS_TAG: "completed"}) == "completed"
    assert (
        schema.trial_status({schema.TRIAL_STATUS_TAG: "stopped_by_asha"}) == "stopped_by_scheduler"
    )
