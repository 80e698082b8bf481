"""Content hashes, computed once while the bytes pass: OCI digests (``sha256:…``) and the hub's
own (an LFS file's sha256, a git blob's sha1). Every reader that checks or learns a digest on the
way hashes through here: ``Expected`` is what the hub says a file hashes to, ``verified`` checks
a stream of its bytes (holding the last piece back until it matches), ``SplitCheck`` a file read
as consecutive ranges, one pass each (the parts of a file too big for one layer)."""

from __future__ import annotations

import collections
import hashlib
import io
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf2oci.errors import DigestMismatch, PackError

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


@dataclass(frozen=True)
class Expected:
    """What the hub says a file's ``size`` bytes hash to: its LFS sha256, else its git blob id
    (the one choice of algorithm, made here)."""

    size: int | None
    sha256: str | None = None
    blob_id: str | None = None

    @classmethod
    def of_digest(cls, digest: str, size: int | None = None) -> Expected:
        """An OCI digest (``sha256:<hex>``) as what the bytes must hash to."""
        algorithm, _, hexdigest = digest.partition(":")
        if algorithm != "sha256" or not hexdigest:
            raise PackError(f"unsupported digest {digest!r}")
        return cls(size, sha256=hexdigest)

    @property
    def value(self) -> str:
        if self.sha256:
            return self.sha256
        if self.blob_id:
            return self.blob_id
        raise PackError("no hash to check the bytes against")

    def hasher(self) -> Any:
        """A fresh hash of the kind ``value`` is."""
        if self.sha256 or self.size is None:
            return hashlib.sha256()
        return git_blob_hash(self.size)


class Check:
    """Feeds bytes to ``expected``'s hash and says whether they matched. ``background``: the
    hash runs on a thread of its own (hashlib lets go of the GIL), at most one piece behind, so
    a consumer hashing the same bytes for another digest uses a second core."""

    def __init__(self, expected: Expected, *, background: bool = False, state: Any = None) -> None:
        self.expected = expected
        self.h = state if state is not None else expected.hasher()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="check") if background else None
        self._queued: collections.deque[Future[None]] = collections.deque()

    def update(self, piece: bytes | memoryview) -> None:
        if self._pool is None:
            self.h.update(piece)
            return
        self._queued.append(self._pool.submit(self.h.update, piece))
        while len(self._queued) > 1:
            self._queued.popleft().result()

    def state(self) -> Any:
        """A copy of the hash so far (every piece fed)."""
        while self._queued:
            self._queued.popleft().result()
        return self.h.copy()

    def matches(self) -> bool:
        return bool(self.hexdigest() == self.expected.value)

    def hexdigest(self) -> str:
        return str(self.state().hexdigest())

    def verify(self, what: str) -> None:
        """DigestMismatch unless the bytes fed hash to what was expected."""
        got = self.hexdigest()
        if got != self.expected.value:
            raise DigestMismatch(
                f"{what}: content hashes to {got}, the hub says {self.expected.value}"
            )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)


def verified(
    pieces: Iterable[bytes],
    expected: Expected,
    *,
    what: str,
    background: bool = False,
    start: int = 0,
    state: Any = None,
    last: bool = True,
    on_state: Callable[[Any], None] | None = None,
) -> Iterator[bytes]:
    """``pieces`` of a file from byte ``start`` on, checked: never more bytes than the file
    has, and (``last``: they end the file) its size and hash, the piece that completes the file
    given out only once the hash matches, so a consumer never completes anything with wrong
    bytes (a body that ends short raises after its last piece). ``state``: the hash of the
    bytes before ``start``; ``on_state``: told the hash where the pieces end, when they do not
    end the file."""
    size = expected.size
    if size is None:
        raise PackError(f"{what}: no size to check the bytes against")
    check = Check(expected, background=background, state=state)
    got = start
    done = False
    try:
        for piece in pieces:
            got += len(piece)
            if got > size:
                raise DigestMismatch(f"{what}: more than its {size} bytes")
            check.update(piece)
            if last and got == size and piece:  # the piece that completes the file
                check.verify(what)
                done = True
            yield piece
        if last and got != size:
            raise DigestMismatch(f"{what}: {got} bytes, the hub says {size}")
        if last and not done:  # an empty file (or nothing past ``start``)
            check.verify(what)
        if not last and on_state is not None:
            on_state((got, check.state()))
    finally:
        check.close()


class CheckedReader(io.RawIOBase):
    """A file object reading through ``readinto``, every byte checked: the read that brings
    ``expected.size`` bytes (or finds the source ended, when no size is known) raises
    ``refuse(bytes read, their sha256 or git blob id)`` unless they are what was expected, so a
    consumer (an upload, a tar) never sees the end of wrong bytes (go-containerregistry's
    ``verify.ReadCloser``); ``on_bytes`` is told each read's count (progress)."""

    def __init__(
        self,
        readinto: Callable[[Any], int | None],
        expected: Expected,
        *,
        refuse: Callable[[int, str], Exception],
        close: Callable[[], None] | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__()
        self._source, self._close, self.refuse = readinto, close, refuse
        self._on_bytes = on_bytes
        self.expected = expected
        self.check = Check(expected)
        self.read_so_far = 0
        self._ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        size = self.expected.size
        if size is not None:
            view = view[: max(0, size - self.read_so_far)]
        n = int(self._source(view) or 0) if len(view) else 0
        self.check.update(view[:n])
        self.read_so_far += n
        if not self._ended and (n == 0 or (size is not None and self.read_so_far >= size)):
            self.ended()
        if n and self._on_bytes is not None:  # the last bytes count once they checked out
            self._on_bytes(n)
        return n

    def ended(self) -> None:
        """The end: raise ``refuse`` unless every byte came and matched (once)."""
        self._ended = True
        size = self.expected.size
        if (size is not None and self.read_so_far != size) or not self.check.matches():
            raise self.refuse(self.read_so_far, self.check.hexdigest())

    def drain(self, chunk: int = 1 << 20) -> None:
        """Read to the end (checked), for a caller that needs no byte of it."""
        buffer = bytearray(chunk)
        while not self._ended and self.readinto(buffer):
            pass
        if not self._ended:
            self.ended()

    def close(self) -> None:
        if not self.closed and self._close is not None:
            self._close()
        super().close()


class SplitCheck:
    """A file read as consecutive ranges, one pass each, checked as a whole: each range's pass
    starts from the hash of all the bytes before it (kept once the range before was first read
    to its end, so any range can be read again), and the last range's last piece waits for the
    file's hash to match. A range whose predecessor has not been read yet waits for it; one
    whose predecessor's pass failed fails too (its reader tries again, or gives up)."""

    def __init__(
        self,
        expected: Expected,
        bounds: Sequence[tuple[int, int]],
        read: Callable[[int, int], Iterator[bytes]],
        *,
        what: str,
        background: bool = False,
    ) -> None:
        if (
            not bounds
            or bounds[0][0] != 0
            or bounds[-1][1] != expected.size
            or any(a[1] != b[0] for a, b in itertools.pairwise(bounds))
        ):
            raise PackError(f"{what}: ranges that do not cover the file")
        self.expected, self.bounds, self.read, self.what = expected, bounds, read, what
        self.background = background
        self._states: dict[int, Any] = {0: expected.hasher()}
        self._failed: dict[int, BaseException] = {}
        self._cond = threading.Condition()

    def source(self, k: int) -> Callable[[], Iterator[bytes]]:
        """Range ``k``'s pieces, a fresh checked pass each call."""
        return lambda: self._pass(k)

    def _pass(self, k: int) -> Iterator[bytes]:
        start, end = self.bounds[k]
        last = k == len(self.bounds) - 1
        what = f"{self.what} (bytes {start}-{end - 1})"
        pieces: Iterator[bytes] | None = None
        done = False
        try:
            state = self._wait(k)
            pieces = self.read(start, end)
            yield from verified(
                _ending(pieces, end - start, what), self.expected, what=self.what,
                background=self.background, start=start, state=state, last=last,
                on_state=lambda got: self._reached(k + 1, got[1]),
            )  # fmt: skip
            done = True
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()
            if not done:  # the passes after this one wait for it: they fail too
                with self._cond:
                    if k + 1 not in self._states:
                        self._failed[k] = PackError(f"{what}: its pass did not end")
                        self._cond.notify_all()

    def _wait(self, k: int) -> Any:
        """The hash of the bytes before range ``k`` (once a pass of range ``k - 1`` ended),
        PackError when that pass failed; a pass of ``k`` itself starts afresh."""
        with self._cond:
            self._failed.pop(k, None)
            while k not in self._states:
                if k - 1 in self._failed:
                    raise PackError(f"{self.what}: the part before could not be read")
                self._cond.wait(1.0)
            return self._states[k].copy()

    def _reached(self, k: int, state: Any) -> None:
        with self._cond:
            self._states.setdefault(k, state)
            self._cond.notify_all()


def _ending(pieces: Iterator[bytes], size: int, what: str) -> Iterator[bytes]:
    """``pieces``, which must be exactly ``size`` bytes."""
    got = 0
    for piece in pieces:
        got += len(piece)
        if got > size:
            raise DigestMismatch(f"{what}: more than {size} bytes")
        yield piece
    if got != size:
        raise DigestMismatch(f"{what}: {got} bytes, expected {size}")
