"""The image model shared by every source and sink: Layer, Image, media types, digests."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol, runtime_checkable

from hf2oci.errors import PackError

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MT_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MT_DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
MT_DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
MT_LAYER_FOREIGN_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"

#: annotation naming a tag in an image layout's index.json
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"

#: Docker layer media types and their OCI equivalents (same bytes, same digest)
_OCI_LAYER_TYPES = {
    MT_DOCKER_LAYER: MT_LAYER_GZIP,
    MT_DOCKER_LAYER_TAR: MT_LAYER_TAR,
    MT_DOCKER_FOREIGN_LAYER: MT_LAYER_FOREIGN_GZIP,
}

MANIFEST_TYPES = (MT_MANIFEST, MT_DOCKER_MANIFEST)
INDEX_TYPES = (MT_INDEX, MT_DOCKER_LIST)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def oci_layer_media_type(media_type: str) -> str:
    """The OCI media type for a layer (Docker types mapped; OCI types unchanged)."""
    return _OCI_LAYER_TYPES.get(media_type, media_type)


def canonical_json(doc: Mapping[str, Any]) -> bytes:
    """Deterministic JSON bytes (sorted keys, no spaces): the same document, the same digest."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@runtime_checkable
class Layer(Protocol):
    """A layer blob, wherever its bytes come from (hub file, disk, registry).

    ``digest``/``size`` describe the blob as stored (possibly compressed); ``diff_id`` is the
    sha256 of the uncompressed tar. ``open()`` returns a fresh stream of the blob each call.
    """

    @property
    def digest(self) -> str: ...

    @property
    def diff_id(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def media_type(self) -> str: ...

    def open(self) -> BinaryIO: ...


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.annotations:
            doc["annotations"] = dict(self.annotations)
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Descriptor:
        """Parse a descriptor object; KeyError/TypeError/ValueError when malformed."""
        size = doc["size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"invalid descriptor size {size!r}")
        return cls(
            media_type=str(doc["mediaType"]),
            digest=str(doc["digest"]),
            size=size,
            annotations={str(k): str(v) for k, v in (doc.get("annotations") or {}).items()},
        )


@dataclass(frozen=True)
class Image:
    """A complete image: its layers, config blob and manifest blob (all bytes final)."""

    layers: Sequence[Layer]
    config: bytes
    manifest: bytes
    media_type: str = MT_MANIFEST

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)

    @property
    def config_digest(self) -> str:
        return sha256_digest(self.config)

    @property
    def manifest_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.manifest)
        return doc

    @property
    def config_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.config)
        return doc

    @property
    def config_descriptor(self) -> Descriptor:
        return Descriptor(MT_CONFIG, self.config_digest, len(self.config))

    @property
    def manifest_descriptor(self) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.manifest))

    @property
    def layer_descriptors(self) -> list[Descriptor]:
        """The manifest's layer descriptors (media types as the manifest states them)."""
        return [Descriptor.from_json(d) for d in self.manifest_doc["layers"]]

    @property
    def size(self) -> int:
        """Bytes of all blobs (manifest, config, layers)."""
        return len(self.manifest) + len(self.config) + sum(layer.size for layer in self.layers)


@dataclass(frozen=True)
class BaseImage:
    """What a new image is built on: the base's layers (in order) and its config document."""

    layers: Sequence[Layer]
    config: Mapping[str, Any]
    #: where it came from, e.g. "docker.io/library/busybox:latest" or "scratch"
    name: str = "scratch"
    #: manifest digest of the base, when it has one (recorded in annotations)
    digest: str | None = None


SCRATCH = BaseImage(
    layers=(),
    config={
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": []},
    },
)


#: config keys of the OCI image config spec carried over from the base
_PLATFORM_KEYS = ("architecture", "os", "os.version", "os.features", "variant")


def assemble(
    base: BaseImage,
    layers: Sequence[Layer],
    *,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    created: str,
    layer_annotations: Sequence[Mapping[str, str]] | None = None,
    history_comment: str = "hf2oci",
) -> Image:
    """The image made of ``base`` plus ``layers``: config and manifest as canonical JSON.

    Same inputs ⇒ same bytes ⇒ same digest. Reads every new layer's digest (hashing lazy layers).
    """
    base_config = base.config
    base_diff_ids = list((base_config.get("rootfs") or {}).get("diff_ids") or [])
    if len(base_diff_ids) != len(base.layers):
        raise PackError(
            f"base image {base.name}: {len(base.layers)} layers but "
            f"{len(base_diff_ids)} diff_ids in its config"
        )
    if layer_annotations is not None and len(layer_annotations) != len(layers):
        raise PackError(
            f"{len(layer_annotations)} layer annotations given for {len(layers)} layers"
        )
    config: dict[str, Any] = {k: base_config[k] for k in _PLATFORM_KEYS if k in base_config}
    config.setdefault("architecture", "amd64")
    config.setdefault("os", "linux")
    run_config = dict(base_config.get("config") or {})
    merged_labels = {**(run_config.get("Labels") or {}), **labels}
    if merged_labels:
        run_config["Labels"] = merged_labels
    config["config"] = run_config
    config["rootfs"] = {
        "type": "layers",
        "diff_ids": base_diff_ids + [layer.diff_id for layer in layers],
    }
    config["history"] = list(base_config.get("history") or []) + [
        {"created": created, "created_by": history_comment} for _ in layers
    ]
    config["created"] = created
    config_bytes = canonical_json(config)

    descriptors = [
        Descriptor(oci_layer_media_type(layer.media_type), layer.digest, layer.size)
        for layer in base.layers
    ]
    for i, layer in enumerate(layers):
        notes = layer_annotations[i] if layer_annotations is not None else {}
        descriptors.append(
            Descriptor(oci_layer_media_type(layer.media_type), layer.digest, layer.size, notes)
        )
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": Descriptor(MT_CONFIG, sha256_digest(config_bytes), len(config_bytes)).to_json(),
        "layers": [d.to_json() for d in descriptors],
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    return Image(
        layers=(*base.layers, *layers),
        config=config_bytes,
        manifest=canonical_json(manifest),
        media_type=MT_MANIFEST,
    )
