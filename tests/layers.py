"""A layer held in memory, for tests: small tar, gzip or zstd blobs made on the spot."""

from __future__ import annotations

import gzip
import io
from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO

from hf2oci.errors import PackError
from hf2oci.oci.blobs import check_digest
from hf2oci.oci.image import (
    MT_CONFIG,
    MT_DOCKER_LAYER,
    MT_LAYER_GZIP,
    MT_LAYER_TAR,
    MT_MANIFEST,
    Image,
    Layer,
    canonical_json,
    sha256_digest,
)


class BytesLayer:
    """A small blob held in memory. Without ``diff_id`` it is derived: the digest for a tar, the
    digest of the gunzipped bytes for a gzip layer."""

    def __init__(
        self, data: bytes, media_type: str = MT_LAYER_TAR, diff_id: str | None = None
    ) -> None:
        self.data = bytes(data)
        self.media_type = media_type
        self.digest = sha256_digest(self.data)
        if diff_id is None:
            diff_id = _derive_diff_id(self.data, media_type, self.digest)
        self.diff_id = check_digest(diff_id)
        self.size = len(self.data)

    def open(self) -> BinaryIO:
        return io.BytesIO(self.data)

    def __repr__(self) -> str:
        return f"BytesLayer({self.digest}, {len(self.data)} bytes)"


def _derive_diff_id(data: bytes, media_type: str, digest: str) -> str:
    if media_type == MT_LAYER_TAR:
        return digest
    if media_type in (MT_LAYER_GZIP, MT_DOCKER_LAYER):
        try:
            return sha256_digest(gzip.decompress(data))
        except (OSError, EOFError) as e:
            raise PackError(f"layer {digest} is not valid gzip") from e
    raise PackError(f"diff_id needed for a layer of type {media_type}")


def base_image(layers: Sequence[Layer], config: Mapping[str, Any], *, name: str) -> Image:
    """An image to build on, made of ``layers`` and ``config`` (its manifest names them)."""
    config_bytes = canonical_json(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": sha256_digest(config_bytes),
                   "size": len(config_bytes)},
        "layers": [{"mediaType": x.media_type, "digest": x.digest, "size": x.size} for x in layers],
    }  # fmt: skip
    return Image(layers, config_bytes, canonical_json(manifest), name=name)
