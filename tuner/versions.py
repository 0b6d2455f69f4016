"""The versions tuner was tested with, and whether the installed ones are among them.

pyproject.toml states a window for each key package (the versions the suite passed on; tuner uses
private API of Ray and Optuna). A user on a cluster may bring their own build of torch or Ray:
then `tuner run` warns and `tuner doctor` says which package is outside its window. The windows
are read from tuner's installed metadata, so pyproject.toml stays the one place they are written.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

#: the packages whose version decides whether tuner works: the stack it drives
KEY_PACKAGES = ("ray", "torch", "optuna", "mlflow")


@dataclass(frozen=True)
class PackageVersion:
    """One key package: the version installed (None: missing) against its tested window."""

    name: str
    installed: str | None
    window: SpecifierSet

    @property
    def ok(self) -> bool:
        if self.installed is None:
            return False
        try:
            return self.window.contains(Version(self.installed), prereleases=True)
        except InvalidVersion:
            return False

    @property
    def tested(self) -> str:
        """The window as people write it: the floor first (`>=5.1,<5.2`)."""
        return ",".join(sorted(map(str, self.window), key=lambda part: not part.startswith(">")))

    def describe(self) -> str:
        return f"{self.name} {self.installed or 'not installed'} (tested: {self.tested})"


#: a distribution that provides a key package's module when the package itself is not installed
PROVIDED_BY = {"mlflow": "mlflow-skinny"}


def tuner_requirements() -> list[str]:
    """tuner's requirements: its installed metadata, or pyproject.toml beside the package when
    it runs from a checkout never installed (a bare GPU machine: benchmarks/gpu_check.sh)."""
    try:
        return importlib.metadata.requires("tuner") or []
    except importlib.metadata.PackageNotFoundError:
        import tomllib
        from pathlib import Path

        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        return tomllib.loads(pyproject.read_text())["project"]["dependencies"]


def tested_windows() -> dict[str, SpecifierSet]:
    """Each key package's window, from tuner's own requirements (extras left out)."""
    windows = {}
    for line in tuner_requirements():
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if name in KEY_PACKAGES and requirement.marker is None:
            windows[name] = requirement.specifier
    return windows


def installed_version(name: str) -> str | None:
    for dist in (name, PROVIDED_BY.get(name)):
        try:
            return importlib.metadata.version(dist) if dist else None
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def key_packages(installed: dict[str, str | None] | None = None) -> list[PackageVersion]:
    """Each key package against its window; `installed` overrides what is looked up."""
    windows = tested_windows()
    installed = installed or {}
    return [
        PackageVersion(
            name, installed[name] if name in installed else installed_version(name), windows[name]
        )
        for name in KEY_PACKAGES
    ]


def outside_window_warning(installed: dict[str, str | None] | None = None) -> str | None:
    """One line naming every key package outside its tested window; None when all are in."""
    outside = [package.describe() for package in key_packages(installed) if not package.ok]
    if not outside:
        return None
    return (
        f"warning: outside the versions tuner was tested with: {'; '.join(outside)}. "
        "It may still work; `tuner doctor` shows the rest."
    )
