"""What an image is made of, read from a registry or from layouts alike: its manifests (an index,
its images, children first) and its blobs (configs, layers). Inventory, bundle and prune walk
images through an ``ImageStore`` (``oci.stores``: a registry or layouts)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from hf2oci import labels as L
from hf2oci import naming
from hf2oci.digest import sha256_digest
from hf2oci.errors import PackError
from hf2oci.oci.blobs import check_digest
from hf2oci.oci.image import INDEX_TYPES
from hf2oci.oci.stores import ImageStore, media_type_of
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


@dataclass
class Graph:
    """The manifests (children before parents) and blobs of one or more images."""

    manifests: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    blobs: dict[str, int] = field(default_factory=dict)


def walk(
    source: ImageStore, repository: str, data: bytes, media_type: str, graph: Graph, depth: int = 0
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


def image_tags(source: ImageStore, repository: str) -> Iterator[Tagged]:
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
