"""``hf2oci plan``: what sync would mirror, as a GitHub Actions matrix (metadata calls only)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from hf2oci import gha
from hf2oci.cli._common import (
    echo,
    get_hf_option,
    handle_errors,
    is_quiet,
    read_project,
    repo_type_option,
    verbosity,
)
from hf2oci.cli._run import (
    destination_options,
    labels_lookup,
    max_layer_size,
    progress_printer,
)
from hf2oci.errors import ConfigError
from hf2oci.intake.lists import format_line
from hf2oci.pack.plan import plan
from hf2oci.spec import RepoType, plural


@click.command("plan")
@get_hf_option
@destination_options
@click.option("--only", help="Plan just this repo id (it must be listed).")
@repo_type_option
@click.option("--force", is_flag=True, help="Plan repos even when they look up to date.")
@click.option(
    "--max-jobs",
    type=click.IntRange(1, gha.MAX_MATRIX_JOBS),
    default=gha.MAX_MATRIX_JOBS,
    show_default=True,
    help="Batch repos so the matrix has at most this many jobs.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Repos per mirror job (batches grow further when the jobs would pass --max-jobs).",
)
@click.option(
    "--github-output", is_flag=True, help="Write matrix/count/has_work to $GITHUB_OUTPUT."
)
@click.option("--json", "as_json", is_flag=True, help="Print the matrix (for fromJSON) on stdout.")
@verbosity
@handle_errors
def plan_command(
    get_hf: Path,
    only: str | None,
    repo_type: RepoType,
    force: bool,
    max_jobs: int,
    batch_size: int,
    github_output: bool,
    as_json: bool,
    **overrides: str | bool | None,
) -> None:
    """Say which listed repos need mirroring; bad list lines fail the plan (exit 1)."""
    config, specs, list_errors = read_project(get_hf, **overrides)
    if only:
        specs = [s for s in specs if s.repo_id == only and s.repo_type == repo_type]
        if not specs and not list_errors:
            listed = f"to_get_{plural(repo_type)}.txt"
            raise ConfigError(f"{only} is not listed in {get_hf / listed}")
    annotate = github_output or gha.in_actions()
    for e in list_errors:
        echo(f"error: {e}")
        if annotate:
            click.echo(gha.annotation(e.reason, file=e.path, line=e.line))
    say = progress_printer(not is_quiet())
    actions = plan(
        specs,
        labels_lookup(config),
        force=force,
        max_layer_size=max_layer_size(config),
        platforms=config.platforms or (),
        scan=config.scan,
    )
    pending = [a for a in actions if a.kind == "mirror"]
    failed = [a for a in actions if a.kind == "fail"]
    for a in actions:
        say(a.spec.label, f"{'up to date' if a.kind == 'skip' else a.kind}: {a.reason}")
    # a repo the hub refuses now (missing, bad revision) is shown, not sent to a mirror job
    gha.report_unplannable(
        [(a.spec.origin, a.spec.repo_id, a.reason) for a in failed], annotate=annotate
    )
    entries = [gha.entry(a.spec, format_line(a.spec), size=a.size) for a in pending]
    matrix = gha.matrix(entries, max_jobs=max_jobs, batch_size=batch_size)
    if github_output:
        gha.set_output("matrix", json.dumps(matrix, separators=(",", ":")))
        gha.set_output("count", str(len(pending)))
        gha.set_output("has_work", "true" if pending and not list_errors else "false")
        # the workflow hands GITHUB_TOKEN to the registry only when it is GHCR
        gha.set_output("registry", config.registry or "")
    if as_json:
        # exactly the matrix: any other top-level key would become a matrix dimension
        click.echo(json.dumps(matrix, indent=2, sort_keys=True))
    echo(
        f"{len(pending)} to mirror in {len(matrix['include'])} jobs,"
        f" {len(actions) - len(pending) - len(failed)} up to date"
        + (f", {len(failed)} cannot be mirrored now" if failed else "")
        + (f", {len(list_errors)} bad lines" if list_errors else "")
    )
    sys.exit(1 if list_errors else 0)
