"""``hf2oci mirror``: mirror repos given on the command line (one job of the workflow)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hf2oci import gha, malloc
from hf2oci.cli._common import (
    get_hf_option,
    handle_errors,
    is_quiet,
    load,
    redact,
    repo_type_option,
    verbosity,
)
from hf2oci.cli._run import outcome_json, run_specs, summarize, target_options
from hf2oci.errors import Hf2ociError, UsageError
from hf2oci.intake.lists import format_line, parse_list
from hf2oci.spec import RepoSpec, RepoType


@click.command()
@click.argument("repo_id", required=False)
@repo_type_option
@click.option("--revision", help="Branch, tag or commit sha (default: main).")
@click.option("--include", multiple=True, help="Keep only files matching this glob (repeatable).")
@click.option("--exclude", multiple=True, help="Drop files matching this glob (repeatable).")
@click.option("--preset", help="safetensors, gguf:QUANT (e.g. gguf:Q4_K_M) or none.")
@click.option(
    "--lines",
    help="Repos as list lines (the list files' syntax), one per line, instead of REPO_ID.",
)
@target_options
@get_hf_option
@click.option("--no-record", is_flag=True, help="Do not update the record in get_hf/.")
@click.option(
    "--result",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write the outcome as JSON here (for `hf2oci record --results`).",
)
@click.option("--dry-run", is_flag=True, help="Plan only: say what would be mirrored.")
@click.option("--force", is_flag=True, help="Mirror even if the image looks up to date.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result.")
@verbosity
@handle_errors
def mirror(
    repo_id: str | None,
    repo_type: RepoType,
    revision: str | None,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    preset: str | None,
    lines: str | None,
    get_hf: Path,
    no_record: bool,
    result: Path | None,
    dry_run: bool,
    force: bool,
    as_json: bool,
    **overrides: str | bool | None,
) -> None:
    """Mirror one repo (REPO_ID like org/name), or those given with --lines.

    Prints one IMAGE:TAG@DIGEST line per image written on stdout (progress goes to stderr)."""
    try:
        if lines is not None:
            if repo_id or revision or include or exclude or preset:
                raise UsageError("give either REPO_ID (with its options) or --lines, not both")
            specs = parse_specs(lines, repo_type=repo_type)
        elif repo_id:
            # the options as one list line, so both inputs obey one set of rules
            asked = RepoSpec(repo_id, repo_type, revision, include, exclude, preset)
            specs = parse_specs(format_line(asked), repo_type=repo_type)
        else:
            raise UsageError("give a REPO_ID or --lines")
        config = load(get_hf / "config.yaml", **overrides)
        malloc.tune(malloc.ARENAS)  # before the pipeline's threads
        report = run_specs(
            specs, config, get_hf=get_hf, quiet=is_quiet(), as_json=as_json, dry_run=dry_run,
            force=force,
        )  # fmt: skip
    except Hf2ociError as e:
        # the record job learns of a job that failed before trying any repo from its result
        if result is not None:
            where = " / ".join((lines or repo_id or "").splitlines()) or "hf2oci mirror"
            gha.write_result(result, [gha.failed_outcome(redact(str(e)), origin=where)])
        raise
    if result is not None:
        gha.write_result(
            result,
            [
                {
                    **outcome_json(o),
                    "mirrored": o.mirrored.to_json() if o.mirrored else None,
                }
                for o in report.outcomes
            ],
        )
    if report.mirrored and not no_record and not dry_run and get_hf.is_dir():
        # lazily: start-up time: a command loads what it runs, when it runs it
        from hf2oci.record.markdown import record_results

        record_results(report.mirrored, get_hf=get_hf, ledger_name=config.record)
    sys.exit(summarize(report, as_json=as_json))


def parse_specs(text: str, *, repo_type: RepoType) -> list[RepoSpec]:
    specs, errors = parse_list(text, path="<command line>", repo_type=repo_type)
    if errors:
        raise UsageError(errors[0].reason)
    if not specs:
        raise UsageError("no repo given")
    return specs
