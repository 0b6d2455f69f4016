"""A held-out test split the search never sees, and finalists re-run with new
seeds, on a real study (digits, 4 trials, 2 finalists x 2 seeds) through a real local Ray and a
SQLite MLflow store."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from tests.helpers import open_report, tiny_spec
from trainables import metrics as m
from trainables.trainable import FINALIST
from tuner.cli import app, print_summary
from tuner.driver.preparation import prepare
from tuner.driver.study import run_study
from tuner.results.dashboard_data import REPORT_FILE
from tuner.results.exporting import export_study
from tuner.results.trials import StudyResult
from tuner.tracking import schema
from tuner.tracking.runs import client_for, finalist_runs, find_study_run, trial_runs

runner = CliRunner()


def row_hashes(x: np.ndarray) -> list[str]:
    """One SHA-256 per row of an array (its bytes as the trial gets them)."""
    rows = np.ascontiguousarray(x).reshape(len(x), -1)
    return [hashlib.sha256(row.tobytes()).hexdigest() for row in rows]


def facts_folder() -> Path:
    """Where this Ray job's trials write what rows they got (the driver's and the workers' job
    id are the same; a reused actor's trial dir can lag behind its trial, so not there)."""
    import ray

    return (
        Path(tempfile.gettempdir()) / f"tuner-data-facts-{ray.get_runtime_context().get_job_id()}"
    )


def hashing_trial(config: dict[str, Any], data, settings) -> None:
    """tuner's own trial, after writing which rows it was given."""
    from trainables.trainable import train_trial

    facts = {
        "finalist": FINALIST in config,
        "train": row_hashes(data.x_train),
        "val": row_hashes(data.x_val),
        "test": row_hashes(data.x_test) if data.x_test is not None else None,
    }
    folder = facts_folder()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{uuid.uuid4().hex}.json").write_text(json.dumps(facts))
    train_trial(config, data, settings)


@pytest.fixture(scope="module")
def study(ray_local, tmp_path_factory: pytest.TempPathFactory) -> StudyResult:
    folder = tmp_path_factory.mktemp("finalists-study")
    spec = tiny_spec(
        name="finalists",
        dataset={"name": "digits", "test_fraction": 0.2},
        search={"algorithm": "random", "num_samples": 4, "max_concurrent": 2},
        scheduler={"name": "fifo", "max_epochs": 3},
        selection={"finalists": 2, "seeds": 2},
        tracking={"uri": f"sqlite:///{folder / 'mlflow.db'}"},
        storage=str(folder / "results"),
    )
    shutil.rmtree(facts_folder(), ignore_errors=True)
    return run_study(spec, show_progress=False, trainable=hashing_trial)


def trial_facts(result: StudyResult) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in facts_folder().glob("*.json")]


def test_no_test_row_is_in_any_search_trials_data(study: StudyResult) -> None:
    test_rows = set(row_hashes(prepare(study.spec).dataset.x_test))
    assert len(test_rows) == 360  # a fifth of 1,797 digits, every one distinct
    facts = trial_facts(study)
    searched = [f for f in facts if not f["finalist"]]
    finalists = [f for f in facts if f["finalist"]]
    assert len(searched) == 4 and len(finalists) == 4
    for fact in searched:
        assert fact["test"] is None  # the search's data has no test split at all
        assert len(fact["train"]) + len(fact["val"]) == 1797 - 360
        assert test_rows.isdisjoint(fact["train"]) and test_rows.isdisjoint(fact["val"])
    for fact in finalists:  # the same hashing sees the test rows where they are
        assert set(fact["test"]) == test_rows
        assert fact["train"] == searched[0]["train"] and fact["val"] == searched[0]["val"]


def test_finalists_are_rerun_with_new_seeds_and_their_optimism_measured(
    study: StudyResult,
) -> None:
    finalists = study.finalists
    ranked = study.trials.dropna(subset=["best_val_loss"])
    top = ranked.head(2)
    reruns = finalists.reruns
    assert len(reruns) == 4 and finalists.note is None
    assert set(reruns["trial"]) == set(top["trial"])
    assert set(reruns["seed"]) == {1, 2}  # the search's trials all used search.seed 0
    assert (reruns["status"] == "completed").all()
    for _, trial in top.iterrows():
        mine = reruns[reruns["trial"] == trial["trial"]]
        assert (mine["epochs"] == trial["best_epoch"]).all()  # trained to the best epoch
        assert (mine["tuned"] == trial["best_val_loss"]).all()
        assert mine["score"].nunique() == 2  # new seeds: new results
        assert mine[m.TEST_LOSS].notna().all() and mine[m.TEST_ACC].between(0.3, 1).all()
    table = finalists.table
    assert list(table["rank"]) == [1, 2]
    assert table["mean"].is_monotonic_increasing  # val_loss: the lowest mean wins
    for _, row in table.iterrows():
        mine = reruns[reruns["trial"] == row["trial"]]
        assert row["mean"] == pytest.approx(mine["score"].mean())
        assert row["std"] == pytest.approx(mine["score"].std())
        assert row[m.TEST_LOSS] == pytest.approx(mine[m.TEST_LOSS].mean())
        assert row["optimism"] == pytest.approx(row["tuned"] - row["mean"])
        assert row["test_optimism"] == pytest.approx(row["tuned"] - row[m.TEST_LOSS])
    winner = finalists.winner
    assert study.winner["trial_id"] == winner["trial_id"]
    saved = yaml.safe_load((study.results_path / "best-config.yaml").read_text())
    assert saved["source"]["trial_id"] == winner["trial_id"]
    assert saved["metrics"]["confirmed_val_loss"] == pytest.approx(winner["mean"])
    assert saved["dataset"]["test_fraction"] == 0.2  # train and export use the same rows


def test_mlflow_holds_the_finalists_and_the_winner(study: StudyResult) -> None:
    client = client_for(study.spec.tracking.uri)
    parent = find_study_run(client, study.execution)
    assert len(trial_runs(client, parent)) == 4  # the re-runs are not counted as trials
    runs = finalist_runs(client, parent)
    assert len(runs) == 4
    trial_run_ids = {r.info.run_id for r in trial_runs(client, parent)}
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        assert tags[schema.ROLE_TAG] == schema.FINALIST_ROLE
        assert tags[schema.CONFIRMS_RUN_TAG] in trial_run_ids
        assert tags[schema.SEED_TAG] in {"1", "2"}
        assert m.TEST_LOSS in metrics and f"tuned_{m.VAL_LOSS}" in metrics
    for run in trial_runs(client, parent):  # only finalists ever hold test metrics
        assert not {m.TEST_LOSS, m.TEST_ACC} & set(run.data.metrics)
    winner = study.finalists.winner
    values = parent.data.metrics
    assert parent.data.tags[schema.WINNER_TRIAL_TAG] == str(int(winner["trial"]))
    assert values["winner_trial"] == winner["trial"]
    assert values[m.TEST_LOSS] == pytest.approx(winner[m.TEST_LOSS])
    assert values["optimism"] == pytest.approx(winner["optimism"])
    assert values["confirmed_val_loss"] == pytest.approx(winner["mean"])


def test_export_ranks_by_the_confirmed_score_and_writes_test_metrics(
    study: StudyResult, tmp_path: Path
) -> None:
    paths = export_study(study.execution, study.spec.tracking.uri, top_k=3, out=tmp_path)
    configs = [yaml.safe_load(p.read_text()) for p in paths]
    table = study.finalists.table
    assert [c["source"]["trial_id"] for c in configs[:2]] == list(table["trial_id"])
    for config, (_, row) in zip(configs[:2], table.iterrows(), strict=False):
        assert config["metrics"]["confirmed_val_loss"] == pytest.approx(row["mean"])
        assert config["metrics"]["confirmed_val_loss_std"] == pytest.approx(row["std"])
        assert config["metrics"][m.TEST_LOSS] == pytest.approx(row[m.TEST_LOSS])
        assert config["dataset"]["test_fraction"] == 0.2
    assert m.TEST_LOSS not in configs[2]["metrics"]  # not a finalist


def test_the_end_of_study_output_prints_the_finalists_and_the_winner(
    study: StudyResult, capsys: pytest.CaptureFixture
) -> None:
    print_summary(study)
    text = capsys.readouterr().out
    winner = study.finalists.winner
    assert f"Winner: trial {int(winner['trial'])}" in text
    assert "Finalists" in text and "optimism" in text and "test_loss" in text
    assert f"{winner['mean']:.4f} ± {winner['std']:.4f}" in text


def test_report_has_a_finalists_section_drawn_in_chromium(study: StudyResult, browser) -> None:  # noqa: F811
    path = study.results_path / REPORT_FILE
    assert "<h2>Finalists</h2>" in path.read_text()
    page, problems = open_report(browser, path.as_uri())
    plots = page.evaluate(
        """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(div => ({
             traces: div.data ? div.data.length : 0,
             drawn: !!div.querySelector('.main-svg'),
             title: div.layout && div.layout.title ? (div.layout.title.text || '') : ''}))"""
    )
    assert len(plots) == 6, plots  # five figures (4 trials: no importances) + the finalists
    finalist_plot = [p for p in plots if p["title"].startswith("Finalists")]
    assert finalist_plot and finalist_plot[0]["traces"] == 3 and finalist_plot[0]["drawn"]
    assert page.locator("table.finalists tbody tr").count() == 2
    page.screenshot(path=str(study.results_path / "report-finalists.png"), full_page=True)
    assert problems == []


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("override", "words"),
    [
        (
            "dataset.test_fraction=0.8",
            ["dataset.test_fraction: 0.8", "val_fraction 0.2", "must be below 1"],
        ),
        ("selection.finalists=3", ["selection.finalists: 3", "search.num_samples 2"]),
    ],
)
def test_bad_selection_input_exits_2_before_ray(
    override: str, words: list[str], ray_starts, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    spec = {
        "name": "bad",
        "model": "mlp",
        "dataset": {"name": "digits"},
        "search": {"num_samples": 2},
        "selection": {"finalists": 1, "seeds": 2},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = runner.invoke(app, ["run", "spec.yaml", "--set", override])
    assert result.exit_code == 2, result.output
    for word in words:
        assert word in result.output
    assert ray_starts == []
