"""Image → folder (or Hugging Face cache), without a Docker engine: verified and safe.

Reads an image from a registry or a local OCI layout, checks every blob against its digest while
streaming it, and unpacks what is under ``/REPO`` into a staging folder next to DEST that is
renamed into place only when everything checked out.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import queue
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from hf2oci.errors import DigestMismatch, Hf2ociError, UsageError
from hf2oci.filters import match_patterns
from hf2oci.oci import layout
from hf2oci.oci.image import Layer
from hf2oci.oci.reference import parse_reference
from hf2oci.oci.registry import RegistryClient, RemoteLayer
from hf2oci.pack import LABEL_PREFIX, REPO_DIR

log = logging.getLogger(__name__)

LABEL_REPO_ID = f"{LABEL_PREFIX}.repo_id"
LABEL_REPO_TYPE = f"{LABEL_PREFIX}.repo_type"
LABEL_REVISION = f"{LABEL_PREFIX}.revision"
CHUNK = 1 << 20


class ExtractError(Hf2ociError):
    """The image cannot be extracted safely (hostile or broken content) or DEST not written."""


@dataclass(frozen=True)
class ExtractResult:
    dest: Path
    files: int
    bytes: int
    #: manifest digest of the image extracted
    digest: str
    repo_id: str | None
    repo_type: str | None
    revision: str | None
    #: in --hf-cache mode: the snapshot folder inside the cache
    snapshot: Path | None = None


@dataclass(frozen=True)
class ImageSource:
    """What extract needs of an image: its layers, config document and manifest digest."""

    layers: Sequence[Layer]
    config: dict[str, Any]
    digest: str

    @property
    def labels(self) -> dict[str, str]:
        return dict((self.config.get("config") or {}).get("Labels") or {})


@dataclass(frozen=True)
class _File:
    size: int
    #: hex sha256 of the content, when asked for (the HF cache names blobs by it)
    sha256: str | None


def open_image(image: str, *, plain_http: bool | None = None) -> ImageSource:
    """``oci:PATH:TAG``, ``PATH:TAG`` (a folder holding ``oci-layout``), or a registry reference.

    Manifest and config are checked against their digests here; layers when they are read.
    """
    text = image.removeprefix("oci:")
    path, sep, tag = text.rpartition(":")
    if image.startswith("oci:") and not (sep and path and tag):
        raise UsageError(f"{image}: expected oci:PATH:TAG")
    if image.startswith("oci:") or (Path(path) / "oci-layout").is_file():
        if not (Path(path) / "oci-layout").is_file():
            raise UsageError(f"{image}: {path} is not an OCI image layout (no oci-layout file)")
        img = layout.read_image(Path(path), tag)
        return ImageSource(list(img.layers), img.config_doc, img.digest)
    ref = parse_reference(image)
    base = RegistryClient(ref.registry, plain_http=plain_http).fetch_base(ref)
    return ImageSource(list(base.layers), dict(base.config), base.digest or "")


class _Hashing(io.RawIOBase):
    """Hashes what is read through it; ``finish()`` drains the rest and checks the digest.

    With ``digest=None`` it only passes the bytes through (the source checks them itself).
    """

    def __init__(self, raw: BinaryIO, digest: str | None, what: str) -> None:
        self.raw, self.digest, self.what = raw, digest, what
        self.h = hashlib.sha256() if digest else None

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.raw.close()
        super().close()

    def readinto(self, buffer: Any) -> int:
        data = self.raw.read(len(buffer))
        if self.h is not None:
            self.h.update(data)
        buffer[: len(data)] = data
        return len(data)

    def finish(self) -> None:
        while self.read(CHUNK):
            pass
        if self.h is None:
            return
        got = "sha256:" + self.h.hexdigest()
        if got != self.digest:
            raise DigestMismatch(f"{self.what} {self.digest} hashed to {got}: refusing the image")


class _ReadAhead(io.RawIOBase):
    """Reads ``raw`` ahead in a thread, a few MiB at most, so that receiving and hashing a
    layer overlaps with unpacking and writing it (both release the GIL)."""

    def __init__(self, raw: _Hashing, *, depth: int = 8) -> None:
        self.raw = raw
        self.queue: queue.Queue[bytes | BaseException] = queue.Queue(depth)
        self.stopped = threading.Event()
        self.pending = memoryview(b"")
        self.eof = False
        self.thread = threading.Thread(target=self._run, name="extract-read", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stopped.is_set():
                data = self.raw.read(CHUNK) or b""
                self._put(data)
                if not data:
                    return
        except BaseException as e:  # handed to the reading side, which raises it
            self._put(e)

    def _put(self, item: bytes | BaseException) -> None:
        while not self.stopped.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self.pending:
            if self.eof:
                return 0
            item = self.queue.get()
            if isinstance(item, BaseException):
                self.eof = True
                raise item
            if not item:
                self.eof = True
                return 0
            self.pending = memoryview(item)
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.raw.close()
        super().close()


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
    if not (member.isdir() or member.isfile()):
        raise ExtractError(f"refusing entry {name!r}: not a regular file or folder")
    if len(parts) == 1 and not member.isdir():
        raise ExtractError(f"refusing entry {name!r}: /REPO is not a folder")
    return "/".join(parts[1:])


def _decompressor(layer: Layer, stream: BinaryIO) -> BinaryIO:
    """The uncompressed tar stream of a layer, by its media type (tar, gzip, zstd)."""
    mt = layer.media_type
    if mt.endswith("+zstd") or mt.endswith(".zstd"):
        try:
            import zstandard
        except ImportError as e:
            raise ExtractError(
                f"layer {layer.digest} is zstd-compressed: install the zstandard package"
            ) from e
        reader: BinaryIO = zstandard.ZstdDecompressor().stream_reader(stream)
        return reader
    if mt.endswith("gzip"):
        return gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[return-value]
    return stream


class _Unpacker:
    """Unpacks layers into one staging folder; shared by the worker threads."""

    def __init__(self, staging: Path, include: Sequence[str], *, hash_files: bool) -> None:
        self.staging = staging
        self.real_staging = os.path.realpath(staging)
        self.include = include
        self.hash_files = hash_files
        self.files: dict[str, _File] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def layer(self, layer: Layer) -> None:
        # a registry blob stream checks its own digest when read to its end (finish() does),
        # so it is hashed once, not twice; a layout's blob file is hashed here
        check = not isinstance(layer, RemoteLayer)
        hashing = _Hashing(layer.open(), layer.digest if check else None, "layer")
        stream = _ReadAhead(hashing)
        try:
            compressed = _decompressor(layer, io.BufferedReader(stream, CHUNK))
            plain = layer.media_type.endswith(".tar")
            if plain and layer.diff_id != layer.digest:
                raise DigestMismatch(
                    f"layer {layer.digest} is uncompressed but its diff_id is {layer.diff_id}"
                )
            # a compressed layer's content is checked a second time, against its diff_id
            inner = None if plain else _Hashing(compressed, layer.diff_id, "uncompressed layer")
            source = compressed if inner is None else io.BufferedReader(inner, CHUNK)
            # bufsize: the stream is read in 1 MiB blocks, not tarfile's default 10 KiB
            with tarfile.open(fileobj=source, mode="r|", bufsize=CHUNK) as tar:
                for member in tar:
                    if self.stop.is_set():
                        return
                    self._member(tar, member)
            if inner is not None:
                inner.finish()
            while stream.read(CHUNK):  # the tar's padding: the digest covers it too
                pass
            hashing.finish()
        except (tarfile.TarError, EOFError, gzip.BadGzipFile) as e:
            raise ExtractError(f"layer {layer.digest} is not a valid tar: {e}") from e
        except OSError as e:
            raise ExtractError(f"layer {layer.digest}: {e}") from e
        finally:
            stream.close()

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        rel = _repo_path(member)
        if not rel or member.isdir():
            return  # folders come with their files: an excluded file leaves no empty folder
        if self.include and not match_patterns([rel], include=self.include):
            return
        target = self.staging.joinpath(*rel.split("/"))
        what = f"entry {member.name!r}"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as e:
            raise ExtractError(f"refusing {what}: a file and a folder share its path") from e
        try:
            # only this process writes the staging folder and it makes no links, so this is
            # defence in depth: nothing is ever opened through a link
            parent = os.path.realpath(target.parent)
            if os.path.commonpath([parent, self.real_staging]) != self.real_staging:
                raise ExtractError(f"refusing {what}: its folder resolves outside DEST")
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except FileExistsError as e:
            raise ExtractError(f"refusing {what}: the path appears twice in the image") from e
        except (NotADirectoryError, IsADirectoryError) as e:
            raise ExtractError(f"refusing {what}: a file and a folder share its path") from e
        data = tar.extractfile(member)
        if data is None:
            raise ExtractError(f"refusing {what}: no content")
        h = hashlib.sha256() if self.hash_files else None
        with os.fdopen(fd, "wb") as out:
            while chunk := data.read(CHUNK):
                out.write(chunk)
                if h is not None:
                    h.update(chunk)
        with self.lock:
            self.files[rel] = _File(member.size, h.hexdigest() if h else None)


def _staging_for(dest: Path) -> Path:
    """A fresh ``.NAME.partial-XXXX`` beside ``dest``; earlier killed runs' ones are removed."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        for old in dest.parent.glob(f".{dest.name}.partial-*"):
            log.debug("removing %s, left by an interrupted extract", old)
            shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    except OSError as e:
        raise ExtractError(f"cannot create a folder beside {dest}: {e}") from e


def _unpack_all(
    source: ImageSource,
    unpacker: _Unpacker,
    workers: int,
    on_layer: Callable[[str], None] | None,
) -> None:
    """Every layer at once (up to ``workers``); the first failure stops the others."""
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="extract") as pool:
        futures: list[Future[None]] = [pool.submit(unpacker.layer, ly) for ly in source.layers]
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


def extract(
    image: str,
    dest: Path,
    *,
    hf_cache: bool = False,
    include: Sequence[str] = (),
    workers: int = 4,
    force: bool = False,
    plain_http: bool | None = None,
    on_layer: Callable[[str], None] | None = None,
) -> ExtractResult:
    """Unpack ``/REPO`` of ``image`` into ``dest`` (or into the HF hub cache at ``dest``).

    DEST appears only once every layer has been read and checked; a non-empty DEST is replaced
    only with ``force``. In cache mode other repos in the cache are left alone.
    """
    dest = Path(dest).absolute()
    if not hf_cache and dest.exists() and (not dest.is_dir() or any(dest.iterdir())) and not force:
        raise UsageError(f"{dest} exists and is not empty (use --force to replace it)")
    source = open_image(image, plain_http=plain_http)
    labels = source.labels
    if hf_cache and not (labels.get(LABEL_REPO_ID) and labels.get(LABEL_REVISION)):
        raise ExtractError(f"{image}: no {LABEL_REPO_ID}/{LABEL_REVISION} labels for --hf-cache")
    cache_existed = dest.exists()
    staging = _staging_for(dest / ".hf2oci" if hf_cache else dest)
    unpacker = _Unpacker(staging, include, hash_files=hf_cache)
    snapshot = None
    try:
        _unpack_all(source, unpacker, workers, on_layer)
        if hf_cache:
            snapshot = _into_hf_cache(unpacker, dest, labels)
        else:
            _replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if hf_cache and not cache_existed:
            shutil.rmtree(dest, ignore_errors=True)
        raise
    finally:
        if hf_cache:
            shutil.rmtree(staging, ignore_errors=True)
    log.debug("extracted %d files of %s into %s", len(unpacker.files), source.digest, dest)
    return ExtractResult(
        dest=dest,
        files=len(unpacker.files),
        bytes=sum(f.size for f in unpacker.files.values()),
        digest=source.digest,
        repo_id=labels.get(LABEL_REPO_ID),
        repo_type=labels.get(LABEL_REPO_TYPE),
        revision=labels.get(LABEL_REVISION),
        snapshot=snapshot,
    )


def _replace(staging: Path, dest: Path) -> None:
    """Put the complete folder in place; an old DEST is swapped out, then deleted."""
    old = None
    try:
        if dest.exists() or dest.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.replace(dest, old / "x")
        os.replace(staging, dest)
    except OSError as e:
        raise ExtractError(f"cannot put the extracted folder at {dest}: {e.strerror}") from e
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _into_hf_cache(unpacker: _Unpacker, cache: Path, labels: dict[str, str]) -> Path:
    """Lay the files out as huggingface_hub's cache: blobs, snapshots/<commit>, refs/main.

    The hub names a blob by its ETag (sha256 for LFS files, git sha1 for others); readers with
    ``local_files_only`` only follow ``refs/`` and the snapshot links, so every blob is named by
    its sha256 here (an image does not say which files were LFS). The snapshot is built aside
    and renamed in, and the ref is written last: a reader never sees a partial snapshot.
    """
    repo_id, commit = labels[LABEL_REPO_ID], labels[LABEL_REVISION]
    kind = "datasets" if labels.get(LABEL_REPO_TYPE) == "dataset" else "models"
    repo_dir = cache / f"{kind}--{repo_id.replace('/', '--')}"
    blobs = repo_dir / "blobs"
    try:
        blobs.mkdir(parents=True, exist_ok=True)
        snap_tmp = Path(tempfile.mkdtemp(prefix=f".{commit}.partial-", dir=repo_dir))
        try:
            for rel, f in sorted(unpacker.files.items()):
                assert f.sha256 is not None
                blob = blobs / f.sha256
                if not blob.exists():
                    os.replace(unpacker.staging.joinpath(*rel.split("/")), blob)
                link = snap_tmp.joinpath(*rel.split("/"))
                link.parent.mkdir(parents=True, exist_ok=True)
                depth = rel.count("/") + 2  # snapshots/<commit>/<folders…> → ../../blobs
                link.symlink_to(Path(*([".."] * depth), "blobs", blob.name))
            snapshots = repo_dir / "snapshots"
            snapshots.mkdir(exist_ok=True)
            final = snapshots / commit
            if final.exists():
                shutil.rmtree(final)
            os.replace(snap_tmp, final)
        except BaseException:
            shutil.rmtree(snap_tmp, ignore_errors=True)
            raise
        refs = repo_dir / "refs"
        refs.mkdir(exist_ok=True)
        tmp = refs / ".main.tmp"
        tmp.write_text(commit)
        os.replace(tmp, refs / "main")
    except OSError as e:
        raise ExtractError(f"cannot write the HF cache at {cache}: {e}") from e
    return final
