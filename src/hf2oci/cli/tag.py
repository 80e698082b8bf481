"""``hf2oci tag``: print the image tag of a repo id (or, with --reverse, the repo id of a tag)."""

from __future__ import annotations

import click

from hf2oci import naming
from hf2oci.cli._common import handle_errors
from hf2oci.cli._verbosity import verbosity
from hf2oci.errors import UsageError


@click.command()
@click.argument("name")
@click.option("--revision", help="A hub commit sha: print the immutable tag for it.")
@click.option("--reverse", is_flag=True, help="NAME is a tag: print its repo id.")
@verbosity
@handle_errors
def tag(name: str, revision: str | None, reverse: bool) -> None:
    """Print the tag for repo id NAME (facebook/opt-125m → facebook--opt-125m)."""
    try:
        if reverse:
            click.echo(naming.repo_id_from_tag(name))
        elif revision:
            click.echo(naming.revision_tag(naming.validate_repo_id(name), revision))
        else:
            click.echo(naming.repo_tag(naming.validate_repo_id(name)))
    except naming.InvalidRepoId as e:
        raise UsageError(str(e)) from e
