"""ReportsAhead: a trial's next epoch trains while its last report waits for the driver."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from trainables.reporting import ReportsAhead


class Driver:
    """Ray's side of `tune.report`: each report waits until the driver lets it go (`answer`),
    then returns, or raises SystemExit(0) as Ray does in a stopped trial."""

    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []
        self.checkpoints: list[Any] = []
        self.waiting = threading.Semaphore(0)  # released as each report arrives
        self._answers: list[str] = []
        self._answered = threading.Condition()
        self.in_flight = 0
        self.most_in_flight = 0

    def report(self, result: dict[str, Any], checkpoint: Any = None) -> None:
        with self._answered:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.results.append(result)
        self.checkpoints.append(checkpoint)
        self.waiting.release()
        with self._answered:
            self._answered.wait_for(lambda: self._answers)
            answer = self._answers.pop(0)
            self.in_flight -= 1
        if answer == "stop":
            raise SystemExit(0)
        if answer == "fail":
            raise RuntimeError("the driver is gone")

    def answer(self, what: str = "continue") -> None:
        assert self.waiting.acquire(timeout=10), "no report arrived"
        with self._answered:
            self._answers.append(what)
            self._answered.notify_all()


def test_report_returns_before_the_driver_answers_and_the_next_waits_for_it() -> None:
    driver = Driver()
    with ReportsAhead(driver.report) as reports:
        reports.report({"epoch": 1})  # returns at once: epoch 2 trains meanwhile
        second = threading.Thread(target=reports.report, args=({"epoch": 2},))
        second.start()
        second.join(0.2)
        assert second.is_alive(), "a second report went out before the first was answered"
        driver.answer()
        second.join(10)
        driver.answer()
    assert [r["epoch"] for r in driver.results] == [1, 2]
    assert driver.most_in_flight == 1 and reports.sent == 2


def test_a_stop_cancels_the_epoch_ahead_and_ends_the_trial_with_system_exit_0() -> None:
    driver = Driver()
    reports = ReportsAhead(driver.report)
    with pytest.raises(SystemExit) as stopped, reports:
        reports.report({"epoch": 1})
        driver.answer("stop")
        assert reports.cancel.wait(10), "the epoch ahead was not told to stop"
        reports.report({"epoch": 2})  # what the trial would report next: not sent
    assert stopped.value.code == 0
    assert [r["epoch"] for r in driver.results] == [1]


def test_a_failed_report_is_raised_in_the_trial_and_cancels_the_epoch_ahead() -> None:
    driver = Driver()
    reports = ReportsAhead(driver.report)
    with pytest.raises(RuntimeError, match="the driver is gone"), reports:
        reports.report({"epoch": 1})
        driver.answer("fail")
        assert reports.cancel.wait(10)
        raise ValueError("the epoch ahead, cancelled")  # the report's error wins
    assert reports.sent == 0


def test_leaving_waits_for_the_last_report_and_its_checkpoint_folder_goes(tmp_path: Path) -> None:
    driver = Driver()
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (folder / "state.pt").write_bytes(b"state")
    with ReportsAhead(driver.report) as reports:
        reports.report({"epoch": 1}, checkpoint="the checkpoint", folder=str(folder))
        answering = threading.Thread(target=driver.answer)
        answering.start()
    answering.join(10)
    assert reports.sent == 1 and driver.checkpoints == ["the checkpoint"]
    assert not folder.exists()
