"""Studies on a simulated GPU cluster: a Ray node on this machine told it has 2 GPUs.

Ray schedules the GPUs it is told about: a trial gets GPU ids (and CUDA_VISIBLE_DEVICES) but,
with no CUDA here, trains on the CPU. That is enough to prove how trials are packed onto GPUs,
that each trial records the GPU ids it was given, and that what cannot be placed is refused
before any trial starts. The node runs with token auth on 127.0.0.1, is shared by the tests of
this module, and is torn down by killing exactly its processes (see tests/test_jobs.py).

Each study runs as a user runs it, `tuner run SPEC --address 127.0.0.1:PORT`, in its own process:
this pytest process may already hold the session's local Ray (`ray_local`).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import max_concurrency, ray_head, spec_file, tuner_run_on
from tuner.driver.journal import JOURNAL_FILE, read_journal
from tuner.tracking import schema

pytestmark = pytest.mark.integration  # Ray nodes told of GPUs

ROOT = Path(__file__).resolve().parents[1]
NODE_CPUS, NODE_GPUS = 8, 2
#: trials of several seconds each (~0.3 s an epoch alone, slower 8 at a time on 2 cores), so the
#: trials of one wave surely overlap
SLOW_TRIAL = {"hidden_units": 512, "num_layers": 3, "batch_size": 16}
EPOCHS = 6


@dataclass
class GpuCluster:
    address: str  # the GCS, 127.0.0.1:PORT, for `tuner run --address`
    env: dict[str, str]  # what a driver of this cluster runs with (its token)


@pytest.fixture(scope="module")
def gpu_cluster() -> Iterator[GpuCluster]:
    """One head node with 8 CPUs and 2 (simulated) GPUs, token auth, on 127.0.0.1 only."""
    # trials import trainables from this checkout, as the driver does
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    with ray_head(
        NODE_CPUS, {"PYTHONPATH": path}, num_gpus=NODE_GPUS, dashboard=False, object_store_mb=100
    ) as head:
        yield GpuCluster(head.gcs, head.env)


def write_spec(folder: Path, **sections: Any) -> Path:
    raw = {
        "name": "gpu-pack",
        "model": "mlp",
        "dataset": {"name": "digits"},
        "search_space": SLOW_TRIAL,
        "search": {"num_samples": 8, "max_concurrent": 8},
        "scheduler": {"name": "fifo", "max_epochs": EPOCHS},
    }
    return spec_file(folder, raw, **sections)


def tuner_run(cluster: GpuCluster, spec: Path) -> subprocess.CompletedProcess:
    return tuner_run_on(cluster.address, cluster.env, spec)


def flat(text: str) -> str:
    return " ".join(text.split())


def journal(folder: Path) -> list[dict[str, Any]]:
    (path,) = (folder / "results").glob(f"*/{JOURNAL_FILE}")
    return read_journal(path)


def trial_tags(folder: Path, experiment: str) -> list[dict[str, str]]:
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return [r.data.tags for r in runs if r.data.tags.get(schema.ROLE_TAG) == schema.TRIAL_ROLE]


def test_quarter_gpus_run_eight_trials_at_once_on_both_gpus(
    gpu_cluster: GpuCluster, tmp_path: Path
) -> None:
    """gpu 0.25: four trials per GPU, eight at once; GPU memory is probed (no CUDA answers)."""
    spec = write_spec(tmp_path, resources={"cpu": 1, "gpu": 0.25})
    proc = tuner_run(gpu_cluster, spec)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "GPU memory unknown" in flat(proc.stdout)

    events = journal(tmp_path)
    assert sum(e["event"] == "end" for e in events) == 8
    assert max_concurrency(events) == 8
    results = [e for e in events if e["event"] == "result"]
    assert {e["gpu_ids"] for e in results} == {"0", "1"}
    assert {e["device"] for e in results} == {"cpu"}  # no CUDA here: the CPU fallback

    tags = trial_tags(tmp_path, "gpu-pack")
    assert len(tags) == 8
    gpu_ids = [t[schema.GPU_IDS_TAG] for t in tags]
    assert sorted(gpu_ids) == ["0"] * 4 + ["1"] * 4, gpu_ids  # four per GPU, both GPUs
    assert {t[schema.DEVICE_TAG] for t in tags} == {"cpu"}


def test_half_gpus_run_four_trials_at_once(gpu_cluster: GpuCluster, tmp_path: Path) -> None:
    """gpu 0.5: two trials per GPU, four at once (CPUs would allow eight); a GPU memory given
    in the spec that holds them passes the memory check quietly."""
    spec = write_spec(
        tmp_path,
        search={"num_samples": 6, "max_concurrent": 8},
        resources={"cpu": 1, "gpu": 0.5, "gpu_memory_gb": 16},
    )
    proc = tuner_run(gpu_cluster, spec)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "GPU memory unknown" not in flat(proc.stdout)

    events = journal(tmp_path)
    assert sum(e["event"] == "end" for e in events) == 6
    assert max_concurrency(events) == 4
    gpu_ids = [t[schema.GPU_IDS_TAG] for t in trial_tags(tmp_path, "gpu-pack")]
    assert set(gpu_ids) == {"0", "1"} and len(gpu_ids) == 6


def refused(proc: subprocess.CompletedProcess, folder: Path) -> str:
    """The one-paragraph spec error of a study refused before any trial started."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list((folder / "results").glob(f"*/{JOURNAL_FILE}")), "a trial started"
    return flat(proc.stdout + proc.stderr)


def test_a_trial_larger_than_any_node_is_refused_up_front(
    gpu_cluster: GpuCluster, tmp_path: Path
) -> None:
    proc = tuner_run(gpu_cluster, write_spec(tmp_path, resources={"cpu": 9, "gpu": 0.5}))
    msg = refused(proc, tmp_path)
    assert "resources.cpu: each trial asks for 9 CPU and 0.5 GPU" in msg
    assert "the largest node has 8 CPU and 2 GPU (node " in msg
    assert "cannot span nodes" in msg


def test_a_packing_that_does_not_fit_gpu_memory_is_refused_with_the_figures(
    gpu_cluster: GpuCluster, tmp_path: Path
) -> None:
    resources = {"cpu": 1, "gpu": 0.25, "gpu_memory_gb": 1.0}  # 4 CUDA contexts alone: 2 GiB
    proc = tuner_run(gpu_cluster, write_spec(tmp_path, resources=resources))
    msg = refused(proc, tmp_path)
    assert "resources.gpu: 4 trial(s) per GPU at 0.25 GPU each do not fit in 1.00 GiB" in msg
    assert "(resources.gpu_memory_gb)" in msg and "batch_size 16" in msg
    assert "CUDA context 0.50 GiB" in msg and "optimizer state" in msg
    assert "a larger resources.gpu (fewer trials per GPU)" in msg
