"""The ``hf2oci`` command line: a thin layer of click commands over the library.

Commands are imported when used, so `hf2oci extract` or `hf2oci tag` start without loading
huggingface_hub and the pipeline.
"""

from __future__ import annotations

import importlib
import logging

import click

from hf2oci import __version__

#: command name → (module, attribute)
COMMANDS = {
    "sync": ("hf2oci.cli.sync", "sync"),
    "mirror": ("hf2oci.cli.mirror", "mirror"),
    "plan": ("hf2oci.cli.plan", "plan_command"),
    "record": ("hf2oci.cli.record", "record_command"),
    "tag": ("hf2oci.cli.tag", "tag"),
    "extract": ("hf2oci.cli.extract", "extract"),
    "runtime": ("hf2oci.cli.runtime", "runtime"),
    "k8s": ("hf2oci.cli.k8s", "k8s"),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attr = COMMANDS[cmd_name]
        command = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hf2oci")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
def main(verbose: int) -> None:
    """Mirror Hugging Face models and datasets into OCI images."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
