"""tuner/results/diagnostics.py: one verdict per trial from its per-epoch curves, and the run
summary."""

from __future__ import annotations

import math
from typing import Any

import pytest

from tuner.results import diagnostics as d
from tuner.spec.job_spec import DiagnosticsSpec

Row = dict[str, Any]
NAN = float("nan")
INF = float("inf")


def curve(
    train: list[float],
    val: list[float],
    train_acc: list[float] | None = None,
    val_acc: list[float] | None = None,
) -> list[Row]:
    """Per-epoch results (epochs 1..n); accuracies only when given (classification)."""
    rows: list[Row] = []
    for i, (tl, vl) in enumerate(zip(train, val, strict=True)):
        row: Row = {"epoch": i + 1, "train_loss": tl, "val_loss": vl}
        if train_acc is not None:
            row["train_acc"] = train_acc[i]
        if val_acc is not None:
            row["val_acc"] = val_acc[i]
        rows.append(row)
    return rows


def fitted_accs(n: int) -> dict[str, list[float]]:
    """Accuracies of a classifier that fits its training data (train_acc >= 0.9 throughout)."""
    return {"train_acc": [0.95] * n, "val_acc": [0.9] * n}


# Val loss falls to 0.7 at epoch 3, then rises to 0.9 while train loss keeps falling.
OVERFIT_TRAIN = [1.0, 0.8, 0.6, 0.5, 0.4, 0.3]
OVERFIT_VAL = [1.0, 0.8, 0.7, 0.75, 0.8, 0.9]


def overfitting_curve() -> list[Row]:
    return curve(OVERFIT_TRAIN, OVERFIT_VAL, **fitted_accs(6))


# Same val curve as above, but only a 0.03 rise after the minimum (0.03 / 0.7 ~ 4.3%).
SMALL_RISE_VAL = [1.0, 0.8, 0.7, 0.71, 0.72, 0.73]


def small_rise_curve() -> list[Row]:
    return curve(OVERFIT_TRAIN, SMALL_RISE_VAL, **fitted_accs(6))


# --------------------------------------------------------------------------- overfitting


def test_textbook_overfitting() -> None:
    result = d.diagnose(overfitting_curve())
    assert result.diagnosis == d.OVERFITTING
    assert result.best_epoch == 3
    assert result.epochs == 6
    assert result.overfit_score == pytest.approx((0.9 - 0.7) / 0.7)
    assert result.train_loss_fell_after_best is True
    assert result.final_gap == pytest.approx(0.9 - 0.3)


def test_overfit_score_function_by_hand() -> None:
    assert d.overfit_score(overfitting_curve()) == pytest.approx((0.9 - 0.7) / 0.7)
    assert d.overfit_score(small_rise_curve()) == pytest.approx((0.73 - 0.7) / 0.7)


def test_overfit_score_zero_when_val_loss_never_rose() -> None:
    history = curve([1.0, 0.5, 0.25], [1.0, 0.6, 0.4])
    assert d.overfit_score(history) == 0.0
    assert d.overfit_score(history[:1]) == 0.0  # one value: nothing to rise from
    assert d.overfit_score([]) == 0.0


def test_overfit_score_skips_non_finite_val_losses() -> None:
    history = curve([1.0, 0.8, 0.6, 0.5], [0.5, NAN, 0.4, 0.5])
    assert d.overfit_score(history) == pytest.approx((0.5 - 0.4) / 0.4)


def test_val_rising_with_train_rising_is_not_overfitting() -> None:
    train = [1.0, 0.8, 0.6, 0.65, 0.7, 0.75]  # train loss also rises after epoch 3
    result = d.diagnose(curve(train, OVERFIT_VAL, **fitted_accs(6)))
    assert result.diagnosis != d.OVERFITTING
    assert result.diagnosis == d.GOOD_FIT
    assert result.best_epoch == 3
    assert result.overfit_score == 0.0
    assert result.train_loss_fell_after_best is False


def test_train_flat_after_best_is_not_overfitting() -> None:
    train = [1.0, 0.8, 0.6, 0.6, 0.6, 0.6]  # "kept falling" needs a strictly lower final loss
    result = d.diagnose(curve(train, OVERFIT_VAL, **fitted_accs(6)))
    assert result.diagnosis == d.GOOD_FIT
    assert result.overfit_score == 0.0
    assert result.train_loss_fell_after_best is False


def test_small_rise_below_threshold_is_good_fit() -> None:
    result = d.diagnose(small_rise_curve())
    assert result.diagnosis == d.GOOD_FIT
    assert result.best_epoch == 3
    assert result.train_loss_fell_after_best is True
    assert result.overfit_score == pytest.approx(0.03 / 0.7)
    assert result.overfit_score < DiagnosticsSpec().overfit_rise


def test_overfit_threshold_comes_from_the_spec() -> None:
    history = small_rise_curve()
    assert d.diagnose(history, DiagnosticsSpec(overfit_rise=0.01)).diagnosis == d.OVERFITTING
    assert d.diagnose(history, DiagnosticsSpec(overfit_rise=0.05)).diagnosis == d.GOOD_FIT
    # the textbook curve (score ~0.29) is no longer overfitting with a 50% threshold
    assert d.diagnose(overfitting_curve(), DiagnosticsSpec(overfit_rise=0.5)).diagnosis == (
        d.GOOD_FIT
    )


def test_overfit_rise_exactly_at_threshold_is_overfitting() -> None:
    # min 0.5, final 0.625: score exactly 0.25 (binary-exact values)
    history = curve([1.0, 0.5, 0.25, 0.125], [1.0, 0.5, 0.5625, 0.625], **fitted_accs(4))
    result = d.diagnose(history, DiagnosticsSpec(overfit_rise=0.25))
    assert result.overfit_score == 0.25
    assert result.diagnosis == d.OVERFITTING


def test_best_epoch_is_earliest_on_ties() -> None:
    history = curve([1.0, 0.8, 0.6, 0.4, 0.2], [1.0, 0.5, 0.5, 0.6, 0.7], **fitted_accs(5))
    result = d.diagnose(history)
    assert result.best_epoch == 2
    assert result.overfit_score == pytest.approx((0.7 - 0.5) / 0.5)
    assert result.diagnosis == d.OVERFITTING


# --------------------------------------------------------------------------- underfitting


def test_underfitting_classification_uses_train_acc_at_best_epoch() -> None:
    # best val loss at epoch 3, where train_acc is 0.85; the final epoch's 0.95 does not count
    history = curve(
        [1.0, 0.8, 0.7, 0.6],
        [1.0, 0.8, 0.7, 0.72],
        train_acc=[0.5, 0.7, 0.85, 0.95],
        val_acc=[0.5, 0.6, 0.8, 0.8],
    )
    result = d.diagnose(history)
    assert result.best_epoch == 3
    assert result.overfit_score == pytest.approx(0.02 / 0.7)
    assert result.diagnosis == d.UNDERFITTING


def test_underfitting_classification_custom_threshold() -> None:
    history = curve(
        [1.0, 0.8, 0.7, 0.6],
        [1.0, 0.8, 0.7, 0.72],
        train_acc=[0.5, 0.7, 0.85, 0.95],
        val_acc=[0.5, 0.6, 0.8, 0.8],
    )
    assert d.diagnose(history, DiagnosticsSpec(underfit_train_acc=0.8)).diagnosis == d.GOOD_FIT
    assert d.diagnose(history, DiagnosticsSpec(underfit_train_acc=0.85)).diagnosis == d.GOOD_FIT
    assert d.diagnose(history, DiagnosticsSpec(underfit_train_acc=0.86)).diagnosis == (
        d.UNDERFITTING
    )


def test_classification_with_high_train_acc_is_good_fit() -> None:
    history = curve([1.0, 0.5, 0.3, 0.2], [1.0, 0.6, 0.4, 0.35], **fitted_accs(4))
    result = d.diagnose(history)
    assert result.diagnosis == d.GOOD_FIT
    assert result.best_epoch == 4
    assert result.overfit_score == 0.0


def test_underfitting_regression_uses_loss_ratio() -> None:
    # no accuracy keys: train loss at best (0.7) is above 0.5 x first (1.0)
    history = curve([1.0, 0.9, 0.8, 0.7], [1.1, 1.0, 0.9, 0.85])
    result = d.diagnose(history)
    assert result.best_epoch == 4
    assert result.diagnosis == d.UNDERFITTING
    assert d.diagnose(history, DiagnosticsSpec(underfit_loss_ratio=0.75)).diagnosis == d.GOOD_FIT
    assert d.diagnose(history, DiagnosticsSpec(underfit_loss_ratio=0.7)).diagnosis == d.GOOD_FIT
    assert d.diagnose(history, DiagnosticsSpec(underfit_loss_ratio=0.69)).diagnosis == (
        d.UNDERFITTING
    )


def test_regression_good_fit() -> None:
    history = curve([1.0, 0.5, 0.3, 0.2], [1.0, 0.6, 0.4, 0.35])
    result = d.diagnose(history)
    assert result.diagnosis == d.GOOD_FIT
    assert result.best_epoch == 4
    assert result.overfit_score == 0.0
    assert result.final_gap == pytest.approx(0.35 - 0.2)


# --------------------------------------------------------------------------- diverged


@pytest.mark.parametrize(
    ("train", "val"),
    [
        ([1.0, 0.8, NAN, 0.5], [1.0, 0.8, 0.7, 0.6]),  # NaN train loss
        ([1.0, 0.8, INF, 0.5], [1.0, 0.8, 0.7, 0.6]),  # inf train loss
        ([1.0, 0.8, 0.7, 0.5], [1.0, 0.8, NAN, 0.6]),  # NaN val loss
        ([1.0, 0.8, 0.7, 0.5], [1.0, 0.8, 0.7, INF]),  # inf val loss
        ([1.0, 0.8, 0.7, 0.5], [1.0, 0.8, 0.7, -INF]),  # -inf val loss
    ],
)
def test_non_finite_loss_is_diverged(train: list[float], val: list[float]) -> None:
    history = curve(train, val, **fitted_accs(4))
    assert d.is_diverged(history, 3.0)
    assert d.diagnose(history).diagnosis == d.DIVERGED


def test_diverged_flag_is_diverged() -> None:
    history = curve([1.0, 0.5, 0.3, 0.2], [1.0, 0.6, 0.4, 0.35], **fitted_accs(4))
    history[-1]["diverged"] = 1
    assert d.is_diverged(history, 3.0)
    result = d.diagnose(history)
    assert result.diagnosis == d.DIVERGED
    assert result.best_epoch == 4  # the numbers are still reported


def test_diverged_flag_zero_is_not_diverged() -> None:
    history = curve([1.0, 0.5, 0.3, 0.2], [1.0, 0.6, 0.4, 0.35], **fitted_accs(4))
    for row in history:
        row["diverged"] = 0
    assert not d.is_diverged(history, 3.0)
    assert d.diagnose(history).diagnosis == d.GOOD_FIT


def test_final_val_loss_above_diverge_factor_times_first() -> None:
    # train loss keeps falling, val loss ends at 3.5 > 3 x 1.0: diverged beats overfitting
    history = curve([1.0, 0.9, 0.8, 0.7], [1.0, 0.9, 2.0, 3.5], **fitted_accs(4))
    assert d.is_diverged(history, 3.0)
    result = d.diagnose(history)
    assert result.diagnosis == d.DIVERGED
    assert result.best_epoch == 2
    assert result.overfit_score == pytest.approx((3.5 - 0.9) / 0.9)
    # a larger factor from the spec: only overfitting
    assert not d.is_diverged(history, 4.0)
    assert d.diagnose(history, DiagnosticsSpec(diverge_factor=4.0)).diagnosis == d.OVERFITTING


def test_final_val_loss_exactly_at_diverge_factor_is_not_diverged() -> None:
    history = curve([1.0, 0.9, 0.8, 0.7], [1.0, 0.9, 2.0, 3.0], **fitted_accs(4))
    assert not d.is_diverged(history, 3.0)
    assert d.diagnose(history).diagnosis == d.OVERFITTING


def test_empty_history_is_diverged() -> None:
    result = d.diagnose([])
    assert result.diagnosis == d.DIVERGED
    assert result.best_epoch is None
    assert result.epochs == 0
    assert result.overfit_score == 0.0
    assert result.train_loss_fell_after_best is False
    assert result.final_gap is None


def test_no_finite_val_loss_is_diverged() -> None:
    history = [{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5}]
    result = d.diagnose(history)
    assert result.diagnosis == d.DIVERGED
    assert result.best_epoch is None
    assert result.final_gap is None


# --------------------------------------------------------------------------- too short


def test_fewer_than_default_min_epochs_is_too_short() -> None:
    history = curve([1.0, 0.5], [1.0, 0.6], **fitted_accs(2))
    result = d.diagnose(history)
    assert result.diagnosis == d.TOO_SHORT
    assert result.epochs == 2
    assert result.best_epoch == 2
    assert d.diagnose(history[:1]).diagnosis == d.TOO_SHORT


def test_exactly_min_epochs_is_judged() -> None:
    history = curve([1.0, 0.5, 0.3], [1.0, 0.6, 0.4], **fitted_accs(3))
    assert d.diagnose(history).diagnosis == d.GOOD_FIT


def test_custom_min_epochs() -> None:
    history = curve([1.0, 0.5, 0.3, 0.2], [1.0, 0.6, 0.4, 0.35], **fitted_accs(4))
    assert d.diagnose(history, DiagnosticsSpec(min_epochs=5)).diagnosis == d.TOO_SHORT
    assert d.diagnose(history, DiagnosticsSpec(min_epochs=4)).diagnosis == d.GOOD_FIT
    one = history[:1]
    assert d.diagnose(one, DiagnosticsSpec(min_epochs=1)).diagnosis == d.GOOD_FIT


# --------------------------------------------------------------------------- precedence


def test_diverged_beats_too_short() -> None:
    history = curve([1.0, NAN], [1.0, 0.8], **fitted_accs(2))
    assert d.diagnose(history).diagnosis == d.DIVERGED
    flagged = curve([1.0, 0.5], [1.0, 0.6], **fitted_accs(2))
    flagged[-1]["diverged"] = 1
    assert d.diagnose(flagged).diagnosis == d.DIVERGED


def test_too_short_beats_overfitting() -> None:
    # two epochs: val loss up 25% while train loss fell, but the curve is too short to judge
    history = curve([1.0, 0.5], [0.5, 0.625], **fitted_accs(2))
    result = d.diagnose(history)
    assert result.overfit_score == 0.25
    assert result.train_loss_fell_after_best is True
    assert result.diagnosis == d.TOO_SHORT
    # the six-epoch textbook curve with a higher min_epochs
    assert d.diagnose(overfitting_curve(), DiagnosticsSpec(min_epochs=7)).diagnosis == d.TOO_SHORT


def test_overfitting_beats_underfitting() -> None:
    accs = {"train_acc": [0.5] * 6, "val_acc": [0.4] * 6}  # train_acc far below 0.9
    history = curve(OVERFIT_TRAIN, OVERFIT_VAL, **accs)
    assert d.diagnose(history).diagnosis == d.OVERFITTING
    assert d.diagnose(history, DiagnosticsSpec(overfit_rise=0.5)).diagnosis == d.UNDERFITTING


# --------------------------------------------------------------------------- gaps


def test_loss_gaps_per_epoch() -> None:
    history: list[Row] = [
        {"epoch": 1, "train_loss": 1.0, "val_loss": 1.5},
        {"epoch": 2, "train_loss": 0.5},  # val loss missing
        {"epoch": 3, "train_loss": NAN, "val_loss": 0.5},  # train loss not finite
        {"epoch": 4, "train_loss": 0.25, "val_loss": INF},  # val loss not finite
        {"epoch": 5, "val_loss": 0.25},  # train loss missing
        {"epoch": 6, "train_loss": 0.75, "val_loss": 0.5},  # negative gap
    ]
    assert d.loss_gaps(history) == [0.5, None, None, None, None, -0.25]
    assert d.loss_gaps([]) == []


def test_accuracy_gaps_per_epoch() -> None:
    history: list[Row] = [
        {"epoch": 1, "train_acc": 0.75, "val_acc": 0.5},
        {"epoch": 2, "train_acc": 0.5, "val_acc": 0.75},  # val better than train: negative
        {"epoch": 3, "train_acc": NAN, "val_acc": 0.5},
        {"epoch": 4, "train_acc": 0.875},  # val acc missing
        {"epoch": 5, "train_loss": 1.0, "val_loss": 1.0},  # regression: no accuracies
    ]
    assert d.accuracy_gaps(history) == [0.25, -0.25, None, None, None]


def test_final_gap_is_last_epochs_loss_gap() -> None:
    history = curve([1.0, 0.5, 0.25], [1.0, 0.75, 0.5], **fitted_accs(3))
    result = d.diagnose(history)
    assert result.final_gap == 0.25
    assert result.final_gap == d.loss_gaps(history)[-1]


def test_final_gap_none_when_last_train_loss_missing() -> None:
    history = curve([1.0, 0.5, 0.25], [1.0, 0.75, 0.5], **fitted_accs(3))
    del history[-1]["train_loss"]
    result = d.diagnose(history)
    assert result.final_gap is None
    assert result.train_loss_fell_after_best is False
    assert result.overfit_score == 0.0


# --------------------------------------------------------------------------- summary metrics


def classification_history() -> list[Row]:
    """Val loss best at epoch 3 (0.5); val acc best at epoch 4 (0.875)."""
    return curve(
        train=[1.0, 0.75, 0.5, 0.25, 0.125],
        val=[1.25, 0.75, 0.5, 0.625, 0.75],
        train_acc=[0.5, 0.625, 0.75, 0.875, 0.9375],
        val_acc=[0.5, 0.625, 0.75, 0.875, 0.8125],
    )


def test_summary_metrics_val_loss_min() -> None:
    history = classification_history()
    summary = d.summary_metrics(history, "val_loss", "min")
    assert summary == {
        "best_epoch": 3.0,
        "best_val_loss": 0.5,
        "best_val_acc": 0.75,
        "best_train_loss": 0.5,
        "best_train_acc": 0.75,
        "train_loss_at_best": 0.5,
        "final_train_loss": 0.125,
        "final_val_loss": 0.75,
        "final_train_acc": 0.9375,
        "final_val_acc": 0.8125,
    }
    assert summary["best_val_loss"] == min(r["val_loss"] for r in history)
    assert all(isinstance(v, float) for v in summary.values())


def test_summary_metrics_val_acc_max() -> None:
    history = classification_history()
    summary = d.summary_metrics(history, "val_acc", "max")
    best = max(history, key=lambda r: r["val_acc"])
    assert summary["best_epoch"] == float(best["epoch"]) == 4.0
    assert summary["best_val_acc"] == 0.875
    assert summary["best_val_loss"] == 0.625  # val loss at that epoch, not its minimum
    assert summary["train_loss_at_best"] == 0.25
    assert summary["best_train_acc"] == 0.875
    assert summary["final_val_acc"] == 0.8125


def test_summary_metrics_includes_generalization_gap_at_best() -> None:
    history = classification_history()
    for row in history:
        row["generalization_gap"] = row["val_loss"] - row["train_loss"]
    summary = d.summary_metrics(history, "val_loss", "min")
    assert summary["best_generalization_gap"] == 0.0


def test_summary_metrics_skips_non_finite_values() -> None:
    history = classification_history()
    history[1]["val_loss"] = NAN  # would not be best anyway
    history[3]["val_acc"] = INF  # must not win a "max" search
    history[-1]["val_acc"] = NAN
    history[-1]["train_loss"] = INF

    by_loss = d.summary_metrics(history, "val_loss", "min")
    assert by_loss["best_epoch"] == 3.0
    assert by_loss["best_val_loss"] == 0.5
    assert "final_val_acc" not in by_loss
    assert "final_train_loss" not in by_loss
    assert by_loss["final_val_loss"] == 0.75
    assert by_loss["final_train_acc"] == 0.9375

    by_acc = d.summary_metrics(history, "val_acc", "max")
    assert by_acc["best_epoch"] == 3.0  # epoch 4's inf and epoch 5's NaN are skipped
    assert by_acc["best_val_acc"] == 0.75

    history[2]["val_loss"] = NAN  # the best epoch's own val loss is not finite
    by_acc = d.summary_metrics(history, "val_acc", "max")
    assert by_acc["best_epoch"] == 3.0
    assert "best_val_loss" not in by_acc
    assert by_acc["train_loss_at_best"] == 0.5


def test_summary_metrics_regression_has_no_accuracy_keys() -> None:
    history = curve([1.0, 0.5, 0.25], [1.0, 0.5, 0.75])
    summary = d.summary_metrics(history, "val_loss", "min")
    assert summary == {
        "best_epoch": 2.0,
        "best_val_loss": 0.5,
        "best_train_loss": 0.5,
        "train_loss_at_best": 0.5,
        "final_train_loss": 0.25,
        "final_val_loss": 0.75,
    }


def test_summary_metrics_empty_or_missing_metric() -> None:
    assert d.summary_metrics([], "val_loss", "min") == {}
    history = curve([1.0, 0.5], [1.0, 0.75])
    summary = d.summary_metrics(history, "val_acc", "max")  # metric never reported
    assert "best_epoch" not in summary
    assert summary == {"final_train_loss": 0.5, "final_val_loss": 0.75}


# --------------------------------------------------------------------------- verdicts


def _flagged() -> list[Row]:
    rows = curve([1.0, 0.5, 0.3], [1.0, 0.6, 0.4], **fitted_accs(3))
    rows[1]["diverged"] = 1
    return rows


ALL_CURVES: dict[str, list[Row]] = {
    "overfitting": overfitting_curve(),
    "small_rise": small_rise_curve(),
    "train_rising": curve([1.0, 0.8, 0.6, 0.65, 0.7, 0.75], OVERFIT_VAL, **fitted_accs(6)),
    "underfit_cls": curve([1.0, 0.8, 0.7], [1.0, 0.8, 0.7], train_acc=[0.5, 0.6, 0.7]),
    "underfit_reg": curve([1.0, 0.9, 0.8, 0.7], [1.1, 1.0, 0.9, 0.85]),
    "good_reg": curve([1.0, 0.5, 0.3, 0.2], [1.0, 0.6, 0.4, 0.35]),
    "nan": curve([1.0, NAN, 0.5], [1.0, 0.8, 0.7]),
    "flagged": _flagged(),
    "blown_up": curve([1.0, 0.9, 0.8], [1.0, 2.0, 5.0]),
    "short": curve([1.0], [1.0]),
    "empty": [],
}


@pytest.mark.parametrize("name", list(ALL_CURVES))
def test_every_diagnosis_is_known_and_round_trips(name: str) -> None:
    result = d.diagnose(ALL_CURVES[name])
    assert result.diagnosis in d.DIAGNOSES
    as_dict = result.as_dict()
    assert set(as_dict) == {
        "diagnosis",
        "best_epoch",
        "epochs",
        "overfit_score",
        "train_loss_fell_after_best",
        "final_gap",
    }
    assert d.Diagnosis(**as_dict) == result
    assert math.isfinite(result.overfit_score)
    assert result.overfit_score >= 0.0


def test_curve_set_covers_every_diagnosis() -> None:
    seen = {d.diagnose(history).diagnosis for history in ALL_CURVES.values()}
    assert seen == set(d.DIAGNOSES)


def test_as_dict_values() -> None:
    result = d.diagnose(overfitting_curve())
    as_dict = result.as_dict()
    assert as_dict["diagnosis"] == "overfitting"
    assert as_dict["best_epoch"] == 3
    assert as_dict["epochs"] == 6
    assert as_dict["overfit_score"] == pytest.approx(0.2 / 0.7)
    assert as_dict["train_loss_fell_after_best"] is True
    assert as_dict["final_gap"] == pytest.approx(0.6)


def test_diagnosis_is_frozen() -> None:
    result = d.diagnose(overfitting_curve())
    with pytest.raises(AttributeError):
        result.diagnosis = d.GOOD_FIT  # type: ignore[misc]
