"""The image model shared by every source and sink: Layer, Image, media types, digests."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol, runtime_checkable

from hf2oci.digest import sha256_digest
from hf2oci.errors import PackError

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MT_DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
MT_DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
MT_LAYER_FOREIGN_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"

#: annotation naming a tag in an image layout's index.json
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"

#: the size of each read of a range: fixed, or asked before each read (a budget shared by
#: readers in flight)
Piece = int | Callable[[], int]


def piece_size(piece: Piece) -> int:
    return max(1, piece() if callable(piece) else piece)


#: Docker layer media types and their OCI equivalents (same bytes, same digest)
_OCI_LAYER_TYPES = {
    MT_DOCKER_LAYER: MT_LAYER_GZIP,
    MT_DOCKER_LAYER_TAR: MT_LAYER_TAR,
    MT_DOCKER_FOREIGN_LAYER: MT_LAYER_FOREIGN_GZIP,
}

MANIFEST_TYPES = (MT_MANIFEST, MT_DOCKER_MANIFEST)
INDEX_TYPES = (MT_INDEX, MT_DOCKER_LIST)


def json_object(
    data: bytes, what: str, error: Callable[[str], Exception] = PackError
) -> dict[str, Any]:
    """``data`` parsed as a JSON object, or ``error`` saying what ``what`` is not."""
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise error(f"{what} is not valid JSON: {e}") from e
    if not isinstance(doc, dict):
        raise error(f"{what} is not a JSON object")
    return doc


def oci_layer_media_type(media_type: str) -> str:
    """The OCI media type for a layer (Docker types mapped; OCI types unchanged)."""
    return _OCI_LAYER_TYPES.get(media_type, media_type)


def canonical_json(doc: Mapping[str, Any]) -> bytes:
    """Deterministic JSON bytes (sorted keys, no spaces): the same document, the same digest."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def string_map(found: object) -> dict[str, str]:
    """A JSON object of annotations or labels as strings; {} for anything else."""
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def config_labels(config: Mapping[str, Any]) -> dict[str, str]:
    """The labels of an image config document."""
    return string_map((config.get("config") or {}).get("Labels"))


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
            annotations=string_map(doc.get("annotations")),
        )


class Image:
    """An image: its layers, config blob and manifest blob.

    Read images have all their bytes; an assembled image makes its config and manifest when
    first asked for, which a sink does only after writing the layers: a streamed layer learns
    its digest by being written (see ``layers.StreamLayer``). ``name`` says where it came from
    (``docker.io/library/busybox:latest``, ``scratch``…).
    """

    def __init__(
        self,
        layers: Sequence[Layer],
        config: bytes | None = None,
        manifest: bytes | None = None,
        *,
        render: Callable[[], tuple[bytes, bytes]] | None = None,
        media_type: str = MT_MANIFEST,
        name: str = "",
        platform: Mapping[str, str] | None = None,
    ) -> None:
        if (config is None or manifest is None) and render is None:
            raise PackError("an image needs its config and manifest, or a way to make them")
        self.layers = tuple(layers)
        self.media_type = media_type
        self.name = name
        #: the platform its config states, when known before the config is made (assembled)
        self.platform = dict(platform) if platform is not None else None
        self._blobs = (config, manifest) if config is not None and manifest is not None else None
        self._render = render
        self._lock = threading.Lock()

    def _rendered(self) -> tuple[bytes, bytes]:
        if self._blobs is None:
            with self._lock:
                if self._blobs is None:
                    assert self._render is not None
                    self._blobs = self._render()
        return self._blobs

    @property
    def config(self) -> bytes:
        return self._rendered()[0]

    @property
    def manifest(self) -> bytes:
        return self._rendered()[1]

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
    def annotations(self) -> dict[str, str]:
        """The manifest's annotations."""
        return string_map(self.manifest_doc.get("annotations"))

    @property
    def labels(self) -> dict[str, str]:
        """The config's labels."""
        return config_labels(self.config_doc)

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

    def __repr__(self) -> str:
        return f"Image({self.name or '?'}, {len(self.layers)} layers)"


_SCRATCH_CONFIG = {
    "architecture": "amd64",
    "os": "linux",
    "config": {},
    "rootfs": {"type": "layers", "diff_ids": []},
}
#: the empty base: no layers (its manifest is never published)
SCRATCH = Image(
    (),
    canonical_json(_SCRATCH_CONFIG),
    canonical_json({"schemaVersion": 2, "mediaType": MT_MANIFEST, "layers": []}),
    name="scratch",
)


@dataclass(frozen=True)
class Base:
    """What images are built on: one base image per platform (scratch: none, one manifest)."""

    name: str
    images: tuple[Image, ...]
    #: what ``name`` resolved to (a multi-platform base: its index); None for scratch
    digest: str | None = None

    @property
    def layer_count(self) -> int:
        return max(len(image.layers) for image in self.images)

    @property
    def platforms(self) -> tuple[str, ...]:
        """``os/arch[/variant]`` of each image, in order."""
        return tuple(platform_name(i) for i in self.images)


#: config keys of the OCI image config spec carried over from the base
_PLATFORM_KEYS = ("architecture", "os", "os.version", "os.features", "variant")


def _platform_keys(base_config: Mapping[str, Any]) -> dict[str, Any]:
    """The platform keys of an image made on ``base_config`` (scratch: linux/amd64)."""
    keys: dict[str, Any] = {k: base_config[k] for k in _PLATFORM_KEYS if k in base_config}
    keys.setdefault("architecture", "amd64")
    keys.setdefault("os", "linux")
    return keys


def _config(
    base_config: Mapping[str, Any],
    base_diff_ids: list[Any],
    layers: Sequence[Layer],
    labels: Mapping[str, str],
    created: str,
    history_comment: str,
) -> dict[str, Any]:
    """The image config: the base's platform and run settings, its labels under ours."""
    config: dict[str, Any] = _platform_keys(base_config)
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
    return config


def assemble(
    base: Image,
    layers: Sequence[Layer],
    *,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    created: str,
    layer_annotations: Sequence[Mapping[str, str]] | None = None,
    history_comment: str = "hf2oci",
) -> Image:
    """The image made of ``base`` plus ``layers``: config and manifest as canonical JSON, made
    when first asked for (so after streamed layers were written and know their digests).

    Same inputs ⇒ same bytes ⇒ same digest.
    """
    base_config = base.config_doc
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
    notes = list(layer_annotations) if layer_annotations is not None else [{} for _ in layers]

    def render() -> tuple[bytes, bytes]:
        config = canonical_json(
            _config(base_config, base_diff_ids, layers, labels, created, history_comment)
        )
        descriptors = [
            Descriptor(oci_layer_media_type(layer.media_type), layer.digest, layer.size)
            for layer in base.layers
        ] + [
            Descriptor(oci_layer_media_type(layer.media_type), layer.digest, layer.size, note)
            for layer, note in zip(layers, notes, strict=True)
        ]
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": Descriptor(MT_CONFIG, sha256_digest(config), len(config)).to_json(),
            "layers": [d.to_json() for d in descriptors],
        }
        if annotations:
            manifest["annotations"] = dict(annotations)
        return config, canonical_json(manifest)

    # known now, unlike the config: a sink may pick a platform before any layer was written
    platform = _platform_doc(_platform_keys(base_config))
    return Image((*base.layers, *layers), render=render, media_type=MT_MANIFEST, platform=platform)


class ImageIndex:
    """An OCI image index: one image per platform, all made of the same repo layers on
    different bases. Its manifest lists each image's manifest with the platform its config
    states, in the order given, and is made when first asked for (after the images')."""

    media_type = MT_INDEX

    def __init__(self, images: Sequence[Image], *, annotations: Mapping[str, str]) -> None:
        if not images:
            raise PackError("an image index needs at least one image")
        self.images = tuple(images)
        self._annotations = dict(annotations)
        self._manifest: bytes | None = None
        self._lock = threading.Lock()

    @property
    def layers(self) -> tuple[Layer, ...]:
        """Every image's layers, each once (shared layers are the same objects)."""
        seen: set[int] = set()
        out = []
        for image in self.images:
            for layer in image.layers:
                if id(layer) not in seen:
                    seen.add(id(layer))
                    out.append(layer)
        return tuple(out)

    @property
    def manifest(self) -> bytes:
        if self._manifest is None:
            with self._lock:
                if self._manifest is None:
                    doc: dict[str, Any] = {
                        "schemaVersion": 2,
                        "mediaType": MT_INDEX,
                        "manifests": [
                            {**i.manifest_descriptor.to_json(), "platform": platform_of(i)}
                            for i in self.images
                        ],
                    }
                    if self._annotations:
                        doc["annotations"] = self._annotations
                    self._manifest = canonical_json(doc)
        return self._manifest

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)

    @property
    def annotations(self) -> dict[str, str]:
        return dict(self._annotations)

    @property
    def manifest_descriptor(self) -> Descriptor:
        return Descriptor(MT_INDEX, self.digest, len(self.manifest))

    def __repr__(self) -> str:
        return f"ImageIndex({', '.join(str(platform_of(i)) for i in self.images)})"


#: what a sink writes: one image, or an index of one image per platform
Artifact = Image | ImageIndex


def images_of(artifact: Artifact) -> tuple[Image, ...]:
    return artifact.images if isinstance(artifact, ImageIndex) else (artifact,)


def platform_of(image: Image) -> dict[str, str]:
    """The ``platform`` object of an index entry for ``image``: as assembled, else from its
    config (reading it renders an assembled image, which needs its layers' digests)."""
    if image.platform is not None:
        return dict(image.platform)
    return _platform_doc(image.config_doc)


def platform_name(image: Image) -> str:
    """``os/arch[/variant]`` of ``image`` (``linux/arm64/v8``)."""
    doc = platform_of(image)
    return "/".join(doc.get(k, "") for k in ("os", "architecture", "variant")).rstrip("/")


def _platform_doc(config: Mapping[str, Any]) -> dict[str, str]:
    doc: dict[str, str] = {k: str(config[k]) for k in ("architecture", "os") if k in config}
    if config.get("variant"):
        doc["variant"] = str(config["variant"])
    return doc


SCRATCH_BASE = Base("scratch", (SCRATCH,))
