"""A study's results folder: the resolved spec saved beside Ray's state, finding a study's folder
again (a path, a storage URI, or its name in MLflow), and uploading a remote study's driver files.

`tuner resume`, `tuner sync` and the finalists read the folder through these; a remote study
(`storage: s3://...`) works in a local copy mirrored into its bucket (tuner.cluster.storage).
"""

from __future__ import annotations

import os
from pathlib import Path

from ray import tune

from trainables.plugins import PluginCode
from tuner.cluster.redaction import redact, without_passwords
from tuner.cluster.storage import (
    StudyFolder,
    download,
    has_file,
    is_remote,
    upload,
    working_folder,
)
from tuner.errors import SpecError, StudyError, brief
from tuner.spec.job_spec import (
    JobSpec,
    read_yaml_file,
    spec_from_dict,
)
from tuner.spec.plugin_files import copy_plugins
from tuner.tracking import schema
from tuner.tracking.buffer import HTTP_SETTINGS, BufferedWriter
from tuner.tracking.mlflow_callback import RUN_IDS_FILE, resolve_saved_run_ids
from tuner.tracking.runs import client_for, default_tracking_uri, find_study_run

SPEC_FILE = "spec.yaml"  # the resolved spec, beside Ray's state: what `tuner resume` reads


def sync_study(study: str, tracking_uri: str | None = None) -> tuple[int, int]:
    """`tuner sync`: send the MLflow writes a study buffered; returns (sent, still buffered)."""
    folder = find_results(study, tracking_uri)
    results_path = folder.local
    os.environ.update(HTTP_SETTINGS)
    writer = BufferedWriter(client_for(study_spec(results_path).tracking.uri), results_path)
    writer.on_resolve = lambda placeholders: resolve_saved_run_ids(
        results_path / RUN_IDS_FILE, placeholders
    )
    queued = len(writer.queue)
    writer.drain()
    publish(folder)
    return queued - len(writer.queue), len(writer.queue)


def save_spec(spec: JobSpec, plugins: tuple[PluginCode, ...], results_path: Path) -> None:
    """The resolved spec beside Ray's state, naming copies of its plug-in files kept there, so
    that `tuner resume` imports the code the study ran even if the originals changed or moved."""
    entries = copy_plugins(plugins, results_path)
    saved = without_passwords(spec).model_copy(update={"plugins": entries})
    (results_path / SPEC_FILE).write_text(saved.to_yaml())


def study_spec(results_path: Path) -> JobSpec:
    """The resolved spec a study saved beside Ray's state (its plug-ins relative to it)."""
    raw = read_yaml_file(results_path / SPEC_FILE, "study spec")
    return spec_from_dict(raw, base_dir=results_path)


def first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return brief(text[0]) if text else type(exc).__name__


def find_results(study: str, tracking_uri: str | None) -> StudyFolder:
    """A study's Ray run folder: given directly (a path or a storage URI), or found through its
    MLflow parent run. A remote study's driver files are downloaded into its working folder."""
    location = study
    if not is_remote(study) and not (Path(study).resolve() / SPEC_FILE).is_file():
        parent = find_study_run(client_for(tracking_uri or default_tracking_uri()), study)
        location = parent.data.tags.get(schema.RESULTS_PATH_TAG, "")
    if is_remote(location):
        folder = fetch_remote_results(location.rstrip("/"))
    else:
        folder = StudyFolder(Path(location).resolve())
    if not (folder.local / SPEC_FILE).is_file() or not tune.Tuner.can_restore(folder.location):
        raise SpecError(
            f"STUDY: {study!r} has no restorable Ray run folder ({folder.location}); resume "
            "takes a results folder or URI, or a study name or run id from the tracking store"
        )
    return folder


def fetch_remote_results(uri: str) -> StudyFolder:
    """The driver's files of a remote execution, downloaded (nothing when it has no spec)."""
    local = working_folder(uri)  # a URI that leads out of it is refused before any request
    try:
        return download(uri) if has_file(uri, SPEC_FILE) else StudyFolder(local, uri)
    except OSError as exc:
        raise StudyError(
            f"storage: {redact(uri)} cannot be read ({first_line(exc)}); check the storage's "
            "endpoint and credentials (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
            "AWS_DEFAULT_REGION for s3://)"
        ) from None


def publish(folder: StudyFolder) -> None:
    """Upload a remote study's driver files to its URI (nothing for a local study)."""
    try:
        upload(folder)
    except OSError as exc:
        raise StudyError(
            f"storage: the study's files could not be uploaded to {redact(folder.uri)} "
            f"({first_line(exc)}); they are in {folder.local}. Check the storage's endpoint and "
            "credentials (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
            "AWS_DEFAULT_REGION for s3://)"
        ) from None
