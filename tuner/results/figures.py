"""Learning-curve figures, and the helper process that draws them during a study.

Drawing one figure costs matplotlib about 90 ms of CPU. In the driver that time holds the GIL that
Ray Tune's event loop needs for every result, and on a small machine it takes a core from a
trial. During a study the figures are drawn by `FigureProcess`, a helper process at the lowest
CPU priority, so that they use what the trials leave idle. This module imports nothing heavy: the
helper starts in a fraction of a second.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

from trainables import metrics as m
from tuner.results import outcomes

log = logging.getLogger(__name__)

# Ray runs trial workers at nice 15 (RAY_worker_niceness); the helper must rank below them
HELPER_NICENESS = 19
# fixed margins (inches): tight_layout measures every label first, a third of a figure's cost
MARGINS_IN = {"left": 0.75, "right": 0.15, "bottom": 0.5, "top": 0.45, "between": 0.75}


def learning_curve_figure(history: list[dict[str, float]], title: str):
    """Train vs validation loss (and accuracy), the best epoch marked; a matplotlib figure."""
    from matplotlib.figure import Figure  # not pyplot: no global state, safe off the main thread

    has_acc = any(m.VAL_ACC in r for r in history)
    width, height = (10 if has_acc else 5.5), 3.6
    fig = Figure(figsize=(width, height))
    axes = list(fig.subplots(1, 2)) if has_acc else [fig.subplots()]
    epochs = [r[m.EPOCH] for r in history]
    best = outcomes.best_epoch(history, m.VAL_LOSS, "min")
    panels = [("loss", m.TRAIN_LOSS, m.VAL_LOSS)]
    if has_acc:
        panels.append(("accuracy", m.TRAIN_ACC, m.VAL_ACC))
    for ax, (label, train_key, val_key) in zip(axes, panels, strict=True):
        ax.plot(epochs, [r.get(train_key) for r in history], marker=".", label="train")
        ax.plot(epochs, [r.get(val_key) for r in history], marker=".", label="validation")
        if best:
            ax.axvline(best[m.EPOCH], color="grey", linestyle="--", label="best epoch")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    edge = MARGINS_IN
    fig.subplots_adjust(
        left=edge["left"] / width,
        right=1 - edge["right"] / width,
        bottom=edge["bottom"] / height,
        top=1 - edge["top"] / height,
        wspace=edge["between"] / ((width - edge["left"] - edge["right"]) / len(axes)),
    )
    return fig


def save_learning_curve(history: list[dict[str, float]], title: str, path: Path) -> None:
    learning_curve_figure(history, title).savefig(path)


class FigureProcess:
    """Draws learning curves in a helper process (`python -m tuner.results.figures`), one at a time.

    Requests and replies are JSON lines on the helper's stdin and stdout. The helper starts on
    the first request and is restarted if it dies; `close` ends it.
    """

    def __init__(self) -> None:
        self._helper: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def save_learning_curve(self, history: list[dict[str, float]], title: str, path: Path) -> None:
        request = json.dumps({"history": history, "title": title, "path": str(path)})
        with self._lock:
            for attempt in (1, 2):
                helper = self._started()
                try:
                    helper.stdin.write(request + "\n")
                    helper.stdin.flush()
                    reply = helper.stdout.readline()
                except OSError:
                    reply = ""
                if reply:
                    break
                log.warning("the figure helper exited (attempt %d); starting another", attempt)
                self._helper = None
        error = json.loads(reply).get("error") if reply else "the figure helper keeps exiting"
        if error:
            raise RuntimeError(f"learning curve {path.name}: {error}")

    def _started(self) -> subprocess.Popen:
        if self._helper is None or self._helper.poll() is not None:
            self._helper = subprocess.Popen(
                [sys.executable, "-m", "tuner.results.figures"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                # out of the terminal's process group: Ctrl-C is the driver's to handle (the
                # helper printed a KeyboardInterrupt traceback); it ends when its stdin closes
                start_new_session=True,
            )
        return self._helper

    def close(self) -> None:
        """End the helper. It keeps nothing between requests and every request was answered,
        so it is terminated rather than left to tear down matplotlib (~0.2 s at a study's end)."""
        with self._lock:
            if self._helper is not None:
                self._helper.stdin.close()
                self._helper.terminate()
                self._helper.wait(timeout=10)
                self._helper = None


def serve() -> None:
    """The helper's loop: one request per stdin line, one reply per stdout line."""
    os.nice(HELPER_NICENESS)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            save_learning_curve(request["history"], request["title"], Path(request["path"]))
            reply = {}
        except Exception as exc:  # reported to the driver, which logs it and goes on
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()
