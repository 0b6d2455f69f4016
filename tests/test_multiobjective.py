"""Several objectives end to end: a study of val_loss and params on digits ends with
a Pareto front in Optuna, MLflow, the printed summary, the dashboard (drawn in Chromium) and
`tuner export --pareto`."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from tests.helpers import FIGURES, make_study, open_report, tiny_spec
from trainables import metrics as m
from trainables.data import DataOptions, load_dataset
from trainables.loop import TrainingRun
from tuner.cli import app
from tuner.driver.study import run_study
from tuner.results.dashboard_data import REPORT_FILE
from tuner.results.exporting import load_exported
from tuner.results.pareto import dominates
from tuner.results.summary import summary_lines
from tuner.results.trials import ON_FRONT_STATUSES, StudyResult
from tuner.tracking import schema
from tuner.tracking.runs import client_for, trial_runs

runner = CliRunner()
OBJECTIVES = [("val_loss", "min"), ("params", "min")]


@pytest.fixture(scope="module")
def study(ray_local, tmp_path_factory: pytest.TempPathFactory) -> StudyResult:
    folder = tmp_path_factory.mktemp("multiobj-study")
    spec = tiny_spec(
        name="multiobj",
        objective=[{"metric": "val_loss"}, {"metric": "params"}],
        search={"algorithm": "nsgaii", "num_samples": 6, "max_concurrent": 2, "seed": 1},
        scheduler={"name": "fifo", "max_epochs": 2},
        tracking={"uri": f"sqlite:///{folder / 'mlflow.db'}"},
        storage=str(folder / "results"),
    )
    return run_study(spec, show_progress=False)


def objective_values(row) -> list[float]:
    return [float(row[schema.best(metric)]) for metric, _ in OBJECTIVES]


def test_the_front_is_exactly_the_undominated_finished_trials(study: StudyResult) -> None:
    trials = study.trials
    assert len(trials) == 6 and set(trials["status"]) == {"completed"}
    points = [objective_values(row) for _, row in trials.iterrows()]
    modes = [mode for _, mode in OBJECTIVES]
    for point, on_front in zip(points, trials[schema.PARETO], strict=True):
        assert on_front == (not any(dominates(other, point, modes) for other in points))
    front = study.pareto
    assert 1 <= len(front) <= 6
    # the winner (first objective) is always on the front: nothing beats its val_loss
    assert study.best["trial"] in set(front["trial"])
    assert set(front["status"]) <= set(ON_FRONT_STATUSES)


def test_params_is_the_models_trainable_parameter_count(study: StudyResult) -> None:
    data = load_dataset(DataOptions("digits"))
    row = study.trials.iloc[-1]
    config = schema.config_from_columns(row)
    expected = TrainingRun("mlp", {k: v for k, v in config.items() if v == v}, data).costs()
    assert row[schema.best(m.PARAMS)] == expected[m.PARAMS]
    assert study.trials[schema.best(m.PARAMS)].nunique() > 1  # the space changes the size


def test_optuna_holds_both_objectives_at_the_first_ones_best_epoch(study: StudyResult) -> None:
    optuna_study = optuna.load_study(study_name=study.execution, storage=study.spec.search.storage)
    assert [d.name for d in optuna_study.directions] == ["MINIMIZE", "MINIMIZE"]
    by_id = {t.user_attrs[schema.TRIAL_ID_TAG]: t for t in optuna_study.trials}
    for _, row in study.trials.iterrows():
        assert by_id[row["trial_id"]].values == pytest.approx(objective_values(row))
    best_trials = {t.user_attrs[schema.TRIAL_ID_TAG] for t in optuna_study.best_trials}
    assert best_trials == set(study.pareto["trial_id"])  # Optuna's own front agrees


def test_mlflow_tags_the_front_and_the_objectives(study: StudyResult) -> None:
    client = client_for(study.spec.tracking.uri)
    parent = client.get_run(study.parent_run_id)
    assert parent.data.tags[schema.OBJECTIVES_TAG] == "val_loss:min,params:min"
    assert parent.data.tags[schema.OBJECTIVE_TAG] == "val_loss:min"  # the first, as before
    assert parent.data.metrics["pareto_trials"] == len(study.pareto)
    assert "Pareto front" in parent.data.tags[schema.NOTE_TAG]
    tagged = {
        run.data.tags[schema.TRIAL_ID_TAG]: run.data.tags[schema.PARETO_TAG]
        for run in trial_runs(client, parent)
    }
    expected = {
        row["trial_id"]: "true" if row[schema.PARETO] else "false"
        for _, row in study.trials.iterrows()
    }
    assert tagged == expected
    run = trial_runs(client, parent)[0]
    assert run.data.metrics[schema.best(m.PARAMS)] > 0
    # the saved spec keeps the list, so resume and the MLflow copy see both objectives
    saved = yaml.safe_load((study.results_path / "spec.yaml").read_text())
    assert saved["objective"] == [
        {"metric": "val_loss", "mode": "min"},
        {"metric": "params", "mode": "min"},
    ]


def test_the_summary_prints_the_front(study: StudyResult) -> None:
    lines = summary_lines(study)
    start = next(i for i, line in enumerate(lines) if line.startswith("Pareto front"))
    assert f"{len(study.pareto)} of 6 trials" in lines[start]
    listed = lines[start + 1 : start + 1 + len(study.pareto)]
    assert [int(line.split()[1]) for line in listed] == list(study.pareto["trial"])
    assert all("val_loss" in line and "params" in line for line in listed)


def test_export_pareto_writes_every_config_on_the_front(study: StudyResult, tmp_path: Path):
    out = tmp_path / "front"
    result = runner.invoke(
        app,
        ["export", "multiobj", "--pareto", "--out", str(out)]
        + ["--tracking-uri", study.spec.tracking.uri],
    )
    assert result.exit_code == 0, result.output
    expected = {f"multiobj-pareto-trial{int(t):04d}.yaml" for t in study.pareto["trial"]}
    assert {p.name for p in out.glob("*.yaml")} == expected
    for path in out.glob("*.yaml"):
        config = load_exported(path)
        number = int(path.stem.rsplit("trial", 1)[1])
        row = study.trials[study.trials["trial"] == number].iloc[0]
        assert config.source["pareto"] is True
        assert config.source["trial_id"] == row["trial_id"]
        assert config.metrics["params"] == row[schema.best(m.PARAMS)]
        assert config.metrics["val_loss"] == pytest.approx(row[schema.best(m.VAL_LOSS)])
    ranks = sorted(yaml.safe_load(p.read_text())["source"]["rank"] for p in out.glob("*.yaml"))
    assert ranks == list(range(1, len(study.pareto) + 1))
    one_file = runner.invoke(
        app,
        ["export", "multiobj", "--pareto", "--out", str(tmp_path / "front.yaml")]
        + ["--tracking-uri", study.spec.tracking.uri],
    )
    assert one_file.exit_code == 2 and "must be a folder" in " ".join(one_file.output.split())


def test_export_pareto_of_a_single_objective_study_exits_2(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    make_study(client_for(store), "single", "val_loss:min", {1: 0.5, 2: 0.3})
    result = runner.invoke(app, ["export", "single", "--pareto", "--tracking-uri", store])
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert "--pareto" in output and "'single'" in output and "one objective" in output


def test_the_report_draws_the_front_in_chromium(study: StudyResult, browser) -> None:  # noqa: F811
    text = (study.results_path / REPORT_FILE).read_text()
    assert "<h2>Pareto front</h2>" in text
    page, problems = open_report(browser, (study.results_path / REPORT_FILE).as_uri())
    plots = page.evaluate(
        """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(div => ({
             title: div.layout && div.layout.title ? (div.layout.title.text || '') : '',
             drawn: !!div.querySelector('.main-svg'),
             traces: (div.data || []).map(
               t => ({name: t.name, points: (t.text || []).length}))}))"""
    )
    assert len(plots) == FIGURES + 1
    [front] = [p for p in plots if p["title"].startswith("Pareto front")]
    assert front["drawn"]
    by_name = {t["name"].split(" (")[0]: t["points"] for t in front["traces"]}
    assert by_name == {"Pareto front": len(study.pareto), "other trials": 6 - len(study.pareto)}
    # the front's markers are drawn: one SVG point per front trial in its trace
    drawn = page.evaluate(
        """() => { const div = Array.from(document.querySelectorAll('.js-plotly-plot'))
             .find(d => d.layout.title.text.startsWith('Pareto front'));
             return Array.from(div.querySelectorAll('.scatterlayer .trace'))
               .map(t => t.querySelectorAll('.point').length); }"""
    )
    assert sorted(drawn) == sorted([len(study.pareto), 6 - len(study.pareto)])
    assert page.locator("table.top th", has_text="Pareto front").count() == 1
    page.screenshot(path=str(study.results_path / "report-pareto.png"), full_page=True)
    assert problems == []


def test_tuner_report_from_mlflow_draws_the_same_front(study: StudyResult, tmp_path: Path):
    out = tmp_path / "report.html"
    uri = study.spec.tracking.uri
    result = runner.invoke(
        app, ["report", study.execution, "--out", str(out)] + ["--tracking-uri", uri]
    )
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "<h2>Pareto front</h2>" in text
    assert f"{len(study.pareto)} trials are on the front" in text


def test_trials_time_inference_only_when_an_objective_names_it() -> None:
    from tuner.driver.study_run import trial_settings

    assert not trial_settings(tiny_spec()).measure_latency
    timed = tiny_spec(objective=[{"metric": "val_loss"}, {"metric": "inference_ms"}])
    assert trial_settings(timed).measure_latency
