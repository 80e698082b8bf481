"""Unpacking an image's layers into a staging folder, safely: every blob checked against its digest
while it streams, only what is under ``/REPO`` written, nothing through a link or outside the
folder, files carried in parts written in place and checked whole."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import logging
import os
import tarfile
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, cast

from hf2oci.consume.readahead import O_DIRECT, ChunkReader, ReadAhead
from hf2oci.digest import Check, Expected, git_blob_hash
from hf2oci.errors import DigestMismatch, ExtractError, Hf2ociError, PackError
from hf2oci.intake.filters import match_patterns
from hf2oci.oci.image import Image, Layer
from hf2oci.oci.source import StoredLayer
from hf2oci.pack.formats.modelpack import file_paths, is_modelpack
from hf2oci.repofiles import REPO_DIR, Join

log = logging.getLogger(__name__)

#: files this big are written with O_DIRECT (when ``direct``): straight to the disk, not
#: through the page cache, which a model would otherwise fill (and, in a container, count
#: against its memory limit) as fast as it arrives
DIRECT_MIN_SIZE = 16 << 20


@dataclass(frozen=True)
class UnpackedFile:
    size: int
    #: hex sha256 of the content, when asked for (the HF cache names blobs by it)
    sha256: str | None
    #: its git blob id, when asked for (what a signed provenance lists for files not in LFS)
    git_sha1: str | None = None


def _repo_path(member: tarfile.TarInfo) -> str | None:
    """The path under /REPO a tar member writes ("" for /REPO itself), None when outside.

    Raises ExtractError for anything unsafe or unexpected. Links are refused outright, not only
    those pointing outside: hf2oci images have none under /REPO, and refusing them means no entry
    can ever be written through a link (including a symlinked parent folder).
    """
    name = member.name
    if name.startswith("/"):
        raise ExtractError(f"refusing entry {name!r}: absolute path")
    parts = [p for p in PurePosixPath(name).parts if p != "."]
    if ".." in parts:
        raise ExtractError(f"refusing entry {name!r}: '..' in the path")
    if not parts or parts[0] != REPO_DIR:
        return None  # the base image's files: never written
    if any(p.startswith(".wh.") for p in parts):
        raise ExtractError(f"refusing entry {name!r}: whiteout files are not expected under /REPO")
    if member.issym() or member.islnk():
        raise ExtractError(
            f"refusing entry {name!r}: links are not expected under /REPO"
            f" (it points to {member.linkname!r})"
        )
    if not (member.isdir() or member.isfile()) or member.issparse():
        raise ExtractError(f"refusing entry {name!r}: not a regular file or folder")
    if len(parts) == 1 and not member.isdir():
        raise ExtractError(f"refusing entry {name!r}: /REPO is not a folder")
    return "/".join(parts[1:])


def _decompressor(layer: Layer, stream: ChunkReader) -> BinaryIO:
    """The uncompressed tar stream of a layer, by its media type (tar, gzip, zstd)."""
    mt = layer.media_type
    if mt.endswith("+zstd") or mt.endswith(".zstd"):
        try:
            import zstandard
        except ImportError as e:
            raise ExtractError(
                f"layer {layer.digest} is zstd-compressed: install the zstandard package"
            ) from e
        reader: BinaryIO = zstandard.ZstdDecompressor().stream_reader(cast(BinaryIO, stream))
        return reader
    if mt.endswith("gzip"):
        return gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[return-value]
    return cast(BinaryIO, stream)


class Unpacker:
    """Unpacks layers into one staging folder; shared by the worker threads."""

    def __init__(
        self,
        staging: Path,
        include: Sequence[str],
        *,
        hash_files: bool,
        direct: bool,
        on_bytes: Callable[[int], None] | None = None,
        joins: Mapping[str, Join] | None = None,
    ) -> None:
        self.staging = staging
        self.joins = dict(joins or {})
        #: a part's name → (the file it belongs to, its number)
        self.parts = {n: (p, i + 1) for p, j in self.joins.items() for i, n in enumerate(j.names)}
        self.written: set[str] = set()  # parts written in place
        self.on_bytes = on_bytes
        self.direct = direct and bool(O_DIRECT)
        self.real_staging = os.path.realpath(staging)
        self.include = include
        self.hash_files = hash_files
        self.files: dict[str, UnpackedFile] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def layer(self, layer: StoredLayer) -> None:
        """Unpack one layer, reading, hashing and writing at once; its digest (and a compressed
        layer's diff_id) is checked when it ends, before the extract can succeed."""
        plain = layer.media_type.endswith(".tar")
        if plain and layer.diff_id != layer.digest:
            raise DigestMismatch(
                f"layer {layer.digest} is uncompressed but its diff_id is {layer.diff_id}"
            )
        source = layer.open_raw()
        blob = self._blob(layer, source)
        tar_bytes = blob
        try:
            if not plain:
                compressed = _decompressor(layer, blob)
                tar_bytes = ChunkReader(
                    ReadAhead(
                        _decompressing(compressed, layer.digest),
                        digest=layer.diff_id,
                        size=None,
                        what="uncompressed layer",
                    )
                )
            # tarfile's random-access mode reads headers only: file contents go from the
            # read-ahead buffers to the files with no copy (a forward seek skips the rest)
            with tarfile.open(fileobj=tar_bytes, mode="r:") as tar:
                for member in tar:
                    if self.stop.is_set():
                        return
                    self._member(tar_bytes, member)
            tar_bytes.drain()
            blob.drain()
        except (tarfile.TarError, EOFError) as e:
            raise ExtractError(f"layer {layer.digest} is not a valid tar: {e}") from e
        except OSError as e:
            raise ExtractError(f"layer {layer.digest}: {e}") from e
        finally:
            tar_bytes.close()
            blob.close()
            source.close()

    def _create(self, target: Path, size: int) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        if not (self.direct and size >= DIRECT_MIN_SIZE):
            return os.open(target, flags, 0o644)
        try:
            return os.open(target, flags | O_DIRECT, 0o644)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            log.debug("%s: no O_DIRECT on this filesystem; writing through the page cache", target)
            self.direct = False
            return os.open(target, flags, 0o644)

    def _blob(self, layer: StoredLayer, source: io.RawIOBase | io.BufferedReader) -> ChunkReader:
        """The layer's blob read ahead, its digest checked when it has been read to its end."""
        return ChunkReader(
            ReadAhead(
                source.readinto,
                digest=layer.digest,
                size=layer.size,
                what="layer",
                on_bytes=self.on_bytes,
            )
        )

    def raw(self, layer: StoredLayer, rel: str) -> None:
        """Write one raw layer (a ModelPack file) at ``rel``, its digest checked at the end."""
        if not self._wanted(rel):
            return
        source = layer.open_raw()
        blob = self._blob(layer, source)
        try:
            self._write(blob, rel, f"file {rel!r}", 0, layer.size)
            blob.drain()
        except OSError as e:
            raise ExtractError(f"layer {layer.digest}: {e}") from e
        finally:
            blob.close()
            source.close()

    def _member(self, data: ChunkReader, member: tarfile.TarInfo) -> None:
        rel = _repo_path(member)
        if not rel or member.isdir():
            return  # folders come with their files: an excluded file leaves no empty folder
        if not self._wanted(rel):
            return
        self._write(data, rel, f"entry {member.name!r}", member.offset_data, member.size)

    def _wanted(self, rel: str) -> bool:
        """Whether ``include`` keeps ``rel`` (a part: whether it keeps its file)."""
        path = self.parts[rel][0] if rel in self.parts else rel
        return not self.include or bool(match_patterns([path], include=self.include))

    def _write(self, data: ChunkReader, rel: str, what: str, offset: int, size: int) -> None:
        """Copy ``size`` bytes of ``data`` from ``offset`` into a new file at ``rel`` (a part:
        into its place in its file)."""
        if rel in self.parts:
            self._write_part(data, rel, what, offset, size)
            return
        target = self.staging.joinpath(*rel.split("/"))
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as e:
            raise ExtractError(f"refusing {what}: a file and a folder share its path") from e
        try:
            # only this process writes the staging folder and it makes no links, so this is
            # defence in depth: nothing is ever opened through a link
            self._inside(target, what)
            fd = self._create(target, size)
        except FileExistsError as e:
            raise ExtractError(f"refusing {what}: the path appears twice in the image") from e
        except (NotADirectoryError, IsADirectoryError) as e:
            raise ExtractError(f"refusing {what}: a file and a folder share its path") from e
        h = hashlib.sha256() if self.hash_files else None
        g = git_blob_hash(size) if self.hash_files else None

        def both(chunk: memoryview) -> None:
            assert h is not None and g is not None
            h.update(chunk)
            g.update(chunk)

        try:
            data.seek(offset)
            copied = data.copy_to(fd, size, both if h is not None else None)
        finally:
            os.close(fd)
        if copied != size:
            raise ExtractError(f"refusing {what}: the layer ends inside it")
        with self.lock:
            self.files[rel] = UnpackedFile(
                size, h.hexdigest() if h else None, g.hexdigest() if g else None
            )

    def _write_part(self, data: ChunkReader, rel: str, what: str, offset: int, size: int) -> None:
        """A part goes straight to its place in its file (no copy of the parts, no join pass):
        the file is made by the first of its parts to come, each part written once, at the
        size its join says."""
        path, index = self.parts[rel]
        join = self.joins[path]
        if size != join.length(index):
            raise ExtractError(f"refusing {what}: {size} bytes, its join says {join.length(index)}")
        target = self.staging.joinpath(*path.split("/"))
        with self.lock:
            if rel in self.written:
                raise ExtractError(f"refusing {what}: the part appears twice in the image")
            self.written.add(rel)
            first = not any(n in self.written for n in join.names if n != rel)
            try:
                if first:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    self._inside(target, what)
                    os.close(self._create(target, join.size))
            except FileExistsError as e:
                raise ExtractError(f"refusing {what}: its file appears twice in the image") from e
            except (NotADirectoryError, IsADirectoryError) as e:
                raise ExtractError(f"refusing {what}: a file and a folder share its path") from e
        fd = self._open_part(target)
        try:
            os.lseek(fd, join.start(index), os.SEEK_SET)
            data.seek(offset)
            copied = data.copy_to(fd, size)
        finally:
            os.close(fd)
        if copied != size:
            raise ExtractError(f"refusing {what}: the layer ends inside it")

    def _open_part(self, target: Path) -> int:
        flags = os.O_WRONLY | os.O_NOFOLLOW
        if self.direct:
            try:
                return os.open(target, flags | O_DIRECT)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
        return os.open(target, flags)

    def _inside(self, target: Path, what: str) -> None:
        parent = os.path.realpath(target.parent)
        if os.path.commonpath([parent, self.real_staging]) != self.real_staging:
            raise ExtractError(f"refusing {what}: its folder resolves outside DEST")

    def finish_joins(self) -> None:
        """Check each file put together from its parts: every part there, the whole hashing
        to its join's sha256 (one read of the file); then it counts as extracted."""
        for path, join in sorted(self.joins.items()):
            done = [n for n in join.names if n in self.written]
            if not done:
                continue  # include kept none of it
            if len(done) != len(join.names):
                missing = next(n for n in join.names if n not in self.written)
                raise ExtractError(f"{path}: its part {missing} is not in the image")
            h = Check(Expected(join.size, sha256=join.sha256))
            g = git_blob_hash(join.size)
            with open(self.staging.joinpath(*path.split("/")), "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                    g.update(chunk)
            if not h.matches():
                raise DigestMismatch(
                    f"{path}: its parts join to sha256 {h.hexdigest()}, not {join.sha256}"
                )
            with self.lock:
                self.files[path] = UnpackedFile(join.size, join.sha256, g.hexdigest())


def _decompressing(stream: BinaryIO, digest: str) -> Callable[[memoryview], int]:
    """``readinto`` of a decompressor, its errors (not those of the blob below) as ExtractError."""

    def readinto(buffer: memoryview) -> int:
        try:
            return stream.readinto(buffer)  # type: ignore[attr-defined,no-any-return]
        except Hf2ociError:
            raise
        except Exception as e:  # gzip, zlib and zstd each have their own
            raise ExtractError(f"layer {digest} does not decompress: {e}") from e

    return readinto


def unpack_all(
    source: Image,
    unpacker: Unpacker,
    workers: int,
    on_layer: Callable[[str], None] | None,
) -> None:
    """Every layer at once (up to ``workers``); the first failure stops the others. A ModelPack
    artifact's layers are files, each written at its (checked) path."""
    paths = modelpack_paths(source)
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="extract") as pool:
        layers = [cast(StoredLayer, ly) for ly in source.layers]  # open_image gives stored ones
        if paths is None:
            futures: list[Future[None]] = [pool.submit(unpacker.layer, ly) for ly in layers]
        else:
            futures = [pool.submit(unpacker.raw, *job) for job in zip(layers, paths, strict=True)]
        try:
            for layer, fut in zip(source.layers, futures, strict=True):
                fut.result()
                if on_layer:
                    on_layer(layer.digest)
        except BaseException:
            unpacker.stop.set()
            for fut in futures:
                fut.cancel()
            raise


def modelpack_paths(source: Image) -> list[str] | None:
    """The file path of each layer of a ModelPack artifact (checked); None for an image."""
    manifest = source.manifest_doc
    if not is_modelpack(manifest):
        return None
    try:
        return file_paths(manifest)
    except PackError as e:
        raise ExtractError(str(e)) from e
