"""The docs say what the code does: docs/commands.md holds every command's `--help` as the
command prints it, and the README links each page of docs/ (no page is orphaned, no link is
dead). `HF2OCI_UPDATE_DOCS=1 pytest tests/test_docs.py` rewrites the generated part."""

from __future__ import annotations

import os
import re
from pathlib import Path

import click
from click.testing import CliRunner

from hf2oci.cli import main

ROOT = Path(__file__).resolve().parents[1]
COMMANDS_PAGE = ROOT / "docs" / "commands.md"
MARKER = "<!-- generated from each command's --help by tests/test_docs.py: do not edit below -->"
WIDTH = 100


def _commands() -> list[list[str]]:
    """Every command line there is: ``[]`` (hf2oci itself), ``["sync"]``, ``["deploy", "k8s"]``…"""
    found: list[list[str]] = [[]]
    ctx = click.Context(main)
    for name in main.list_commands(ctx):
        command = main.get_command(ctx, name)
        found.append([name])
        if isinstance(command, click.Group):
            found += [[name, sub] for sub in command.list_commands(ctx)]
    return found


def _help(words: list[str]) -> str:
    result = CliRunner().invoke(main, [*words, "--help"], prog_name="hf2oci", terminal_width=WIDTH)
    assert result.exit_code == 0, result.output
    return result.output.rstrip() + "\n"


def generated() -> str:
    parts = [MARKER, ""]
    for words in _commands():
        title = " ".join(["hf2oci", *words])
        parts += [f"## `{title}`", "", "```text", _help(words).rstrip(), "```", ""]
    return "\n".join(parts)


def test_the_commands_page_holds_every_commands_help_as_printed() -> None:
    text = COMMANDS_PAGE.read_text()
    assert MARKER in text, f"{COMMANDS_PAGE} lost its marker line"
    written = text[: text.index(MARKER)] + generated()
    if os.environ.get("HF2OCI_UPDATE_DOCS"):
        COMMANDS_PAGE.write_text(written)
    assert text == written, "docs/commands.md is not what --help says: HF2OCI_UPDATE_DOCS=1"


def test_every_option_of_every_command_is_on_the_commands_page() -> None:
    """Read from the commands themselves, so a new option cannot miss the page."""
    text = COMMANDS_PAGE.read_text()
    ctx = click.Context(main)
    missing = []
    for words in _commands()[1:]:
        command = main.get_command(ctx, words[0])
        if len(words) == 2:
            assert isinstance(command, click.Group)
            command = command.get_command(ctx, words[1])
        assert command is not None
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                missing += [f"{' '.join(words)} {o}" for o in param.opts if o not in text]
    assert missing == []


def test_the_readme_links_every_page_and_every_link_resolves() -> None:
    readme = (ROOT / "README.md").read_text()
    pages = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))
    linked = set(re.findall(r"\]\((docs/[^)#]+)", readme))
    assert [p for p in pages if p not in linked] == []
    for source in [ROOT / "README.md", *(ROOT / p for p in pages)]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", source.read_text()):
            assert (source.parent / target).exists(), f"{source.name}: dead link {target}"


def test_the_readme_reads_in_five_minutes() -> None:
    """What hf2oci is, the two commands, a first mirror and serve, where to read on: the
    reference lives in docs/."""
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 130
