"""The pages: ``models.md`` and ``datasets.md``, rendered from the ledger (the same ledger, the
same bytes), with the command that gets each image."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

from hf2oci.naming import hub_url
from hf2oci.record.ledger import (
    DEFAULT_LEDGER,
    Ledger,
    load_ledger,
    write_if_changed,
)
from hf2oci.render import render
from hf2oci.spec import REPO_TYPES, Mirrored, RepoType, plural
from hf2oci.units import human_size

#: the markdown page of each repo type, relative to the project root
PAGES: Mapping[RepoType, str] = MappingProxyType({t: f"{plural(t)}.md" for t in REPO_TYPES})


@dataclass(frozen=True)
class _Row:
    repo_id: str
    url: str
    revision: str
    requested: str
    tags: tuple[str, ...]
    size: str
    file_count: int
    date: str
    pull: str
    format: str
    scan: str


def _daemon_name(entry: Mirrored) -> str:
    """The Docker name of a layout image: its last two path parts (``ns/models``)."""
    return "/".join(PurePosixPath(entry.image).parts[-2:]).lower()


def pull_command(entry: Mirrored) -> str:
    """How to get the image into Docker (a ModelPack artifact: onto disk), by where it was
    written."""
    tag = entry.tags[0]
    if entry.format == "modelpack":
        if entry.destination == "oci-layout":
            return f"hf2oci extract oci:{entry.image}:{tag} ./{entry.repo_id.rsplit('/', 1)[-1]}"
        return f"modctl pull {entry.image}:{tag}"
    if entry.destination == "oci-layout":
        return f"skopeo copy oci:{entry.image}:{tag} docker-daemon:{_daemon_name(entry)}:{tag}"
    if entry.destination == "docker-engine":  # loaded into the mirroring machine's engine
        return f"docker image inspect {entry.image}:{tag}"
    return f"docker pull {entry.image}:{tag}"


def _row(entry: Mirrored) -> _Row:
    rev = entry.revision[:12]
    requested = entry.requested_revision
    # the requested revision says something only when it is a branch or tag other than main
    shown = "" if requested in ("", "main") or entry.revision.startswith(requested) else requested
    return _Row(
        repo_id=entry.repo_id,
        url=hub_url(entry.repo_id, entry.repo_type),
        revision=rev,
        requested=shown,
        tags=entry.tags,
        size=human_size(entry.size),
        file_count=entry.file_count,
        date=entry.mirrored_at[:10],
        pull=pull_command(entry),
        format=entry.format,
        scan=entry.scan or "",
    )


def render_markdown(
    ledger: Ledger, repo_type: RepoType, *, source: str = f"get_hf/{DEFAULT_LEDGER}"
) -> str:
    """The page for one repo type (models.md or datasets.md); the same ledger, the same bytes."""
    entries = ledger.entries(repo_type)
    images = [e for e in entries if e.format == "image"]
    packs = [e for e in entries if e.format == "modelpack"]
    example: dict[str, Any] = {"ref": "", "modelpack": "", "oci_layout": False}
    if packs:
        example["modelpack"] = f"{packs[0].image}:{packs[0].tags[0]}"
        example["modelpack_layout"] = packs[0].destination == "oci-layout"
    if images:
        # the copy-out example prefers a pushed image: it is what most readers have
        first = next((e for e in images if e.destination != "oci-layout"), images[0])
        tag = first.tags[0]
        layouts = [e for e in images if e.destination == "oci-layout"]
        example |= {
            "ref": (
                f"{_daemon_name(first)}:{tag}"
                if first.destination == "oci-layout"
                else f"{first.image}:{tag}"
            ),
            "oci_layout": bool(layouts),
            "layout_ref": f"{layouts[0].image}:{layouts[0].tags[0]}" if layouts else "",
        }
    return render(
        "records.md.j2",
        kind=repo_type,
        plural=plural(repo_type),
        source=source,
        rows=[_row(e) for e in entries],
        example=example,
        formats=bool(packs),
        scans=any(e.scan for e in entries),
    )


def write_records(
    ledger: Ledger, *, root: Path, source: str = f"get_hf/{DEFAULT_LEDGER}"
) -> list[Path]:
    """Write ``root/models.md`` and ``root/datasets.md``; returns the files whose bytes changed."""
    changed = []
    for kind in REPO_TYPES:
        path = root / PAGES[kind]
        if write_if_changed(path, render_markdown(ledger, kind, source=source)):
            changed.append(path)
    return changed


def record_results(
    results: Iterable[Mirrored],
    *,
    get_hf: Path,
    ledger_name: str = DEFAULT_LEDGER,
    root: Path | None = None,
) -> list[Path]:
    """Merge ``results`` into ``get_hf/<ledger_name>`` and re-render the pages in ``root``.

    ``root`` defaults to the folder that holds ``get_hf``. Returns the files that changed.
    """
    root = get_hf.parent if root is None else root
    path = get_hf / ledger_name
    ledger = load_ledger(path).merge(results)
    changed = [path] if write_if_changed(path, ledger.to_json()) else []
    try:
        source = path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        source = path.name
    return changed + write_records(ledger, root=root, source=source)
