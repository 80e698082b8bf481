"""The image format: the base's layers, then the repo's files under ``/REPO``.

Small files share one layer; each large file gets a layer of its own (neighbours share when there
are too many: shards by their numbers), so the same file gives the same layer in every revision.
A file's bytes come from disk or straight from the hub: that only decides whether its layer is a
``TarLayer`` (digest computed first) or a ``StreamLayer`` (digest learnt while the sink writes
it). Layers whose content key (paths + hub hashes) is known at the destination are reused
without a download.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from hf2oci import labels as L
from hf2oci.build.formats.grouping import DEFAULT_SMALL_FILE_LIMIT, group_files, layer_budget
from hf2oci.build.layercache import LayerCache
from hf2oci.digest import sha256_digest
from hf2oci.errors import PackError
from hf2oci.oci.image import (
    MT_LAYER_TAR,
    Artifact,
    Base,
    ImageIndex,
    Layer,
    assemble,
    canonical_json,
)
from hf2oci.oci.layers import StreamLayer, TarLayer
from hf2oci.oci.tarstream import (
    LINK_MODE,
    ChunkSource,
    TarEntry,
    data_offsets,
    entries_for_files,
    entries_for_streams,
)

log = logging.getLogger(__name__)

#: where the repo's files live inside the image
REPO_DIR = "REPO"
#: a relative link to REPO_DIR, where KServe's modelcar looks for the model
MODELCAR_DIR = "models"
#: bump when the tar bytes for the same files change, so old content keys stop matching
TAR_FORMAT = "hf2oci-tar-1"
#: the file index: where each file's bytes are (layer, offset) and what the hub says they
#: hash to, so a server finds any file with one small read (outside /REPO: never extracted)
INDEX_PATH = ".hf2oci/files.json"
INDEX_VERSION = 1


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

    @property
    def streamed(self) -> bool:
        return not isinstance(self.source, Path)

    @property
    def hub_hash(self) -> str | None:
        """What the content key names the file by: ``sha256:…`` or ``gitsha1:…``."""
        if self.sha256:
            return f"sha256:{self.sha256}"
        return f"gitsha1:{self.blob_id}" if self.blob_id else None


def scan(root: Path) -> list[PackFile]:
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
    then).

    The file index gives layer positions in the first platform's image; a reader of another
    one shifts them by where it finds the index layer (it is always the last).
    """
    if not files:
        raise PackError("no file to pack: the filters keep nothing")
    by_path = {f.path: f for f in files}
    if len(by_path) != len(files):
        raise PackError("a file is listed twice")
    hashes = {f.path: h for f in files if (h := f.hub_hash)}
    layers: list[Layer] = []
    notes: list[dict[str, str]] = []
    index: list[dict[str, object]] = []
    groups = group_files(
        [(f.path, f.size) for f in files],
        small_limit=small_limit,
        max_layers=layer_budget(base.layer_count),
        max_layer_size=max_layer_size,
    )
    first = len(base.images[0].layers)
    for group in groups:
        note = layer_annotations(group, hashes)
        members = [by_path[p] for p in group]
        entries = _entries(members)
        offsets = data_offsets(entries)
        position = first + len(layers)
        index += [_index_entry(f, position, offsets[f"{REPO_DIR}/{f.path}"]) for f in members]
        layers.append(_layer(members, entries, note.get(L.CONTENT_KEY), reuse))
        notes.append(note)
    layers.append(_index_layer(index))
    notes.append({L.FILE_INDEX: str(INDEX_VERSION), L.TITLE: INDEX_PATH})
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


def _entries(members: Sequence[PackFile]) -> list[TarEntry]:
    if not any(f.streamed for f in members):
        local = [(f.path, cast(Path, f.source)) for f in members]
        return entries_for_files(local, prefix=REPO_DIR)
    return entries_for_streams([(f.path, f.source, f.size) for f in members], prefix=REPO_DIR)


def _layer(
    members: Sequence[PackFile], entries: Sequence[TarEntry], key: str | None, reuse: Reuse | None
) -> Layer:
    if not any(f.streamed for f in members):
        return TarLayer(entries)
    if reuse is not None:
        found = reuse.find(key)
        if found is not None:
            log.info("%s: reusing layer %s", members[0].path, found.digest[:19])
            return found
    layer = StreamLayer(entries)
    if reuse is not None and key:
        layer.on_digest = lambda digest: reuse.remember(key, digest, layer.size)
    return layer


def _index_entry(f: PackFile, layer: int, offset: int) -> dict[str, object]:
    entry: dict[str, object] = {"path": f.path, "size": f.size, "layer": layer, "offset": offset}
    if f.blob_id:
        entry["blob_id"] = f.blob_id
    if f.sha256:
        entry["sha256"] = f.sha256
    return entry


def _index_layer(index: list[dict[str, object]]) -> TarLayer:
    """The last layer: the file index, and ``/models`` → ``REPO`` for KServe's modelcar (which
    reads ``/proc/<pid>/root/models`` from another container: the link must be relative)."""
    data = canonical_json({"version": INDEX_VERSION, "files": index})
    entries = entries_for_streams([(INDEX_PATH, lambda: iter([data]), len(data))], prefix="")
    link = TarEntry(MODELCAR_DIR, None, mode=LINK_MODE, linkname=REPO_DIR)
    return TarLayer(sorted([*entries, link], key=lambda e: e.name))
