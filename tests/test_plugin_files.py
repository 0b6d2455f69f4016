"""Plug-in code goes where the study goes: its results folder and MLflow run keep the code it ran,
`tuner resume` imports that copy, `tuner export` writes it beside the config, and `tuner train`
and the logged model work from any folder without the original file.

One study (a plug-in model on digits) is run by `tuner run` in a subprocess, killed after its
first trial, and resumed in a fresh process after the original plug-in file was moved away and a
broken one written in its place; the tests after it export, train and load from that study.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from trainables.plugins import PluginCode
from tuner.cli import app
from tuner.driver.journal import JOURNAL_FILE, read_journal
from tuner.results import outcomes
from tuner.spec.plugin_files import code_paths, local_module_path
from tuner.tracking import schema

pytestmark = pytest.mark.integration  # whole studies, resumed and exported

runner = CliRunner()
NUM_TRIALS = 3

PLUGIN = textwrap.dedent(
    '''
    """A user's model, registered under a name a spec can use."""
    import math

    from torch import nn

    import tuner


    class TravelNet(nn.Module):
        def __init__(self, inputs: int, width: int, outputs: int):
            super().__init__()
            self.body = nn.Sequential(
                nn.Flatten(), nn.Linear(inputs, width), nn.ReLU(), nn.Linear(width, width),
                nn.ReLU(), nn.Linear(width, outputs),
            )

        def forward(self, x):
            return self.body(x)


    @tuner.register_model(
        "travel_net",
        layouts=("image", "vector", "sequence"),
        defaults={"width": 32},
        description="two hidden layers (a test plug-in)",
    )
    def travel_net(hp, sample_shape, layout, output_dim):
        return TravelNet(math.prod(sample_shape), int(hp["width"]), output_dim)
    '''
)
BROKEN = "raise RuntimeError('this is not the code the study ran')\n"


@dataclass
class Study:
    folder: Path  # the study's results folder
    tracking_uri: str
    plugin_text: str
    resume_output: str


def python(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def ended_trials(results: Path) -> int:
    journals = list(results.glob(f"*/{JOURNAL_FILE}"))
    return sum(e["event"] == "end" for e in read_journal(journals[0])) if journals else 0


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    """A plug-in study killed after its first trial, its plug-in file then moved away and
    replaced by a broken one, and resumed by `tuner resume` in a fresh process."""
    home = tmp_path_factory.mktemp("plugin-study")
    plugin = home / "travel_nets.py"
    plugin.write_text(PLUGIN)
    tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
    spec = home / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "travel",
                "plugins": ["travel_nets.py"],
                "model": "travel_net",
                "dataset": {"name": "digits"},
                # a few seconds a trial, so that the driver can be killed between trials
                "search_space": {"width": {"type": "categorical", "choices": [256, 384]}},
                "search": {"num_samples": NUM_TRIALS, "max_concurrent": 1, "seed": 1},
                "scheduler": {"name": "fifo", "max_epochs": 6},
                "tracking": {"uri": tracking_uri},
            }
        )
    )
    driver = subprocess.Popen(
        [sys.executable, "-m", "tuner", "run", str(spec)],
        cwd=home,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results = home / "tuner-results"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and driver.poll() is None and ended_trials(results) < 1:
        time.sleep(0.2)
    assert driver.poll() is None, "the study ended before it could be killed"
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
    driver.wait()

    plugin.rename(home / "moved_away.py")
    plugin.write_text(BROKEN)
    (folder,) = results.iterdir()
    resumed = python("-m", "tuner", "resume", str(folder), cwd=home)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    return Study(folder, tracking_uri, PLUGIN, resumed.stdout)


def test_resume_imports_the_code_the_study_recorded(study: Study) -> None:
    assert "Best: trial" in study.resume_output
    trials = pd.read_csv(study.folder / "trials.csv")
    assert sorted(trials["trial"]) == list(range(1, NUM_TRIALS + 1))
    assert set(trials["status"]) == {outcomes.COMPLETED}
    assert trials["best_val_acc"].min() > 0.8, trials["best_val_acc"].tolist()

    # the results folder keeps the code, and its spec names that copy
    assert (study.folder / "plugins" / "travel_nets.py").read_text() == study.plugin_text
    saved = yaml.safe_load((study.folder / "spec.yaml").read_text())
    assert saved["plugins"] == ["plugins/travel_nets.py"]
    best = yaml.safe_load((study.folder / "best-config.yaml").read_text())
    assert best["plugins"] == ["plugins/travel_nets.py"] and best["model"] == "travel_net"

    # the parent run records the file and its hash
    client = MlflowClient(study.tracking_uri)
    (parent,) = client.search_runs(
        [client.get_experiment_by_name("travel").experiment_id],
        filter_string=f"tags.`{schema.ROLE_TAG}` = '{schema.STUDY_ROLE}'",
    )
    assert parent.info.status == "FINISHED"
    (record,) = json.loads(parent.data.tags[schema.PLUGINS_TAG])
    assert record["module"] == "travel_nets"
    assert record["entry"].endswith("/travel_nets.py")
    assert record["sha256"] == hashlib.sha256(study.plugin_text.encode()).hexdigest()
    artifact = client.download_artifacts(parent.info.run_id, "plugins/travel_nets.py")
    assert Path(artifact).read_text() == study.plugin_text


def test_export_then_train_and_load_the_model_from_other_folders(
    study: Study, tmp_path: Path
) -> None:
    exported = tmp_path / "exported"
    result = runner.invoke(
        app,
        ["export", "travel", "--tracking-uri", study.tracking_uri, "--out", f"{exported}/b.yaml"],
    )
    assert result.exit_code == 0, result.output
    config = yaml.safe_load((exported / "b.yaml").read_text())
    assert config["plugins"] == ["plugins/travel_nets.py"]
    assert (exported / "plugins" / "travel_nets.py").read_text() == study.plugin_text

    elsewhere = tmp_path / "somewhere" / "else"
    shutil.copytree(exported, elsewhere)
    shutil.rmtree(exported)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    trained = python(
        "-m", "tuner", "train", str(elsewhere / "b.yaml"), "--tracking-uri", study.tracking_uri,
        cwd=cwd,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert f"Trained {config['epochs']} epochs on cpu" in trained.stdout
    val_acc = float(trained.stdout.split("val_acc ")[1].split(";")[0])
    assert abs(val_acc - config["metrics"]["val_acc"]) <= 0.01, (val_acc, config["metrics"])
    run_id = trained.stdout.split("MLflow run ")[1].split()[0]
    tags = MlflowClient(study.tracking_uri).get_run(run_id).data.tags
    (record,) = json.loads(tags[schema.PLUGINS_TAG])  # the train run names its code too
    assert record["sha256"] == hashlib.sha256(study.plugin_text.encode()).hexdigest()

    # the logged model carries the plug-in's code, and loads in a process that has no plug-in
    # (MLflow 3 saves a torch.export graph by default; with the pickle format the class would
    # be imported from the model's code/ folder)
    shutil.rmtree(elsewhere)
    load = textwrap.dedent(
        f"""
        import json, pathlib, mlflow.artifacts, mlflow.pytorch, torch
        from trainables.data import DataOptions, load_dataset
        mlflow.set_tracking_uri({study.tracking_uri!r})
        folder = pathlib.Path(mlflow.artifacts.download_artifacts("runs:/{run_id}/model"))
        model = mlflow.pytorch.load_model(str(folder))
        data = load_dataset(DataOptions("digits"))
        with torch.no_grad():
            predicted = model(torch.from_numpy(data.x_val)).argmax(1).numpy()
        code = (folder / "code" / "travel_nets.py").read_text()
        print(json.dumps({{"acc": float((predicted == data.y_val).mean()), "code": code}}))
        """
    )
    loaded = python("-c", load, cwd=cwd)
    assert loaded.returncode == 0, loaded.stderr
    answer = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert answer["code"] == study.plugin_text
    assert answer["acc"] == pytest.approx(val_acc, abs=1e-4)  # the run's final epoch


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "plugins"


@pytest.mark.usefixtures("ray_local")
def test_the_plugin_example_runs_end_to_end(study_dir: Path) -> None:
    """examples/plugins: the residual CNN tuned on the generated shapes, 2 trials of 2 epochs."""
    sets = {
        "search.num_samples": 2,
        "scheduler.max_epochs": 2,
        # FIFO: ASHA stops the trial that reaches epoch 1 second if it is the worse one, and
        # which arrives first is timing; this test is about the plug-ins' code, not ASHA
        "scheduler.name": "fifo",
        "tracking.uri": f"sqlite:///{study_dir / 'mlflow.db'}",
        "storage": str(study_dir / "results"),
    }
    args = [a for key, value in sets.items() for a in ("--set", f"{key}={value}")]
    result = runner.invoke(app, ["run", str(EXAMPLE / "spec.yaml"), *args])
    assert result.exit_code == 0, result.output
    (folder,) = (study_dir / "results").iterdir()
    trials = pd.read_csv(folder / "trials.csv")
    assert list(trials["status"]) == [outcomes.COMPLETED] * 2
    assert list(trials["epochs"]) == [2, 2]
    assert trials["best_val_acc"].max() > 0.45, trials["best_val_acc"].tolist()  # chance: 0.25
    assert {"config.width", "config.blocks", "config.dropout"} <= set(trials.columns)
    print(trials[["trial", "best_val_acc", "config.width", "config.blocks"]].to_dict("records"))
    kept = sorted(p.name for p in (folder / "plugins").iterdir())
    assert kept == ["shapes.py", "tiny_resnet.py"]


def test_which_module_plugins_travel_as_code(tmp_path: Path) -> None:
    """A local package ships (its top-level folder); an installed module or a file does not."""
    package = tmp_path / "mypkg" / "nets"
    package.mkdir(parents=True)
    for folder in (package.parent, package):
        (folder / "__init__.py").write_text("")
    (package / "resnet.py").write_text("")
    name = "mypkg.nets.resnet"
    local = PluginCode(name, name, str(package / "resnet.py"), None, "")
    assert local_module_path(local) == package.parent
    single = PluginCode("mynets", "mynets", str(tmp_path / "mynets.py"), None, "")
    assert local_module_path(single) == tmp_path / "mynets.py"
    assert local_module_path(PluginCode("yaml", "yaml", yaml.__file__, None, "")) is None
    file = PluginCode(str(tmp_path / "x.py"), "x", str(tmp_path / "x.py"), "", "")
    assert local_module_path(file) is None
    assert code_paths([local, file]) == [str(package.parent), str(tmp_path / "x.py")]
