"""References and the distribution-API client, against the real registry (checked with skopeo)."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from helpers import skopeo_inspect
from hf2oci.errors import DigestMismatch, InvalidReference, RegistryError
from hf2oci.oci.image import (
    MT_CONFIG,
    MT_DOCKER_LAYER,
    MT_INDEX,
    MT_LAYER_TAR,
    MT_MANIFEST,
    Image,
    canonical_json,
    sha256_digest,
)
from hf2oci.oci.push import push
from hf2oci.oci.registry import RegistryClient, RemoteLayer
from hf2oci.oci.source import open_remote
from hf2oci.oci.transport import Transport
from hf2oci.reference import Platform, Reference, host_platform, is_local_host, parse_reference
from servers import Registry, start_registry

# -- helpers shared with test_transport.py --------------------------------------------------


@dataclass(frozen=True)
class BlobLayer:
    """A layer held in memory (the Layer protocol, nothing more)."""

    data: bytes
    media_type: str = MT_LAYER_TAR
    lie: bytes | None = None  # bytes open() gives instead of ``data`` (a broken source)

    @property
    def digest(self) -> str:
        return sha256_digest(self.data)

    @property
    def diff_id(self) -> str:
        return self.digest

    @property
    def size(self) -> int:
        return len(self.data)

    def open(self) -> io.BytesIO:
        return io.BytesIO(self.lie if self.lie is not None else self.data)


def tar_layer(files: dict[str, bytes]) -> BlobLayer:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return BlobLayer(buf.getvalue())


def make_image(layers: list[Any], *, arch: str = "amd64", label: str = "x") -> Image:
    config = canonical_json(
        {
            "architecture": arch,
            "os": "linux",
            "config": {"Labels": {"test": label}},
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        }
    )
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {
                "mediaType": MT_CONFIG,
                "digest": sha256_digest(config),
                "size": len(config),
            },
            "layers": [
                {"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}
                for layer in layers
            ],
        }
    )
    return Image(layers=layers, config=config, manifest=manifest)


def random_image(label: str | None = None, *, size: int = 3000) -> Image:
    label = label or uuid.uuid4().hex
    return make_image(
        [
            tar_layer({"a.txt": os.urandom(size), "label": label.encode()}),
            tar_layer({"dir/b.bin": os.urandom(size // 2)}),
        ],
        label=label,
    )


@dataclass
class RequestLog:
    """Every HTTP exchange a client made: (method, url, status, response headers)."""

    entries: list[tuple[str, str, int, dict[str, str]]] = field(default_factory=list)

    def hook(self, resp: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.entries.append(
            (resp.request.method or "", resp.url, resp.status_code, dict(resp.headers))
        )

    def count(self, method: str, contains: str = "") -> int:
        return sum(1 for m, u, _, _ in self.entries if m == method and contains in u)

    def clear(self) -> None:
        self.entries.clear()


def logged_client(host: str, **kwargs: Any) -> tuple[RegistryClient, RequestLog]:
    log = RequestLog()
    session = requests.Session()
    session.hooks["response"].append(log.hook)
    transport = Transport(host, session=session, retry=kwargs.pop("retry", None))
    return RegistryClient(host, transport=transport, **kwargs), log


def uploads(log: RequestLog) -> int:
    """Blob bytes sent: PUT/PATCH requests to upload sessions."""
    return log.count("PUT", "/blobs/uploads/") + log.count("PATCH", "/blobs/uploads/")


def hexpart(digest: str) -> str:
    """The hex of a digest, as it shows in URLs whatever their encoding of ':'."""
    return digest.split(":", 1)[1]


def unique_repo(prefix: str = "ns") -> str:
    return f"{prefix}/r{uuid.uuid4().hex[:10]}"


# -- references -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("busybox", Reference("docker.io", "library/busybox", "latest", None)),
        ("org/m:v1", Reference("docker.io", "org/m", "v1", None)),
        ("index.docker.io/library/ubuntu:22.04", Reference("docker.io", "library/ubuntu", "22.04")),
        ("ghcr.io/a/b/c", Reference("ghcr.io", "a/b/c", "latest", None)),
        ("localhost/x", Reference("localhost", "x", "latest", None)),
        (
            "127.0.0.1:5000/ns/models:org--name",
            Reference("127.0.0.1:5000", "ns/models", "org--name"),
        ),
        (
            "reg:5000/a@sha256:" + "a" * 64,
            Reference("reg:5000", "a", None, "sha256:" + "a" * 64),
        ),
        (
            "reg.io/a__b/c-d.e:T_1@sha256:" + "0" * 64,
            Reference("reg.io", "a__b/c-d.e", "T_1", "sha256:" + "0" * 64),
        ),
    ],
)
def test_parse_reference_normalises_like_docker(text: str, expected: Reference) -> None:
    assert parse_reference(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "UPPER",
        "ns/Bad",
        "a b",
        "reg.io/a:",
        "reg.io/a:-bad",
        "reg.io/a:" + "t" * 129,
        "reg.io/a@sha256:abc",
        "reg.io/a@md5:" + "0" * 32,
        "reg.io//a",
        "reg.io/a_/b",
        "bad_host.io:x/a",
        # ASCII only, as naming and layouts say (\w once let these through)
        "example.com/ns/models:modèle",
        "example.com/ns/models:tag٣",
        "example.com/ns/models:ｔａｇ",
        "exämple.com/ns/models:t",
        "example.com:５０００/ns/models:t",
    ],
)
def test_invalid_references_raise_one_line(text: str) -> None:
    with pytest.raises(InvalidReference) as exc:
        parse_reference(text)
    assert "\n" not in str(exc.value) and "invalid" in str(exc.value)


_component = st.from_regex(r"[a-z0-9]{1,5}(?:[._-][a-z0-9]{1,5}){0,2}", fullmatch=True)


@given(
    host=st.sampled_from(["docker.io", "ghcr.io", "127.0.0.1:5000", "localhost:1", "a.b.c"]),
    path=st.lists(_component, min_size=2, max_size=4).map("/".join),
    tag=st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True),
    digest=st.none() | st.binary(min_size=1, max_size=8).map(sha256_digest),
)
def test_reference_str_round_trips(host: str, path: str, tag: str, digest: str | None) -> None:
    ref = Reference(host, path, tag, digest)
    assert parse_reference(str(ref)) == ref


@given(tag=st.text(min_size=1, max_size=20).filter(lambda t: t == t.strip()))
def test_one_tag_grammar_for_references_naming_and_layouts(tag: str) -> None:
    from hf2oci.reference import TAG

    ok = TAG.fullmatch(tag) is not None
    assert ok == (
        tag.isascii() and tag[0] not in ".-" and all(c.isalnum() or c in "_.-" for c in tag)
    )
    try:
        parse_reference(f"example.com/ns/models:{tag}")
        parsed = True
    except InvalidReference:
        parsed = False
    assert parsed == ok


def test_reference_helpers() -> None:
    ref = parse_reference("127.0.0.1:5000/ns/models:a")
    assert ref.api_base == "http://127.0.0.1:5000"
    assert parse_reference("busybox").api_base == "https://registry-1.docker.io"
    assert parse_reference("ghcr.io/a/b").api_base == "https://ghcr.io"
    digest = "sha256:" + "1" * 64
    assert str(ref.with_tag("b")) == "127.0.0.1:5000/ns/models:b"
    assert ref.with_digest(digest).identifier == digest
    assert ref.with_digest(digest).with_tag("c").digest is None
    with pytest.raises(InvalidReference):
        ref.with_tag("no spaces")
    for host in ("127.0.0.1", "localhost:5000", "::1", "[::1]:5000", "127.0.0.1:80"):
        assert is_local_host(host), host
    for host in ("ghcr.io", "10.0.0.1:5000", "my-localhost:1"):
        assert not is_local_host(host), host


# -- push ------------------------------------------------------------------------------------


def test_push_is_what_skopeo_pulls(registry: Registry, tmp_path: Path) -> None:
    client, log = logged_client(registry.host)
    image = random_image()
    repo = unique_repo()
    progress: list[int] = []
    digest = push(client, image, repo, tags=["org--m", "latest"], on_progress=progress.append)
    assert digest == image.digest
    assert sum(progress) == sum(layer.size for layer in image.layers) + len(image.config)
    assert uploads(log) == 3  # two layers and the config
    # tags last: nothing was tagged before the manifest existed by digest
    manifest_puts = [u for m, u, _, _ in log.entries if m == "PUT" and "/manifests/" in u]
    assert manifest_puts[0].endswith(image.digest) and len(manifest_puts) == 3

    for tag in ("org--m", "latest"):
        info = skopeo_inspect(f"docker://{registry.host}/{repo}:{tag}")
        assert info["Digest"] == image.digest
        assert info["Layers"] == [layer.digest for layer in image.layers]
    dest = tmp_path / "copy"
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--src-tls-verify=false",
            f"docker://{registry.host}/{repo}:org--m",
            f"dir:{dest}",
        ],
        capture_output=True,
        check=True,
    )
    for layer in image.layers:
        assert (dest / layer.digest.removeprefix("sha256:")).read_bytes() == layer.open().read()
    assert (dest / "manifest.json").read_bytes() == image.manifest

    assert sorted(client.list_tags(repo)) == ["latest", "org--m"]
    assert client.get_manifest(repo, "org--m") == (image.manifest, MT_MANIFEST, image.digest)


def test_repush_uploads_nothing(registry: Registry) -> None:
    client, log = logged_client(registry.host)
    image, repo = random_image(), unique_repo()
    push(client, image, repo, tags=["v1"])
    log.clear()
    assert push(client, image, repo, tags=["v1", "v2"]) == image.digest
    assert uploads(log) == 0 and log.count("POST") == 0
    assert log.count("HEAD", "/blobs/") == 3
    assert sorted(client.list_tags(repo)) == ["v1", "v2"]


def test_cross_repo_mount_does_not_upload_again(registry: Registry) -> None:
    client, log = logged_client(registry.host)
    image = random_image()
    first, second = unique_repo(), unique_repo()
    push(client, image, first, tags=["t"])
    log.clear()
    push(client, image, second, tags=["t"], mount_from=[first])
    mounts = [(u, s) for m, u, s, _ in log.entries if m == "POST" and "mount=" in u]
    assert len(mounts) == 3 and all(status == 201 for _, status in mounts)
    assert uploads(log) == 0
    assert skopeo_inspect(f"docker://{registry.host}/{second}:t")["Digest"] == image.digest


def test_mount_of_an_absent_blob_falls_back_to_upload(registry: Registry) -> None:
    client, log = logged_client(registry.host)
    repo, elsewhere = unique_repo(), unique_repo()
    missing = sha256_digest(os.urandom(8))
    assert client.mount_blob(repo, missing, elsewhere) is False
    assert log.count("DELETE", "/blobs/uploads/") == 1  # the session it opened was cancelled
    assert not client.blob_exists(repo, missing)
    image = random_image()
    push(client, image, repo, tags=["t"], mount_from=[elsewhere])
    assert uploads(log) == 3


def test_big_blobs_go_in_chunks(registry: Registry) -> None:
    client, log = logged_client(registry.host, chunk_size=1000)
    layer = BlobLayer(os.urandom(4500))
    repo = unique_repo()
    progress: list[int] = []
    client.upload_blob(repo, layer.digest, layer.size, layer.open, on_progress=progress.append)
    assert log.count("PATCH", "/blobs/uploads/") == 5
    assert sum(progress) == layer.size
    with client.get_blob(repo, layer.digest) as stream:
        assert stream.read() == layer.data


def test_relative_locations(tmp_path: Path) -> None:
    other = start_registry(tmp_path, extra_config="  relativeurls: true\n")
    try:
        client, log = logged_client(other.host, chunk_size=2000)
        image = random_image()
        repo = unique_repo()
        push(client, image, repo, tags=["t"])
        locations = [h["Location"] for m, _, _, h in log.entries if "Location" in h]
        assert locations and all(loc.startswith("/v2/") for loc in locations)
        assert log.count("PATCH") > 0  # chunked uploads followed relative locations too
        assert client.get_manifest(repo, "t") is not None
    finally:
        other.stop()


def test_broken_layer_never_gets_a_tag(registry: Registry) -> None:
    client, log = logged_client(registry.host)
    good = BlobLayer(os.urandom(100))
    bad = BlobLayer(os.urandom(100), lie=os.urandom(100))
    repo = unique_repo()
    with pytest.raises(RegistryError) as exc:
        push(client, make_image([good, bad]), repo, tags=["t"])
    assert "DIGEST_INVALID" in str(exc.value) and exc.value.status == 400
    assert log.count("PUT", hexpart(bad.digest)) == 1  # not retried: it cannot get better
    assert client.get_manifest(repo, "t") is None
    assert client.list_tags(repo) == []


def test_short_layer_stream_is_a_digest_error(registry: Registry) -> None:
    client, _ = logged_client(registry.host)
    short = BlobLayer(os.urandom(100), lie=b"only this")
    with pytest.raises(DigestMismatch, match="short"):
        push(client, make_image([short]), unique_repo(), tags=["t"])


def test_absent_things(registry: Registry) -> None:
    client, _ = logged_client(registry.host)
    repo = unique_repo()
    assert client.get_manifest(repo, "nope") is None
    assert client.list_tags(repo) == []
    assert not client.blob_exists(repo, sha256_digest(b"x"))
    with pytest.raises(RegistryError) as exc:
        open_remote(client, parse_reference(f"{registry.host}/{repo}:nope"), host_platform())
    assert exc.value.status == 404 and "not found" in str(exc.value)
    with pytest.raises(RegistryError) as blob_exc:
        client.get_blob(repo, sha256_digest(b"x"))
    assert blob_exc.value.status == 404 and "BLOB_UNKNOWN" in str(blob_exc.value)


# -- base images ----------------------------------------------------------------------------


def test_fetch_base_of_an_oci_image(registry: Registry) -> None:
    client, _ = logged_client(registry.host)
    image, repo = random_image(), unique_repo()
    push(client, image, repo, tags=["base"])
    ref = parse_reference(f"{registry.host}/{repo}:base")
    base = open_remote(client, ref, host_platform())
    assert base.name == str(ref) and base.digest == image.digest
    assert base.config_doc == image.config_doc
    assert [(x.digest, x.diff_id, x.size, x.media_type) for x in base.layers] == [
        (x.digest, x.diff_id, x.size, x.media_type) for x in image.layers
    ]
    for remote, local in zip(base.layers, image.layers, strict=True):
        with remote.open() as stream:
            assert stream.read() == local.open().read()
    by_digest = open_remote(client, ref.with_digest(image.digest), host_platform())
    assert by_digest.digest == image.digest


def push_multi_platform_base(
    registry: Registry,
    repo: str,
    *,
    arm64_layers: int = 1,
    arches: tuple[str, ...] = ("amd64", "arm64"),
) -> dict[str, Image]:
    """``HOST/repo:multi``: an index of an image per arch (arm64's of ``arm64_layers``
    layers, the others of one); returns them by arch."""
    client = RegistryClient(registry.host)
    counts = {arch: arm64_layers if arch == "arm64" else 1 for arch in arches}
    images = {
        arch: make_image(
            [tar_layer({f"arch{i or ''}": arch.encode()}) for i in range(count)], arch=arch
        )
        for arch, count in counts.items()
    }
    entries = []
    for arch, image in images.items():
        push(client, image, repo, tags=[])
        entries.append(
            {
                "mediaType": MT_MANIFEST,
                "digest": image.digest,
                "size": len(image.manifest),
                "platform": {"os": "linux", "architecture": arch},
            }
        )
    index = canonical_json({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": entries})
    client.put_manifest(repo, "multi", index, MT_INDEX)
    return images


def test_fetch_base_picks_the_platform_from_an_index(registry: Registry) -> None:
    client, _ = logged_client(registry.host)
    repo = unique_repo()
    images = push_multi_platform_base(registry, repo)
    ref = parse_reference(f"{registry.host}/{repo}:multi")
    for arch, image in images.items():
        base = open_remote(client, ref, Platform("linux", arch))
        assert base.config_doc["architecture"] == arch and base.digest == image.digest
        assert [layer.digest for layer in base.layers] == [layer.digest for layer in image.layers]
    with pytest.raises(RegistryError, match="no linux/s390x manifest"):
        open_remote(client, ref, Platform("linux", "s390x"))


@pytest.fixture
def second_registry(tmp_path: Path) -> Iterator[Registry]:
    reg = start_registry(tmp_path / "second")
    yield reg
    reg.stop()


@pytest.mark.docker
def test_base_from_docker_push_is_mounted_or_copied(
    registry: Registry, busybox_base: str, second_registry: Registry
) -> None:
    client, log = logged_client(registry.host)
    ref = parse_reference(busybox_base)
    base = open_remote(client, ref, host_platform())
    assert len(base.layers) == 1
    (layer,) = base.layers
    assert isinstance(layer, RemoteLayer) and layer.media_type == MT_DOCKER_LAYER
    with layer.open() as stream:
        blob = stream.read()
    assert len(blob) == layer.size
    assert "sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest() == layer.diff_id
    assert base.config_doc["rootfs"]["diff_ids"] == [layer.diff_id]

    extra = tar_layer({"REPO/config.json": b"{}"})
    image = make_image([*base.layers, extra])
    repo = unique_repo()
    log.clear()
    push(client, image, repo, tags=["t"])  # same registry: the base layer is mounted
    mounts = [(u, s) for m, u, s, _ in log.entries if m == "POST" and "mount=" in u]
    assert [(hexpart(layer.digest) in u, s) for u, s in mounts] == [(True, 201)]
    assert log.count("PUT", hexpart(layer.digest)) == 0

    other, other_log = logged_client(second_registry.host)
    push(other, image, repo, tags=["t"])  # another registry: streamed across
    assert other_log.count("PUT", hexpart(layer.digest)) == 1
    with other.get_blob(repo, layer.digest) as stream:
        assert stream.read() == blob
    assert skopeo_inspect(f"docker://{second_registry.host}/{repo}:t")["Digest"] == image.digest
