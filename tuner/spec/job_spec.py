"""The job spec: one typed, validated model per section, loaded from YAML with `--set` overrides.

Everything a study does is decided here, before Ray starts: unknown keys, wrong types and
impossible values raise `SpecError` naming the key, the value and the rule. Relative paths written
in a spec file are resolved against that file's folder; paths from `--set` and the defaults,
against the working directory. The resolved spec (all paths absolute) is what the study saves.
"""

from __future__ import annotations

import copy
import math
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from trainables import metrics as m
from trainables import plugins
from trainables.data import DATASETS, LOADER_SPEC_KEYS
from trainables.models import MODELS
from trainables.plugins import PluginCode, is_file_entry
from trainables.registry import Registry
from trainables.training_functions import TRAINING_FUNCTIONS
from tuner.driver.samplers import MULTI_OBJECTIVE_SAMPLERS, SAMPLERS
from tuner.driver.schedulers import SCHEDULERS, SECTION
from tuner.errors import SpecError, brief
from tuner.safe_names import UnsafeName, bucket_path

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


class Section(BaseModel):
    """A spec section: unknown keys are errors, values are not silently coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def registered(registry: Registry) -> AfterValidator:
    """A str field that must name an entry of `registry` (the message lists them)."""

    def check(name: str) -> str:
        if name not in registry:
            raise ValueError(f"must be one of {registry.names()}")
        return name

    return AfterValidator(check)


ModelName = Annotated[str, registered(MODELS)]
DatasetName = Annotated[str, registered(DATASETS)]
LoopName = Annotated[str, registered(TRAINING_FUNCTIONS)]
ImageSide = Annotated[int, Field(ge=1, le=4096)]  # pixels


class DatasetSpec(Section):
    name: DatasetName  # built in (`tuner datasets`) or registered by a plug-in
    path: str | None = None  # mnist: IDX folder; table: CSV or Parquet file; images: a folder
    target: str | None = None  # table: the target column
    window: int | None = Field(None, ge=2)  # vector data: rows per sliding window (sequences)
    val_fraction: float = Field(0.2, gt=0, lt=1)  # share held out for validation
    seed: int = Field(0, ge=0, lt=2**32)  # seeds the train/validation split
    #: share held out as the test split before the train/validation split, never seen by the
    #: search; only `selection`'s finalists are scored on it (0: no test split)
    test_fraction: float = Field(0.0, ge=0, lt=1)
    #: images: [height, width] every image is resized to (default: the first image's size)
    image_size: list[ImageSide] | None = Field(None, min_length=2, max_length=2)
    grayscale: bool = False  # images: one channel (L) instead of three (RGB)
    #: passed as is to the dataset's loader (a plug-in's own settings)
    options: dict[str, Any] = {}

    @field_validator("options")
    @classmethod
    def _own_keys_only(cls, options: dict[str, Any]) -> dict[str, Any]:
        repeated = [k for k in LOADER_SPEC_KEYS if k in options]
        if repeated:
            raise ValueError(
                f"dataset.options must not hold {', '.join(repeated)} (keys of dataset itself, "
                f"which reach the loader too): set dataset.{repeated[0]} instead"
            )
        check_plain(options, "dataset.options")
        return options

    @model_validator(mode="after")
    def _rows_left_to_train(self) -> DatasetSpec:
        if self.test_fraction + self.val_fraction >= 1:
            raise ValueError(
                f"dataset.test_fraction: {self.test_fraction} with dataset.val_fraction "
                f"{self.val_fraction} holds out {self.test_fraction + self.val_fraction:g} of the "
                "rows; test_fraction + val_fraction must be below 1, so that rows are left to "
                "train on"
            )
        return self


PLAIN_TYPES = (str, int, float, bool, type(None))


def check_plain(value: Any, key: str, seen: tuple[int, ...] = ()) -> None:
    """Raise ValueError unless `value` is what a saved spec keeps as it is: str, finite number,
    bool, null, and lists and str-keyed mappings of those (no cycles)."""
    if isinstance(value, (dict, list)):
        if id(value) in seen:
            raise ValueError(f"{key} contains itself (a YAML alias loop)")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in items:
            if isinstance(value, dict) and not isinstance(k, str):
                raise ValueError(f"{key} has the key {show(k)}; keys must be strings")
            check_plain(v, f"{key}.{k}", (*seen, id(value)))
    elif not isinstance(value, PLAIN_TYPES):
        raise ValueError(
            f"{key} is {show(value)} ({type(value).__name__}); it must be a string, number, "
            "boolean, null, list or mapping"
        )
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number (a saved spec keeps no {value})")


class ObjectiveSpec(Section):
    metric: str = m.VAL_LOSS  # what the search optimises, at each trial's best epoch
    #: default: the metric's natural direction
    mode: Literal["min", "max"] | None = Field(None, validate_default=True)

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric not in OBJECTIVE_METRICS:
            raise ValueError(f"must be one of {list(OBJECTIVE_METRICS)}")
        return metric

    @field_validator("mode")
    @classmethod
    def _direction(cls, mode: str | None, info: ValidationInfo) -> str | None:
        natural = OBJECTIVE_METRICS.get(info.data.get("metric"))
        if natural is None:  # the metric itself is wrong, and said so
            return mode
        if mode is not None and mode != natural:
            raise ValueError(f"must be {natural!r} for {info.data['metric']}")
        return natural


#: every metric an objective may name: per-epoch ones, then what a model and its trial cost
OBJECTIVE_METRICS = {**m.OBJECTIVES, **m.MODEL_COSTS, **m.USAGE_COSTS}


def _objective_form(value: Any) -> str:
    return OBJECTIVE_LIST if isinstance(value, list) else OBJECTIVE_MAPPING


#: the two forms of `objective` (pydantic's tags for them, never shown: see _describe_error)
OBJECTIVE_MAPPING, OBJECTIVE_LIST = "one objective", "objective list"
#: `objective`: a mapping, or a list of them (several objectives, the first one leading)
Objectives = Annotated[
    Annotated[ObjectiveSpec, Tag(OBJECTIVE_MAPPING)]
    | Annotated[list[ObjectiveSpec], Tag(OBJECTIVE_LIST)],
    Discriminator(_objective_form),
]


#: metrics that may be a further objective but not the first, and why (the first picks each
#: trial's best epoch and drives the stopping)
NOT_FIRST = {
    **{
        metric: "is measured once per trial, not per epoch, so it cannot pick a trial's best "
        "epoch or stop trials early"
        for metric in m.MODEL_COSTS
    },
    **{
        metric: "grows with every epoch a trial trains, so as the first objective it would make "
        "every trial's first epoch its best and stop trials for training"
        for metric in m.USAGE_COSTS
    },
}


def check_objectives(objectives: list[ObjectiveSpec]) -> None:
    """Raise ValueError (naming `objective`) for a list whose first metric is not measured every
    epoch, or that names a metric twice."""
    if not objectives:
        raise ValueError("objective must be a mapping {metric, mode} or a non-empty list of them")
    first = objectives[0].metric
    if first in NOT_FIRST:
        key = "objective.0.metric" if len(objectives) > 1 else "objective.metric"
        raise ValueError(
            f"{key} {first!r} {NOT_FIRST[first]}: the first objective must be one of "
            f"{list(m.OBJECTIVES)}; list {first} after it, e.g. "
            f"[{{metric: val_loss}}, {{metric: {first}}}]"
        )
    seen: dict[str, int] = {}
    for index, objective in enumerate(objectives):
        if objective.metric in seen:
            raise ValueError(
                f"objective.{index}.metric {objective.metric!r} is already objective "
                f"{seen[objective.metric]}: each metric may appear once in the objective list"
            )
        seen[objective.metric] = index


class WarmStartSpec(Section):
    """Start from an earlier study's best configs (tuner/driver/warm_start.py)."""

    study: str = Field(pattern=NAME_PATTERN)  # its name (newest execution) or parent run id
    top_k: int = Field(5, ge=1)  # how many of its best configs run first


class SearchSpec(Section):
    algorithm: Annotated[str, registered(SAMPLERS)] = "tpe"  # the Optuna sampler
    num_samples: int = Field(32, ge=1)  # trials in the study
    max_concurrent: int = Field(4, ge=1)  # trials running at once
    seed: int = Field(0, ge=0, lt=2**32)  # seeds the sampler and every trial's initialisation
    storage: str | None = None  # Optuna RDB URL; default: optuna.db beside the tracking store
    warm_start: WarmStartSpec | None = None  # an earlier study's best configs as first trials
    #: seconds after the first trial starts (in this run of the driver) after which no new trial
    #: starts; running ones finish
    time_budget_s: float | None = Field(None, gt=0)
    #: no new trial once this many trials in a row finished without improving the best
    patience_trials: int | None = Field(None, ge=1)
    #: no new trial once the trials have spent this many GPU-hours (share x wall time, summed
    #: over the study's trials); running ones finish
    gpu_hours_budget: float | None = Field(None, gt=0)


class SelectionSpec(Section):
    """After the search: the `finalists` best configs trained again from scratch, `seeds` times
    each with new seeds, to their best epoch; the winner is the best mean (first objective)."""

    finalists: int = Field(ge=1)  # configs re-run: the best `finalists` trials of the search
    seeds: int = Field(3, ge=1, le=100)  # re-runs of each, seeded search.seed + 1, + 2, ...


class OverfitStopSpec(Section):
    patience: int = Field(ge=1)  # epochs without a new best val_loss before the trial stops
    min_delta: float = Field(0.0, ge=0)  # how much lower counts as a new best


class SchedulerSpec(Section):
    """The `scheduler` section: the keys every scheduler reads, and beside them (the section stays
    flat: `grace_period` sits next to `name`) the named scheduler's own keys, which its settings
    model validates (tuner/driver/schedulers.py). After validation those keys, defaults filled
    in, are attributes of the section and part of its dump, and `settings` holds them typed.
    Keys another scheduler takes are set aside, neither applied nor saved: a spec written for
    ASHA runs with `--set scheduler.name=fifo`, as it always has."""

    model_config = ConfigDict(extra="allow")  # the scheduler's own keys: judged by its model

    name: Annotated[str, registered(SCHEDULERS)] = "asha"  # asha | fifo
    max_epochs: int = Field(20, ge=1)  # epochs of a trial that is never stopped early
    stop_on_overfit: OverfitStopSpec | None = None

    _settings: BaseModel | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _scheduler_settings(self) -> SchedulerSpec:
        kind = SCHEDULERS.get(self.name)  # a registered name: the field's check ran first
        extra = dict(self.__pydantic_extra__ or {})
        others = {k for n in SCHEDULERS.names() for k in SCHEDULERS.get(n).settings.model_fields}
        own = kind.settings.model_fields
        given = {k: v for k, v in extra.items() if k in own or k not in others}
        foreign = [key for key in given if key not in own]
        if foreign:
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [
                    {
                        "type": PydanticCustomError("not_its_key", self._not_its_key(key, value)),
                        "loc": (key,),
                        "input": value,
                    }
                    for key, value in given.items()
                    if key in foreign
                ],
            )
        self._settings = kind.settings.model_validate(given, context={SECTION: self})
        self.__pydantic_extra__ = dict(self._settings)
        return self

    def _not_its_key(self, key: Any, value: Any) -> str:
        """Names the key, its value, the scheduler and the keys it takes."""
        valid = [*type(self).model_fields, *SCHEDULERS.get(self.name).settings.model_fields]
        return (
            f"scheduler.{key} is not a known key of scheduler {self.name} (value {show(value)}); "
            f"valid keys here: {', '.join(valid)}"
        )

    @property
    def settings(self) -> BaseModel:
        """The named scheduler's own keys, as its settings model validated them."""
        if self._settings is None:  # built with model_construct, which validates nothing
            raise RuntimeError("scheduler.settings: the section was never validated")
        return self._settings


#: `resources.gpu: auto`: each trial's share sized from its own config's memory estimate
AUTO = "auto"


class ResourcesSpec(Section):
    #: data-parallel workers per trial (Ray Train, trainables/data_parallel.py); 1: the trial
    #: trains in its own process, as before. cpu and gpu are then per worker
    workers: int = Field(1, ge=1)
    cpu: float = Field(1.0, gt=0)  # CPUs per trial, or per worker (torch threads on CPU)
    #: GPUs per trial (per worker), up to 1 (a fraction shares one GPU), or auto: each trial's
    #: share chosen from its config's estimated memory (1, 1/2, 1/4 or 1/8; gpu_shares.py)
    gpu: float | Literal["auto"] = 0.0
    #: where a trial's workers go: pack (few nodes) or spread (one node each)
    placement: Literal["pack", "spread"] = "pack"
    #: per-GPU memory for the packing check, when it cannot be probed (default: probed)
    gpu_memory_gb: float | None = Field(None, gt=0)
    #: the share of each GPU's memory the packing check keeps free, for what the estimate leaves
    #: out (the allocator's rounding and fragmentation, workspaces beyond the CUDA context)
    gpu_memory_headroom: float = 0.1

    @field_validator("gpu", mode="before")
    @classmethod
    def _one_device(cls, gpu: Any) -> Any:
        if gpu == AUTO:
            return gpu
        if isinstance(gpu, bool) or not isinstance(gpu, int | float):
            raise ValueError(
                "must be auto (each trial's share sized from its memory estimate) or a number: "
                "0 (no GPU), or a share above 0 up to 1 (0.25: four trials share a GPU)"
            )
        if not math.isfinite(gpu):
            raise ValueError("must be a finite number")
        if gpu < 0:
            raise ValueError(
                "must be auto, 0 (no GPU) or a share above 0 up to 1 (0.25: four trials share "
                "a GPU)"
            )
        if gpu > 1:
            raise ValueError(
                "must be a fraction up to 1 (a trial, or each of its workers, trains on one "
                "device: use resources.gpu up to 1, and resources.workers for several GPUs per "
                "trial)"
            )
        return float(gpu)

    @model_validator(mode="after")
    def _whole_gpus_for_workers(self) -> ResourcesSpec:
        """NCCL cannot put two ranks of one process group on one GPU: several workers each
        need a whole GPU (on CPU, gpu 0, any CPU split is allowed)."""
        if self.workers > 1 and (self.gpu == AUTO or 0 < self.gpu < 1):
            raise ValueError(
                f"resources.gpu: {self.gpu!r} with resources.workers {self.workers}: the "
                "workers of one trial each need a whole GPU (NCCL cannot put two ranks of one "
                "process group on one GPU); use resources.gpu: 1, or workers: 1 to share GPUs "
                "between trials"
            )
        return self

    @property
    def auto_gpu(self) -> bool:
        """`gpu: auto`: each trial's share follows its config (tuner/driver/gpu_shares.py)."""
        return self.gpu == AUTO

    @property
    def largest_gpu(self) -> float:
        """The largest GPU share a trial asks for: `gpu`, or with auto a whole GPU."""
        return 1.0 if self.gpu == AUTO else float(self.gpu)

    @field_validator("gpu_memory_headroom")
    @classmethod
    def _a_share(cls, headroom: float) -> float:
        if not 0 <= headroom < 1:
            raise ValueError(
                "must be a fraction from 0 to below 1: the share of each GPU's memory that "
                "trials packed on it must leave free (0.1 keeps 10 % free)"
            )
        return headroom


Precision = Literal["fp32", "bf16", "fp16"]  # trainables.loop.PRECISIONS


class TrainingSpec(Section):
    """How each trial trains (trainables.loop.TrainingOptions)."""

    precision: Precision = "fp32"  # autocast dtype; fp16 adds a scaler
    compile: bool = False  # torch.compile the model; its compile time is its own metric
    #: the dataset on the GPU (true), in host memory copied per batch (false), or None: on the
    #: GPU when the memory estimate says it fits
    data_on_device: bool | None = None


class TrackingSpec(Section):
    enabled: bool = True  # false: no MLflow runs (results stay in the Ray run folder)
    uri: str = "sqlite:///mlflow.db"  # MLflow tracking URI: SQLite file or http(s) server
    experiment: str | None = None  # default: the study name


class DiagnosticsSpec(Section):
    """Thresholds of the per-trial diagnosis (see tuner/results/diagnostics.py for the rules)."""

    min_epochs: int = Field(3, ge=1)  # fewer epochs than this: too_short
    overfit_rise: float = Field(0.10, gt=0)  # val loss up this much (relative) after its minimum
    underfit_train_acc: float = Field(0.90, gt=0, le=1)  # train accuracy below this at best epoch
    underfit_loss_ratio: float = Field(0.5, gt=0, le=1)  # regression: train loss vs first epoch
    diverge_factor: float = Field(3.0, gt=1)  # final val loss above this times the first: diverged


class FailureSpec(Section):
    max_retries: int = Field(2, ge=0)  # retries of a failing trial, from its last checkpoint


class JobSpec(Section):
    name: str = Field(pattern=NAME_PATTERN)  # study: MLflow experiment, Ray run, Optuna study
    #: .py files (relative to the spec) or module names that register models and datasets;
    #: imported before the rest is validated, so `model` and `dataset.name` may name their entries
    plugins: list[str] = []
    #: mlp | cnn | lstm or a plug-in's family; required unless `loop` is set, and then (after
    #: validation) the loop's name, which is what the study shows and tags as its model
    model: ModelName | None = None
    #: a plug-in's training function (`@tuner.register_training`) that trains every trial
    #: instead of tuner's loop; `search_space` is then required and `model` omitted
    loop: LoopName | None = None
    dataset: DatasetSpec
    search_space: str | dict[str, Any] | None = None  # name, YAML path or mapping; default: model
    #: one objective, or a list of several (the first picks each trial's best epoch, drives the
    #: scheduler and ranks the trials). After validation `objective` is always the first one, an
    #: ObjectiveSpec; `objectives` holds them all
    objective: Objectives = ObjectiveSpec()
    search: SearchSpec = SearchSpec()
    scheduler: SchedulerSpec = SchedulerSpec()
    resources: ResourcesSpec = ResourcesSpec()
    training: TrainingSpec = TrainingSpec()
    tracking: TrackingSpec = TrackingSpec()
    storage: str = "./tuner-results"  # Ray results and checkpoints
    failure: FailureSpec = FailureSpec()
    diagnostics: DiagnosticsSpec = DiagnosticsSpec()
    #: finalists re-run after the search (None: the search's best trial is the result)
    selection: SelectionSpec | None = None

    @model_validator(mode="after")
    def _gpu_hours_need_gpus(self) -> JobSpec:
        if self.search.gpu_hours_budget is not None and self.resources.gpu == 0:
            raise ValueError(
                f"search.gpu_hours_budget: {self.search.gpu_hours_budget:g} GPU-hours, but "
                "resources.gpu is 0, so trials spend none and the budget would never stop the "
                "search; set resources.gpu (a share or auto) or use search.time_budget_s"
            )
        return self

    @model_validator(mode="after")
    def _workers_need_tuners_loop(self) -> JobSpec:
        if self.resources.workers > 1 and self.loop is not None:
            raise ValueError(
                f"resources.workers: {self.resources.workers} with loop {self.loop!r}: only "
                "tuner's own loop trains data-parallel (a training function trains in one "
                "process); use resources.workers: 1"
            )
        return self

    @model_validator(mode="after")
    def _finalists_within_trials(self) -> JobSpec:
        if self.selection and self.selection.finalists > self.search.num_samples:
            raise ValueError(
                f"selection.finalists: {self.selection.finalists} is above "
                f"search.num_samples {self.search.num_samples}; the finalists are chosen among "
                "the study's trials, so there can be at most as many"
            )
        return self

    _objectives: list[ObjectiveSpec] = PrivateAttr(default_factory=list)

    @field_validator("objective")
    @classmethod
    def _objective_list(
        cls, objective: ObjectiveSpec | list[ObjectiveSpec]
    ) -> ObjectiveSpec | list[ObjectiveSpec]:
        check_objectives(objective if isinstance(objective, list) else [objective])
        return objective

    @field_validator("storage")
    @classmethod
    def _storage_stays_in_its_folder(cls, storage: str) -> str:
        if urlparse(storage).scheme not in ("", "file"):  # it names a local working folder
            try:
                bucket_path(storage)
            except UnsafeName as exc:
                raise ValueError(f"{exc} (it names the driver's working folder too)") from None
        return storage

    @field_validator("search")
    @classmethod
    def _sampler_for_objectives(cls, search: SearchSpec, info: ValidationInfo) -> SearchSpec:
        objective = info.data.get("objective")
        several = isinstance(objective, list) and len(objective) > 1
        if several and search.algorithm not in MULTI_OBJECTIVE_SAMPLERS:
            raise ValueError(
                f"search.algorithm {search.algorithm!r} cannot optimise several objectives "
                f"(objective lists {len(objective)}); use one of {list(MULTI_OBJECTIVE_SAMPLERS)}"
            )
        return search

    @model_validator(mode="after")
    def _first_objective(self) -> JobSpec:
        objective = self.objective
        self._objectives = list(objective) if isinstance(objective, list) else [objective]
        self.objective = self._objectives[0]
        return self

    @property
    def objectives(self) -> list[ObjectiveSpec]:
        """Every objective, the first (`objective`) leading."""
        return list(self._objectives) or [self.objective]

    @property
    def model_family(self) -> str | None:
        """The registered model family tuner's loop trains; None when a training function
        (`loop`) trains the trials (`model` then holds the loop's name)."""
        return None if self.loop is not None else self.model

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @field_serializer("objective")
    def _dump_objectives(self, objective: ObjectiveSpec) -> Any:
        """The saved spec keeps the list form when there are several, so it loads back alike."""
        if len(self._objectives) > 1:
            return [o.model_dump() for o in self._objectives]
        return objective.model_dump()

    @model_validator(mode="before")
    @classmethod
    def _loop_names_the_model(cls, raw: Any) -> Any:
        """A saved spec of a `loop` study holds `model: <the loop>`, which is no registered model:
        it reads back as if `model` were omitted."""
        return without_loop_model(raw)

    @model_validator(mode="after")
    def _defaults_from_name(self) -> JobSpec:
        if self.loop is not None:
            check_loop(self)
            self.model = self.loop
        elif self.model is None:
            raise ValueError(
                "model is required and has no default (a model family, or loop: a plug-in's "
                "training function)"
            )
        if self.search_space is None:
            self.search_space = self.model
        if self.tracking.experiment is None:
            self.tracking.experiment = self.name
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def without_loop_model(raw: Any) -> Any:
    """A raw spec (or exported config) without its `model` where that only repeats `loop`."""
    if isinstance(raw, dict) and "loop" in raw and raw.get("model") == raw["loop"]:
        return {key: value for key, value in raw.items() if key != "model"}
    return raw


def check_loop(spec: JobSpec) -> None:
    """Raise ValueError where a `loop` spec sets what only tuner's own loop reads."""
    loop = spec.loop
    if spec.model is not None:
        raise ValueError(
            f"model: {spec.model!r} with loop {loop!r}: a training function builds its own model; "
            "omit model (the study shows the loop's name as its model)"
        )
    if spec.search_space is None:
        raise ValueError(
            f"search_space is required with loop {loop!r}: a training function declares no "
            "hyperparameters, so the spec names every one it tunes (a mapping or a YAML file)"
        )
    training = spec.training
    own = {"precision": training.precision != "fp32", "compile": training.compile}
    own["data_on_device"] = training.data_on_device is not None
    for key, is_set in own.items():
        if is_set:
            raise ValueError(
                f"training.{key}: {getattr(training, key)!r} applies to tuner's own loop; "
                f"training function {loop!r} decides how it trains (trial.device, trial.data): "
                f"remove training.{key}"
            )


# --------------------------------------------------------------------------- loading


#: what yaml.safe_load raises besides YAMLError: huge ints (ValueError), deep nesting
YAML_ERRORS = (yaml.YAMLError, ValueError, RecursionError)


def parse_yaml(text: str, what: str) -> Any:
    """yaml.safe_load, with every way it can fail turned into a SpecError about `what`."""
    try:
        return yaml.safe_load(text)
    except YAML_ERRORS as exc:
        detail = brief(str(exc), 300)
        raise SpecError(f"{what} is not valid YAML: {detail}") from None


def read_yaml_file(path: str | Path, what: str) -> Any:
    """A YAML (or JSON) file's content; missing, unreadable or malformed files are SpecErrors."""
    file = Path(path)
    label = f"{what} {show(str(path))}"
    if not file.is_file():
        raise SpecError(f"{label} does not exist")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{label} is not UTF-8 text") from None
    return parse_yaml(text, label)


def show(value: Any, limit: int = 200) -> str:
    """repr() for messages: bounded, and safe for ints too long to print."""
    try:
        text = repr(value)
    except ValueError:  # int beyond sys.get_int_max_str_digits()
        text = f"<int of {value.bit_length()} bits>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_spec(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    """Read a YAML spec file, apply `--set` overrides, validate, make paths absolute."""
    raw = read_yaml_file(path, "spec file")
    if not isinstance(raw, dict):
        raise SpecError(f"spec file {show(str(path))} must hold a mapping of keys, got {show(raw)}")
    return spec_from_dict(raw, base_dir=Path(path).resolve().parent, overrides=overrides)


def spec_from_dict(
    raw: dict[str, Any], base_dir: Path | None = None, overrides: list[str] | None = None
) -> JobSpec:
    """Validate a spec given as a mapping; `base_dir` anchors the relative paths written in it."""
    raw = resolve_paths(copy.deepcopy(raw), base_dir or Path.cwd())
    for override in overrides or []:
        apply_override(raw, override)
    load_plugins(raw.get("plugins"))
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc)) from None
    spec = JobSpec.model_validate(resolve_paths(spec.model_dump(), Path.cwd()))
    if spec.search.storage is None:
        spec.search.storage = default_optuna_storage(spec.tracking.uri)
    return spec


def parse_override(text: str) -> tuple[list[str], Any]:
    """`scheduler.max_epochs=5` -> (["scheduler", "max_epochs"], 5); the value is typed by YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise SpecError(f"--set {text!r} must have the form dotted.key=value")
    parsed = (
        parse_yaml(value, f"--set {key.strip()}: value {show(value)}") if value.strip() else None
    )
    return key.strip().split("."), parsed


def apply_override(raw: dict[str, Any], text: str) -> None:
    """Set one dotted key in the raw spec mapping, creating sections as needed."""
    keys, value = parse_override(text)
    node = raw
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            prefix = ".".join(keys[: depth + 1])
            raise SpecError(
                f"--set {'.'.join(keys)}: {prefix} is {child!r}, not a mapping, so it has no "
                f"key {keys[depth + 1]!r}"
            )
        node = child
    node[keys[-1]] = value


def load_plugins(entries: Any) -> list[PluginCode]:
    """Import the spec's plug-ins (their decorators register models and datasets)."""
    if entries is None:
        return []
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise SpecError(
            f"plugins must be a list of .py files or module names but got {show(entries)}"
        )
    try:
        codes = [plugins.load(entry) for entry in entries]
    except plugins.PluginError as exc:
        raise SpecError(str(exc)) from None
    seen: dict[str, str] = {}
    for code in codes:
        if code.module in seen and seen[code.module] != code.entry:
            raise SpecError(
                f"plugins: {seen[code.module]!r} and {code.entry!r} would both be imported as "
                f"{code.module!r} (the later replacing the earlier); rename one of them"
            )
        seen[code.module] = code.entry
    return codes


# --------------------------------------------------------------------------- paths

_SQLITE = "sqlite:///"


def absolute_sqlite_url(url: str, base: Path) -> str:
    """`sqlite:///x.db` (relative to `base`) -> `sqlite:////abs/x.db`; other URLs unchanged."""
    if not url.startswith(_SQLITE):
        return url
    path = Path(url[len(_SQLITE) :])
    return url if path.is_absolute() or str(path) == ":memory:" else _SQLITE + str(base / path)


def _absolute_path(value: str, base: Path, key: str) -> str:
    if "\x00" in value:
        raise SpecError(f"invalid job spec: {key} {show(value)} contains a NUL character")
    if "://" in value or Path(value).is_absolute():
        return value
    return str((base / value).resolve())


def _looks_like_path(value: str) -> bool:
    return value.endswith((".yaml", ".yml")) or "/" in value


def resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Anchor every relative path of a raw spec mapping at `base`; leaves other values alone."""
    base = base.resolve()
    sections = {k: raw.get(k) for k in ("dataset", "tracking", "search")}
    if isinstance(sections["dataset"], dict) and isinstance(sections["dataset"].get("path"), str):
        raw["dataset"] = {
            **sections["dataset"],
            "path": _absolute_path(sections["dataset"]["path"], base, "dataset.path"),
        }
    for section, key in (("tracking", "uri"), ("search", "storage")):
        value = sections[section]
        if isinstance(value, dict) and isinstance(value.get(key), str):
            raw[section] = {**value, key: absolute_sqlite_url(value[key], base)}
    if isinstance(raw.get("storage"), str):
        raw["storage"] = _absolute_path(raw["storage"], base, "storage")
    if isinstance(raw.get("plugins"), list):
        raw["plugins"] = [
            _absolute_path(e, base, "plugins") if isinstance(e, str) and is_file_entry(e) else e
            for e in raw["plugins"]
        ]
    space = raw.get("search_space")
    if isinstance(space, str) and _looks_like_path(space):
        raw["search_space"] = _absolute_path(space, base, "search_space")
    return raw


def default_optuna_storage(tracking_uri: str) -> str:
    """`optuna.db` beside a SQLite tracking store, else in the working directory."""
    if tracking_uri.startswith(_SQLITE):
        folder = Path(tracking_uri[len(_SQLITE) :]).parent
    else:
        folder = Path.cwd()
    return _SQLITE + str(folder.resolve() / "optuna.db")


# --------------------------------------------------------------------------- error messages


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation names, through unions, lists and Annotated."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _models_in(arg)]


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The valid keys of the section at `loc` of `model`, for 'unknown key' messages."""
    for part in loc:
        if isinstance(part, int):  # an item of a list of sections
            continue
        field = model.model_fields.get(str(part))
        nested = _models_in(getattr(field, "annotation", None))
        if not nested:
            return []
        model = nested[0]
    return list(model.model_fields)


_UNION_MEMBER = re.compile(r"^([a-z-]+\[|(str|int|float|bool|none)$)")


def _describe_error(err: dict[str, Any], model: type[BaseModel]) -> str:
    loc = tuple(p for p in err["loc"] if p not in (OBJECTIVE_MAPPING, OBJECTIVE_LIST))
    if err["type"] != "extra_forbidden":  # an unknown key is a real name, whatever it looks like
        loc = tuple(p for p in loc if not (isinstance(p, str) and _UNION_MEMBER.match(p)))
    key = ".".join(str(p) for p in loc) or "spec"
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        valid = _fields_at(model, loc[:-1])
        hint = f"; valid keys here: {', '.join(valid)}" if valid else ""
        return f"{key} is not a known key (value {show(value)}){hint}"
    if err["type"] == "missing":
        return f"{key} is required and has no default"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if msg.startswith(key) or (not loc and err["type"] == "value_error"):
        return msg  # validator messages name their keys (across sections, at the top level)
    msg = msg.replace("Input should be", "must be").replace("String should", "must")
    return f"{key} {msg[0].lower()}{msg[1:]} but got {show(value)}"


def format_validation_error(
    exc: ValidationError, model: type[BaseModel] | None = None, what: str = "job spec"
) -> str:
    """One readable paragraph out of pydantic's errors (about `model`), de-duplicated."""
    lines = list(dict.fromkeys(_describe_error(e, model or JobSpec) for e in exc.errors()))
    return f"invalid {what}: " + "; ".join(lines)
