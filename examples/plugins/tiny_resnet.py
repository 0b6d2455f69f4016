"""A model you bring: a small residual CNN (ResNet basic blocks in two stages) for image data.

A spec names this file under `plugins:` and the model as `model: tiny_resnet`; its
hyperparameters (width, blocks, dropout) are searched like a built-in family's, beside the
training ones every model has (lr, batch_size, optimizer, ...).
"""

from __future__ import annotations

import torch
from torch import nn

import tuner


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus the input (projected when the shape changes), then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        same = stride == 1 and c_in == c_out
        self.skip = (
            nn.Identity()
            if same
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class TinyResNet(nn.Module):
    """A stem, `blocks` blocks at `width` channels, `blocks` more at twice that (stride 2)."""

    def __init__(self, channels: int, width: int, blocks: int, dropout: float, outputs: int):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        ]
        c_in = width
        for stage in range(2):
            for i in range(blocks):
                c_out = width * 2**stage
                layers.append(BasicBlock(c_in, c_out, stride=2 if stage and i == 0 else 1))
                c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in, outputs)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@tuner.register_model(
    "tiny_resnet",
    layouts=("image",),
    defaults={"width": 16, "blocks": 1, "dropout": 0.1},
    description="a small residual CNN: two stages of ResNet basic blocks (a plug-in example)",
)
def tiny_resnet(hp: dict, sample_shape: tuple, layout: str, output_dim: int) -> nn.Module:
    width, blocks, dropout = int(hp["width"]), int(hp["blocks"]), float(hp["dropout"])
    return TinyResNet(sample_shape[0], width, blocks, dropout, output_dim)  # (C, H, W) images
