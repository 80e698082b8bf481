"""The OCI distribution API of one registry: blobs (HEAD, mount, upload, get, ranges),
manifests, tags. Pushing a whole image is ``push.py``; reading one is ``source.py``."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, cast
from urllib.parse import quote, urlencode, urljoin, urlsplit

import requests

from hf2oci.digest import HashingReader, sha256_digest
from hf2oci.errors import DigestMismatch, RegistryError
from hf2oci.http import Readable, ResumableBody, read_exactly
from hf2oci.oci.answers import error_code, error_from_response
from hf2oci.oci.credentials import load_credentials
from hf2oci.oci.image import (
    MT_DOCKER_LIST,
    MT_DOCKER_MANIFEST,
    MT_INDEX,
    MT_MANIFEST,
    Piece,
    piece_size,
)
from hf2oci.oci.transport import Transport, registry_scope
from hf2oci.reference import api_base, normalise_registry
from hf2oci.retry import is_temporary

log = logging.getLogger(__name__)

#: what we accept when reading a manifest by tag: images and indexes, OCI and Docker
MANIFEST_ACCEPT = (MT_MANIFEST, MT_INDEX, MT_DOCKER_MANIFEST, MT_DOCKER_LIST)
#: blobs up to this size go in one PUT; bigger ones in PATCH chunks of this size
DEFAULT_CHUNK_SIZE = 64 * 1024 * 1024
_ABSENT_CODES = frozenset({"MANIFEST_UNKNOWN", "NAME_UNKNOWN"})

Opener = Callable[[], BinaryIO]
Progress = Callable[[int], None]


@dataclass(frozen=True, eq=False)
class RemoteLayer:
    """A layer stored in a registry: a Layer whose ``open()`` streams the blob from there."""

    client: RegistryClient = field(repr=False)
    repository: str
    digest: str
    size: int
    media_type: str
    diff_id: str

    @property
    def registry(self) -> str:
        return self.client.registry

    def open(self) -> BinaryIO:
        return self.client.get_blob(self.repository, self.digest)

    def open_raw(self) -> ResumableBody:
        """The blob's bytes unchecked (the reader hashes them), resumed if the connection is cut."""
        return self.client.blob_body(self.repository, self.digest, end=self.size)

    def read_range(self, start: int, length: int) -> bytes:
        length = max(0, min(length, self.size - start))  # fewer bytes only at the blob's end
        return b"".join(self.client.iter_blob_range(self.repository, self.digest, start, length))

    def iter_range(self, start: int, length: int, chunk: Piece = 1 << 20) -> Iterator[bytes]:
        return self.client.iter_blob_range(self.repository, self.digest, start, length, chunk)


class RegistryClient:
    """One registry's distribution API (``/v2/``)."""

    def __init__(
        self,
        registry: str,
        *,
        transport: Transport | None = None,
        plain_http: bool | None = None,
        workers: int = 4,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        self.registry = normalise_registry(registry)
        self.transport = transport or Transport(
            self.registry, credentials=load_credentials(self.registry)
        )
        self.base_url = api_base(self.registry, plain_http=plain_http)
        self.workers = max(1, workers)
        self.chunk_size = max(1, chunk_size)

    def _url(self, repo: str, kind: str, ref: str = "") -> str:
        return f"{self.base_url}/v2/{repo}/{kind}/{quote(ref, safe=':')}"

    # -- blobs ------------------------------------------------------------------------------

    def blob_exists(self, repo: str, digest: str, *, push: bool = False) -> bool:
        resp = self.transport.request(
            "HEAD",
            self._url(repo, "blobs", digest),
            scope=registry_scope(repo, push=push),
            allow_statuses=(404,),
        )
        resp.close()
        return resp.status_code == 200

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Cross-repository mount; False when the registry started an upload instead."""
        query = urlencode({"mount": digest, "from": from_repo})
        resp = self.transport.request(
            "POST",
            f"{self.base_url}/v2/{repo}/blobs/uploads/?{query}",
            scope=(registry_scope(repo, push=True), registry_scope(from_repo)),
        )
        resp.close()
        if resp.status_code == 201:
            return True
        if resp.status_code == 202 and resp.headers.get("Location"):
            # the blob was not mountable: drop the upload session the registry opened
            try:
                self.transport.request(
                    "DELETE",
                    _location(resp),
                    scope=registry_scope(repo, push=True),
                    allow_statuses=range(400, 600),
                    retry=False,
                ).close()
            except (RegistryError, requests.RequestException) as e:
                log.debug("cancelling upload in %s: %s", repo, e)
        return False

    def upload_blob(
        self,
        repo: str,
        digest: str,
        size: int,
        opener: Opener,
        *,
        on_progress: Progress | None = None,
    ) -> None:
        """Upload a blob: one streamed PUT, or PATCH chunks then PUT for big blobs.

        The whole upload session is retried (from a fresh POST) by the transport's policy: a
        registry cannot resume an upload that a cut connection left at an unknown offset.
        ``on_progress`` gets byte counts, negative when a failed attempt starts over.
        """
        progress = _SentBytes(on_progress)

        def attempt() -> None:
            progress.restart()
            location = self._start_upload(repo)
            if size <= self.chunk_size:
                resp = self.transport.request(
                    "PUT",
                    _with_digest(location, digest),
                    headers={"Content-Type": "application/octet-stream"},
                    body=opener if size else b"",
                    size=size if size else None,
                    scope=registry_scope(repo, push=True),
                    retry=False,
                    on_sent=progress,
                )
            else:
                resp = self._upload_chunks(repo, location, digest, size, opener, progress)
            resp.close()
            _check_digest(resp, digest, f"blob upload to {repo}")

        self.transport.retrying(attempt, what=f"upload of {digest[:19]} to {repo}")

    def upload_stream(
        self,
        repo: str,
        size: int,
        opener: Opener,
        *,
        digest: Callable[[], str],
        on_progress: Progress | None = None,
    ) -> str:
        """Upload a blob whose digest is learnt on the way (a ``StreamLayer``); returns it.

        One streamed PATCH, then the closing PUT with ``digest()``, which the source knows once
        read to its end. An error from the source (e.g. content that does not match the hub's
        hash) aborts before the PUT, so no blob appears. Retried as a whole, like upload_blob.
        """
        progress = _SentBytes(on_progress)

        def attempt() -> str:
            progress.restart()
            location = self._start_upload(repo)
            resp = self.transport.request(
                "PATCH",
                location,
                headers={"Content-Type": "application/octet-stream"},
                body=opener,
                size=size,
                scope=registry_scope(repo, push=True),
                retry=False,
                on_sent=progress,
            )
            resp.close()
            learnt = digest()
            resp = self.transport.request(
                "PUT",
                _with_digest(_location(resp), learnt),
                body=b"",
                scope=registry_scope(repo, push=True),
                retry=False,
            )
            resp.close()
            _check_digest(resp, learnt, f"blob upload to {repo}")
            return learnt

        return self.transport.retrying(attempt, what=f"streamed upload to {repo}")

    def _start_upload(self, repo: str) -> str:
        resp = self.transport.request(
            "POST",
            f"{self.base_url}/v2/{repo}/blobs/uploads/",
            scope=registry_scope(repo, push=True),
            retry=False,
        )
        resp.close()
        return _location(resp)

    def _upload_chunks(
        self,
        repo: str,
        location: str,
        digest: str,
        size: int,
        opener: Opener,
        progress: Progress,
    ) -> requests.Response:
        # chunks are read into memory so a re-authentication can send one again
        with opener() as stream:
            offset = 0
            while offset < size:
                chunk = _read_exactly(stream, min(self.chunk_size, size - offset))
                resp = self.transport.request(
                    "PATCH",
                    location,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
                    },
                    body=chunk,
                    scope=registry_scope(repo, push=True),
                    retry=False,
                    on_sent=progress,
                )
                resp.close()
                location = _location(resp)
                offset += len(chunk)
        return self.transport.request(
            "PUT",
            _with_digest(location, digest),
            body=b"",
            scope=registry_scope(repo, push=True),
            retry=False,
        )

    def get_blob(self, repo: str, digest: str) -> BinaryIO:
        """A stream of the blob (redirects followed); reading it to the end checks its digest."""
        body = self.blob_body(repo, digest)

        def check(got: str) -> None:
            if got != digest:
                raise DigestMismatch(f"registry {self.registry}: blob {digest} hashed to {got}")

        verified = HashingReader(body.readinto, check, close=body.close)
        return io.BufferedReader(verified, 1024 * 1024)

    def blob_body(
        self, repo: str, digest: str, *, start: int = 0, end: int | None = None
    ) -> ResumableBody:
        """The blob's bytes ``[start, end)`` (to its end when None) as the registry sends them,
        unchecked, resumed where a cut stops them (``ResumableBody``)."""
        url = self._url(repo, "blobs", digest)

        def open_at(offset: int) -> requests.Response:
            headers = {"Accept-Encoding": "identity"}  # a blob is sent as stored
            if offset or end is not None:
                headers["Range"] = f"bytes={offset}-" + ("" if end is None else str(end - 1))
            return self.transport.request(
                "GET", url, headers=headers, scope=registry_scope(repo), stream=True, retry=False
            )

        def gave_up(e: BaseException, offset: int) -> RegistryError:
            return RegistryError(
                f"registry {self.registry}: reading blob {digest} failed after "
                f"{offset - start} bytes: {e}",
                temporary=True,
            )

        return ResumableBody(
            open_at, what=f"registry {self.registry}: blob {digest}", start=start, end=end,
            policy=self.transport.policy, is_temporary=is_temporary, gave_up=gave_up,
        )  # fmt: skip

    def iter_blob_range(
        self, repo: str, digest: str, start: int, length: int, chunk: Piece = 1 << 20
    ) -> Iterator[bytes]:
        """``length`` bytes of a blob from ``start``, streamed from one Range request in pieces
        of at most ``chunk`` (memory stays at one piece, whatever the length; a callable is
        asked before each read)."""
        if length <= 0:
            return
        with self.blob_body(repo, digest, start=start, end=start + length) as raw:
            # a buffered reader's read(n) fills a new bytes object in place: one piece in
            # memory, not a buffer and its copy
            body = io.BufferedReader(raw, buffer_size=64 << 10)
            left = length
            while left:
                data = body.read(min(left, piece_size(chunk)))
                if not data:
                    raise RegistryError(
                        f"registry {self.registry}: blob {digest} ended {left} bytes early",
                        temporary=True,
                    )
                left -= len(data)
                yield data

    # -- manifests and tags -----------------------------------------------------------------

    def get_manifest(
        self, repo: str, ref: str, *, accept: Sequence[str] = MANIFEST_ACCEPT
    ) -> tuple[bytes, str, str] | None:
        """``(bytes, media type, digest)`` of a manifest by tag or digest; None when absent."""
        resp = self.transport.request(
            "GET",
            self._url(repo, "manifests", ref),
            headers={"Accept": ", ".join(accept)},
            scope=registry_scope(repo),
            allow_statuses=(404,),
        )
        if resp.status_code == 404:
            code = error_code(resp)
            if code is None or code in _ABSENT_CODES:
                return None
            raise error_from_response(resp, registry=self.registry)
        data = resp.content
        digest = sha256_digest(data)
        if ref.startswith("sha256:") and ref != digest:
            raise DigestMismatch(f"registry {self.registry}: manifest {repo}@{ref} has {digest}")
        _check_digest(resp, digest, f"manifest {repo}:{ref}")
        content_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        media_type = content_type if content_type in MANIFEST_ACCEPT else ""
        if not media_type:
            try:
                media_type = str(json.loads(data).get("mediaType") or MT_MANIFEST)
            except (ValueError, AttributeError):
                media_type = content_type
        return data, media_type, digest

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        """Store a manifest under a tag or its digest; returns its digest.

        A DIGEST_INVALID answer is tried again: distribution gives it when it reads a blob
        link that a concurrent push of the same blob is writing, and the digest sent here is
        the sha256 of the bytes sent."""

        def attempt() -> requests.Response:
            try:
                return self.transport.request(
                    "PUT",
                    self._url(repo, "manifests", ref),
                    headers={"Content-Type": media_type},
                    body=data,
                    scope=registry_scope(repo, push=True),
                    retry=False,
                )
            except RegistryError as e:
                if e.status == 400 and "DIGEST_INVALID" in str(e):
                    e.temporary = True
                raise

        resp = self.transport.retrying(attempt, what=f"PUT manifest {repo}:{ref}")
        resp.close()
        digest = sha256_digest(data)
        _check_digest(resp, digest, f"manifest {repo}:{ref}")
        return digest

    def delete_manifest(self, repo: str, digest: str) -> None:
        """Delete a manifest by digest (and with it every tag on it); RegistryError when the
        registry refuses (distribution answers 405 UNSUPPORTED unless deletes are enabled)."""
        resp = self.transport.request(
            "DELETE",
            self._url(repo, "manifests", digest),
            scope=f"repository:{repo}:delete",
            allow_statuses=(404,),
        )
        resp.close()

    def list_tags(self, repo: str, *, page_size: int = 1000) -> list[str]:
        """Every tag of ``repo`` (following pagination); empty when the repository is unknown."""
        tags: list[str] = []
        url: str | None = f"{self.base_url}/v2/{repo}/tags/list?n={page_size}"
        while url:
            resp = self.transport.request(
                "GET", url, scope=registry_scope(repo), allow_statuses=(404,)
            )
            if resp.status_code == 404:
                return tags
            try:
                tags.extend(str(t) for t in resp.json().get("tags") or [])
            except (ValueError, AttributeError) as e:
                raise RegistryError(f"registry {self.registry}: bad tag list for {repo}") from e
            link = resp.links.get("next", {}).get("url")
            url = urljoin(resp.url, link) if link else None
        return tags


def _location(resp: requests.Response) -> str:
    """The absolute upload URL from ``Location`` (relative ones resolve against the request)."""
    location = resp.headers.get("Location")
    if not location:
        raise RegistryError(
            f"registry answered {resp.request.method} {urlsplit(resp.url).path} without Location",
            status=resp.status_code,
        )
    return urljoin(resp.url, location)


def _with_digest(location: str, digest: str) -> str:
    sep = "&" if urlsplit(location).query else "?"
    return f"{location}{sep}{urlencode({'digest': digest})}"


def _check_digest(resp: requests.Response, digest: str, what: str) -> None:
    theirs = resp.headers.get("Docker-Content-Digest")
    if theirs and theirs != digest:
        raise DigestMismatch(f"{what}: registry says {theirs}, expected {digest}")


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    chunk = bytearray(n)
    got = read_exactly(cast(Readable, stream), chunk)
    if got < n:
        raise DigestMismatch(f"blob stream ended {n - got} bytes short of its stated size")
    return bytes(chunk)


class _SentBytes:
    """Counts an upload session's bytes for ``on_progress``; taken back when it starts over."""

    def __init__(self, on_progress: Progress | None) -> None:
        self.on_progress = on_progress
        self.total = 0
        self._lock = threading.Lock()

    def __call__(self, n: int) -> None:
        with self._lock:
            self.total += n
        if self.on_progress is not None:
            self.on_progress(n)

    def restart(self) -> None:
        if self.total:
            self(-self.total)
