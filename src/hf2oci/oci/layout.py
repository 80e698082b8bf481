"""OCI image layouts on disk: content-addressed blobs shared by many tagged images.

See https://github.com/opencontainers/image-spec/blob/main/image-layout.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, cast

from hf2oci.digest import HashingReader
from hf2oci.errors import DigestMismatch, PackError
from hf2oci.fsutil import atomic_write, fsync_dir
from hf2oci.oci.blobs import StreamLayer, check_digest
from hf2oci.oci.image import (
    ANNOTATION_REF_NAME,
    MT_INDEX,
    MT_MANIFEST,
    Artifact,
    Descriptor,
    Layer,
    canonical_json,
    images_of,
)
from hf2oci.oci.tarstream import DEFAULT_CHUNK
from hf2oci.reference import TAG

log = logging.getLogger(__name__)

LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
LAYOUT_VERSION = "1.0.0"


def blob_path(path: Path, digest: str) -> Path:
    """Where the blob ``digest`` lives (or would live) in the layout at ``path``."""
    algorithm, _, hexpart = check_digest(digest).partition(":")
    return Path(path) / "blobs" / algorithm / hexpart


def write_layout(
    image: Artifact,
    path: Path,
    *,
    tags: Sequence[str],
    workers: int = 4,
    on_progress: Callable[[int], None] | None = None,
) -> str:
    """Add ``image`` (one image, or an index and its images) to the layout at ``path``
    (created if needed) under each of ``tags``; ``on_progress`` is told the layers' bytes as
    they are written (a blob already there, at once).

    Blobs already present are kept as they are; tags pointing elsewhere are moved; other tags
    and images stay. Safe against concurrent writers of the same layout.
    """
    if not tags:
        raise PackError(f"{path}: no tag to write the image under")
    for tag in tags:
        if not TAG.fullmatch(tag):
            raise PackError(f"{path}: invalid tag {tag!r}")
    path = Path(path)
    try:
        (path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PackError(f"cannot create layout {str(path)!r}: {e.strerror}") from e
    with _locked(path):
        _ensure_layout_file(path)
    # blobs are immutable and content-addressed: no lock needed; the manifest goes last so an
    # index never names a manifest whose blobs are missing
    with ThreadPoolExecutor(workers, thread_name_prefix="hf2oci-layout") as pool:
        futures = [pool.submit(_write_layer, path, layer, on_progress) for layer in image.layers]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    for one in images_of(image):
        _write_blob(path, one.config_digest, len(one.config), partial(io.BytesIO, one.config))
        _write_blob(path, one.digest, len(one.manifest), partial(io.BytesIO, one.manifest))
    if image is not images_of(image)[0]:
        _write_blob(path, image.digest, len(image.manifest), lambda: io.BytesIO(image.manifest))
    with _locked(path):
        index = _read_index_or_new(path)
        _set_tags(index, image.manifest_descriptor, tags)
        _write_file_atomic(path / INDEX_FILE, canonical_json(index), skip_if_same=True)
    log.debug("wrote %s to %s as %s", image.digest, path, ", ".join(tags))
    return image.digest


def _write_layer(path: Path, layer: Layer, on_progress: Callable[[int], None] | None) -> None:
    if isinstance(layer, StreamLayer) and not layer.consumed:
        digest = write_blob_stream(path, layer.size, layer.open, on_progress=on_progress)
        if digest != layer.digest:
            raise DigestMismatch(f"streamed layer written as {digest}, hashed to {layer.digest}")
    else:
        _write_blob(path, layer.digest, layer.size, layer.open, on_progress=on_progress)


def read_index(path: Path) -> dict[str, Any]:
    """The layout's ``index.json`` document."""
    index_path = Path(path) / INDEX_FILE
    try:
        doc = json.loads(index_path.read_bytes())
    except FileNotFoundError as e:
        raise PackError(f"{str(path)!r} is not an OCI image layout (no {INDEX_FILE})") from e
    except OSError as e:
        raise PackError(f"cannot read {str(index_path)!r}: {e.strerror}") from e
    except ValueError as e:
        raise PackError(f"{str(index_path)!r} is not valid JSON") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("manifests", []), list):
        raise PackError(f"{str(index_path)!r} is not an OCI image index")
    return doc


def resolve_tag(path: Path, tag: str) -> Descriptor | None:
    """The descriptor tagged ``tag`` in the layout's index, None when the tag is absent."""
    found = None
    for doc in read_index(path).get("manifests", []):
        if isinstance(doc, dict) and (doc.get("annotations") or {}).get(ANNOTATION_REF_NAME) == tag:
            found = doc
    if found is None:
        return None
    try:
        return Descriptor.from_json(found)
    except (KeyError, TypeError, ValueError) as e:
        raise PackError(f"{path}: malformed descriptor for tag {tag!r}") from e


def read_blob(path: Path, digest: str) -> bytes:
    """A small blob (manifest, config), checked against its digest."""
    blob = blob_path(path, digest)
    try:
        data = blob.read_bytes()
    except OSError as e:
        raise PackError(f"cannot read blob {str(blob)!r}: {e.strerror}") from e
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise DigestMismatch(f"blob {str(blob)!r} is corrupt: its content hashes to {actual}")
    return data


def _write_blob(
    path: Path,
    digest: str,
    size: int,
    opener: Callable[[], BinaryIO],
    *,
    on_progress: Callable[[int], None] | None = None,
) -> None:
    """Copy a blob into the layout unless present: temp file, verify, fsync, rename."""
    target = blob_path(path, digest)
    try:
        if target.stat().st_size == size:
            if on_progress is not None:
                on_progress(size)
            return
        log.warning("replacing blob %s: wrong size", target)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise PackError(f"cannot read blob {str(target)!r}: {e.strerror}") from e
    target.parent.mkdir(parents=True, exist_ok=True)

    def place(tmp: Path, actual: str, written: int) -> None:
        if actual != digest or written != size:
            raise DigestMismatch(
                f"blob for {str(target)!r} hashed to {actual} ({written} bytes), "
                f"expected {digest} ({size} bytes)"
            )
        os.replace(tmp, target)

    _write_hashed(target.parent, opener, place, prefix=f".{target.name[:16]}.",
                  on_progress=on_progress)  # fmt: skip


def write_blob_stream(
    path: Path,
    size: int,
    opener: Callable[[], BinaryIO],
    *,
    on_progress: Callable[[int], None] | None = None,
) -> str:
    """Write a blob whose digest is learnt while writing it; returns the digest.

    The bytes go to a temp file in ``blobs/sha256`` and are renamed to their digest only when
    complete, so a killed run leaves no blob under a wrong name.
    """
    folder = path / "blobs" / "sha256"
    folder.mkdir(parents=True, exist_ok=True)
    digests = []

    def place(tmp: Path, actual: str, written: int) -> None:
        if written != size:
            raise PackError(f"blob stream gave {written} bytes, expected {size}")
        os.replace(tmp, blob_path(path, actual))
        digests.append(actual)

    _write_hashed(folder, opener, place, prefix=".stream.", on_progress=on_progress)
    return digests[0]


def _write_hashed(
    folder: Path,
    opener: Callable[[], BinaryIO],
    place: Callable[[Path, str, int], None],
    *,
    prefix: str,
    on_progress: Callable[[int], None] | None = None,
) -> None:
    """Copy ``opener()`` into a temp file in ``folder`` while hashing it, fsync, then let
    ``place(tmp, digest, size)`` check and rename it; nothing is left behind on failure."""
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        digest: list[str] = []
        written = 0
        buffer = bytearray(DEFAULT_CHUNK)
        view = memoryview(buffer)
        with os.fdopen(fd, "wb") as out, opener() as src:
            reader = HashingReader(cast(Any, src).readinto, digest.append)
            while n := reader.readinto(buffer):
                out.write(view[:n])
                written += n
                if on_progress is not None:
                    on_progress(n)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600: a server running as another user reads it
        place(tmp, digest[0], written)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise PackError(f"cannot write a blob in {str(folder)!r}: {e.strerror}") from e
        raise
    fsync_dir(folder)


def _ensure_layout_file(path: Path) -> None:
    layout_file = path / LAYOUT_FILE
    if layout_file.exists():
        try:
            version = json.loads(layout_file.read_bytes()).get("imageLayoutVersion")
        except (OSError, ValueError, AttributeError) as e:
            raise PackError(f"{str(layout_file)!r} is not an OCI layout marker") from e
        if version != LAYOUT_VERSION:
            raise PackError(f"{str(path)!r}: unsupported image layout version {version!r}")
        return
    _write_file_atomic(layout_file, canonical_json({"imageLayoutVersion": LAYOUT_VERSION}))


def _read_index_or_new(path: Path) -> dict[str, Any]:
    if not (path / INDEX_FILE).exists():
        return {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": []}
    return read_index(path)


def _set_tags(index: dict[str, Any], desc: Descriptor, tags: Sequence[str]) -> None:
    """Point each tag at ``desc``: in place where the tag existed, appended otherwise."""
    manifests: list[Any] = list(index.get("manifests") or [])
    pending = dict.fromkeys(tags)
    out: list[Any] = []
    for doc in manifests:
        ref = (
            (doc.get("annotations") or {}).get(ANNOTATION_REF_NAME)
            if isinstance(doc, dict)
            else None
        )
        if ref in tags:
            if ref in pending:
                out.append(_tagged(desc, ref))
                del pending[ref]
            continue  # a duplicate of a tag already moved
        out.append(doc)
    out.extend(_tagged(desc, tag) for tag in pending)
    index["manifests"] = out
    index.setdefault("schemaVersion", 2)
    index.setdefault("mediaType", MT_INDEX)


def _tagged(desc: Descriptor, tag: str) -> dict[str, Any]:
    doc = Descriptor(
        desc.media_type or MT_MANIFEST, desc.digest, desc.size, {ANNOTATION_REF_NAME: tag}
    )
    return doc.to_json()


def _write_file_atomic(target: Path, data: bytes, *, skip_if_same: bool = False) -> None:
    try:
        atomic_write(target, data, skip_if_same=skip_if_same)
    except OSError as e:
        raise PackError(f"cannot write {str(target)!r}: {e.strerror}") from e


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock on the layout directory itself (no lock file left in the layout)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise PackError(f"cannot open layout {str(path)!r}: {e.strerror}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
