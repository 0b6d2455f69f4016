"""Search-space YAML -> an Optuna define-by-run function, and samplers by name.

One entry per hyperparameter, in Optuna's vocabulary (bounds inclusive, as in Optuna):

    lr:        {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
    layers:    {type: int, low: 1, high: 3, step: 1}
    optimizer: {type: categorical, choices: [adam, sgd]}
    momentum:  {type: float, low: 0.5, high: 0.99, when: {optimizer: sgd}}
    activation: relu                                   # a constant

`when` makes an entry conditional on categorical entries taking one of the given values (a value
or a list; several keys must all hold). Conditional entries are sampled after what they depend on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import optuna
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

import search_spaces
from trainables.loop import OPTIMIZER_DEFAULTS, check_batch_size
from trainables.models import MODELS
from trainables.recipe import RECIPE_DEFAULTS, check_recipe_value
from tuner.errors import SpecError
from tuner.spec.job_spec import read_yaml_file

Scalar = bool | int | float | str | None
Condition = dict[str, Scalar | list[Scalar]]


class _Param(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    when: Condition | None = None

    def check_samplable(self) -> None:
        """Optuna must be able to build the distribution (after our own, clearer checks)."""
        try:
            self.distribution()
        except (ValueError, ArithmeticError) as exc:
            raise ValueError(f"Optuna cannot sample this entry: {exc}") from None


class FloatParam(_Param):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> FloatParam:
        check_bounds(self.low, self.high, self.log, self.step)
        self.check_samplable()
        return self

    def suggest(self, trial: optuna.Trial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)

    def distribution(self) -> optuna.distributions.BaseDistribution:
        return optuna.distributions.FloatDistribution(
            self.low, self.high, log=self.log, step=self.step
        )

    def contains(self, value: Any) -> bool:
        if not is_number(value) or not self.low <= value <= self.high:
            return False
        if self.step is None:
            return True
        steps = (value - self.low) / self.step
        return math.isclose(steps, round(steps), abs_tol=1e-8)


class IntParam(_Param):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _bounds(self) -> IntParam:
        check_bounds(self.low, self.high, self.log, self.step if self.step != 1 else None)
        self.check_samplable()
        return self

    def suggest(self, trial: optuna.Trial, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, log=self.log, step=self.step)

    def distribution(self) -> optuna.distributions.BaseDistribution:
        return optuna.distributions.IntDistribution(
            self.low, self.high, log=self.log, step=self.step
        )

    def contains(self, value: Any) -> bool:
        return (
            isinstance(value, int)
            and not isinstance(value, bool)
            and self.low <= value <= self.high
            and (value - self.low) % self.step == 0
        )


class CategoricalParam(_Param):
    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> CategoricalParam:
        # 0 == False and 1 == 1.0: Optuna and `when` could not tell such choices apart
        for i, a in enumerate(self.choices):
            if any(a == b for b in self.choices[i + 1 :]):
                raise ValueError(f"choices must be distinct but got {self.choices}")
        return self

    def suggest(self, trial: optuna.Trial, name: str) -> Scalar:
        return trial.suggest_categorical(name, self.choices)

    def distribution(self) -> optuna.distributions.BaseDistribution:
        return optuna.distributions.CategoricalDistribution(self.choices)

    def contains(self, value: Any) -> bool:
        """One of the choices, of the same type (True is not the choice 1)."""
        return any(type(value) is type(c) and value == c for c in self.choices)


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]
_PARAM = TypeAdapter(Param)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_bounds(low: float, high: float, log: bool, step: float | None) -> None:
    if not math.isfinite(high - low):
        raise ValueError(f"high - low must be a finite number but got low={low}, high={high}")
    if step is not None and (high - low) / step > 1e9:
        raise ValueError(f"step {step} makes more than 1e9 values between {low} and {high}")
    if low >= high:
        raise ValueError(f"low must be less than high but got low={low}, high={high}")
    if log and low <= 0:
        raise ValueError(f"log: true needs low > 0 but got low={low}")
    if log and step is not None:
        raise ValueError("log and step cannot be combined (Optuna's rule)")


@dataclass
class SearchSpace:
    """Sampled entries in dependency order, plus constants; callable as a define-by-run space."""

    params: dict[str, FloatParam | IntParam | CategoricalParam]
    constants: dict[str, Any]
    where: str = "search_space"  # how messages name the space: "search_space (cnn.yaml)"

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        """Suggest every active entry on `trial`; return the constants (OptunaSearch's contract)."""
        self.sample(trial)
        return dict(self.constants)

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        """The trial's full config: suggested values of the active entries, and the constants."""
        values: dict[str, Any] = {}
        for name, param in self.params.items():
            if is_active(param.when, values):
                values[name] = param.suggest(trial, name)
        return {**values, **self.constants}

    def names(self) -> list[str]:
        return [*self.params, *self.constants]


def is_active(when: Condition | None, values: dict[str, Any]) -> bool:
    if not when:
        return True
    for parent, wanted in when.items():
        allowed = wanted if isinstance(wanted, list) else [wanted]
        if parent not in values or values[parent] not in allowed:
            return False
    return True


# --------------------------------------------------------------------------- loading


def read_space(source: str | dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The raw mapping of a space given by built-in name, YAML path or inline mapping."""
    if isinstance(source, dict):
        return source, "search_space"
    path = search_spaces.path_of(source) or Path(source)
    if not path.is_file():
        raise SpecError(
            f"search_space: {source!r} is neither a built-in space "
            f"({', '.join(search_spaces.names())}) nor an existing YAML file"
        )
    raw = read_yaml_file(path, "search_space file")
    if not isinstance(raw, dict) or not raw:
        raise SpecError(f"search_space: {str(path)!r} must be a non-empty mapping of entries")
    return raw, f"search_space ({path.name})"


def parse_space(raw: dict[str, Any], where: str = "search_space") -> SearchSpace:
    """Validate the entries and their `when` conditions; order them parents first."""
    params: dict[str, Any] = {}
    constants: dict[str, Any] = {}
    for name, entry in raw.items():
        if not isinstance(name, str):
            raise SpecError(f"{where}: entry name {name!r} must be a string")
        if not isinstance(entry, dict):
            constants[name] = entry
            continue
        try:
            params[name] = _PARAM.validate_python(entry)
        except ValidationError as exc:
            raise SpecError(f"{where}.{name}: {_first_error(exc)} (entry {entry!r})") from None
    for name, param in params.items():
        check_condition(name, param.when, params, where)
    return SearchSpace(order_by_dependency(params, where), constants, where)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"][1:])
    if not key and str(err["type"]).startswith("union_tag"):
        key = "type"
    msg = str(err["msg"]).removeprefix("Value error, ").replace("Input should be", "must be")
    if err["type"] == "missing":
        return f"{key} is required"
    return f"{key} {msg}" if key else msg


def check_condition(name: str, when: Condition | None, params: dict[str, Any], where: str) -> None:
    """`when` must name existing categorical entries and values among their choices."""
    categoricals = [n for n, p in params.items() if isinstance(p, CategoricalParam)]
    for parent, wanted in (when or {}).items():
        key = f"{where}.{name}.when.{parent}"
        if parent == name:
            raise SpecError(f"{key}: an entry cannot depend on itself")
        if not isinstance(params.get(parent), CategoricalParam):
            raise SpecError(
                f"{key}: {parent!r} must be a categorical entry of the space "
                f"(categoricals: {categoricals})"
            )
        for value in wanted if isinstance(wanted, list) else [wanted]:
            if value not in params[parent].choices:
                raise SpecError(
                    f"{key}: {value!r} is not one of {parent}'s choices {params[parent].choices}"
                )


def order_by_dependency(params: dict[str, Any], where: str) -> dict[str, Any]:
    """Entries in their written order, except that each comes after the entries its `when` names."""
    ordered: dict[str, Any] = {}
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in ordered:
            return
        if name in visiting:
            raise SpecError(f"{where}.{name}.when: the conditions form a cycle")
        visiting.add(name)
        for parent in params[name].when or {}:
            visit(parent)
        visiting.discard(name)
        ordered[name] = params[name]

    for name in params:
        visit(name)
    return ordered


def check_hyperparameters(space: SearchSpace, model: str, where: str) -> None:
    """Every entry must be a hyperparameter the model or the optimiser reads (catches typos)."""
    known = {*MODELS.get(model).defaults, *OPTIMIZER_DEFAULTS}
    unknown = [n for n in space.names() if n not in known]
    if unknown:
        raise SpecError(
            f"{where}: {', '.join(map(repr, unknown))} is not a hyperparameter of model "
            f"{model!r}; known: {', '.join(sorted(known))}"
        )


def drawable(space: SearchSpace, name: str, where: str) -> list[tuple[str, Any]]:
    """(key, value) for what entry `name` can draw that a rule may refuse: an int or float
    entry's bounds, each choice, a constant; none when the space has no such entry."""
    param = space.params.get(name)
    if isinstance(param, FloatParam | IntParam):
        return [(f"{where}.{name}.low", param.low), (f"{where}.{name}.high", param.high)]
    if isinstance(param, CategoricalParam):
        return [(f"{where}.{name}.choices", choice) for choice in param.choices]
    if name in space.constants:
        return [(f"{where}.{name}", space.constants[name])]
    return []


def check_batch_sizes(space: SearchSpace, where: str) -> None:
    """Every batch_size the space can draw must train (`trainables.loop.check_batch_size`): a
    trial at batch_size 1 would take no optimizer step, so it is refused here, before Ray."""
    values = drawable(space, "batch_size", where)
    if values and values[0][0].endswith(".low"):
        values = values[:1]  # the smallest it can draw
    for key, value in values:
        try:
            check_batch_size(value, key)
        except ValueError as exc:
            raise SpecError(str(exc)) from None


def check_batch_split(space: SearchSpace, workers: int) -> None:
    """With `resources.workers` above 1 each worker trains batch_size / workers rows of every
    global batch: every batch_size the space can draw (or the default, when it draws none) must
    divide by the worker count. An int range qualifies only when its low and step do (with
    log sampling, never)."""
    if workers == 1:
        return
    where = space.where
    param = space.params.get("batch_size")
    if isinstance(param, IntParam | FloatParam):
        step = param.step or 0
        if param.log or param.low % workers or step % workers or not step:
            raise SpecError(
                f"{where}.batch_size: a range from {param.low:g} to {param.high:g} "
                f"(step {step or 'none'}{', log' if param.log else ''}) draws batch sizes "
                f"that resources.workers {workers} does not divide (each worker trains "
                "batch_size / workers rows of every batch); use choices that are multiples of "
                f"{workers}, or a step and low that are"
            )
        return
    values = drawable(space, "batch_size", where) or [
        ("the default batch_size", OPTIMIZER_DEFAULTS["batch_size"])
    ]
    for key, value in values:
        if is_number(value) and value % workers:
            raise SpecError(
                f"{key}: {value!r} is not divisible by resources.workers {workers}: batch_size "
                "is the global batch, and each worker trains batch_size / workers rows of it; "
                f"use batch sizes that are multiples of {workers}"
            )


def check_recipe(space: SearchSpace, dataset: Any = None, max_epochs: int | None = None) -> None:
    """Every value of a recipe knob (`trainables.recipe`) the space can draw must run: known
    schedule and augmentation names, warmup_epochs of 0 or more, grad_clip_norm above 0,
    label_smoothing in [0, 1). With the study's `dataset` and `max_epochs` also: no label
    smoothing for regression, augmentation for images only (flips where the dataset allows
    them), warm-up shorter than max_epochs. Refused with a SpecError, before Ray."""
    for name in RECIPE_DEFAULTS:
        for key, value in drawable(space, name, space.where):
            try:
                check_recipe_value(name, value, key, dataset, max_epochs)
            except ValueError as exc:
                raise SpecError(str(exc)) from None


def load_space(source: str | dict[str, Any], model: str | None) -> SearchSpace:
    """Read, validate and compile a search space for `model` (None: for a training function,
    which declares no hyperparameters to check names against and trains its own way: no batch
    size or recipe rule applies); raise `SpecError` if it is bad."""
    raw, where = read_space(source)
    space = parse_space(raw, where)
    if model is not None:
        check_hyperparameters(space, model, where)
        check_batch_sizes(space, where)
        check_recipe(space)
    return space
