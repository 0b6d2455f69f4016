"""Where a study's results live: a local folder, or object storage (`storage: s3://bucket/prefix`).

With a local `storage`, the driver writes its files (the journal, spec.yaml, plug-in copies, MLflow
run ids, the log, trials.csv, report.html) into Ray's run folder `<storage>/<execution>`, beside
Ray's state and the trials' checkpoints. With a remote one, Ray writes its state and every
checkpoint to `<storage>/<execution>` itself; the driver works in a local working folder,
`.tuner/<scheme>/<bucket>/<prefix>/<execution>` under its working directory, whose files reach the
same prefix: copied into Ray's staging folder at every experiment snapshot (`StagingMirror`, so
Ray uploads them with, and after, the state they belong to), and uploaded whole when the study
starts and ends. `tuner resume` downloads them again (`download`), so a study resumes from the
bucket alone. Endpoints and credentials come from the standard variables (`AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION` for S3), read by pyarrow.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from ray.tune import Callback

from tuner.errors import SpecError, StudyError
from tuner.safe_names import UnsafeName, bucket_path, relative_key

WORK_DIR = ".tuner"  # under the driver's working directory: remote studies' working folders
TRIAL_PREFIX = "trial_"  # the trials' folders (checkpoints): never downloaded by the driver


def is_remote(location: str) -> bool:
    """A URI pyarrow opens (s3://, gs://, ...), not a local path or a file:// URI."""
    return urlparse(location).scheme not in ("", "file")


@dataclass(frozen=True)
class StudyFolder:
    """One execution's results: the driver's local folder, and its URI when `storage` is remote."""

    local: Path
    uri: str | None = None

    @property
    def location(self) -> str:
        """What Ray is given (and the parent run records): the URI, else the local path."""
        return self.uri or str(self.local)


def working_folder(uri: str) -> Path:
    """The local folder a driver works in for the remote execution `uri` (a SpecError when
    the URI's bucket or path would lead out of `.tuner/`: it may come from an MLflow tag)."""
    try:
        relative = bucket_path(uri)
    except UnsafeName as exc:
        raise SpecError(str(exc)) from None
    return Path.cwd() / WORK_DIR / urlparse(uri).scheme / relative


def study_folder(storage: str, execution: str) -> StudyFolder:
    """Where an execution of a study with this `storage` keeps its results."""
    if not is_remote(storage):
        return StudyFolder(Path(storage) / execution)
    uri = f"{storage.rstrip('/')}/{execution}"
    return StudyFolder(working_folder(uri), uri)


def _filesystem(uri: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(uri)


def upload(folder: StudyFolder) -> None:
    """Every file of the local folder to its URI (nothing for a local study)."""
    if folder.uri is None:
        return
    import pyarrow.fs

    fs, path = _filesystem(folder.uri)
    pyarrow.fs.copy_files(str(folder.local), path, destination_filesystem=fs)


def remote_files(uri: str) -> list[str]:
    """The driver's files at `uri`, relative to it: all but the trials' folders."""
    import pyarrow.fs

    fs, root = _filesystem(uri)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True))
    names = [PurePosixPath(i.path).relative_to(root) for i in infos if i.is_file]
    return [str(n) for n in names if not n.parts[0].startswith(TRIAL_PREFIX)]


def has_file(uri: str, name: str) -> bool:
    import pyarrow.fs

    fs, root = _filesystem(uri)
    return fs.get_file_info(f"{root}/{name}").type == pyarrow.fs.FileType.File


def download(uri: str) -> StudyFolder:
    """The driver's files of the remote execution `uri` into its working folder, replacing what
    is there: the bucket is what a resume continues from."""
    fs, root = _filesystem(uri)
    folder = StudyFolder(working_folder(uri), uri)
    for name in remote_files(uri):
        try:
            target = folder.local / relative_key(name, "bucket key")
        except UnsafeName as exc:
            raise StudyError(f"storage: {exc}; remove it from the bucket") from None
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(f"{root}/{name}") as source, open(target, "wb") as out:
            shutil.copyfileobj(source, out)
    return folder


def mirror_files(source: Path, target: Path, copied: dict[str, tuple[int, int]]) -> list[str]:
    """Copy the files of `source` that changed since `copied` recorded them into `target`;
    returns their names."""
    changed = []
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        name = path.relative_to(source).as_posix()
        stat = path.stat()
        if copied.get(name) == (stat.st_size, stat.st_mtime_ns):
            continue
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, destination)
        copied[name] = (stat.st_size, stat.st_mtime_ns)
        changed.append(name)
    return changed


class StagingMirror(Callback):
    """The driver's working files into Ray's experiment staging folder at every snapshot.

    Ray saves its experiment state into that folder, then asks the callbacks for their state
    (`get_state`, here: copy what changed), then uploads the folder to the storage. So each upload
    carries a journal at least as new as the state it carries: what `tuner resume` needs to replay
    every trial Ray's state knows, except in an upload the next snapshot overlaps, which can
    carry the newer state beside the older journal (`tuner resume` then runs the trials whose end
    the journal lacks again: `study.rerun_trials_the_journal_missed`).
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.staging: Path | None = None
        self._copied: dict[str, tuple[int, int]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"folder": self.folder}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restored by `tuner resume`: its working folder may be elsewhere; Ray's staging folder
        is new, so everything is copied again."""
        self.__init__(relocated_folder(state["folder"]))

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if self.staging is None and trials:
            self.staging = Path(trials[0].local_experiment_path)

    def get_state(self) -> None:
        if self.staging is not None and self.folder.is_dir():
            mirror_files(self.folder, self.staging, self._copied)
        return None


# --------------------------------------------------------------------------- a moved study folder

_restoring_into: Path | None = None  # set by `restoring_into` while Ray unpickles a study


@contextlib.contextmanager
def restoring_into(folder: Path) -> Iterator[None]:
    """While Ray restores a study (`tuner resume`), the objects it unpickles (recorder, stopper,
    scheduler, tracking, mirror) find their files in `folder`, wherever the study started: a
    remote study's working folder is downloaded afresh, perhaps by another machine or directory."""
    global _restoring_into
    _restoring_into = folder
    try:
        yield
    finally:
        _restoring_into = None


def relocated_folder(folder: Path | None) -> Path | None:
    """The study folder pickled when the study started, as it is now (see `restoring_into`)."""
    return folder if folder is None or _restoring_into is None else _restoring_into


def relocated(path: Path | None) -> Path | None:
    """A study file's path pickled when the study started, as it is now."""
    return path if path is None or _restoring_into is None else _restoring_into / Path(path).name
