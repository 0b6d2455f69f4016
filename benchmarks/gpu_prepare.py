"""Wheels for a bare GPU machine (issue 26 §3): everything tuner needs that the device image
lacks, packed into parts that each fit one device call, with a manifest to verify them there.

A device call carries the working tree plus at most 64 MiB, and Ray's wheel alone is larger, so
the wheels travel in parts over several calls of one warm machine: each call but the last only
stages its part (verified) into /tmp/wheels, the last reassembles the split wheels, checks every
sha256 and installs (benchmarks/gpu_check.sh; the call sequence is in docs/development.md).

Here, with pip and PyPI reachable, run by the interpreter of a venv installed from
requirements.lock (its metadata gives the dependency closure):
    python benchmarks/gpu_prepare.py download   # .whl/requirements.txt, .whl/wheels/*.whl
    python benchmarks/gpu_prepare.py pack       # .whl/part1 .. partN, each with manifest.json
On the device (standard library only; gpu_check.sh calls these):
    python3 benchmarks/gpu_prepare.py stage .whl/partK --into /tmp/wheels
    python3 benchmarks/gpu_prepare.py assemble --into /tmp/wheels
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHL = ROOT / ".whl"
MIB = 1024 * 1024
#: a call carries 64 MiB in all; the repository's tracked files are about 2 MiB of it
PART_LIMIT = 60 * MIB
#: what a part keeps free for its copy of the manifest
MANIFEST_ROOM = 64 * 1024
MANIFEST = "manifest.json"
PIECE = re.compile(r"^(?P<wheel>.+\.whl)\.piece(?P<index>\d{3})$")

#: the device machine: CPython 3.12 on manylinux x86_64 (pip matches manylinux_2_N exactly)
PYTHON_VERSION = "3.12"
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (39, 35, 34, 31, 28, 27, 24, 17)] + [
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
]
#: PEP 508 marker values there, for the dependency closure
TARGET_ENV = {
    "python_version": PYTHON_VERSION,
    "python_full_version": f"{PYTHON_VERSION}.3",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "platform_system": "Linux",
    "sys_platform": "linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
}

#: what the device image already holds (/work/.library/device/KINDS.md, read 2026-11-17): not
#: carried, and not descended into (their own needs are in the image too)
IMAGE_LIST = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
    botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
    coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax
    e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist
    fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
    imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2
    joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml
    markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
    multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda
    numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
    nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
    nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13
    nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum
    opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip
    pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo
    pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov
    pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests
    rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn
    sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
    statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
    tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric
    torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions
    typing-inspect urllib3
    uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
"""
IMAGE_PACKAGES = frozenset(IMAGE_LIST.split())

#: tuner's own requirements, as a GPU check runs them: Ray's `default` extra is the dashboard and
#: Ray Jobs (a cluster's), and MLflow's full wheel adds the web UI's JavaScript and the server's
#: needs to mlflow-skinny, which holds all the Python tuner imports; its SQLite store needs
#: sqlalchemy and alembic
SUBSTITUTES = {
    "ray": ["ray[tune]"],
    "mlflow": ["mlflow-skinny", "sqlalchemy", "alembic"],
}


class PartError(RuntimeError):
    """A part or a staged wheel does not match the manifest: refused, never installed."""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(MIB), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- what to download


def root_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """tuner's runtime requirements (pyproject's), with SUBSTITUTES applied; versions come from
    requirements.lock later, so specifiers are dropped here."""
    from packaging.requirements import Requirement

    roots = []
    for line in tomllib.loads(pyproject.read_text())["project"]["dependencies"]:
        requirement = Requirement(line)
        name = canonical(requirement.name)
        extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
        roots += SUBSTITUTES.get(name, [name + extras])
    return roots


def closure(
    roots: Iterable[str], requires: Callable[[str], list[str]], image: frozenset[str]
) -> set[str]:
    """Every distribution the roots need on the device and the image lacks (canonical names).
    `requires(name)` gives a distribution's Requires-Dist lines; markers are evaluated for the
    device (TARGET_ENV), with the extras asked for."""
    from packaging.requirements import Requirement

    wanted: set[str] = set()
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement(root) for root in roots]
    while todo:
        requirement = todo.pop()
        name = canonical(requirement.name)
        extras = frozenset(requirement.extras)
        if name in image or (name, extras) in seen:
            continue
        seen.add((name, extras))
        wanted.add(name)
        for line in requires(name):
            needed = Requirement(line)
            if needed.marker is None or any(
                needed.marker.evaluate({**TARGET_ENV, "extra": extra}) for extra in extras or {""}
            ):
                todo.append(needed)
    return wanted


def installed_requires(name: str) -> list[str]:
    """Requires-Dist of an installed distribution (this venv is requirements.lock's)."""
    import importlib.metadata

    return importlib.metadata.requires(name) or []


def lock_pins(lock: Path = ROOT / "requirements.lock") -> dict[str, str]:
    pins = {}
    for line in lock.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonical(name.split("[")[0])] = version.strip()
    return pins


def device_requirements(
    roots: Iterable[str], requires: Callable[[str], list[str]], pins: dict[str, str]
) -> list[str]:
    """`name==version` for each wheel to carry, pinned as requirements.lock pins it."""
    wanted = closure(roots, requires, IMAGE_PACKAGES)
    unpinned = sorted(wanted - pins.keys())
    if unpinned:
        raise SystemExit(f"requirements.lock pins none of: {', '.join(unpinned)}")
    return [f"{name}=={pins[name]}" for name in sorted(wanted)]


def download(dest: Path = WHL) -> Path:
    """Resolve and download the wheels into dest/wheels (binary only: nothing compiles there)."""
    lines = device_requirements(root_requirements(), installed_requires, lock_pins())
    dest.mkdir(parents=True, exist_ok=True)
    requirements = dest / "requirements.txt"
    requirements.write_text(
        "# generated by benchmarks/gpu_prepare.py: requirements.lock minus the device image\n"
        + "\n".join(lines)
        + "\n"
    )
    wheels = dest / "wheels"
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
    command += ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation"]
    command += ["cp", *platforms, "-d", str(wheels), "-r", str(requirements)]
    subprocess.run(command, check=True)
    return wheels


# --------------------------------------------------------------------------- packing


def pack(wheels: Path, out: Path, limit: int = PART_LIMIT) -> dict:
    """Pack every wheel in `wheels` into out/part1.., each part under `limit` bytes with its copy
    of the manifest; a wheel larger than a part is cut into pieces (`NAME.whl.piece001`, ...),
    joined again by `assemble`. First fit, largest first: few parts, few calls."""
    room = limit - MANIFEST_ROOM
    if room <= 0:
        raise ValueError(f"a part limit of {limit} bytes leaves no room beside the manifest")
    items: list[tuple[str, bytes | Path, int]] = []  # (name, content or source, size)
    wheel_entries = []
    for wheel in sorted(wheels.glob("*.whl")):
        size = wheel.stat().st_size
        entry = {"name": wheel.name, "size": size, "sha256": sha256(wheel), "pieces": []}
        if size <= room:
            items.append((wheel.name, wheel, size))
        else:
            data = wheel.read_bytes()
            for index, start in enumerate(range(0, size, room), start=1):
                piece = f"{wheel.name}.piece{index:03d}"
                entry["pieces"].append(piece)
                items.append((piece, data[start : start + room], len(data[start : start + room])))
        wheel_entries.append(entry)
    parts: list[list[tuple[str, bytes | Path, int]]] = []
    for item in sorted(items, key=lambda item: (-item[2], item[0])):
        for part in parts:
            if sum(size for _, _, size in part) + item[2] <= room:
                part.append(item)
                break
        else:
            parts.append([item])
    if out.exists():
        for old in out.glob("part*"):
            shutil.rmtree(old)
    manifest: dict = {"limit": limit, "python": PYTHON_VERSION, "wheels": wheel_entries}
    manifest["parts"] = []
    for number, part in enumerate(parts, start=1):
        folder = out / f"part{number}"
        folder.mkdir(parents=True)
        files = []
        for name, content, size in sorted(part, key=lambda item: item[0]):
            target = folder / name
            if isinstance(content, Path):
                shutil.copyfile(content, target)
            else:
                target.write_bytes(content)
            files.append({"name": name, "size": size, "sha256": sha256(target)})
        manifest["parts"].append({"name": folder.name, "size": sum(f["size"] for f in files)})
        manifest["parts"][-1]["files"] = files
    text = json.dumps(manifest, indent=1) + "\n"
    if len(text.encode()) > MANIFEST_ROOM:
        raise ValueError(f"the manifest is {len(text.encode())} bytes, over {MANIFEST_ROOM}")
    for number in range(1, len(parts) + 1):
        (out / f"part{number}" / MANIFEST).write_text(text)
    return manifest


# --------------------------------------------------------------------------- on the device


def stage(part: Path, into: Path) -> list[str]:
    """Copy one carried part into `into` after checking each file's size and sha256 against the
    manifest it carries; a part that does not match is refused whole (PartError)."""
    manifest = json.loads((part / MANIFEST).read_text())
    listed = {p["name"]: p for p in manifest["parts"]}
    if part.name not in listed:
        raise PartError(f"{part}: the manifest lists no part {part.name}")
    files = listed[part.name]["files"]
    present = {p.name for p in part.iterdir()} - {MANIFEST}
    if extra := present - {f["name"] for f in files}:
        raise PartError(f"{part}: not in the manifest: {', '.join(sorted(extra))}")
    for entry in files:
        path = part / entry["name"]
        if not path.is_file():
            raise PartError(f"{part}: {entry['name']} is missing")
        if path.stat().st_size != entry["size"] or sha256(path) != entry["sha256"]:
            raise PartError(f"{part}: {entry['name']} does not match its sha256 in the manifest")
    into.mkdir(parents=True, exist_ok=True)
    for entry in files:
        shutil.copyfile(part / entry["name"], into / entry["name"])
    shutil.copyfile(part / MANIFEST, into / MANIFEST)
    # the mark names this manifest: a part staged from another packing does not count
    (into / f"{part.name}.staged").write_text(sha256(part / MANIFEST) + "\n")
    return [entry["name"] for entry in files]


def assemble(into: Path) -> list[Path]:
    """Join the split wheels staged in `into` and check every wheel's sha256 against the
    manifest: the wheels to install, or PartError naming the parts not staged (a call missed,
    or the machine was given back between calls) or the wheel that does not match."""
    manifest = json.loads((into / MANIFEST).read_text())
    mark = sha256(into / MANIFEST) + "\n"
    missing = [
        p["name"]
        for p in manifest["parts"]
        if not (into / f"{p['name']}.staged").is_file()
        or (into / f"{p['name']}.staged").read_text() != mark
    ]
    if missing:
        raise PartError(f"not staged: {', '.join(missing)} (stage every part on one warm machine)")
    wheels = []
    for entry in manifest["wheels"]:
        wheel = into / entry["name"]
        if entry["pieces"]:
            with wheel.open("wb") as joined:
                for piece in entry["pieces"]:
                    with (into / piece).open("rb") as source:
                        shutil.copyfileobj(source, joined, MIB)
            for piece in entry["pieces"]:
                (into / piece).unlink()
        if not wheel.is_file() or wheel.stat().st_size != entry["size"]:
            raise PartError(f"{entry['name']}: missing or not {entry['size']} bytes")
        if sha256(wheel) != entry["sha256"]:
            raise PartError(f"{entry['name']}: does not match its sha256 in the manifest")
        wheels.append(wheel)
    return wheels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("download", help="resolve and download the wheels into .whl/wheels")
    packing = sub.add_parser("pack", help="pack .whl/wheels into .whl/part1..")
    packing.add_argument("--limit-mib", type=float, default=PART_LIMIT / MIB)
    staging = sub.add_parser("stage", help="verify one carried part and copy it into --into")
    staging.add_argument("parts", nargs="+", type=Path)
    staging.add_argument("--into", type=Path, default=Path("/tmp/wheels"))
    joining = sub.add_parser("assemble", help="join split wheels, verify every sha256")
    joining.add_argument("--into", type=Path, default=Path("/tmp/wheels"))
    args = parser.parse_args(argv)
    try:
        if args.command == "download":
            wheels = download()
            print(f"{len(list(wheels.glob('*.whl')))} wheels in {wheels}")
        elif args.command == "pack":
            manifest = pack(WHL / "wheels", WHL, int(args.limit_mib * MIB))
            for part in manifest["parts"]:
                print(f".whl/{part['name']}: {len(part['files'])} files, {part['size']} bytes")
        elif args.command == "stage":
            for part in args.parts:
                names = stage(part, args.into)
                print(f"staged {part.name}: {len(names)} files verified into {args.into}")
        else:
            wheels = assemble(args.into)
            print(f"{len(wheels)} wheels verified in {args.into}")
    except PartError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
