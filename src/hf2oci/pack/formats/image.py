"""The image format: the base's layers, then the repo's files under ``/REPO``.

Small files share one layer; each large file gets a layer of its own (neighbours share when there
are too many: shards by their numbers), so the same file gives the same layer in every revision;
a file over the layer size limit goes in parts, a layer each (``repofiles``). A file's bytes come
from disk or straight from the hub: that only decides whether its layer is a ``TarLayer`` (digest
computed first) or a ``StreamLayer`` (digest learnt while the sink writes it). Layers whose content
key (paths + hub hashes) is known at the destination are reused without a download.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hf2oci import labels as L
from hf2oci.digest import Expected, SplitCheck, sha256_digest, sha256_file
from hf2oci.errors import PackError
from hf2oci.oci.blobs import StreamLayer, TarLayer, read_file_range
from hf2oci.oci.image import (
    MT_LAYER_TAR,
    Artifact,
    Base,
    ImageIndex,
    Layer,
    assemble,
    canonical_json,
)
from hf2oci.oci.tarstream import (
    LINK_MODE,
    ChunkSource,
    TarEntry,
    data_offsets,
    entries_for_streams,
)
from hf2oci.pack.formats.grouping import (
    DEFAULT_SMALL_FILE_LIMIT,
    carry,
    group_files,
    layer_budget,
)
from hf2oci.pack.layercache import LayerCache
from hf2oci.repofiles import (
    INDEX_PATH,
    INDEX_VERSION,
    INDEX_VERSION_PARTS,
    JOIN_PATH,
    MODELCAR_DIR,
    REPO_DIR,
    Join,
    Part,
    join_script,
)

log = logging.getLogger(__name__)

#: bump when the tar bytes for the same files change, so old content keys stop matching
TAR_FORMAT = "hf2oci-tar-1"
#: a file's bytes ``[start, end)``, unchecked (the parts of a streamed file read them)
RangeSource = Callable[[int, int], Iterator[bytes]]


@dataclass(frozen=True)
class PackFile:
    """One file to put under ``/REPO``."""

    path: str
    size: int
    #: where the bytes come from: a file on disk, or a hub stream (one pass, hash-checked)
    source: Path | ChunkSource
    #: the hub's hashes: sha256 (LFS files) and git blob sha1; None when a hook may have
    #: changed the file
    sha256: str | None = None
    blob_id: str | None = None
    #: the hub's Xet hash of the content (recorded in the file index, for serve)
    xet_hash: str | None = None
    #: a streamed file's bytes by range, for its parts when it is carried in parts
    ranges: RangeSource | None = None

    @property
    def streamed(self) -> bool:
        return not isinstance(self.source, Path)

    @property
    def hub_hash(self) -> str | None:
        """What the content key names the file by: ``sha256:…`` or ``gitsha1:…``."""
        if self.sha256:
            return f"sha256:{self.sha256}"
        return f"gitsha1:{self.blob_id}" if self.blob_id else None


def files_under(root: Path) -> list[PackFile]:
    """Every regular file under ``root`` (a snapshot, or what a prepare hook left in OUT_DIR)."""
    files = []
    real_root = root.resolve()
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink() and not p.resolve().is_relative_to(real_root):
            raise PackError(f"{rel} links outside the output folder")
        if p.is_file():
            source = p.resolve()
            try:
                size = source.stat().st_size
            except OSError as e:
                raise PackError(f"cannot read {rel!r}: {e.strerror}") from e
            files.append(PackFile(rel, size, source))
    return files


def layer_annotations(group: Sequence[str], hashes: Mapping[str, str]) -> dict[str, str]:
    """Annotations of a layer: its content key, and its file name when it holds one file."""
    if any(p not in hashes for p in group):
        return {}
    key = sha256_digest(
        canonical_json({"format": TAR_FORMAT, "files": [[p, hashes[p]] for p in group]})
    )
    out = {L.CONTENT_KEY: key}
    if len(group) == 1:
        out[L.TITLE] = group[0]
    return out


class Reuse:
    """Layers the destination already holds, by content key: from the image now at the tag and
    from the local cache of layers streamed before (each checked at the destination first)."""

    def __init__(
        self,
        stored_layer: Callable[[str, int], Layer | None],
        current_manifest: Mapping[str, object] | None,
        cache: LayerCache | None = None,
    ) -> None:
        self.stored_layer = stored_layer
        self.cache = cache or LayerCache()
        self.known = self.cache.load()
        layers = (current_manifest or {}).get("layers")
        for desc in layers if isinstance(layers, list) else []:
            key = (desc.get("annotations") or {}).get(L.CONTENT_KEY)
            if key and desc.get("mediaType") == MT_LAYER_TAR:
                self.known[key] = (str(desc["digest"]), int(desc["size"]))

    def find(self, key: str | None) -> Layer | None:
        if not key or key not in self.known:
            return None
        return self.stored_layer(*self.known[key])

    def remember(self, key: str, digest: str, size: int) -> None:
        self.cache.add(key, digest, size)


@dataclass(frozen=True)
class _Member:
    """What one tar entry under /REPO carries: a file, or one part of a file."""

    name: str
    size: int
    file: PackFile
    source: Path | ChunkSource
    part: Part | None = None

    @property
    def streamed(self) -> bool:
        return self.file.streamed


def build_image(
    files: Sequence[PackFile],
    *,
    base: Base,
    labels: Mapping[str, str],
    created: str,
    small_limit: int = DEFAULT_SMALL_FILE_LIMIT,
    max_layer_size: int | None = None,
    reuse: Reuse | None = None,
) -> Artifact:
    """The image of ``files`` on ``base``: one image, or an index of one per platform whose
    repo layers are the same objects (written once, same digests everywhere). Configs and
    manifests are made once the sink has written the layers (streamed ones learn their digest
    then). A file over ``max_layer_size`` goes in parts: their join is in the file index, the
    ``io.hf2oci.parts`` label and ``.hf2oci/join.sh``.

    The file index gives layer positions in the first platform's image; a reader of another
    one shifts them by where it finds the index layer (it is always the last).
    """
    if not files:
        raise PackError("no file to pack: the filters keep nothing")
    by_path = {f.path: f for f in files}
    if len(by_path) != len(files):
        raise PackError("a file is listed twice")
    sized = [(f.path, f.size) for f in files]
    _, parts = carry(sized, max_layer_size)
    members, joins = _members(by_path, parts)
    hashes = {m.name: h for m in members.values() if (h := _member_hash(m))}
    groups = group_files(
        sized,
        small_limit=small_limit,
        max_layers=layer_budget(base.layer_count),
        max_layer_size=max_layer_size,
    )
    reused = _reused_parts(joins, members, hashes, reuse)
    layers: list[Layer] = []
    notes: list[dict[str, str]] = []
    index: dict[str, dict[str, object]] = {}
    first = len(base.images[0].layers)
    for group in groups:
        note = layer_annotations(group, hashes)
        chosen = [members[name] for name in group]
        entries = entries_for_streams([(m.name, m.source, m.size) for m in chosen], prefix=REPO_DIR)
        offsets = data_offsets(entries)
        position = first + len(layers)
        for m in chosen:
            at = offsets[f"{REPO_DIR}/{m.name}"]
            entry = index.setdefault(m.file.path, _index_entry(m.file))
            if m.part is None:
                entry.update(layer=position, offset=at)
            else:
                entry["parts"] = [*_list(entry.get("parts")), [position, at, m.size]]
        if chosen[0].part is not None and chosen[0].file.path in reused:
            layers.append(reused[chosen[0].file.path][chosen[0].part.index - 1])
        else:
            parted = chosen[0].part is not None
            layers.append(_layer(chosen, entries, note.get(L.CONTENT_KEY), reuse, parted))
        notes.append(note)
    layers.append(_index_layer(list(index.values()), joins))
    notes.append({L.FILE_INDEX: str(_index_version(joins)), L.TITLE: INDEX_PATH})
    if joins:
        labels = {**labels, L.PARTS: _parts_label(joins)}
    images = [
        assemble(
            image,
            layers,
            labels=labels,
            annotations=labels,
            created=created,
            layer_annotations=notes,
        )
        for image in base.images
    ]
    return images[0] if len(images) == 1 else ImageIndex(images, annotations=labels)


def _members(
    by_path: Mapping[str, PackFile], parts: Sequence[Part]
) -> tuple[dict[str, _Member], dict[str, Join]]:
    """Each tar entry's member by name: the files carried whole, and each part of the others
    (a streamed file's parts read as ranges checked together by ``SplitCheck``)."""
    of: dict[str, list[Part]] = {}
    for part in parts:
        of.setdefault(part.path, []).append(part)
    members = {
        f.path: _Member(f.path, f.size, f, f.source) for f in by_path.values() if f.path not in of
    }
    joins = {}
    for path, pieces in of.items():
        sha256, sources = raw_parts(by_path[path], pieces)
        f = by_path[path]
        for part, source in zip(pieces, sources, strict=True):
            members[part.name] = _Member(part.name, part.size, f, source, part)
        joins[path] = Join.of(sha256, pieces)
    return members, joins


def raw_parts(f: PackFile, parts: Sequence[Part]) -> tuple[str, list[ChunkSource]]:
    """The sha256 ``f``'s parts join to, and each part's bytes (checked together)."""
    sha256 = f.sha256 or _disk_sha256(f)
    return sha256, _part_sources(f, parts, sha256)


def _disk_sha256(f: PackFile) -> str:
    if not isinstance(f.source, Path):
        raise PackError(f"{f.path} goes in parts, and has no sha256 to check them by")
    try:
        return sha256_file(f.source).removeprefix("sha256:")
    except OSError as e:
        raise PackError(f"cannot read {str(f.source)!r}: {e.strerror}") from e


def _part_sources(f: PackFile, parts: Sequence[Part], sha256: str) -> list[ChunkSource]:
    if isinstance(f.source, Path):  # on disk, checked when it was fetched: read as it is
        path = f.source
        return [_disk_range(path, p.start, p.size) for p in parts]
    if f.ranges is None:
        raise PackError(f"{f.path} goes in parts, and its source cannot be read by range")
    check = SplitCheck(
        Expected(f.size, sha256=sha256),
        [(p.start, p.end) for p in parts],
        f.ranges,
        what=f.path,
        background=True,
    )
    return [check.source(i) for i in range(len(parts))]


def _disk_range(path: Path, start: int, size: int) -> ChunkSource:
    return lambda: read_file_range(path, start, size)


def _member_hash(m: _Member) -> str | None:
    """What the content key names a member by: the file's hub hash (and a part's range)."""
    h = m.file.hub_hash
    if h is None or m.part is None:
        return h
    return f"{h}#{m.part.start}+{m.part.size}"


def _reused_parts(
    joins: Mapping[str, Join],
    members: Mapping[str, _Member],
    hashes: Mapping[str, str],
    reuse: Reuse | None,
) -> dict[str, list[Layer]]:
    """The stored layers of every part of a streamed file, by its path, when the destination
    holds them all (a part is checked only with all the others: never some of them)."""
    found: dict[str, list[Layer]] = {}
    if reuse is None:
        return found
    for path, join in joins.items():
        names = list(join.names)
        if not members[names[0]].streamed:
            continue
        layers = [reuse.find(layer_annotations([n], hashes).get(L.CONTENT_KEY)) for n in names]
        if all(layer is not None for layer in layers):
            log.info("%s: reusing its %d parts' layers", path, len(layers))
            found[path] = [layer for layer in layers if layer is not None]
    return found


def _layer(
    members: Sequence[_Member],
    entries: Sequence[TarEntry],
    key: str | None,
    reuse: Reuse | None,
    parted: bool,
) -> Layer:
    if not any(m.streamed for m in members):
        return TarLayer(entries)
    if reuse is not None and not parted:
        found = reuse.find(key)
        if found is not None:
            log.info("%s: reusing layer %s", members[0].name, found.digest[:19])
            return found
    layer = StreamLayer(entries)
    # a part's layer is not remembered: its bytes are checked only with the file's last part
    if reuse is not None and key and not parted:
        layer.on_digest = lambda digest: reuse.remember(key, digest, layer.size)
    return layer


def _index_entry(f: PackFile) -> dict[str, object]:
    entry: dict[str, object] = {"path": f.path, "size": f.size}
    if f.blob_id:
        entry["blob_id"] = f.blob_id
    if f.sha256:
        entry["sha256"] = f.sha256
    if f.xet_hash:
        entry["xet_hash"] = f.xet_hash
    return entry


def _list(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else []


def _index_version(joins: Mapping[str, Join]) -> int:
    return INDEX_VERSION_PARTS if joins else INDEX_VERSION


def _parts_label(joins: Mapping[str, Join]) -> str:
    """``{path: {"sha256", "size", "part_size", "parts": [name, …]}}``: how to put each parted
    file back."""
    return canonical_json({p: j.to_json() for p, j in joins.items()}).decode()


def _index_layer(index: list[dict[str, object]], joins: Mapping[str, Join]) -> TarLayer:
    """The last layer: the file index (and the join script of an image with parts), and
    ``/models`` → ``REPO`` for KServe's modelcar (which reads ``/proc/<pid>/root/models`` from
    another container: the link must be relative)."""
    for entry in index:
        if entry["path"] in joins:
            entry["sha256"] = joins[str(entry["path"])].sha256
    data = canonical_json({"version": _index_version(joins), "files": index})
    files: list[tuple[str, Path | ChunkSource, int]] = [(INDEX_PATH, _const(data), len(data))]
    if joins:
        script = join_script(joins)
        files.append((JOIN_PATH, _const(script), len(script)))
    entries = entries_for_streams(files, prefix="")
    link = TarEntry(MODELCAR_DIR, None, mode=LINK_MODE, linkname=REPO_DIR)
    return TarLayer(sorted([*entries, link], key=lambda e: e.name))


def _const(data: bytes) -> ChunkSource:
    return lambda: iter([data])
