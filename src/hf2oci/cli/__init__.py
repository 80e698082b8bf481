"""The ``hf2oci`` command line: a thin layer of click commands over the library."""

from __future__ import annotations

import logging

import click

from hf2oci import __version__
from hf2oci.cli.extract import extract
from hf2oci.cli.k8s import k8s
from hf2oci.cli.mirror import mirror
from hf2oci.cli.plan import plan_command
from hf2oci.cli.record import record_command
from hf2oci.cli.runtime import runtime
from hf2oci.cli.sync import sync
from hf2oci.cli.tag import tag


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hf2oci")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
def main(verbose: int) -> None:
    """Mirror Hugging Face models and datasets into OCI images."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


main.add_command(sync)
main.add_command(mirror)
main.add_command(tag)
main.add_command(plan_command)
main.add_command(record_command)
main.add_command(extract)
main.add_command(k8s)
main.add_command(runtime)
