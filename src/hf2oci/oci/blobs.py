"""Layer sources: a deterministic tar of files, a tar streamed from the hub, a blob on disk."""

from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, cast

from hf2oci.digest import HashingReader, sha256_digest, sha256_of
from hf2oci.errors import DigestMismatch, PackError
from hf2oci.oci.image import MT_LAYER_TAR, Piece, piece_size
from hf2oci.oci.tarstream import (
    DEFAULT_CHUNK,
    ChunkSource,
    ChunkStream,
    TarEntry,
    TarStream,
    iter_tar,
    tar_size,
)
from hf2oci.reference import DIGEST

log = logging.getLogger(__name__)


def check_digest(digest: str) -> str:
    """``digest`` if it is a well-formed sha256 digest, else PackError."""
    if not DIGEST.fullmatch(digest):
        raise PackError(f"invalid digest {digest!r}")
    return digest


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
        digest = sha256_of(iter_tar(self.entries, chunk_size=self._chunk_size))
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
    """A small blob held in memory (a signature's payload, an attestation), of any media type."""

    def __init__(self, data: bytes, media_type: str) -> None:
        self._data, self._media_type = bytes(data), media_type
        self._digest = sha256_digest(self._data)

    @property
    def digest(self) -> str:
        return self._digest

    @property
    def diff_id(self) -> str:
        return self._digest

    @property
    def size(self) -> int:
        return len(self._data)

    @property
    def media_type(self) -> str:
        return self._media_type

    def open(self) -> BinaryIO:
        return io.BytesIO(self._data)


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
                return sha256_of(iter(lambda: f.read(DEFAULT_CHUNK), b""))
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

    def open_raw(self) -> io.BufferedReader:
        try:
            return open(self.path, "rb")
        except OSError as e:
            raise PackError(f"cannot read {str(self.path)!r}: {e.strerror}") from e

    def read_range(self, start: int, length: int) -> bytes:
        try:
            with open(self.path, "rb") as f:
                f.seek(start)
                return f.read(length)
        except OSError as e:
            raise PackError(f"cannot read {str(self.path)!r}: {e.strerror}") from e

    def iter_range(self, start: int, length: int, chunk: Piece = 1 << 20) -> Iterator[bytes]:
        return read_file_range(self.path, start, length, chunk)

    def __repr__(self) -> str:
        return f"FileBlobLayer({str(self.path)!r})"


def read_file_range(path: Path, start: int, length: int, chunk: Piece = 1 << 20) -> Iterator[bytes]:
    """``length`` bytes of the file at ``path`` from ``start``, ``chunk`` at a time; PackError
    when it cannot be read or ends early."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            while length > 0:
                data = f.read(min(piece_size(chunk), length))
                if not data:
                    raise PackError(f"{str(path)!r} ended {length} bytes early")
                length -= len(data)
                yield data
    except OSError as e:
        raise PackError(f"cannot read {str(path)!r}: {e.strerror}") from e


class StreamLayer:
    """A tar layer of files read once from their source (a hub download), as go-containerregistry's
    ``stream.Layer``: its size is known at once, its digest only once it has been read to the end.

    A sink writes it like any other layer, learning the digest by writing it: nothing is hashed
    twice and nothing touches the disk. ``open()`` starts a fresh pass (and a fresh hash) each
    time, so a failed upload can be tried again.
    """

    def __init__(self, entries: Sequence[TarEntry], *, chunk_size: int = DEFAULT_CHUNK) -> None:
        self.entries = tuple(entries)
        self._chunk_size = chunk_size
        self._size = tar_size(self.entries)
        self._digest: str | None = None
        #: told the digest once a full read has found it (e.g. to remember the layer)
        self.on_digest: Callable[[str], None] | None = None

    @property
    def consumed(self) -> bool:
        """Whether a full read has set the digest."""
        return self._digest is not None

    @property
    def digest(self) -> str:
        if self._digest is None:
            raise PackError(f"{self!r}: the digest is known only once the layer was written")
        return self._digest

    @property
    def diff_id(self) -> str:
        return self.digest

    @property
    def size(self) -> int:
        return self._size

    @property
    def media_type(self) -> str:
        return MT_LAYER_TAR

    def open(self) -> BinaryIO:
        stream = TarStream(self.entries, chunk_size=self._chunk_size)
        return _hashing(stream, self._size, self._set_digest)

    def _set_digest(self, digest: str) -> None:
        if self._digest is not None and self._digest != digest:
            raise DigestMismatch(f"{self!r} gave {digest}, then {self._digest}: not deterministic")
        self._digest = digest
        if self.on_digest is not None:
            self.on_digest(digest)

    def __repr__(self) -> str:
        first = self.entries[-1].name if self.entries else "-"
        return f"StreamLayer({first}…, {len(self.entries)} entries, {self._size} bytes)"


class RawStreamLayer(StreamLayer):
    """One file's bytes as the layer blob (a ModelPack raw layer), read once from its source.

    With ``digest`` (the hub's LFS sha256) the digest is known at once, so a sink can skip a
    blob the destination already holds; without, it is learnt by writing, as for a tar stream.
    """

    def __init__(
        self, source: ChunkSource, size: int, *, media_type: str, digest: str | None = None
    ) -> None:
        super().__init__(())
        self._source = source
        self._size = size
        self._media_type = media_type
        self._digest = check_digest(digest) if digest is not None else None

    @property
    def media_type(self) -> str:
        return self._media_type

    def open(self) -> BinaryIO:
        return _hashing(ChunkStream(self._source, self._size), self._size, self._set_digest)

    def __repr__(self) -> str:
        return f"RawStreamLayer({self._media_type}, {self._size} bytes)"


def _hashing(stream: io.RawIOBase, size: int, done: Callable[[str], None]) -> BinaryIO:
    """``stream`` read through a sha256 that hands the digest to ``done`` at its last byte."""
    return cast(BinaryIO, HashingReader(stream.readinto, done, size=size, close=stream.close))
