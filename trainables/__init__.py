"""The PyTorch side of tuner: models, data, the training loop and the Ray trainable; no MLflow.

Importing the package registers the built-in datasets (trainables/datasets.py) beside the
registry and pipeline they use (trainables/data.py), as a plug-in's import registers its own."""

from trainables import datasets as _built_in_datasets  # noqa: F401
