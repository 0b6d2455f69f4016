"""What a finished study prints and leaves in its results folder."""

from __future__ import annotations

from typing import Any

import yaml
from rich.table import Table

from trainables import metrics as m
from tuner.results import outcomes
from tuner.results.exporting import exported_config
from tuner.results.finalists import confirmed_metrics
from tuner.results.trials import StudyResult, plain
from tuner.spec.spaces import IntParam, SearchSpace
from tuner.tracking import schema

MIN_TRIALS_FOR_IMPORTANCE = 5

TRIALS_FILE = "trials.csv"
BEST_CONFIG_FILE = "best-config.yaml"


def best_config(result: StudyResult) -> dict[str, Any] | None:
    """The study's result as an exported config: the winning finalist (with what its re-runs
    measured) when there are finalists, else the best trial."""
    winner = result.winner
    if winner is None:
        return None
    return exported_config(result.spec, winner, 1, result.execution, winner_confirmed(result))


def winner_confirmed(result: StudyResult) -> dict[str, Any] | None:
    finalists = result.finalists
    winner = finalists.winner if finalists is not None else None
    return None if winner is None else confirmed_metrics(winner, finalists.metric)


def save_results(result: StudyResult) -> None:
    """trials.csv (one row per trial, best first) and best-config.yaml beside Ray's results."""
    result.results_path.mkdir(parents=True, exist_ok=True)
    result.trials.to_csv(result.results_path / TRIALS_FILE, index=False)
    config = best_config(result)
    if config:
        (result.results_path / BEST_CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))


def summary_lines(result: StudyResult) -> list[str]:
    spec, counts = result.spec, result.status_counts()
    metric = spec.objective.metric
    epochs = int(result.trials["epochs"].sum()) if len(result.trials) else 0
    budget = len(result.trials) * spec.scheduler.max_epochs
    statuses = ", ".join(f"{counts[s]} {s}" for s in outcomes.STATUSES if counts.get(s))
    lines = [
        f"Study {result.execution}: {len(result.trials)} trials in {result.wall_time_s:.0f}s"
        f"{f' ({statuses})' if statuses else ''}; {epochs} epochs trained of {budget} without "
        "early stopping",
    ]
    if result.stop_reason:
        lines.append(f"Stop reason: {stop_text(result)}")
    if len(result.trials):
        failed = result.trials[result.trials["status"] == outcomes.ERRORED]
        for _, row in failed.iterrows():
            lines.append(f"Trial {int(row['trial'])} failed after its retries: {row['error']}")
        for _, row in result.trials[result.trials["status"] == outcomes.OUT_OF_MEMORY].iterrows():
            share = plain(row.get(m.GPU_SHARE))
            at = f" at GPU share {share:g}" if share is not None else ""
            lines.append(f"Trial {int(row['trial'])} ran out of GPU memory{at}")
    best = result.best
    if best is None:
        lines.append(f"No trial produced a finite {metric}.")
        return lines
    val_acc = plain(best.get(schema.best(m.VAL_ACC)))
    acc = f", val_acc {val_acc:.4f}" if val_acc is not None else ""
    lines.append(
        f"Best: trial {int(best['trial'])} at epoch {int(best[schema.BEST_EPOCH])}: "
        f"val_loss {best[schema.best(m.VAL_LOSS)]:.4f}{acc} ({metric} is the objective, "
        f"{spec.objective.mode}imised at each trial's best epoch)"
    )
    return lines + pareto_lines(result) + finalist_lines(result)


def objective_value(value: Any) -> str:
    """A metric for the front's listing: counts whole, the rest to 4 significant digits."""
    value = plain(value)
    if value is None:
        return "-"
    return f"{value:,.0f}" if float(value).is_integer() and abs(value) >= 100 else f"{value:.4g}"


def pareto_lines(result: StudyResult) -> list[str]:
    """Several objectives: the trials on the Pareto front, one line each (the first objective,
    which ranks the trials and picks the winner, first)."""
    spec = result.spec
    if not spec.multi_objective:
        return []
    names = ", ".join(f"{o.metric} ({o.mode})" for o in spec.objectives)
    front = result.pareto
    if front.empty:
        return [f"Pareto front ({names}): no trial ran its course with every objective."]
    lines = [
        f"Pareto front ({names}): {len(front)} of {len(result.trials)} trials; export them "
        f"with: tuner export {spec.name} --pareto"
    ]
    for _, row in front.iterrows():
        values = ", ".join(
            f"{o.metric} {objective_value(row.get(schema.best(o.metric)))}" for o in spec.objectives
        )
        lines.append(f"  trial {int(row['trial'])} (epoch {int(row[schema.BEST_EPOCH])}): {values}")
    return lines


def finalist_lines(result: StudyResult) -> list[str]:
    """The winner among the finalists (and why fewer were re-run than asked), when any."""
    finalists = result.finalists
    if finalists is None:
        return []
    lines = [finalists.note] if finalists.note else []
    winner = finalists.winner
    if winner is None:
        return [*lines, "No finalist re-run produced a finite score."]
    metric = finalists.metric
    test = m.TEST_OF.get(metric)
    on_test = (
        f", test {test} {_number(winner.get(test))}" if plain(winner.get(test)) is not None else ""
    )
    lines.append(
        f"Winner: trial {int(winner['trial'])}, the best of {len(finalists.table)} finalists by "
        f"its re-runs' mean {metric} {_number(winner['mean'])} ± {_number(winner['std'])} over "
        f"{int(winner['runs'])} seeds{on_test} (tuned {_number(winner['tuned'])}, optimism "
        f"{_number(winner['optimism'])})"
    )
    return lines


def finalists_table(result: StudyResult) -> Table | None:
    """The finalists: tuned score, re-runs' mean ± std, test mean, optimism (tuned - mean, and
    tuned - test)."""
    finalists = result.finalists
    if finalists is None or finalists.table.empty:
        return None
    metric = finalists.metric
    test = m.TEST_OF.get(metric)
    columns = ["rank", "trial", "epochs", f"tuned {metric}", "re-runs mean ± std"]
    columns += [f"test {test}", "optimism", "test optimism"] if test else ["optimism"]
    table = Table(
        *columns, title=f"Finalists: trained again with new seeds ({metric}, winner first)"
    )
    for _, row in finalists.table.iterrows():
        cells = [
            str(int(row["rank"])),
            str(int(row["trial"])),
            str(int(row["epochs"])),
            _number(row["tuned"]),
            f"{_number(row['mean'])} ± {_number(row['std'])} (n={int(row['runs'])})",
        ]
        if test:
            cells += [_number(row.get(test)), _number(row["optimism"])]
            cells.append(_number(row.get("test_optimism")))
        else:
            cells.append(_number(row["optimism"]))
        table.add_row(*cells)
    return table


def stop_text(result: StudyResult) -> str:
    """Why the study stopped, in words (`tuner.stop_reason` is the first word)."""
    search, reason = result.spec.search, result.stop_reason
    ran = f"{len(result.trials)} of {search.num_samples} trials ran"
    if reason == outcomes.TIME_BUDGET:
        return (
            f"time_budget (search.time_budget_s: no trial started after {search.time_budget_s:g}"
            f" s; the running ones finished; {ran})"
        )
    if reason == outcomes.PATIENCE:
        return (
            f"patience (search.patience_trials: the best did not improve in "
            f"{search.patience_trials} finished trials in a row; {ran})"
        )
    if reason == outcomes.GPU_HOURS_BUDGET:
        return (
            f"gpu_hours_budget (search.gpu_hours_budget: no trial started once the trials had "
            f"spent {search.gpu_hours_budget:g} GPU-hours; the running ones finished; {ran})"
        )
    if reason == outcomes.INTERRUPTED:
        return "interrupted (Ctrl-C or a crash; tuner resume continues it)"
    return f"{reason} ({ran})"


def top_table(result: StudyResult, rows: int = 5) -> Table:
    columns = ("rank", "trial", "status", "epochs", "best epoch", m.VAL_LOSS, m.VAL_ACC, "gap")
    table = Table(*columns, title="Top trials (metrics at each trial's best epoch)")
    for rank, (_, row) in enumerate(result.trials.head(rows).iterrows(), start=1):
        if plain(row[schema.BEST_EPOCH]) is None:  # no finite result
            continue
        acc = plain(row.get(schema.best(m.VAL_ACC)))
        table.add_row(
            str(rank),
            str(int(row["trial"])),
            row["status"],
            str(int(row["epochs"])),
            str(int(row[schema.BEST_EPOCH])),
            f"{row[schema.best(m.VAL_LOSS)]:.4f}",
            "-" if acc is None else f"{acc:.4f}",
            f"{row[schema.best(m.GENERALIZATION_GAP)]:.4f}",
        )
    return table


def param_importances(result: StudyResult, space: SearchSpace) -> dict[str, float] | None:
    """Optuna's fANOVA importances for the best-epoch objective, over every trial that reported.

    ASHA-stopped trials count at their best epoch (Optuna's own importances would see only the
    few trials that ran to the end). None when fewer than MIN_TRIALS_FOR_IMPORTANCE reported.
    """
    import optuna

    objective = schema.best(result.spec.objective.metric)
    rows = result.trials.dropna(subset=[objective])
    if len(rows) < MIN_TRIALS_FOR_IMPORTANCE:
        return None
    direction = "minimize" if result.spec.objective.mode == "min" else "maximize"
    study = optuna.create_study(direction=direction)
    for _, row in rows.iterrows():
        params = {}
        for name, param in space.params.items():
            value = plain(row.get(f"{schema.CONFIG_PREFIX}{name}"))
            if value is not None:
                params[name] = int(value) if isinstance(param, IntParam) else value
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions={n: space.params[n].distribution() for n in params},
                value=float(row[objective]),
            )
        )
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    try:
        importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (ValueError, RuntimeError):  # e.g. no parameter present in every trial
        return None
    return {name: float(value) for name, value in importances.items()}


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def _number(value: Any, digits: int = 4) -> str:
    value = plain(value)
    return "-" if value is None else f"{float(value):.{digits}f}"


def finalist_note_lines(result: StudyResult) -> list[str]:
    """The winner and the finalists table, for the parent run's description."""
    finalists = result.finalists
    if finalists is None:
        return []
    lines = [""]
    for line in finalist_lines(result):
        winner = line.startswith("Winner: ")
        lines.append(f"**Winner:** {line.removeprefix('Winner: ')}" if winner else line)
    test = m.TEST_OF.get(finalists.metric)
    rows = [
        [
            str(int(row["rank"])),
            f"trial-{int(row['trial']):04d}",
            _number(row["tuned"]),
            f"{_number(row['mean'])} ± {_number(row['std'])}",
            _number(row.get(test)) if test else "-",
            _number(row["optimism"]),
        ]
        for _, row in finalists.table.iterrows()
    ]
    if rows:
        header = ["rank", "tuned run", "tuned", "re-runs mean ± std", "test", "optimism"]
        lines += ["", "### Finalists", "", markdown_table(header, rows)]
    return lines


def counts_line(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {name}" for name, n in counts.items()) or "none"


def study_note(result: StudyResult, report_artifact: str, rows: int = 5) -> str:
    """The parent run's description in MLflow (`mlflow.note.content`, Markdown): the best trial,
    the counts, the top trials, where the report is and what to run next."""
    spec, trials = result.spec, result.trials
    metric, mode = spec.objective.metric, spec.objective.mode
    lines = [f"## Study {result.execution}", ""]
    state = "interrupted" if result.interrupted else "finished"
    lines.append(
        f"{len(trials)} trials of {spec.model} on {spec.dataset.name}, {state} in "
        f"{result.wall_time_s:.0f} s; objective: {metric} ({mode}imised at each trial's best "
        "epoch)."
    )
    best = result.best
    lines.append("")
    if best is None:
        lines.append(f"**Best:** no trial produced a finite {metric}.")
    else:
        lines.append(
            f"**Best:** trial {int(best['trial'])} (run `trial-{int(best['trial']):04d}`) at "
            f"epoch {int(best[schema.BEST_EPOCH])}: {metric} "
            f"{_number(best[schema.best(metric)])}, val_acc "
            f"{_number(best.get(schema.best(m.VAL_ACC)))}"
        )
    lines += finalist_note_lines(result)
    lines += ["", f"**Statuses:** {counts_line(result.status_counts())}"]
    if "diagnosis" in trials:
        diagnoses = trials["diagnosis"].value_counts().to_dict() if len(trials) else {}
        lines.append(f"**Diagnoses:** {counts_line(diagnoses)}")
    table_rows = []
    for rank, (_, row) in enumerate(trials.head(rows).iterrows(), start=1):
        if plain(row[schema.BEST_EPOCH]) is None:  # no finite result
            continue
        table_rows.append(
            [
                str(rank),
                f"trial-{int(row['trial']):04d}",
                str(row["status"]),
                str(row.get("diagnosis", "-")),
                str(int(row[schema.BEST_EPOCH])),
                _number(row[schema.best(m.VAL_LOSS)]),
                _number(row.get(schema.best(m.VAL_ACC))),
            ]
        )
    if table_rows:
        header = ["rank", "run", "status", "diagnosis", "best epoch", m.VAL_LOSS, m.VAL_ACC]
        lines += ["", f"### Top {len(table_rows)}", "", markdown_table(header, table_rows)]
    front = pareto_lines(result)
    if front:
        lines += ["", f"### {front[0]}", "", *(f"- {line.strip()}" for line in front[1:])]
    lines += [
        "",
        f"**Report:** the artifact `{report_artifact}` (Artifacts tab): learning curves, "
        "optimisation history, parameter importances; one file that opens offline.",
        "",
        f"**Next:** `tuner export {spec.name} --top-k 3` writes the best configs; "
        f"`tuner train {spec.name}-rank1.yaml` retrains the best one and logs its model.",
        "",
        "Compare trials: expand this run in the runs table, select the trial runs, *Compare*.",
    ]
    return "\n".join(lines)
