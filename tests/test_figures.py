"""tuner/results/figures.py: learning curves drawn in a helper process, which Ctrl-C at the
terminal does not reach (the driver handles it and ends the helper)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.helpers import ctrl_c_reaches_it
from tuner.results.figures import FigureProcess, learning_curve_figure

HISTORY = [
    {"epoch": 1, "train_loss": 0.9, "val_loss": 1.0, "train_acc": 0.6, "val_acc": 0.55},
    {"epoch": 2, "train_loss": 0.5, "val_loss": 0.7, "train_acc": 0.8, "val_acc": 0.7},
    {"epoch": 3, "train_loss": 0.3, "val_loss": 0.8, "train_acc": 0.9, "val_acc": 0.68},
]


def test_the_figure_has_a_loss_and_an_accuracy_panel_with_the_best_epoch_marked() -> None:
    fig = learning_curve_figure(HISTORY, "trial 1")
    loss, accuracy = fig.axes
    assert [ax.get_ylabel() for ax in (loss, accuracy)] == ["loss", "accuracy"]
    best = [line for line in loss.get_lines() if line.get_label() == "best epoch"]
    assert list(best[0].get_xdata()) == [2, 2]  # val_loss is lowest at epoch 2
    losses_only = [{k: v for k, v in r.items() if not k.endswith("acc")} for r in HISTORY]
    (regression,) = learning_curve_figure(losses_only, "regression").axes
    assert regression.get_ylabel() == "loss"


def test_the_helper_writes_a_png_and_ends_when_closed(tmp_path: Path) -> None:
    figures = FigureProcess()
    figures.save_learning_curve(HISTORY, "trial 1", tmp_path / "curve.png")
    helper = figures._helper
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    figures.close()
    assert helper.poll() is not None


def test_ctrl_c_at_the_terminal_does_not_reach_the_helper(tmp_path: Path) -> None:
    """SIGINT to the driver's whole process group, as the terminal sends it: the driver's own
    handling is all that is printed, no KeyboardInterrupt traceback from the helper."""
    driver = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from tuner.results.figures import FigureProcess
        figures = FigureProcess()
        figures.save_learning_curve({HISTORY!r}, "t", Path({str(tmp_path)!r}) / "a.png")
        print("drawn", flush=True)
        try:
            time.sleep(60)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            figures.close()
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", driver],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=ctrl_c_reaches_it,
    )
    assert process.stdout.readline() == "drawn\n"
    time.sleep(0.5)
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert out == "interrupted\n"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
