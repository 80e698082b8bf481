"""``hf2oci mirror``: mirror one repo given on the command line."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hf2oci.cli._common import (
    build,
    byte_meter,
    handle_errors,
    load,
    progress_printer,
    summarize,
    target_options,
)
from hf2oci.errors import UsageError
from hf2oci.lists import parse_list
from hf2oci.pipeline import RunOptions, run
from hf2oci.record import record_results
from hf2oci.spec import RepoSpec


@click.command()
@click.argument("repo_id")
@click.option("--dataset", is_flag=True, help="The repo is a dataset.")
@click.option("--revision", help="Branch, tag or commit sha (default: main).")
@click.option("--include", multiple=True, help="Keep only files matching this glob (repeatable).")
@click.option("--exclude", multiple=True, help="Drop files matching this glob (repeatable).")
@click.option("--preset", help="safetensors, gguf:QUANT (e.g. gguf:Q4_K_M) or none.")
@target_options
@click.option(
    "--get-hf",
    "get_hf",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("get_hf"),
    show_default=True,
    help="Where config.yaml, prepare.sh and the record are, when the folder exists.",
)
@click.option("--no-record", is_flag=True, help="Do not update the record in get_hf/.")
@click.option("--force", is_flag=True, help="Mirror even if the image looks up to date.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
@handle_errors
def mirror(
    repo_id: str,
    dataset: bool,
    revision: str | None,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    preset: str | None,
    get_hf: Path,
    no_record: bool,
    force: bool,
    as_json: bool,
    quiet: bool,
    **overrides: str | bool | None,
) -> None:
    """Mirror one repo (REPO_ID like org/name)."""
    spec = parse_spec(
        repo_id, dataset=dataset, revision=revision, include=include, exclude=exclude, preset=preset
    )
    config = load(get_hf / "config.yaml", **overrides)
    builder = build(config)
    prepare = get_hf / "prepare.sh"
    options = RunOptions(
        destination=builder.destination,
        prepare_script=prepare if prepare.is_file() else None,
        hub_workers=config.hub_workers,
        stream=config.stream,
        meter=byte_meter(not quiet and not as_json),
        force=force,
    )
    report = run([spec], builder, options, progress=progress_printer(not quiet))
    if not no_record and get_hf.is_dir():
        record_results(report.mirrored, get_hf=get_hf, ledger_name=config.record)
    sys.exit(summarize(report, as_json=as_json))


def parse_spec(
    repo_id: str,
    *,
    dataset: bool,
    revision: str | None,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    preset: str | None,
) -> RepoSpec:
    """Validate the arguments with the list-line grammar, so both inputs obey one set of rules."""
    words = [repo_id + (f"@{revision}" if revision else "")]
    if include:
        words.append("include=" + ",".join(include))
    if exclude:
        words.append("exclude=" + ",".join(exclude))
    if preset:
        words.append(f"preset={preset}")
    specs, errors = parse_list(
        " ".join(words), path="<command line>", repo_type="dataset" if dataset else "model"
    )
    if errors:
        raise UsageError(errors[0].reason)
    return specs[0]
