"""Push one image or image index to a registry: blobs first (present ones skipped, sibling ones
mounted, streamed ones uploaded as they are read), then the manifests by digest, then the tags
last, so a killed run never leaves a tag on partial content."""

from __future__ import annotations

import functools
import io
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait

from hf2oci.errors import AuthError, DigestMismatch, RegistryError
from hf2oci.oci.blobs import StreamLayer
from hf2oci.oci.image import Artifact, ImageIndex, Layer, images_of
from hf2oci.oci.registry import Opener, RegistryClient, RemoteLayer
from hf2oci.reference import validate_tag

log = logging.getLogger(__name__)

Progress = Callable[[int], None]


def push(
    client: RegistryClient,
    image: Artifact,
    repo: str,
    *,
    tags: Sequence[str],
    mount_from: Sequence[str] = (),
    on_progress: Progress | None = None,
) -> str:
    """Push ``image`` (an index: each platform's image, then the index) to ``repo`` and point
    ``tags`` at it; returns the digest of what the tags name.

    Each blob goes once however many platforms share it. Blobs already there are skipped;
    others are mounted from ``mount_from`` (or, for layers of this registry, from their own
    repository) or uploaded, several at a time.
    """
    for tag in tags:
        validate_tag(tag)
    lock = threading.Lock()

    def progress(n: int) -> None:
        if on_progress is not None:
            with lock:
                on_progress(n)

    jobs: list[Callable[[], str]] = []
    seen: set[str] = set()
    for layer in image.layers:
        if isinstance(layer, StreamLayer) and not layer.consumed:
            jobs.append(functools.partial(_stream, client, repo, layer, progress))
        elif layer.digest not in seen:
            seen.add(layer.digest)
            sources = _mount_sources(client, layer, repo, mount_from)
            jobs.append(
                functools.partial(
                    ensure_blob,
                    client,
                    repo,
                    layer.digest,
                    layer.size,
                    layer.open,
                    sources,
                    progress,
                )
            )
    with ThreadPoolExecutor(client.workers, thread_name_prefix="hf2oci-push") as pool:
        futures: list[Future[str]] = [pool.submit(job) for job in jobs]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in pending:
            future.cancel()
        for future in done:
            future.result()  # raises the first failure
    sources = _mount_sources(client, None, repo, mount_from)
    for one in images_of(image):
        config = one.config
        ensure_blob(
            client, repo, one.config_digest, len(config), functools.partial(io.BytesIO, config),
            sources, progress,
        )  # fmt: skip
        client.put_manifest(repo, one.digest, one.manifest, one.media_type)
    digest = image.digest
    if isinstance(image, ImageIndex):
        digest = client.put_manifest(repo, image.digest, image.manifest, image.media_type)
    for tag in tags:
        client.put_manifest(repo, tag, image.manifest, image.media_type)
    log.info("pushed %s/%s@%s (tags: %s)", client.registry, repo, digest, ", ".join(tags))
    return digest


def _stream(client: RegistryClient, repo: str, layer: StreamLayer, progress: Progress) -> str:
    digest = client.upload_stream(
        repo, layer.size, layer.open, digest=lambda: layer.digest, on_progress=progress
    )
    if digest != layer.digest:
        raise DigestMismatch(f"streamed layer uploaded as {digest}, hashed to {layer.digest}")
    log.debug("streamed %s (%d bytes) to %s", digest, layer.size, repo)
    return digest


def _mount_sources(
    client: RegistryClient, layer: Layer | None, repo: str, mount_from: Sequence[str]
) -> list[str]:
    sources = list(mount_from)
    if isinstance(layer, RemoteLayer) and layer.registry == client.registry:
        sources.insert(0, layer.repository)
    return [s for i, s in enumerate(sources) if s != repo and s not in sources[:i]]


def ensure_blob(
    client: RegistryClient,
    repo: str,
    digest: str,
    size: int,
    opener: Opener,
    sources: Sequence[str],
    progress: Progress,
) -> str:
    """Make the blob present in ``repo``: 'exists', 'mounted' or 'uploaded'."""
    if client.blob_exists(repo, digest, push=True):
        progress(size)
        return "exists"
    for source in sources:
        try:
            if client.mount_blob(repo, digest, source):
                log.debug("mounted %s from %s into %s", digest, source, repo)
                progress(size)
                return "mounted"
        except (AuthError, RegistryError) as e:
            log.debug("mount of %s from %s refused: %s", digest, source, e)
    client.upload_blob(repo, digest, size, opener, on_progress=progress)
    log.debug("uploaded %s (%d bytes) to %s", digest, size, repo)
    return "uploaded"
