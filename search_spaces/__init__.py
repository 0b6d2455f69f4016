"""The built-in search spaces, shipped as package data: `mlp.yaml`, `cnn.yaml`, `lstm.yaml`."""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent


def names() -> list[str]:
    """Names of the built-in spaces (the YAML files' stems)."""
    return sorted(p.stem for p in FOLDER.glob("*.yaml"))


def path_of(name: str) -> Path | None:
    """The file of a built-in space, or None when there is no space of that name."""
    path = FOLDER / f"{name}.yaml"
    return path if path.is_file() else None
