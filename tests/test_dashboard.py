"""The study dashboard: written with every study, attached to MLflow, drawn in a real Chromium."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.helpers import FIGURES, open_page, open_report, tiny_spec, tuner_ui
from tuner.cli import app
from tuner.driver.study import run_study
from tuner.results.dashboard_data import REPORT_FILE
from tuner.results.trials import StudyResult
from tuner.tracking.runs import client_for

runner = CliRunner()


@pytest.fixture(scope="module")
def study(ray_local, tmp_path_factory: pytest.TempPathFactory) -> StudyResult:
    folder = tmp_path_factory.mktemp("dashboard-study")
    spec = tiny_spec(
        name="dashboard",
        search={"algorithm": "tpe", "num_samples": 8, "max_concurrent": 2},
        scheduler={"name": "asha", "max_epochs": 6, "grace_period": 1, "reduction_factor": 2},
        tracking={"uri": f"sqlite:///{folder / 'mlflow.db'}"},
        storage=str(folder / "results"),
    )
    return run_study(spec, show_progress=False)


def test_every_study_writes_the_report_and_attaches_it(study: StudyResult) -> None:
    path = study.results_path / REPORT_FILE
    text = path.read_text()
    # plotly.js inlined gzipped + base64 (~1.9 MB) rather than as is (4.7 MB)
    assert path.stat().st_size < 2_500_000
    assert text.count("id='plotlyjs-gzip'") == 1
    assert "<script src" not in text, "the report must not load anything from the network"
    for heading in (
        "Optimization history",
        "Learning curves",
        "Generalization gap",
        "ASHA at work",
        "Hyperparameters",
        "Parameter importances",
        "Top 8 trials",
    ):
        assert f"<h2>{heading}</h2>" in text
    client = client_for(study.spec.tracking.uri)
    artifacts = [a.path for a in client.list_artifacts(study.parent_run_id)]
    assert REPORT_FILE in artifacts


def test_report_renders_every_figure_without_errors(study: StudyResult, browser) -> None:
    page, problems = open_report(browser, (study.results_path / REPORT_FILE).as_uri())
    plots = page.evaluate(
        """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(div => ({
             traces: div.data ? div.data.length : 0,
             drawn: !!div.querySelector('.main-svg'),
             title: div.layout && div.layout.title ? (div.layout.title.text || '') : '',
             xaxis: div.layout && div.layout.xaxis && div.layout.xaxis.title
                    ? (div.layout.xaxis.title.text || '') : ''}))"""
    )
    assert len(plots) == FIGURES
    assert all(p["traces"] > 0 and p["drawn"] and p["title"] for p in plots), plots
    assert all(p["xaxis"] for p in plots if "Hyperparameters" not in p["title"]), plots
    assert page.locator(".parcoords").count() == 1
    assert page.locator("table.top tbody tr").count() == len(study.trials)
    assert page.locator("p.caption").count() == FIGURES + 1
    page.screenshot(path=str(study.results_path / "report.png"), full_page=True)
    assert problems == []


def test_tuner_report_command_writes_the_same_parts(study: StudyResult, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = runner.invoke(
        app,
        ["report", study.execution, "--out", str(out), "--tracking-uri", study.spec.tracking.uri],
    )
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert text.count('class="plotly-graph-div"') == FIGURES
    assert f"Top {len(study.trials)} trials" in text


def test_mlflow_ui_lists_the_child_runs_under_the_parent(study: StudyResult, browser) -> None:
    uri = study.spec.tracking.uri
    with tuner_ui(uri) as (port, _):
        experiment = client_for(uri).get_experiment_by_name("dashboard").experiment_id
        page, _ = open_page(browser, f"http://127.0.0.1:{port}/#/experiments/{experiment}/runs")
        parent = page.get_by_text(study.execution, exact=True)
        parent.wait_for(timeout=60_000)
        assert page.get_by_text("trial-0001", exact=True).count() == 0  # collapsed under it
        cell = page.locator(".ag-cell-wrapper", has=parent)  # the parent's run-name cell
        cell.locator("button").first.click()  # its expander
        page.get_by_text("trial-0001", exact=True).wait_for(timeout=30_000)
        names = [f"trial-{int(n):04d}" for n in study.trials["trial"]]
        visible = [n for n in names if page.get_by_text(n, exact=True).count() == 1]
        assert visible == names
        page.screenshot(path=str(study.results_path / "mlflow-ui.png"))
