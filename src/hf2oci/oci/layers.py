"""Layer sources: a deterministic tar of files, bytes in memory, a blob already on disk."""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import BinaryIO, cast

from hf2oci.errors import PackError
from hf2oci.oci.image import MT_DOCKER_LAYER, MT_LAYER_GZIP, MT_LAYER_TAR, sha256_digest
from hf2oci.oci.tarstream import DEFAULT_CHUNK, TarEntry, TarStream, iter_tar, tar_size

log = logging.getLogger(__name__)

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def check_digest(digest: str) -> str:
    """``digest`` if it is a well-formed sha256 digest, else PackError."""
    if not _DIGEST.fullmatch(digest):
        raise PackError(f"invalid digest {digest!r}")
    return digest


def _sha256_of(chunks: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return "sha256:" + h.hexdigest()


class _LazyDigest:
    """A digest computed at most once, on first use, even with many threads asking."""

    def __init__(self, compute: Callable[[], str], known: str | None) -> None:
        self._compute = compute
        self._value = check_digest(known) if known is not None else None
        self._lock = threading.Lock()

    def get(self) -> str:
        if self._value is None:
            with self._lock:
                if self._value is None:
                    self._value = self._compute()
        return self._value


class TarLayer:
    """An uncompressed tar of files (digest == diff_id), hashed lazily in one streaming pass."""

    def __init__(
        self,
        entries: Sequence[TarEntry],
        *,
        digest: str | None = None,
        chunk_size: int = DEFAULT_CHUNK,
    ) -> None:
        self.entries = tuple(entries)
        self._chunk_size = chunk_size
        self._size = tar_size(self.entries)
        self._digest = _LazyDigest(self._hash, digest)

    def _hash(self) -> str:
        digest = _sha256_of(iter_tar(self.entries, chunk_size=self._chunk_size))
        log.debug("hashed tar layer of %d entries: %s", len(self.entries), digest)
        return digest

    @property
    def digest(self) -> str:
        return self._digest.get()

    @property
    def diff_id(self) -> str:
        return self._digest.get()

    @property
    def size(self) -> int:
        return self._size

    @property
    def media_type(self) -> str:
        return MT_LAYER_TAR

    def open(self) -> BinaryIO:
        # a TarStream, not a buffered wrapper: it has len() for Content-Length and rewinds
        return cast(BinaryIO, TarStream(self.entries, chunk_size=self._chunk_size))

    def __repr__(self) -> str:
        return f"TarLayer({len(self.entries)} entries, {self._size} bytes)"


class BytesLayer:
    """A small blob held in memory (tests, tiny base layers).

    Without ``diff_id``, it is derived: the digest for a tar, the digest of the gunzipped bytes
    for a gzip layer.
    """

    def __init__(
        self, data: bytes, media_type: str = MT_LAYER_TAR, diff_id: str | None = None
    ) -> None:
        self.data = bytes(data)
        self._media_type = media_type
        self._digest = sha256_digest(self.data)
        if diff_id is None:
            diff_id = _derive_diff_id(self.data, media_type, self._digest)
        self._diff_id = check_digest(diff_id)

    @property
    def digest(self) -> str:
        return self._digest

    @property
    def diff_id(self) -> str:
        return self._diff_id

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def media_type(self) -> str:
        return self._media_type

    def open(self) -> BinaryIO:
        return io.BytesIO(self.data)

    def __repr__(self) -> str:
        return f"BytesLayer({self._digest}, {len(self.data)} bytes)"


def _derive_diff_id(data: bytes, media_type: str, digest: str) -> str:
    if media_type == MT_LAYER_TAR:
        return digest
    if media_type in (MT_LAYER_GZIP, MT_DOCKER_LAYER):
        try:
            return sha256_digest(gzip.decompress(data))
        except (OSError, EOFError) as e:
            raise PackError(f"layer {digest} is not valid gzip") from e
    raise PackError(f"diff_id needed for a layer of type {media_type}")


class FileBlobLayer:
    """A blob already on disk (e.g. in a layout's ``blobs/``); digest and size found lazily."""

    def __init__(
        self,
        path: Path,
        *,
        media_type: str,
        diff_id: str,
        digest: str | None = None,
        size: int | None = None,
    ) -> None:
        self.path = Path(path)
        self._media_type = media_type
        self._diff_id = check_digest(diff_id)
        self._size = size
        self._digest = _LazyDigest(self._hash, digest)

    def _hash(self) -> str:
        with self.open() as f:
            try:
                return _sha256_of(iter(lambda: f.read(DEFAULT_CHUNK), b""))
            except OSError as e:
                raise PackError(f"cannot read {str(self.path)!r}: {e.strerror}") from e

    @property
    def digest(self) -> str:
        return self._digest.get()

    @property
    def diff_id(self) -> str:
        return self._diff_id

    @property
    def size(self) -> int:
        if self._size is None:
            try:
                self._size = os.stat(self.path).st_size
            except OSError as e:
                raise PackError(f"cannot read {str(self.path)!r}: {e.strerror}") from e
        return self._size

    @property
    def media_type(self) -> str:
        return self._media_type

    def open(self) -> BinaryIO:
        try:
            return open(self.path, "rb")
        except OSError as e:
            raise PackError(f"cannot read {str(self.path)!r}: {e.strerror}") from e

    def __repr__(self) -> str:
        return f"FileBlobLayer({str(self.path)!r})"


class UploadedLayer:
    """A layer already stored at the destination, known by its descriptor (nothing to send).

    Streamed layers end up as these: their bytes went straight from the hub to the sink.
    """

    def __init__(self, digest: str, size: int, *, media_type: str = MT_LAYER_TAR) -> None:
        self._digest = check_digest(digest)
        self._size = size
        self._media_type = media_type

    @property
    def digest(self) -> str:
        return self._digest

    @property
    def diff_id(self) -> str:
        if self._media_type != MT_LAYER_TAR:
            raise PackError(f"diff_id of a compressed uploaded layer {self._digest} is unknown")
        return self._digest

    @property
    def size(self) -> int:
        return self._size

    @property
    def media_type(self) -> str:
        return self._media_type

    def open(self) -> BinaryIO:
        raise PackError(f"layer {self._digest} was expected at the destination but is missing")

    def __repr__(self) -> str:
        return f"UploadedLayer({self._digest[:19]}, {self._size} bytes)"
