"""Plug-ins: the `import tuner` API, `tuner models/datasets --plugin`, the checks of
`register_model`, and each bad plug-in input: exit 2, one line naming the file, the line where
there is one, and the rule, before Ray starts.

"Before Ray starts" is checked two ways. Through the console entry (`python -m tuner run`, a
subprocess) Ray's temporary folder is pointed into the test's folder (RAY_TMPDIR), and must not
exist afterwards. In-process (typer's CliRunner) `ray.init` is replaced by a recorder that fails,
and a Ray another test started is hidden, so a case that got as far as Ray fails on that alone.
Either way the study's results folder must not exist: `run_study` creates it only after the probe.
"""

from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import tuner
from trainables import plugins
from trainables.models import MODELS, register_model
from tuner.cli import app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]

TINY_MODEL = """\
import math

import tuner
from torch import nn


@tuner.register_model("{name}", layouts=("image", "vector"), defaults={{"width": 16}})
def build(hp, sample_shape, layout, output_dim):
    \"\"\"One hidden layer of `width` units.\"\"\"
    width = int(hp["width"])
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(sample_shape), width),
        nn.ReLU(),
        nn.Linear(width, output_dim),
    )
"""


def base_spec(**sections: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "plugged",
        "model": "mlp",
        "dataset": {"name": "digits"},
        "search": {"num_samples": 2, "max_concurrent": 2, "seed": 0},
        "scheduler": {"name": "fifo", "max_epochs": 2},
        "storage": "./results",
    }
    raw.update(sections)
    return raw


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def write_spec(folder: Path, **sections: Any) -> Path:
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(base_spec(**sections), sort_keys=False))
    return path


def one_line(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def cli_refuses(args: list[str], folder: Path, ray_starts: list[dict[str, Any]]) -> str:
    """Run `tuner ARGS` in-process; assert exit 2 with one error line and no Ray, no results."""
    result = runner.invoke(app, [str(a) for a in args])
    shown = f"tuner {' '.join(map(str, args))} -> exit {result.exit_code}: {result.output[-2000:]}"
    assert not ray_starts, f"Ray started\n{shown}"
    crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
    assert not crashed, f"uncaught {result.exception!r}\n{shown}"
    assert result.exit_code == 2, shown
    assert "Traceback" not in result.output, shown
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, shown
    assert not (folder / "results").exists(), "the study's results folder was created"
    return one_line(result.output)


def console_refuses(spec: Path, folder: Path) -> str:
    """`python -m tuner run SPEC` in a subprocess: exit 2, one line, and Ray never started (its
    temporary folder, pointed into `folder`, was never created)."""
    ray_tmp = folder / "raytmp"
    env = {
        **os.environ,
        "RAY_TMPDIR": str(ray_tmp),
        "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "tuner", "run", str(spec)],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    shown = f"exit {proc.returncode}: {(proc.stdout + proc.stderr)[-2000:]}"
    assert proc.returncode == 2, shown
    assert "Traceback" not in proc.stderr, shown
    assert proc.stderr.count("error:") == 1, shown
    assert not ray_tmp.exists(), f"Ray started (it created {ray_tmp})"
    assert not (folder / "results").exists(), "the study's results folder was created"
    return one_line(proc.stderr)


# --------------------------------------------------------------------------- bad input


def test_missing_plugin_file_through_the_console(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, plugins=["absent_plugin.py"])
    message = console_refuses(spec, tmp_path)
    assert f"plugins: '{tmp_path / 'absent_plugin.py'}' does not exist" in message


def test_failing_import_names_the_raising_line_of_the_plugin(tmp_path: Path) -> None:
    write(
        tmp_path,
        "plug_helper_fails.py",
        """\
        import tuner


        def widths():
            return {"width": 16}["depth"]  # line 5: the frame that raises


        WIDTHS = widths()  # line 8: the module-level call
        """,
    )
    spec = write_spec(tmp_path, plugins=["plug_helper_fails.py"])
    message = console_refuses(spec, tmp_path)
    file = tmp_path / "plug_helper_fails.py"
    assert f"plugins: '{file}' failed to import: line 5 of {file}: KeyError: 'depth'" in message


def test_syntax_error_names_its_line(workdir: Path, ray_starts: list) -> None:
    write(workdir, "plug_syntax.py", "import tuner\n\n\ndef broken(:\n    pass\n")
    spec = write_spec(workdir, plugins=["plug_syntax.py"])
    message = cli_refuses(["run", spec], workdir, ray_starts)
    assert f"line 4 of {workdir / 'plug_syntax.py'}: SyntaxError" in message


def test_unknown_model_lists_the_valid_ones_plugins_included(
    workdir: Path, ray_starts: list
) -> None:
    write(workdir, "plug_listed.py", TINY_MODEL.format(name="tiny_listed"))
    spec = write_spec(workdir, plugins=["plug_listed.py"], model="tiny_lsited")
    message = cli_refuses(["run", spec], workdir, ray_starts)
    assert "model must be one of ['cnn', 'lstm', 'mlp', 'tiny_listed']" in message
    assert "'tiny_lsited'" in message


def test_unknown_dataset_lists_the_valid_ones(workdir: Path, ray_starts: list) -> None:
    spec = write_spec(workdir, dataset={"name": "blobz"})
    message = cli_refuses(["run", spec], workdir, ray_starts)
    assert "dataset.name must be one of [" in message
    assert "'digits'" in message and "'blobz'" in message


def test_a_name_two_plugin_files_register(workdir: Path, ray_starts: list) -> None:
    write(workdir, "plug_first.py", TINY_MODEL.format(name="tiny"))
    write(workdir, "plug_second.py", TINY_MODEL.format(name="tiny"))
    spec = write_spec(workdir, plugins=["plug_first.py", "plug_second.py"], model="tiny")
    message = cli_refuses(["run", spec], workdir, ray_starts)
    second = workdir / "plug_second.py"
    assert f"plugins: '{second}': line 7 of {second}: " in message
    assert "model 'tiny' is registered twice: by plug_first and by plug_second" in message


def test_a_plugin_reregistering_a_builtin(workdir: Path, ray_starts: list) -> None:
    write(workdir, "plug_mlp.py", TINY_MODEL.format(name="mlp"))
    message = cli_refuses(["models", "--plugin", "plug_mlp.py"], workdir, ray_starts)
    assert "model 'mlp' is registered twice: by trainables.models and by plug_mlp" in message
    assert f"line 7 of {workdir / 'plug_mlp.py'}" in message
    assert MODELS.owner("mlp") == "trainables.models"  # the built-in is untouched


def test_a_family_without_defaults(workdir: Path, ray_starts: list) -> None:
    write(
        workdir,
        "plug_nodefaults.py",
        """\
        import tuner


        @tuner.register_model("bare", layouts=("vector",), defaults={})
        def bare(hp, sample_shape, layout, output_dim):
            return None
        """,
    )
    spec = write_spec(workdir, plugins=["plug_nodefaults.py"], model="bare")
    message = cli_refuses(["run", spec], workdir, ray_starts)
    file = workdir / "plug_nodefaults.py"
    assert f"'{file}' failed to import: line 4 of {file}: ValueError:" in message
    assert "model 'bare' declares no hyperparameter defaults" in message
    assert "defaults={'width': 16}" in message
    assert "bare" not in MODELS  # a failed import leaves nothing behind


def test_a_forward_that_fails_on_the_sample_batch(workdir: Path, ray_starts: list) -> None:
    write(
        workdir,
        "plug_forward.py",
        """\
        import tuner
        from torch import nn


        class ThreeInputs(nn.Module):
            def __init__(self, width):
                super().__init__()
                self.layer = nn.Linear(3, width)

            def forward(self, x):
                return self.layer(x)  # line 11: digits are (1, 8, 8), not 3 features


        @tuner.register_model("three_inputs", layouts=("image",), defaults={"width": 8})
        def build(hp, sample_shape, layout, output_dim):
            return ThreeInputs(hp["width"])
        """,
    )
    spec = write_spec(
        workdir, plugins=["plug_forward.py"], model="three_inputs", search_space={"lr": 0.01}
    )
    message = cli_refuses(["run", spec], workdir, ray_starts)
    assert (
        f"model 'three_inputs' (plug-in {workdir / 'plug_forward.py'}, line 11) cannot be built "
        "and trained one step on dataset 'digits' (image (1, 8, 8)) with "
        "{'width': 8, 'lr': 0.01}: RuntimeError: mat1 and mat2 shapes cannot be multiplied"
    ) in message


def test_a_bad_plugin_for_the_catalogues(workdir: Path, ray_starts: list) -> None:
    write(workdir, "plug_raises.py", "import tuner\nraise RuntimeError('no GPU here')\n")
    for command in ("models", "datasets"):
        message = cli_refuses([command, "--plugin", "plug_raises.py"], workdir, ray_starts)
        file = workdir / "plug_raises.py"
        assert f"line 2 of {file}: RuntimeError: no GPU here" in message


@pytest.mark.parametrize(
    ("layouts", "defaults", "rule"),
    [
        pytest.param((), {"w": 1}, "layouts must be a non-empty tuple", id="no-layouts"),
        pytest.param(("graph",), {"w": 1}, "but got ('graph',)", id="unknown-layout"),
        pytest.param("image", {"w": 1}, "but got 'image'", id="a-string"),
        pytest.param(("image",), None, "declares no hyperparameter defaults", id="none"),
        pytest.param(("image",), [("w", 1)], "declares no hyperparameter defaults", id="list"),
    ],
)
def test_register_model_rules(layouts: Any, defaults: Any, rule: str) -> None:
    with pytest.raises(ValueError, match="model 'odd'") as caught:
        register_model("odd", layouts=layouts, defaults=defaults)(lambda *a: None)
    assert rule in str(caught.value)
    assert "odd" not in MODELS


def test_description_defaults_to_the_docstrings_first_line(tmp_path: Path) -> None:
    plugins.load(str(write(tmp_path, "plug_doc.py", TINY_MODEL.format(name="doc_tiny"))))
    family = MODELS.get("doc_tiny")
    assert family.description == "One hidden layer of `width` units."
    assert family.layouts == ("image", "vector")


# --------------------------------------------------------------------------- loading


def test_the_same_file_twice_is_a_no_op(tmp_path: Path) -> None:
    file = str(write(tmp_path, "plug_twice.py", TINY_MODEL.format(name="twice")))
    first = plugins.load(file)
    family = MODELS.get("twice")
    second = plugins.load(file)
    assert second == first
    assert MODELS.get("twice") is family  # not imported again


def test_an_edited_file_replaces_its_entries(tmp_path: Path) -> None:
    path = write(tmp_path, "plug_edited.py", TINY_MODEL.format(name="before_edit"))
    plugins.load(str(path))
    write(tmp_path, "plug_edited.py", TINY_MODEL.format(name="after_edit"))
    plugins.load(str(path))
    assert "before_edit" not in MODELS
    assert MODELS.owner("after_edit") == "plug_edited"


def test_two_files_with_one_stem_in_a_spec(workdir: Path) -> None:
    for folder in ("a", "b"):
        (workdir / folder).mkdir()
        write(workdir / folder, "plug_same.py", TINY_MODEL.format(name=f"same_{folder}"))
    from tuner.spec.job_spec import spec_from_dict

    with pytest.raises(tuner.SpecError, match="would both be imported as 'plug_same'"):
        spec_from_dict(base_spec(plugins=["a/plug_same.py", "b/plug_same.py"]))


def test_a_module_plugin(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = workdir / "site"
    package.mkdir()
    write(package, "plugmod_tiny.py", TINY_MODEL.format(name="module_tiny"))
    monkeypatch.syspath_prepend(str(package))
    from tuner.spec.job_spec import spec_from_dict

    spec = spec_from_dict(base_spec(plugins=["plugmod_tiny"], model="module_tiny"))
    assert spec.plugins == ["plugmod_tiny"]
    assert MODELS.owner("module_tiny") == "plugmod_tiny"
    result = runner.invoke(app, ["models", "--plugin", "plugmod_tiny"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "module_tiny" in line)
    assert "module plugmod_tiny" in row


def test_a_failing_module_plugin_names_its_own_line(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(workdir, "plugmod_fails.py", "import tuner\n\nx = 1 / 0\n")
    monkeypatch.syspath_prepend(str(workdir))
    with pytest.raises(tuner.PluginError) as caught:
        plugins.load("plugmod_fails")
    assert (
        f"plugins: 'plugmod_fails' failed to import: line 3 of {workdir / 'plugmod_fails.py'}: "
        "ZeroDivisionError: division by zero"
    ) == str(caught.value)


def test_catalogues_list_plugins_beside_the_builtins(workdir: Path) -> None:
    write(workdir, "plug_catalogue.py", TINY_MODEL.format(name="catalogued"))
    result = runner.invoke(app, ["models", "--plugin", "plug_catalogue.py"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[1]: line for line in result.output.splitlines() if line.startswith("│")}
    assert "built-in" in rows["mlp"]
    assert "plug_catalogue.py" in rows["catalogued"]  # relative to the working directory
    assert "width=16" in rows["catalogued"]
    write(
        workdir,
        "plug_blobs.py",
        "import numpy as np\nimport tuner\n\n"
        "@tuner.register_dataset('blobs', layout='vector', description='two blobs')\n"
        "def blobs(options):\n"
        "    x = np.random.default_rng(0).normal(size=(40, 2))\n"
        "    return x, (x[:, 0] > 0).astype(int)\n",
    )
    result = runner.invoke(app, ["datasets", "--plugin", "plug_blobs.py"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[1]: line for line in result.output.splitlines() if line.startswith("│")}
    assert "built-in" in rows["digits"]
    assert "vector" in rows["blobs"] and "two blobs" in rows["blobs"]
    assert "plug_blobs.py" in rows["blobs"]


# --------------------------------------------------------------------------- the API


def test_import_tuner_is_light() -> None:
    """A plug-in's `import tuner` and `tuner --help` import neither Ray, MLflow nor torch."""
    code = (
        "import sys, tuner; tuner.__all__; "
        "print(sorted(m for m in ('ray', 'mlflow', 'torch', 'optuna') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert proc.stdout.strip() == "[]"
    help_code = (
        "import sys; sys.argv = ['tuner', '--help']\n"
        "from tuner.__main__ import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('ray', 'mlflow', 'torch', 'optuna') if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", help_code], env=env, capture_output=True, text=True, check=True
    )
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_public_surface() -> None:
    for name in tuner.__all__:
        assert getattr(tuner, name) is not None, name
    assert tuner.register_model is register_model
    importlib.import_module("tuner.results.exporting")  # the module behind it
    assert callable(tuner.export)
    assert tuner.export.__doc__.startswith("Write the best configs of a study")
    assert issubclass(tuner.SpecError, tuner.TunerError)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        tuner.nothing  # noqa: B018


def test_run_refuses_what_is_not_a_spec() -> None:
    with pytest.raises(tuner.SpecError, match="spec must be a path, a mapping or a tuner.JobSpec"):
        tuner.run(42)  # type: ignore[arg-type]


def test_run_a_plugin_model_from_python_then_export(study_dir: Path, ray_local: None) -> None:
    write(study_dir, "plug_happy.py", TINY_MODEL.format(name="happy_tiny"))
    store = f"sqlite:///{study_dir / 'mlflow.db'}"
    result = tuner.run(
        base_spec(
            plugins=["plug_happy.py"],  # relative: to the working directory
            model="happy_tiny",
            search_space={"width": {"type": "int", "low": 4, "high": 32}, "lr": 0.01},
            tracking={"uri": store},
        ),
        show_progress=False,
    )
    trials = result.trials
    assert len(trials) == 2
    losses = trials["best_val_loss"].tolist()
    assert all(math.isfinite(loss) for loss in losses)
    assert losses == sorted(losses)  # best first
    assert result.spec.plugins == [str(study_dir / "plug_happy.py")]
    assert set(trials["status"]) == {"completed"}

    configs = tuner.export("plugged", top_k=2, out=study_dir / "best", tracking_uri=store)
    assert [c["source"]["rank"] for c in configs] == [1, 2]
    assert configs[0]["model"] == "happy_tiny"
    assert configs[0]["hyperparameters"]["width"] == trials["config.width"].iloc[0]
    assert configs[0]["metrics"]["val_loss"] == pytest.approx(losses[0])
    assert Path(configs[0]["path"]).parent == study_dir / "best"
