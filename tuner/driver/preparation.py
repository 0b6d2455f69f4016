"""Everything checked before Ray starts: the data loaded, the search space compiled and the model
built and trained one step with each categorical choice, so that a spec that cannot run fails
in seconds with a SpecError naming the key, instead of in every trial on the cluster. A study
whose `loop` is a plug-in's training function has no model to build: its first epoch is the
probe."""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any

from trainables import metrics as m
from trainables import plugins
from trainables.data import DataOptions, Dataset, DatasetError, load_dataset
from trainables.loop import check_trainable
from trainables.models import MODELS
from trainables.plugins import PluginCode
from tuner.driver.warm_start import WarmStart
from tuner.errors import SpecError
from tuner.spec.job_spec import JobSpec, load_plugins
from tuner.spec.spaces import (
    CategoricalParam,
    SearchSpace,
    check_batch_split,
    check_recipe,
    load_space,
)


@dataclass
class PreparedStudy:
    """A spec with its data loaded and its search space compiled: ready for Ray."""

    spec: JobSpec
    dataset: Dataset
    space: SearchSpace
    plugins: tuple[PluginCode, ...] = ()
    warm_start: WarmStart | None = None  # the earlier study's configs to run first
    #: one GPU's memory in bytes (resources.gpu_memory_gb or probed), set by `place_trials`
    #: for `resources.gpu: auto`
    gpu_memory: int | None = None
    #: how many trials run at once: search.max_concurrent, or fewer when data-parallel trials'
    #: worker groups would not all fit the cluster (set by `place_trials`)
    trials_at_once: int | None = None

    @property
    def max_concurrent(self) -> int:
        return self.trials_at_once or self.spec.search.max_concurrent


def prepare(spec: JobSpec) -> PreparedStudy:
    """Load the data, compile the space and build the model once; any problem is a SpecError."""
    plugins = tuple(load_plugins(spec.plugins))  # imported already: this names their code
    try:
        dataset = load_dataset(DataOptions(**spec.dataset.model_dump()))
    except DatasetError as exc:
        raise SpecError(str(exc)) from None
    if spec.objective.metric in m.CLASSIFICATION_ONLY and dataset.task == "regression":
        raise SpecError(
            f"objective.metric: {spec.objective.metric!r} needs a classification dataset, but "
            f"dataset {dataset.name!r} has a regression target; use val_loss"
        )
    space = load_space(spec.search_space, spec.model_family)
    if spec.model_family is not None:  # a training function has no model to probe
        check_recipe(space, dataset, spec.scheduler.max_epochs)
        check_batch_split(space, spec.resources.workers)
        check_model_builds(spec.model_family, space, dataset)
    return PreparedStudy(spec, dataset, space, plugins)


def check_model_builds(model: str, space: SearchSpace, dataset: Dataset) -> None:
    """Build the model with each categorical choice and constant of the space, on 2 samples."""
    probes: list[dict[str, Any]] = [dict(space.constants)]
    for name, param in space.params.items():
        if isinstance(param, CategoricalParam):
            probes += [{**space.constants, name: choice} for choice in param.choices]
    for hparams in probes:
        try:
            check_trainable(model, hparams, dataset)
        except Exception as exc:  # a plug-in's builder or forward can raise anything
            raise SpecError(model_build_failure(model, hparams, dataset, exc)) from None


def model_build_failure(
    model: str, hparams: dict[str, Any], dataset: Dataset, exc: Exception
) -> str:
    """What the probe says: the model (and its plug-in file, at the failing line), the data, the
    hyperparameters and the error's last line."""
    file = None
    if model in MODELS:  # what the builder received: the family's defaults, overridden
        hparams = {**MODELS.get(model).defaults, **hparams}
        file = plugins.module_file(MODELS.owner(model))
    origin = ""
    if file is not None:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == file]
        origin = f" (plug-in {file}" + (f", line {frames[-1].lineno})" if frames else ")")
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    message = f"{type(exc).__name__}: {lines[-1].strip() if lines else ''}".rstrip(": ")
    return (
        f"search_space: model {model!r}{origin} cannot be built and trained one step on dataset "
        f"{dataset.name!r} ({dataset.layout} {dataset.sample_shape}) with {hparams}: {message}"
    )
