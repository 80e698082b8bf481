"""The ``oci`` builder: writes layers, config and manifest itself; pushes or writes a layout."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

from hf2oci.builders import BuildRequest, Destination, Published
from hf2oci.errors import Hf2ociError
from hf2oci.oci import layout
from hf2oci.oci.image import SCRATCH, BaseImage, Image
from hf2oci.oci.reference import parse_reference
from hf2oci.oci.registry import RegistryClient
from hf2oci.pack import DEFAULT_SMALL_FILE_LIMIT, build_image
from hf2oci.spec import RepoType


class OciBuilder:
    name = "oci"

    def __init__(
        self,
        *,
        destination: Destination,
        base_image: str,
        small_file_limit: int = DEFAULT_SMALL_FILE_LIMIT,
    ) -> None:
        self.destination = destination
        self.base_image = base_image
        self.small_file_limit = small_file_limit
        self._base: BaseImage | None = None
        self._lock = threading.Lock()
        self._client = (
            RegistryClient(destination.registry, plain_http=destination.plain_http)
            if destination.registry
            else None
        )

    def base(self) -> BaseImage:
        """The base image, fetched once per run."""
        with self._lock:
            if self._base is None:
                self._base = self._fetch_base()
            return self._base

    def _fetch_base(self) -> BaseImage:
        return load_base(self.base_image, destination=self.destination, client=self._client)

    def current_labels(self, repo_type: RepoType, tag: str) -> Mapping[str, str] | None:
        if self._client is None:
            path = self.destination.layout_root / self.destination.repository(repo_type)
            if not (path / "index.json").exists() or layout.resolve_tag(path, tag) is None:
                return None
            return _labels(layout.read_image(path, tag).config_doc)
        return registry_labels(self._client, self.destination.repository(repo_type), tag)

    def build(self, request: BuildRequest) -> Image:
        return build_image(
            request.files,
            labels=request.labels,
            base=self.base(),
            created=request.created,
            small_limit=self.small_file_limit,
        )

    def publish(self, request: BuildRequest) -> Published:
        image = self.build(request)
        repo = self.destination.repository(request.repo_type)
        if self._client is None:
            path = self.destination.layout_root / repo
            layout.write_layout(image, path, tags=list(request.tags))
        else:
            base = self.base()
            mount_from = []
            if base.name != "scratch":
                ref = parse_reference(base.name)
                if ref.registry == self.destination.registry:
                    mount_from.append(ref.repository)
            self._client.push(image, repo, tags=list(request.tags), mount_from=mount_from)
        return Published(
            digest=image.digest,
            image=self.destination.image(request.repo_type),
            tags=tuple(request.tags),
        )


def load_base(name: str, *, destination: Destination, client: RegistryClient | None) -> BaseImage:
    """Resolve the base image: ``scratch`` or a reference, fetched from its registry."""
    if name in ("", "scratch"):
        return SCRATCH
    ref = parse_reference(name)
    if client is None or ref.registry != destination.registry:
        client = RegistryClient(ref.registry)
    try:
        return client.fetch_base(ref)
    except Hf2ociError as e:
        raise type(e)(f"base image {name}: {e}") from e


def registry_labels(client: RegistryClient, repo: str, tag: str) -> dict[str, str] | None:
    """Labels of ``repo:tag`` in a registry (two metadata requests), None when absent."""
    found = client.get_manifest(repo, tag)
    if found is None:
        return None
    manifest = json.loads(found[0])
    with client.get_blob(repo, manifest["config"]["digest"]) as config:
        return _labels(json.loads(config.read()))


def _labels(config: Mapping[str, Any]) -> dict[str, str]:
    return dict((config.get("config") or {}).get("Labels") or {})
