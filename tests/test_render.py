"""dashboards/render.py: the study dashboard, one self-contained page. From a hand-made
`ReportData` (unit tier): its sections in order, one compressed plotly.js and figures held back
until it runs, the top-trials table best first; from a real study (integration): written with
every study, attached to MLflow, drawn in a real Chromium."""

from __future__ import annotations

import base64
import gzip
import re
from pathlib import Path

import pandas as pd
import pytest
from plotly.offline import get_plotlyjs
from typer.testing import CliRunner

from dashboards.render import (
    FIGURE_SCRIPT,
    ReportData,
    build_sections,
    deferred,
    render,
    write_report,
)
from tests.helpers import FIGURES, open_report, tiny_spec
from tuner.cli import app
from tuner.driver.study import run_study
from tuner.results.dashboard_data import REPORT_FILE
from tuner.results.trials import StudyResult
from tuner.tracking.runs import client_for

runner = CliRunner()
NAN = float("nan")


def report(**changes) -> ReportData:
    """Three trials, in completion order: 2 is the best, 3 diverged without a best epoch."""
    trials = pd.DataFrame(
        {
            "trial": [1, 2, 3],
            "trial_id": ["a", "b", "c"],
            "status": ["stopped_by_scheduler", "completed", "diverged"],
            "diagnosis": ["underfitting", "good_fit", "diverged"],
            "epochs": [2, 4, 1],
            "best_epoch": [2, 3, NAN],
            "best_val_loss": [0.5, 0.3, NAN],
            "best_train_loss": [0.45, 0.2, NAN],
            "best_generalization_gap": [0.05, 0.1, NAN],
            "best_params": [50, 900, NAN],
            "config.lr": [0.1, 0.01, 10.0],
            "config.act": ["relu", "<b>gelu</b>", "tanh"],
        }
    )
    curves = pd.DataFrame(
        [
            {"trial": t, "epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e}
            for t, epochs in ((1, 2), (2, 4), (3, 1))
            for e in range(1, epochs + 1)
        ]
    )
    fields = {
        "title": "digits <mlp>",
        "objective": "val_loss",
        "mode": "min",
        "max_epochs": 4,
        "trials": trials,
        "curves": curves,
        "rungs": [1, 2],
        "importances": {"lr": 0.8, "act": 0.2},
        "subtitle": "3 trials",
    }
    return ReportData(**{**fields, **changes})


def test_the_best_trial_is_the_first_ranked_one_with_an_objective() -> None:
    data = report()
    assert list(data.ranked["trial"]) == [2, 1, 3]
    assert data.best_trial == 2
    assert report(mode="max").best_trial == 1
    assert report(trials=data.trials.assign(best_val_loss=NAN)).best_trial is None


def test_the_page_has_every_section_in_order_and_plotly_once_compressed() -> None:
    page = render(report())
    titles = re.findall(r"<h2>(.*?)</h2>", page)
    assert titles == [
        "Optimization history",
        "Learning curves",
        "Generalization gap",
        "ASHA at work",
        "Hyperparameters",
        "Parameter importances",
        "Top 3 trials",
    ]
    assert "<title>digits &lt;mlp&gt;</title>" in page and "<h1>digits &lt;mlp&gt;</h1>" in page
    assert "<script src" not in page  # nothing from the network
    (packed,) = re.findall(r"id='plotlyjs-gzip'>([^<]*)</script>", page)
    assert gzip.decompress(base64.b64decode(packed)).decode() == get_plotlyjs()
    assert page.count(f'<script type="{FIGURE_SCRIPT}">') == 6  # every figure waits for it


def test_several_objectives_add_the_pareto_front_and_finalists_their_section() -> None:
    several = report(objectives=[("val_loss", "min"), ("params", "min")])
    several.trials["pareto"] = [True, True, False]
    titles = [s.title for s in build_sections(several)]
    assert titles[1] == "Pareto front" and "Finalists" not in titles
    assert "<th>Pareto front</th>" in render(several)
    finalists = pd.DataFrame(
        {"trial": [2, 1], "tuned": [0.3, 0.5], "mean": [0.35, 0.52], "std": [0.01, 0.02]}
    )
    titles = [s.title for s in build_sections(report(finalists=finalists))]
    assert titles[-2:] == ["Finalists", "Top 3 trials"]
    assert "Finalists" not in [s.title for s in build_sections(report(finalists=finalists[:0]))]


def test_the_top_table_lists_the_best_trials_first_escaped_and_cut_at_top_k() -> None:
    table = build_sections(report())[-1].html_body
    rows = re.findall(r"<tr><td>(\d+)</td><td>(\d+)</td>", table)
    assert rows == [("1", "2"), ("2", "1"), ("3", "3")]  # rank, trial
    assert "<td>lr=0.01, act=&lt;b&gt;gelu&lt;/b&gt;</td>" in table
    assert "<b>gelu" not in table
    diverged = table.split("<tr>")[-1]
    assert "<td>-</td>" in diverged  # a missing value, not nan
    top = build_sections(report(top_k=1))[-1]
    assert top.title == "Top 1 trials" and top.html_body.count("<tr><td>") == 1


def test_a_figure_without_a_script_to_hold_back_is_an_error() -> None:
    held = deferred('<div></div><script type="text/javascript">draw()</script>')
    assert held == f'<div></div><script type="{FIGURE_SCRIPT}">draw()</script>'
    with pytest.raises(ValueError, match="no <script> to hold back"):
        deferred("<div></div>")


def test_write_report_makes_its_folder(tmp_path: Path) -> None:
    path = write_report(report(), tmp_path / "new" / "report.html")
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


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
