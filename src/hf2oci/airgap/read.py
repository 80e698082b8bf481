"""Reading a bundle, a folder or a tar in volumes: ``bundle.json`` against its schema, the
checksum list against the small files, every file (or volume) present, regular and of its size,
each volume against its sha256; its blobs given out in order, each to be read once."""

from __future__ import annotations

import hashlib
import io
import json
import re
import stat
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

from hf2oci.airgap.schema import BUNDLE_FILE, CHECKSUMS_FILE, BundleInfo
from hf2oci.digest import Check, Expected
from hf2oci.errors import BundleError
from hf2oci.oci import layout

_SMALL = (layout.LAYOUT_FILE, BUNDLE_FILE, CHECKSUMS_FILE, layout.INDEX_FILE)
_BLOB = re.compile(r"blobs/sha256/([0-9a-f]{64})")
_CHECKSUM_LINE = re.compile(r"([0-9a-f]{64})  (\S+)")
#: what a small file of a bundle may weigh (bundle.json of thousands of repos included)
MAX_SMALL = 64 << 20
#: blobs up to this size are kept in memory while loading: the signature and provenance checks
#: read them (configs, signature payloads, attestations)
KEEP_SMALL = 4 << 20


@dataclass
class Member:
    """A file of the bundle as it is read: its path in the layout, and where it came from."""

    name: str
    size: int
    where: str
    open: Callable[[], IO[bytes]]


@dataclass
class Opened:
    """A bundle whose small files are read and checked; ``blobs()`` gives the rest, once."""

    info: BundleInfo
    where: str
    blobs: Callable[[], Iterator[Member]]
    sums: dict[str, str]


def _parse_checksums(data: bytes, where: str) -> dict[str, str]:
    sums: dict[str, str] = {}
    for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        found = _CHECKSUM_LINE.fullmatch(line)
        name = found.group(2) if found else ""
        if not found or not (name in _SMALL or _BLOB.fullmatch(name)) or name in sums:
            raise BundleError(f"{where}:{n}: not a checksum line of a bundle file: {line[:80]!r}")
        if name == CHECKSUMS_FILE:
            raise BundleError(f"{where}:{n}: the checksum list cannot cover itself")
        sums[name] = found.group(1)
    return sums


def _check_small(files: dict[str, bytes], sums: dict[str, str], where: str) -> BundleInfo:
    for name in (layout.LAYOUT_FILE, BUNDLE_FILE, layout.INDEX_FILE):
        if hashlib.sha256(files[name]).hexdigest() != sums.get(name):
            raise BundleError(f"{where}: {name} does not match {CHECKSUMS_FILE}")
    info = BundleInfo.from_json(files[BUNDLE_FILE], f"{where}: {BUNDLE_FILE}")
    for digest in info.blobs:
        name = "blobs/sha256/" + digest.partition(":")[2]
        if sums.get(name) != digest.partition(":")[2]:
            raise BundleError(f"{where}: {name} is not covered by {CHECKSUMS_FILE}")
    _check_index(files[layout.INDEX_FILE], info, where)
    return info


def _check_index(data: bytes, info: BundleInfo, where: str) -> None:
    """index.json (what other readers of the layout see) names what bundle.json says."""
    try:
        docs = json.loads(data).get("manifests") or []
        named = {(d["annotations"]["org.opencontainers.image.ref.name"], d["digest"]) for d in docs}
    except (ValueError, AttributeError, KeyError, TypeError) as e:
        raise BundleError(f"{where}: {layout.INDEX_FILE} is not a bundle's index") from e
    if named != {(f"{r.repository}:{r.tag}", r.digest) for r in info.refs}:
        raise BundleError(f"{where}: {layout.INDEX_FILE} and {BUNDLE_FILE} name other images")


# -- a folder --------------------------------------------------------------------------------


def _regular(root: Path, name: str, size: int | None = None) -> Path:
    """``root/name`` when it is a regular file inside the bundle (no symlink on the way)."""
    path = root
    for part in name.split("/"):
        path = path / part
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError as e:
            raise BundleError(f"{root}: {name} is missing") from e
        except OSError as e:
            raise BundleError(f"{root}: {name}: {e.strerror}") from e
        last = path.name == name.rsplit("/", 1)[-1] and str(path).endswith(name)
        if stat.S_ISLNK(mode):
            raise BundleError(f"{root}: {name} is a symlink; a bundle holds only plain files")
        if not last and not stat.S_ISDIR(mode):
            raise BundleError(f"{root}: {name}: {path.name} is not a folder")
        if last and not stat.S_ISREG(mode):
            raise BundleError(f"{root}: {name} is not a plain file")
    if size is not None:
        got = path.lstat().st_size
        if got != size:
            raise BundleError(f"{root}: {name} is {got} bytes, {BUNDLE_FILE} says {size}")
    return path


def _file_opener(path: Path) -> Callable[[], IO[bytes]]:
    return lambda: path.open("rb")


def open_folder(root: Path) -> Opened:
    where = str(root)
    files: dict[str, bytes] = {}
    for name in _SMALL:
        path = _regular(root, name)
        if path.lstat().st_size > MAX_SMALL:
            raise BundleError(f"{root}: {name} is over {MAX_SMALL >> 20} MiB")
        files[name] = path.read_bytes()
    sums = _parse_checksums(files[CHECKSUMS_FILE], f"{root}/{CHECKSUMS_FILE}")
    info = _check_small(files, sums, where)
    paths = {d: _regular(root, "blobs/sha256/" + d[7:], s) for d, s in info.blobs.items()}
    manifests = {m.digest for m in info.manifests}

    def blobs() -> Iterator[Member]:
        for digest in sorted(paths, key=lambda d: (d not in manifests, info.blobs[d])):
            path = paths[digest]
            name = "blobs/sha256/" + digest[7:]
            yield Member(name, info.blobs[digest], where, _file_opener(path))

    return Opened(info, where, blobs, sums)


# -- a tar, in volumes -----------------------------------------------------------------------


def _first_volume(path: Path) -> Path:
    if path.is_file():
        return path
    split = path.with_name(path.name + ".001")
    if split.is_file():
        return split
    raise BundleError(f"{path}: no such bundle (neither {path.name} nor {split.name})")


class _Volumes(io.RawIOBase):
    """The volumes of a tar bundle read as one stream; each volume's sha256 checked against
    ``NAME.tar.sha256`` as its end passes (when that file came along)."""

    def __init__(self, first: Path) -> None:
        super().__init__()
        self.folder, self.names = first.parent, [first.name]
        self.index = 0
        self.current: BinaryIO | None = open(first, "rb")  # noqa: SIM115
        self.expected: dict[str, str] = {}
        self.check = Check(Expected(None))  # this volume's hash, matched at its end

    def readable(self) -> bool:
        return True

    @property
    def name_now(self) -> str:
        return self.names[min(self.index, len(self.names) - 1)]

    def plan(self, volumes: Sequence[tuple[str, int]]) -> None:
        """The volumes ``bundle.json`` lists: all present and whole, or one line naming one."""
        if not volumes:
            return
        if volumes[0][0] != self.names[0]:
            raise BundleError(f"{self.folder / self.names[0]}: {BUNDLE_FILE} names its first "
                              f"volume {volumes[0][0]}")  # fmt: skip
        for name, size in volumes:
            path = self.folder / name
            try:
                mode = path.lstat()
            except FileNotFoundError as e:
                raise BundleError(f"{path}: volume {name} is missing") from e
            if not stat.S_ISREG(mode.st_mode):
                raise BundleError(f"{path}: volume {name} is not a plain file")
            if mode.st_size != size:
                raise BundleError(f"{path}: volume {name} is {mode.st_size} bytes, "
                                  f"{BUNDLE_FILE} says {size} (truncated?)")  # fmt: skip
        self.names = [n for n, _ in volumes]
        base = self.names[0].removesuffix(".001")
        sums = self.folder / f"{base}.sha256"
        if sums.is_file() and not sums.is_symlink():
            for line in sums.read_text(errors="replace").splitlines():
                found = _CHECKSUM_LINE.fullmatch(line)
                if found:
                    self.expected[found.group(2)] = found.group(1)

    def readinto(self, buffer: Any) -> int:
        while self.current is not None:
            n = self.current.readinto(buffer)  # type: ignore[attr-defined]
            if n:
                self.check.update(memoryview(buffer)[:n])
                return int(n)
            self._end_of_volume()
        return 0

    def _end_of_volume(self) -> None:
        assert self.current is not None
        self.current.close()
        name = self.names[self.index]
        if name in self.expected and self.check.hexdigest() != self.expected[name]:
            raise BundleError(f"{self.folder / name}: volume {name} does not match its sha256")
        self.index += 1
        self.current = None
        if self.index < len(self.names):
            self.current = open(self.folder / self.names[self.index], "rb")  # noqa: SIM115
            self.check = Check(Expected(None))

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None
        super().close()


def open_tar(path: Path) -> tuple[Opened, _Volumes]:
    first = _first_volume(path)
    volumes = _Volumes(first)
    reader = io.BufferedReader(volumes, 1 << 20)
    tar = tarfile.open(fileobj=reader, mode="r|")  # noqa: SIM115
    where = str(first)
    files: dict[str, bytes] = {}
    members = iter(tar)
    for name in _SMALL:
        member = _next_member(members, volumes)
        if member is None or member.name != name:
            raise BundleError(f"{where}: expected {name} next, found "
                              f"{member.name if member else 'the end'!r}")  # fmt: skip
        if member.size > MAX_SMALL:
            raise BundleError(f"{where}: {name} is over {MAX_SMALL >> 20} MiB")
        stream = tar.extractfile(member)
        assert stream is not None
        files[name] = stream.read()
        if name == BUNDLE_FILE:
            # the volumes are known: check them all before reading on
            info = BundleInfo.from_json(files[name], f"{where}: {BUNDLE_FILE}")
            volumes.plan(info.volumes)
    sums = _parse_checksums(files[CHECKSUMS_FILE], f"{where}: {CHECKSUMS_FILE}")
    info = _check_small(files, sums, where)

    def blobs() -> Iterator[Member]:
        seen: set[str] = set()
        while (member := _next_member(members, volumes)) is not None:
            found = _BLOB.fullmatch(member.name)
            digest = "sha256:" + found.group(1) if found else ""
            if not found or digest not in info.blobs or digest in seen:
                raise BundleError(f"{volumes.folder / volumes.name_now}: {member.name!r} is not "
                                  f"a blob {BUNDLE_FILE} lists (or comes twice)")  # fmt: skip
            if member.size != info.blobs[digest]:
                raise BundleError(
                    f"{volumes.folder / volumes.name_now}: {member.name} is "
                    f"{member.size} bytes, {BUNDLE_FILE} says {info.blobs[digest]}"
                )
            seen.add(digest)
            stream = tar.extractfile(member)
            assert stream is not None
            yield Member(member.name, member.size, str(volumes.folder / volumes.name_now),
                         _once(stream, member.name))  # fmt: skip
        missing = sorted(set(info.blobs) - seen)
        if missing:
            raise BundleError(f"{where}: blobs/sha256/{missing[0][7:]} is missing from the "
                              f"tar ({len(missing)} blobs in all)")  # fmt: skip

    return Opened(info, where, blobs, sums), volumes


def _next_member(members: Iterator[tarfile.TarInfo], volumes: _Volumes) -> tarfile.TarInfo | None:
    try:
        member = next(members, None)
    except tarfile.TarError as e:
        raise BundleError(f"{volumes.folder / volumes.name_now}: not a readable tar ({e})") from e
    if member is not None and not member.isreg():
        kind = "a symlink" if member.issym() or member.islnk() else "not a plain file"
        raise BundleError(f"{volumes.folder / volumes.name_now}: {member.name!r} is {kind}; a "
                          "bundle holds only plain files")  # fmt: skip
    return member


def _once(stream: IO[bytes], name: str) -> Callable[[], IO[bytes]]:
    """A tar member can be read once: a second attempt (a retried upload) says so."""
    used: list[bool] = []

    def opener() -> IO[bytes]:
        if used:
            raise BundleError(f"{name}: the upload failed and a tar cannot be read back; run "
                              "load again: it resumes with what arrived")  # fmt: skip
        used.append(True)
        return stream

    return opener


def open_bundle(path: Path) -> tuple[Opened, Callable[[], None]]:
    """A folder or a tar bundle, opened and checked; with its closer."""
    if path.is_dir():
        return open_folder(path), lambda: None
    opened, volumes = open_tar(path)
    return opened, volumes.close
