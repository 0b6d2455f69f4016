"""README.md and docs/: every YAML spec shown passes `tuner check` (a block that is only part of
a spec says so with `<!-- fragment -->` on the line above it and is checked inside a minimal
spec; one that is no spec at all, `<!-- not a spec -->`), and every `tuner ...` command line
shown parses against the CLI. What a newcomer copies works as written."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
import typer
import yaml
from typer.testing import CliRunner

from tuner.cli import app
from tuner.spec.job_spec import JobSpec

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
FRAGMENT, NOT_A_SPEC = "<!-- fragment -->", "<!-- not a spec -->"
#: what a fragment is checked inside
MINIMAL = {"name": "docs", "model": "mlp", "dataset": {"name": "digits"}}


@dataclass
class Block:
    doc: Path
    line: int
    language: str
    text: str
    marker: str  # the line above the fence

    @property
    def id(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def blocks() -> list[Block]:
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for match in FENCE.finditer(text):
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
            line = text[: match.start()].count("\n") + 1
            found.append(Block(doc, line, match.group(1), match.group(2), before))
    return found


YAML_BLOCKS = [b for b in blocks() if b.language in ("yaml", "yml") and b.marker != NOT_A_SPEC]
SHELL_BLOCKS = [b for b in blocks() if b.language in ("bash", "sh", "shell", "console")]


def as_spec(block: Block) -> dict:
    """The spec a block shows, a fragment inside the minimal spec (its keys as sections, or
    else as the entries of a search space)."""
    shown = yaml.safe_load(block.text)
    assert isinstance(shown, dict), f"{block.id}: not a mapping"
    if block.marker != FRAGMENT:
        return shown
    if set(shown) <= set(JobSpec.model_fields):
        return {**MINIMAL, **shown}
    return {**MINIMAL, "search_space": shown}


def plugin_code(doc: Path) -> str:
    """The Python blocks of a page that register plug-ins, as one file."""
    code = [b.text for b in blocks() if b.doc == doc and b.language == "python"]
    return "\n\n".join(c for c in code if "@tuner.register_" in c)


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=lambda b: b.id)
def test_every_spec_shown_passes_tuner_check(
    block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    spec = as_spec(block)
    for name in spec.get("plugins", []):
        if name.endswith(".py"):  # the page's own plug-in code, as the reader saves it
            (tmp_path / name).write_text(plugin_code(block.doc))
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(app, ["check", str(path)])
    assert result.exit_code == 0, f"{block.id}:\n{block.text}\n{result.output}"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["spec.yaml", *(n for n in spec.get("plugins", []) if n.endswith(".py"))]
    ), "tuner check touched a store or wrote a file"


def command_lines(block: Block) -> list[str]:
    """The `tuner ...` commands of a shell block: whole lines, continuations joined, comments
    and pipes dropped, `$(tuner ...)` unwrapped, shell variables as a placeholder word."""
    text = block.text.replace("\\\n", " ")
    lines = []
    for line in text.splitlines():
        line = line.strip().removeprefix("$ ")
        inner = re.search(r"\$\((tuner [^)|]*)", line)
        command = inner.group(1) if inner else line
        if not command.startswith("tuner "):
            continue
        command = command.split(" # ", 1)[0].split(" | ", 1)[0]
        lines.append(re.sub(r'"?\$\{?\w+\}?"?', "X", command))
    return lines


COMMANDS = [(b, c) for b in SHELL_BLOCKS for c in command_lines(b)]


def test_the_docs_show_commands() -> None:
    assert len(COMMANDS) > 20  # the extraction finds them


@pytest.mark.parametrize(("block", "command"), COMMANDS, ids=lambda x: getattr(x, "id", x))
def test_every_command_shown_parses(block: Block, command: str) -> None:
    group = typer.main.get_command(app)
    name, *args = shlex.split(command)[1:]
    context = click.Context(group, info_name="tuner")
    sub = group.get_command(context, name)
    assert sub is not None, f"{block.id}: `{command}`: no command {name!r}"
    try:
        sub.make_context(name, args, parent=context)
    except click.exceptions.Exit:
        pass  # --help
    except click.UsageError as exc:
        pytest.fail(f"{block.id}: `{command}`: {exc.format_message()}")
