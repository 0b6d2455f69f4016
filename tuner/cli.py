"""`tuner`: parse, call the library, print; exit codes 0 ok, 1 failed, 2 usage or spec error."""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tuner.errors import SpecError, TunerError

app = typer.Typer(
    help="Hyperparameter tuning for PyTorch: Ray Tune + Optuna + ASHA, tracked in MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(width=None if sys.stdout.isatty() else 120)  # logs and pipes: no 80-column wrap
err = Console(stderr=True)


def say(text: str, console: Console = out) -> None:
    """Print text as it is: no rich markup (a YAML list such as `[adam, sgd]` is not a style
    tag), no highlighting, no wrapping inside words."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a spec key: dotted.key=value (YAML-typed). Repeatable."),
]
OutOption = Annotated[Path | None, typer.Option("--out", help="Where to write.")]
TrackingOption = Annotated[
    str | None,
    typer.Option(help="MLflow tracking URI. Default: $MLFLOW_TRACKING_URI or ./mlflow.db."),
]


class Device(StrEnum):
    """`tuner train --device` (tuner.results.retrain.DEVICES)."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


AddressOption = Annotated[
    str | None,
    typer.Option(help="Ray cluster: 'auto' or ray://HEAD:10001. Default: a local Ray."),
]


def handle_errors(command: Callable) -> Callable:
    """Spec and usage errors exit 2 with one paragraph; study failures exit 1; no tracebacks."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except typer.Exit:  # the command chose its exit code
            raise
        except SpecError as exc:
            report_error(exc)
            raise typer.Exit(2) from None
        except TunerError as exc:
            report_error(exc)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]")
            raise typer.Exit(1) from None
        except Exception as exc:  # an unexpected failure: one line, the traceback on request
            if os.environ.get("TUNER_DEBUG"):
                from tuner.cluster.redaction import redact

                sys.stderr.write(redact(traceback.format_exc()))
            report_error(f"{type(exc).__name__}: {exc} (TUNER_DEBUG=1: traceback)")
            raise typer.Exit(1) from None

    return wrapper


def report_error(message: object) -> None:
    """'error: ...' on stderr; the message is plain text, never read as rich markup, and shows
    no password (a driver's error may quote the URL it was given)."""
    from tuner.cluster.redaction import redact

    err.print(Text.assemble(("error:", "bold red"), " ", redact(str(message))), soft_wrap=True)


# --------------------------------------------------------------------------- studies


def demo_spec_path() -> Path:
    return Path(str(resources.files("tuner") / "demo.yaml"))


def run_and_report(spec_path: Path, overrides: list[str] | None, address: str | None) -> None:
    from tuner.driver.study import require_success, run_study
    from tuner.spec.job_spec import load_spec

    warn_outside_tested_versions()
    spec = load_spec(spec_path, overrides)
    out.print(
        f"[bold]{spec.name}[/]: {spec.model} on {spec.dataset.name}, "
        f"{spec.search.num_samples} trials ({spec.search.algorithm} + {spec.scheduler.name})"
    )
    result = run_study(spec, address=address, show_progress=True)
    print_summary(result)
    require_success(result)


def warn_outside_tested_versions() -> None:
    """One line on stderr when ray, torch, optuna or mlflow is outside its tested window."""
    from tuner.versions import outside_window_warning

    warning = outside_window_warning()
    if warning:
        err.print(Text(warning, style="yellow"), soft_wrap=True)


@app.command()
@handle_errors
def run(
    spec: Annotated[Path, typer.Argument(help="Job spec YAML file.")],
    set_: SetOption = None,
    address: AddressOption = None,
) -> None:
    """Run a study in the foreground with progress."""
    run_and_report(spec, set_, address)


@app.command()
@handle_errors
def check(
    spec: Annotated[Path, typer.Argument(help="Job spec YAML file.")],
    set_: SetOption = None,
) -> None:
    """Check a spec as `tuner run` does before it starts Ray (keys and values, the search space,
    plug-ins, the data, a model built and trained a step with every categorical choice),
    starting nothing and touching no store. Exit 0, or 2 with `tuner run`'s message."""
    from tuner.driver.preparation import prepare
    from tuner.spec.job_spec import load_spec

    loaded = load_spec(spec, set_)
    prepared = prepare(loaded)
    data, space = prepared.dataset, prepared.space
    say(
        f"{spec}: ok: {loaded.model} on {data.name} ({data.layout} {tuple(data.sample_shape)}), "
        f"{len(space.params)} hyperparameters searched, {loaded.search.num_samples} trials "
        f"({loaded.search.algorithm} + {loaded.scheduler.name})"
    )


@app.command()
@handle_errors
def demo(set_: SetOption = None, address: AddressOption = None) -> None:
    """Run the built-in demo study (an MLP on the bundled digits)."""
    run_and_report(demo_spec_path(), set_, address)


def print_summary(result) -> None:
    """The best trial (its best epoch), the ranking, and where everything is."""
    from tuner.cluster.redaction import redact
    from tuner.results.summary import best_config, finalists_table, summary_lines, top_table
    from tuner.tracking.runs import default_tracking_uri

    out.print()
    for line in summary_lines(result):
        say(line)
    best = result.best
    if best is None:
        return
    out.print(top_table(result, rows=5))
    finalists = finalists_table(result)
    if finalists is not None:
        out.print(finalists)
    which = "Winner's config" if finalists is not None else "Best config"
    out.print(f"[bold]{which}[/] (train it to its best epoch):")
    say(yaml.safe_dump(best_config(result), sort_keys=False).rstrip())
    where = (
        f"{result.results_uri} (a working copy without checkpoints: {result.results_path})"
        if result.results_uri
        else result.results_path
    )
    say(
        f"\nResults, per-trial checkpoints and logs: {where}\n"
        f"  trials.csv (every trial, best first), best-config.yaml, tuner.log\n"
        f"Optuna study {result.execution!r}: {redact(result.spec.search.storage)}"
    )
    if result.tracking_buffered:
        err.print(
            f"[yellow]MLflow was unreachable:[/] {result.tracking_buffered} writes are buffered in "
            f"{result.results_path}; send them with: tuner sync {result.results_path}",
            highlight=False,
            soft_wrap=True,
        )
    if result.parent_run_id:
        uri = result.spec.tracking.uri
        ui = (
            "tuner ui"
            if uri == default_tracking_uri()
            else f"tuner ui --tracking-uri {redact(uri)}"
        )
        say(
            f"MLflow: experiment {result.spec.tracking.experiment!r}, parent run "
            f"{result.parent_run_id} with one nested run per trial, in {redact(uri)}\n"
            f"  compare the trials: {ui}  (then open http://127.0.0.1:5000)\n"
            f"  export the best: tuner export {result.spec.name} --top-k 3"
        )


# --------------------------------------------------------------------------- catalogues


PluginOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--plugin", help="A plug-in .py file (or module name) to import first. Repeatable."
    ),
]


def import_plugins(entries: list[Path] | None) -> None:
    """Import `--plugin` entries (files relative to the working directory); errors exit 2."""
    from trainables.plugins import is_file_entry
    from tuner.spec.job_spec import load_plugins

    names = [str(e) for e in entries or []]
    load_plugins([str(Path(e).resolve()) if is_file_entry(e) else e for e in names])


def origin(owner: str) -> str:
    """Where a registry entry comes from: built-in, a plug-in file (relative to the working
    directory when under it), or a plug-in module."""
    from trainables.plugins import SHA_ATTRIBUTE

    if owner.split(".")[0] in ("trainables", "tuner"):
        return "built-in"
    module = sys.modules.get(owner)
    if module is not None and hasattr(module, SHA_ATTRIBUTE):
        file = Path(str(module.__file__))
        return str(file.relative_to(Path.cwd())) if file.is_relative_to(Path.cwd()) else str(file)
    return f"module {owner}"


@app.command()
@handle_errors
def models(plugin: PluginOption = None) -> None:
    """The model families (built-in and plug-ins) and their hyperparameters (defaults), and the
    plug-ins' training functions."""
    from trainables.loop import OPTIMIZER_DEFAULTS
    from trainables.models import MODELS
    from trainables.training_functions import TRAINING_FUNCTIONS

    import_plugins(plugin)
    table = Table("model", "inputs", "hyperparameters (default)", "what it is", "from")
    for name in MODELS.names():
        family = MODELS.get(name)
        knobs = ", ".join(f"{k}={v}" for k, v in family.defaults.items())
        table.add_row(
            name, " | ".join(family.layouts), knobs, family.description, origin(MODELS.owner(name))
        )
    out.print(table)
    knobs = ", ".join(f"{k}={v}" for k, v in OPTIMIZER_DEFAULTS.items())
    out.print(f"Every model also takes: {knobs} (optimizer: adam | adamw | sgd)")
    loops = Table("training function (spec `loop`)", "what it is", "from")
    for name in TRAINING_FUNCTIONS.names():
        entry = TRAINING_FUNCTIONS.get(name)
        loops.add_row(name, entry.description, origin(TRAINING_FUNCTIONS.owner(name)))
    if loops.row_count:
        out.print(loops)


@app.command()
@handle_errors
def datasets(plugin: PluginOption = None) -> None:
    """The datasets (built-in and plug-ins)."""
    from trainables.data import DATASETS

    import_plugins(plugin)
    table = Table("dataset", "inputs", "what it is", "from")
    for name in DATASETS.names():
        entry = DATASETS.get(name)
        table.add_row(name, entry.layout, entry.description, origin(DATASETS.owner(name)))
    out.print(table)


@app.command()
def spaces() -> None:
    """The built-in search spaces and their entries."""
    import search_spaces

    for name in search_spaces.names():
        out.print(f"[bold]{name}[/] ({search_spaces.path_of(name)})")
        say(search_spaces.path_of(name).read_text().rstrip())
        out.print()


# --------------------------------------------------------------------------- later issues


@app.command()
@handle_errors
def submit(
    spec: Annotated[Path, typer.Argument(help="Job spec YAML file.")],
    address: Annotated[
        str | None, typer.Option(help="Ray Jobs server, http://HEAD:8265. Default: $RAY_ADDRESS.")
    ] = None,
    set_: SetOption = None,
) -> None:
    """Submit the study to a Ray cluster as a Ray Job; prints the job id."""
    from tuner.cluster.jobs import resolve_address, submit_study

    address = resolve_address(address)
    job_id = submit_study(spec, address, set_)
    say(
        f"Submitted job {job_id} to {address}\n"
        f"  status:  tuner status {job_id} --address {address}\n"
        f"  follow:  tuner logs {job_id} --follow --address {address}\n"
        f"  stop:    tuner stop {job_id} --address {address}"
    )


@app.command()
@handle_errors
def status(
    job: Annotated[str, typer.Argument(help="The job id `tuner submit` printed.")],
    address: Annotated[
        str | None, typer.Option(help="Ray Jobs server, http://HEAD:8265. Default: $RAY_ADDRESS.")
    ] = None,
) -> None:
    """Status of a submitted study (Ray Job): PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED.
    Exit 0 while it is pending or running and when it succeeded, 1 when it failed or was
    stopped."""
    from tuner.cluster.jobs import job_info, resolve_address

    info = job_info(job, resolve_address(address))
    message = f" ({info['message']})" if info["message"] else ""
    say(f"{job}: {info['status']}{message}")
    if info["status"] in ("FAILED", "STOPPED"):
        raise typer.Exit(1)


@app.command()
@handle_errors
def logs(
    job: Annotated[str, typer.Argument(help="The job id `tuner submit` printed.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream until it ends.")] = False,
    address: Annotated[
        str | None, typer.Option(help="Ray Jobs server, http://HEAD:8265. Default: $RAY_ADDRESS.")
    ] = None,
) -> None:
    """Logs of a submitted study (Ray Job): the driver's output, with the study's summary."""
    from tuner.cluster.jobs import follow_logs, job_logs, resolve_address

    address = resolve_address(address)
    if not follow:
        sys.stdout.write(job_logs(job, address))
        return
    for chunk in follow_logs(job, address):
        sys.stdout.write(chunk)
        sys.stdout.flush()


@app.command()
@handle_errors
def stop(
    job: Annotated[str, typer.Argument(help="The job id `tuner submit` printed.")],
    address: Annotated[
        str | None, typer.Option(help="Ray Jobs server, http://HEAD:8265. Default: $RAY_ADDRESS.")
    ] = None,
) -> None:
    """Stop a submitted study (Ray Job)."""
    from tuner.cluster.jobs import job_status, resolve_address, stop_job

    address = resolve_address(address)
    if stop_job(job, address):
        out.print(f"Stopping {job}: `tuner status {job}` says STOPPED once it has ended")
    else:
        out.print(f"{job} had already ended: {job_status(job, address)}")


@app.command()
@handle_errors
def resume(
    study: Annotated[str, typer.Argument(help="Results folder or URI, study name or run id.")],
    address: AddressOption = None,
    tracking_uri: TrackingOption = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Only search.num_samples=N, N above the study's count: add trials to it.",
        ),
    ] = None,
) -> None:
    """Continue an interrupted study: same trials, checkpoints, Optuna study and MLflow runs;
    with --set search.num_samples=N, extend a finished one to N trials."""
    from tuner.driver.study import require_success, resume_study

    result = resume_study(study, overrides=set_, tracking_uri=tracking_uri, address=address)
    print_summary(result)
    require_success(result)


@app.command("list")
@handle_errors
def list_studies(tracking_uri: TrackingOption = None) -> None:
    """The studies in the tracking store: status, trial counts, best objective."""
    from tuner.cluster.redaction import redact
    from tuner.results.trials import plain
    from tuner.tracking.runs import default_tracking_uri, tracking_access
    from tuner.tracking.runs import list_studies as read_studies

    uri = tracking_uri or default_tracking_uri()
    with tracking_access(uri):
        studies = read_studies(uri)
    if studies.empty:
        out.print(f"No studies in {redact(uri)} (run `tuner demo` or `tuner run SPEC`).")
        return
    table = Table(title=f"Studies in {redact(uri)}", box=box.SIMPLE_HEAD)
    # ids are copied from here and statuses grepped (docs/cluster.md): neither is ever cut or
    # wrapped; the other columns wrap first
    table.add_column("execution", overflow="fold")
    table.add_column("run id", no_wrap=True, min_width=32)
    table.add_column("status", no_wrap=True, min_width=8)
    for name in ("trials", "best"):
        table.add_column(name, overflow="fold")
    for _, row in studies.iterrows():
        trials = f"{row['trials']} ({row['stopped_early']} stopped early, {row['errored']} err)"
        best = "-" if plain(row["best"]) is None else f"{row['objective']} {row['best']:.4f}"
        table.add_row(row["execution"], row["run_id"], row["status"], trials, best)
    out.print(table)


@app.command()
@handle_errors
def export(
    study: Annotated[str, typer.Argument(help="Study name (its newest execution) or run id.")],
    top_k: Annotated[int, typer.Option("--top-k", help="How many configs, best first.")] = 1,
    format: Annotated[str, typer.Option("--format", help="yaml or json.")] = "yaml",
    out_path: OutOption = None,
    tracking_uri: TrackingOption = None,
    pareto: Annotated[
        bool,
        typer.Option(
            "--pareto",
            help="Several objectives: every config on the Pareto front, one file each "
            "(instead of --top-k).",
        ),
    ] = False,
    trust_plugins: Annotated[
        bool,
        typer.Option(
            "--trust-plugins",
            help="Take plug-in files no file here holds from the study's MLflow run (code from "
            "a shared store), showing each one's source and sha256 first.",
        ),
    ] = False,
) -> None:
    """The best config(s) of a study as files `tuner train` accepts (ranked by best epoch)."""
    from tuner.results.exporting import export_study
    from tuner.tracking.runs import default_tracking_uri, tracking_access

    uri = tracking_uri or default_tracking_uri()
    with tracking_access(uri):
        paths = export_study(
            study, uri, top_k, format, out_path, pareto, trust_plugins, lambda text: say(text, err)
        )
    for path in paths:
        say(str(path))


@app.command()
@handle_errors
def train(
    config: Annotated[Path, typer.Argument(help="A config written by `tuner export`.")],
    epochs: Annotated[int | None, typer.Option(help="Default: the trial's best epoch.")] = None,
    tracking_uri: TrackingOption = None,
    device: Annotated[
        Device, typer.Option(help="auto: CUDA when a GPU is available, else CPU.")
    ] = Device.auto,
    workers: Annotated[
        int | None,
        typer.Option(help="Data-parallel workers (a local Ray). Default: the trial's."),
    ] = None,
) -> None:
    """Train one fixed config to completion and log it, with the model, to MLflow."""
    from tuner.cluster.redaction import redact
    from tuner.results.exporting import load_exported
    from tuner.results.retrain import train_config
    from tuner.tracking.runs import default_tracking_uri, tracking_access

    source_uri = load_exported(config).source.get("tracking_uri")
    uri = tracking_uri or source_uri or default_tracking_uri()
    with tracking_access(uri):
        result = train_config(config, uri, epochs, device=device.value, workers=workers)
    final = result.final
    acc = f", val_acc {final['val_acc']:.4f}" if "val_acc" in final else ""
    say(
        f"Trained {len(result.history)} epochs on {result.device}: "
        f"val_loss {final['val_loss']:.4f}{acc}; "
        f"diagnosis {result.diagnosis}; MLflow run {result.run_id} in {redact(uri)}"
    )
    if result.test:
        scores = ", ".join(f"{key} {value:.4f}" for key, value in result.test.items())
        out.print(f"On the held-out test split: {scores}", highlight=False)
    if result.registered_model:
        out.print(f"Registered as model {result.registered_model!r}", highlight=False)


@app.command()
@handle_errors
def report(
    study: Annotated[str, typer.Argument(help="Study name (its newest execution) or run id.")],
    out_path: OutOption = None,
    tracking_uri: TrackingOption = None,
) -> None:
    """The study's HTML dashboard (one self-contained file), for a finished or running study."""
    from tuner.results.dashboard_data import report_study
    from tuner.tracking.runs import default_tracking_uri, tracking_access

    uri = tracking_uri or default_tracking_uri()
    with tracking_access(uri):
        path = report_study(study, uri, out_path)
    size = path.stat().st_size / 1e6
    say(f"{path} ({size:.1f} MB): open it in a browser")


@app.command()
@handle_errors
def sync(
    study: Annotated[str, typer.Argument(help="Results folder or URI, study name or run id.")],
    tracking_uri: TrackingOption = None,
) -> None:
    """Send to MLflow what tracking buffered while the server was unreachable."""
    from tuner.driver.results_folder import sync_study

    sent, left = sync_study(study, tracking_uri)
    out.print(f"Sent {sent} buffered MLflow writes; {left} still buffered.", highlight=False)
    if left:
        raise typer.Exit(1)


@app.command()
@handle_errors
def ui(
    port: Annotated[int, typer.Option(help="Port of the UI.")] = 5000,
    host: Annotated[str, typer.Option(help="Interface; 0.0.0.0 exposes it.")] = "127.0.0.1",
    tracking_uri: TrackingOption = None,
) -> None:
    """The MLflow UI on the study's tracking store, bound to 127.0.0.1 by default."""
    from tuner.cluster.redaction import redact
    from tuner.tracking.mlflow_server import UI_SERVER_ENV, serve_until_stopped, ui_server_command
    from tuner.tracking.runs import default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    if uri.startswith(("http://", "https://")):
        out.print(f"The tracking store is a server already: open {redact(uri)}")
        return
    out.print(f"MLflow UI on {redact(uri)}: http://{host}:{port} (Ctrl-C to stop)", highlight=False)
    command = ui_server_command(uri, host, port)
    raise typer.Exit(serve_until_stopped(command, {**os.environ, **UI_SERVER_ENV}))


@app.command()
@handle_errors
def doctor(
    spec: Annotated[
        Path | None, typer.Argument(help="A job spec: check its tracking store and storage.")
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster: auto, ray://HEAD:10001 or a Jobs server http://HEAD:8265."),
    ] = None,
    tracking_uri: TrackingOption = None,
) -> None:
    """Versions against the tested ones, the GPUs torch sees, and whether the Ray cluster, the
    tracking store and the Optuna storage answer. Exit 1 when something is wrong."""
    from tuner.doctor import examine
    from tuner.spec.job_spec import default_optuna_storage, load_spec
    from tuner.tracking.runs import default_tracking_uri

    if spec is not None:
        loaded = load_spec(spec)
        uri, storage = tracking_uri or loaded.tracking.uri, loaded.search.storage
    else:
        uri = tracking_uri or default_tracking_uri()
        storage = default_optuna_storage(uri)
    findings = examine(address, uri, storage)
    table = Table("", "", "", box=None, show_header=False, pad_edge=False)
    marks = {True: "[green]ok[/]", False: "[red]problem[/]", None: ""}
    for finding in findings:
        table.add_row(finding.topic, Text(finding.detail), marks[finding.ok])
    out.print(table)
    if any(finding.ok is False for finding in findings):
        raise typer.Exit(1)


def main() -> None:  # pragma: no cover - the console script calls `app`
    sys.exit(app())
