"""``hf2oci tag``: print the image tag of a repo id (or, with --reverse, the repo id of a tag)."""

from __future__ import annotations

from pathlib import Path

import click

from hf2oci import naming
from hf2oci.cli._common import get_hf_option, handle_errors, load
from hf2oci.cli._verbosity import verbosity
from hf2oci.errors import UsageError


@click.command()
@click.argument("name")
@click.option("--revision", help="A hub commit sha: print the immutable tag for it.")
@click.option(
    "--reverse",
    is_flag=True,
    help="NAME is a tag: print its repo id (a shortened tag is looked up in the record).",
)
@get_hf_option
@verbosity
@handle_errors
def tag(name: str, revision: str | None, reverse: bool, get_hf: Path) -> None:
    """Print the tag for repo id NAME (facebook/opt-125m → facebook--opt-125m)."""
    try:
        if reverse:
            click.echo(_reverse(name, get_hf))
        elif revision:
            click.echo(naming.revision_tag(naming.validate_repo_id(name), revision))
        else:
            click.echo(naming.repo_tag(naming.validate_repo_id(name)))
    except naming.InvalidRepoId as e:
        raise UsageError(str(e)) from e


def _reverse(tag_name: str, get_hf: Path) -> str:
    """The repo id of a tag: by the naming rule, or for a shortened tag from the ledger."""
    if not naming.is_shortened(tag_name):
        return naming.repo_id_from_tag(tag_name)
    # lazily: start-up time: a command loads what it runs, when it runs it
    from hf2oci.record.ledger import load_ledger

    ledger = get_hf / load(get_hf / "config.yaml").record
    found = load_ledger(ledger).lookup_tag(tag_name)  # a missing ledger records nothing
    if found is None:
        raise UsageError(f"tag {tag_name!r} was shortened, and {ledger} does not record it")
    return found.repo_id
