"""What the mirroring commands share (sync, mirror, plan): target options, the builder,
progress on the terminal, the pipeline run and its summary."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import click

from hf2oci.cli._common import echo, plain_http_option, redact
from hf2oci.cli._progress import meters
from hf2oci.config import Config
from hf2oci.pack.destination import Destination, Targets, default_max_layer_size
from hf2oci.pack.pipeline import Outcome, Report, RunOptions, iter_mirrored, run
from hf2oci.reference import parse_platform
from hf2oci.spec import RepoSpec, RepoType

F = TypeVar("F", bound=Callable[..., Any])


def destination_options(func: F) -> F:
    """--registry, --namespace, --builder, --plain-http/--no-plain-http, --output-dir."""
    options = [
        click.option("--registry", help="Registry host (e.g. ghcr.io); none: OCI layouts on disk."),
        click.option("--namespace", help="Namespace under the registry (e.g. hgfkeep)."),
        click.option(
            "--builder",
            type=click.Choice(["oci", "docker"]),
            help="oci: write images directly; docker: the same images, also in the Docker "
            "engine (pushed, then pulled by it; without a registry, loaded into it).",
        ),
        plain_http_option,
        click.option("--output-dir", help="Where OCI layouts go when no registry is set."),
        click.option(
            "--max-layer-size",
            help="The biggest layer the registry takes (10GB, 9.5GiB, bytes); default: the "
            "registry's known limit (ghcr.io 10 GB, ECR 52,000 MiB, ECR Public 10,000 MiB, "
            "quay.io 20 GB), none elsewhere.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def build_options(func: F) -> F:
    """--base-image, --platform, --format, --stream/--staged, --scan: how images are built."""
    options = [
        click.option("--base-image", help="Base image reference, or 'scratch'."),
        click.option(
            "--platform",
            "platforms",
            help="Platforms to build for, e.g. linux/amd64,linux/arm64 (default: every linux "
            "platform the base image offers); several make the tag an image index.",
        ),
        click.option(
            "--format",
            type=click.Choice(["image", "modelpack"]),
            help="What each repo becomes unless its list line says: image (busybox + /REPO, "
            "the default) or modelpack (a CNCF ModelPack artifact).",
        ),
        click.option(
            "--stream/--staged",
            default=None,
            help="Stream large files hub → image (default), or download all to disk first.",
        ),
        click.option(
            "--scan",
            type=click.Choice(["refuse", "warn", "off"]),
            help="Pickle-based files (.bin, .pt, .pkl, …) with an import that runs code on "
            "load: refuse the repo (default), warn (publish, record the finding), or off "
            "(scan nothing).",
        ),
        click.option(
            "--xet/--no-xet",
            default=None,
            help="Files the hub keeps in Xet: through the hub's own library, hf_xet (default), "
            "or over plain HTTP (its bridge, which stops at 50 GB a file).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def target_options(func: F) -> F:
    """Every option of where and how images are made (sync, mirror)."""
    return destination_options(build_options(func))


def max_layer_size(config: Config) -> int | None:
    """The configured limit, else the registry's known one."""
    if config.max_layer_size is not None:
        return config.max_layer_size
    return default_max_layer_size(config.registry)


def labels_lookup(config: Config) -> Callable[[RepoType, str], dict[str, str] | None]:
    """What plan asks the destination: the labels of the image now at a tag."""
    return Targets(destination(config), base_name=config.base_image).labels


def destination(config: Config) -> Destination:
    return Destination(
        namespace=config.namespace,
        registry=config.registry,
        layout_root=Path(config.output_dir),
        plain_http=config.plain_http,
        engine=config.builder == "docker",
    )


def progress_printer(enabled: bool) -> Callable[[str, str], None]:
    def say(repo: str, message: str) -> None:
        if enabled:
            echo(f"{repo}: {message}")

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
            scan=m.scan,
        )
    return doc


def summarize(report: Report, *, as_json: bool, extra_errors: Iterable[Outcome] = ()) -> int:
    """Print the end-of-run summary; returns the exit status (0 all done, 1 some failed)."""
    outcomes = [*extra_errors, *report.outcomes]
    failed = [o for o in outcomes if o.status == "failed"]
    counts = {
        s: sum(1 for o in outcomes if o.status == s) for s in ("mirrored", "skipped", "planned")
    }
    if not as_json:  # what was written, as `crane push` prints it: commands compose
        for line in iter_mirrored(report):
            click.echo(line)
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
    """Run the pipeline over ``specs`` with ``config`` and ``get_hf/``'s hook."""
    # lazily: start-up time: a command loads what it runs, when it runs it
    from hf2oci.trust.signing import load_signing_key

    prepare = get_hf / "prepare.sh"
    key = None if dry_run else load_signing_key()  # a bad key fails here, before any download
    options = RunOptions(
        destination=destination(config),
        base_image=config.base_image,
        platforms=tuple(parse_platform(p) for p in config.platforms) if config.platforms else None,
        format=config.format,
        prepare_script=prepare if prepare.is_file() else None,
        hub_workers=config.hub_workers,
        max_workers=config.max_workers,
        small_file_limit=config.small_file_limit,
        max_layer_size=max_layer_size(config),
        stream=config.stream,
        scan=config.scan,
        xet=config.xet,
        signing_key=key,
        meter=meters(not quiet and not as_json),
        dry_run=dry_run,
        force=force,
    )
    return run(specs, options, progress=progress_printer(not quiet))
