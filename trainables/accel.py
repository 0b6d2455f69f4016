"""What makes the loop fast on a GPU: device settings, mixed precision, memory format, compilation.

Pure PyTorch. Every function here is a no-op or an identity on CPU except precision and compile,
which behave on CPU as on a GPU (autocast supports bf16 and fp16 on CPU), so both are tested there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16", "fp16")
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(
            f"training.precision: {precision!r} is unknown; choose one of: {', '.join(PRECISIONS)}"
        )


def autocast_dtype(precision: str, device_type: str, bf16_supported: bool) -> torch.dtype | None:
    """The dtype autocast runs in (None: plain fp32); bf16 is refused on a GPU without it."""
    check_precision(precision)
    if precision == "bf16" and device_type == "cuda" and not bf16_supported:
        raise ValueError(
            "training.precision: 'bf16' needs a GPU with native bfloat16 (compute capability 8.0 "
            "or newer: A100, H100, L4, RTX 30xx and later); this GPU has none: use 'fp16' or "
            "'fp32'"
        )
    return AUTOCAST_DTYPES[precision]


def native_bf16(device: torch.device) -> bool:
    """Whether `device` runs bf16 natively: CPU autocast does; a GPU from compute capability 8.0.
    A GPU that only emulates it does not count (slower than fp32), though plain
    `torch.cuda.is_bf16_supported()` says yes there; the GPU suite skips bf16 by this answer, so
    it never runs what a trial refuses."""
    if device.type != "cuda":
        return True
    return torch.cuda.is_bf16_supported(including_emulation=False)


def device_autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """`autocast_dtype` for this device, asking it whether it has native bf16 (`native_bf16`)."""
    supported = native_bf16(device) if precision == "bf16" else True
    return autocast_dtype(precision, device.type, supported)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast in `dtype` on `device`; a no-op context for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def gradient_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A loss scaler, enabled for fp16 only (bf16 has fp32's range and needs none); a disabled one
    passes the loss and the optimizer step through unchanged."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def configure_device(device: torch.device) -> None:
    """On CUDA: TF32 matmuls and convolutions, and cuDNN's autotuner (batch shapes repeat every
    epoch, so its first-batch search pays for itself). Process-wide settings; nothing on CPU."""
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    torch.backends.cudnn.benchmark = True


def memory_format(model_name: str, sample_shape: tuple[int, ...], device: torch.device):
    """channels_last for the CNN on images (4-D batches) on CUDA, where tensor cores want NHWC;
    the default layout everywhere else."""
    if device.type == "cuda" and model_name == "cnn" and len(sample_shape) == 3:
        return torch.channels_last
    return torch.contiguous_format


@contextlib.contextmanager
def preserved_training_state(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Run a throw-away forward/backward (a compile warm-up) without changing what training does
    next: the model's parameters and buffers (batch-norm statistics), its gradients, its mode and
    every RNG it may draw from (CPU, and the device's on CUDA) are restored on exit."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    grads = [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()]
    training = model.training
    cuda_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices, device_type="cuda"):
        try:
            yield
        finally:
            model.load_state_dict(state)
            for p, grad in zip(model.parameters(), grads, strict=True):
                p.grad = grad
            model.train(training)
