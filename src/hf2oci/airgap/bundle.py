"""``bundle``: the chosen repos' current tags (and their signatures), as one OCI image layout — a
folder, or a tar in volumes — holding only the blobs the inside's inventory does not list.

A bundle is a plain OCI layout: its ``index.json`` names each tag ``repository:tag``
(``hgfkeep/models:acme--m``), so ``skopeo copy oci:BUNDLE:hgfkeep/models:acme--m`` reads it.
Beside the layout, ``bundle.json`` says what to write where and what the inside must hold
already, and ``checksums.sha256`` (``sha256sum -c`` reads it) covers every other file. In a tar,
those come first, then manifests, then blobs smallest first; ``bundle.json`` lists the volumes
(their sizes are known before a byte is written), and ``NAME.tar.sha256`` their hashes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
import os
import shutil
import tarfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

from hf2oci import naming
from hf2oci.airgap.content import (
    Graph,
    Tagged,
    attachment_tags,
    image_tags,
    repositories,
    walk,
)
from hf2oci.airgap.schema import (
    BUNDLE_FILE,
    CHECKSUMS_FILE,
    BundleInfo,
    Inventory,
    ManifestEntry,
    Ref,
    dump,
)
from hf2oci.digest import CheckedReader, Expected, sha256_digest
from hf2oci.errors import PackError, UsageError
from hf2oci.oci import layout
from hf2oci.oci.image import ANNOTATION_REF_NAME, MT_INDEX
from hf2oci.oci.stores import ImageStore
from hf2oci.spec import RepoType

log = logging.getLogger(__name__)

LAYOUT_MARKER = b'{"imageLayoutVersion":"1.0.0"}\n'
BLOCK = 512
RECORD = 20 * BLOCK  # tarfile pads the archive to whole records


@dataclass(frozen=True)
class Choice:
    """A repo to bundle: ``acme/m`` (a model), ``datasets/acme/d`` (a dataset)."""

    repo_type: RepoType
    repo_id: str

    @classmethod
    def parse(cls, text: str) -> Choice:
        if text.startswith("datasets/"):
            return cls("dataset", naming.validate_repo_id(text.removeprefix("datasets/")))
        return cls("model", naming.validate_repo_id(text.removeprefix("models/")))


@dataclass
class Plan:
    """What a bundle will hold: tags, manifests, blobs (and from which repository to read
    each), and what it leaves to the inside."""

    info: BundleInfo
    manifest_bytes: dict[str, bytes] = field(default_factory=dict)
    blob_from: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @property
    def carried_bytes(self) -> int:
        return sum(self.info.blobs.values())


def plan_bundle(
    source: ImageStore,
    namespace: str,
    *,
    only: Sequence[Choice] = (),
    since: Inventory | None = None,
    records: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
) -> Plan:
    """The tags of the chosen repos (all mirrored ones by default) and what they need, less
    what ``since`` says the inside holds; UsageError for a chosen repo the source lacks.
    ``records``: the outside's ledger entries (by repo type and id), carried along for the
    inside's records where they describe the image bundled."""
    refs: list[Ref] = []
    attachments: list[Ref] = []
    manifests: list[ManifestEntry] = []
    manifest_bytes: dict[str, bytes] = {}
    needs: dict[str, list[str]] = {}
    blobs: dict[str, int] = {}
    blob_from: dict[str, str] = {}
    expects: dict[str, str] = {}
    repos: list[dict[str, Any]] = []
    skipped: list[str] = []
    wanted = {(c.repo_type, c.repo_id) for c in only}
    found: set[tuple[str, str]] = set()
    for repository, repo_type in repositories(namespace).items():
        all_tags = set(source.tags(repository))
        inside = _inside_tags(since, repo_type)
        graph = Graph()
        for current in _current(source, repository, repo_type, all_tags, wanted):
            found.add((repo_type, current.repo_id))
            chosen = [current, *_pinned(source, current, all_tags)]
            carried = [t for t in chosen if inside.get(t.tag) != t.digest]
            if not carried:
                skipped.append(f"{current.repo_id}: the inside holds {current.tag} already")
                continue
            for tagged in carried:
                walk(source, repository, tagged.data, tagged.media_type, graph)
                refs.append(Ref(repository, tagged.tag, tagged.digest, tagged.media_type,
                                len(tagged.data)))  # fmt: skip
            for digest in dict.fromkeys(t.digest for t in carried):
                for tag in attachment_tags(digest):
                    if tag in all_tags:
                        got = source.manifest(repository, tag)
                        if got is not None:
                            attached = walk(source, repository, got[0], got[1], graph)
                            attachments.append(Ref(repository, tag, attached, got[1], len(got[0])))
            entry: dict[str, Any] = {
                "repo_id": current.repo_id, "repo_type": repo_type,
                "revision": current.revision, "repository": repository,
                "tags": [t.tag for t in carried], "digest": current.digest,
                "created": current.created,
            }  # fmt: skip
            record = (records or {}).get((repo_type, current.repo_id))
            if record is not None and record.get("digest") == current.digest:
                entry["record"] = dict(record)
            repos.append(entry)
        for digest, (data, media_type) in graph.manifests.items():
            manifests.append(ManifestEntry(repository, digest, media_type))
            manifest_bytes[digest] = data
            blobs[digest] = len(data)
        needs[repository] = sorted(graph.blobs)
        for digest, size in graph.blobs.items():
            holder = since.holder(digest) if since is not None else None
            if holder is not None:
                expects[digest] = holder
            else:
                blobs[digest] = size
                blob_from.setdefault(digest, repository)
    missing = sorted(f"{'datasets/' if t == 'dataset' else ''}{r}" for t, r in wanted - found)
    if missing:
        raise UsageError(f"{source.where}: no mirrored image of {', '.join(missing)}")
    needs = {r: n for r, n in needs.items() if n}
    info = BundleInfo(
        namespace=namespace, refs=attachments + refs, manifests=manifests, needs=needs,
        blobs=dict(sorted(blobs.items())), expects=expects, repos=repos, source=source.where,
        created=dt.datetime.now(dt.timezone.utc).isoformat(),
    )  # fmt: skip
    return Plan(info, manifest_bytes, blob_from, skipped)


def _inside_tags(since: Inventory | None, repo_type: RepoType) -> dict[str, str]:
    if since is None:
        return {}
    held = since.tags.get(naming.image_repository(since.namespace, repo_type), {})
    return {tag: h.digest for tag, h in held.items()}


def _current(
    source: ImageStore,
    repository: str,
    repo_type: RepoType,
    all_tags: set[str],
    wanted: set[tuple[RepoType, str]],
) -> Iterator[Tagged]:
    """The moving tags (``org--name``) of the wanted repos (all, when none is named)."""
    if wanted:
        for t, repo_id in sorted(wanted):
            tag = naming.repo_tag(repo_id)
            if t == repo_type and tag in all_tags:
                got = source.manifest(repository, tag)
                if got is not None:
                    tagged = Tagged(repository, tag, sha256_digest(got[0]), got[0], got[1])
                    if tagged.repo_id == repo_id:
                        yield tagged
        return
    for tagged in image_tags(source, repository):
        if tagged.moving:
            yield tagged


def _pinned(source: ImageStore, current: Tagged, all_tags: set[str]) -> list[Tagged]:
    """The pinned tag of the current revision, when there is one."""
    if not current.revision:
        return []
    try:
        tag = naming.revision_tag(current.repo_id, current.revision)
    except (naming.InvalidRepoId, UsageError):
        return []
    if tag not in all_tags or tag == current.tag:
        return []
    got = source.manifest(current.repository, tag)
    if got is None:
        return []
    return [Tagged(current.repository, tag, sha256_digest(got[0]), got[0], got[1])]


# -- writing ---------------------------------------------------------------------------------


def _index(info: BundleInfo) -> bytes:
    entries = [
        {"mediaType": r.media_type or MT_INDEX, "digest": r.digest, "size": r.size,
         "annotations": {ANNOTATION_REF_NAME: f"{r.repository}:{r.tag}"}}
        for r in info.refs
    ]  # fmt: skip
    return dump({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": entries})


def _small_files(info: BundleInfo) -> list[tuple[str, bytes]]:
    """oci-layout, bundle.json and index.json, then the checksum list over them and the blobs."""
    files = [
        (layout.LAYOUT_FILE, LAYOUT_MARKER),
        (BUNDLE_FILE, info.to_json()),
        (layout.INDEX_FILE, _index(info)),
    ]
    lines = [f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in files]
    lines += [f"{d.partition(':')[2]}  {_blob_name(d)}\n" for d in info.blobs]
    files.insert(2, (CHECKSUMS_FILE, "".join(lines).encode()))
    return files


def _blob_name(digest: str) -> str:
    return "blobs/sha256/" + digest.partition(":")[2]


def write_folder(
    plan: Plan,
    source: ImageStore,
    out: Path,
    *,
    workers: int = 4,
    on_bytes: Callable[[int], None] | None = None,
) -> None:
    """Write the bundle as a folder: built beside ``out`` and renamed into place when whole."""
    _refuse_existing(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "blobs" / "sha256").mkdir(parents=True)
    try:
        for digest, data in plan.manifest_bytes.items():
            (partial / _blob_name(digest)).write_bytes(data)

        def place(digest: str) -> None:
            size = plan.info.blobs[digest]
            source.place_blob(plan.blob_from[digest], digest, size, partial / _blob_name(digest))
            if on_bytes is not None:
                on_bytes(size)

        with ThreadPoolExecutor(max(1, workers)) as pool:
            list(pool.map(place, list(plan.blob_from)))
        for name, data in _small_files(plan.info):
            (partial / name).write_bytes(data)
        os.replace(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _refuse_existing(out: Path) -> None:
    if out.exists() or out.is_symlink():
        raise UsageError(f"{out}: exists; remove it or choose another name")


def volume_names(out: Path, count: int) -> list[str]:
    """``B.tar`` alone, or ``B.tar.001``… when the bundle is split."""
    return [out.name] if count == 1 else [f"{out.name}.{i:03d}" for i in range(1, count + 1)]


def _member_size(size: int) -> int:
    return BLOCK + -(-size // BLOCK) * BLOCK


def _tar_size(sizes: Sequence[int]) -> int:
    total = sum(_member_size(s) for s in sizes) + 2 * BLOCK
    return -(-total // RECORD) * RECORD


def write_tar(
    plan: Plan,
    source: ImageStore,
    out: Path,
    *,
    split: int | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> list[tuple[str, int]]:
    """Write the bundle as one tar (or volumes of ``split`` bytes); the volumes (name, size).

    Volumes are written under temporary names and renamed when the last byte is in; their
    sha256 go to ``NAME.tar.sha256``."""
    small = _small_files(plan.info)  # sizes of bundle.json depend on the volumes: iterate
    order = list(plan.manifest_bytes) + sorted(plan.blob_from, key=lambda d: plan.info.blobs[d])
    sizes = [plan.info.blobs[d] for d in order]
    volumes: list[tuple[str, int]] = []
    for _ in range(4):
        total = _tar_size([len(data) for _, data in small] + sizes)
        count = 1 if not split else max(1, -(-total // split))
        names = volume_names(out, count)
        step = split or total
        wanted = [(n, min(step, total - i * step)) for i, n in enumerate(names)]
        if wanted == volumes:
            break
        volumes = wanted
        plan.info.volumes = volumes if split else []
        small = _small_files(plan.info)
    for name, _ in volumes:
        _refuse_existing(out.with_name(name))
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = _VolumeWriter(out.parent, volumes)
    try:
        with tarfile.open(fileobj=writer, mode="w|", format=tarfile.GNU_FORMAT) as tar:
            for name, data in small:
                tar.addfile(_info(name, len(data)), io.BytesIO(data))
            for digest in order:
                size = plan.info.blobs[digest]
                if digest in plan.manifest_bytes:
                    tar.addfile(_info(_blob_name(digest), size),
                                io.BytesIO(plan.manifest_bytes[digest]))  # fmt: skip
                    continue
                with source.open_blob(plan.blob_from[digest], digest) as stream:
                    checked = _checked(stream, digest, size, on_bytes)
                    tar.addfile(_info(_blob_name(digest), size), io.BufferedReader(checked))
                    checked.drain()
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    return volumes


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    info.uname = info.gname = ""
    return info


def _checked(
    stream: BinaryIO, digest: str, size: int, on_bytes: Callable[[int], None] | None
) -> CheckedReader:
    """A blob's stream read into the bundle, checked: a blob that changed while it was read
    never ends in a volume whole."""

    def refuse(_n: int, _got: str) -> PackError:
        return PackError(f"blob {digest} changed while it was read")

    readinto = cast(Callable[[Any], int], getattr(stream, "readinto"))  # noqa: B009 - BinaryIO's typing lacks it
    return CheckedReader(
        readinto, Expected.of_digest(digest, size), refuse=refuse, on_bytes=on_bytes
    )


class _VolumeWriter(io.RawIOBase):
    """A file object that fills each volume to its size, then opens the next; names are
    ``.NAME.partial`` until ``finish`` renames them all and writes their hashes beside."""

    def __init__(self, folder: Path, volumes: Sequence[tuple[str, int]]) -> None:
        super().__init__()
        self.folder, self.volumes = folder, list(volumes)
        self.index, self.left = -1, 0
        self.out: BinaryIO | None = None
        self.hashes: list[str] = []
        self._hash = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def _partial(self, name: str) -> Path:
        return self.folder / f".{name}.partial"

    def _next(self) -> None:
        self._close_current()
        self.index += 1
        if self.index >= len(self.volumes):
            raise PackError("the bundle came out bigger than planned")
        name, self.left = self.volumes[self.index]
        self.out = open(self._partial(name), "wb")  # noqa: SIM115
        self._hash = hashlib.sha256()

    def _close_current(self) -> None:
        if self.out is not None:
            self.out.flush()
            os.fsync(self.out.fileno())
            self.out.close()
            self.out = None
            self.hashes.append(self._hash.hexdigest())

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            if self.out is None or self.left == 0:
                self._next()
            n = min(self.left, len(view) - done)
            assert self.out is not None
            self.out.write(view[done : done + n])
            self._hash.update(view[done : done + n])
            self.left -= n
            done += n
        return done

    def finish(self) -> None:
        self._close_current()
        if self.index != len(self.volumes) - 1 or self.left:
            raise PackError("the bundle came out smaller than planned")
        for name, _ in self.volumes:
            os.replace(self._partial(name), self.folder / name)
        sums = "".join(f"{h}  {n}\n" for h, (n, _) in zip(self.hashes, self.volumes, strict=True))
        first = self.volumes[0][0]
        base = first[:-4] if first.endswith(".001") else first
        (self.folder / f"{base}.sha256").write_text(sums)

    def abort(self) -> None:
        if self.out is not None:
            self.out.close()
            self.out = None
        for name, _ in self.volumes:
            self._partial(name).unlink(missing_ok=True)


def bundle(
    source: ImageStore,
    namespace: str,
    out: Path,
    *,
    only: Sequence[Choice] = (),
    since: Inventory | None = None,
    split: int | None = None,
    on_plan: Callable[[Plan], None] | None = None,
    records: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
    on_bytes: Callable[[Plan], Callable[[int], None] | None] | None = None,
) -> Plan:
    """Plan and write a bundle: a tar when ``out`` ends in ``.tar``, else a folder.
    ``on_bytes``, given the plan, returns what to tell of the blob bytes written (progress)."""
    if split is not None and out.suffix != ".tar":
        raise UsageError(f"{out}: --split needs a tar bundle (a name ending in .tar)")
    for existing in (out, out.with_name(out.name + ".001")):
        _refuse_existing(existing)
    plan = plan_bundle(source, namespace, only=only, since=since, records=records)
    if on_plan is not None:
        on_plan(plan)
    count = on_bytes(plan) if on_bytes is not None else None
    if out.suffix == ".tar":
        write_tar(plan, source, out, split=split, on_bytes=count)
    else:
        write_folder(plan, source, out, on_bytes=count)
    return plan
