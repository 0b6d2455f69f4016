"""benchmarks/gpu_prepare.py without a download or an install: parts stay under their limit and
round-trip to the same bytes, the manifest lists every file, a part that does not match its
sha256 is refused, and the closure leaves out what the device image holds."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks import gpu_prepare
from benchmarks.gpu_prepare import MANIFEST, PartError, assemble, pack, stage

ROOT = Path(__file__).resolve().parents[1]
LIMIT = gpu_prepare.MANIFEST_ROOM + 1000  # 1000 bytes of wheels a part


def wheels(folder: Path, sizes: dict[str, int]) -> dict[str, bytes]:
    folder.mkdir()
    contents = {}
    for number, (name, size) in enumerate(sizes.items()):
        data = bytes((number * 7 + i * 13) % 256 for i in range(size))
        (folder / name).write_bytes(data)
        contents[name] = data
    return contents


@pytest.fixture
def packed(tmp_path: Path):
    sizes = {"big-1.0-py3-none-any.whl": 2500, "a-1.0-py3-none-any.whl": 600}
    sizes |= {"b-1.0-py3-none-any.whl": 300, "c-1.0-py3-none-any.whl": 1000}
    contents = wheels(tmp_path / "wheels", sizes)
    manifest = pack(tmp_path / "wheels", tmp_path / "out", LIMIT)
    return tmp_path, contents, manifest


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir())


def test_each_part_stays_under_the_limit_and_a_wheel_over_it_is_cut(packed) -> None:
    tmp_path, _, manifest = packed
    parts = sorted((tmp_path / "out").glob("part*"))
    assert [p.name for p in parts] == [p["name"] for p in manifest["parts"]]
    assert all(folder_size(part) <= LIMIT for part in parts)
    (big,) = [w for w in manifest["wheels"] if w["name"].startswith("big")]
    assert big["pieces"] == [f"{big['name']}.piece{i:03d}" for i in (1, 2, 3)]


def test_the_manifest_lists_every_file_with_its_size_and_sha256(packed) -> None:
    tmp_path, contents, manifest = packed
    listed = {f["name"]: f for part in manifest["parts"] for f in part["files"]}
    on_disk = {p.name: p for p in (tmp_path / "out").glob("part*/*") if p.name != MANIFEST}
    assert listed.keys() == on_disk.keys()
    for name, entry in listed.items():
        data = on_disk[name].read_bytes()
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert {w["name"] for w in manifest["wheels"]} == contents.keys()
    for part in (tmp_path / "out").glob("part*"):  # each call carries the whole manifest
        assert json.loads((part / MANIFEST).read_text()) == manifest


def test_staging_every_part_then_assembling_gives_the_same_wheels(packed) -> None:
    tmp_path, contents, manifest = packed
    into = tmp_path / "staged"
    for part in sorted((tmp_path / "out").glob("part*")):
        stage(part, into)
    installed = assemble(into)
    assert {p.name: p.read_bytes() for p in installed} == contents
    for entry in manifest["wheels"]:
        assert hashlib.sha256((into / entry["name"]).read_bytes()).hexdigest() == entry["sha256"]
    assert not list(into.glob("*.piece*"))  # the pieces are gone, the joined wheel stays


def test_a_missing_part_is_named_before_anything_is_installed(packed) -> None:
    tmp_path, _, manifest = packed
    into = tmp_path / "staged"
    *staged, last = sorted((tmp_path / "out").glob("part*"))
    for part in staged:
        stage(part, into)
    with pytest.raises(PartError, match=f"not staged: {last.name}"):
        assemble(into)


def test_a_part_whose_sha256_does_not_match_is_refused_whole(packed) -> None:
    tmp_path, _, _ = packed
    part = tmp_path / "out" / "part1"
    victim = sorted(p for p in part.iterdir() if p.name != MANIFEST)[0]
    data = bytearray(victim.read_bytes())
    data[0] ^= 0xFF  # same size, other bytes
    victim.write_bytes(bytes(data))
    into = tmp_path / "staged"
    with pytest.raises(PartError, match="does not match its sha256"):
        stage(part, into)
    assert not into.exists()  # nothing of it was staged


def test_a_wheel_damaged_after_staging_is_refused_at_assembly(packed) -> None:
    tmp_path, _, _ = packed
    into = tmp_path / "staged"
    for part in sorted((tmp_path / "out").glob("part*")):
        stage(part, into)
    whole = next(p for p in into.glob("*.whl"))
    whole.write_bytes(whole.read_bytes()[:-1] + b"\0")
    with pytest.raises(PartError, match=whole.name):
        assemble(into)


def test_the_check_script_refuses_a_tampered_part(tmp_path: Path) -> None:
    """gpu_check.sh --stage, as a device call runs it, on a copy of the repo's scripts."""
    repo = tmp_path / "repo"
    (repo / "benchmarks").mkdir(parents=True)
    for name in ("gpu_check.sh", "gpu_prepare.py"):
        shutil.copy(ROOT / "benchmarks" / name, repo / "benchmarks" / name)
    wheels(tmp_path / "wheels", {"a-1.0-py3-none-any.whl": 1500})
    pack(tmp_path / "wheels", repo / ".whl", LIMIT)
    env = {"PATH": "/usr/bin:/bin", "PYTHON": gpu_prepare.sys.executable, "OUT": str(tmp_path)}
    command = ["bash", "benchmarks/gpu_check.sh", "--stage"]
    good = subprocess.run(
        command,
        cwd=repo,
        env=env | {"WHEELS": str(tmp_path / "w1")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert good.returncode == 0, good.stderr
    piece = next((repo / ".whl" / "part2").glob("*.piece*"))
    piece.write_bytes(b"x" * piece.stat().st_size)
    bad = subprocess.run(
        command,
        cwd=repo,
        env=env | {"WHEELS": str(tmp_path / "w2")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1
    assert "refused" in bad.stderr and "does not match its sha256" in bad.stderr


def test_the_closure_follows_markers_and_extras_and_stops_at_the_image() -> None:
    requires = {
        "ray": ["click>=7", "msgpack", "pandas ; extra == 'tune'", "aiohttp ; extra == 'default'"],
        "pandas": ["numpy"],
        "mlflow-skinny": ["pydantic<3", "pywin32 ; sys_platform == 'win32'"],
        "pydantic": ["pydantic-core==2.50.5", "typing-extensions"],
        "pydantic-core": [],
        "tzdata": [],
    }
    image = frozenset({"click", "msgpack", "numpy", "typing-extensions", "pandas"})
    wanted = gpu_prepare.closure(["ray[tune]", "mlflow-skinny"], requires.__getitem__, image)
    assert wanted == {"ray", "mlflow-skinny", "pydantic", "pydantic-core"}


def test_the_device_list_is_pinned_by_the_lock_and_leaves_the_image_out() -> None:
    roots = gpu_prepare.root_requirements()
    assert "ray[tune]" in roots and "mlflow-skinny" in roots and "mlflow" not in roots
    lines = gpu_prepare.device_requirements(
        roots, gpu_prepare.installed_requires, gpu_prepare.lock_pins()
    )
    names = {line.split("==")[0] for line in lines}
    assert {"ray", "optuna", "mlflow-skinny", "pydantic", "sqlalchemy", "alembic"} <= names
    assert not names & gpu_prepare.IMAGE_PACKAGES  # torch, numpy, pandas... are there already
    assert "mlflow" not in names  # the web UI is not needed for a check
