"""tuner: hyperparameter tuning for PyTorch with Ray Tune, Optuna and MLflow, from Python.

The command line (`tuner run spec.yaml`) and this API run the same code::

    import tuner

    @tuner.register_model("tiny", layouts=("vector",), defaults={"width": 16})
    def tiny(hp, sample_shape, layout, output_dim):
        ...

    result = tuner.run("spec.yaml")
    print(result.trials.head())  # best first

`import tuner` is light: Ray, MLflow, Optuna and torch are imported when a function or type that
needs them is first used (module `__getattr__`, PEP 562), so a plug-in file's `import tuner` and
`tuner --help` stay fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tuner.results.trials import StudyResult
    from tuner.spec.job_spec import JobSpec

__all__ = [
    "ExportedConfig",
    "JobSpec",
    "PluginError",
    "SpecError",
    "Split",
    "StudyError",
    "StudyResult",
    "TrialContext",
    "TunerError",
    "export",
    "register_dataset",
    "register_model",
    "register_training",
    "run",
]

#: public name -> (module, attribute), imported on first use
_LAZY = {
    "register_model": ("trainables.models", "register_model"),
    "register_dataset": ("trainables.data", "register_dataset"),
    "register_training": ("trainables.training_functions", "register_training"),
    "Split": ("trainables.contracts", "Split"),
    "TrialContext": ("trainables.contracts", "TrialContext"),
    "JobSpec": ("tuner.spec.job_spec", "JobSpec"),
    "StudyResult": ("tuner.results.trials", "StudyResult"),
    "ExportedConfig": ("tuner.results.exporting", "ExportedConfig"),
    "PluginError": ("trainables.plugins", "PluginError"),
    "TunerError": ("tuner.errors", "TunerError"),
    "SpecError": ("tuner.errors", "SpecError"),
    "StudyError": ("tuner.errors", "StudyError"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'tuner' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def run(
    spec: str | Path | Mapping[str, Any] | JobSpec,
    *,
    overrides: list[str] | None = None,
    address: str | None = None,
    show_progress: bool = True,
) -> StudyResult:
    """Run a study in the foreground, as `tuner run` does, and return its ranked trials.

    Everything that can be wrong with the spec (unknown keys, a model that cannot be built on the
    data, a plug-in that fails to import) is found before Ray starts.

    Args:
        spec:
            The job spec: a path to a YAML file (relative paths in it are resolved against the
            file's folder), a mapping of the same keys (relative paths resolved against the
            working directory), or a validated :class:`~tuner.JobSpec`.
        overrides:
            ``dotted.key=value`` strings applied to the spec before it is validated, as
            ``tuner run --set`` does (values typed by YAML), e.g. ``["search.num_samples=8"]``.
            Not accepted with a :class:`~tuner.JobSpec`, which is validated already.
        address:
            The Ray cluster: ``"auto"`` or ``"ray://HEAD:10001"``. Default: a local Ray, started
            for this study and stopped after it, unless this process has one running already.
        show_progress:
            Print the live progress line while trials run.

    Returns:
        A :class:`~tuner.StudyResult`. Its ``trials`` attribute is a
        :class:`pandas.DataFrame` with one row per trial, ranked by the objective at each
        trial's best epoch, best first (``best_val_loss``, ``best_epoch``, ``status``,
        ``diagnosis``, ``config.<hyperparameter>``, ...); ``best`` is the first finished row;
        ``results_path`` holds ``trials.csv``, the checkpoints and the log.

    Raises:
        SpecError:
            The spec, a plug-in, the data or the search space cannot be used; nothing ran.
        StudyError:
            The study ran but no trial produced a finite objective, or it was interrupted.

    Example:

        .. code::

            import tuner

            result = tuner.run(
                {
                    "name": "digits-mlp",
                    "model": "mlp",
                    "dataset": {"name": "digits"},
                    "search": {"num_samples": 4},
                    "scheduler": {"max_epochs": 3},
                }
            )
            print(result.trials[["trial", "best_val_loss"]])
    """
    from tuner.driver.study import require_success, run_study
    from tuner.spec.job_spec import JobSpec, load_spec, spec_from_dict

    if isinstance(spec, JobSpec):
        if overrides:
            raise _spec_error("overrides apply to a path or a mapping, not to a validated JobSpec")
        job = spec
    elif isinstance(spec, (str, Path)):
        job = load_spec(spec, overrides)
    elif isinstance(spec, Mapping):
        job = spec_from_dict(dict(spec), base_dir=Path.cwd(), overrides=overrides)
    else:
        raise _spec_error(
            f"spec must be a path, a mapping or a tuner.JobSpec but got {type(spec).__name__}"
        )
    result = run_study(job, address=address, show_progress=show_progress)
    require_success(result)
    return result


def export(
    study: str,
    *,
    top_k: int = 1,
    out: str | Path | None = None,
    tracking_uri: str | None = None,
    trust_plugins: bool = False,
) -> list[dict[str, Any]]:
    """Write the best configs of a study as files that ``tuner train`` accepts, as
    ``tuner export`` does.

    Trials are ranked by the objective at their best epoch; each config holds the model, the
    dataset, the hyperparameters, the epochs to train (the trial's best epoch) and where it came
    from.

    Args:
        study:
            The study's name (its newest execution) or an MLflow run id.
        top_k:
            How many configs, best first.
        out:
            A ``.yaml``/``.json`` file when ``top_k`` is 1, else a folder; default: the working
            directory, one ``<study>-rank<N>.yaml`` per config.
        tracking_uri:
            The MLflow tracking store. Default: ``$MLFLOW_TRACKING_URI`` or ``./mlflow.db``.
        trust_plugins:
            Take plug-in files that no file here holds from the study's MLflow run (code from
            a shared store), printing each one's source and sha256 first. Without it such a
            study raises SpecError, and nothing is written or imported.

    Returns:
        The exported configs, best first, as mappings (what each file holds; the written path
        of each is under its ``"path"`` key).

    Raises:
        SpecError:
            No such study, ``top_k`` below 1, no trial with a finite objective, or plug-in
            code only the tracking store holds and ``trust_plugins`` is False.

    Example:

        .. code::

            import tuner

            best = tuner.export("digits-mlp", top_k=3, out="best/")
            print(best[0]["hyperparameters"], best[0]["path"])
    """
    import yaml

    from tuner.results.exporting import export_study
    from tuner.tracking.runs import default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    folder = Path(out) if out is not None else None
    paths = export_study(study, uri, top_k, "yaml", folder, trust_plugins=trust_plugins)
    return [{**yaml.safe_load(path.read_text()), "path": str(path)} for path in paths]


def _spec_error(message: str) -> Exception:
    from tuner.errors import SpecError

    return SpecError(message)
