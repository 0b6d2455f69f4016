"""A study over its life, on real studies (digits, 2 epochs): a warm start from an earlier study,
extending a finished study, and the study-level time budget and patience."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from tests.helpers import tiny_spec
from trainables import metrics as m
from tuner.cli import app
from tuner.driver.study import resume_study, run_study
from tuner.results import outcomes
from tuner.results.summary import summary_lines
from tuner.results.trials import StudyResult
from tuner.tracking import schema
from tuner.tracking.runs import ranked_trial_runs

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_local")]

#: a small MLP space; the warm-start test narrows its lr
SPACE = {
    "lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-1, "log": True},
    "hidden_units": {"type": "categorical", "choices": [16, 32]},
    "num_layers": 1,
    "batch_size": 64,
}


def sequential(name: str, num_samples: int, **search) -> dict:
    """The sections of a one-trial-at-a-time study (so the order of trials is the order of
    suggestions)."""
    return {
        "name": name,
        "search_space": SPACE,
        "search": {"num_samples": num_samples, "max_concurrent": 1, **search},
    }


def optuna_trials(study_dir: Path, result: StudyResult) -> list[optuna.trial.FrozenTrial]:
    storage = f"sqlite:///{study_dir / 'optuna.db'}"
    return optuna.load_study(study_name=result.execution, storage=storage).trials


def parent(study_dir: Path, result: StudyResult):
    return MlflowClient(f"sqlite:///{study_dir / 'mlflow.db'}").get_run(result.parent_run_id)


def by_number(result: StudyResult) -> list[dict]:
    """Trials in the order they were suggested."""
    return result.trials.sort_values("trial").to_dict("records")


def test_warm_start_runs_the_earlier_best_configs_first_and_skips_the_misfits(
    study_dir: Path,
) -> None:
    earlier = run_study(tiny_spec(**sequential("earlier", 3)), show_progress=False)
    client = MlflowClient(f"sqlite:///{study_dir / 'mlflow.db'}")
    ranked = ranked_trial_runs(client, client.get_run(earlier.parent_run_id))
    top = [
        (int(r.data.tags[schema.TRIAL_NUMBER_TAG]), schema.trial_config(r.data.tags))
        for r in ranked
    ]
    assert len(top) == 3
    # the new space leaves out the config with the largest lr of the three
    lrs = sorted(config["lr"] for _, config in top)
    space = {**SPACE, "lr": {**SPACE["lr"], "high": (lrs[1] + lrs[2]) / 2}}
    fits = [(n, c) for n, c in top if c["lr"] < lrs[2]]
    misfit = next(n for n, c in top if c["lr"] == lrs[2])

    spec = tiny_spec(
        **sequential("later", 3, warm_start={"study": "earlier", "top_k": 3}),
    ).model_copy(update={"search_space": space})
    result = run_study(spec, show_progress=False)

    trials = by_number(result)
    assert len(trials) == 3
    for trial, (_, config) in zip(trials[:2], fits, strict=True):
        assert schema.config_from_columns(trial) == config
    assert trials[2]["config.lr"] not in [c["lr"] for _, c in top]  # then Optuna samples
    tag = json.loads(parent(study_dir, result).data.tags[schema.WARM_START_TAG])
    assert tag["study"] == "earlier" and tag["run_id"] == earlier.parent_run_id
    assert tag["enqueued"] == [n for n, _ in fits]
    assert list(tag["skipped"]) == [str(misfit)]
    assert tag["skipped"][str(misfit)].startswith(f"lr={lrs[2]!r} is outside")
    first = optuna_trials(study_dir, result)[:2]
    assert [t.params for t in first] == [{k: c[k] for k in ("lr", "hidden_units")} for _, c in fits]


def test_warm_start_from_a_missing_study_or_another_model_exits_2_before_ray(
    study_dir: Path, ray_starts: list
) -> None:
    from tuner.tracking.study_run import start_parent_run

    uri = f"sqlite:///{study_dir / 'mlflow.db'}"
    cnn = tiny_spec(name="cnn-study", model="cnn", search_space=None)
    start_parent_run(MlflowClient(uri), cnn, "cnn-study-1", study_dir)
    spec_file = study_dir / "spec.yaml"
    for study, words in (
        ("nowhere", ["'nowhere' is not a study in the tracking store"]),
        ("cnn-study", ["'cnn-study' trained model 'cnn'", "this study trains 'mlp'"]),
    ):
        spec = tiny_spec(name="later", search={"warm_start": {"study": study}})
        spec_file.write_text(spec.to_yaml())
        out = CliRunner().invoke(app, ["run", str(spec_file)])
        assert out.exit_code == 2, out.output
        assert "search.warm_start.study" in out.output
        for word in words:
            assert word in " ".join(out.output.split()), out.output
    assert ray_starts == []


def test_resume_set_num_samples_extends_a_finished_study(study_dir: Path) -> None:
    first = run_study(tiny_spec(**sequential("grow", 2)), show_progress=False)
    folder = first.results_path
    for bad, words in (
        ("search.num_samples=2", "must be above the study's 2 trials"),
        ("scheduler.max_epochs=3", "tuner resume takes only search.num_samples"),
    ):
        out = CliRunner().invoke(app, ["resume", str(folder), "--set", bad])
        assert out.exit_code == 2, out.output
        assert words in " ".join(out.output.split()), out.output

    result = resume_study(str(folder), overrides=["search.num_samples=4"], show_progress=False)

    assert result.parent_run_id == first.parent_run_id
    assert [t["trial"] for t in by_number(result)] == [1, 2, 3, 4]
    assert result.stop_reason == outcomes.COMPLETED and not result.interrupted
    assert "Stop reason: completed (4 of 4 trials ran)" in summary_lines(result)
    run = parent(study_dir, result)
    assert run.info.status == "FINISHED"
    assert run.data.metrics[schema.TRIALS_TOTAL] == 4
    assert run.data.tags[schema.EXTENDED_TAG] == "4"
    assert run.data.tags[schema.STOP_REASON_TAG] == outcomes.COMPLETED
    states = [t.state for t in optuna_trials(study_dir, result)]
    assert states == [optuna.trial.TrialState.COMPLETE] * 4  # the same Optuna study
    client = MlflowClient(f"sqlite:///{study_dir / 'mlflow.db'}")
    assert len(ranked_trial_runs(client, run)) == 4


def test_time_budget_starts_no_trial_after_it_and_lets_the_running_one_finish(
    study_dir: Path,
) -> None:
    spec = tiny_spec(**sequential("budget", 3, time_budget_s=0.001))
    result = run_study(spec, show_progress=False)

    (trial,) = by_number(result)  # the second suggestion came after the 1 ms budget
    assert trial["status"] == "completed" and trial["epochs"] == 2  # not cut short
    assert result.stop_reason == outcomes.TIME_BUDGET and not result.interrupted
    assert "Stop reason: time_budget" in " ".join(summary_lines(result))
    assert parent(study_dir, result).data.tags[schema.STOP_REASON_TAG] == "time_budget"
    assert parent(study_dir, result).info.status == "FINISHED"
    assert len(optuna_trials(study_dir, result)) == 1


def test_patience_stops_the_search_when_the_best_stops_improving(study_dir: Path) -> None:
    spec = tiny_spec(**sequential("plateau", 8, patience_trials=2, algorithm="random"))
    result = run_study(spec, show_progress=False)

    # replay the rule on the trials as they finished: stop once 2 in a row did not improve
    best, since, expected = None, 0, 0
    for trial in by_number(result):
        expected += 1
        value = trial[schema.best(m.VAL_LOSS)]
        best, since = (value, 0) if best is None or value < best else (best, since + 1)
        if since == 2:
            break
    assert expected < 8, "every trial improved: the plateau never came"
    assert len(result.trials) == expected
    assert result.stop_reason == outcomes.PATIENCE and not result.interrupted
    assert parent(study_dir, result).data.tags[schema.STOP_REASON_TAG] == "patience"
    assert len(optuna_trials(study_dir, result)) == expected
