"""``hf2oci record``: merge mirror jobs' results into the records, commit and push them."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hf2oci import gha
from hf2oci.cli._common import echo, get_hf_option, handle_errors, load, redact, verbosity
from hf2oci.record import commit_message, commit_records, record_results


@click.command("record")
@click.option(
    "--result",
    "--results",
    "results",
    type=click.Path(path_type=Path),
    multiple=True,
    required=True,
    help="A result file written by `hf2oci mirror --result`, or a folder of them (searched "
    "recursively); repeatable.",
)
@get_hf_option
@click.option(
    "--expect",
    type=click.IntRange(min=0),
    help="How many repos were planned: fewer results means some jobs never finished (failure).",
)
@click.option("--commit", is_flag=True, help="Commit the changed records with git.")
@click.option("--push", is_flag=True, help="Push the commit (rebasing when the remote moved).")
@click.option(
    "--summary",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Append a Markdown summary here (default: $GITHUB_STEP_SUMMARY when set).",
)
@verbosity
@handle_errors
def record_command(
    results: tuple[Path, ...],
    get_hf: Path,
    expect: int | None,
    commit: bool,
    push: bool,
    summary: Path | None,
) -> None:
    """Record the successes (ledger, models.md, datasets.md); list failures in the summary."""
    config = load(get_hf / "config.yaml")
    present = [p for p in results if p.exists()]
    # with --expect, a missing folder means no job left a result: counted below, not an error
    found = (
        gha.read_results(*(present if expect else results))
        if present or not expect
        else (gha.Results([], [], 0))
    )
    ok, failed = found.mirrored, found.failed
    missing = (expect or 0) - found.total
    if missing > 0:
        # a cancelled or crashed job uploads no result: say so rather than look all green
        failed.append(
            gha.failed_outcome(
                f"{missing} of {expect} planned repos have no result (their job did not finish)",
                origin="mirror jobs",
            )
        )
    changed = record_results(ok, get_hf=get_hf, ledger_name=config.record)
    sha = None
    if commit or push:
        sha = commit_records(
            get_hf.parent if get_hf.parent != Path("") else Path("."),
            changed,
            message=commit_message(ok),
            push=push,
        )
    lines = [f"### hf2oci: {len(ok)} mirrored, {len(failed)} failed", ""]
    lines += [f"- ✅ `{m.repo_id}` → `{m.image}:{m.tags[0]}` (`{m.digest[:19]}`)" for m in ok]
    for f in failed:
        where = f.get("origin") or f.get("repo_id") or "?"
        lines.append(f"- ❌ `{where}`: {redact(str(f.get('message', '')))}")
    gha.append_summary("\n".join(lines), path=str(summary) if summary else None)
    for f in failed:
        echo(f"failed: {f.get('repo_id') or f.get('origin')}: {f.get('message')}")
    echo(
        f"recorded {len(ok)}, {len(failed)} failed"
        + (f"; committed {sha[:12]}" if sha else "; records unchanged" if not changed else "")
    )
    sys.exit(1 if failed else 0)
