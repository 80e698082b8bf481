"""Deterministic tar archives, planned from file sizes and streamed without loading files.

Same files ⇒ same bytes: sorted entries, mtime 0, uid/gid 0, fixed modes, PAX headers.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import stat
import tarfile
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union, cast

from hf2oci.errors import PackError

log = logging.getLogger(__name__)

BLOCK = tarfile.BLOCKSIZE
#: two zero blocks end an archive (no padding to the 10240-byte record size)
END_OF_ARCHIVE = b"\0" * (2 * BLOCK)
FILE_MODE = 0o644
DIR_MODE = 0o755
LINK_MODE = 0o777
DEFAULT_CHUNK = 1 << 20


#: a file's bytes as they arrive from elsewhere (the hub): called once per pass over the tar
ChunkSource = Callable[[], Iterator[bytes]]


@dataclass(frozen=True)
class TarEntry:
    """One member: ``name`` inside the tar (directories end with "/"), ``source`` None for dirs
    and symbolic links (``linkname``: where the link points).

    A file's ``source`` is a path on disk, or a callable giving its chunks (streamed from the hub).
    """

    name: str
    source: Union[Path, ChunkSource, None]  # noqa: UP007 - a runtime alias, not an annotation
    size: int = 0
    mode: int = FILE_MODE
    linkname: str = ""

    def __post_init__(self) -> None:
        if self.is_dir and self.size != 0:
            raise PackError(f"directory entry {self.name!r} with a size")
        if self.size < 0:
            raise PackError(f"entry {self.name!r} with a negative size")

    @property
    def is_dir(self) -> bool:
        return self.source is None and not self.linkname

    def header(self) -> bytes:
        """The entry's header blocks (PAX extended header first when the name needs one)."""
        info = tarfile.TarInfo(self.name)
        info.type = tarfile.DIRTYPE if self.is_dir else tarfile.REGTYPE
        if self.linkname:
            info.type, info.linkname = tarfile.SYMTYPE, self.linkname
        info.size = self.size
        info.mode = self.mode
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _padding(size: int) -> int:
    return -size % BLOCK


def _parts(path: str, *, what: str) -> list[str]:
    """Split a relative POSIX path, refusing anything that could escape or be ambiguous."""
    if not path or path.startswith("/"):
        raise PackError(f"invalid {what} {path!r}: must be a non-empty relative path")
    parts = path.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise PackError(f"invalid {what} {path!r}: empty, '.' or '..' component")
    if "\0" in path:
        raise PackError(f"invalid {what} {path!r}: NUL character")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError as e:
        raise PackError(f"invalid {what} {path!r}: not valid UTF-8") from e
    return parts


def _sort_key(entry: TarEntry) -> tuple[str, ...]:
    # by components, so a directory's members follow it contiguously
    return tuple(entry.name.rstrip("/").split("/"))


def entries_for_files(files: Sequence[tuple[str, Path]], *, prefix: str = "REPO") -> list[TarEntry]:
    """Sorted entries for ``(path in repo, file on disk)`` pairs under ``prefix``, dirs included.

    Sizes are taken now (symlinks followed); ``iter_tar`` checks they still hold.
    """
    sized: list[tuple[str, Path | ChunkSource, int]] = []
    for rel, source in files:
        try:
            st = os.stat(source)
        except OSError as e:
            raise PackError(f"cannot read {str(source)!r}: {e.strerror}") from e
        if not stat.S_ISREG(st.st_mode):
            raise PackError(f"{str(source)!r} is not a regular file")
        sized.append((rel, Path(source), st.st_size))
    return _entries(sized, prefix=prefix)


def entries_for_streams(
    files: Sequence[tuple[str, Path | ChunkSource, int]], *, prefix: str = "REPO"
) -> list[TarEntry]:
    """Like ``entries_for_files`` for ``(path in repo, source, size)``: a source is a chunk
    source (streamed from the hub, nothing on disk) or a file whose size is already known."""
    return _entries(files, prefix=prefix)


def _entries(
    files: Sequence[tuple[str, Path | ChunkSource, int]], *, prefix: str
) -> list[TarEntry]:
    base = _parts(prefix, what="prefix") if prefix else []
    dirs: set[str] = set()
    files_out: dict[str, TarEntry] = {}
    for rel, source, size in files:
        parts = base + _parts(rel, what="file path")
        for i in range(1, len(parts)):
            dirs.add("/".join(parts[:i]))
        name = "/".join(parts)
        if name in files_out:
            raise PackError(f"file {rel!r} listed twice")
        files_out[name] = TarEntry(name=name, source=source, size=size)
    clash = dirs & files_out.keys()
    if clash:
        raise PackError(f"{min(clash)!r} is both a file and a directory")
    entries = [TarEntry(name=d + "/", source=None, mode=DIR_MODE) for d in dirs]
    entries.extend(files_out.values())
    return sorted(entries, key=_sort_key)


def tar_size(entries: Sequence[TarEntry]) -> int:
    """Exact length of ``iter_tar(entries)``, from headers and declared sizes alone."""
    total = len(END_OF_ARCHIVE)
    for entry in entries:
        total += len(entry.header()) + entry.size + _padding(entry.size)
    return total


class TarSize:
    """The exact length ``tar_size`` will give the entries of files under ``prefix``, grown a
    file at a time: each file's header, data and padding, each folder's entry once, and the
    end-of-archive blocks (what a registry's layer size limit counts)."""

    def __init__(self, prefix: str) -> None:
        self._base = _parts(prefix, what="prefix") if prefix else []
        self._dirs: set[str] = set()
        self.total = len(END_OF_ARCHIVE)

    def cost(self, path: str, size: int) -> int:
        """How many bytes adding the file ``path`` of ``size`` bytes would add."""
        parts = self._base + path.split("/")
        names = ("/".join(parts[:i]) for i in range(1, len(parts)))
        dirs = sum(_dir_size(d) for d in names if d not in self._dirs)
        return dirs + entry_size("/".join(parts), size)

    def add(self, path: str, size: int) -> None:
        self.total += self.cost(path, size)
        parts = self._base + path.split("/")
        self._dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))


@functools.lru_cache(maxsize=1 << 17)
def entry_size(name: str, size: int) -> int:
    """A file entry's bytes in the archive: header blocks, data and padding."""
    return len(TarEntry(name, Path(), size=size).header()) + size + _padding(size)


@functools.lru_cache(maxsize=1 << 16)
def _dir_size(name: str) -> int:
    return len(TarEntry(name + "/", None, mode=DIR_MODE).header())


def data_offsets(entries: Sequence[TarEntry]) -> dict[str, int]:
    """Where each file's data starts in ``iter_tar(entries)``: name → byte offset."""
    offsets, at = {}, 0
    for entry in entries:
        at += len(entry.header())
        if entry.source is not None:
            offsets[entry.name] = at
        at += entry.size + _padding(entry.size)
    return offsets


def iter_tar(
    entries: Sequence[TarEntry], *, chunk_size: int = DEFAULT_CHUNK
) -> Generator[bytes, None, None]:
    """The archive's bytes, in pieces of at most ``chunk_size`` (file contents are streamed).

    Raises PackError when a file no longer has its declared size.
    """
    for entry in entries:
        if entry.source is None:
            yield entry.header()
            continue
        yield from _iter_file(entry, chunk_size)
    yield END_OF_ARCHIVE


def _iter_file(entry: TarEntry, chunk_size: int) -> Generator[bytes, None, None]:
    assert entry.source is not None
    if not isinstance(entry.source, Path):
        yield from _iter_streamed(entry, entry.source)
        return
    path = entry.source
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, also when the generator is closed
    except OSError as e:
        raise PackError(f"cannot read {str(path)!r}: {e.strerror}") from e
    with f:
        size = os.fstat(f.fileno()).st_size
        if size != entry.size:
            raise PackError(
                f"{str(path)!r} changed size ({entry.size} → {size} bytes) while packing"
            )
        yield entry.header()
        left = entry.size
        try:
            while left:
                chunk = f.read(min(chunk_size, left))
                if not chunk:
                    raise PackError(f"{str(path)!r} shrank while packing")
                left -= len(chunk)
                yield chunk
            if f.read(1):
                raise PackError(f"{str(path)!r} grew while packing")
        except OSError as e:
            raise PackError(f"cannot read {str(path)!r}: {e.strerror}") from e
    pad = _padding(entry.size)
    if pad:
        yield b"\0" * pad


def _iter_streamed(entry: TarEntry, source: ChunkSource) -> Generator[bytes, None, None]:
    yield entry.header()
    left = entry.size
    chunks = source()
    try:
        for chunk in chunks:
            if len(chunk) > left:
                raise PackError(f"{entry.name!r} has more than its {entry.size} bytes")
            left -= len(chunk)
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    if left:
        raise PackError(f"{entry.name!r} ended {left} bytes short of {entry.size}")
    pad = _padding(entry.size)
    if pad:
        yield b"\0" * pad


class ChunkStream(io.RawIOBase):
    """A read-only file object over a chunk source (called again by ``seek(0)``): an upload
    body or a blob source. ``len()`` is its size (so HTTP clients send Content-Length); a source
    that gives other than ``size`` bytes raises PackError."""

    def __init__(self, source: ChunkSource, size: int | Callable[[], int]) -> None:
        super().__init__()
        self._source = source
        self._size_of = size
        self._size: int | None = size if isinstance(size, int) else None
        self._rewind()

    def _rewind(self) -> None:
        self._chunks = self._source()
        self._buf = memoryview(b"")
        self._pos = 0

    def __len__(self) -> int:
        if self._size is None:
            self._size = cast(Callable[[], int], self._size_of)()
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR and offset == 0:
            return self._pos
        if whence == io.SEEK_SET and offset == 0:
            self._close_chunks()
            self._rewind()
            return 0
        raise io.UnsupportedOperation("a chunk stream can only be rewound to 0")

    def readinto(self, buffer: Any) -> int:
        if self.closed:
            raise ValueError("read from a closed stream")
        out = memoryview(buffer).cast("B")
        filled = 0
        # fill the whole buffer (short reads only at the end): naive readers stay correct
        while filled < len(out):
            if not self._buf:
                try:
                    self._buf = memoryview(next(self._chunks))
                except StopIteration:
                    if self._pos + filled != len(self):
                        raise PackError(
                            f"source gave {self._pos + filled} bytes, expected {len(self)}"
                        ) from None
                    break
            n = min(len(out) - filled, len(self._buf))
            out[filled : filled + n] = self._buf[:n]
            self._buf = self._buf[n:]
            filled += n
        self._pos += filled
        if self._pos > len(self):
            raise PackError(f"source gave more than the {len(self)} bytes expected")
        return filled

    def _close_chunks(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()

    def close(self) -> None:
        if not self.closed:
            self._close_chunks()
        super().close()


class TarStream(ChunkStream):
    """A read-only file object over ``iter_tar``: an upload body or a blob source.

    ``len()`` is the archive size (so HTTP clients send Content-Length); ``seek(0)`` rewinds.
    """

    def __init__(self, entries: Sequence[TarEntry], *, chunk_size: int = DEFAULT_CHUNK) -> None:
        self._entries = tuple(entries)
        super().__init__(
            lambda: iter_tar(self._entries, chunk_size=chunk_size),
            lambda: tar_size(self._entries),
        )
