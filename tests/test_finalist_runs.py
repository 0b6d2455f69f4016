"""tuner/driver/finalist_runs.py: the best trials re-run with new seeds as Ray Tune trials: one
re-run per finalist and seed, each told its tuned config, seed and best epoch; the rows sorted by
trial and seed with the tuned trial's MLflow run, the curves by re-run; an earlier execution's
finalists folder replaced; and no Ray at all when no trial finished with an objective."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from ray import tune

from tests.helpers import tiny_spec
from trainables import metrics as m
from trainables.trainable import FINALIST
from tuner.driver import finalist_runs
from tuner.driver.finalist_runs import FINALISTS_FOLDER, run_finalists

NAN = float("nan")
SPEC = tiny_spec(selection={"finalists": 2, "seeds": 2}, search={"seed": 10})


def trials(*scores: float) -> pd.DataFrame:
    """A ranked trials table: trial n has id t<n>, its score at best epoch n + 1."""
    return pd.DataFrame(
        {
            "trial": list(range(1, len(scores) + 1)),
            "trial_id": [f"t{n}" for n in range(1, len(scores) + 1)],
            "best_val_loss": list(scores),
            "best_epoch": [n + 1 for n in range(1, len(scores) + 1)],
        }
    )


CONFIGS = {f"t{n}": {"x": n / 10} for n in range(1, 5)}


def test_without_a_finished_trial_nothing_is_rerun_and_ray_is_not_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    def no_tuner(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a Tuner was made with nothing to re-run")

    monkeypatch.setattr(finalist_runs.tune, "Tuner", no_tuner)
    runs = run_finalists(SPEC, None, str(tmp_path), trials(NAN, NAN), CONFIGS, {}, announce=True)
    assert runs.curves == {} and runs.finalists.reruns.empty and runs.finalists.table.empty
    assert runs.finalists.note.startswith("selection.finalists: 2 asked for, but 0 trials")
    assert runs.finalists.winner is None
    assert capsys.readouterr().out == ""  # nothing announced


def rerun(config: dict[str, Any]) -> None:
    """A re-run that reports, each epoch, a score made of its config and its seed."""
    plan = config[FINALIST]
    for epoch in range(1, plan["epochs"] + 1):
        score = plan["hparams"]["x"] + plan["seed"] / 100 + 1 / epoch
        tune.report({m.EPOCH: epoch, m.VAL_LOSS: score, m.TRAIN_LOSS: score})


def test_the_best_trials_are_rerun_once_per_seed_to_their_best_epoch(
    ray_local, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    stale = tmp_path / FINALISTS_FOLDER / "from-an-earlier-execution.txt"
    stale.parent.mkdir()
    stale.write_text("old")
    ranked = trials(0.2, 0.3, NAN)  # trial 3 never got a finite loss
    run_ids = {"t1": "run-1", "t2": "run-2"}
    runs = run_finalists(SPEC, rerun, str(tmp_path), ranked, CONFIGS, run_ids, announce=True)

    assert "Finalists: 2 configs trained again, 2 seeds each" in capsys.readouterr().out
    assert not stale.exists() and (tmp_path / FINALISTS_FOLDER).is_dir()
    reruns = runs.finalists.reruns
    assert list(zip(reruns["trial"], reruns["seed"], strict=True)) == [
        (1, 11),
        (1, 12),
        (2, 11),
        (2, 12),
    ]  # the seeds after search.seed, the same for each finalist
    assert list(reruns["run_id"]) == ["run-1", "run-1", "run-2", "run-2"]
    assert list(reruns["epochs"]) == [2, 2, 3, 3] and list(reruns["tuned"]) == [0.2, 0.2, 0.3, 0.3]
    assert (reruns["status"] == "completed").all()
    expected = [0.1 + 0.11 + 1 / 2, 0.1 + 0.12 + 1 / 2, 0.2 + 0.11 + 1 / 3, 0.2 + 0.12 + 1 / 3]
    assert list(reruns["score"]) == pytest.approx(expected)  # scored at the last epoch
    # trial 2's re-runs, a longer training, beat trial 1's: the re-runs' mean decides the winner
    assert runs.finalists.note is None and runs.finalists.winner["trial"] == 2
    assert set(runs.curves) == set(reruns["rerun_id"])
    lengths = {r["rerun_id"]: len(runs.curves[r["rerun_id"]]) for _, r in reruns.iterrows()}
    assert sorted(lengths.values()) == [2, 2, 3, 3]
