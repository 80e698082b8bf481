"""Image → folder (or Hugging Face cache), without a Docker engine: verified and safe.

Reads an image from a registry or a local OCI layout, checks every blob against its digest while
streaming it, and unpacks what is under ``/REPO`` into a staging folder next to DEST that is
renamed into place only when everything checked out. Anything that could write outside DEST
(``..``, absolute names, links, devices, whiteouts) is refused.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from hf2oci.errors import DigestMismatch, Hf2ociError, UsageError
from hf2oci.filters import match_patterns
from hf2oci.oci import layout
from hf2oci.oci.image import MT_LAYER_ZSTD, Layer
from hf2oci.oci.reference import parse_reference
from hf2oci.oci.registry import RegistryClient
from hf2oci.pack import REPO_DIR

log = logging.getLogger(__name__)

LABEL_REPO_ID = "io.huggingface.repo_id"
LABEL_REPO_TYPE = "io.huggingface.repo_type"
LABEL_REVISION = "io.huggingface.revision"
CHUNK = 1 << 20


class ExtractError(Hf2ociError):
    """The image cannot be extracted safely (hostile or broken content)."""


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
class _Source:
    layers: Sequence[Layer]
    config: dict[str, Any]
    digest: str

    @property
    def labels(self) -> dict[str, str]:
        return dict((self.config.get("config") or {}).get("Labels") or {})


def open_image(image: str, *, plain_http: bool | None = None) -> _Source:
    """``oci:PATH:TAG`` / ``PATH:TAG`` (a layout folder) or a registry reference."""
    text = image.removeprefix("oci:")
    path, sep, tag = text.rpartition(":")
    if sep and (image.startswith("oci:") or (Path(path) / "oci-layout").is_file()):
        img = layout.read_image(Path(path), tag)
        return _Source(img.layers[:], img.config_doc, img.digest)
    if image.startswith("oci:"):
        raise UsageError(f"{image}: not an OCI layout (no oci-layout file in {path})")
    ref = parse_reference(image)
    base = RegistryClient(ref.registry, plain_http=plain_http).fetch_base(ref)
    return _Source(base.layers, dict(base.config), base.digest or "")


class _Hashing(io.RawIOBase):
    """Hashes what is read; ``finish()`` drains the rest and checks the digest."""

    def __init__(self, raw: BinaryIO, digest: str) -> None:
        self.raw, self.digest, self.h = raw, digest, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.raw.read(len(buffer))
        self.h.update(data)
        buffer[: len(data)] = data
        return len(data)

    def finish(self) -> None:
        while self.read(CHUNK):
            pass
        got = "sha256:" + self.h.hexdigest()
        if got != self.digest:
            raise DigestMismatch(f"layer {self.digest} hashed to {got}: refusing the image")


def _repo_path(name: str) -> str | None:
    """The path under /REPO a tar member writes, None when it is outside /REPO.

    Raises ExtractError for names that could escape: absolute, '..', empty parts.
    """
    if name.startswith("/"):
        raise ExtractError(f"refusing entry {name!r}: absolute path")
    parts = [p for p in PurePosixPath(name).parts if p != "."]
    if any(p == ".." for p in parts):
        raise ExtractError(f"refusing entry {name!r}: '..' in the path")
    if not parts or parts[0] != REPO_DIR:
        return None
    rel = "/".join(parts[1:])
    if any(p.startswith(".wh.") for p in parts):
        raise ExtractError(f"refusing entry {name!r}: whiteout files are not expected")
    return rel


def _unpack_layer(
    layer: Layer,
    staging: Path,
    include: Sequence[str],
    written: dict[str, int],
    lock: threading.Lock,
) -> None:
    stream = _Hashing(layer.open(), layer.digest)
    try:
        source: BinaryIO = io.BufferedReader(stream, CHUNK)
        if layer.media_type == MT_LAYER_ZSTD or layer.media_type.endswith("+zstd"):
            try:
                import zstandard
            except ImportError as e:
                raise ExtractError(f"layer {layer.digest} is zstd: pip install zstandard") from e
            source = zstandard.ZstdDecompressor().stream_reader(source)
        with tarfile.open(fileobj=source, mode="r|*") as tar:
            for member in tar:
                rel = _repo_path(member.name)
                if rel is None or rel == "":
                    continue
                what = f"entry {member.name!r}"
                if member.issym() or member.islnk():
                    raise ExtractError(f"refusing {what}: links are not expected under /REPO")
                if member.isdir():
                    (staging / rel).mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isfile():
                    raise ExtractError(f"refusing {what}: not a regular file or folder")
                if include and not match_patterns([rel], include=include):
                    continue
                target = staging / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                data = tar.extractfile(member)
                assert data is not None
                with open(target, "wb") as out:
                    shutil.copyfileobj(data, out, CHUNK)
                with lock:
                    written[rel] = member.size
        stream.finish()
    except tarfile.TarError as e:
        raise ExtractError(f"layer {layer.digest} is not a valid tar: {e}") from e
    finally:
        stream.raw.close()


def _staging_for(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    for old in dest.parent.glob(f".{dest.name}.partial-*"):  # left by killed runs
        shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))


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
    """Unpack ``/REPO`` of ``image`` into ``dest`` (or into the HF cache at ``dest``)."""
    dest = Path(dest)
    if not hf_cache and dest.exists() and any(dest.iterdir()) and not force:
        raise UsageError(f"{dest} exists and is not empty (use --force to replace it)")
    source = open_image(image, plain_http=plain_http)
    labels = source.labels
    if hf_cache and not (labels.get(LABEL_REPO_ID) and labels.get(LABEL_REVISION)):
        raise ExtractError(f"{image}: no {LABEL_REPO_ID}/{LABEL_REVISION} labels for --hf-cache")
    staging = _staging_for(dest if not hf_cache else dest / ".hf2oci")
    written: dict[str, int] = {}
    lock = threading.Lock()
    try:
        with ThreadPoolExecutor(max(1, workers), thread_name_prefix="extract") as pool:
            futures = [
                pool.submit(_unpack_layer, layer, staging, include, written, lock)
                for layer in source.layers
            ]
            for layer, fut in zip(source.layers, futures, strict=True):
                fut.result()
                if on_layer:
                    on_layer(layer.digest)
        snapshot = None
        if hf_cache:
            snapshot = _into_hf_cache(staging, dest, labels)
        else:
            _replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if hf_cache:
            shutil.rmtree(staging, ignore_errors=True)
    return ExtractResult(
        dest=dest,
        files=len(written),
        bytes=sum(written.values()),
        digest=source.digest,
        repo_id=labels.get(LABEL_REPO_ID),
        repo_type=labels.get(LABEL_REPO_TYPE),
        revision=labels.get(LABEL_REVISION),
        snapshot=snapshot,
    )


def _replace(staging: Path, dest: Path) -> None:
    """Put the complete folder in place; an old DEST is swapped out, then deleted."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    os.replace(staging, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _into_hf_cache(staging: Path, cache: Path, labels: dict[str, str]) -> Path:
    """Lay the files out as huggingface_hub's cache: blobs, snapshots/<commit>, refs/main.

    Blobs are named by their sha256; readers only follow refs and snapshot links. The ref is
    written last, so a reader never sees a snapshot that is not complete.
    """
    repo_id, commit = labels[LABEL_REPO_ID], labels[LABEL_REVISION]
    kind = "datasets" if labels.get(LABEL_REPO_TYPE) == "dataset" else "models"
    repo_dir = cache / f"{kind}--{repo_id.replace('/', '--')}"
    blobs = repo_dir / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    snap_tmp = Path(tempfile.mkdtemp(prefix=f".{commit}.", dir=blobs.parent))
    try:
        for f in sorted(p for p in staging.rglob("*") if p.is_file()):
            rel = f.relative_to(staging)
            h = hashlib.sha256()
            with open(f, "rb") as src:
                while chunk := src.read(CHUNK):
                    h.update(chunk)
            blob = blobs / h.hexdigest()
            if not blob.exists():
                os.replace(f, blob)
            link = snap_tmp / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            depth = len(rel.parts) + 1  # snapshots/<commit>/<rel...> → ../../blobs
            link.symlink_to(Path(*([".."] * depth)) / "blobs" / blob.name)
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
    return final
