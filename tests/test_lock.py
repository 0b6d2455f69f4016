"""requirements.lock: every package the venv holds is pinned there at the version installed, and
the lock satisfies every requirement pyproject.toml states (so it was made from this pyproject).
`make test-latest` leaves this file out: its venv is the newest versions, not the lock."""

from __future__ import annotations

import importlib.metadata
import re
import sysconfig
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
#: the installer itself, and the project the venv is for
NOT_LOCKED = {"pip", "tuner"}


def pins() -> dict[str, Version]:
    found = {}
    for line in LOCK.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line)
        if match:
            found[canonicalize_name(match[1])] = Version(match[2])
    return found


def release(version: str) -> Version:
    """The version without its local label: the lock's torch==2.13.0 is the +cpu wheel here."""
    return Version(Version(version).public)


def test_every_installed_package_is_locked_at_its_version() -> None:
    locked = pins()
    site = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}  # not Ray's vendored
    installed = {
        canonicalize_name(dist.metadata["Name"]): dist.version
        for dist in importlib.metadata.distributions(path=sorted(site))
    }
    unlocked = sorted(set(installed) - set(locked) - NOT_LOCKED)
    assert unlocked == [], f"installed but not in requirements.lock (run `make lock`): {unlocked}"
    drifted = {
        name: (version, str(locked[name]))
        for name, version in installed.items()
        if name in locked and release(version) != locked[name]
    }
    assert drifted == {}


def test_the_lock_satisfies_every_requirement_of_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    stated = project["dependencies"] + extras["dev"] + extras["cluster"]
    requirements = [Requirement(line) for line in stated]
    locked = pins()
    unmet = [
        f"{r} (locked: {locked.get(canonicalize_name(r.name))})"
        for r in requirements
        if (r.marker is None or r.marker.evaluate())
        and not r.specifier.contains(locked.get(canonicalize_name(r.name), "0.dev0"))
    ]
    assert unmet == [], "pyproject.toml changed since the lock was made: run `make lock`"


def test_the_lock_pins_exact_versions_with_no_machine_paths() -> None:
    text = LOCK.read_text()
    requirement_lines = [
        line for line in text.splitlines() if line and not line.lstrip().startswith("#")
    ]
    assert all("==" in line for line in requirement_lines), requirement_lines
    assert "--find-links" not in text and "--index-url" not in text and "file://" not in text
    assert "torch==2.13.0\n" in text  # no +cpu: on a PyPI-only machine the same release
