"""One way to open what holds images: a registry, a folder of layouts (one per repository, as
``sync`` writes them), or one layout whose tags name their repository (a bundle). Each answers
the same questions (tags, a manifest by tag or digest, a blob by digest); ``Repository`` is one
repository of any of them, its blobs checked against their digests when read whole."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Protocol

from hf2oci.digest import sha256_digest
from hf2oci.errors import PackError, UsageError
from hf2oci.oci import layout
from hf2oci.oci.image import ANNOTATION_REF_NAME, MT_MANIFEST
from hf2oci.oci.registry import RegistryClient


class ImageStore(Protocol):
    """Image repositories to read: a registry's, or layouts."""

    where: str

    def tags(self, repository: str) -> list[str]: ...

    def manifest(self, repository: str, ref: str) -> tuple[bytes, str] | None:
        """The manifest at a tag or digest (checked against a digest ref), with its media type."""
        ...

    def open_blob(self, repository: str, digest: str) -> BinaryIO:
        """The blob's bytes; reading to the end checks them against ``digest``."""
        ...

    def place_blob(self, repository: str, digest: str, size: int, target: Path) -> None:
        """Put the blob at ``target`` (a hard link where the store is on the same disk)."""
        ...


class RegistryStore:
    """A registry's repositories, read through its client (credentials, retry policy)."""

    def __init__(self, client: RegistryClient) -> None:
        self.client = client
        self.where = f"registry {client.registry}"

    def tags(self, repository: str) -> list[str]:
        return self.client.list_tags(repository)

    def manifest(self, repository: str, ref: str) -> tuple[bytes, str] | None:
        found = self.client.get_manifest(repository, ref)
        return None if found is None else (found[0], found[1])

    def open_blob(self, repository: str, digest: str) -> BinaryIO:
        return self.client.get_blob(repository, digest)

    def place_blob(self, repository: str, digest: str, size: int, target: Path) -> None:
        copy_checked(lambda: self.open_blob(repository, digest), target, size)


class LayoutStore:
    """Layouts under ``root``, one per image repository (``root/hgfkeep/models``), as ``sync``
    writes them without a registry; or, with ``single``, the one layout at ``root`` whose tags
    are ``repository:tag`` (a bundle's)."""

    def __init__(self, root: Path, *, single: bool = False) -> None:
        if not root.is_dir():
            raise UsageError(f"{root}: no such folder")
        self.root, self.single = root, single
        self.where = str(root)

    def _path(self, repository: str) -> Path:
        return self.root if self.single else self.root / repository

    def _tag(self, repository: str, tag: str) -> str:
        return f"{repository}:{tag}" if self.single and repository else tag

    def tags(self, repository: str) -> list[str]:
        path = self._path(repository)
        if not (path / layout.INDEX_FILE).is_file():
            return []
        docs = layout.read_index(path).get("manifests") or []
        names = [(d.get("annotations") or {}).get(ANNOTATION_REF_NAME) for d in docs]
        prefix = self._tag(repository, "")
        return sorted({n[len(prefix) :] for n in names if isinstance(n, str)
                       and n.startswith(prefix)})  # fmt: skip

    def manifest(self, repository: str, ref: str) -> tuple[bytes, str] | None:
        path = self._path(repository)
        if not (path / layout.INDEX_FILE).is_file():
            return None
        if ref.startswith("sha256:"):
            data = layout.read_blob(path, ref)
            return data, media_type_of(data)
        desc = layout.resolve_tag(path, self._tag(repository, ref))
        if desc is None:
            return None
        return layout.read_blob(path, desc.digest), desc.media_type

    def open_blob(self, repository: str, digest: str) -> BinaryIO:
        return open(layout.blob_path(self._path(repository), digest), "rb")

    def place_blob(self, repository: str, digest: str, size: int, target: Path) -> None:
        """A hard link (no copy) when the target is on the same filesystem, else a copy; the
        loader checks every byte on the other side."""
        blob = layout.blob_path(self._path(repository), digest)
        try:
            if blob.stat().st_size != size:
                raise PackError(f"{blob}: {blob.stat().st_size} bytes, its manifest says {size}")
            os.link(blob, target)
        except FileNotFoundError as e:
            raise PackError(f"{blob}: missing from the layout") from e
        except OSError:
            shutil.copyfile(blob, target)


class Repository:
    """One repository of a store: manifests by tag or digest, and blobs read whole, checked
    against their digests (a signature, a provenance, a config: small things)."""

    def __init__(
        self,
        manifest: Callable[[str], tuple[bytes, str] | None],
        blob: Callable[[str], bytes],
    ) -> None:
        self.manifest, self._blob = manifest, blob

    @classmethod
    def of(cls, store: ImageStore, repository: str) -> Repository:
        def blob(digest: str) -> bytes:
            with store.open_blob(repository, digest) as stream:
                return stream.read()

        return cls(lambda ref: store.manifest(repository, ref), blob)

    def blob(self, digest: str) -> bytes:
        data = self._blob(digest)
        if sha256_digest(data) != digest:
            raise ValueError(f"blob {digest} does not hash to its digest")
        return data


def copy_checked(opener: Callable[[], BinaryIO], target: Path, size: int) -> None:
    """Copy a checked stream into ``target`` (PackError when it is not ``size`` bytes)."""
    written = 0
    with opener() as src, open(target, "wb") as out:
        while chunk := src.read(1 << 20):
            out.write(chunk)
            written += len(chunk)
    if written != size:
        target.unlink(missing_ok=True)
        raise PackError(f"{target.name}: {written} bytes, expected {size}")


def media_type_of(data: bytes) -> str:
    try:
        doc = json.loads(data)
    except ValueError:
        return ""
    return str(doc.get("mediaType") or MT_MANIFEST) if isinstance(doc, dict) else ""
