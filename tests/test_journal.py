"""tuner/driver/journal.py: the study journal, one JSON line per event, read back whole even when
a crash tore its last line."""

from __future__ import annotations

from pathlib import Path

from tuner.driver.journal import append_event, read_journal, results


def test_events_read_back_in_order_and_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    journal = tmp_path / "trials.jsonl"
    events = [
        {"event": "start", "trial_id": "a"},
        {"event": "result", "trial_id": "a", "row": {"epoch": 1, "val_loss": 0.5}},
        {"event": "end", "trial_id": "a", "status": "completed"},
    ]
    for event in events:
        append_event(journal, event)
    with open(journal, "a") as f:
        f.write('{"event": "result", "trial_id": "b", "ro')  # the driver died mid-write
    assert read_journal(journal) == events
    assert results(read_journal(journal)) == [events[1]]


def test_no_journal_is_no_events(tmp_path: Path) -> None:
    assert read_journal(None) == [] and read_journal(tmp_path / "absent.jsonl") == []
