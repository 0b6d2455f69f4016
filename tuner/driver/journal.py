"""The study journal: every trial event the driver saw, one JSON line each, in the Ray run folder.

The recorder appends to it; a restored study replays it (the recorder, the overfit stopper and the
scheduler's rungs), and benchmarks read its timestamps. A line torn by a crash is skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

JOURNAL_FILE = "trials.jsonl"


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
