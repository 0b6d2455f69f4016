"""tuner/versions.py: the tested windows are pyproject's, they hold the locked versions, and an
installed version outside them is named (in one line, by `tuner run`)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version
from typer.testing import CliRunner

import tuner.versions
from tuner.cli import app
from tuner.versions import KEY_PACKAGES, key_packages, outside_window_warning

ROOT = Path(__file__).resolve().parent.parent


def locked(name: str) -> Version:
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.startswith(f"{name}=="):
            return Version(line.split("==")[1].split()[0])
    raise AssertionError(f"requirements.lock pins no {name}")


def test_the_windows_are_the_ones_pyproject_states() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    stated = {Requirement(r).name: Requirement(r).specifier for r in project["dependencies"]}
    assert tuner.versions.tested_windows() == {name: stated[name] for name in KEY_PACKAGES}


@pytest.mark.parametrize("name", KEY_PACKAGES)
def test_each_window_holds_the_locked_version(name: str) -> None:
    assert locked(name) in tuner.versions.tested_windows()[name]


@pytest.mark.parametrize(
    ("name", "untested"),
    [
        ("optuna", "5.2.0"),  # tuner subclasses Optuna's private storage cache
        ("mlflow", "3.18.0"),
        ("ray", "2.61.0"),  # tuner/internals/ray_internals.py
        ("torch", "2.8.0"),  # trainables/accel.py sets TF32 through fp32_precision (2.9+)
        ("torch", "2.14.0"),
    ],
)
def test_each_window_stops_before_what_was_not_tested(name: str, untested: str) -> None:
    assert Version(untested) not in tuner.versions.tested_windows()[name]


def test_the_installed_key_packages_are_in_their_windows() -> None:
    assert [(p.name, p.ok) for p in key_packages()] == [(name, True) for name in KEY_PACKAGES]
    assert outside_window_warning() is None


def test_a_cluster_build_is_in_and_an_untested_minor_is_out() -> None:
    found = {
        p.name: p
        for p in key_packages({"torch": "2.11.0+cu130", "optuna": "5.2.0", "mlflow": None})
    }
    assert found["torch"].ok  # a local label (the CUDA build) is the same release
    assert not found["optuna"].ok and not found["mlflow"].ok
    assert found["optuna"].tested == ">=5.1,<5.2"
    warning = outside_window_warning({"optuna": "5.2.0", "mlflow": None})
    assert warning.count("\n") == 0
    assert "optuna 5.2.0 (tested: >=5.1,<5.2)" in warning
    assert "mlflow not installed" in warning
    assert "ray" not in warning and "torch" not in warning


def test_tuner_run_warns_in_one_line_and_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tuner.versions.installed_version
    monkeypatch.setattr(
        tuner.versions,
        "installed_version",
        lambda name: "5.2.0" if name == "optuna" else real(name),
    )
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: s\nmodel: mlp\ndataset: {name: digits}\nsearch: {num_samples: 0}\n")
    result = CliRunner().invoke(app, ["run", str(spec)])
    assert result.exit_code == 2  # the spec's own error still decides, after the warning
    lines = result.stderr.splitlines()
    assert lines[0].startswith("warning: outside the versions tuner was tested with: optuna")
    assert "search.num_samples" in result.stderr


def test_a_checkout_never_installed_reads_its_windows_from_pyproject(monkeypatch) -> None:
    def not_installed(name: str):
        raise tuner.versions.importlib.metadata.PackageNotFoundError(name)

    expected = tuner.versions.tested_windows()
    monkeypatch.setattr(tuner.versions.importlib.metadata, "requires", not_installed)
    assert tuner.versions.tested_windows() == expected


def test_mlflow_skinny_counts_as_mlflow(monkeypatch) -> None:
    versions = {"mlflow-skinny": "3.17.2"}

    def version(name: str) -> str:
        if name not in versions:
            raise tuner.versions.importlib.metadata.PackageNotFoundError(name)
        return versions[name]

    monkeypatch.setattr(tuner.versions.importlib.metadata, "version", version)
    assert tuner.versions.installed_version("mlflow") == "3.17.2"
    assert tuner.versions.installed_version("optuna") is None
