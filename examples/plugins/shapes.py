"""A dataset you bring: images of four shapes (disc, ring, square, cross) drawn at random sizes,
places and brightness under Gaussian noise. Generated, so it needs no download; hard enough
(small, noisy, overlapping sizes) that the model and its hyperparameters matter.

A spec names this file under `plugins:` and the dataset as
`dataset: {name: shapes, options: {per_class: 300, size: 16, noise: 0.35, seed: 0}}`.
tuner splits, standardises and checks what the loader returns, as for a built-in dataset.
"""

from __future__ import annotations

import numpy as np

import tuner

SHAPES = ("disc", "ring", "square", "cross")


def draw(shape: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One `size` x `size` image of `shape`, its radius 20-35% of the side, anywhere inside."""
    radius = rng.uniform(0.2, 0.35) * size
    cy, cx = rng.uniform(radius, size - 1 - radius, 2)
    dy, dx = np.mgrid[:size, :size] - np.array([cy, cx])[:, None, None]
    distance = np.hypot(dy, dx)
    inside = (np.abs(dy) <= radius * 0.8) & (np.abs(dx) <= radius * 0.8)
    masks = {
        "disc": distance <= radius,
        "ring": (distance <= radius) & (distance >= radius * 0.55),
        "square": inside,
        "cross": inside & ((np.abs(dy) <= radius * 0.25) | (np.abs(dx) <= radius * 0.25)),
    }
    return masks[shape] * rng.uniform(0.5, 1.0)


@tuner.register_dataset(
    "shapes",
    layout="image",
    description="synthetic noisy images of four shapes (options: per_class, size, noise, seed)",
)
def shapes(options: dict) -> tuple[np.ndarray, np.ndarray]:
    per_class = int(options.get("per_class", 300))
    size = int(options.get("size", 16))
    rng = np.random.default_rng(int(options.get("seed", 0)))
    labels = np.repeat(np.array(SHAPES), per_class)  # strings: tuner encodes them as classes
    images = np.stack([draw(shape, size, rng) for shape in labels])
    images += rng.normal(0.0, float(options.get("noise", 0.35)), images.shape)
    return images[:, None].astype(np.float32), labels  # (N, 1, H, W): one channel
