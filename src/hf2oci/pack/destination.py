"""Where images go, and the one interface the pipeline writes through: a ``Target`` takes one
``Image`` (registry push, OCI layout, Docker engine) and says what is already there."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from hf2oci import labels as L
from hf2oci.naming import image_repository
from hf2oci.oci import daemon, layout, push
from hf2oci.oci.blobs import FileBlobLayer
from hf2oci.oci.credentials import load_credentials
from hf2oci.oci.image import (
    INDEX_TYPES,
    MT_LAYER_TAR,
    Artifact,
    Image,
    Layer,
    config_labels,
    images_of,
    json_object,
    platform_name,
    platform_of,
    string_map,
)
from hf2oci.oci.registry import RegistryClient, RemoteLayer
from hf2oci.reference import host_platform, parse_reference
from hf2oci.spec import RepoType
from hf2oci.trust.signing import signature_tag

log = logging.getLogger(__name__)

Kind = Literal["registry", "oci-layout", "docker-engine"]
Progress = Callable[[int], None]


@dataclass(frozen=True)
class Destination:
    """Where images go: a registry, OCI layouts under ``layout_root`` (no registry), or the local
    Docker engine (``engine``; with a registry too, pushed there and pulled by the engine)."""

    namespace: str
    registry: str | None = None
    layout_root: Path = Path("oci-images")
    plain_http: bool | None = None
    engine: bool = False

    def repository(self, repo_type: RepoType) -> str:
        return image_repository(self.namespace, repo_type)

    def image(self, repo_type: RepoType) -> str:
        """The image name users pull, without tag."""
        if self.registry:
            return f"{self.registry}/{self.repository(repo_type)}"
        if self.engine:
            return self.repository(repo_type)
        return str(self.layout_root / self.repository(repo_type))

    @property
    def kind(self) -> Kind:
        if self.registry:
            return "registry"
        return "docker-engine" if self.engine else "oci-layout"


#: the biggest layer known registries take (published limits), by host
_LAYER_LIMITS: tuple[tuple[re.Pattern[str], int], ...] = (
    (re.compile(r"ghcr\.io"), 10 * 10**9),
    (re.compile(r"public\.ecr\.aws"), 10_000 * 2**20),
    (re.compile(r"[0-9]+\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(\.cn)?"), 52_000 * 2**20),
    (re.compile(r"quay\.io"), 20 * 10**9),
)


def default_max_layer_size(registry: str | None) -> int | None:
    """The layer size limit of a known registry (GHCR, ECR, ECR Public, Quay); None elsewhere."""
    host = (registry or "").split(":", 1)[0].lower()
    for pattern, limit in _LAYER_LIMITS:
        if pattern.fullmatch(host):
            return limit
    return None


class Target(Protocol):
    """One image repository at the destination."""

    def manifest(self, tag: str) -> dict[str, Any] | None:
        """The image manifest now at ``tag`` (an index: its first image's), or None."""
        ...

    def labels(self, tag: str) -> dict[str, str] | None:
        """The labels of the image now at ``tag`` (None: no image there): the manifest's
        annotations, one request; the config's labels for an image whose manifest has none."""
        ...

    def stored_layer(self, digest: str, size: int) -> Layer | None:
        """The layer blob ``digest`` when the destination already holds it (reuse), else None."""
        ...

    def write(self, image: Artifact, tags: Sequence[str], *, on_progress: Progress | None) -> str:
        """Store ``image`` (layers first, tags last); returns the digest it has there."""
        ...

    def signatures(self) -> Target | None:
        """Where the signatures of the images written here go (None: nowhere, an engine)."""
        ...

    def is_signed(self, tag: str) -> bool:
        """Whether the image at ``tag`` has a signature beside it (True where none can be)."""
        ...


class RegistryTarget:
    def __init__(self, client: RegistryClient, repo: str, mount_from: Sequence[str] = ()):
        self.client, self.repo, self.mount_from = client, repo, tuple(mount_from)

    def manifest(self, tag: str) -> dict[str, Any] | None:
        found = self.client.get_manifest(self.repo, tag)
        if found is None:
            return None
        doc = json_object(found[0], f"manifest of {self.repo}:{tag}")
        first = _first_entry(doc) if found[1] in INDEX_TYPES else None
        if first is None:
            return doc
        found = self.client.get_manifest(self.repo, first)
        return json_object(found[0], f"manifest of {self.repo}@{first}") if found else None

    def labels(self, tag: str) -> dict[str, str] | None:
        return _labels(self.manifest(tag), self._read, f"{self.repo}:{tag}")

    def _read(self, digest: str) -> bytes:
        with self.client.get_blob(self.repo, digest) as blob:
            return blob.read()

    def stored_layer(self, digest: str, size: int) -> Layer | None:
        if not self.client.blob_exists(self.repo, digest, push=True):
            return None
        return RemoteLayer(self.client, self.repo, digest, size, MT_LAYER_TAR, digest)

    def write(self, image: Artifact, tags: Sequence[str], *, on_progress: Progress | None) -> str:
        return push.push(
            self.client, image, self.repo, tags=tags, mount_from=self.mount_from,
            on_progress=on_progress,
        )  # fmt: skip

    def signatures(self) -> Target | None:
        return self

    def is_signed(self, tag: str) -> bool:
        found = self.client.get_manifest(self.repo, tag)
        return (
            found is None
            or self.client.get_manifest(self.repo, signature_tag(found[2])) is not None
        )


class LayoutTarget:
    def __init__(self, path: Path) -> None:
        self.path = path

    def manifest(self, tag: str) -> dict[str, Any] | None:
        if not (self.path / layout.INDEX_FILE).exists():
            return None
        desc = layout.resolve_tag(self.path, tag)
        if desc is None:
            return None
        doc = json_object(
            layout.read_blob(self.path, desc.digest), f"manifest of {self.path}:{tag}"
        )
        first = _first_entry(doc) if desc.media_type in INDEX_TYPES else None
        if first is None:
            return doc
        return json_object(layout.read_blob(self.path, first), f"manifest of {self.path}@{first}")

    def labels(self, tag: str) -> dict[str, str] | None:
        return _labels(
            self.manifest(tag), lambda d: layout.read_blob(self.path, d), f"{self.path}:{tag}"
        )

    def stored_layer(self, digest: str, size: int) -> Layer | None:
        blob = layout.blob_path(self.path, digest)
        if not (blob.is_file() and blob.stat().st_size == size):
            return None
        return FileBlobLayer(
            blob, media_type=MT_LAYER_TAR, diff_id=digest, digest=digest, size=size
        )

    def write(self, image: Artifact, tags: Sequence[str], *, on_progress: Progress | None) -> str:
        return layout.write_layout(image, self.path, tags=tags, on_progress=on_progress)

    def signatures(self) -> Target | None:
        return self

    def is_signed(self, tag: str) -> bool:
        if not (self.path / layout.INDEX_FILE).exists():
            return True
        desc = layout.resolve_tag(self.path, tag)
        return desc is None or layout.resolve_tag(self.path, signature_tag(desc.digest)) is not None


class EngineTarget:
    """The local Docker engine. With a registry, the image is pushed there as the oci builder
    pushes it (the same digest, every platform), then the engine pulls it; without, it is
    loaded into the engine, which holds one platform per tag: this machine's (else the first).
    """

    def __init__(self, client: Any, name: str, registry: RegistryTarget | None) -> None:
        self.client, self.name, self.registry = client, name, registry

    def manifest(self, tag: str) -> dict[str, Any] | None:
        return self.registry.manifest(tag) if self.registry is not None else None

    def labels(self, tag: str) -> dict[str, str] | None:
        if self.registry is not None:
            return self.registry.labels(tag)
        return daemon.labels(self.client, f"{self.name}:{tag}")

    def stored_layer(self, digest: str, size: int) -> Layer | None:
        # the engine keeps no blobs that could be read back as they were sent; a registry does
        return self.registry.stored_layer(digest, size) if self.registry is not None else None

    def write(self, image: Artifact, tags: Sequence[str], *, on_progress: Progress | None) -> str:
        if self.registry is not None:
            digest = self.registry.write(image, tags, on_progress=on_progress)
            creds = load_credentials(self.registry.client.registry)
            auth = {"username": creds.username, "password": creds.password} if creds else None
            daemon.pull(self.client, self.name, tags, auth=auth)
            return digest
        one = _for_this_machine(image)
        skipped = [platform_name(i) for i in images_of(image) if i is not one]
        if skipped:
            log.warning(
                "the Docker engine holds one platform per tag: loading %s, skipping %s "
                "(set a registry to keep every platform)",
                platform_name(one), ", ".join(skipped),
            )  # fmt: skip
        daemon.load(self.client, one, [f"{self.name}:{tag}" for tag in tags])
        return one.digest

    def signatures(self) -> Target | None:
        return self.registry

    def is_signed(self, tag: str) -> bool:
        return self.registry.is_signed(tag) if self.registry is not None else True


class Targets:
    """The destination's targets, one per repo type, sharing one registry client or engine."""

    def __init__(self, destination: Destination, *, base_name: str = "scratch") -> None:
        self.destination = destination
        self._client = (
            RegistryClient(destination.registry, plain_http=destination.plain_http)
            if destination.registry
            else None
        )
        self._engine = daemon.docker_client() if destination.engine else None
        self._mount_from: list[str] = []
        if base_name != "scratch" and destination.registry:
            ref = parse_reference(base_name)
            if ref.registry == self._client.registry:  # type: ignore[union-attr]
                self._mount_from.append(ref.repository)

    @property
    def client(self) -> RegistryClient | None:
        return self._client

    def labels(self, repo_type: RepoType, tag: str) -> dict[str, str] | None:
        """The labels of the image now at ``tag`` for ``repo_type`` (None: none there)."""
        return self.for_type(repo_type).labels(tag)

    def for_type(self, repo_type: RepoType) -> Target:
        repo = self.destination.repository(repo_type)
        registry = RegistryTarget(self._client, repo, self._mount_from) if self._client else None
        if self._engine is not None:
            return EngineTarget(self._engine, self.destination.image(repo_type), registry)
        if registry is not None:
            return registry
        return LayoutTarget(self.destination.layout_root / repo)


def _labels(
    manifest: dict[str, Any] | None, read_blob: Callable[[str], bytes], what: str
) -> dict[str, str] | None:
    """An image's labels: its manifest's annotations (hf2oci writes its labels there too), else
    its config's labels (an image whose manifest carries none, e.g. pushed by docker)."""
    if manifest is None:
        return None

    def config() -> dict[str, str]:
        digest = (manifest.get("config") or {}).get("digest")
        if not isinstance(digest, str):
            return {}
        return config_labels(json_object(read_blob(digest), f"config of {what}"))

    return L.read(string_map(manifest.get("annotations")), config)


def _first_entry(index: dict[str, Any]) -> str | None:
    """The digest of an index's first manifest (all of an hf2oci index's hold the same files)."""
    entries = index.get("manifests")
    if isinstance(entries, list) and entries and isinstance(entries[0], dict):
        digest = entries[0].get("digest")
        return digest if isinstance(digest, str) else None
    return None


def _for_this_machine(image: Artifact) -> Image:
    here = host_platform()
    images = images_of(image)
    return next((i for i in images if here.matches(platform_of(i))), images[0])
