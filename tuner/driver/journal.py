"""The study journal: every trial event the driver saw, one JSON line each, in the Ray run folder.

The recorder appends to it; a restored study replays it (the recorder, the overfit stopper and the
scheduler's rungs), and benchmarks read its timestamps. A line torn by a crash is skipped.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

JOURNAL_FILE = "trials.jsonl"
_restoring_into: Path | None = None  # set by `restoring_into` while Ray unpickles a study


def append_event(path: Path, event: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(event, default=str) + "\n")


def read_journal(path: Path | None) -> list[dict[str, Any]]:
    """The recorder's events, oldest first; a torn last line (a crash mid-write) is skipped."""
    if path is None or not Path(path).is_file():
        return []
    events = []
    for line in Path(path).read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def results(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-epoch result events."""
    return [e for e in events if e.get("event") == "result"]


# --------------------------------------------------------------------------- a moved study folder


@contextlib.contextmanager
def restoring_into(folder: Path) -> Iterator[None]:
    """While Ray restores a study (`tuner resume`), the objects it unpickles (recorder, stopper,
    scheduler, tracking, mirror) find their files in `folder`, wherever the study started: a
    remote study's working folder is downloaded afresh, perhaps by another machine or directory."""
    global _restoring_into
    _restoring_into = folder
    try:
        yield
    finally:
        _restoring_into = None


def relocated_folder(folder: Path | None) -> Path | None:
    """The study folder pickled when the study started, as it is now (see `restoring_into`)."""
    return folder if folder is None or _restoring_into is None else _restoring_into


def relocated(path: Path | None) -> Path | None:
    """A study file's path pickled when the study started, as it is now."""
    return path if path is None or _restoring_into is None else _restoring_into / Path(path).name
