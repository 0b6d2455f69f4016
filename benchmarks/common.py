"""What the benchmark suites share: the repeats and how they are summed up, the study they time,
the processes they time, the mlflow server some track to, and the record of what a run was
measured on (the machine, the commit, whether the tree was clean).

Every suite alternates its two sides (A B, B A, A B, ...) so that neither always runs first on a
machine that warms up or slows down, and reports the median repeat's ratio with the spread of
the ratio over the repeats: one figure without its spread cannot tell a change from noise.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainables import metrics as m

ROOT = Path(__file__).resolve().parents[1]

#: a benchmark: `(quick) -> {"name", "ratio", "spread", "target", "detail", "spans", "samples"}`
Benchmark = Callable[[bool], dict[str, Any]]


# --------------------------------------------------------------------------- repeats


def abab(repeats: int, first: str, second: str) -> list[tuple[str, str]]:
    """The order of the two sides in each repeat: (first, second), (second, first), ..."""
    return [(first, second) if i % 2 == 0 else (second, first) for i in range(repeats)]


def alternate(sides: dict[str, Callable[[], Any]], repeats: int) -> list[dict[str, Any]]:
    """Each repeat's figures of both sides, run in `abab` order (the first side named runs first
    in the first repeat), with the order they ran in."""
    first, second = sides
    rounds = []
    for order in abab(repeats, first, second):
        figures = {side: sides[side]() for side in order}
        rounds.append({"order": list(order), **figures})
    return rounds


def median_sample(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The repeat whose ratio is the median (the upper one of an even number)."""
    return sorted(samples, key=lambda s: s["ratio"])[len(samples) // 2]


def spread(values: list[float | None]) -> list[float] | None:
    """[lowest, highest] of the repeats' ratios; None without a repeat to compare."""
    finite = [v for v in values if v is not None]
    return [min(finite), max(finite)] if finite else None


def spread_text(span: list[float] | None) -> str:
    return "" if span is None else f"{span[0]:.2f}-{span[1]:.2f}"


def repeats_text(samples: list) -> str:
    return f"median of {len(samples)}" if len(samples) > 1 else "1 run"


# --------------------------------------------------------------------------- the study timed


@dataclass(frozen=True)
class Workload:
    """A fixed study: the space its configs are sampled from, and its budget."""

    model: str
    dataset: str
    space: dict[str, Any] | str  # a mapping in search-space YAML form, or a shipped space's name
    trials: int
    epochs: int


LR = {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}


def study_spec(work: Workload, folder: Path, tracking_uri: str | None = None, **extra) -> dict:
    """Random search over `work` with FIFO, 2 trials at a time, every store in `folder`."""
    return {
        "name": f"bench-{work.model}",
        "model": work.model,
        "dataset": {"name": work.dataset},
        "search_space": work.space,
        "search": {
            "algorithm": "random",
            "num_samples": work.trials,
            "max_concurrent": 2,
            "storage": f"sqlite:///{folder / 'optuna.db'}",
        },
        "scheduler": {"name": "fifo", "max_epochs": work.epochs},
        "tracking": {"uri": tracking_uri or f"sqlite:///{folder / 'mlflow.db'}"},
        "storage": str(folder / "results"),
        **extra,
    }


def journal(results: Path) -> list[dict]:
    """The study journal under a study's `storage` folder."""
    from tuner.driver.journal import JOURNAL_FILE, read_journal

    return read_journal(next(results.glob(f"*/{JOURNAL_FILE}")))


def phase_marks(results: Path) -> dict[str, float]:
    """{phase: Unix time it ended} from the log of the study under a study's `storage` folder."""
    from tuner.driver.phases import read_phases

    (log,) = results.glob("*/tuner.log")
    return read_phases(log.read_text())


def first_epoch_began(events: list[dict]) -> float:
    """When the first trial started training: its first result's time less that epoch's."""
    return min(e["time"] - e["row"][m.EPOCH_TIME_S] for e in events if e["event"] == "result")


# --------------------------------------------------------------------------- processes


def timed_process(command: list[str]) -> tuple[float, float, str]:
    """Seconds from starting `command` (in the repository root) to its exit, when it started
    (Unix time) and its output."""
    began = time.time()
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(
            f"{' '.join(command[:4])} exited {done.returncode}: {done.stderr[-2000:]}"
        )
    return wall, began, done.stdout


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def mlflow_server(folder: Path) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1, run as `tuner ui` runs it (SQLite backend, 1 worker,
    MLflow's job runner off), warmed up."""
    import signal

    from tuner.tracking.mlflow_server import UI_SERVER_ENV, ui_server_command

    port = free_port()
    command = ui_server_command(
        f"sqlite:///{folder / 'server.db'}", "127.0.0.1", port, folder / "artifacts"
    )
    with open(folder / "server.log", "w") as log:
        server = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **UI_SERVER_ENV},
        )
        uri = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 90
            while True:
                try:
                    with urllib.request.urlopen(f"{uri}/health", timeout=2):
                        break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"mlflow server did not start: {folder}") from None
                    time.sleep(0.5)
            warm_up(uri, folder)
            yield uri
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)


def mlflow_server_cpu_s() -> float:
    """CPU seconds used so far by this process's `mlflow server` (its uvicorn worker included)."""
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            if "mlflow" in " ".join(child.cmdline()):
                cpu = child.cpu_times()
                total += cpu.user + cpu.system
        except psutil.Error:
            continue
    return total


def warm_up(uri: str, folder: Path) -> None:
    """One call of each endpoint a study uses: a fresh server spends seconds of CPU on its first
    requests (lazy imports, its store's set-up), which a long-running server has behind it."""
    from mlflow.entities import Metric, Param

    from tuner.tracking.runs import client_for

    client = client_for(uri)
    experiment = client.create_experiment("warm-up")
    run = client.create_run(experiment, run_name="warm-up").info.run_id
    client.log_batch(run, metrics=[Metric("m", 1.0, 0, 1)], params=[Param("p", "1")])
    (folder / "warm-up.txt").write_text("warm-up")
    client.log_artifact(run, str(folder / "warm-up.txt"))
    client.set_terminated(run)
    client.search_runs([experiment])
    client.delete_experiment(experiment)


# --------------------------------------------------------------------------- the record


def command_output(*command: str, cwd: Path = ROOT) -> str | None:
    """A command's stripped output; None when it cannot run or fails."""
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def installed_version(name: str) -> str | None:
    """A package's version; None where it is not installed (a bare GPU machine)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import psutil
    import torch

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        **{name: installed_version(name) for name in ("torch", "ray", "optuna", "mlflow")},
    }


def machine_line(about: dict[str, Any]) -> str:
    return (
        f"{about['cores']} cores ({about['cpu']}), {about['memory_gib']:.0f} GiB, "
        f"{about['gpu'] or 'no GPU'}, Python {about['python']}, torch {about['torch']}, "
        f"ray {about['ray']}, optuna {about['optuna']}, mlflow {about['mlflow']}"
    )


def changed_files(root: Path = ROOT) -> list[str] | None:
    """`git status --porcelain`'s line for each tracked file with uncommitted changes (untracked
    files left out); None where git cannot say (no git, not a repository)."""
    status = command_output("git", "status", "--porcelain", "--untracked-files=no", cwd=root)
    return None if status is None else [line for line in status.splitlines() if line]


def git_state(root: Path = ROOT, dirty_because: str | None = None) -> dict[str, Any]:
    """The commit measured, and whether (and why) the tree had uncommitted changes."""
    changed = changed_files(root)
    return {
        "commit": command_output("git", "rev-parse", "HEAD", cwd=root),
        "branch": command_output("git", "rev-parse", "--abbrev-ref", "HEAD", cwd=root),
        "dirty": None if changed is None else bool(changed),
        "dirty_because": dirty_because if changed else None,
    }


def dirty_refusal(root: Path, dirty_because: str | None) -> str | None:
    """Why results may not be written from `root`'s tree, or None when they may: a results file
    must name the code that produced it, so a tree with uncommitted changes to tracked files
    needs a stated reason (recorded in the file)."""
    changed = changed_files(root)
    if not changed or (dirty_because and dirty_because.strip()):
        return None
    return (
        f"refusing to write results: {len(changed)} tracked file(s) have uncommitted changes "
        f"(git status --porcelain), so the commit would not name the code measured; commit "
        f'them, or pass --dirty-because "REASON" to run anyway with the reason recorded'
    )
