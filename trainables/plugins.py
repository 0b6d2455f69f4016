"""Plug-ins: user code that registers models, datasets and training functions, imported by the
driver and by trials.

A plug-in is a `.py` file or an importable module. Importing it runs its `register_model`,
`register_dataset` and `register_training` decorators. A file is imported under its stem from
its text, and that text travels with the study (`PluginCode.source`), so a trial on a node
without the file imports the same code; a module is imported by name wherever it runs (it must
be installed there). Importing the same code again is a no-op; a file whose text changed
replaces what it registered.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from trainables.data import DATASETS
from trainables.models import MODELS
from trainables.registry import DuplicateNameError
from trainables.training_functions import TRAINING_FUNCTIONS

MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
SHA_ATTRIBUTE = "__tuner_plugin_sha256__"


class PluginError(ValueError):
    """A plug-in that cannot be found or imported; the message names it, the line and the rule."""


@dataclass(frozen=True)
class PluginCode:
    """One imported plug-in: what it was imported as, and what a trial needs to import it."""

    entry: str  # as the spec names it: a file's absolute path or a module name
    module: str  # the module name it is imported as (a file's stem)
    path: str | None  # its file (a module's __file__; None for a namespace package)
    source: str | None  # a file plug-in's text; None for a module (imported by name)
    sha256: str  # of the file's bytes ('' when there is no file)

    @property
    def is_file(self) -> bool:
        return self.source is not None


def is_file_entry(entry: str) -> bool:
    return entry.endswith(".py") or "/" in entry


def load(entry: str) -> PluginCode:
    """Import the plug-in `entry` (a `.py` file path or a module name) in this process."""
    code = read_file(Path(entry)) if is_file_entry(entry) else import_module(entry)
    ensure(code)
    return code


def read_file(path: Path) -> PluginCode:
    if not path.is_file():
        raise PluginError(
            f"plugins: {str(path)!r} does not exist (a .py file, relative to the spec, or the "
            "name of an importable module)"
        )
    if path.suffix != ".py":
        raise PluginError(f"plugins: {str(path)!r} is not a .py file")
    try:
        source = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise PluginError(f"plugins: {str(path)!r} is not UTF-8 text") from None
    digest = hashlib.sha256(source.encode("utf-8")).hexdigest()
    return PluginCode(str(path), path.stem, str(path), source, digest)


def import_module(name: str) -> PluginCode:
    if not MODULE_NAME.match(name):
        raise PluginError(
            f"plugins: {name!r} is neither a .py file nor a module name (dotted identifiers)"
        )
    module = _import_by_name(name)
    file = getattr(module, "__file__", None)
    digest = hashlib.sha256(Path(file).read_bytes()).hexdigest() if file else ""
    return PluginCode(name, name, file, None, digest)


def ensure(code: PluginCode) -> None:
    """Make sure `code` is imported here (a trial calls this before building its model)."""
    if not code.is_file:
        _import_by_name(code.module)
        return
    current = sys.modules.get(code.module)
    if current is not None:
        if getattr(current, SHA_ATTRIBUTE, None) == code.sha256:
            return
        if not hasattr(current, SHA_ATTRIBUTE):
            raise PluginError(
                f"plugins: {code.path!r} would be imported as {code.module!r}, the name of a "
                f"module already imported ({getattr(current, '__file__', None) or 'built in'}); "
                "rename the file"
            )
        forget(code.module)
    _exec_file(code)


def module_file(module: str) -> str | None:
    """The file of `module` when it is user code (a plug-in), None for tuner's own modules."""
    if module.split(".")[0] in ("trainables", "tuner"):
        return None
    return getattr(sys.modules.get(module), "__file__", None)


def forget(module: str) -> None:
    """Drop a plug-in module and everything it registered."""
    sys.modules.pop(module, None)
    MODELS.forget(module)
    DATASETS.forget(module)
    TRAINING_FUNCTIONS.forget(module)


def _exec_file(code: PluginCode) -> None:
    spec = importlib.util.spec_from_loader(code.module, loader=None, origin=code.path)
    module = importlib.util.module_from_spec(spec)
    module.__file__ = code.path
    setattr(module, SHA_ATTRIBUTE, code.sha256)
    sys.modules[code.module] = module
    try:
        exec(compile(code.source, code.path, "exec"), module.__dict__)
    except BaseException as exc:
        forget(code.module)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise PluginError(import_failure(code.path, exc)) from None


def _import_by_name(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise PluginError(
                f"plugins: no module named {name!r} here (a .py file path, or a module "
                "installed in this Python)"
            ) from None
        raise PluginError(import_failure(name, exc, _module_file(name))) from None
    except Exception as exc:
        raise PluginError(import_failure(name, exc, _module_file(name))) from None


def _module_file(name: str) -> str | None:
    """The file module `name` is imported from (to find its frame in a traceback)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None else None


def import_failure(what: str | None, exc: BaseException, file: str | None = None) -> str:
    """'plugins: X failed to import: line N of FILE: Error: message' (the failing frame: the
    plug-in's own last line on the way to the error, else the traceback's last). `file` is the
    plug-in's file when `what` is a module name."""
    file = file or what
    if isinstance(exc, SyntaxError) and exc.lineno:
        where = f"line {exc.lineno} of {exc.filename or file}"
        message = exc.msg
    else:
        frames = traceback.extract_tb(exc.__traceback__)
        own = [f for f in frames if f.filename == file] or frames
        where = f"line {own[-1].lineno} of {own[-1].filename}" if own else str(file)
        message = " ".join(str(exc).split())  # one line
    if isinstance(exc, DuplicateNameError):
        return f"plugins: {what!r}: {where}: {message}"
    return f"plugins: {what!r} failed to import: {where}: {type(exc).__name__}: {message}"
