"""What the mirroring commands share (sync, mirror, plan): target options, the builder,
progress on the terminal, the pipeline run and its summary."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import click

from hf2oci import hub
from hf2oci.builders import Builder, Destination, make_builder
from hf2oci.cli._common import byte_meter, echo, redact
from hf2oci.config import Config
from hf2oci.errors import Hf2ociError, UsageError
from hf2oci.pipeline import Outcome, Report, RunOptions, run
from hf2oci.spec import RepoSpec

F = TypeVar("F", bound=Callable[..., Any])


def target_options(func: F) -> F:
    """--registry, --namespace, --base-image, --builder, --plain-http."""
    options = [
        click.option("--registry", help="Registry host (e.g. ghcr.io); none: OCI layouts on disk."),
        click.option("--namespace", help="Namespace under the registry (e.g. hgfkeep)."),
        click.option("--base-image", help="Base image reference, or 'scratch'."),
        click.option(
            "--builder", type=click.Choice(["oci", "docker"]), help="How images are built."
        ),
        click.option(
            "--plain-http",
            is_flag=True,
            default=None,
            help="Talk HTTP, not HTTPS, to the registry.",
        ),
        click.option("--output-dir", help="Where OCI layouts go when no registry is set."),
        click.option(
            "--stream/--staged",
            default=None,
            help="Stream large files hub → image (default), or download all to disk first.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def build(config: Config) -> Builder:
    destination = Destination(
        namespace=config.namespace,
        registry=config.registry,
        layout_root=Path(config.output_dir),
        plain_http=True if config.plain_http else None,
    )
    try:
        return make_builder(
            config.builder,
            destination=destination,
            base_image=config.base_image,
            small_file_limit=config.small_file_limit,
        )
    except Hf2ociError as e:
        raise UsageError(str(e)) from e


def progress_printer(enabled: bool) -> Callable[[str, str], None]:
    def say(repo: str, message: str) -> None:
        if enabled:
            echo(f"{repo}: {message}")

    hub.set_progress_bars(enabled and sys.stderr.isatty())
    return say


def outcome_json(o: Outcome) -> dict[str, Any]:
    doc: dict[str, Any] = {"status": o.status, "message": redact(o.message), "origin": o.origin}
    if o.spec is not None:
        doc.update(repo_id=o.spec.repo_id, repo_type=o.spec.repo_type, revision=o.spec.revision)
    if o.mirrored is not None:
        m = o.mirrored
        doc.update(
            image=m.image,
            tags=list(m.tags),
            digest=m.digest,
            revision=m.revision,
            size=m.size,
            file_count=m.file_count,
        )
    return doc


def summarize(report: Report, *, as_json: bool, extra_errors: Iterable[Outcome] = ()) -> int:
    """Print the end-of-run summary; returns the exit status (0 all done, 1 some failed)."""
    outcomes = [*extra_errors, *report.outcomes]
    failed = [o for o in outcomes if o.status == "failed"]
    counts = {
        s: sum(1 for o in outcomes if o.status == s) for s in ("mirrored", "skipped", "planned")
    }
    if as_json:
        doc = {
            "ok": not failed,
            **counts,
            "failed": len(failed),
            "results": [outcome_json(o) for o in outcomes],
        }
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
    parts = [f"{n} {s}" for s, n in counts.items() if n] + [f"{len(failed)} failed"]
    echo(", ".join(parts))
    for o in failed:
        echo(f"  {_failure_line(o)}")
    return 1 if failed else 0


def _failure_line(o: Outcome) -> str:
    """``place: repo: message``, without repeating what the message already says."""
    parts = [o.origin] if o.origin and not o.message.startswith(o.origin) else []
    if o.spec is not None and o.spec.repo_id not in o.message:
        parts.append(o.spec.label)
    return ": ".join([*parts, o.message])


def run_specs(
    specs: list[RepoSpec],
    config: Config,
    *,
    get_hf: Path,
    quiet: bool,
    as_json: bool,
    dry_run: bool = False,
    force: bool = False,
) -> Report:
    """Build the builder and options from ``config`` and ``get_hf/`` and run the pipeline."""
    builder = build(config)
    prepare = get_hf / "prepare.sh"
    options = RunOptions(
        destination=builder.destination,
        prepare_script=prepare if prepare.is_file() else None,
        hub_workers=config.hub_workers,
        stream=config.stream,
        meter=byte_meter(not quiet and not as_json),
        dry_run=dry_run,
        force=force,
    )
    return run(specs, builder, options, progress=progress_printer(not quiet))
