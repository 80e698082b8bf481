"""The ``hf2oci`` command line: a thin layer of click commands over the library.

Commands are imported when used, so `hf2oci extract` or `hf2oci tag` start without loading
huggingface_hub and the pipeline.
"""

from __future__ import annotations

import importlib

import click

from hf2oci import __version__
from hf2oci.cli._verbosity import configure_logging, verbosity

#: command name → (module, attribute, the line `hf2oci --help` shows, without importing it)
COMMANDS = {
    "sync": ("hf2oci.cli.sync", "sync", "Mirror every repo listed in get_hf/ and record them."),
    "mirror": ("hf2oci.cli.mirror", "mirror", "Mirror one repo, or the list lines given."),
    "plan": ("hf2oci.cli.plan", "plan_command", "Say which listed repos need mirroring."),
    "record": ("hf2oci.cli.record", "record_command", "Record mirror results; commit, push."),
    "tag": ("hf2oci.cli.tag", "tag", "Print the image tag of a repo id, or the way back."),
    "extract": ("hf2oci.cli.extract", "extract", "Unpack an image's /REPO into a folder."),
    "deploy": ("hf2oci.cli.deploy", "deploy", "Serve a model image: Dockerfile, compose, k8s."),
    "serve": ("hf2oci.cli.serve", "serve", "Answer the Hugging Face Hub API from the images."),
    "verify": ("hf2oci.cli.verify", "verify", "Check an image's signature and provenance."),
    "inventory": ("hf2oci.cli.airgap", "inventory", "Say what a registry holds (for a bundle)."),
    "bundle": ("hf2oci.cli.airgap", "bundle", "Write what the other side lacks, to carry."),
    "load": ("hf2oci.cli.airgap", "load_command", "Check a bundle and publish it."),
    "prune": ("hf2oci.cli.airgap", "prune", "Delete old pinned revisions and signatures."),
}


class LazyGroup(click.Group):
    """Commands imported when run: ``hf2oci --help`` and ``hf2oci tag`` load no hub client."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, line) for name, (_, _, line) in COMMANDS.items()])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[cmd_name]
        command = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hf2oci")
@verbosity
@click.pass_context
def main(ctx: click.Context) -> None:
    """Mirror Hugging Face models and datasets into OCI images."""
    configure_logging(ctx.meta.get("hf2oci.verbose", 0))
