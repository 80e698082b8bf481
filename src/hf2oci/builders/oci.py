"""The ``oci`` builder: writes layers, config and manifest itself; pushes or writes a layout.

Large files can stream from the hub straight into their layer blobs (one pass, sha256 on the
fly, nothing on disk); layers whose content key is already known at the destination are reused.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, cast

from hf2oci import hub
from hf2oci.builders import BuildRequest, Destination, Published
from hf2oci.errors import Hf2ociError
from hf2oci.hub import HubFile, RepoState
from hf2oci.layercache import LayerCache
from hf2oci.oci import layout
from hf2oci.oci.image import MT_LAYER_TAR, SCRATCH, BaseImage, Image, Layer, assemble
from hf2oci.oci.layers import TarLayer, UploadedLayer
from hf2oci.oci.reference import parse_reference
from hf2oci.oci.registry import RegistryClient
from hf2oci.oci.tarstream import TarStream, entries_for_files, entries_for_streams
from hf2oci.pack import (
    CONTENT_KEY,
    DEFAULT_SMALL_FILE_LIMIT,
    REPO_DIR,
    build_image,
    layer_annotations,
    split_files,
)
from hf2oci.spec import RepoType

log = logging.getLogger(__name__)

#: large files streamed at once (each holds one ~1 MiB chunk in memory)
STREAM_WORKERS = 4


class OciBuilder:
    name = "oci"
    can_stream = True

    def __init__(
        self,
        *,
        destination: Destination,
        base_image: str,
        small_file_limit: int = DEFAULT_SMALL_FILE_LIMIT,
        layer_cache: LayerCache | None = None,
        stream_workers: int = STREAM_WORKERS,
    ) -> None:
        self.destination = destination
        self.base_image = base_image
        self.small_file_limit = small_file_limit
        self.layer_cache = layer_cache or LayerCache()
        self.stream_workers = stream_workers
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
                self._base = load_base(
                    self.base_image, destination=self.destination, client=self._client
                )
            return self._base

    def _layout_path(self, repo_type: RepoType) -> Path:
        return self.destination.layout_root / self.destination.repository(repo_type)

    def current_labels(self, repo_type: RepoType, tag: str) -> Mapping[str, str] | None:
        if self._client is None:
            path = self._layout_path(repo_type)
            if not (path / "index.json").exists() or layout.resolve_tag(path, tag) is None:
                return None
            return _labels(layout.read_image(path, tag).config_doc)
        return registry_labels(self._client, self.destination.repository(repo_type), tag)

    def publish(self, request: BuildRequest) -> Published:
        image = self._streamed_image(request) if request.streamed else self._staged_image(request)
        repo = self.destination.repository(request.repo_type)
        if self._client is None:
            layout.write_layout(image, self._layout_path(request.repo_type), tags=request.tags)
        else:
            base = self.base()
            mount_from = []
            if base.name != "scratch":
                ref = parse_reference(base.name)
                if ref.registry == self.destination.registry:
                    mount_from.append(ref.repository)
            self._client.push(
                image,
                repo,
                tags=list(request.tags),
                mount_from=mount_from,
                on_progress=request.on_bytes,
            )
        return Published(
            digest=image.digest,
            image=self.destination.image(request.repo_type),
            tags=tuple(request.tags),
        )

    # -- staged: every file on disk ---------------------------------------------------------

    def _staged_image(self, request: BuildRequest) -> Image:
        return build_image(
            request.files,
            labels=request.labels,
            base=self.base(),
            created=request.created,
            small_limit=self.small_file_limit,
            hashes=request.hashes,
        )

    # -- streamed: large files go hub → destination ----------------------------------------

    def _streamed_image(self, request: BuildRequest) -> Image:
        state = request.state
        if state is None or request.hashes is None:
            raise Hf2ociError("streaming needs the hub state and hashes")
        by_path = {f.path: f for f in request.streamed}
        sized = [(p, s) for p, s in request.files.sizes()] + [
            (f.path, f.size) for f in by_path.values()
        ]
        small, groups = split_files(sized, small_limit=self.small_file_limit)
        if set(small) != set(request.files.paths):
            raise Hf2ociError("internal: the small files are not the ones downloaded")
        layers: list[Layer] = []
        notes: list[Mapping[str, str]] = []
        if small:
            entries = entries_for_files(
                [(p, request.files.source(p)) for p in small], prefix=REPO_DIR
            )
            layers.append(TarLayer(entries))
            notes.append(layer_annotations(small, request.hashes))
        known = self._known_layers(request)
        sink = self._sink(request.repo_type)
        group_notes = [layer_annotations(g, request.hashes) for g in groups]
        with ThreadPoolExecutor(self.stream_workers, thread_name_prefix="stream") as pool:
            futures = [
                pool.submit(
                    self._layer_for,
                    [by_path[p] for p in group],
                    note,
                    state,
                    known,
                    sink,
                    request.on_bytes,
                )
                for group, note in zip(groups, group_notes, strict=True)
            ]
            try:
                streamed = [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        layers.extend(streamed)
        notes.extend(group_notes)
        return assemble(
            self.base(),
            layers,
            labels=request.labels,
            annotations=request.labels,
            created=request.created,
            layer_annotations=notes,
        )

    def _known_layers(self, request: BuildRequest) -> dict[str, tuple[str, int]]:
        """Content key → (digest, size): from the local cache and the image now at the tag."""
        known = self.layer_cache.load()
        try:
            manifest = self._current_manifest(request.repo_type, request.tags[-1])
        except Hf2ociError as e:  # only an optimisation: stream instead
            log.info("cannot read the current image to reuse its layers: %s", e)
            manifest = None
        for desc in (manifest or {}).get("layers", []):
            key = (desc.get("annotations") or {}).get(CONTENT_KEY)
            if key and desc.get("mediaType") == MT_LAYER_TAR:
                known[key] = (desc["digest"], int(desc["size"]))
        return known

    def _current_manifest(self, repo_type: RepoType, tag: str) -> dict[str, Any] | None:
        if self._client is None:
            path = self._layout_path(repo_type)
            if not (path / "index.json").exists() or layout.resolve_tag(path, tag) is None:
                return None
            return layout.read_image(path, tag).manifest_doc
        found = self._client.get_manifest(self.destination.repository(repo_type), tag)
        return cast(dict[str, Any], json.loads(found[0])) if found else None

    def _layer_for(
        self,
        files: Sequence[HubFile],
        note: Mapping[str, str],
        state: RepoState,
        known: Mapping[str, tuple[str, int]],
        sink: _Sink,
        on_bytes: Callable[[int], None] | None = None,
    ) -> Layer:
        """Reuse the layer when the destination has it; else stream its files from the hub."""
        key = note.get(CONTENT_KEY)
        if key and key in known:
            digest, size = known[key]
            if sink.has(digest, size):
                log.info("%s: reusing layer %s", files[0].path, digest[:19])
                return UploadedLayer(digest, size)
        entries = entries_for_streams(
            [(f.path, _source(state, f, on_bytes), f.size) for f in files], prefix=REPO_DIR
        )
        size = len(TarStream(entries))
        digest = sink.write(size, lambda: cast(BinaryIO, TarStream(entries)))
        if key:
            self.layer_cache.add(key, digest, size)
        return UploadedLayer(digest, size)

    def _sink(self, repo_type: RepoType) -> _Sink:
        if self._client is None:
            return _LayoutSink(self._layout_path(repo_type))
        return _RegistrySink(self._client, self.destination.repository(repo_type))


def _source(
    state: RepoState, file: HubFile, on_bytes: Callable[[int], None] | None
) -> Callable[[], Iterator[bytes]]:
    def chunks() -> Iterator[bytes]:
        for chunk in hub.iter_file(state, file):
            if on_bytes is not None:
                on_bytes(len(chunk))
            yield chunk

    return chunks


class _Sink:
    def has(self, digest: str, size: int) -> bool:
        raise NotImplementedError

    def write(self, size: int, opener: Callable[[], BinaryIO]) -> str:
        raise NotImplementedError


class _RegistrySink(_Sink):
    def __init__(self, client: RegistryClient, repo: str) -> None:
        self.client, self.repo = client, repo

    def has(self, digest: str, size: int) -> bool:
        return self.client.blob_exists(self.repo, digest)

    def write(self, size: int, opener: Callable[[], BinaryIO]) -> str:
        return self.client.upload_stream(self.repo, size, opener)


class _LayoutSink(_Sink):
    def __init__(self, path: Path) -> None:
        self.path = path

    def has(self, digest: str, size: int) -> bool:
        blob = layout.blob_path(self.path, digest)
        return blob.is_file() and blob.stat().st_size == size

    def write(self, size: int, opener: Callable[[], BinaryIO]) -> str:
        return layout.write_blob_stream(self.path, size, opener)


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
