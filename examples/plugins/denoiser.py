"""A training-function plug-in: a denoising autoencoder on the digits.

tuner's own loop trains a model against the labels (cross-entropy or MSE); this loop ignores
the labels and learns to reconstruct clean images from noisy ones, so its `train_loss` and
`val_loss` are reconstruction errors (mean squared error per pixel, on standardised pixels).
tuner tunes it like any model: TPE samples `trial.hp`, ASHA stops poor trials after
`report`, checkpoints resume it, finalists re-run it and `tuner train` runs it again.

    tuner run examples/plugins/denoiser.yaml
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

import tuner

#: the noise the validation, test and train *metrics* add (the same every epoch, so curves
#: compare); the training noise is a hyperparameter
EVAL_NOISE = 0.5


def autoencoder(features: int, width: int, code: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(features, width),
        nn.ReLU(),
        nn.Linear(width, code),
        nn.ReLU(),
        nn.Linear(code, width),
        nn.ReLU(),
        nn.Linear(width, features),
    )


@torch.no_grad()
def reconstruction_error(model: nn.Module, x: torch.Tensor, seed: int) -> float:
    """Mean squared error of the reconstructions of `x` with fixed (seeded) noise added."""
    model.eval()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)).to(x.device)
    return F.mse_loss(model(x + EVAL_NOISE * noise), x).item()


@tuner.register_training("denoiser", description="denoising autoencoder (reconstruction MSE)")
def denoiser(trial: tuner.TrialContext) -> None:
    hp = {"width": 64, "code": 8, "noise": 0.5, "lr": 3e-3, "batch_size": 64, **trial.hp}
    device, data = trial.device, trial.data

    def pixels(x) -> torch.Tensor:  # (N, C, H, W) images -> (N, C*H*W) on the device
        return torch.as_tensor(x).flatten(1).to(device)

    x_train, x_val = pixels(data.x_train), pixels(data.x_val)
    model = autoencoder(math.prod(data.sample_shape), int(hp["width"]), int(hp["code"]))
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(hp["lr"]))
    shuffle = torch.Generator().manual_seed(trial.seed)
    if trial.state is not None:  # resumed: everything the last checkpoint held
        model.load_state_dict(trial.state["model"])
        optimizer.load_state_dict(trial.state["optimizer"])
        shuffle.set_state(trial.state["shuffle"])

    for epoch in trial.epochs:
        model.train()
        for rows in torch.randperm(len(x_train), generator=shuffle).split(int(hp["batch_size"])):
            clean = x_train[rows.to(device)]
            noisy = clean + float(hp["noise"]) * torch.randn(clean.shape, generator=shuffle).to(
                device
            )
            loss = F.mse_loss(model(noisy), clean)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        metrics = {
            "train_loss": reconstruction_error(model, x_train[: len(x_val)], seed=1),
            "val_loss": reconstruction_error(model, x_val, seed=2),
        }
        if data.has_test and epoch == trial.epochs[-1]:  # finalists and `tuner train`
            metrics["test_loss"] = reconstruction_error(model, pixels(data.x_test), seed=3)
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "shuffle": shuffle.get_state(),
        }
        trial.report(epoch, metrics, checkpoint=state)
