"""Content hashes, computed once while the bytes pass: OCI digests (``sha256:…``) and the hub's
own (an LFS file's sha256, a git blob's sha1). Every reader that checks or learns a digest on the
way hashes through here."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

#: bytes read at a time when a whole file is hashed
FILE_CHUNK = 1 << 20


def sha256_digest(data: bytes) -> str:
    """The OCI digest of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_of(chunks: Iterable[bytes]) -> str:
    """The OCI digest of the bytes ``chunks`` give, in order."""
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return "sha256:" + h.hexdigest()


def sha256_file(path: Path) -> str:
    """The OCI digest of a file's bytes (OSError as the file gives it)."""
    with open(path, "rb") as f:
        return sha256_of(iter(lambda: f.read(FILE_CHUNK), b""))


def git_blob_hash(size: int) -> Any:
    """A sha1 that, fed a file's ``size`` bytes, gives its git blob id (the hub's ``oid`` of a
    file not in LFS)."""
    return hashlib.sha1(b"blob %d\0" % size, usedforsecurity=False)


class HashingReader(io.RawIOBase):
    """Reads through to ``source`` (its ``readinto``), hashing every byte with sha256; when
    ``size`` bytes have passed (or at the end, when no size is given) it hands the digest to
    ``done``, once. A reader need not ask for the end: the last byte is enough."""

    def __init__(
        self,
        source: Callable[[Any], int | None],
        done: Callable[[str], None],
        *,
        size: int | None = None,
        close: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self._source, self._done, self._size, self._close = source, done, size, close
        self._hash = hashlib.sha256()
        self._read = 0
        self._finished = False

    def __len__(self) -> int:
        if self._size is None:
            raise TypeError("a HashingReader without a size has no length")
        return self._size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = int(self._source(buffer) or 0)
        if n:
            self._hash.update(memoryview(buffer)[:n])
            self._read += n
        if not self._finished and (self._read == self._size or (not n and self._size is None)):
            self._finished = True
            self._done("sha256:" + self._hash.hexdigest())
        return n

    def close(self) -> None:
        if not self.closed and self._close is not None:
            self._close()
        super().close()
