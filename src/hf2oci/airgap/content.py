"""What an image is made of, read from a registry or from layouts alike: its manifests (an index,
its images, children first) and its blobs (configs, layers). Inventory, bundle and prune walk
images through a ``Source``."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from hf2oci import labels as L
from hf2oci import naming
from hf2oci.digest import sha256_digest
from hf2oci.errors import PackError, UsageError
from hf2oci.oci import layout
from hf2oci.oci.image import ANNOTATION_REF_NAME, INDEX_TYPES, MT_MANIFEST
from hf2oci.oci.layers import check_digest
from hf2oci.oci.registry import RegistryClient
from hf2oci.spec import RepoType

#: an index nests images; nothing hf2oci makes nests deeper than this
MAX_DEPTH = 4
#: a manifest bigger than this is not one hf2oci made (distribution's own limit is 4 MiB)
MAX_MANIFEST = 4 << 20
#: attachment tags: cosign's ``sha256-<hex>.sig`` / ``.att`` and the referrers tag ``sha256-<hex>``
ATTACHMENT_SUFFIXES = (".sig", ".att", "")


def is_attachment(tag: str) -> bool:
    """A tag of a signature, an attestation or a referrers index (``sha256-<hex>[.sig|.att]``)."""
    return tag.startswith("sha256-")


def attachment_tags(digest: str) -> list[str]:
    """The tags that may hold attachments of the image ``digest``."""
    return ["sha256-" + check_digest(digest).partition(":")[2] + s for s in ATTACHMENT_SUFFIXES]


class Source(Protocol):
    """Image repositories to read: a registry's, or layouts under a folder."""

    where: str

    def tags(self, repository: str) -> list[str]: ...

    def manifest(self, repository: str, ref: str) -> tuple[bytes, str] | None:
        """The manifest at a tag or digest (checked against a digest ref), with its media type."""
        ...

    def open_blob(self, repository: str, digest: str) -> BinaryIO:
        """The blob's bytes; reading to the end checks them against ``digest``."""
        ...

    def place_blob(self, repository: str, digest: str, size: int, target: Path) -> None:
        """Put the blob at ``target`` (a hard link where the source is on the same disk)."""
        ...


class RegistrySource:
    def __init__(self, client: RegistryClient) -> None:
        self.client = client
        self.where = f"registry {client.registry}"

    def tags(self, repository: str) -> list[str]:
        return self.client.list_tags(repository)

    def manifest(self, repository: str, ref: str) -> tuple[bytes, str] | None:
        found = self.client.get_manifest(repository, ref)
        return None if found is None else (found[0], found[1])

    def open_blob(self, repository: str, digest: str) -> BinaryIO:
        return self.client.get_blob(repository, digest)

    def place_blob(self, repository: str, digest: str, size: int, target: Path) -> None:
        copy_checked(lambda: self.open_blob(repository, digest), target, size)


class LayoutSource:
    """Layouts under ``root``, one per image repository (``root/hgfkeep/models``), as ``sync``
    writes them without a registry."""

    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise UsageError(f"{root}: no such folder")
        self.root = root
        self.where = str(root)

    def _path(self, repository: str) -> Path:
        return self.root / repository

    def tags(self, repository: str) -> list[str]:
        path = self._path(repository)
        if not (path / layout.INDEX_FILE).is_file():
            return []
        docs = layout.read_index(path).get("manifests") or []
        names = [(d.get("annotations") or {}).get(ANNOTATION_REF_NAME) for d in docs]
        return sorted({n for n in names if isinstance(n, str)})

    def manifest(self, repository: str, ref: str) -> tuple[bytes, str] | None:
        path = self._path(repository)
        if not (path / layout.INDEX_FILE).is_file():
            return None
        if ref.startswith("sha256:"):
            data = layout.read_blob(path, ref)
            return data, media_type_of(data)
        desc = layout.resolve_tag(path, ref)
        if desc is None:
            return None
        return layout.read_blob(path, desc.digest), desc.media_type

    def open_blob(self, repository: str, digest: str) -> BinaryIO:
        return open(layout.blob_path(self._path(repository), digest), "rb")

    def place_blob(self, repository: str, digest: str, size: int, target: Path) -> None:
        """A hard link (no copy) when the bundle is on the same filesystem, else a copy; the
        loader checks every byte on the other side."""
        blob = layout.blob_path(self._path(repository), digest)
        try:
            if blob.stat().st_size != size:
                raise PackError(f"{blob}: {blob.stat().st_size} bytes, its manifest says {size}")
            os.link(blob, target)
        except FileNotFoundError as e:
            raise PackError(f"{blob}: missing from the layout") from e
        except OSError:
            shutil.copyfile(blob, target)


def copy_checked(opener: Callable[[], BinaryIO], target: Path, size: int) -> None:
    """Copy a checked stream into ``target`` (PackError when it is not ``size`` bytes)."""
    written = 0
    with opener() as src, open(target, "wb") as out:
        while chunk := src.read(1 << 20):
            out.write(chunk)
            written += len(chunk)
    if written != size:
        target.unlink(missing_ok=True)
        raise PackError(f"{target.name}: {written} bytes, expected {size}")


def media_type_of(data: bytes) -> str:
    try:
        doc = json.loads(data)
    except ValueError:
        return ""
    return str(doc.get("mediaType") or MT_MANIFEST) if isinstance(doc, dict) else ""


@dataclass
class Graph:
    """The manifests (children before parents) and blobs of one or more images."""

    manifests: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    blobs: dict[str, int] = field(default_factory=dict)


def walk(
    source: Source, repository: str, data: bytes, media_type: str, graph: Graph, depth: int = 0
) -> str:
    """Add the image whose manifest is ``data`` (and all it names) to ``graph``; its digest."""
    digest = sha256_digest(data)
    if digest in graph.manifests:
        return digest
    if depth > MAX_DEPTH or len(data) > MAX_MANIFEST:
        raise PackError(f"{source.where}: {repository}@{digest} nests too deep or is too big")
    doc = parse_manifest(data, f"{repository}@{digest}")
    if media_type in INDEX_TYPES or doc.get("mediaType") in INDEX_TYPES or "manifests" in doc:
        for child in doc.get("manifests") or []:
            child_digest = check_digest(str(child.get("digest")))
            found = source.manifest(repository, child_digest)
            if found is None:
                raise PackError(f"{source.where}: {repository}@{child_digest} is missing")
            walk(source, repository, found[0], str(child.get("mediaType") or ""), graph, depth + 1)
    else:
        for desc in [doc.get("config"), *(doc.get("layers") or [])]:
            if isinstance(desc, dict) and not desc.get("urls"):
                graph.blobs[check_digest(str(desc.get("digest")))] = int(desc.get("size") or 0)
    graph.manifests[digest] = (data, media_type or media_type_of(data))
    return digest


def parse_manifest(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise PackError(f"{what} is not JSON") from e
    if not isinstance(doc, dict):
        raise PackError(f"{what} is not a manifest")
    return doc


def annotations_of(data: bytes) -> dict[str, str]:
    """A manifest's annotations (hf2oci writes the image's labels there)."""
    try:
        doc = json.loads(data)
    except ValueError:
        return {}
    found = doc.get("annotations") if isinstance(doc, dict) else None
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


@dataclass(frozen=True)
class Tagged:
    """One image tag in a repository, with what its manifest says about the repo it holds."""

    repository: str
    tag: str
    digest: str
    data: bytes
    media_type: str

    @property
    def labels(self) -> dict[str, str]:
        return annotations_of(self.data)

    @property
    def repo_id(self) -> str:
        return self.labels.get(L.REPO_ID, "")

    @property
    def revision(self) -> str:
        return self.labels.get(L.REVISION, "")

    @property
    def created(self) -> str:
        return self.labels.get(L.CREATED, "")

    @property
    def moving(self) -> bool:
        """The repo's moving tag (``org--name``), not a pinned revision's."""
        try:
            return bool(self.repo_id) and naming.repo_tag(self.repo_id) == self.tag
        except naming.InvalidRepoId:
            return False


def image_tags(source: Source, repository: str) -> Iterator[Tagged]:
    """Every image tag of ``repository`` (attachments left out), with its manifest."""
    for tag in source.tags(repository):
        if is_attachment(tag):
            continue
        found = source.manifest(repository, tag)
        if found is not None:
            yield Tagged(repository, tag, sha256_digest(found[0]), found[0], found[1])


def repositories(namespace: str) -> dict[str, RepoType]:
    """The image repositories hf2oci writes in a namespace, and what each holds."""
    return {naming.image_repository(namespace, t): t for t in ("model", "dataset")}
