"""Verified read-ahead of a blob: receive, hash and consume at once, with few copies.

A blob is read into a handful of reused buffers by one thread and hashed by a second, while the
consumer (unpacking, writing files) works on the buffers before them. The bytes are copied once
in (the kernel's recv into a buffer) and once out (the consumer's write): no per-chunk objects.
The digest and size are checked when the blob ends, before the consumer is told it has ended.
"""

from __future__ import annotations

import errno
import fcntl
import io
import mmap
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

from hf2oci.digest import Check, Expected
from hf2oci.errors import DigestMismatch

#: buffers of this size, a few of them per blob: 1 MiB measured as fast as 4 or 8 MiB
BUFFER_SIZE = 1 << 20
BUFFERS = 4
_POLL_S = 0.1
#: Linux's O_DIRECT (0 where there is none): spans of this alignment go to the disk directly
O_DIRECT = getattr(os, "O_DIRECT", 0)
DIRECT_ALIGN = 512

ReadInto = Callable[[memoryview], int]


class _End:
    """The last item through the queues: the blob's end (checked), or the error that ended it."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class ReadAhead:
    """``readinto`` read ahead into reused buffers in a thread, hashed in another.

    ``get()`` gives the next filled buffer (a memoryview the consumer must not keep) and takes the
    previous one back; at the end it checks ``digest`` (``sha256:…``, or None for no check) and
    ``size`` (None: any) and raises ``DigestMismatch`` instead of ending when they differ. Errors
    of the source are raised by ``get()`` too. ``close()`` stops the threads early.
    ``on_bytes`` is told of every buffer hashed (progress).
    """

    def __init__(
        self,
        readinto: ReadInto,
        *,
        digest: str | None,
        size: int | None,
        what: str,
        buffers: int = BUFFERS,
        buffer_size: int = BUFFER_SIZE,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        self._readinto = readinto
        self._on_bytes = on_bytes
        self.digest, self.size, self.what = digest, size, what
        self._free: queue.Queue[memoryview] = queue.Queue()
        for _ in range(max(2, buffers)):
            # page-aligned memory (an anonymous map), so that files can be written with O_DIRECT
            self._free.put(memoryview(mmap.mmap(-1, buffer_size)))
        self._filled: queue.Queue[tuple[memoryview, int] | _End] = queue.Queue()
        self._ready: queue.Queue[tuple[memoryview, int] | _End] = queue.Queue()
        self._held: memoryview | None = None
        self._stopped = threading.Event()
        self._done = False
        self._threads = [
            threading.Thread(target=self._read, name="blob-read", daemon=True),
            threading.Thread(target=self._hash, name="blob-hash", daemon=True),
        ]
        for t in self._threads:
            t.start()

    # -- the two threads ----------------------------------------------------------------------

    def _take(self, q: queue.Queue[Any]) -> Any:
        while not self._stopped.is_set():
            try:
                return q.get(timeout=_POLL_S)
            except queue.Empty:
                continue
        return None

    def _read(self) -> None:
        try:
            while (buf := self._take(self._free)) is not None:
                n = 0
                while n < len(buf) and (k := self._readinto(buf[n:])):
                    n += k
                if n:
                    self._filled.put((buf, n))
                if n < len(buf):
                    self._filled.put(_End())
                    return
        except BaseException as e:  # handed on in order; the consumer raises it
            self._filled.put(_End(e))

    def _hash(self) -> None:
        h = Check(Expected.of_digest(self.digest)) if self.digest else None
        total = 0
        while (item := self._take(self._filled)) is not None:
            if isinstance(item, _End):
                if item.error is None:
                    item = _End(self._check(h, total))
                self._ready.put(item)
                return
            buf, n = item
            if h is not None:
                h.update(buf[:n])  # releases the GIL: runs beside the reader and the consumer
            total += n
            if self._on_bytes is not None:
                self._on_bytes(n)
            self._ready.put(item)

    def _check(self, h: Check | None, total: int) -> BaseException | None:
        if self.size is not None and total != self.size:
            return DigestMismatch(f"{self.what}: got {total} bytes, expected {self.size}")
        if h is not None and not h.matches():
            got = f"sha256:{h.hexdigest()}"
            return DigestMismatch(f"{self.what} {self.digest} hashed to {got}: refusing it")
        return None

    # -- the consumer's side --------------------------------------------------------------------

    def get(self) -> memoryview | None:
        """The next chunk, or None at the (verified) end."""
        self._give_back()
        if self._done:
            return None
        item = self._take(self._ready)
        if item is None:
            raise ValueError(f"{self.what}: read after close")
        if isinstance(item, _End):
            self._done = True
            if item.error is not None:
                raise item.error
            return None
        buf, n = item
        self._held = buf
        view: memoryview = buf[:n].toreadonly()
        return view

    def _give_back(self) -> None:
        if self._held is not None:
            self._free.put(self._held)
            self._held = None

    def close(self) -> None:
        self._stopped.set()
        for t in self._threads:
            t.join(timeout=5)


class ChunkReader(io.RawIOBase):
    """The consumer's side of a ReadAhead as a forward-only file: ``read``/``readinto`` for tar
    headers and decompressors, ``seek`` forward (what tarfile's random-access mode needs), and
    ``copy_to`` to write a span of it to a file descriptor with no copy in between.
    """

    def __init__(self, ahead: ReadAhead) -> None:
        self._ahead = ahead
        self._view = memoryview(b"")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def _chunk(self) -> memoryview:
        """What is left of the current buffer, the next one when it is used up (empty at end:
        the read-ahead keeps answering None once it has ended)."""
        if not self._view and (view := self._ahead.get()) is not None:
            self._view = view
        return self._view

    def _advance(self, n: int) -> None:
        self._view = self._view[n:]
        self._pos += n

    def readinto(self, buffer: Any) -> int:
        """Fills ``buffer`` (short only at the end): tarfile takes a short read for the end."""
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and (chunk := self._chunk()):
            n = min(len(view) - done, len(chunk))
            view[done : done + n] = chunk[:n]
            self._advance(n)
            done += n
        return done

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = {io.SEEK_SET: offset, io.SEEK_CUR: self._pos + offset}.get(whence)
        if target is None or target < self._pos:
            raise io.UnsupportedOperation("a blob stream only seeks forward")
        while self._pos < target and (chunk := self._chunk()):
            self._advance(min(len(chunk), target - self._pos))
        return self._pos

    def copy_to(
        self, fd: int, size: int, on_chunk: Callable[[memoryview], Any] | None = None
    ) -> int:
        """Write the next ``size`` bytes to ``fd``; returns how many there were (fewer at end).

        ``fd`` may be open with O_DIRECT: the buffers are page-aligned and 512-byte aligned
        spans go straight to the disk; the first write the filesystem refuses (a short tail,
        stricter alignment) turns O_DIRECT off for the rest of the file.
        """
        left = size
        direct = _is_direct(fd)
        while left and (chunk := self._chunk()):
            part = chunk[: min(len(chunk), left)]
            if on_chunk is not None:
                on_chunk(part)
            done = 0
            while done < len(part):
                if direct and (len(part) - done) % DIRECT_ALIGN:
                    direct = _buffered(fd)
                try:
                    done += os.write(fd, part[done:])
                except OSError as e:
                    if not (direct and e.errno == errno.EINVAL):
                        raise
                    direct = _buffered(fd)
            self._advance(len(part))
            left -= len(part)
        return size - left

    def drain(self) -> None:
        """Read to the end (the digest covers every byte, the tar's padding included)."""
        while chunk := self._chunk():
            self._advance(len(chunk))

    def close(self) -> None:
        self._ahead.close()
        super().close()


def _is_direct(fd: int) -> bool:
    return bool(O_DIRECT and fcntl.fcntl(fd, fcntl.F_GETFL) & O_DIRECT)


def _buffered(fd: int) -> bool:
    """Turn O_DIRECT off on ``fd`` (returns False: "not direct" from now on)."""
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~O_DIRECT)
    return False
