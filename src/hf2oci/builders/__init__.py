"""Builders turn a repo's files into a published image: ``oci`` (default) or ``docker``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hf2oci.hub import HubFile, RepoState
from hf2oci.oci.image import BaseImage
from hf2oci.pack import RepoFiles
from hf2oci.spec import RepoType


@dataclass(frozen=True)
class Destination:
    """Where images go: a registry, or (no registry) OCI layouts under ``layout_root``."""

    namespace: str
    registry: str | None = None
    layout_root: Path = Path("oci-images")
    plain_http: bool | None = None

    def repository(self, repo_type: RepoType) -> str:
        return f"{self.namespace}/{'datasets' if repo_type == 'dataset' else 'models'}"

    def image(self, repo_type: RepoType) -> str:
        """The image name users pull, without tag."""
        if self.registry:
            return f"{self.registry}/{self.repository(repo_type)}"
        return str(self.layout_root / self.repository(repo_type))

    @property
    def kind(self) -> str:
        return "registry" if self.registry else "oci-layout"


@dataclass(frozen=True)
class Published:
    digest: str
    image: str
    tags: tuple[str, ...]


@dataclass(frozen=True)
class BuildRequest:
    """Everything a builder needs for one image."""

    files: RepoFiles
    repo_type: RepoType
    labels: Mapping[str, str]
    #: image creation time (the hub commit's time, for reproducibility)
    created: str
    #: written in this order (the immutable tag, then the moving one), after all content
    tags: Sequence[str]
    #: the hub's hash of each file (path → "sha256:…"/"gitsha1:…") when the files are the hub's
    #: unchanged: layers get content keys, so later runs can reuse them without downloading
    hashes: Mapping[str, str] | None = None
    #: large files to stream from the hub straight into layers (only builders with
    #: ``can_stream``); ``files`` then holds only the small files, downloaded beforehand
    streamed: Sequence[HubFile] = ()
    state: RepoState | None = None
    #: called with each count of bytes moved (downloaded while streaming, or uploaded)
    on_bytes: Callable[[int], None] | None = None


class Builder(Protocol):
    name: str
    destination: Destination
    #: whether ``publish`` accepts ``BuildRequest.streamed`` (hub → destination, no disk)
    can_stream: bool
    #: the size from which a file gets a layer of its own
    small_file_limit: int

    def base(self) -> BaseImage:
        """The base image (fetched once): its name and digest go into the labels."""
        ...

    def current_labels(self, repo_type: RepoType, tag: str) -> Mapping[str, str] | None:
        """Labels of the image ``tag`` at the destination now, or None when there is none."""
        ...

    def publish(self, request: BuildRequest) -> Published: ...


def make_builder(
    name: str, *, destination: Destination, base_image: str, small_file_limit: int
) -> Builder:
    if name == "docker":
        from hf2oci.builders.docker import DockerBuilder

        return DockerBuilder(destination=destination, base_image=base_image)
    from hf2oci.builders.oci import OciBuilder

    return OciBuilder(
        destination=destination, base_image=base_image, small_file_limit=small_file_limit
    )
