"""``hf2oci sync``: mirror every repo listed under get_hf/ and record the successes."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hf2oci import malloc
from hf2oci.cli._common import get_hf_option, handle_errors, is_quiet, read_project, verbosity
from hf2oci.cli._run import run_specs, summarize, target_options
from hf2oci.pack.pipeline import Outcome


@click.command()
@get_hf_option
@target_options
@click.option("--dry-run", is_flag=True, help="Plan only: say what would be mirrored.")
@click.option("--force", is_flag=True, help="Mirror even repos that look up to date.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result.")
@verbosity
@handle_errors
def sync(
    get_hf: Path,
    dry_run: bool,
    force: bool,
    as_json: bool,
    **overrides: str | bool | None,
) -> None:
    """Mirror every repo listed in get_hf/ and write models.md / datasets.md.

    Prints one IMAGE:TAG@DIGEST line per image written on stdout (progress goes to stderr)."""
    config, specs, list_errors = read_project(get_hf, **overrides)
    malloc.tune(malloc.ARENAS)  # before the pipeline's threads
    report = run_specs(
        specs, config, get_hf=get_hf, quiet=is_quiet(), as_json=as_json, dry_run=dry_run,
        force=force,
    )  # fmt: skip
    if not dry_run:
        # lazily: start-up time: a command loads what it runs, when it runs it
        from hf2oci.record.markdown import record_results

        record_results(report.mirrored, get_hf=get_hf, ledger_name=config.record)
    bad_lines = [Outcome("failed", str(e), origin=f"{e.path}:{e.line}") for e in list_errors]
    sys.exit(summarize(report, as_json=as_json, extra_errors=bad_lines))
