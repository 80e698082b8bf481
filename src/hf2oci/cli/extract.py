"""``hf2oci extract``: an image's /REPO into a folder or the HF cache, with no Docker engine."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import click

from hf2oci.cli._common import (
    echo,
    get_hf_option,
    handle_errors,
    is_quiet,
    plain_http_option,
    policy_key,
    verbosity,
)
from hf2oci.cli._progress import meters
from hf2oci.consume.extract import extract as do_extract
from hf2oci.units import human_size


@click.command("extract")
@click.argument("image")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--hf-cache", is_flag=True, help="DEST is a Hugging Face hub cache (HF_HUB_CACHE).")
@click.option("--include", multiple=True, help="Only files matching this glob (repeatable).")
@click.option("--workers", type=click.IntRange(1, 32), default=4, show_default=True)
@click.option("--force", is_flag=True, help="Replace a non-empty DEST.")
@click.option(
    "--direct/--no-direct",
    default=True,
    show_default=True,
    help="Write files of 16 MiB and more with O_DIRECT, not through the page cache.",
)
@click.option(
    "--verify-key",
    type=click.Path(path_type=Path),
    help="A public key (PEM): refuse an image whose signature or provenance it does not "
    "verify, before writing anything, and any file whose bytes the provenance does not sign "
    "(default: config.yaml's verify_key).",
)
@click.option(
    "--signature",
    type=click.Path(path_type=Path),
    help="Also write the image's OpenSSF model signature here (model_signing verify key "
    "--signature FILE --public_key KEY.pub DEST checks DEST with it).",
)
@plain_http_option
@get_hf_option
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result.")
@verbosity
@handle_errors
def extract(
    image: str,
    dest: Path,
    hf_cache: bool,
    include: tuple[str, ...],
    workers: int,
    force: bool,
    direct: bool,
    plain_http: bool | None,
    as_json: bool,
    verify_key: Path | None,
    signature: Path | None,
    get_hf: Path,
) -> None:
    """Unpack /REPO of IMAGE into DEST, checking every digest; no Docker engine needed.

    IMAGE is a registry reference (host/ns/models:org--name) or an OCI layout written by sync
    (oci:PATH:TAG, or PATH:TAG when PATH holds an oci-layout file). With --hf-cache, DEST is a
    Hugging Face hub cache (HF_HUB_CACHE) and the files land under models--org--name/.
    """
    key = policy_key(verify_key, get_hf)
    result = do_extract(
        image,
        dest,
        hf_cache=hf_cache,
        include=include,
        workers=workers,
        force=force,
        direct=direct,
        plain_http=plain_http,
        meter=_meter(image, is_quiet()),
        verify_key=key,
        signature=signature,
    )
    if as_json:
        doc = {
            k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(result).items()
        }
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
    where = result.snapshot or result.dest
    echo(f"{result.files} files ({human_size(result.bytes)}) from {result.digest[:19]} → {where}")


def _meter(image: str, quiet: bool) -> Callable[[int], Callable[[int], None]] | None:
    """The progress of the bytes read (``_progress``)."""
    make = meters(not quiet)
    return (lambda total: make(image, total)) if make else None
