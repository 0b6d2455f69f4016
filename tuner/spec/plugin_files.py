"""Plug-in code wherever a study goes: beside its results, in its MLflow parent run, beside an
exported config, in a Ray Job.

A file plug-in travels as the text the study imported (`PluginCode.source`), written to
`plugins/<module>.py` in the folder that needs it, and named relative to that folder, so the
folder can move and the original file can change or disappear. A module plug-in travels by name;
when it is a local package (not installed in site-packages) a job ships its folder. What an
export takes back from an MLflow run, and when, is `tuner.results.exported_plugins`' business.
"""

from __future__ import annotations

import json
import sysconfig
from collections.abc import Iterable, Sequence
from pathlib import Path

from trainables.plugins import PluginCode, is_file_entry
from tuner.tracking import schema

PLUGINS_DIR = "plugins"  # beside a spec, an exported config, in a job's working dir


def copy_name(module: str) -> str:
    """Where a file plug-in's copy lives, relative to the folder that holds it."""
    return f"{PLUGINS_DIR}/{module}.py"


def relative_entries(entries: Iterable[str]) -> list[str]:
    """Spec entries naming the copies `copy_plugins` writes (module names as they are)."""
    return [copy_name(Path(e).stem) if is_file_entry(e) else e for e in entries]


def copy_plugins(codes: Sequence[PluginCode], folder: Path) -> list[str]:
    """Write each file plug-in's text, as imported, to `folder/plugins/<module>.py`; returns
    the entries naming them relative to `folder` (module plug-ins by name)."""
    for code in codes:
        if code.is_file:
            target = folder / copy_name(code.module)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(code.source, encoding="utf-8")
    return relative_entries(code.entry for code in codes)


def plugins_tag(codes: Sequence[PluginCode]) -> dict[str, str]:
    """The parent run's tag: which plug-ins the study imported, and the hash of each one's code."""
    records = [{"entry": c.entry, "module": c.module, "sha256": c.sha256} for c in codes]
    return {schema.PLUGINS_TAG: json.dumps(records)} if records else {}


def log_plugins(client, run_id: str, codes: Sequence[PluginCode]) -> None:
    """Each file plug-in's text as the artifact `plugins/<module>.py` of the run."""
    for code in codes:
        if code.is_file:
            client.log_text(run_id, code.source, copy_name(code.module))


def resolve_entries(entries: Iterable[str], base: Path) -> list[str]:
    """File entries anchored at `base` (the folder of the file naming them); modules unchanged."""
    return [
        str((base / e).resolve()) if is_file_entry(e) and not Path(e).is_absolute() else e
        for e in entries
    ]


def local_module_path(code: PluginCode) -> Path | None:
    """The folder (or single file) of a module plug-in's top-level package when it is local
    code, not installed into this Python; None for file plug-ins and installed modules."""
    if code.is_file or not code.path:
        return None
    path = Path(code.path).resolve()
    if path.name == "__init__.py":
        path = path.parent
    for _ in code.module.split(".")[1:]:  # up to the top-level package
        path = path.parent
    installed = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib", "stdlib")}
    if any(root == path or root in path.parents for root in installed):
        return None
    return path


def code_paths(codes: Sequence[PluginCode]) -> list[str]:
    """What a logged model needs to be loaded where its plug-ins are not installed: each file
    plug-in, and each local module plug-in's package (installed modules must be installed there
    too)."""
    paths = [code.path if code.is_file else local_module_path(code) for code in codes]
    return list(dict.fromkeys(str(p) for p in paths if p))
