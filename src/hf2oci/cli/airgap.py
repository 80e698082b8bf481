"""``hf2oci inventory``, ``bundle``, ``load`` and ``prune``: crossing an air gap, and retention."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from hf2oci.cli._common import (
    echo,
    get_hf_option,
    handle_errors,
    is_quiet,
    load,
    plain_http_option,
    policy_key,
    verbosity,
)
from hf2oci.cli._progress import Meter, meters
from hf2oci.errors import ConfigError
from hf2oci.units import human_size

if TYPE_CHECKING:
    from hf2oci.oci.registry import RegistryClient

F = TypeVar("F", bound=Callable[..., Any])


def _registry_option(required: bool) -> Callable[[F], F]:
    return click.option(
        "--registry",
        required=False,
        help="The registry (host[:port])" + ("" if required else " (default: config.yaml's)") + ".",
    )


def _namespace_option(func: F) -> F:
    return click.option(
        "--namespace", help="Namespace of the images (default: config.yaml's, e.g. hgfkeep)."
    )(func)


def _client(
    registry: str | None, plain_http: bool | None, *, monolithic: bool = False
) -> RegistryClient:
    """The registry's client; ``monolithic``: every blob in one streamed PUT (a bundle's blobs
    are files or tar members read once, checked on the way: no chunk is held in memory)."""
    # lazily: start-up time: a command loads what it runs, when it runs it
    from hf2oci.oci.registry import RegistryClient

    if not registry:
        raise ConfigError("no registry: pass --registry HOST[:PORT] (or set it in config.yaml)")
    if monolithic:
        return RegistryClient(registry, plain_http=plain_http, chunk_size=1 << 50)
    return RegistryClient(registry, plain_http=plain_http)


@click.command("inventory")
@_registry_option(True)
@_namespace_option
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Write it here (default: "
              "standard output).")  # fmt: skip
@plain_http_option
@get_hf_option
@verbosity
@handle_errors
def inventory(
    registry: str | None,
    namespace: str | None,
    output: Path | None,
    plain_http: bool | None,
    get_hf: Path,
) -> None:
    """Say what the registry holds for hf2oci (tags, revisions, manifest and blob digests): the
    small file that crosses out, so a bundle carries only the rest. Reads no layer."""
    # lazily: start-up time: a command loads what it runs, when it runs it
    from hf2oci.airgap.inventory import take_inventory
    from hf2oci.oci.stores import RegistryStore

    config = load(get_hf / "config.yaml", registry=registry, namespace=namespace,
                  plain_http=plain_http)  # fmt: skip
    client = _client(config.registry, config.plain_http)
    found = take_inventory(RegistryStore(client), client.registry, config.namespace)
    data = found.to_json()
    if output is None:
        sys.stdout.buffer.write(data)
    else:
        # lazily: start-up time: a command loads what it runs, when it runs it
        from hf2oci.fsutil import atomic_write

        atomic_write(output, data)
        tags = sum(len(t) for t in found.tags.values())
        blobs = len(set().union(*found.blobs.values())) if found.blobs else 0
        echo(f"{output}: {tags} tags, {blobs} blobs ({human_size(len(data))})")


@click.command("bundle")
@click.option(
    "--only",
    "only",
    multiple=True,
    metavar="REPO_ID",
    help="Bundle this repo (repeat; datasets/ORG/NAME for a dataset; default: all).",
)
@click.option(
    "--since",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The inside's inventory: leave out what it holds.",
)
@_registry_option(False)
@click.option(
    "--layout",
    type=click.Path(path_type=Path, file_okay=False),
    help="Read the layouts sync wrote under this folder instead of a registry.",
)
@_namespace_option
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="The bundle: a folder, or NAME.tar.",
)
@click.option("--split", help="Tar volumes of this size (e.g. 4GiB): NAME.tar.001, …")
@plain_http_option
@get_hf_option
@verbosity
@handle_errors
def bundle(
    only: tuple[str, ...],
    since: Path | None,
    registry: str | None,
    layout: Path | None,
    namespace: str | None,
    output: Path,
    split: str | None,
    plain_http: bool | None,
    get_hf: Path,
) -> None:
    """Write the mirrored repos' current tags and signatures as one OCI layout (a folder or a
    tar, in volumes), holding only the blobs the inventory of the other side lacks."""
    # lazily: start-up time: a command loads what it runs, when it runs it
    from hf2oci.airgap.bundle import Choice, Plan
    from hf2oci.airgap.bundle import bundle as run
    from hf2oci.airgap.schema import Inventory
    from hf2oci.config import parse_size
    from hf2oci.oci.stores import ImageStore, LayoutStore, RegistryStore
    from hf2oci.record.ledger import carried_records

    config = load(get_hf / "config.yaml", registry=registry, namespace=namespace,
                  plain_http=plain_http)  # fmt: skip
    if layout is not None and registry:
        raise ConfigError("--registry and --layout: read one of them")
    source: ImageStore
    if layout is not None or not config.registry:
        source = LayoutStore(layout if layout is not None else Path(config.output_dir))
    else:
        source = RegistryStore(_client(config.registry, config.plain_http))
    choices = [Choice.parse(text) for text in only]
    inside = Inventory.read(since) if since is not None else None
    records = carried_records(get_hf / config.record)
    size = parse_size(split, "--split") if split else None
    if size is not None and size < 1 << 20:
        raise ConfigError(f"--split {split}: volumes of at least 1 MiB")

    def planned(plan: Plan) -> None:
        for line in plan.skipped:
            echo(line)
        info = plan.info
        expected = len(info.expects)
        echo(f"{output}: {len(info.repos)} repos, {len(info.refs)} tags, {len(info.blobs)} "
             f"blobs ({human_size(plan.carried_bytes)})"
             + (f"; {expected} blobs left to the inside" if expected else ""))  # fmt: skip

    progress = _Progress(str(output))
    run(source, config.namespace, output, only=choices, since=inside, split=size,
        on_plan=planned, records=records,
        on_bytes=lambda plan: progress.start(plan.carried_bytes))  # fmt: skip
    progress.finish()


class _Progress:
    """A command's one meter (``_progress``), made once its total is known; None with -q."""

    def __init__(self, label: str) -> None:
        self.label, self.make = label, meters(not is_quiet())
        self.meter: Meter | None = None

    def start(self, total: int) -> Callable[[int], None] | None:
        if self.make is not None:
            self.meter = self.make(self.label, total)
        return self.meter

    def finish(self) -> None:
        if self.meter is not None:
            self.meter.finish()


@click.command("load")
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(path_type=Path))
@_registry_option(True)
@_namespace_option
@click.option(
    "--verify-key",
    type=click.Path(path_type=Path),
    help="A public key (PEM): refuse images whose signatures it does not verify "
    "(default: config.yaml's verify_key).",
)
@plain_http_option
@get_hf_option
@verbosity
@handle_errors
def load_command(
    bundle_path: Path,
    registry: str | None,
    namespace: str | None,
    verify_key: Path | None,
    plain_http: bool | None,
    get_hf: Path,
) -> None:
    """Check every byte of BUNDLE (a folder, NAME.tar or NAME.tar.001), then upload what the
    registry lacks and publish its tags last. Run it again after a failure: it resumes.

    The namespace defaults to the bundle's; another one re-homes the repos."""
    # lazily: start-up time: a command loads what it runs, when it runs it
    from hf2oci.airgap.load import load as run
    from hf2oci.airgap.read import open_bundle

    config = load(get_hf / "config.yaml", registry=registry, plain_http=plain_http)
    key = policy_key(verify_key, get_hf, config)
    client = _client(config.registry, config.plain_http, monolithic=True)
    opened, close = open_bundle(bundle_path)
    try:
        progress = _Progress(str(bundle_path))
        report = run(opened, client, namespace=namespace, verify_key=key,
                     on_bytes=progress.start)  # fmt: skip
        progress.finish()
    finally:
        close()
    for line in report.refused:
        echo(line)
    source = click.get_current_context().get_parameter_source("get_hf")
    if source is click.core.ParameterSource.COMMANDLINE:
        # lazily: start-up time: a command loads what it runs, when it runs it
        from hf2oci.airgap.load import mirrored
        from hf2oci.record import record_results

        entries = mirrored(opened, report, client.registry, namespace)
        changed = record_results(entries, get_hf=get_hf, ledger_name=config.record)
        echo(f"recorded {len(entries)} repos" + (f" ({', '.join(map(str, changed))})"
                                                 if changed else ""))  # fmt: skip
    for ref in report.published:
        if not ref.attachment:
            click.echo(
                f"{client.registry}/{(namespace or opened.info.namespace)}"
                f"{ref.repository[len(opened.info.namespace) :]}:{ref.tag}@{ref.digest}"
            )
    echo(f"{bundle_path}: {len(report.uploaded)} blobs uploaded "
         f"({human_size(report.uploaded_bytes)}), {len(report.mounted)} mounted, "
         f"{len(set(report.present))} already there; {len(report.published)} tags")  # fmt: skip
    sys.exit(0 if report.ok else 1)


@click.command("prune")
@_registry_option(True)
@_namespace_option
@click.option("--keep", type=int, help="Keep the N newest pinned revisions of each repo.")
@click.option(
    "--older-than",
    type=click.FloatRange(0),
    metavar="DAYS",
    help="Remove only pinned revisions older than this (the revision's date).",
)
@click.option("--dry-run", is_flag=True, help="Print what would go; delete nothing.")
@plain_http_option
@get_hf_option
@verbosity
@handle_errors
def prune(
    registry: str | None,
    namespace: str | None,
    keep: int | None,
    older_than: float | None,
    dry_run: bool,
    plain_http: bool | None,
    get_hf: Path,
) -> None:
    """Delete pinned revision tags (and their signatures) beyond --keep N per repo and/or
    older than --older-than DAYS. Never a moving tag, its revision, or a revision a list line
    pins. Then run the registry's garbage collection to free the layers."""
    # lazily: start-up time: a command loads what it runs, when it runs it
    from hf2oci.airgap.prune import plan_prune
    from hf2oci.airgap.prune import prune as run
    from hf2oci.intake.lists import read_lists

    config = load(get_hf / "config.yaml", registry=registry, namespace=namespace,
                  plain_http=plain_http)  # fmt: skip
    client = _client(config.registry, config.plain_http)
    specs = read_lists(get_hf)[0] if get_hf.is_dir() else []
    removals, notes = plan_prune(client, config.namespace, keep=keep, older_than=older_than,
                                 pinned_by_lists=specs)  # fmt: skip
    for line in notes:
        echo(line)
    if dry_run:
        for removal in removals:
            click.echo(removal.line(dry_run=True))
    else:
        run(client, removals, on_removed=lambda r: click.echo(r.line(dry_run=False)))
    if not removals:
        echo("nothing to prune")
