"""tuner/driver/results_folder.py: the resolved spec saved beside Ray's state (without passwords,
its plug-ins copied) and read back, and a study's folder found again by its path or through its
MLflow parent run; a folder Ray cannot restore, or a remote store that cannot be read, is refused
with a message that shows no password."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import make_study, tiny_spec
from trainables import plugins
from trainables.models import MODELS
from tuner.cluster.storage import StudyFolder
from tuner.driver import results_folder
from tuner.driver.results_folder import (
    SPEC_FILE,
    find_results,
    first_line,
    publish,
    save_spec,
    study_spec,
)
from tuner.errors import SpecError, StudyError
from tuner.tracking import schema
from tuner.tracking.runs import client_for

PLUGIN = """
import torch.nn as nn
import tuner


@tuner.register_model("saved-probe", layouts=("image",), defaults={"width": 4})
def probe(hp, sample_shape, layout, output_dim):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(output_dim))
"""


def restorable(folder: Path) -> Path:
    """A folder Ray can restore: its Tuner state file (Tuner.can_restore looks for it)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tuner.pkl").write_bytes(b"")
    return folder


def test_the_saved_spec_reads_back_as_the_study_ran_it(tmp_path: Path) -> None:
    spec = tiny_spec(
        name="saved",
        search={"num_samples": 5, "seed": 3},
        tracking={"uri": "postgresql://tuner:s3cret@db.example:5432/mlflow"},
    )
    save_spec(spec, (), tmp_path)
    assert "s3cret" not in (tmp_path / SPEC_FILE).read_text()
    again = study_spec(tmp_path)
    assert (again.name, again.model, again.search.num_samples, again.search.seed) == (
        "saved",
        "mlp",
        5,
        3,
    )
    assert again.tracking.uri == "postgresql://tuner:***@db.example:5432/mlflow"
    assert again.scheduler == spec.scheduler and again.dataset == spec.dataset


def test_a_plug_in_file_is_read_from_the_copy_saved_with_the_spec(tmp_path: Path) -> None:
    source = tmp_path / "src" / "probe_plugin.py"
    source.parent.mkdir()
    source.write_text(PLUGIN)
    code = plugins.load(str(source))
    spec = tiny_spec(plugins=[str(source)], model="saved-probe")
    folder = tmp_path / "results"
    folder.mkdir()
    save_spec(spec, (code,), folder)
    source.write_text("raise RuntimeError('the original changed')\n")  # edited after the study
    plugins.forget(code.module)
    assert "saved-probe" not in MODELS
    again = study_spec(folder)
    assert again.model == "saved-probe" and "saved-probe" in MODELS
    (entry,) = again.plugins
    assert Path(entry) == folder / "plugins" / "probe_plugin.py"  # the copy, not the original


def test_a_study_folder_is_found_again_by_its_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = restorable(tmp_path / "results" / "tiny-1")
    save_spec(tiny_spec(), (), folder)
    found = find_results(str(folder), None)
    assert found == StudyFolder(folder.resolve()) and found.location == str(folder.resolve())
    monkeypatch.chdir(tmp_path / "results")
    assert find_results("tiny-1", "sqlite:///unused.db").local == folder.resolve()  # relative


def test_a_folder_ray_cannot_restore_is_refused(tmp_path: Path) -> None:
    save_spec(tiny_spec(), (), tmp_path)  # the spec, but no Tuner state beside it
    with pytest.raises(SpecError, match="has no restorable Ray run folder"):
        find_results(str(tmp_path), None)


def test_a_study_folder_is_found_through_its_mlflow_parent_run(tmp_path: Path) -> None:
    folder = restorable(tmp_path / "elsewhere" / "found-1")
    save_spec(tiny_spec(name="found"), (), folder)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = client_for(uri)
    parent = make_study(client, "found", "val_loss:min", {1: 0.5})
    client.set_tag(parent.info.run_id, schema.RESULTS_PATH_TAG, str(folder))
    for study in ("found", parent.info.run_id):  # its name, or the parent run's id
        assert find_results(study, uri).local == folder.resolve()
    with pytest.raises(SpecError, match="no study named 'missing'"):
        find_results("missing", uri)


def test_an_unreadable_remote_store_is_refused_without_its_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)

    def unreachable(uri: str, name: str) -> bool:
        raise OSError("connection refused\nsecond line of detail")

    monkeypatch.setattr(results_folder, "has_file", unreachable)
    with pytest.raises(StudyError) as caught:
        find_results("s3://key:hunter2@bucket/studies/x", None)
    message = str(caught.value)
    assert "cannot be read (connection refused)" in message and "bucket/studies/x" in message
    assert "hunter2" not in message and "second line" not in message


def test_a_remote_uri_that_climbs_is_refused_before_any_request(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    asked: list[str] = []
    monkeypatch.setattr(results_folder, "has_file", lambda uri, name: asked.append(uri))
    with pytest.raises(SpecError):
        find_results("s3://bucket/../../outside", None)
    assert asked == []


def test_publishing_a_local_study_sends_nothing(tmp_path: Path) -> None:
    publish(StudyFolder(tmp_path))  # no URI: nothing to upload, nothing raised
    assert list(tmp_path.iterdir()) == []


def test_first_line_is_the_errors_first_line_or_its_type() -> None:
    assert first_line(OSError("refused\nmore")) == "refused"
    assert first_line(OSError("  \n")) == "OSError"
