"""The one image reader: registry references and layouts, indexes, and files inside tar layers
found by offset and read by Range."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from hf2oci.errors import PackError, UsageError
from hf2oci.oci import layout
from hf2oci.oci.blobs import TarLayer
from hf2oci.oci.image import MT_INDEX, SCRATCH, assemble, canonical_json, sha256_digest
from hf2oci.oci.push import push
from hf2oci.oci.registry import RegistryClient
from hf2oci.oci.source import StoredLayer, open_image, tar_entries
from hf2oci.oci.tarstream import entries_for_files
from hf2oci.reference import Platform, parse_platform
from servers import Registry
from test_registry import unique_repo

CREATED = "2024-01-01T00:00:00Z"
FILES = {
    "config.json": b'{"a": 1}\n',
    "big.safetensors": os.urandom(3 * 1024 * 1024 + 17),
    "sub dir/é.txt": "é".encode() * 300,
    **{f"many/{i:03d}.txt": os.urandom(i * 37) for i in range(60)},
}


def _image(root: Path) -> tuple[object, dict[str, bytes]]:
    pairs = []
    for rel, data in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        pairs.append((rel, path))
    layers = [
        TarLayer(entries_for_files([p for p in pairs if p[0] != "big.safetensors"])),
        TarLayer(entries_for_files([p for p in pairs if p[0] == "big.safetensors"])),
    ]
    return assemble(
        SCRATCH, layers, labels={"k": "v"}, annotations={"k": "v"}, created=CREATED
    ), FILES


def _read_back(image: object) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for layer in image.layers:  # type: ignore[attr-defined]
        assert isinstance(layer, StoredLayer)
        for entry in tar_entries(layer, block=64 * 1024):
            if entry.is_file:
                found[entry.path.removeprefix("REPO/")] = layer.read_range(entry.offset, entry.size)
    return found


def test_files_by_offset_from_a_layout(tmp_path: Path) -> None:
    image, files = _image(tmp_path / "src")
    layout.write_layout(image, tmp_path / "oci", tags=["t"])  # type: ignore[arg-type]
    back = open_image(f"oci:{tmp_path / 'oci'}:t")
    assert back.digest == image.digest and back.labels == {"k": "v"}  # type: ignore[attr-defined]
    assert back.annotations == {"k": "v"}
    assert _read_back(back) == files
    # a folder holding oci-layout needs no prefix
    assert open_image(f"{tmp_path / 'oci'}:t").digest == back.digest


def test_files_by_offset_from_a_registry_read_headers_only(
    tmp_path: Path, registry: Registry
) -> None:
    image, files = _image(tmp_path / "src")
    repo = unique_repo()
    push(RegistryClient(registry.host), image, repo, tags=["t"])  # type: ignore[arg-type]
    back = open_image(f"{registry.host}/{repo}:t")
    assert back.name == f"{registry.host}/{repo}:t"
    assert _read_back(back) == files
    big = back.layers[-1]
    asked: list[int] = []

    class Counted:
        digest, size, media_type = big.digest, big.size, big.media_type

        def read_range(self, start: int, length: int) -> bytes:
            data: bytes = big.read_range(start, length)  # type: ignore[attr-defined]
            asked.append(len(data))
            return data

    (entry,) = [e for e in tar_entries(Counted(), block=4096) if e.is_file]  # type: ignore[arg-type]
    assert entry.size == len(files["big.safetensors"])
    assert sum(asked) < 64 * 1024  # the 3 MiB of data were skipped, not read
    assert big.read_range(big.size - 10, 100) == _blob_tail(big, 10)  # type: ignore[attr-defined]
    assert big.read_range(big.size + 5, 10) == b""  # type: ignore[attr-defined]


def _blob_tail(layer: object, n: int) -> bytes:
    with layer.open() as f:  # type: ignore[attr-defined]
        return bytes(f.read()[-n:])


def test_an_index_in_a_layout_gives_the_platform_asked_for(tmp_path: Path) -> None:
    oci = tmp_path / "oci"
    digests = {}
    for arch in ("amd64", "arm64"):
        config = {**SCRATCH.config_doc, "architecture": arch}
        base = type(SCRATCH)((), canonical_json(config), SCRATCH.manifest, name="b")
        info = tarfile.TarInfo(f"REPO/{arch}.txt")
        data = arch.encode()
        info.size = len(data)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.addfile(info, io.BytesIO(data))
        from layers import BytesLayer

        image = assemble(base, [BytesLayer(buf.getvalue())], labels={}, annotations={},
                         created=CREATED)  # fmt: skip
        layout.write_layout(image, oci, tags=[arch])
        digests[arch] = image.manifest_descriptor.to_json()
    index = {
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [
            {**digests[a], "platform": {"os": "linux", "architecture": a}} for a in digests
        ],
    }
    data = canonical_json(index)
    blob = layout.blob_path(oci, sha256_digest(data))
    blob.write_bytes(data)
    doc = json.loads((oci / "index.json").read_text())
    doc["manifests"].append(
        {"mediaType": MT_INDEX, "digest": sha256_digest(data), "size": len(data),
         "annotations": {"org.opencontainers.image.ref.name": "multi"}}
    )  # fmt: skip
    (oci / "index.json").write_text(json.dumps(doc))
    for arch in ("amd64", "arm64"):
        img = open_image(f"oci:{oci}:multi", platform=Platform("linux", arch))
        assert img.config_doc["architecture"] == arch
    with pytest.raises(Exception, match="no linux/s390x manifest"):
        open_image(f"oci:{oci}:multi", platform=Platform("linux", "s390x"))


def test_platforms_parse_and_bad_input_is_one_line() -> None:
    assert parse_platform("linux/arm64/v8") == Platform("linux", "arm64", "v8")
    assert str(parse_platform(" linux/amd64 ")) == "linux/amd64"
    for bad in ("linux", "linux/", "linux/arm64/v8/x", "linux/ärm"):
        with pytest.raises(UsageError, match="invalid platform"):
            parse_platform(bad)


def test_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="expected oci:PATH:TAG"):
        open_image("oci:nocolon")
    with pytest.raises(UsageError, match="not an OCI image layout"):
        open_image(f"oci:{tmp_path}:t")
    image, _ = _image(tmp_path / "src")
    layout.write_layout(image, tmp_path / "oci", tags=["t"])  # type: ignore[arg-type]
    with pytest.raises(PackError, match="no image tagged 'nope'"):
        open_image(f"oci:{tmp_path / 'oci'}:nope")
