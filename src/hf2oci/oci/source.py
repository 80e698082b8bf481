"""The one image reader: ``open_image`` gives any image — a registry reference, ``oci:PATH:TAG`` or
``PATH:TAG`` (a folder holding an OCI layout) — as an ``Image`` whose layers are stored blobs:
streamed whole (``open``, ``open_raw``) or read by byte range (``read_range``). ``tar_entries``
lists an uncompressed tar layer's files with the offset of each one's data inside the blob, so a
file can be served out of a layer with one Range read.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from hf2oci.errors import BaseImageError, InvalidReference, PackError, RegistryError, UsageError
from hf2oci.oci import layout
from hf2oci.oci.blobs import FileBlobLayer
from hf2oci.oci.image import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    MT_LAYER_TAR,
    SCRATCH_BASE,
    Base,
    Descriptor,
    Image,
    Layer,
    Piece,
    json_object,
    platform_of,
)
from hf2oci.oci.registry import RegistryClient, RemoteLayer
from hf2oci.reference import Platform, Reference, host_platform, parse_reference


@runtime_checkable
class StoredLayer(Layer, Protocol):
    """A layer stored as a blob somewhere (registry, layout) that can be read in parts."""

    def open_raw(self) -> io.RawIOBase | io.BufferedReader:
        """The blob's bytes unchecked, for a reader that hashes them itself."""
        ...

    def read_range(self, start: int, length: int) -> bytes:
        """``length`` bytes of the blob from ``start`` (fewer only at its end)."""
        ...

    def iter_range(self, start: int, length: int, chunk: Piece = 1 << 20) -> Iterator[bytes]:
        """``length`` bytes of the blob from ``start``, streamed in pieces of ``chunk`` at most
        (a callable is asked before each read)."""
        ...


def open_image(
    text: str, *, plain_http: bool | None = None, platform: Platform | None = None
) -> Image:
    """The image ``text`` names: ``oci:PATH:TAG``, ``PATH:TAG`` (a folder holding ``oci-layout``)
    or a registry reference. An index gives the manifest of ``platform``; by default this host's,
    else the first linux one (a reader of files: an hf2oci index holds the same files in each).

    Manifest and config are checked against their digests here; layers when they are read.
    """
    found = layout_ref(text)
    if found is not None:
        return _from_layout(*found, platform)
    ref = parse_reference(text)
    return open_remote(RegistryClient(ref.registry, plain_http=plain_http), ref, platform)


def layout_ref(text: str) -> tuple[Path, str] | None:
    """``(folder, tag)`` when ``text`` names an image in an OCI layout (``oci:PATH:TAG``, or
    ``PATH:TAG`` when PATH holds an ``oci-layout`` file); None for a registry reference.
    UsageError for an ``oci:`` reference that names no layout."""
    rest = text.removeprefix("oci:")
    path, sep, tag = rest.rpartition(":")
    # a bundle names its images ``repository:tag``: ``oci:BUNDLE:hgfkeep/models:acme--m``
    first, _, named = rest.partition(":")
    if named and first != path and (Path(first) / layout.LAYOUT_FILE).is_file():
        path, tag = first, named
    if text.startswith("oci:") and not (sep and path and tag):
        raise UsageError(f"{text}: expected oci:PATH:TAG")
    if text.startswith("oci:") or (path and (Path(path) / layout.LAYOUT_FILE).is_file()):
        if not (Path(path) / layout.LAYOUT_FILE).is_file():
            raise UsageError(f"{text}: {path} is not an OCI image layout (no oci-layout file)")
        return Path(path), tag
    return None


def open_base(
    name: str,
    *,
    platforms: Sequence[Platform] | None = None,
    client: RegistryClient | None = None,
) -> Base:
    """The base image ``name`` for each of ``platforms`` (default: every linux platform its
    index offers, or its one manifest), read once per run before anything is fetched.

    ``client`` is used when it talks to the base's registry. A failure is one line that says
    which registry could not be reached or refused, why, and what to do.
    """
    if name in ("", "scratch"):
        return SCRATCH_BASE
    try:
        ref = parse_reference(name)
        if client is None or client.registry != ref.registry:
            client = RegistryClient(ref.registry)
        return _open_platforms(client, ref, platforms)
    except (RegistryError, PackError, InvalidReference) as e:
        raise BaseImageError(
            f"base image {name}: {e}; set base_image in get_hf/config.yaml (or --base-image) "
            "to an image this network reaches, or to scratch"
        ) from e


def _open_platforms(
    client: RegistryClient, ref: Reference, platforms: Sequence[Platform] | None
) -> Base:
    data, media_type, digest = _get_manifest(client, ref, ref.identifier)
    if media_type not in INDEX_TYPES:
        image = _remote_image(client, ref, data, media_type)
        have = platform_of(image)
        missing = [str(p) for p in platforms or () if not p.matches(have)]
        if missing:
            raise RegistryError(
                f"image {ref} has one platform ({Platform(**have)}), not {', '.join(missing)}"
            )
        return Base(str(ref), (image,), digest)
    index = json_object(data, f"index of {ref}", RegistryError)
    if platforms:
        chosen = [_pick_platform(index, p, str(ref)) for p in platforms]
    else:
        chosen = _linux_platforms(index, str(ref))
    images = []
    for entry in chosen:
        data, media_type, _ = _get_manifest(client, ref, entry)
        images.append(_remote_image(client, ref, data, media_type))
    return Base(str(ref), tuple(images), digest)


def _linux_platforms(index: dict[str, Any], where: str) -> list[str]:
    """The manifests of every distinct linux platform of an index, in its order (attestation
    manifests, platform unknown/unknown, left out)."""
    chosen: dict[str, str] = {}
    for entry in index.get("manifests") or []:
        plat = (entry.get("platform") or {}) if isinstance(entry, dict) else {}
        if plat.get("os") != "linux" or plat.get("architecture") in (None, "unknown"):
            continue
        key = "/".join(str(plat.get(k)) for k in ("architecture", "variant"))
        chosen.setdefault(key, str(entry["digest"]))
    if not chosen:
        raise RegistryError(f"image {where}: its index has no linux platform")
    return list(chosen.values())


def open_remote(
    client: RegistryClient,
    ref: Reference,
    platform: Platform | None,
    fetched: tuple[bytes, str, str] | None = None,
) -> Image:
    """The image ``ref`` in the registry of ``client`` (index → the manifest of ``platform``;
    None: this host's, else the first linux one); ``fetched``: its manifest, already read."""
    data, media_type, _ = fetched or _get_manifest(client, ref, ref.identifier)
    if media_type in INDEX_TYPES:
        chosen = _pick_platform(
            json_object(data, f"index of {ref}", RegistryError), platform, str(ref)
        )
        data, media_type, _ = _get_manifest(client, ref, chosen)
    return _remote_image(client, ref, data, media_type)


def _get_manifest(
    client: RegistryClient, ref: Reference, identifier: str
) -> tuple[bytes, str, str]:
    found = client.get_manifest(ref.repository, identifier)
    if found is None:
        if identifier == ref.identifier:
            raise RegistryError(f"image {ref} not found in registry {client.registry}", status=404)
        raise RegistryError(f"image {ref}: manifest {identifier} is missing")
    return found


def _remote_image(client: RegistryClient, ref: Reference, data: bytes, media_type: str) -> Image:
    if media_type not in MANIFEST_TYPES:
        raise RegistryError(f"image {ref}: unsupported manifest type {media_type!r}")
    config_desc, layer_descs = _descriptors(data, str(ref), RegistryError)
    with client.get_blob(ref.repository, config_desc.digest) as stream:
        config = stream.read()
    diff_ids = _diff_ids(config, len(layer_descs), str(ref), RegistryError)
    layers = [
        RemoteLayer(client, ref.repository, d.digest, d.size, d.media_type, diff_id)
        for d, diff_id in zip(layer_descs, diff_ids, strict=True)
    ]
    return Image(layers, config, data, media_type=media_type, name=str(ref))


def _from_layout(path: Path, tag: str, platform: Platform | None) -> Image:
    desc = layout.resolve_tag(path, tag)
    if desc is None:
        raise PackError(f"{path}: no image tagged {tag!r}")
    where = f"{path}:{tag}"
    if desc.media_type in INDEX_TYPES:
        index = json_object(layout.read_blob(path, desc.digest), f"index of {where}", PackError)
        desc = Descriptor(desc.media_type, _pick_platform(index, platform, where), 0)
    manifest = layout.read_blob(path, desc.digest)
    config_desc, layer_descs = _descriptors(manifest, where, PackError)
    config = layout.read_blob(path, config_desc.digest)
    diff_ids = _diff_ids(config, len(layer_descs), where, PackError)
    layers = [
        FileBlobLayer(
            layout.blob_path(path, d.digest),
            media_type=d.media_type,
            diff_id=diff_id,
            digest=d.digest,
            size=d.size,
        )
        for d, diff_id in zip(layer_descs, diff_ids, strict=True)
    ]
    media_type = str(json_object(manifest, where, PackError).get("mediaType") or desc.media_type)
    return Image(layers, config, manifest, media_type=media_type, name=where)


def _descriptors(
    data: bytes, where: str, error: Callable[[str], Exception]
) -> tuple[Descriptor, list[Descriptor]]:
    doc = json_object(data, f"manifest of {where}", error)
    try:
        return (
            Descriptor.from_json(doc["config"]),
            [Descriptor.from_json(d) for d in doc.get("layers") or []],
        )
    except (KeyError, TypeError, ValueError) as e:
        raise error(f"image {where}: malformed manifest ({e})") from e


def _diff_ids(
    config: bytes, layers: int, where: str, error: Callable[[str], Exception]
) -> list[str]:
    doc = json_object(config, f"config of {where}", error)
    if "modelfs" in doc:  # a CNCF ModelPack artifact's config
        diff_ids = (doc.get("modelfs") or {}).get("diffIds") or []
    else:
        diff_ids = (doc.get("rootfs") or {}).get("diff_ids") or []
    if not isinstance(diff_ids, list) or len(diff_ids) != layers:
        count = len(diff_ids) if isinstance(diff_ids, list) else "no"
        raise error(f"image {where}: {layers} layers but {count} diff_ids in its config")
    return [str(d) for d in diff_ids]


def _pick_platform(index: dict[str, Any], platform: Platform | None, where: str) -> str:
    """The digest of ``platform``'s manifest in an index; for None, this host's, else the first
    linux one (never an attestation manifest)."""
    if platform is None:
        try:
            return _pick_platform(index, host_platform(), where)
        except RegistryError:
            return _linux_platforms(index, where)[0]
    seen = []
    for entry in index.get("manifests") or []:
        plat = entry.get("platform") or {} if isinstance(entry, dict) else {}
        seen.append(f"{plat.get('os')}/{plat.get('architecture')}")
        if platform.matches(plat):
            return str(entry["digest"])
    raise RegistryError(f"image {where} has no {platform} manifest (it has {', '.join(seen)})")


# -- files inside layers -----------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One entry of a tar layer: its path, kind, and where its data lies inside the blob."""

    path: str
    #: tarfile's type byte: b"0" file, b"5" folder, b"2" symlink…
    type: bytes
    #: offset of the data (not the header) from the start of the blob
    offset: int
    size: int
    mode: int
    linkname: str = ""

    @property
    def is_file(self) -> bool:
        return self.type in (tarfile.REGTYPE, tarfile.AREGTYPE)


def tar_entries(layer: StoredLayer, *, block: int = 1 << 20) -> list[Entry]:
    """Every entry of an uncompressed tar layer with its data's offset, reading headers only:
    file contents are skipped with Range reads, so a layer of one 5 GB file costs a few KiB."""
    if layer.media_type not in (MT_LAYER_TAR, "application/vnd.docker.image.rootfs.diff.tar"):
        raise PackError(f"layer {layer.digest} is {layer.media_type}: offsets need a plain tar")
    reader = RangeReader(layer, block=block)
    try:
        with tarfile.open(fileobj=reader, mode="r:") as tar:
            return [Entry(m.name, m.type, m.offset_data, m.size, m.mode, m.linkname) for m in tar]
    except tarfile.TarError as e:
        raise PackError(f"layer {layer.digest} is not a valid tar: {e}") from e


class Ranged(Protocol):
    """Bytes of known size that can be read in parts (a stored blob, a hub file)."""

    @property
    def size(self) -> int: ...

    def read_range(self, start: int, length: int) -> bytes: ...


class RangeReader(io.RawIOBase):
    """A seekable, read-only view of a stored blob that fetches ``block``-sized Range reads."""

    def __init__(self, layer: Ranged, *, block: int = 1 << 20) -> None:
        super().__init__()
        self._layer = layer
        self._block = block
        self._pos = 0
        self._buf = b""
        self._buf_start = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._layer.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self._layer.size - self._pos)
        if want <= 0:
            return 0
        inside = self._buf_start <= self._pos < self._buf_start + len(self._buf)
        if not inside:
            self._buf_start = self._pos
            self._buf = self._layer.read_range(self._pos, max(self._block, want))
            if not self._buf:
                return 0
        start = self._pos - self._buf_start
        chunk = self._buf[start : start + want]
        buffer[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)
