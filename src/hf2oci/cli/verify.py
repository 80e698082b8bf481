"""``hf2oci verify``: the image's signature and provenance against a public key."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from hf2oci.cli._common import (
    echo,
    handle_errors,
    plain_http_option,
    read_public_key,
    verbosity,
)


@click.command("verify")
@click.argument("image")
@click.option(
    "--key",
    "key_path",
    type=click.Path(path_type=Path),
    required=True,
    help="The public key (PEM) that signed what hf2oci published.",
)
@plain_http_option
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result.")
@verbosity
@handle_errors
def verify(image: str, key_path: Path, plain_http: bool | None, as_json: bool) -> None:
    """Check IMAGE's signature and provenance with the public key, and that its tag names the
    repo it holds. One line per check; exit 0 only when all hold. Reads manifests and the
    signatures, never the layers.

    IMAGE: a registry reference, or oci:PATH:TAG for a layout."""
    # lazily: start-up time: a command loads what it runs, when it runs it
    from hf2oci.trust.verify import verify as run

    pem = read_public_key(key_path)
    assert pem is not None
    report = run(image, pem, plain_http=plain_http)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2, sort_keys=True))
    else:
        for finding in report.findings:
            click.echo(finding.line())
    if not report.ok:
        echo(f"{image}: not verified")
    sys.exit(0 if report.ok else 1)
