"""The Dockerfile, checked without a container builder (none runs on these machines): what it
copies exists and reaches the build, what it pins agrees with requirements.lock and pyproject, and
its CUDA base is the CUDA that the pinned torch's wheel is built for."""

from __future__ import annotations

import fnmatch
import re
import subprocess
from pathlib import Path

import pytest

from tuner.cluster.jobs import PACKAGES

ROOT = Path(__file__).resolve().parent.parent
#: the CUDA (major.minor) of PyPI's Linux x86_64 torch wheel, from its metadata (torch 2.13.0
#: requires cuda-toolkit==13.0.3): check it again when requirements.lock's torch pin changes
TORCH_WHEEL_CUDA = {"2.13.0": "13.0"}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", path.read_text())
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def pinned(requirement: str) -> str:
    """The version requirements.lock pins `requirement` to (name==VERSION)."""
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        match = re.fullmatch(rf"{requirement}==(\S+)", line.split("#")[0].strip())
        if match:
            return match.group(1)
    raise AssertionError(f"requirements.lock pins no {requirement}")


def included(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore lets `path` into the build context: the last pattern matching it
    or a folder above it decides (`!` re-includes)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    keep = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern.removeprefix("!")
        globs = [body, body.removeprefix("**/")] if body.startswith("**/") else [body]
        for prefix in prefixes:
            names = [prefix, prefix.rsplit("/", 1)[-1]] if body.startswith("**/") else [prefix]
            if any(fnmatch.fnmatchcase(n, g) for n in names for g in globs):
                keep = negated
                break
    return keep


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return instructions(ROOT / "Dockerfile")


def test_base_is_the_cuda_runtime_of_the_pinned_torch(dockerfile) -> None:
    args = dict(a.split("=", 1) for word, a in dockerfile if word == "ARG" and "=" in a)
    (base,) = [a for word, a in dockerfile if word == "FROM"]
    image = base.replace("${CUDA}", args["CUDA"])
    # a digest, when pinned, is the registry's (see the Dockerfile's note on reading it)
    digest = r"(@sha256:[0-9a-f]{64})?"
    assert re.fullmatch(rf"nvidia/cuda:\d+\.\d+\.\d+-runtime-ubuntu\d\d\.\d\d{digest}", image)
    cuda = ".".join(args["CUDA"].split(".")[:2])
    assert TORCH_WHEEL_CUDA[pinned("torch")] == cuda


def test_copied_files_exist_and_reach_the_build(dockerfile) -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = [src for word, a in dockerfile if word == "COPY" for src in a.split()[:-1]]
    assert {"pyproject.toml", "requirements.lock", "README.md"} <= set(sources)
    assert set(PACKAGES) <= set(sources)  # the packages pyproject installs and jobs ship
    tracked = subprocess.run(
        ["git", "ls-files", *sources], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for source in sources:
        assert (ROOT / source).exists(), source
        assert any(t == source or t.startswith(f"{source}/") for t in tracked), source
    assert all(included(t, patterns) for t in tracked), [
        t for t in tracked if not included(t, patterns)
    ]
    for left_out in (".venv/bin/python", "mlflow.db", "tuner/__pycache__/x.pyc", "tests/x.py"):
        assert not included(left_out, patterns), left_out


def test_installs_the_pinned_project_with_the_cluster_extra_and_python_on_path(
    dockerfile,
) -> None:
    runs = [a for word, a in dockerfile if word == "RUN"]
    (install,) = [r for r in runs if "pip install" in r]
    assert "-c requirements.lock" in install and "'.[cluster]'" in install
    extras = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1]
    assert re.search(r"^cluster = \[", extras, re.MULTILINE)
    (venv,) = [re.search(r"python3 -m venv (\S+)", r).group(1) for r in runs if "-m venv" in r]
    env = [a for word, a in dockerfile if word == "ENV" and a.startswith("PATH=")]
    assert env == [f"PATH={venv}/bin:$PATH"]  # its `python`, `ray` and `tuner` come first


def test_cluster_doc_builds_pushes_and_runs_the_same_image() -> None:
    doc = (ROOT / "docs" / "cluster.md").read_text()
    built = re.search(r"docker build -t (\S+) \.", doc).group(1)
    assert f"docker push {built}" in doc
    images = re.findall(r"image: (\S+)", doc)
    assert images and set(images) == {built}


def test_ray_and_its_jobs_run_as_an_unprivileged_user(dockerfile) -> None:
    """The last USER is a numeric uid:gid other than root's (Kubernetes' runAsNonRoot checks a
    number), created in the image with a home of its own (Ray writes ~/.ray), after every
    install: the packages stay root's, read-only to the jobs."""
    words = [word for word, _ in dockerfile]
    users = [a for word, a in dockerfile if word == "USER"]
    assert users, "the image runs as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or (gid.isdigit() and int(gid) != 0))
    runs = [a for word, a in dockerfile if word == "RUN"]
    (create,) = [r for r in runs if "useradd" in r]
    assert f"--uid {uid}" in create and "--create-home" in create
    last_user = len(words) - 1 - words[::-1].index("USER")
    assert "RUN" not in words[last_user:] and "COPY" not in words[last_user:]
    assert words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN")
    workdirs = [a for word, a in dockerfile[last_user:] if word == "WORKDIR"]
    assert workdirs and workdirs[-1].startswith("/home/"), workdirs  # writable by the user
