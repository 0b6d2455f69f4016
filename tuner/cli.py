"""`tuner`: parse, call the library, print; exit codes 0 ok, 1 failed, 2 usage or spec error."""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from tuner.errors import NotAvailableError, SpecError, TunerError

app = typer.Typer(
    help="Hyperparameter tuning for PyTorch: Ray Tune + Optuna + ASHA, tracked in MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a spec key: dotted.key=value (YAML-typed). Repeatable."),
]
OutOption = Annotated[Path | None, typer.Option("--out", help="Where to write.")]
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
        except SpecError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except TunerError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]")
            raise typer.Exit(1) from None
        except Exception as exc:  # an unexpected failure: one line, the traceback on request
            if os.environ.get("TUNER_DEBUG"):
                traceback.print_exc()
            err.print(
                f"[bold red]error:[/] {type(exc).__name__}: {exc} (TUNER_DEBUG=1: traceback)",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(1) from None

    return wrapper


# --------------------------------------------------------------------------- studies


def demo_spec_path() -> Path:
    return Path(str(resources.files("tuner") / "demo.yaml"))


def run_and_report(spec_path: Path, overrides: list[str] | None, address: str | None) -> None:
    from tuner.spec import load_spec
    from tuner.study import require_success, run_study

    spec = load_spec(spec_path, overrides)
    out.print(
        f"[bold]{spec.name}[/]: {spec.model} on {spec.dataset.name}, "
        f"{spec.search.num_samples} trials ({spec.search.algorithm} + {spec.scheduler.name})"
    )
    result = run_study(spec, address=address, show_progress=True)
    print_summary(result)
    require_success(result)


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
def demo(set_: SetOption = None, address: AddressOption = None) -> None:
    """Run the built-in demo study (an MLP on the bundled digits)."""
    run_and_report(demo_spec_path(), set_, address)


def print_summary(result) -> None:
    """The best trial (its best epoch), the ranking, and where everything is."""
    from tuner.summary import best_config, summary_lines, top_table

    out.print()
    for line in summary_lines(result):
        out.print(line, highlight=False, soft_wrap=True)
    best = result.best
    if best is None:
        return
    out.print(top_table(result, rows=5))
    out.print("[bold]Best config[/] (train it to its best epoch):")
    out.print(
        yaml.safe_dump(best_config(result), sort_keys=False).rstrip(),
        highlight=False,
        soft_wrap=True,
    )
    out.print(
        f"\nResults, per-trial checkpoints and logs: {result.results_path}\n"
        f"  trials.csv (every trial, best first), best-config.yaml, tuner.log\n"
        f"Optuna study {result.execution!r}: {result.spec.search.storage}",
        highlight=False,
    )


# --------------------------------------------------------------------------- catalogues


@app.command()
def models() -> None:
    """The built-in model families and their hyperparameters (defaults)."""
    from trainables.loop import OPTIMIZER_DEFAULTS
    from trainables.models import MODELS

    table = Table("model", "inputs", "hyperparameters (default)", "what it is")
    for name in MODELS.names():
        family = MODELS.get(name)
        knobs = ", ".join(f"{k}={v}" for k, v in family.defaults.items())
        table.add_row(name, " | ".join(family.layouts), knobs, family.description)
    out.print(table)
    knobs = ", ".join(f"{k}={v}" for k, v in OPTIMIZER_DEFAULTS.items())
    out.print(f"Every model also takes: {knobs} (optimizer: adam | adamw | sgd)")


@app.command()
def datasets() -> None:
    """The built-in datasets."""
    from trainables.data import DATASETS, DESCRIPTIONS

    table = Table("dataset", "what it is")
    for name in DATASETS.names():
        table.add_row(name, DESCRIPTIONS.get(name, ""))
    out.print(table)


@app.command()
def spaces() -> None:
    """The built-in search spaces and their entries."""
    import search_spaces

    for name in search_spaces.names():
        out.print(f"[bold]{name}[/] ({search_spaces.path_of(name)})")
        out.print(search_spaces.path_of(name).read_text().rstrip(), highlight=False, soft_wrap=True)
        out.print()


# --------------------------------------------------------------------------- later issues


def _not_yet(feature: str) -> None:
    raise NotAvailableError(f"{feature} is not yet available in this version of tuner")


@app.command()
@handle_errors
def submit(
    spec: Path, address: str = typer.Option(..., help="http://HEAD:8265"), set_: SetOption = None
) -> None:
    """Submit the study to a Ray cluster as a Ray Job; prints the job id."""
    _not_yet("tuner submit")


@app.command()
@handle_errors
def status(job: str, address: AddressOption = None) -> None:
    """Status of a submitted study (Ray Job)."""
    _not_yet("tuner status")


@app.command()
@handle_errors
def logs(job: str, follow: bool = False, address: AddressOption = None) -> None:
    """Logs of a submitted study (Ray Job)."""
    _not_yet("tuner logs")


@app.command()
@handle_errors
def stop(job: str, address: AddressOption = None) -> None:
    """Stop a submitted study (Ray Job)."""
    _not_yet("tuner stop")


@app.command()
@handle_errors
def resume(study: str) -> None:
    """Continue an interrupted study."""
    _not_yet("tuner resume")


@app.command("list")
@handle_errors
def list_studies() -> None:
    """The studies in the tracking store."""
    _not_yet("tuner list")


@app.command()
@handle_errors
def export(
    study: str,
    top_k: int = 1,
    format: str = "yaml",
    out_path: OutOption = None,
) -> None:
    """The best config(s) of a study as files `tuner train` accepts."""
    _not_yet("tuner export")


@app.command()
@handle_errors
def train(config: Path, epochs: int | None = None) -> None:
    """Train one fixed config to completion and log it to MLflow."""
    _not_yet("tuner train")


@app.command()
@handle_errors
def report(study: str, out_path: OutOption = None) -> None:
    """The study's HTML dashboard."""
    _not_yet("tuner report")


@app.command()
@handle_errors
def sync(study: str) -> None:
    """Send buffered tracking data to MLflow."""
    _not_yet("tuner sync")


@app.command()
@handle_errors
def ui(port: int = 5000) -> None:
    """The MLflow UI on the study's tracking store (127.0.0.1)."""
    _not_yet("tuner ui")


def main() -> None:  # pragma: no cover - the console script calls `app`
    sys.exit(app())
