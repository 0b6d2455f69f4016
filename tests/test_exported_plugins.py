"""An export runs no code from the tracking store without the user's say-so.

Whoever can write to a shared MLflow server can replace a study's plug-in artifact and the hash
its tag records. These tests are that attacker: the plug-in they plant writes a marker file when
it is imported, and the marker must not appear unless `--trust-plugins` was given (which shows
the planted source first).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from tests.helpers import make_study
from tuner.cli import app
from tuner.errors import SpecError
from tuner.results.exported_plugins import fetch_plugins
from tuner.tracking import schema

runner = CliRunner()


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the runs' artifacts (./mlruns) stay in the test's folder


HARMLESS = "VALUE = 1  # the plug-in the study imported\n"


def planted(marker: Path) -> str:
    return f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def recorded_study(tmp_path: Path, entry: Path, text: str, tag_text: str | None = None) -> str:
    """A finished study whose parent run recorded the plug-in `entry` with the hash of
    `tag_text` (default: `text`) and holds `text` as its artifact; returns the tracking URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    parent = make_study(client, "shared", "val_loss:min", {1: 0.3, 2: 0.5})
    record = {"entry": str(entry), "module": entry.stem, "sha256": sha(tag_text or text)}
    client.set_tag(parent.info.run_id, schema.PLUGINS_TAG, json.dumps([record]))
    client.log_text(parent.info.run_id, text, f"plugins/{entry.stem}.py")
    return uri


def export(uri: str, out: Path, *flags: str):
    return runner.invoke(
        app, ["export", "shared", "--tracking-uri", uri, "--out", str(out), *flags]
    )


def test_a_replaced_plugin_artifact_runs_nothing_without_trust(tmp_path: Path) -> None:
    """The artifact and its recorded hash both replaced: refused (exit 2, nothing written or
    run); with --trust-plugins the planted source is shown, then used."""
    marker = tmp_path / "marker"
    evil = planted(marker)
    uri = recorded_study(tmp_path, tmp_path / "gone" / "nets.py", evil)
    out = tmp_path / "out"

    refused = export(uri, out)
    assert refused.exit_code == 2, refused.output
    assert "--trust-plugins" in refused.output and "nets.py" in refused.output
    assert not marker.exists()
    assert not out.exists()  # no config, no copy of the code

    trusted = export(uri, out, "--trust-plugins")
    assert trusted.exit_code == 0, trusted.output
    assert sha(evil) in trusted.stderr and evil.strip() in trusted.stderr
    assert marker.read_text() == "ran"  # imported, as the user chose
    (config,) = out.glob("*.yaml")
    assert yaml.safe_load(config.read_text())["plugins"] == ["plugins/nets.py"]
    assert (out / "plugins" / "nets.py").read_text() == evil


def test_the_users_own_file_is_taken_over_the_runs_copy(tmp_path: Path) -> None:
    """The artifact replaced, the tag not: the original file (same hash as recorded) is used
    and the artifact never read; once the original is gone even --trust-plugins refuses an
    artifact that does not hash to what the study recorded."""
    marker = tmp_path / "marker"
    original = tmp_path / "project" / "nets.py"
    original.parent.mkdir()
    original.write_text(HARMLESS)
    uri = recorded_study(tmp_path, original, planted(marker), tag_text=HARMLESS)
    out = tmp_path / "out"

    result = export(uri, out)
    assert result.exit_code == 0, result.output
    assert (out / "plugins" / "nets.py").read_text() == HARMLESS
    assert not marker.exists()

    again = export(uri, out)  # the earlier export's copy is the user's own file too
    original.unlink()
    assert again.exit_code == 0, again.output
    (out / "plugins" / "nets.py").unlink()
    tampered = export(uri, out, "--trust-plugins")
    assert tampered.exit_code == 2
    assert "has sha256" in tampered.output and "not the" in tampered.output
    assert not marker.exists()


@pytest.mark.parametrize(
    "record",
    [
        {"entry": "/x/../../escaped.py", "module": "../../escaped", "sha256": sha("x")},
        {"entry": "/x/a.py", "module": "a/../../../escaped", "sha256": sha("x")},
        {"entry": "os; import shutil", "module": "os; import shutil", "sha256": ""},
        {"entry": "/x/a.py", "module": "a", "sha256": 7},
    ],
    ids=["dotdot-module", "slash-module", "not-a-module-name", "not-a-hash"],
)
def test_a_tag_that_names_a_path_writes_nothing_anywhere(tmp_path: Path, record: dict) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    parent = make_study(client, "shared", "val_loss:min", {1: 0.3})
    client.set_tag(parent.info.run_id, schema.PLUGINS_TAG, json.dumps([record]))
    out = tmp_path / "deep" / "er" / "out"
    with pytest.raises(SpecError, match=r"tag tuner\.plugins is not what tuner writes"):
        fetch_plugins(client, client.get_run(parent.info.run_id), out, trust=True)
    assert not (tmp_path / "deep").exists()
