"""A study's results -> one self-contained HTML page of plotly figures (plotly.js inlined).

The page opens offline and inside the MLflow UI's artifact viewer. plotly.js (4.7 MB) is inlined
gzipped and base64-encoded (about 1.9 MB); the page inflates it with the browser's
DecompressionStream (Chromium 80+, Firefox 113+, Safari 16.4+), runs it, then draws the
figures, whose scripts wait meanwhile as `FIGURE_SCRIPT` blocks. It knows nothing about Ray,
Optuna or MLflow: `tuner.results.dashboard_data` hands it a `ReportData` of plain tables, in the
trials table's vocabulary (`tuner.tracking.schema`, `tuner.results.trials`).
"""

from __future__ import annotations

import base64
import functools
import gzip
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from tuner.results import outcomes
from tuner.results.trials import rank_trials
from tuner.tracking import schema

DIAGNOSIS_COLORS = {
    "good_fit": "#2ca02c",
    "overfitting": "#d62728",
    "underfitting": "#ff7f0e",
    "diverged": "#7f7f7f",
    "too_short": "#9ecae1",
}
STATUS_SYMBOLS = {
    outcomes.COMPLETED: "circle",
    outcomes.STOPPED_BY_SCHEDULER: "x",
    outcomes.STOPPED_ON_OVERFIT: "diamond",
    outcomes.DIVERGED: "star",
    outcomes.ERRORED: "square",
    outcomes.INTERRUPTED: "triangle-up",
}
CONFIG_PREFIX = schema.CONFIG_PREFIX


@dataclass
class ReportData:
    """What the page shows. `trials`: one row per trial (trial, status, diagnosis, epochs,
    best_epoch, best_<metric>..., config.<name>...), in completion order. `curves`: one row per
    trial and epoch (trial, epoch, train_loss, val_loss, ...)."""

    title: str
    objective: str
    mode: str
    max_epochs: int
    trials: pd.DataFrame
    curves: pd.DataFrame
    rungs: list[int] = field(default_factory=list)  # the scheduler's milestones; FIFO: none
    importances: dict[str, float] | None = None
    subtitle: str = ""
    top_k: int = 10
    #: several objectives: every (metric, mode), `objective` first; `trials` then has the
    #: `pareto` column. Empty: one objective
    objectives: list[tuple[str, str]] = field(default_factory=list)
    #: the finalists table (`tuner.results.finalists.finalists_table`: trial, tuned, mean, std,
    #: test_loss/test_acc, optimism, ...), winner first; None without `selection`
    finalists: pd.DataFrame | None = None

    @property
    def ranked(self) -> pd.DataFrame:
        return rank_trials(self.trials.to_dict("records"), self.objective, self.mode)

    @property
    def best_trial(self) -> int | None:
        ranked = self.ranked.dropna(subset=[schema.best(self.objective)])
        return None if ranked.empty else int(ranked.iloc[0]["trial"])


@dataclass
class Section:
    figure: go.Figure | None
    title: str
    caption: str
    html_body: str = ""


# --------------------------------------------------------------------------- figures


def _layout(fig: go.Figure, title: str, x: str, y: str) -> go.Figure:
    fig.update_layout(
        title=title,
        xaxis_title=x,
        yaxis_title=y,
        template="plotly_white",
        height=430,
        margin={"l": 70, "r": 30, "t": 60, "b": 60},
        legend={"groupclick": "toggleitem"},
    )
    return fig


def optimization_history(data: ReportData) -> Section:
    column = schema.best(data.objective)
    done = data.trials.dropna(subset=[column]).reset_index(drop=True)
    order = list(range(1, len(done) + 1))
    best_so_far = done[column].cummin() if data.mode == "min" else done[column].cummax()
    fig = go.Figure()
    for status, group in done.groupby("status"):
        fig.add_trace(
            go.Scatter(
                x=[order[i] for i in group.index],
                y=group[column],
                mode="markers",
                name=status,
                marker={"symbol": STATUS_SYMBOLS.get(status, "circle"), "size": 9},
                text=[f"trial {t}" for t in group["trial"]],
                hovertemplate="%{text}: %{y:.4f}",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=order,
            y=best_so_far,
            mode="lines",
            name="best so far",
            line={"color": "black", "shape": "hv"},
        )
    )
    title = f"Optimization history: {data.objective} at each trial's best epoch"
    _layout(fig, title, "trial, in completion order", f"{data.objective} (best epoch)")
    caption = (
        f"Each point is a finished trial's best-epoch {data.objective}; the black line is "
        f"the best so far ({'lower' if data.mode == 'min' else 'higher'} is better)."
    )
    return Section(fig, "Optimization history", caption)


PARETO_COLOR, OFF_FRONT_COLOR = "#d62728", "#9e9e9e"


def pareto_scatter(data: ReportData) -> Section:
    """Several objectives: every finished trial at its best epoch on the first two objectives,
    the Pareto front highlighted and joined."""
    (x_metric, x_mode), (y_metric, y_mode) = data.objectives[:2]
    x, y = schema.best(x_metric), schema.best(y_metric)
    trials = data.trials.dropna(subset=[c for c in (x, y) if c in data.trials])
    if x not in trials or y not in trials or schema.PARETO not in trials:
        trials = trials.iloc[0:0].assign(**{x: [], y: [], schema.PARETO: []})
    on_front = trials[schema.PARETO].astype(bool)
    # two objectives: the front's staircase bounds what it dominates (sorted by x, it runs
    # across first when lower x is better, up or down first when higher is); more: plain lines
    staircase = ("hv" if x_mode == "min" else "vh") if len(data.objectives) == 2 else "linear"
    fig = go.Figure()
    for label, group, color, size in (
        ("other trials", trials[~on_front], OFF_FRONT_COLOR, 8),
        ("Pareto front", trials[on_front].sort_values(x), PARETO_COLOR, 12),
    ):
        fig.add_trace(
            go.Scatter(
                x=group[x],
                y=group[y],
                mode="lines+markers" if label == "Pareto front" else "markers",
                line={"color": color, "shape": staircase},
                marker={"color": color, "size": size},
                name=f"{label} ({len(group)})",
                text=[
                    f"trial {t} ({s})" for t, s in zip(group["trial"], group["status"], strict=True)
                ],
                hovertemplate=f"%{{text}}<br>{x_metric} %{{x:.4g}}<br>{y_metric} %{{y:.4g}}",
            )
        )
    _layout(
        fig,
        f"Pareto front: {x_metric} ({x_mode}) against {y_metric} ({y_mode})",
        f"{x_metric} at the best epoch ({'lower' if x_mode == 'min' else 'higher'} is better)",
        f"{y_metric} ({'lower' if y_mode == 'min' else 'higher'} is better)",
    )
    more = (
        f" The front is computed on all {len(data.objectives)} objectives, so some of its points "
        "may look beaten in these two."
        if len(data.objectives) > 2
        else ""
    )
    caption = (
        f"{int(on_front.sum())} trials are on the front: no other trial is at least as good on "
        f"every objective and better on one. Trials the scheduler stopped early are grey (their "
        f"curves were cut short). The first objective, {x_metric}, ranks the trials and picks "
        f"the winner; `tuner export STUDY --pareto` writes every config on the front.{more}"
    )
    return Section(fig, "Pareto front", caption)


def learning_curves(data: ReportData) -> Section:
    fig = go.Figure()
    best = data.best_trial
    diagnosis = data.trials.set_index("trial")["diagnosis"].to_dict()
    shown: set[str] = set()
    for trial, curve in data.curves.groupby("trial"):
        if trial == best:
            continue
        label = diagnosis.get(trial, "unknown")
        fig.add_trace(
            go.Scatter(
                x=curve["epoch"],
                y=curve["val_loss"],
                mode="lines",
                name=label,
                legendgroup=label,
                showlegend=label not in shown,
                opacity=0.55,
                line={"color": DIAGNOSIS_COLORS.get(label, "#17becf"), "width": 1.2},
                hovertemplate=(
                    f"trial {trial}, epoch %{{x}}: val loss %{{y:.4f}}<extra>{label}</extra>"
                ),
            )
        )
        shown.add(label)
    if best is not None:
        curve = data.curves[data.curves["trial"] == best]
        row = data.trials.set_index("trial").loc[best]
        for key, dash in (("val_loss", "solid"), ("train_loss", "dot")):
            fig.add_trace(
                go.Scatter(
                    x=curve["epoch"],
                    y=curve[key],
                    mode="lines",
                    name=f"best trial {best}: {key}",
                    line={"color": "black", "width": 3, "dash": dash},
                )
            )
        best_epoch = int(row[schema.BEST_EPOCH])
        at_best = curve[curve["epoch"] == best_epoch]["val_loss"]
        fig.add_trace(
            go.Scatter(
                x=[best_epoch],
                y=at_best,
                mode="markers",
                name=f"best epoch ({best_epoch})",
                marker={"symbol": "star", "size": 16, "color": "gold", "line": {"width": 1}},
            )
        )
    fig.update_yaxes(type="log")
    _layout(
        fig, "Learning curves: validation loss per epoch, by diagnosis", "epoch", "loss (log scale)"
    )
    caption = (
        "Thin lines: every trial's validation loss, coloured by its diagnosis. Black: the "
        "best trial's validation (solid) and training (dotted) loss; the star is its best "
        "epoch. A val line that turns up while train keeps falling is overfitting."
    )
    return Section(fig, "Learning curves", caption)


def gap_scatter(data: ReportData) -> Section:
    column = "best_generalization_gap"  # absent when no trial finished an epoch
    trials = data.trials.dropna(subset=[column]) if column in data.trials else data.trials[:0]
    has_acc = "best_val_acc" in trials and trials["best_val_acc"].notna().any()
    x_key = "best_val_acc" if has_acc else "best_val_loss"
    x_label = (
        "validation accuracy at best epoch (fraction)"
        if has_acc
        else ("validation loss at best epoch")
    )
    fig = go.Figure()
    for label, group in trials.groupby("diagnosis"):
        fig.add_trace(
            go.Scatter(
                x=group[x_key],
                y=group["best_generalization_gap"],
                mode="markers",
                name=label,
                marker={"color": DIAGNOSIS_COLORS.get(label, "#17becf"), "size": 10},
                text=[f"trial {t}" for t in group["trial"]],
                hovertemplate="%{text}: x %{x:.4f}, gap %{y:.4f}",
            )
        )
    fig.add_hline(y=0, line={"color": "grey", "dash": "dash"})
    _layout(
        fig,
        "Generalization gap against validation performance, at the best epoch",
        x_label,
        "generalization gap (val loss − train loss)",
    )
    caption = (
        "One point per trial. Far right and low is what you want: accurate and no worse on "
        "unseen data than on training data; high points memorised their training set."
    )
    return Section(fig, "Generalization gap", caption)


def asha_at_work(data: ReportData) -> Section:
    epochs = data.trials["epochs"].fillna(0)
    rungs = data.rungs or [data.max_epochs]
    reached = [int((epochs >= r).sum()) for r in rungs]
    trained = int(epochs.sum())
    budget = len(data.trials) * data.max_epochs
    fig = go.Figure(
        go.Bar(
            x=[f"epoch {r}" for r in rungs],
            y=reached,
            text=reached,
            textposition="outside",
            marker_color="#1f77b4",
            name="trials reaching the rung",
        )
    )
    saved = budget - trained
    share = saved / budget if budget else 0.0
    _layout(
        fig,
        f"ASHA at work: {trained} epochs trained of {budget} ({share:.0%} saved)",
        "rung (epochs trained)",
        "trials reaching it",
    )
    caption = (
        f"How many trials reached each rung. Early stopping trained {trained} epochs where "
        f"running all {len(data.trials)} trials to {data.max_epochs} epochs would take "
        f"{budget}: {saved} epochs ({share:.0%}) saved."
    )
    return Section(fig, "ASHA at work", caption)


def parallel_coordinates(data: ReportData) -> Section:
    column = schema.best(data.objective)
    trials = data.trials.dropna(subset=[column])
    dims = []
    for name in [c for c in trials.columns if c.startswith(CONFIG_PREFIX)]:
        values = trials[name]
        label = name.removeprefix(CONFIG_PREFIX)
        if values.isna().any() or values.nunique() < 2:
            continue  # conditional or constant: no axis
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            log = values.min() > 0 and values.max() / values.min() > 100
            shown = values.apply(math.log10) if log else values
            dims.append({"label": f"log10 {label}" if log else label, "values": shown})
        else:
            codes, uniques = pd.factorize(values.astype(str), sort=True)
            dims.append(
                {
                    "label": label,
                    "values": codes,
                    "tickvals": list(range(len(uniques))),
                    "ticktext": list(uniques),
                }
            )
    dims.append({"label": f"{data.objective} (best epoch)", "values": trials[column]})
    fig = go.Figure(
        go.Parcoords(
            line={
                "color": trials[column],
                "colorscale": "Viridis",
                "reversescale": data.mode == "min",
                "showscale": True,
            },
            dimensions=dims,
        )
    )
    fig.update_layout(
        title="Hyperparameters of every trial, coloured by objective",
        template="plotly_white",
        height=470,
        margin={"l": 80, "r": 80, "t": 90},
    )
    caption = (
        "One line per trial through its hyperparameter values (wide ranges on log10 "
        f"axes); yellow lines reached the best {data.objective}. Drag along an axis to "
        "filter."
    )
    return Section(fig, "Hyperparameters", caption)


def importances_chart(data: ReportData) -> Section:
    title = "Parameter importances"
    if not data.importances:
        return Section(None, title, "Not enough trials reported to estimate importances.")
    items = sorted(data.importances.items(), key=lambda kv: kv[1])
    fig = go.Figure(
        go.Bar(
            x=[v for _, v in items],
            y=[k for k, _ in items],
            orientation="h",
            marker_color="#9467bd",
        )
    )
    _layout(
        fig,
        f"Parameter importances for {data.objective} (Optuna, fANOVA)",
        "importance (share of variance explained)",
        "hyperparameter",
    )
    caption = (
        "How much of the variation in the best-epoch objective each hyperparameter "
        "explains across trials; tune the top ones first."
    )
    return Section(fig, title, caption)


def finalists_chart(data: ReportData) -> Section:
    """Per finalist: its tuned score, its re-runs' mean ± std and, with a test split, its test
    mean ± std, side by side."""
    table = data.finalists
    test = {"val_loss": "test_loss", "val_acc": "test_acc"}.get(data.objective)
    labels = [
        f"trial {int(t)}" + (" (winner)" if i == 0 else "") for i, t in enumerate(table["trial"])
    ]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=labels,
            y=table["tuned"],
            mode="markers",
            name="tuned (best epoch of the search's trial)",
            marker={"symbol": "star", "size": 15, "color": "gold", "line": {"width": 1}},
            hovertemplate="%{x}: tuned %{y:.4f}<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=labels,
            y=table["mean"],
            error_y={"type": "data", "array": table["std"].fillna(0), "visible": True},
            mode="markers",
            name="re-runs with new seeds: mean ± std",
            marker={"symbol": "circle", "size": 11, "color": "#1f77b4"},
            hovertemplate="%{x}: re-runs %{y:.4f}<extra></extra>",
        )
    )
    if test and test in table:
        fig.add_trace(
            go.Scatter(
                x=labels,
                y=table[test],
                error_y={
                    "type": "data",
                    "array": table.get(f"{test}_std", table[test] * 0).fillna(0),
                    "visible": True,
                },
                mode="markers",
                name=f"{test}: mean ± std",
                marker={"symbol": "diamond", "size": 11, "color": "#d62728"},
                hovertemplate="%{x}: test %{y:.4f}<extra></extra>",
            )
        )
    _layout(
        fig,
        f"Finalists: tuned {data.objective} against re-runs" + (" and test" if test else ""),
        "finalist (best re-run mean first)",
        data.objective + (f" / {test}" if test else ""),
    )
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(_fmt(row.get(c)))}</td>"
            for c in ("rank", "trial", "tuned", "mean", "std", test, "optimism", "test_optimism")
            if c
        )
        + "</tr>"
        for _, row in table.iterrows()
    )
    head = ["rank", "trial", "tuned", "re-runs mean", "std", *([test] if test else [])]
    head += ["optimism", "test optimism"] if test else ["optimism"]
    body = (
        "<table class='top finalists'><thead><tr>"
        + "".join(f"<th>{h}</th>" for h in head)
        + "</tr></thead><tbody>"
        + rows
        + "</tbody></table>"
    )
    caption = (
        f"The best {len(table)} trials, trained again from scratch with new seeds to their best "
        f"epoch and scored at that epoch. The star is the {data.objective} the search saw; the "
        "gap to the re-runs' mean is its optimism (tuned minus mean: chosen as the best of many "
        "tries, a tuned score flatters itself)"
        + (f"; {test} is measured on the test split the search never saw." if test else ".")
    )
    return Section(fig, "Finalists", caption, body)


def top_table(data: ReportData) -> Section:
    ranked = data.ranked.head(data.top_k)
    objectives = [schema.best(metric) for metric, _ in data.objectives]
    shown = ("best_val_loss", "best_val_acc", "best_train_loss", "best_generalization_gap")
    metric_columns = [c for c in dict.fromkeys((*shown, *objectives)) if c in ranked]
    config_columns = [c for c in ranked.columns if c.startswith(CONFIG_PREFIX)]
    head = [
        "rank",
        "trial",
        "status",
        "diagnosis",
        "epochs",
        "best epoch",
        *[c.removeprefix("best_") for c in metric_columns],
        *(["Pareto front"] if schema.PARETO in ranked else []),
        "config",
    ]
    rows = []
    for rank, (_, row) in enumerate(ranked.iterrows(), start=1):
        config = ", ".join(
            f"{c.removeprefix(CONFIG_PREFIX)}={_fmt(row[c])}"
            for c in config_columns
            if not _missing(row[c])
        )
        cells = [
            rank,
            row["trial"],
            row["status"],
            row["diagnosis"],
            _fmt(row["epochs"]),
            _fmt(row[schema.BEST_EPOCH]),
            *[_fmt(row[c]) for c in metric_columns],
            *((["yes" if row[schema.PARETO] else ""]) if schema.PARETO in ranked else []),
            config,
        ]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    body = (
        "<table class='top'><thead><tr>"
        + "".join(f"<th>{h}</th>" for h in head)
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )
    caption = (
        f"The {len(ranked)} best trials by {data.objective} at their best epoch, with the "
        "config to retrain (`tuner export`)."
    )
    return Section(None, f"Top {len(ranked)} trials", caption, body)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fmt(value) -> str:
    if _missing(value):
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if not value.is_integer() else str(int(value))
    return str(value)


# --------------------------------------------------------------------------- page

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 4px; } .subtitle { color: #555; margin-top: 0; }
section { margin: 28px 0; } .caption { color: #444; margin: 4px 8px; font-size: 0.95em; }
table.top { border-collapse: collapse; font-size: 0.9em; width: 100%; }
table.top th, table.top td { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; }
table.top td:last-child { font-family: monospace; font-size: 0.85em; }
"""


def build_sections(data: ReportData) -> list[Section]:
    several = [pareto_scatter(data)] if len(data.objectives) > 1 else []
    finalists = data.finalists is not None and not data.finalists.empty
    return [
        optimization_history(data),
        *several,
        learning_curves(data),
        gap_scatter(data),
        asha_at_work(data),
        parallel_coordinates(data),
        importances_chart(data),
        *([finalists_chart(data)] if finalists else []),
        top_table(data),
    ]


#: the type of the figures' scripts until plotly.js runs (a browser skips unknown types)
FIGURE_SCRIPT = "text/x-plotly-figure"
#: inflates plotly.js, runs it, then the figures' scripts; `data-plotly` on <body> says how it went
LOADER = """
(async () => {
  const body = document.body;
  try {
    if (typeof DecompressionStream === "undefined") {
      throw new Error("this browser has no DecompressionStream (Chromium 80+, Firefox 113+, "
                      + "Safari 16.4+ have it)");
    }
    const packed = document.getElementById("plotlyjs-gzip").textContent.trim();
    const bytes = Uint8Array.from(atob(packed), c => c.charCodeAt(0));
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    const library = document.createElement("script");
    library.text = await new Response(stream).text();
    document.head.appendChild(library);
    for (const waiting of document.querySelectorAll("script[type='__FIGURE_SCRIPT__']")) {
      const figure = document.createElement("script");
      figure.text = waiting.text;
      waiting.replaceWith(figure);
    }
    body.dataset.plotly = "drawn";
  } catch (error) {
    body.dataset.plotly = "failed";
    const note = document.createElement("p");
    note.className = "subtitle";
    note.textContent = "The figures cannot be drawn: " + error.message;
    body.prepend(note);
    throw error;
  }
})();
""".replace("__FIGURE_SCRIPT__", FIGURE_SCRIPT)


@functools.cache
def packed_plotlyjs() -> str:
    """plotly.js gzipped (the same bytes every time) and base64-encoded."""
    return base64.b64encode(gzip.compress(get_plotlyjs().encode(), 9, mtime=0)).decode("ascii")


def deferred(figure_html: str) -> str:
    """A figure's HTML with its script held back until plotly.js has run."""
    held = re.sub(
        r'<script(?: type="text/javascript")?>', f'<script type="{FIGURE_SCRIPT}">', figure_html
    )
    if held == figure_html:
        raise ValueError("plotly's figure HTML has no <script> to hold back: has plotly changed?")
    return held


def render(data: ReportData) -> str:
    """The whole page as one HTML string, plotly.js inlined once (compressed)."""
    parts = []
    for section in build_sections(data):
        figure = ""
        if section.figure is not None:
            figure = deferred(
                section.figure.to_html(
                    full_html=False,
                    include_plotlyjs=False,
                    config={"displaylogo": False, "responsive": True},
                )
            )
        parts.append(
            f"<section><h2>{html.escape(section.title)}</h2>{figure}{section.html_body}"
            f"<p class='caption'>{html.escape(section.caption)}</p></section>"
        )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(data.title)}</title><style>{STYLE}</style>"
        "</head><body>"
        f"<h1>{html.escape(data.title)}</h1><p class='subtitle'>{html.escape(data.subtitle)}</p>"
        + "".join(parts)
        + f"<script type='application/gzip;base64' id='plotlyjs-gzip'>{packed_plotlyjs()}</script>"
        + f"<script type='text/javascript'>{LOADER}</script></body></html>"
    )


def write_report(data: ReportData, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(data), encoding="utf-8")
    return path
