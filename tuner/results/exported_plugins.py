"""The plug-ins an export writes beside its configs: code the user has, or code from the study's
MLflow run only with the user's say-so.

Whoever can write to the team's MLflow server can replace a run's plug-in artifact and the hash
recorded beside it, so that hash proves nothing. A plug-in file is therefore taken from a file
the user already has holding the text the study recorded (an earlier export's copy, the original
file, the local results folder's copy), and from the run only with `trust=True`, which shows
each file's source and sha256 before it is written or imported. A module plug-in names code
installed in the user's Python, which is imported by name as the study did.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from trainables.plugins import MODULE_NAME, is_file_entry
from tuner.cluster.storage import is_remote
from tuner.errors import SpecError, brief
from tuner.safe_names import is_file_name
from tuner.spec.plugin_files import copy_name, relative_entries
from tuner.tracking import schema

PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
SHA256_HEX = 64


@dataclass(frozen=True)
class RecordedPlugin:
    """One plug-in as a study's parent run recorded it (checked: it names no path)."""

    entry: str  # as the study's spec named it: a file's absolute path or a module name
    module: str
    sha256: str

    @property
    def is_file(self) -> bool:
        return is_file_entry(self.entry)


def recorded_plugins(run) -> list[RecordedPlugin]:
    """The plug-ins the run's tag lists; a SpecError when the tag is not what tuner writes."""
    text = run.data.tags.get(schema.PLUGINS_TAG)
    if not text:
        return []
    try:
        records = [RecordedPlugin(**fields) for fields in json.loads(text)]
    except (TypeError, ValueError):
        raise malformed(run, text) from None
    for record in records:
        if not well_formed(record):
            raise malformed(run, str(record))
    return records


def well_formed(record: RecordedPlugin) -> bool:
    """Strings only; a file's module a plain file name (it names `plugins/<module>.py`), a
    module plug-in a dotted name; a sha256 (empty for a namespace package)."""
    fields = (record.entry, record.module, record.sha256)
    if not all(isinstance(field, str) for field in fields):
        return False
    if record.is_file:
        named = is_file_name(record.module)
    else:
        named = record.module == record.entry and bool(MODULE_NAME.match(record.entry))
    return named and len(record.sha256) in (0, SHA256_HEX)


def malformed(run, what: str) -> SpecError:
    return SpecError(
        f"plugins: run {run.info.run_id}'s tag {schema.PLUGINS_TAG} is not what tuner writes "
        f"({brief(what)}): a list of entry, module and sha256, a file plug-in's module a plain "
        "file name, a module plug-in's a dotted name"
    )


def fetch_plugins(
    client, run, folder: Path, trust: bool = False, show: Callable[[str], None] = print
) -> list[str]:
    """Write the study's plug-in files into `folder/plugins/`; returns the entries naming them
    relative to `folder` (module plug-ins by name). Each file's text comes from a file the user
    has (`local_text`), else, with `trust`, from the run (shown first), else a SpecError says
    how to trust it."""
    records = recorded_plugins(run)
    for record in records:
        if not record.is_file:
            continue
        places = trusted_places(record, run, folder)
        text = local_text(record, places)
        if text is None and not trust:
            raise untrusted(record, run, places)
        if text is None:
            text = download_text(client, run.info.run_id, copy_name(record.module), record)
            show(shown(record, run.info.run_id, text))
        target = folder / copy_name(record.module)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return relative_entries(record.entry for record in records)


def trusted_places(record: RecordedPlugin, run, folder: Path) -> list[Path]:
    """The files of the user's own that may hold the plug-in's text: the copy beside an earlier
    export, the file the study imported, the copy in the study's local results folder."""
    places = [folder.resolve() / copy_name(record.module), Path(record.entry)]
    results = run.data.tags.get(schema.RESULTS_PATH_TAG, "")
    if results and not is_remote(results):  # a bucket is a shared store too
        places.append(Path(results) / copy_name(record.module))
    return [place for place in places if place.is_absolute()]


def local_text(record: RecordedPlugin, places: list[Path]) -> str | None:
    """The text of the first `places` file that hashes to what the study recorded."""
    for place in places:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            text = place.read_text(encoding="utf-8")
            if sha256(text) == record.sha256:
                return text
    return None


def untrusted(record: RecordedPlugin, run, places: list[Path]) -> SpecError:
    looked = ", ".join(str(p) for p in places)
    return SpecError(
        f"plugins: the study imported {Path(record.entry).name!r} (sha256 "
        f"{record.sha256[:12]}...), and no file here holds that text (looked at {looked}); "
        f"its copy in MLflow run {run.info.run_id} is code from a shared store, which tuner "
        "runs only with your say-so: read it (mlflow artifacts download --run-id "
        f"{run.info.run_id} --artifact-path {copy_name(record.module)}), then export again "
        "with --trust-plugins, which shows each file's source and hash before using it"
    )


def shown(record: RecordedPlugin, run_id: str, text: str) -> str:
    """What `--trust-plugins` shows of a file before it is written and imported."""
    rule = "-" * 72
    return (
        f"Plug-in {copy_name(record.module)} from MLflow run {run_id}, trusted by "
        f"--trust-plugins (sha256 {sha256(text)}):\n{rule}\n{text.rstrip()}\n{rule}"
    )


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def download_text(client, run_id: str, name: str, record: RecordedPlugin) -> str:
    """The text of the run's artifact `name`, which must hash to what the study recorded."""
    with tempfile.TemporaryDirectory(prefix="tuner-plugin-") as tmp, quiet_downloads():
        try:
            text = Path(client.download_artifacts(run_id, name, tmp)).read_text(encoding="utf-8")
        except Exception as exc:  # MLflow's own errors or OSError, depending on the store
            raise SpecError(
                f"plugins: the study's run {run_id} has no readable artifact {name!r} "
                f"({type(exc).__name__}); it recorded the plug-in {record.entry!r}"
            ) from None
    if sha256(text) != record.sha256:
        raise SpecError(
            f"plugins: artifact {name!r} of run {run_id} has sha256 {sha256(text)[:12]}..., "
            f"not the {record.sha256[:12]}... the study recorded for {record.entry!r}"
        )
    return text


@contextlib.contextmanager
def quiet_downloads() -> Iterator[None]:
    """No MLflow progress bar on the terminal for a file of a few kilobytes."""
    saved = os.environ.get(PROGRESS_BAR)
    os.environ[PROGRESS_BAR] = "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(PROGRESS_BAR, None)
        else:
            os.environ[PROGRESS_BAR] = saved
