"""Comparing trials in the MLflow UI as a user does: `tuner ui` on a finished study, driven in a
real Chromium from the experiment page to a side-by-side comparison, a trial and the report.

Every step leaves a screenshot in the folder the test prints, for a person to look at."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import CHROMIUM_FLAGS, open_page, system_chromium, tiny_spec, tuner_ui
from tuner.driver.study import run_study
from tuner.results.dashboard_data import REPORT_FILE
from tuner.results.trials import StudyResult
from tuner.tracking.run_writes import LEARNING_CURVE
from tuner.tracking.runs import client_for
from tuner.tracking.schema import CONFIG_PREFIX, DIAGNOSIS_TAG, TRIAL_NUMBER_TAG

COMPARED = (1, 2, 3)  # the trial numbers selected for the comparison
TAB_STOPS = 20  # about as many metrics as a trial logs
WAIT_MS = 60_000  # a busy 2-core machine renders MLflow's pages slowly


@pytest.fixture(scope="module")
def study(ray_local, tmp_path_factory: pytest.TempPathFactory) -> StudyResult:
    folder = tmp_path_factory.mktemp("ui-study")
    spec = tiny_spec(
        name="uicompare",
        search={"num_samples": 4, "max_concurrent": 2},
        scheduler={"name": "fifo", "max_epochs": 3},
        tracking={"uri": f"sqlite:///{folder / 'mlflow.db'}"},
        storage=str(folder / "results"),
    )
    return run_study(spec, show_progress=False)


@pytest.fixture
def page(study: StudyResult) -> Iterator:
    """A Chromium page with `tuner ui` serving the study; its base URL is `page.base_url`."""
    path = system_chromium()
    from playwright.sync_api import sync_playwright

    with tuner_ui(study.spec.tracking.uri) as (port, _), sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS)
        page = chromium.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(WAIT_MS)
        got_it = page.get_by_role("button", name="Got it")  # MLflow's "Detect Issues" tour
        page.add_locator_handler(got_it, lambda: got_it.click())
        page.base_url = f"http://127.0.0.1:{port}"
        try:
            yield page
        finally:
            chromium.close()


def trial_runs(study: StudyResult) -> dict:
    """The study's child runs by trial number, as MLflow stored them."""
    client = client_for(study.spec.tracking.uri)
    experiment = client.get_experiment_by_name(study.spec.name).experiment_id
    runs = client.search_runs([experiment], f"tags.{TRIAL_NUMBER_TAG} != ''")
    return {int(run.data.tags[TRIAL_NUMBER_TAG]): run for run in runs}


def trial_config(study: StudyResult, number: int) -> dict:
    row = study.trials.set_index("trial").loc[number]
    prefix = CONFIG_PREFIX
    return {k.removeprefix(prefix): v for k, v in row.items() if k.startswith(prefix) and v == v}


def test_a_user_compares_three_trials_in_the_mlflow_ui(
    study: StudyResult, page, tmp_path: Path
) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    print(f"\nscreenshots of each step: {shots}")
    client = client_for(study.spec.tracking.uri)
    runs = trial_runs(study)
    assert sorted(runs) == [1, 2, 3, 4]
    names = {number: run.info.run_name for number, run in runs.items()}
    compared = [names[number] for number in COMPARED]
    parent_name = client.get_run(study.parent_run_id).info.run_name
    link = {name: page.get_by_role("link", name=name, exact=True) for name in names.values()}

    def shot(name: str) -> None:
        page.screenshot(path=str(shots / f"{name}.png"))

    # 1. The experiment list, then the experiment.
    page.goto(f"{page.base_url}/#/experiments")
    page.get_by_role("link", name=study.spec.name, exact=True).click()
    model_training = page.get_by_role("button", name="Model training", exact=True)
    model_training.wait_for()
    page.get_by_role("link", name=study.spec.name, exact=True).last.wait_for()  # the breadcrumb
    shot("01-experiment")

    # 2. Its runs: the "Model training" side, "Runs"; the trials are nested under the parent.
    model_training.click()
    page.get_by_role("link", name="Runs", exact=True).click()
    parent = page.get_by_role("link", name=parent_name, exact=True)
    parent.wait_for()
    assert [n for n in names.values() if link[n].count()] == [], "trials not under the parent"
    shot("02-runs-collapsed")
    page.get_by_role("gridcell").filter(has=parent).get_by_role("button").first.click()
    for name in names.values():
        link[name].wait_for()
    shot("03-runs-expanded")

    # 3. Three trials selected, then "Compare".
    for name in compared:
        row = page.get_by_role("row").filter(has=link[name])
        row.get_by_role("checkbox", name="Press Space to toggle row selection").check()
    shot("04-three-selected")
    page.get_by_role("button", name="Compare", exact=True).click()
    page.get_by_role("heading", name="Comparing 3 Runs from 1 Experiment").wait_for()

    # 4. The comparison: one column per trial, each hyperparameter's values side by side.
    columns = page.get_by_role("row", name="Run Name:").get_by_role("cell").all_inner_texts()
    assert sorted(columns) == sorted(compared)
    params = {name: runs[n].data.params for n, name in zip(COMPARED, compared, strict=True)}
    for number, name in zip(COMPARED, compared, strict=True):
        assert set(trial_config(study, number)) <= set(params[name]), name
    for key in sorted({key for values in params.values() for key in values}):
        header = page.get_by_role("rowheader", name=key, exact=True)
        row = page.get_by_role("row").filter(has=header)
        shown = row.get_by_role("cell").all_inner_texts()
        assert shown == [params[name].get(key, "") for name in columns], key
    row.scroll_into_view_if_needed()
    shot("05-compare-parameters")

    # 5. The val_loss curves. The metric names sit in a box of their own that MLflow 3.17's
    # mouse wheel does not scroll (only the values beside them move), so `val_loss` is out of
    # sight: the keyboard reaches it, tabbing from "Show diff only" through the names.
    page.get_by_role("switch", name="Metrics - Show diff only").focus()
    focused = ""
    for _ in range(3 * TAB_STOPS):
        page.keyboard.press("Tab")
        focused = page.evaluate("() => document.activeElement.textContent")
        if focused == "val_loss":
            break
    assert focused == "val_loss", "no val_loss among the compared metrics"
    page.keyboard.press("Enter")
    page.get_by_role("heading", name="val_loss", level=2).wait_for()
    for name in compared:
        page.get_by_text(f"{name} (val_loss)", exact=True).wait_for()  # the legend
    curves = page.evaluate(
        """() => Array.from(document.querySelectorAll('.js-plotly-plot'))
                 .flatMap(div => (div.data || []).map(t => [t.name, Array.from(t.y || [])]))"""
    )
    expected = {
        name: [m.value for m in client.get_metric_history(runs[n].info.run_id, "val_loss")]
        for n, name in zip(COMPARED, compared, strict=True)
    }
    assert all(len(values) == study.spec.scheduler.max_epochs for values in expected.values())
    assert {name: y for name, y in curves} == expected
    shot("06-val-loss-curves")

    # 6. One trial's page: its diagnosis tag, then its learning curve among its artifacts.
    page.get_by_role("link", name="Comparing 3 Runs from 1 Experiment").click()
    trial = runs[COMPARED[0]]
    page.get_by_role("link", name=trial.info.run_id, exact=True).click()
    page.get_by_role("heading", name=compared[0], exact=True).wait_for()
    diagnosis = study.trials.set_index("trial").loc[COMPARED[0], "diagnosis"]
    tag = page.get_by_role("status", name=DIAGNOSIS_TAG, exact=True)
    assert tag.inner_text().replace("\n", " ").split() == [DIAGNOSIS_TAG, ":", diagnosis]
    shot("07-trial-overview")
    page.get_by_role("tab", name="Artifacts").click()
    page.get_by_text(LEARNING_CURVE, exact=True).first.click()
    page.wait_for_function(
        "name => [...document.querySelectorAll('img')].some("
        "i => i.alt === name && i.complete && i.naturalWidth > 0)",
        arg=LEARNING_CURVE,
    )
    shot("08-trial-learning-curve")

    # 7. Its parent, the study: the report among its artifacts, opened in the artifact view.
    page.get_by_role("tab", name="Overview").click()
    page.get_by_role("link", name=parent_name, exact=True).first.click()
    page.get_by_role("heading", name=parent_name, exact=True).wait_for()
    page.get_by_role("tab", name="Artifacts").click()
    page.get_by_text(REPORT_FILE, exact=True).first.click()
    report = page.frame_locator("main iframe")
    report.get_by_role("heading", name=f"Study {study.execution}", level=1).wait_for()
    report.get_by_role("heading", name="Learning curves").wait_for()
    shot("09-study-report")

    assert sorted(p.name for p in shots.iterdir()) == [
        "01-experiment.png",
        "02-runs-collapsed.png",
        "03-runs-expanded.png",
        "04-three-selected.png",
        "05-compare-parameters.png",
        "06-val-loss-curves.png",
        "07-trial-overview.png",
        "08-trial-learning-curve.png",
        "09-study-report.png",
    ]


def test_mlflow_ui_lists_the_child_runs_under_the_parent(study: StudyResult, browser) -> None:
    uri = study.spec.tracking.uri
    with tuner_ui(uri) as (port, _):
        experiment = client_for(uri).get_experiment_by_name("uicompare").experiment_id
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
